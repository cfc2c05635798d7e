"""`instantid generate / batch / doctor` end to end on the tiny demo model, in-process through main()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _demo import CORRUPT, FACE, NO_FACE, demo_model
from PIL import Image

from instantid.cli import main
from instantid.io.outputs import METADATA_KEY, PARAMETERS_KEY, read_metadata


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "demo"
    demo_model(folder)
    return folder


@pytest.fixture
def shared_model(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every CLI load returns the session's demo model (the real --demo load is tested once, below); the list
    records each model load, so a test can tell whether a check came before it."""
    from instantid.api.model_settings import ModelSettings

    loads: list[str] = []

    def load(self: ModelSettings, analyzer: object = None) -> object:
        loads.append("model")
        return demo_model(demo_dir)

    monkeypatch.setattr("instantid.api.loader.load_model", load)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: demo_model(demo_dir).analyzer)
    return loads


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
        assert "Steps: 2, Sampler: Euler, CFG scale: 5.0, Seed: 3, Size: " in image.text[PARAMETERS_KEY]
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(NO_FACE), "--steps", "1"], "no face found in"),
        ([str(CORRUPT), "--steps", "1"], "cannot read image"),
        (["missing.jpg", "--steps", "1"], "missing.jpg"),
        ([str(FACE), "--pose", str(NO_FACE)], "no face found in edge_no_face_noise.png"),
        ([str(FACE), "--steps", "0"], "--steps must be between 1 and 200"),
        ([str(FACE), "--guidance", "99"], "--guidance must be between 0 and 30"),
        ([str(FACE), "--num-images", "0"], "--num-images must be between 1 and 16"),
        ([str(FACE), "--style", "Cubism"], "unknown style 'Cubism'"),
        ([str(FACE), "--seeds", "1,x"], "--seeds must be comma-separated"),
        ([str(FACE), "--seeds", ",,"], "--seeds must be comma-separated integers (-1 = random), got ',,'"),
        ([str(FACE), "--seeds", ""], "--seeds must be comma-separated integers (-1 = random), got ''"),
        ([str(FACE), "--device", "gpu"], "--device 'gpu' is not a device; choose cuda, cuda:N, mps or cpu"),
        ([str(FACE), "--demo", "--base", "x"], "--demo uses its own tiny weights; drop --base"),
    ],
)
def test_generate_bad_input_is_one_line_exit_2_before_the_model_loads(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture, shared_model: list[str]
) -> None:
    assert main(["generate", *args, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "".join(err)
    assert not any("seed" in line for line in err[:-1])  # no progress bar was drawn
    assert shared_model == []  # found before the (slow) model load
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("blocked", ["file", "under-file"])
def test_generate_output_path_blocked_by_a_file_is_one_line_before_loading(
    blocked: str, tmp_path: Path, capsys: pytest.CaptureFixture, shared_model: list[str]
) -> None:
    (tmp_path / "taken").write_text("a file where a folder should be")
    out = tmp_path / "taken" if blocked == "file" else tmp_path / "taken" / "sub"
    assert main(["generate", str(FACE), "--steps", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {out}: {tmp_path / 'taken'} is a file, not a folder; give another folder"]
    assert shared_model == []


def test_generate_without_cuda_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, shared_model: list[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", str(FACE), "--device", "cuda", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: CUDA is not available here" in err[0]
    assert shared_model == []


@pytest.mark.usefixtures("shared_model")
def test_seeds_and_num_images_never_make_a_seed_twice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(FACE), "-p", "x", "--steps", "1", "--seeds", "1,2", "--num-images", "2",
                 "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["x_s1.png", "x_s2.png", "x_s3.png"]
    assert "seed(s) 2 asked for twice: made once" in capsys.readouterr().err
    assert [read_metadata(tmp_path / f"x_s{s}.png")["seed"] for s in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.usefixtures("shared_model")
def test_seed_minus_one_is_random_and_the_seed_used_is_recorded(tmp_path: Path) -> None:
    assert main(["generate", str(FACE), "-p", "x", "--steps", "1", "--seed", "-1", "--seeds", "4,-1",
                 "-o", str(tmp_path)]) == 0
    seeds = sorted(read_metadata(png)["seed"] for png in tmp_path.glob("*.png"))
    assert len(seeds) == 3 and 4 in seeds and all(0 <= s <= 2**32 - 1 for s in seeds)
    assert main(["generate", str(FACE), "--seed", "-2", "-o", str(tmp_path)]) == 2


@pytest.mark.usefixtures("shared_model")
def test_empty_prompt_stays_empty_and_paths_stay_private(tmp_path: Path) -> None:
    assert main(["generate", str(FACE), "--steps", "1", "--seed", "2", "-o", str(tmp_path)]) == 0
    png = tmp_path / "portrait_s2.png"
    stored = read_metadata(png)
    assert stored["prompt"] == "" and stored["user_prompt"] == ""
    with Image.open(png) as image:
        parameters = image.text[PARAMETERS_KEY]
    assert parameters.splitlines()[0] == "" and "Negative prompt" not in parameters
    assert stored["references"] == ["face.jpg"]  # a file name, not the folder it sits in
    assert str(FACE.parent) not in png.with_suffix(".json").read_text()


@pytest.mark.usefixtures("shared_model")
def test_generate_mix_and_layout(tmp_path: Path, faces_dir: Path) -> None:
    """--mix moves the identity, --layout replaces the pose: both recorded, both change the picture."""
    runs = {
        "plain": [],
        "mixed": ["--mix", f"{faces_dir / 'lecun_1.jpg'}:0.5"],
        "layout": ["--layout", "profile-left"],
        # Without the face-region mask (which moves with the face box) only IdentityNet sees the layout's pose.
        "profile": ["--layout", "profile-left", "--no-enhance-face-region"],
        "frontal": ["--layout", "frontal", "--no-enhance-face-region"],
    }
    pictures = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["generate", str(FACE), "--steps", "2", "--seed", "3", "-o", str(out), *extra]) == 0
        png = out / "portrait_s3.png"
        pictures[name] = np.asarray(Image.open(png), dtype=float)
    mixed = read_metadata(tmp_path / "mixed" / "portrait_s3.png")
    assert mixed["mixed_with"] == [{"name": "lecun_1.jpg", "weight": 0.5}]
    assert read_metadata(tmp_path / "layout" / "portrait_s3.png")["pose_from"] == "layout:profile-left"
    assert np.abs(pictures["plain"] - pictures["mixed"]).mean() > 0
    assert pictures["layout"].shape[:2] == (256, 256)  # a layout is square: the demo's size, not the photo's
    assert pictures["plain"].shape[:2] != (256, 256)
    assert np.abs(pictures["profile"] - pictures["frontal"]).max() > 10  # IdentityNet bypassed: exactly 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--layout", "nope"], "unknown layout 'nope'"), (["--mix", "x.jpg"], "--mix takes PHOTO:WEIGHT"),
     (["--layout", "frontal", "--pose", str(FACE)], "give --pose or --layout, not both")],
)
def test_generate_mix_and_layout_errors_before_loading(
    args: list[str], message: str, tmp_path: Path, shared_model: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(["generate", str(FACE), "-o", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err and shared_model == []


def test_plan_seeds_rule() -> None:
    from instantid.cli.generate import plan_seeds

    assert plan_seeds([1, 2], 2) == ([(1, 2), (3, 1)], [2])
    assert plan_seeds([5, 1], 3) == ([(5, 3), (1, 3)], [])
    assert plan_seeds([1, 3, 2], 2) == ([(1, 2), (3, 2)], [2, 3])
    assert plan_seeds([None], 3) == ([(None, 3)], [])


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


def test_demo_run_prints_no_library_chatter(tmp_path: Path) -> None:
    """The README's first command on a fresh machine: our lines only, no loading bars, warnings or escapes.
    (With --verbose the same run prints the libraries' "Writing model shards" / "Loading weights" bars.)"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    env.pop("DIFFUSERS_VERBOSITY", None)
    run = subprocess.run(
        [sys.executable, "-m", "instantid.cli", "generate", "--demo", "--demo-cache-dir", str(tmp_path / "demo"),
         str(FACE), "-p", "a watercolor portrait", "--style", "Watercolor", "--steps", "2", "--seed", "1",
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    for chatter in ("Loading pipeline components", "Loading weights", "Writing model shards", "\x1b[A",
                    "FutureWarning", "torch_dtype", "kept in float32", "Warning", "it/s"):
        assert chatter not in run.stderr, run.stderr
    assert run.stdout.strip() == str(tmp_path / "out" / "a-watercolor-portrait_s1.png")


def test_help_states_the_seed_rule_and_the_batch_precedence(capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from instantid.apps.batch import PRECEDENCE

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["generate", "--help"]) == 0
    generate_help = " ".join(capsys.readouterr().out.split())
    assert "Each seed S gives --num-images images with seeds S, S+1, ...; a seed already made" in generate_help
    assert main(["batch", "--help"]) == 0
    batch_help = " ".join(capsys.readouterr().out.split())
    assert f"Settings precedence: {PRECEDENCE}" in batch_help and "--fail-fast" in batch_help


def test_every_command_module_is_registered() -> None:
    """A command module missing from the list silently drops its commands (`instantid serve` did)."""
    from instantid import cli

    folder = Path(cli.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "__main__", "options"}
    assert modules <= set(cli._COMMAND_MODULES)


def test_face_model_the_published_adapter_cannot_use_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:

    loads: list[str] = []
    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: loads.append("model"))
    assert main(["generate", str(FACE), "--face-backend", "dlib", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the published face adapter needs antelopev2-512 face embeddings but the face model is "
                   "dlib-128: unpack antelopev2 (`instantid doctor` says where) or pass --antelopev2-root"]
    assert loads == []
