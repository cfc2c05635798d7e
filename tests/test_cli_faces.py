"""``instantid faces`` and ``instantid compare`` through the console entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
from PIL import Image

from instantid.cli import main
from instantid.faces.tiny import write_tiny_antelopev2

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_photos = pytest.mark.skipif(not FACES_DIR.is_dir(), reason=f"shared photos not found at {FACES_DIR}")
SMALL = str(FACES_DIR / "edge_obama_small.jpg")
GROUP = str(FACES_DIR / "group_two_people.jpg")
NOISE = str(FACES_DIR / "edge_no_face_noise.png")
CORRUPT = str(FACES_DIR / "edge_corrupt.jpg")


@needs_photos
def test_faces_json_lists_every_face(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["faces", SMALL, GROUP, "--face-backend", "dlib", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == [SMALL, GROUP]
    assert [len(r["faces"]) for r in records] == [1, 2]
    face = records[1]["faces"][0]
    assert set(face) == {"bbox", "score", "kps", "embedding", "space"}
    assert len(face["bbox"]) == 4 and np.asarray(face["kps"]).shape == (5, 2)
    assert len(face["embedding"]) == 128 and face["space"] == "dlib-128"


@needs_photos
def test_faces_reports_bad_images_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["faces", NOISE, SMALL, CORRUPT, "--face-backend", "dlib", "--json"]) == 2
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [len(r["faces"]) for r in records] == [0, 1, 0]
    errors = captured.err.strip().splitlines()
    assert errors[0] == f"error: no face found in {NOISE}"
    assert errors[1].startswith(f"error: cannot read image {CORRUPT}: ")
    assert "Traceback" not in captured.err


@needs_photos
def test_faces_table_and_drawings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single = tmp_path / "small.png"
    assert main(["faces", SMALL, "--face-backend", "dlib", "--draw", str(single)]) == 0
    assert "1 face(s), dlib-128" in capsys.readouterr().out
    with Image.open(single) as drawn, Image.open(SMALL) as original:
        assert drawn.size == original.size
        assert np.any(np.asarray(drawn.convert("RGB")) != np.asarray(original.convert("RGB")))
    folder = tmp_path / "drawn"
    assert main(["faces", SMALL, GROUP, "--face-backend", "dlib", "--draw", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["edge_obama_small_faces.png", "group_two_people_faces.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drawn", "small.png"], "no temporary files left"


@needs_photos
def test_compare_gives_distance_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", SMALL, str(FACES_DIR / "obama_1.jpg"), "--face-backend", "dlib"]) == 0
    assert capsys.readouterr().out.strip().endswith(": same")
    assert main(["compare", SMALL, str(FACES_DIR / "biden_1.jpg"), "--face-backend", "dlib"]) == 0
    assert capsys.readouterr().out.strip().endswith(": different")
    assert main(["compare", SMALL, NOISE, "--face-backend", "dlib"]) == 2
    assert capsys.readouterr().err.strip() == f"error: no face found in {NOISE}"


def test_faces_with_antelopev2_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tiny_antelopev2(tmp_path / "antelopev2")
    pixels = np.zeros((640, 640, 3), np.uint8)
    pixels[320:352, 320:352] = 255
    photo = tmp_path / "cell.png"
    Image.fromarray(pixels).save(photo)
    assert main(["faces", str(photo), "--face-backend", "antelopev2", "--antelopev2-root", str(root), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    (face,) = record["faces"]
    assert face["space"] == "antelopev2-512" and len(face["embedding"]) == 512
    assert face["bbox"] == pytest.approx([256, 256, 384, 384])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["faces", str(photo), "--face-backend", "antelopev2", "--antelopev2-root", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: antelopev2 face model not found") and "\n" not in err


@needs_photos
def test_faces_on_a_tiny_image_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2), "white").save(tiny)
    assert main(["faces", str(tiny), SMALL, "--face-backend", "dlib", "--json"]) == 2
    captured = capsys.readouterr()
    assert [len(r["faces"]) for r in json.loads(captured.out)] == [0, 1], "the other photo is still analysed"
    assert captured.err.strip() == (f"error: cannot read image {tiny}: the image is too small (2x2); "
                                    "a face needs at least 20 pixels on each side")


@needs_photos
def test_faces_draw_creates_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "out"
    assert main(["faces", SMALL, "--face-backend", "dlib", "--draw", f"{folder}/"]) == 0
    assert [p.name for p in folder.iterdir()] == ["edge_obama_small_faces.png"]
    with Image.open(folder / "edge_obama_small_faces.png") as drawn, Image.open(SMALL) as original:
        assert drawn.size == original.size


@needs_photos
@pytest.mark.parametrize("target", ["blocker", "blocker/sub", "blocker/drawn.png"])
def test_faces_draw_into_a_file_is_one_error_before_analysis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")

    def no_analysis(*args: object, **kwargs: object) -> None:
        raise AssertionError("the output path is checked before the face model loads")

    monkeypatch.setattr("instantid.cli.faces.create_face_analyzer", no_analysis)
    assert main(["faces", SMALL, "--face-backend", "dlib", "--draw", str(tmp_path / target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --draw ")
    assert f"{tmp_path / 'blocker'} is a file, not a folder" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert (tmp_path / "blocker").read_text() == "a file where a folder should be"


@needs_photos
def test_compare_on_a_group_photo_compares_every_face(capsys: pytest.CaptureFixture[str]) -> None:
    """A group photo is not silently reduced to its largest face (issue 18 item 4): every pair gets a line."""
    assert main(["compare", GROUP, str(FACES_DIR / "obama_1.jpg"), "--face-backend", "dlib"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("group_two_people.jpg: 2 face(s), obama_1.jpg: 1 face(s); every pair")
    assert [line.split(": distance")[0].strip() for line in lines[1:]] == [
        "group_two_people.jpg face 0 / obama_1.jpg face 0", "group_two_people.jpg face 1 / obama_1.jpg face 0"]
    assert all(line.endswith((": same", ": different")) for line in lines[1:])
