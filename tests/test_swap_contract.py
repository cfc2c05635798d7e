"""Face swap's contract piece by piece: the head outline, the crop, the feathered mask, the pictures the model gets,
the blend, the metadata, the option errors (the module docstring and README "Face swap" say each in words).

Geometry runs without a model (hypothesis, bounded); one end-to-end check on the tiny demo stack at 64 px.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from _demo import FACE, record_calls
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid.api.regions import (
    CROWN_ABOVE_BOX,
    HEAD_WIDTH,
    Region,
    control_pictures,
    crop_for_model,
    head_region,
    paste_back,
    region_mask,
)
from instantid.api.settings import GenerationSettings
from instantid.apps.swap import SwapOptions, make_swap_options, swap_face
from instantid.core.keypoints import draw_kps
from instantid.errors import InvalidInputError
from instantid.faces import SPACE_DLIB, Face
from instantid.pipelines.schedulers import steps_for_strength

GEOMETRY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
KPS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


def _face(box: tuple[float, float, float, float]) -> Face:
    x1, y1, x2, y2 = box
    kps = (KPS * (x2 - x1, y2 - y1) + (x1, y1)).astype(np.float32)
    return Face(bbox=box, score=1.0, kps=kps, embedding=np.zeros(128, np.float32), space=SPACE_DLIB)


@st.composite
def cases(draw) -> dict:
    width, height = draw(st.integers(16, 3000)), draw(st.integers(16, 3000))
    bw = draw(st.floats(2, width))
    bh = draw(st.floats(2, height))
    x1, y1 = draw(st.floats(0, width - bw)), draw(st.floats(0, height - bh))
    return {"face": _face((x1, y1, x1 + bw, y1 + bh)), "size": (width, height), "margin": draw(st.floats(0, 2)),
            "feather": draw(st.floats(0, 1)), "resolution": draw(st.integers(8, 2048)), "head": draw(st.booleans()),
            "context": draw(st.floats(1, 3))}


@GEOMETRY
@given(case=cases())
def test_the_region_is_the_head_outline_with_margin_and_a_centred_crop_around_it(case: dict) -> None:
    face, (width, height), margin = case["face"], case["size"], case["margin"]
    region = head_region(face, (width, height), margin=margin, feather=case["feather"],
                         resolution=case["resolution"], head=case["head"], context=case["context"])
    x1, y1, x2, y2 = face.bbox
    w, h = x2 - x1, y2 - y1
    room = margin * max(w, h)
    cx, cy, rx, ry = region.ellipse
    # The outline: chin to crown (0.45 box heights above the box) and ear to ear, or the box; plus the margin.
    top = y1 - CROWN_ABOVE_BOX * h if case["head"] else y1
    half_width = HEAD_WIDTH * w / 2 if case["head"] else w / 2
    assert (cy - ry, cy + ry) == pytest.approx((top - room, y2 + room), abs=1e-6)
    assert (cx - rx, cx + rx) == pytest.approx(((x1 + x2) / 2 - half_width - room, (x1 + x2) / 2 + half_width + room),
                                               abs=1e-6)
    assert region.feather == pytest.approx(case["feather"] * max(w, h))
    assert region.face_box == tuple(float(v) for v in face.bbox)
    # The crop: `context` times the feathered outline's longer side, square where the photo allows, centred on
    # the outline unless an edge of the photo stops it.
    left, upper, right, lower = region.crop
    assert all(isinstance(v, int) for v in region.crop)
    side = math.ceil(case["context"] * (2 * max(rx, ry) + 2 * region.feather))
    assert region.crop_size == (min(side, width), min(side, height))
    assert 0 <= left and right <= width and 0 <= upper and lower <= height
    for low, size, centre, limit in ((left, right - left, cx, width), (upper, lower - upper, cy, height)):
        if 0 < low < limit - size:
            assert abs(low + size / 2 - centre) <= 0.5 + 1e-9
        else:  # pushed against the edge it would have crossed
            assert (low == 0 and centre - size / 2 <= 0.5) or (low == limit - size and centre + size / 2 >= limit - 0.5)
    # The working size: the crop's long side at the resolution, sides multiples of 8, the crop's aspect.
    ww, wh = region.work_size
    assert ww % 8 == 0 and wh % 8 == 0 and ww >= 8 and wh >= 8
    (cw, ch), resolution = region.crop_size, case["resolution"]
    assert abs(max(ww, wh) - resolution) <= 4 or max(ww, wh) == 8
    assert abs(ww - cw * resolution / max(cw, ch)) <= 4 or ww == 8
    assert abs(wh - ch * resolution / max(cw, ch)) <= 4 or wh == 8


@pytest.mark.parametrize("bad", [{"margin": -0.1}, {"feather": -0.1}, {"context": 0.9}, {"resolution": 7}])
def test_out_of_range_geometry_is_one_invalid_input_line(bad: dict) -> None:
    arguments = {"margin": 0.3, "feather": 0.1, "resolution": 64, **bad}
    with pytest.raises(InvalidInputError, match=r"^margin and feather must be >= 0, context >= 1 and resolution >= 8$"):
        head_region(_face((10, 10, 50, 60)), (200, 200), **arguments)


def test_the_limits_themselves_are_allowed() -> None:
    region = head_region(_face((10, 10, 50, 60)), (200, 200), margin=0, feather=0, resolution=8, context=1)
    assert region.feather == 0 and region.work_size == (8, 8)


def test_a_degenerate_box_still_has_a_one_pixel_face() -> None:
    region = head_region(_face((40, 40, 40, 40)), (200, 200), margin=0, feather=0, resolution=64, head=False)
    assert region.ellipse == (40, 40, 0.5, 0.5)


def _distance_to_inside(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel centre to the nearest inside pixel centre (brute force)."""
    ys, xs = np.nonzero(inside)
    grid_y, grid_x = np.mgrid[0 : inside.shape[0], 0 : inside.shape[1]]
    return np.sqrt((grid_y[..., None] - ys) ** 2 + (grid_x[..., None] - xs) ** 2).min(-1)


@pytest.mark.parametrize("feather", [0.0, 0.0005, 2.5, 7.0])
def test_the_mask_is_one_inside_and_falls_linearly_to_zero_over_the_feather(feather: float) -> None:
    region = Region(face_box=(0, 0, 1, 1), ellipse=(20.3, 17.8, 9.2, 6.1), feather=feather, crop=(3, 2, 41, 35),
                    work_size=(64, 64))
    mask = region_mask(region)
    assert mask.dtype == np.float32 and mask.shape == (33, 38)
    ys, xs = np.mgrid[2:35, 3:41] + 0.5  # photo coordinates of the crop's pixel centres
    inside = ((xs - 20.3) / 9.2) ** 2 + ((ys - 17.8) / 6.1) ** 2 <= 1
    if feather < 1e-3:  # a hard edge
        assert np.array_equal(mask, inside.astype(np.float32))
        return
    expected = np.clip(1 - _distance_to_inside(inside) / feather, 0, 1)
    assert np.allclose(mask, expected, atol=1e-5)
    assert ((mask > 0) & (mask < 1)).any() and (mask == 0).any()


def test_the_model_sees_the_crop_and_a_repaint_mask_no_wider_than_the_blend() -> None:
    rng = np.random.RandomState(1)
    photo = Image.fromarray(rng.randint(0, 256, (300, 400, 3), dtype=np.uint8))
    region = head_region(_face((150, 100, 230, 200)), photo.size, margin=0.2, feather=0.1, resolution=96)
    mask = region_mask(region)
    crop, work_mask = crop_for_model(photo, region, mask)
    expected = photo.crop(region.crop).resize(region.work_size, Image.LANCZOS)
    assert crop.size == region.work_size and np.array_equal(np.asarray(crop), np.asarray(expected))
    # A working pixel whose filter window (one working pixel each side) holds no blended pixel is not repainted.
    (cw, ch), (ww, wh) = region.crop_size, region.work_size
    reach = math.ceil(max(cw / ww, ch / wh)) + 1
    near = cv2.dilate((mask > 0).astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0
    centres_y = ((np.arange(wh) + 0.5) * ch / wh).astype(int)
    centres_x = ((np.arange(ww) + 0.5) * cw / ww).astype(int)
    far = ~near[centres_y][:, centres_x]
    assert far.any() and not np.asarray(work_mask)[far].any()


def test_the_blend_mixes_by_the_mask_weight_and_copies_the_rest() -> None:
    photo = Image.new("L", (60, 50), 100)
    region = Region(face_box=(0, 0, 1, 1), ellipse=(30, 25, 8, 8), feather=6.0, crop=(10, 5, 50, 45),
                    work_size=(16, 16))
    mask = region_mask(region)
    result = paste_back(photo, Image.new("RGBA", (16, 16), (200, 20, 100, 30)), region, mask)  # any mode, any size
    assert result.mode == "RGB" and result.size == photo.size and photo.getpixel((30, 25)) == 100
    out = np.asarray(result, dtype=np.float64)[5:45, 10:50]
    for channel, painted in enumerate((200, 20, 100)):
        assert np.array_equal(out[..., channel], np.round(100 + (painted - 100) * mask.astype(np.float64)))
    assert (np.asarray(result)[:5] == 100).all() and (np.asarray(result)[:, :10] == 100).all()


@pytest.mark.parametrize("enhance", [True, False])
def test_the_control_pictures_are_the_targets_keypoints_and_face_box_in_the_crop(enhance: bool) -> None:
    face = _face((-20, -15, 60, 130))  # past the photo's left and top edges: the box is clipped at the crop's
    region = Region(face_box=(-20, -15, 60, 130), ellipse=(20, 60, 60, 70), feather=5, crop=(0, 0, 100, 150),
                    work_size=(64, 96))
    kps_image, face_mask = control_pictures(face, region, enhance)
    expected = draw_kps(Image.new("RGB", (64, 96)), face.kps * (0.64, 0.64))
    assert np.array_equal(np.asarray(kps_image), np.asarray(expected))
    if not enhance:
        assert face_mask is None
        return
    pixels = np.asarray(face_mask)
    assert pixels.shape == (96, 64, 3)
    expected_mask = np.zeros((96, 64, 3), np.uint8)
    expected_mask[: int(130 * 0.64), : int(60 * 0.64)] = 255
    assert np.array_equal(pixels, expected_mask)


def test_region_coordinates_and_record() -> None:
    region = Region(face_box=(10.04, 20.06, 30.0, 40.0), ellipse=(20.04, 25.55, 12.0, 14.0), feather=2.26,
                    crop=(5, 10, 45, 50), work_size=(80, 160))
    assert np.allclose(region.to_crop([[5, 10], [45, 50], [25, 20]]), [[0, 0], [80, 160], [40, 40]])
    assert region.to_dict() == {"face_box": [10.0, 20.1, 30.0, 40.0], "ellipse": [20.0, 25.6, 12.0, 14.0],
                                "feather_px": 2.3, "crop_box": [5, 10, 45, 50], "work_size": [80, 160]}


def test_option_errors_are_one_line_naming_the_field_as_the_surface_spells_it() -> None:
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    with pytest.raises(InvalidInputError, match=r"^--head-margin must be between 0 and 2, got 5$"):
        make_swap_options({"head_margin": 5}, flag)
    with pytest.raises(InvalidInputError, match=r"^unknown swap option '--colour'; known: target_index, head_margin, "
                                                r"strength, feather, resolution$"):
        make_swap_options({"colour": 1}, flag)
    with pytest.raises(InvalidInputError, match=r"^swap option must be a JSON object, got .strength=1.$"):
        make_swap_options("strength=1")  # type: ignore[arg-type]
    assert make_swap_options({"strength": 0.5}) == SwapOptions(strength=0.5)


# ---- swap_face on the tiny demo stack ---------------------------------------------------------------------
@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every inpainting call's arguments."""
    from instantid.pipelines.inpaint import StableDiffusionXLInstantIDInpaintPipeline as Pipe

    return record_calls(monkeypatch, Pipe)


def _scene() -> Image.Image:
    y, x = np.mgrid[0:200, 0:260]
    canvas = Image.fromarray(np.stack([x, y, (x + y) // 2], -1).astype(np.uint8))
    canvas.paste(Image.open(FACE).convert("RGB").resize((120, 120)), (70, 40))
    return canvas


@pytest.mark.parametrize("enhance", [True, False])
def test_swap_face_feeds_the_model_the_region_and_records_it(demo_app, obama, calls, monkeypatch, enhance) -> None:
    scene = _scene()
    target = _face((100.0, 70.0, 160.0, 140.0))
    monkeypatch.setattr(type(demo_app), "find_face", lambda *a, **k: pytest.fail("the given target is used"))
    options = SwapOptions(resolution=64, strength=0.3, head_margin=0.2, feather=0.2, target_index=2)
    steps: list[tuple[int, int]] = []
    settings = GenerationSettings(prompt="x", steps=2, seed=7, enhance_face_region=enhance)
    result = swap_face(demo_app, obama, scene, settings, options, target=target,
                       progress=lambda step, total: steps.append((step, total)))
    region = head_region(target, scene.size, margin=0.2, feather=0.2, resolution=64)
    mask = region_mask(region)
    crop, work_mask = crop_for_model(scene, region, mask)
    kps_image, face_mask = control_pictures(target, region, enhance)
    (call,) = calls
    assert np.array_equal(np.asarray(call["image"]), np.asarray(crop))
    assert np.array_equal(np.asarray(call["mask_image"]), np.asarray(work_mask))
    assert np.array_equal(np.asarray(call["control_image"]), np.asarray(kps_image))
    assert (call["control_mask"] is None) == (not enhance)
    if enhance:
        assert np.array_equal(np.asarray(call["control_mask"]), np.asarray(face_mask))
    assert (call["width"], call["height"]) == region.work_size and call["strength"] == 0.3
    assert call["image_embeds"] is obama.embedding
    assert call["num_inference_steps"] == steps_for_strength(2, 0.3) == 4  # raised: 2 x 0.3 runs no step
    assert steps and steps[-1][0] == steps[-1][1]
    out, original = np.asarray(result.images[0]), np.asarray(scene)
    covered = np.zeros(original.shape[:2], bool)
    x1, y1, x2, y2 = region.crop
    covered[y1:y2, x1:x2] = mask > 0
    assert out.shape == original.shape and np.array_equal(out[~covered], original[~covered])
    assert np.abs(out[covered].astype(int) - original[covered]).mean() > 1
    metadata = result.metadata
    assert metadata["task"] == "swap" and (metadata["width"], metadata["height"]) == scene.size
    assert metadata["pose_from"] == "scene image (face 2)" and result.seeds == [7]
    assert metadata["settings"]["steps"] == 2 and result.settings.seed == 7  # as asked: reruns raise it alike
    assert metadata["settings"]["seed"] == 7
    assert metadata["swap"] == {**options.model_dump(), "scene": "scene image", "denoising_steps": 1,
                                "target_face": {"bbox": [100.0, 70.0, 160.0, 140.0], "kps": target.kps.tolist()},
                                **region.to_dict()}


def test_swap_face_finds_the_target_by_index_and_names_the_file(demo_app, obama, tmp_path) -> None:
    path = tmp_path / "my scene.png"
    _scene().save(path)
    result = swap_face(demo_app, obama, path, GenerationSettings(prompt="x", steps=1, seed=3),
                       SwapOptions(resolution=64))
    found = demo_app.analyze(_scene())[0]
    assert result.metadata["swap"]["scene"] == "my scene.png"
    assert result.metadata["pose_from"] == "my scene.png (face 0)"
    assert result.metadata["swap"]["target_face"]["bbox"] == [float(v) for v in found.bbox]


def test_an_unreadable_scene_is_named_as_the_caller_named_it(demo_app, obama) -> None:
    from instantid.errors import ImageReadError

    with pytest.raises(ImageReadError, match="upload.jpg"):
        swap_face(demo_app, obama, b"not a picture", GenerationSettings(prompt="x", steps=1),
                  SwapOptions(resolution=64), scene_name="upload.jpg", target=_face((10.0, 10.0, 40.0, 50.0)))


@pytest.mark.parametrize(("steps", "strength", "count"), [(1, 0.19999999999999998, 6), (7, 0.09999999999999999, 11),
                                                          (1, 0.2, 5), (30, 0.85, 30)])
def test_strengths_just_below_one_over_n_still_run_one_step(steps: int, strength: float, count: int) -> None:
    """0.3 - 0.1 is 0.19999999999999998: 5 steps of it run int(0.9999999999999999) = 0 in diffusers."""
    assert steps_for_strength(steps, strength) == count and int(count * strength) >= 1


def test_a_pixel_centre_on_the_outline_is_inside() -> None:
    region = Region(face_box=(0, 0, 1, 1), ellipse=(10.5, 10.5, 3.0, 2.0), feather=0.0, crop=(0, 0, 21, 21),
                    work_size=(8, 8))
    mask = region_mask(region)
    assert mask[10, 13] == 1 and mask[12, 10] == 1 and mask[10, 14] == 0  # (13.5, 10.5) and (10.5, 12.5): r = 1
