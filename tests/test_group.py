"""Several people in one picture through the high-level API and the CLI (the pipeline side is tested in
tests/test_several_people.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _demo import FACES, demo_model

from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.io.outputs import read_metadata

GROUP = FACES / "group_two_people.jpg"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    return demo_model(tmp_path_factory.getbasetemp() / "demo-group")


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=float)


def _without_keypoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every person's keypoint picture black (regions, face tokens and size kept): what IdentityNet alone sees."""
    monkeypatch.setattr("instantid.api.group.draw_kps", lambda canvas, kps: canvas.copy())


@pytest.mark.parametrize("enhance", [False, True])
def test_one_person_reduces_to_plain_generation(app, enhance: bool) -> None:
    """With the face-region rule on, a person's region is cut to their face box, as generate() masks one face."""
    from instantid.api.settings import GenerationSettings

    person = app.prepare_identity(FACES / "obama_1.jpg")

    def group_of_one(enhance: bool):  # below the surfaces' two-person minimum, through the same machinery
        return app._generate_group([person], GenerationSettings(steps=2, seed=1, enhance_face_region=enhance),
                                   pose=FACES / "obama_1.jpg", pose_name="pose", progress=None, pose_faces=None)

    group = group_of_one(enhance)
    single = app.generate(person, steps=2, seed=1, enhance_face_region=enhance)
    assert np.array_equal(_pixels(group), _pixels(single))
    # ...and IdentityNet acts in both (else the equality would hold for any keypoints).
    off = app.generate(person, steps=2, seed=1, enhance_face_region=enhance, identitynet_strength=0.0)
    assert np.abs(_pixels(single) - _pixels(off)).max() > 10
    if enhance:
        assert not np.array_equal(_pixels(group), _pixels(group_of_one(False)))
    with pytest.raises(InvalidInputError, match="takes 2 to 4 people, got 1; for one person, make a plain"):
        app.generate_group([person], steps=2, seed=1)


def test_people_take_the_group_photo_faces_left_to_right(app, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = app.prepare_identity(FACES / "obama_1.jpg"), app.prepare_identity(FACES / "lecun_1.jpg")
    faces, _ = app.group_poses(GROUP, 2)
    assert faces[0].bbox[0] < faces[1].bbox[0]
    ab = app.generate_group([a, b], steps=2, seed=1, pose=GROUP)
    ba = app.generate_group([b, a], steps=2, seed=1, pose=GROUP)
    assert [p["references"] for p in ab.metadata["people"]] == [["obama_1.jpg"], ["lecun_1.jpg"]]
    assert np.abs(_pixels(ab) - _pixels(ba)).mean() > 0  # who stands where matters
    with pytest.raises(InvalidInputError, match="shows 2 face"):
        app.generate_group([a, b, a], steps=1, pose=GROUP)
    # The group photo's poses reach the picture through IdentityNet (on the whole picture: no face-box mask).
    posed = app.generate_group([a, b], steps=2, seed=1, pose=GROUP, enhance_face_region=False)
    _without_keypoints(monkeypatch)
    blank = app.generate_group([a, b], steps=2, seed=1, pose=GROUP, enhance_face_region=False)
    assert np.abs(_pixels(posed) - _pixels(blank)).max() > 10  # IdentityNet bypassed: exactly 0


def test_people_side_by_side_without_a_pose_photo(app, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = app.prepare_identity(FACES / "obama_1.jpg"), app.prepare_identity(FACES / "lecun_1.jpg")
    result = app.generate_group([a, b], steps=1, seed=2)
    assert result.metadata["pose_from"] == "columns" and result.metadata["task"] == "group"
    # Each person's own pose, moved into their column, steers IdentityNet (whole picture: no face-box mask).
    posed = app.generate_group([a, b], steps=2, seed=2, width=128, height=64, enhance_face_region=False)
    _without_keypoints(monkeypatch)
    blank = app.generate_group([a, b], steps=2, seed=2, width=128, height=64, enhance_face_region=False)
    assert np.abs(_pixels(posed) - _pixels(blank)).max() > 10  # IdentityNet bypassed: exactly 0


def test_cli_person_flags(app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from instantid.api.model_settings import ModelSettings

    monkeypatch.setattr("instantid.api.loader.load_model", lambda settings, analyzer=None: app)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: app.analyzer)
    args = ["generate", "--person", f"{FACES / 'obama_1.jpg'},{FACES / 'obama_2.jpg'}",
            "--person", str(FACES / "lecun_1.jpg"), "--pose", str(GROUP), "--steps", "1", "--seed", "4"]
    assert main([*args, "-o", str(tmp_path)]) == 0
    stored = read_metadata(tmp_path / "portrait_s4.png")
    assert [p["references"] for p in stored["people"]] == [["obama_1.jpg", "obama_2.jpg"], ["lecun_1.jpg"]]
    assert main([*args, "--person", str(FACES / "biden_1.jpg"), "-o", str(tmp_path / "x")]) == 2
    assert "shows 2 face(s) but 3 --person" in capsys.readouterr().err
    assert main(["generate", str(FACES / "obama_1.jpg"), "--person", str(GROUP), "-o", str(tmp_path)]) == 2
    capsys.readouterr()
    # One rule for the number of people (issue 18 item 3): 2 to 4, checked before any photo is read.
    for count in (1, 5):
        assert main(["generate", *(["--person", "missing.jpg"] * count), "-o", str(tmp_path / "y")]) == 2
        assert f"takes 2 to 4 people (one --person per person), got {count}" in capsys.readouterr().err
