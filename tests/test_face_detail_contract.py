"""The face-detail pass's contract call by call: what each pass gives the model (the face's crop at the working
size, its keypoints and box, the strength, the image's seed), which faces are redrawn (the largest
``max_faces``), what stays exact, what the metadata records and how bad input is refused.

On the tiny demo stack with the faces given (no detector), 64 px crops and one denoising step: fast enough to run
for every mutant of :mod:`instantid.api.face_detail`.
"""

from __future__ import annotations

import numpy as np
import pytest
from _demo import record_calls
from PIL import Image

from instantid.api.face_detail import FaceDetailOptions, make_detail_options, refine_faces
from instantid.api.settings import GenerationSettings
from instantid.apps.swap import control_pictures, head_region, region_mask, steps_for_strength
from instantid.errors import InvalidInputError
from instantid.faces import Face

KPS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


def _face(box: tuple[float, float, float, float], like) -> Face:
    x1, y1, x2, y2 = box
    kps = (KPS * (x2 - x1, y2 - y1) + (x1, y1)).astype(np.float32)
    return Face(bbox=box, score=1.0, kps=kps, embedding=like.embedding, space=like.space)


def _picture(seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:180, 0:240]
    rng = np.random.RandomState(seed)
    return Image.fromarray((np.stack([x, y, (x + y) // 2], -1) + rng.randint(0, 20, (180, 240, 3))).astype(np.uint8))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDImg2ImgPipeline as Pipe

    return record_calls(monkeypatch, Pipe)


def _covered(size: tuple[int, int], regions) -> np.ndarray:
    covered = np.zeros(size[::-1], bool)
    for region in regions:
        x1, y1, x2, y2 = region.crop
        covered[y1:y2, x1:x2] |= region_mask(region) > 0
    return covered


@pytest.mark.parametrize("enhance", [True, False])
def test_each_face_pass_gets_its_crop_pose_strength_and_seed(demo_app, obama, calls, enhance) -> None:
    pictures = [_picture(0), _picture(1)]
    faces = [[_face((20.0, 30.0, 80.0, 100.0), obama), _face((150.0, 60.0, 200.0, 120.0), obama),
              _face((100.0, 120.0, 130.0, 160.0), obama)], [_face((90.0, 40.0, 150.0, 110.0), obama)]]
    options = FaceDetailOptions(strength=0.3, margin=0.3, feather=0.2, context=1.5, max_faces=2, resolution=64)
    # num_images: the generation's count; each face pass paints one picture whatever it was.
    settings = GenerationSettings(prompt="x", steps=2, seed=99, enhance_face_region=enhance, num_images=2)
    steps: list[tuple[int, int]] = []
    images, info = refine_faces(demo_app, obama, pictures, settings, [5, 8], options, faces=faces,
                                progress=lambda step, total: steps.append((step, total)))
    redrawn = [(0, faces[0][0]), (0, faces[0][1]), (1, faces[1][0])]  # max_faces: the third face of image 1 stays
    assert len(calls) == 3 and steps and steps[-1][0] == steps[-1][1]
    regions = []
    for call, (index, face) in zip(calls, redrawn, strict=True):
        region = head_region(face, (240, 180), margin=0.3, feather=0.2, resolution=64, head=False, context=1.5)
        regions.append(region)
        kps_image, face_mask = control_pictures(face, region, enhance)
        assert (call["width"], call["height"]) == region.work_size and call["strength"] == 0.3
        assert np.array_equal(np.asarray(call["control_image"]), np.asarray(kps_image))
        assert (call["control_mask"] is None) == (not enhance)
        if enhance:
            assert np.array_equal(np.asarray(call["control_mask"]), np.asarray(face_mask))
        assert call["image_embeds"] is obama.embedding and call["num_images_per_prompt"] == 1
        assert call["num_inference_steps"] == steps_for_strength(2, 0.3) == 4
        assert [g.initial_seed() for g in call["generator"]] == [[5, 8][index]]
    # The first pass sees the picture as it was; the second the picture with the first face already redrawn.
    first = pictures[0].crop(regions[0].crop).resize(regions[0].work_size, Image.LANCZOS)
    assert np.array_equal(np.asarray(calls[0]["image"]), np.asarray(first))
    assert calls[1]["image"].size == regions[1].work_size
    for out, picture, mine in ((images[0], pictures[0], regions[:2]), (images[1], pictures[1], regions[2:])):
        covered = _covered(picture.size, mine)
        out, original = np.asarray(out), np.asarray(picture)
        assert out.shape == original.shape and np.array_equal(out[~covered], original[~covered])
        assert np.abs(out[covered].astype(int) - original[covered]).mean() > 1
    assert info == {
        "ran": True, **options.model_dump(), "resolution": 64, "denoising_steps": 1,
        "images": [{"faces": [r.to_dict() for r in regions[:2]], "skipped": None},
                   {"faces": [regions[2].to_dict()], "skipped": None}],
    }


def test_without_seeds_the_settings_seed_is_used_and_the_models_resolution(demo_app, obama, calls) -> None:
    picture = _picture()
    face = _face((60.0, 40.0, 120.0, 110.0), obama)
    images, info = refine_faces(demo_app, obama, [picture], GenerationSettings(prompt="x", steps=1, seed=42),
                                options=FaceDetailOptions(strength=1.0, max_faces=1), faces=[[face]])
    (call,) = calls
    assert [g.initial_seed() for g in call["generator"]] == [42]
    assert info["resolution"] == demo_app.min_side and info["strength"] == 1.0 and info["denoising_steps"] == 1
    region = head_region(face, picture.size, margin=0.25, feather=0.1, resolution=demo_app.min_side, head=False,
                         context=1.3)  # the documented defaults
    assert info["images"][0]["faces"] == [region.to_dict()] and call["width"] == region.work_size[0]


def test_an_image_without_faces_is_returned_as_it_was_and_recorded(demo_app, obama, calls) -> None:
    picture = _picture()
    images, info = refine_faces(demo_app, obama, [picture], GenerationSettings(prompt="x", steps=1), [3],
                                FaceDetailOptions(resolution=64), faces=[[]])
    assert calls == [] and images[0] is picture
    assert info["ran"] is False and info["images"] == [{"faces": [], "skipped": "no face found"}]


def test_counts_that_do_not_match_the_images_are_one_line(demo_app, obama) -> None:
    pictures = [_picture(), _picture(1)]
    with pytest.raises(InvalidInputError, match=r"^give one seed per image \(2\), got 1$"):
        refine_faces(demo_app, obama, pictures, GenerationSettings(prompt="x"), [1])
    with pytest.raises(InvalidInputError, match=r"^give the faces of each image \(2\), got 3$"):
        refine_faces(demo_app, obama, pictures, GenerationSettings(prompt="x"), faces=[[], [], []])


def test_option_errors_name_the_field_as_the_surface_spells_it() -> None:
    label = lambda name: name.replace("_", " ").title()  # noqa: E731
    with pytest.raises(InvalidInputError, match=r"^Max Faces must be between 1 and 16, got 20$"):
        make_detail_options({"max_faces": 20}, label)
    with pytest.raises(InvalidInputError, match=r"^unknown face detail option 'Colour'; known: strength, margin, "
                                                r"feather, context, max_faces, resolution$"):
        make_detail_options({"colour": 1}, label)
    with pytest.raises(InvalidInputError, match=r"^context must be between 1 and 3, got 0.5$"):
        FaceDetailOptions(context=0.5)
    assert make_detail_options({"margin": 0.5}) == FaceDetailOptions(margin=0.5)
