"""What the README promises in words, pinned where a one-line bug would break it: the published demo's defaults,
fusion at its edges, group order, the face-region mask at non-square sizes, the swap's repaint mask and the
interpolation each mask is resized with. (Batch resume is pinned in tests/test_batch.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _demo import FACES
from PIL import Image

from instantid.api.face_side import group_poses
from instantid.api.identity import fuse
from instantid.api.regions import face_region_mask
from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError
from instantid.faces import Face, create_face_analyzer, load_image

DIM = 128  # dlib space


@pytest.fixture(scope="module")
def analyzer():
    return create_face_analyzer("dlib")


# ---- defaults: "Defaults are the published demo's" ---------------------------------------------------------------
def test_defaults_are_the_published_demos() -> None:
    from instantid.api.face_detail import FaceDetailOptions
    from instantid.apps.swap import SwapOptions

    s = GenerationSettings()
    published = dict(steps=30, guidance_scale=5.0, identitynet_strength=0.8, adapter_strength=0.8,
                     enhance_face_region=True, width=None, height=None, control_guidance_start=0.0,
                     control_guidance_end=1.0, identitynet_cache_interval=1, fusion="auto", face_detail=False,
                     face_detail_strength=0.4, num_images=1, prompt="", negative_prompt="", style=None)
    assert {k: getattr(s, k) for k in published} == published
    assert SwapOptions().head_margin == 0.3 and SwapOptions().target_index == 0
    assert FaceDetailOptions().strength == 0.4


# ---- fusion at its edges -----------------------------------------------------------------------------------------
def _photos(analyzer, offsets: list[float]) -> list[tuple[str, Image.Image, Face]]:
    """One photo per offset: the same picture, a face whose embedding sits ``offset`` along one axis (dlib
    distances are Euclidean, so the distance between two photos is the difference of their offsets)."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8))
    photos = []
    for i, offset in enumerate(offsets):
        embedding = np.zeros(DIM, np.float32)
        embedding[0] = offset
        face = Face(bbox=(20.0, 20.0, 140.0, 140.0), score=1.0, kps=np.zeros((5, 2), np.float32),
                    embedding=embedding, space=analyzer.space)
        photos.append((f"p{i}.jpg", picture, face))
    return photos


def test_auto_fusion_is_robust_from_exactly_three_photos(analyzer) -> None:
    far = 2 * analyzer.same_person_threshold
    _, refs, used, warnings = fuse(analyzer, _photos(analyzer, [0.0, 0.1, far]))  # auto is the default
    assert used == "robust" and [r.name for r in refs if r.rejected] == ["p2.jpg"]
    assert any("p2.jpg was left out" in w for w in warnings)
    fused, refs, used, warnings = fuse(analyzer, _photos(analyzer, [0.0, far]), "auto")
    assert used == "mean" and not any(r.rejected for r in refs)  # two photos cannot outvote each other
    assert fused[0] == pytest.approx(far / 2) and "different people" in warnings[0]


def test_a_two_against_two_tie_keeps_every_photo(analyzer) -> None:
    """No majority: robust fusion does not guess who the real person is; 3 against 2 drops the 2."""
    far = 2 * analyzer.same_person_threshold
    _, refs, used, warnings = fuse(analyzer, _photos(analyzer, [0.0, 0.1, far, far + 0.1]), "robust")
    assert used == "robust" and not any(r.rejected for r in refs) and not warnings
    assert [r.weight for r in refs] == pytest.approx([0.25] * 4)
    _, refs, _, _ = fuse(analyzer, _photos(analyzer, [0.0, 0.1, 0.05, far, far + 0.1]), "robust")
    assert [r.name for r in refs if r.rejected] == ["p3.jpg", "p4.jpg"]


def test_the_same_person_threshold_is_inclusive(analyzer) -> None:
    """A photo exactly at the face model's threshold from the consensus is the same person; just beyond, not."""
    limit = analyzer.same_person_threshold
    axis = np.eye(DIM)[0]
    assert analyzer.distance(np.zeros(DIM), axis * limit) == limit and analyzer.is_same(np.zeros(DIM), axis * limit)
    assert not analyzer.is_same(np.zeros(DIM), axis * (limit + 1e-6))
    # The medoid is the 0.0 photo; a photo at the threshold from it (in float32) is kept, one beyond is dropped.
    at_limit = float(np.nextafter(np.float32(limit), np.float32(0)))
    _, refs, _, _ = fuse(analyzer, _photos(analyzer, [-0.1, 0.0, 0.1, at_limit]), "robust")
    assert not any(r.rejected for r in refs)
    _, refs, _, _ = fuse(analyzer, _photos(analyzer, [-0.1, 0.0, 0.1, limit + 0.01]), "robust")
    assert [r.name for r in refs if r.rejected] == ["p3.jpg"]
    assert refs[3].consensus_distance == pytest.approx(limit + 0.01, abs=1e-6)


# ---- group order: "person i takes the i-th face from the left" ----------------------------------------------------
def test_group_order_is_left_to_right_when_the_left_face_is_the_lower_one(analyzer) -> None:
    """Left face lower in the picture and smaller: order is by x, not by y, size or detection order."""
    left, right = load_image(FACES / "lecun_1.jpg"), load_image(FACES / "obama_1.jpg")
    right = right.resize((right.width * 3 // 5, right.height * 3 // 5))
    left = left.resize((left.width * 4 // 5, left.height * 4 // 5))
    canvas = Image.new("RGB", (left.width + right.width + 40, max(left.height + 300, right.height)), "gray")
    canvas.paste(left, (0, canvas.height - left.height))  # bottom left
    canvas.paste(right, (left.width + 40, 0))  # top right
    faces, size = group_poses(analyzer, canvas, 2, "group")
    assert size == canvas.size
    (_, l_y1, l_x2, _), (r_x1, r_y1, _, _) = faces[0].bbox, faces[1].bbox
    assert l_x2 < r_x1 and l_y1 > r_y1  # the first is the left one, although it is the lower one
    assert analyzer.is_same(faces[0].embedding, analyzer.get_face(left, "lecun").embedding)
    with pytest.raises(Exception, match="shows 2 face"):
        group_poses(analyzer, canvas, 3, "group")


# ---- the face-region mask: "white rectangle over the (rescaled) face box" ------------------------------------------
@pytest.mark.parametrize(("size", "photo"), [((96, 160), (300, 200)), ((200, 64), (120, 240)), ((136, 136), (64, 96))])
def test_face_region_mask_is_the_rescaled_face_box_at_any_size(size: tuple[int, int], photo: tuple[int, int]) -> None:
    width, height = size
    scale = (width / photo[0], height / photo[1])
    face = Face(bbox=(photo[0] * 0.25, photo[1] * 0.125, photo[0] * 0.75, photo[1] * 0.5), score=1.0,
                kps=np.zeros((5, 2), np.float32), embedding=np.zeros(DIM, np.float32), space="dlib-128")
    mask = face_region_mask(face, size, scale)
    assert mask.size == (width, height) and mask.mode == "RGB"
    pixels = np.asarray(mask)
    assert set(np.unique(pixels)) == {0, 255} and (pixels[..., 0] == pixels[..., 2]).all()
    rows, cols = np.nonzero(pixels[..., 0])
    assert (cols.min(), cols.max() + 1) == (int(face.bbox[0] * scale[0]), int(face.bbox[2] * scale[0]))
    assert (rows.min(), rows.max() + 1) == (int(face.bbox[1] * scale[1]), int(face.bbox[3] * scale[1]))
    box = (cols.max() + 1 - cols.min()) * (rows.max() + 1 - rows.min())
    assert pixels[..., 0].sum() == 255 * len(rows) == 255 * box  # one filled rectangle


def test_face_region_mask_clips_a_box_past_the_edges() -> None:
    face = Face(bbox=(-10.0, -5.0, 30.0, 200.0), score=1.0, kps=np.zeros((5, 2), np.float32),
                embedding=np.zeros(DIM, np.float32), space="dlib-128")
    pixels = np.asarray(face_region_mask(face, (64, 48), (1.0, 1.0)))[..., 0]
    assert pixels[:, :30].all() and not pixels[:, 30:].any()


# ---- masks resized: IdentityNet residuals bilinear (published), other-size control masks nearest ------------------
def test_identitynet_residual_masks_are_resized_bilinear_as_published() -> None:
    from instantid.core.attention import FaceCall
    from instantid.core.denoise import _resized_mask

    mask = torch.zeros(40, 24)
    mask[10:27, 5:13] = 1.0
    like = torch.zeros(1, dtype=torch.float32)
    for size in [(5, 3), (13, 7), (80, 48)]:
        got = _resized_mask(FaceCall(regions=(), scale=1.0, cache={}), 0, mask, torch.Size(size), like)
        expected = F.interpolate(mask[None, None], size, mode="bilinear")
        assert torch.equal(got, expected)
        assert not torch.equal(got, F.interpolate(mask[None, None], size, mode="nearest"))


def test_a_control_mask_of_another_size_is_resized_nearest() -> None:
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline as Pipe

    mask = np.zeros((30, 50, 3), np.uint8)
    mask[7:19, 11:31] = 255
    got = Pipe._face_mask_tensor(Image.fromarray(mask), 64, 96, torch.device("cpu"), torch.float32)
    expected = np.asarray(Image.fromarray(mask).resize((96, 64), Image.NEAREST))[..., 0] / 255.0
    assert got.shape == (64, 96) and torch.equal(got, torch.from_numpy(expected.astype(np.float32)))
    assert set(got.unique().tolist()) == {0.0, 1.0}  # still a hard mask


# ---- swap: the repaint mask covers every pixel the blend changes -----------------------------------------------------
@pytest.mark.parametrize("resolution", [64, 200, 1024])
@pytest.mark.parametrize("feather", [0.0, 0.05, 0.3])
def test_swap_repaint_mask_covers_every_pixel_the_blend_changes(resolution: int, feather: float) -> None:
    from instantid.api.regions import crop_for_model, head_region, region_mask

    face = Face(bbox=(150.0, 130.0, 270.0, 270.0), score=1.0, kps=np.zeros((5, 2), np.float32),
                embedding=np.zeros(DIM, np.float32), space="dlib-128")
    photo = Image.new("RGB", (420, 520), "white")
    region = head_region(face, photo.size, margin=0.3, feather=feather, resolution=resolution)
    mask = region_mask(region)
    _, work_mask = crop_for_model(photo, region, mask)
    assert work_mask.size == region.work_size
    covered = np.asarray(work_mask) > 0
    (cw, ch), (ww, wh) = region.crop_size, region.work_size
    ys, xs = np.nonzero(mask > 0)
    # Each blended crop pixel's footprint at the working size (its first and last working pixel) is repainted.
    for x0, x1, y0, y1 in [(np.floor(xs * ww / cw), np.ceil((xs + 1) * ww / cw) - 1,
                            np.floor(ys * wh / ch), np.ceil((ys + 1) * wh / ch) - 1)]:
        for px in (x0, x1):
            for py in (y0, y1):
                assert covered[py.astype(int), px.astype(int)].all()
    assert set(np.unique(np.asarray(work_mask))) == {0, 255}


def test_the_metadata_names_every_reference_its_weight_and_who_was_left_out(analyzer) -> None:
    """README: robust fusion names the photos it drops, in a warning and in the metadata."""
    from instantid.api.identity import Identity

    photos = _photos(analyzer, [0.0, 0.1, 0.2, 2 * analyzer.same_person_threshold])
    embedding, refs, used, warnings = fuse(analyzer, photos, "auto")
    identity = Identity(embedding=embedding, space=analyzer.space, pose_face=photos[0][2], pose_size=(160, 160),
                        references=refs, fusion=used, pose_name="p0.jpg", warnings=warnings)
    assert [r.name for r in identity.kept] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [r.name for r in identity.rejected] == ["p3.jpg"]
    meta = identity.metadata()
    assert meta["references"] == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"] and meta["rejected_references"] == ["p3.jpg"]
    assert (meta["fusion"], meta["pose_from"], meta["embedding_space"], meta["mixed_with"]) == (
        "robust", "p0.jpg", "dlib-128", [])
    assert meta["warnings"] == list(warnings) and len(warnings) == 1
    details = meta["reference_details"]
    assert [d["weight"] for d in details] == [round(1 / 3, 4)] * 3 + [0.0]
    assert [d["consensus_distance"] for d in details] == [0.1, 0.0, 0.1, 1.1]  # from the medoid, p1
    assert details[3]["rejected"] == "outlier: far from the other photos' consensus" and details[0]["rejected"] is None
    assert details[0]["quality"] == round(refs[0].quality, 4)
    mean = fuse(analyzer, photos[:2], "mean")[1]
    assert mean[0].to_dict()["consensus_distance"] is None  # only robust fusion measures it


def test_reference_details_are_rounded_to_four_digits() -> None:
    from instantid.api.identity import Reference

    face = Face(bbox=(0.0, 0.0, 1.0, 1.0), score=1.0, kps=np.zeros((5, 2), np.float32),
                embedding=np.zeros(DIM, np.float32), space="dlib-128")
    ref = Reference("a.jpg", face, quality=0.123456, weight=0.654321, consensus_distance=0.111119, rejected="why")
    assert ref.to_dict() == {"name": "a.jpg", "sha256": None, "face_index": 0, "faces_found": 1, "quality": 0.1235,
                             "weight": 0.6543, "consensus_distance": 0.1111, "rejected": "why"}


def test_mean_ignores_quality_weighted_uses_it_and_hand_weights_are_checked(analyzer) -> None:
    photos = _photos(analyzer, [0.0, 0.2])
    blurred = Image.new("RGB", (160, 160), "gray")  # no detail: the sharpness floor, a twentieth of the quality
    photos[1] = (photos[1][0], blurred, photos[1][2])
    mean, _, used, _ = fuse(analyzer, photos, "mean")
    assert used == "mean" and mean[0] == pytest.approx(0.1)
    weighted, refs, used, _ = fuse(analyzer, photos, "weighted")
    assert used == "weighted" and weighted[0] == pytest.approx(0.2 / 21)  # 1 : 0.05
    assert [r.weight for r in refs] == pytest.approx([20 / 21, 1 / 21])
    for ok in ([[3], [1]], [1, 0], [0.5, 0.5]):  # any shape of one weight per photo; zero is allowed
        fused, _, used, _ = fuse(analyzer, photos, "mean", weights=ok)
        assert used == "weighted" and fused[0] == pytest.approx(0.2 * np.ravel(ok)[1] / np.sum(ok))
    for bad in ([2, -1], [0, 0], [1, 1, 1]):
        with pytest.raises(InvalidInputError, match="one non-negative weight per photo"):
            fuse(analyzer, photos, "mean", weights=bad)


def test_the_different_people_warning_names_each_pair_once(analyzer) -> None:
    far = 2 * analyzer.same_person_threshold
    _, _, _, warnings = fuse(analyzer, _photos(analyzer, [0.0, far]), "mean")
    assert warnings == (f"the reference photos look like different people: p0.jpg / p1.jpg ({far:.2f}); use photos "
                        "of one person, or fusion 'robust' to drop outliers",)
    _, _, _, warnings = fuse(analyzer, _photos(analyzer, [0.0, far, 2 * far, 3 * far]), "weighted")
    assert warnings[0].count(" / ") == 3 and warnings[0].count("and 3 more") == 1  # 6 pairs: 3 named
    _, _, _, warnings = fuse(analyzer, _photos(analyzer, [0.0, far, 2 * far]), "weighted")
    assert warnings[0].count(" / ") == 3 and "more" not in warnings[0]  # 3 pairs: all named
