"""Face detail second pass on the tiny stack: faces found in a picture are redrawn at the model's working size
and blended back; everything outside each feathered region, and pictures without a face, stay exactly."""

from __future__ import annotations

import numpy as np
import pytest
from _demo import FACE, FACES, record_calls
from PIL import Image

from instantid.api.face_detail import FaceDetailOptions, refine_faces
from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError

SETTINGS = GenerationSettings(prompt="a portrait", steps=4)
OPTIONS = FaceDetailOptions(strength=0.5, resolution=128)


@pytest.fixture(scope="module")
def app(demo_app):
    return demo_app


@pytest.fixture(scope="module")
def person(obama):
    return obama


def _picture_with_a_small_face() -> Image.Image:
    """A 'full-body' picture: a real face photo, shrunk, in a larger canvas (so detection works)."""
    rng = np.random.RandomState(3)
    canvas = Image.fromarray(rng.randint(90, 160, (400, 360, 3), dtype=np.uint8))
    canvas.paste(Image.open(FACE).convert("RGB"), (30, 60))
    return canvas


def _far_from(size: tuple[int, int], ellipse: list[float], feather: float) -> np.ndarray:
    """Pixels more than ``feather`` (+1) from the ellipse, outside it: at normalised radius r a pixel is at least
    (r - 1) x the minor radius away."""
    cx, cy, rx, ry = ellipse
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]] + 0.5
    r = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    return (r - 1) * min(rx, ry) > feather + 1


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDImg2ImgPipeline as Pipe

    return record_calls(monkeypatch, Pipe, lambda kwargs: kwargs["image"].size)


def test_faces_are_redrawn_at_working_size_and_the_rest_is_untouched(app, person, calls) -> None:
    picture = _picture_with_a_small_face()
    noise = Image.open(FACES / "edge_no_face_noise.png").convert("RGB")
    images, info = refine_faces(app, person, [picture, noise], SETTINGS, seeds=[1, 2], options=OPTIONS)
    assert calls == [(128, 128)]  # one face, worked on at the model's size; nothing for the faceless picture
    assert info["ran"] is True and info["strength"] == 0.5 and info["resolution"] == 128
    assert info["denoising_steps"] == 2
    first, second = info["images"]
    assert second == {"faces": [], "skipped": "no face found"}
    assert np.array_equal(np.asarray(images[1]), np.asarray(noise))
    assert len(first["faces"]) == 1 and first["skipped"] is None
    face = first["faces"][0]
    out, original = np.asarray(images[0]), np.asarray(picture)
    assert images[0].size == picture.size
    far = _far_from(picture.size, face["ellipse"], face["feather_px"])
    assert np.array_equal(out[far], original[far])
    x1, y1, x2, y2 = (int(v) for v in face["face_box"])
    assert np.abs(out[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2]).mean() > 5  # the face was redrawn
    # The same seeds give the same pass.
    again, _ = refine_faces(app, person, [picture], SETTINGS, seeds=[1], options=OPTIONS)
    assert np.array_equal(np.asarray(again[0]), out)


def test_nothing_found_is_recorded_not_an_error(app, person) -> None:
    noise = Image.open(FACES / "edge_no_face_noise.png").convert("RGB")
    images, info = refine_faces(app, person, [noise], SETTINGS, seeds=[0], options=OPTIONS)
    assert info["ran"] is False and info["images"][0]["skipped"] == "no face found"
    assert images[0] is noise or np.array_equal(np.asarray(images[0]), np.asarray(noise))


def test_options_are_checked() -> None:
    with pytest.raises(InvalidInputError, match="^strength must be between 0.05 and 1, got 0$"):
        FaceDetailOptions(strength=0)
    with pytest.raises(InvalidInputError, match="^resolution must be a multiple of 8 between 64 and 2048, got 100$"):
        FaceDetailOptions(resolution=100)


def test_detail_command_writes_refined_pictures_and_reports_faceless_ones(app, tmp_path, monkeypatch, capsys):
    from instantid.api.model_settings import ModelSettings
    from instantid.cli import main
    from instantid.io.outputs import read_metadata

    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: app)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: app.analyzer)
    picture = tmp_path / "full_body.png"
    _picture_with_a_small_face().save(picture)
    code = main(["detail", str(picture), str(FACES / "edge_no_face_noise.png"), "--face", str(FACES / "obama_1.jpg"),
                 "--steps", "2", "--strength", "0.5", "--seed", "4", "--max-faces", "1", "--context", "1.5",
                 "--resolution", "128", "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # one picture was not written: the exit code says so
    assert "edge_no_face_noise.png: no face found, not written" in captured.err
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["detail_full-body_s4.png"]
    metadata = read_metadata(written[0])
    assert metadata["task"] == "face_detail" and metadata["source"] == "full_body.png" and metadata["seed"] == 4
    assert metadata["face_detail"]["ran"] is True and metadata["face_detail"]["strength"] == 0.5
    assert len(metadata["face_detail"]["faces"]) == 1
    assert metadata["face_detail"]["max_faces"] == 1 and metadata["face_detail"]["context"] == 1.5
    # One record format for the CLI, /v1/detail and the UI: what detail_picture writes for the same inputs.
    from instantid.api.face_side import prepare_identity
    from instantid.apps.detail import detail_picture

    identity = prepare_identity(app.analyzer, [str(FACES / "obama_1.jpg")])
    shared = detail_picture(app, identity, Image.open(picture).convert("RGB"), "full_body.png",
                            GenerationSettings(steps=2, seed=4),
                            FaceDetailOptions(strength=0.5, max_faces=1, context=1.5, resolution=128))
    assert set(metadata) == set(shared.image_metadata(0)) and metadata["face_detail"] == shared.metadata["face_detail"]
    with Image.open(written[0]) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(shared.images[0]))


def test_detail_command_flags_are_the_declared_options(capsys):
    from instantid.cli import main

    assert main(["detail", "--help"]) == 0
    text = capsys.readouterr().out
    for name in FaceDetailOptions.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    code = main(["detail", str(FACE), "--demo", "--face", str(FACE), "--max-faces", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-faces" in err and "Traceback" not in err


def test_faces_the_caller_found_are_not_searched_again(app, person, monkeypatch):
    picture = _picture_with_a_small_face()
    found = app.analyze(picture, "full body")
    looked: list[str] = []
    analyze = app.analyzer.analyze
    monkeypatch.setattr(app.analyzer, "analyze", lambda image, name=None: looked.append(name) or analyze(image, name))
    given, info = refine_faces(app, person, [picture], SETTINGS, seeds=[1], options=OPTIONS, faces=[found])
    assert looked == [] and len(info["images"][0]["faces"]) == 1
    searched, _ = refine_faces(app, person, [picture], SETTINGS, seeds=[1], options=OPTIONS)
    assert looked == ["generated image 1"]
    assert np.array_equal(np.asarray(given[0]), np.asarray(searched[0]))
    with pytest.raises(InvalidInputError, match="give the faces of each image"):
        refine_faces(app, person, [picture], SETTINGS, seeds=[1], options=OPTIONS, faces=[])


def test_generate_records_the_face_detail_pass(app, person):
    """The knob declared in settings.py reaches generate(); on the noise of the tiny stack no face is found,
    which is recorded rather than hidden."""
    from instantid.api.settings import GenerationSettings

    result = app.generate(person, GenerationSettings(steps=2, seed=1, face_detail=True, face_detail_strength=0.5))
    info = result.metadata["face_detail"]
    assert info["strength"] == 0.5 and info["images"][0]["skipped"] == "no face found"
    plain = app.generate(person, GenerationSettings(steps=2, seed=1))
    assert "face_detail" not in plain.metadata


def test_detail_command_with_no_face_anywhere_stops_before_loading(tmp_path, monkeypatch, capsys):
    from instantid.cli import main

    loads = []
    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: loads.append(1))
    code = main(["detail", str(FACES / "edge_no_face_noise.png"), "--demo", "--face", str(FACES / "obama_1.jpg"),
                 "-o", str(tmp_path)])
    assert code == 2 and loads == [] and "no face found in edge_no_face_noise.png" in capsys.readouterr().err
