"""`instantid generate / batch / doctor` end to end on the tiny demo model, in-process through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _demo import CORRUPT, FACE, NO_FACE, demo_model
from PIL import Image

from instantid.cli import main
from instantid.outputs import METADATA_KEY, PARAMETERS_KEY, read_metadata


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "demo"
    demo_model(folder)
    return folder


@pytest.fixture
def shared_model(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CLI load returns the session's demo model (the real --demo load is tested once, below)."""
    from instantid.server import ModelSettings

    monkeypatch.setattr(ModelSettings, "load", lambda self: demo_model(demo_dir))


def test_generate_demo_writes_png_with_metadata_and_sidecar(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("INSTANTID_DEMO_DIR", str(demo_dir))
    code = main(["generate", str(FACE), "--demo", "-p", "an astronaut", "--style", "Mars", "--steps", "2",
                 "--seeds", "3,4", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "images are noise" in captured.err
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["an-astronaut_s3.png", "an-astronaut_s4.png"]
    with Image.open(pngs[0]) as image:
        stored = json.loads(image.text[METADATA_KEY])
        assert "Steps: 2, Seed: 3" in image.text[PARAMETERS_KEY]
    assert stored["seed"] == 3 and stored["settings"]["style"] == "Mars" and stored["demo_weights"] is True
    assert "Mars colony" in stored["prompt"]
    assert json.loads(pngs[0].with_suffix(".json").read_text()) == stored
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.usefixtures("shared_model")
def test_generate_never_overwrites_without_flag(tmp_path: Path) -> None:
    args = ["generate", str(FACE), "-p", "x", "--steps", "1", "--seed", "5", "-o", str(tmp_path)]
    assert main(args) == 0
    first = (tmp_path / "x_s5.png").read_bytes()
    assert main(args) == 0
    assert (tmp_path / "x_s5.png").read_bytes() == first
    assert (tmp_path / "x_s5-0001.png").is_file() and (tmp_path / "x_s5-0001.json").is_file()
    assert main([*args, "--overwrite"]) == 0
    assert not (tmp_path / "x_s5-0002.png").exists()


@pytest.mark.usefixtures("shared_model")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(NO_FACE), "--steps", "1"], "no face found in"),
        ([str(CORRUPT), "--steps", "1"], "cannot read image"),
        ([str(FACE), "--steps", "0"], "steps must be between 1 and 200"),
        ([str(FACE), "--style", "Cubism"], "unknown style 'Cubism'"),
        ([str(FACE), "--seeds", "1,x"], "--seeds must be comma-separated"),
    ],
)
def test_generate_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["generate", *args, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "".join(err)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.usefixtures("shared_model")
def test_batch_runs_resumes_and_draws_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"identities:\n  - name: ex\n    photos: [{FACE}]\n"
        "prompts:\n  - a portrait\n  - {prompt: a knight, style: Watercolor, negative_prompt: armor}\n"
        "seeds: [1, 2]\nsettings: {steps: 1}\n"
    )
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out)]) == 0
    pngs = sorted((out / "ex").glob("*.png"))
    assert [p.name for p in pngs] == ["001-a-portrait_s1.png", "001-a-portrait_s2.png",
                                      "002-a-knight_s1.png", "002-a-knight_s2.png"]
    knight = read_metadata(out / "ex" / "002-a-knight_s2.png")
    assert knight["seed"] == 2 and knight["identity"] == "ex" and "armor" in knight["negative_prompt"]
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width >= 4 * 200
    capsys.readouterr()

    # An interrupted run leaves a PNG without its sidecar: only that one is redone.
    (out / "ex" / "001-a-portrait_s2.json").unlink()
    done_before = (out / "ex" / "002-a-knight_s1.png").stat().st_mtime_ns
    assert main(["batch", str(job), "-o", str(out)]) == 0
    assert "4 outputs, 3 already done, 1 to generate" in capsys.readouterr().out
    assert (out / "ex" / "001-a-portrait_s2.json").is_file()
    assert (out / "ex" / "002-a-knight_s1.png").stat().st_mtime_ns == done_before


def test_batch_bad_job_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("identities: []\nprompts: [x]\n")
    assert main(["batch", str(job), "-o", str(tmp_path)]) == 2
    assert "'identities' must be a non-empty list" in capsys.readouterr().err


def test_doctor_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["doctor", "--antelopev2-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "[MISSING] identitynet" in out and "InstantX/InstantID" in out
    assert "[MISSING] antelopev2" in out and "glintr100.onnx" in out
    assert "torch " in out
