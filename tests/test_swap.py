"""Face swap: head region geometry, exact paste-back, the model working on a crop, target choice, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _demo import FACE, FACES, NO_FACE, record_calls
from PIL import Image

from instantid.api.regions import head_region, paste_back, region_mask
from instantid.api.settings import GenerationSettings
from instantid.apps.swap import SwapOptions, swap_face
from instantid.errors import InvalidInputError, NoFaceError
from instantid.faces import SPACE_DLIB, Face

FAST = GenerationSettings(prompt="a photo of a person", steps=4, seed=11)


def _face(box: tuple[float, float, float, float]) -> Face:
    return Face(bbox=box, score=1.0, kps=np.zeros((5, 2), np.float32), embedding=np.zeros(128, np.float32),
                space=SPACE_DLIB)


def _scene(scale: float = 1.0) -> Image.Image:
    """A real face photo placed in a larger picture with a smooth background (so detection works)."""
    y, x = np.mgrid[0:480, 0:640]
    background = np.stack([x * 255 / 640, y * 255 / 480, (x + y) * 255 / 1120], -1).astype(np.uint8)
    canvas = Image.fromarray(background)
    canvas.paste(Image.open(FACE).convert("RGB"), (180, 140))
    return canvas.resize((round(640 * scale), round(480 * scale)), Image.LANCZOS) if scale != 1 else canvas


def _outside_band(size: tuple[int, int], ellipse: list[float], feather: float) -> np.ndarray:
    """Pixels certainly farther than ``feather`` from the ellipse: a pixel at normalised radius r > 1 lies on
    the ellipse scaled by r, at least (r - 1) x the minor radius away from it."""
    cx, cy, rx, ry = ellipse
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]] + 0.5
    r = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    return (r - 1) * min(rx, ry) > feather + 1


def _inside(size: tuple[int, int], ellipse: list[float]) -> np.ndarray:
    cx, cy, rx, ry = ellipse
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]] + 0.5
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1


# ---- geometry, no model ------------------------------------------------------------------------
def test_head_region_covers_the_head_and_the_crop_holds_the_feathered_mask() -> None:
    face = _face((400, 300, 500, 420))  # 100 x 120 face box
    region = head_region(face, (1200, 900), margin=0.3, feather=0.1, resolution=1024)
    cx, cy, rx, ry = region.ellipse
    assert cy - ry <= 300 - 0.45 * 120  # up to the crown, above the face box
    assert cy + ry >= 420 and cx - rx <= 400 and cx + rx >= 500  # chin and both sides covered
    mask = region_mask(region)
    assert mask.shape == (region.crop_size[1], region.crop_size[0])
    assert mask.max() == 1 and mask.min() == 0
    # The whole soft edge is inside the crop: the crop's border rows and columns are 0.
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    assert region.crop_size[0] == region.crop_size[1] and region.work_size == (1024, 1024)
    # The edge is soft: values strictly between 0 and 1 exist, and only near the ellipse.
    assert ((mask > 0) & (mask < 1)).sum() > 0


def test_crop_stays_inside_the_photo_and_keeps_the_mask_near_an_edge() -> None:
    face = _face((5, 10, 105, 130))  # face at the top-left corner
    region = head_region(face, (640, 480), margin=0.3, feather=0.1, resolution=512)
    x1, y1, x2, y2 = region.crop
    assert x1 == 0 and y1 == 0 and x2 <= 640 and y2 <= 480
    mask = region_mask(region)
    assert not mask[-1].any() and not mask[:, -1].any()  # cut only by the photo's own edges


def test_a_big_photo_costs_what_a_small_one_does() -> None:
    small = head_region(_face((400, 300, 500, 420)), (1000, 800), margin=0.3, feather=0.1, resolution=1024)
    big = head_region(_face((1600, 1200, 2000, 1680)), (4000, 3200), margin=0.3, feather=0.1, resolution=1024)
    assert small.work_size == big.work_size == (1024, 1024)
    assert big.crop_size[0] == pytest.approx(4 * small.crop_size[0], abs=4)


def test_paste_back_is_exact_outside_the_mask() -> None:
    rng = np.random.RandomState(0)
    photo = Image.fromarray(rng.randint(0, 256, (300, 400, 3), dtype=np.uint8))
    region = head_region(_face((150, 100, 230, 200)), photo.size, margin=0.2, feather=0.15, resolution=64)
    mask = region_mask(region)
    painted = Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8))
    result = np.asarray(paste_back(photo, painted, region, mask))
    original = np.asarray(photo)
    full = np.zeros(original.shape[:2], np.float32)
    x1, y1, x2, y2 = region.crop
    full[y1:y2, x1:x2] = mask
    assert np.array_equal(result[full == 0], original[full == 0])
    expected = np.asarray(painted.resize(region.crop_size, Image.LANCZOS))[mask == 1]
    assert np.array_equal(result[y1:y2, x1:x2][mask == 1], expected)


# ---- end to end on the tiny demo stack ---------------------------------------------------------------
@pytest.fixture(scope="module")
def app(demo_app):
    return demo_app


@pytest.fixture(scope="module")
def person(obama):
    return obama


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every inpainting call's picture and mask sizes."""
    from instantid.pipelines.inpaint import StableDiffusionXLInstantIDInpaintPipeline as Pipe

    return record_calls(monkeypatch, Pipe, lambda kwargs: {"image": kwargs["image"].size, "mask":
                        kwargs["mask_image"].size, "size": (kwargs["width"], kwargs["height"])})


def test_swap_repaints_the_head_and_leaves_every_other_pixel(app, person, calls) -> None:
    scene = _scene()
    result = swap_face(app, person, scene, FAST, SwapOptions(resolution=128), scene_name="scene.png")
    out, original = np.asarray(result.images[0]), np.asarray(scene)
    assert out.shape == original.shape
    info = result.metadata["swap"]
    band = _outside_band(scene.size, info["ellipse"], info["feather_px"])
    assert band.mean() > 0.5 and np.array_equal(out[band], original[band])  # exactly equal outside the band
    inside = _inside(scene.size, info["ellipse"])
    assert np.abs(out[inside].astype(int) - original[inside]).mean() > 5  # the head was repainted
    assert calls == [{"image": (128, 128), "mask": (128, 128), "size": (128, 128)}]
    assert result.metadata["task"] == "swap" and result.metadata["references"] == ["obama_1.jpg"]
    assert info["scene"] == "scene.png" and info["head_margin"] == 0.3 and info["target_index"] == 0
    assert result.metadata["pose_from"] == "scene.png (face 0)" and result.seeds == [11]


def test_the_model_works_at_its_resolution_whatever_the_photo_size(app, person, calls) -> None:
    big = _scene(3.0)  # 1920 x 1440
    result = swap_face(app, person, big, FAST, SwapOptions(resolution=128))
    assert result.images[0].size == big.size
    assert calls[0]["size"] == (128, 128) and calls[0]["image"] == (128, 128)
    crop = result.metadata["swap"]["crop_box"]
    assert crop[2] - crop[0] > 400  # a crop of the photo at photo scale, worked on at 128 px


def test_target_index_picks_the_face_and_errors_are_one_line(app, person) -> None:
    group = Image.open(FACES / "group_two_people.jpg").convert("RGB")
    faces = app.analyze(group)
    result = swap_face(app, person, group, FAST.updated(steps=2), SwapOptions(target_index=1, resolution=64))
    cx, cy = result.metadata["swap"]["ellipse"][:2]
    x1, y1, x2, y2 = faces[1].bbox
    assert x1 < cx < x2  # the second largest face, not the largest
    with pytest.raises(InvalidInputError, match="face index 5 is out of range: 2 face"):
        swap_face(app, person, group, FAST, SwapOptions(target_index=5, resolution=64))
    with pytest.raises(NoFaceError, match="no face found in edge_no_face_noise.png"):
        swap_face(app, person, NO_FACE, FAST, SwapOptions(resolution=64))


# ---- the command line ------------------------------------------------------------------------------------
@pytest.fixture
def loads(app, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """CLI model loads return the session's demo model; the list records each load."""
    from instantid.api.model_settings import ModelSettings

    seen: list[str] = []
    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: seen.append("model") or app)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: app.analyzer)
    return seen


def test_swap_command_writes_the_swapped_photo_with_its_settings(tmp_path, loads, capsys) -> None:
    from instantid.cli import main
    from instantid.io.outputs import read_metadata

    scene = tmp_path / "scene.png"
    _scene().save(scene)
    code = main(["swap", "--face", str(FACES / "obama_1.jpg"), "--into", str(scene), "--mix",
                 f"{FACES / 'lecun_1.jpg'}:0.3", "--steps", "2", "--seed", "5", "--resolution", "64",
                 "--head-margin", "0.5", "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["swap_scene_s5.png"] and captured.out.strip() == str(written[0])
    metadata = read_metadata(written[0])
    assert metadata["task"] == "swap" and metadata["swap"]["head_margin"] == 0.5
    assert metadata["mixed_with"] == [{"name": "lecun_1.jpg", "weight": 0.3}]
    out, original = np.asarray(Image.open(written[0]).convert("RGB")), np.asarray(_scene())
    band = _outside_band(out.shape[1::-1], metadata["swap"]["ellipse"], metadata["swap"]["feather_px"])
    assert np.array_equal(out[band], original[band])


def test_swap_command_takes_num_images_as_the_api_does(tmp_path, loads, capsys) -> None:
    """num_images on a swap: one rule on every surface (issue 18 item 3); the CLI used to refuse it."""
    from instantid.api.settings import UNUSED_SETTINGS
    from instantid.cli import main

    assert "num_images" not in UNUSED_SETTINGS["swap"]
    scene = tmp_path / "scene.png"
    _scene().save(scene)
    code = main(["swap", "--face", str(FACES / "obama_1.jpg"), "--into", str(scene), "--steps", "2", "--seed", "5",
                 "--num-images", "2", "--resolution", "64", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["swap_scene_s5.png", "swap_scene_s6.png"]


def test_swap_command_says_which_face_of_a_group_photo_it_replaces(tmp_path, loads, capsys) -> None:
    from instantid.cli import main

    code = main(["swap", "--face", str(FACES / "obama_1.jpg"), "--into", str(FACES / "group_two_people.jpg"),
                 "--steps", "2", "--seed", "5", "--target-index", "1", "--resolution", "64", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "group_two_people.jpg: 2 faces found, replacing face 1; --target-index picks another" in " ".join(
        err.split())  # however the console wraps it


def test_swap_command_checks_everything_before_loading_the_model(tmp_path, loads, capsys) -> None:
    from instantid.cli import main

    scene = tmp_path / "scene.png"
    _scene().save(scene)
    base = ["swap", "--face", str(FACES / "obama_1.jpg"), "-o", str(tmp_path / "out")]
    cases = [
        ([*base, "--into", str(NO_FACE)], "no face found in edge_no_face_noise.png"),
        ([*base, "--into", str(scene), "--target-index", "3"], "face index 3 is out of range"),
        ([*base, "--into", str(scene), "--mix", "lecun.jpg"], "--mix takes PHOTO:WEIGHT"),
        ([*base, "--into", str(scene), "--mix", "lecun.jpg:1.5"], "--mix weight must be between 0 and 1"),
        ([*base, "--into", str(scene), "--head-margin", "5"], "--head-margin must be between 0 and 2"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert loads == []
    assert not list((tmp_path / "out").glob("*.png"))
