"""`instantid batch` rows with an init picture (image-to-image) or style references (InstantStyle): the same pixels
as the API's call, every bad row found before anything runs, recorded, and resumed by their contents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _demo import FACE
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.apps.batch import STYLE_ADAPTER, load_job, plan, task_digest
from instantid.apps.batch_file import BatchJob, BatchTask, IdentitySpec, PromptSpec
from instantid.cli import main
from instantid.io.outputs import read_metadata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
FAST = {"steps": 2, "width": 64, "height": 64}  # 2 steps at strength 0.6 run one image-to-image step


@pytest.fixture
def loads(model: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The session's demo model for every load (counted), and its face model for the photo checks."""
    from instantid.api.model_settings import ModelSettings

    counts = {"model": 0}

    def load(self: ModelSettings, analyzer: object = None) -> object:
        counts["model"] += 1
        return model

    monkeypatch.setattr("instantid.api.loader.load_model", load)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: model.analyzer)
    return counts


@pytest.fixture
def adapter(model: Any) -> list[str]:
    """The demo's tiny style adapter as the option naming it (without it, rows with a style picture need the
    published adapter: found before anything runs, as `generate --style-image` finds it)."""
    return ["--style-adapter", model.default_style_adapter]


def _picture(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((48, 40, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _pixels(path: Path | Image.Image) -> np.ndarray:
    return np.asarray(Image.open(path) if isinstance(path, Path) else path)


def _csv(tmp_path: Path, *rows: str, header: str = "identity,photos,prompt,seed,init_image,denoising_strength"
         ) -> Path:
    job = tmp_path / "job.csv"
    job.write_text("\n".join([f"{header},steps,width,height", *(f"{r},2,64,64" for r in rows)]) + "\n")
    return job


def test_an_init_image_row_is_the_apis_image_to_image(tmp_path: Path, model: Any, loads: dict[str, int],
                                                      capsys: pytest.CaptureFixture) -> None:
    room = _picture(tmp_path / "pics" / "room.png", 1)
    # The same prompt and seed without the picture: another output, not the same one overwritten.
    job = _csv(tmp_path, f"ex,{FACE},an oil painting,3,pics/room.png,0.6", f"ex,{FACE},an oil painting,3,,")
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out)]) == 0, capsys.readouterr().err
    made, plain = out / "ex" / "001-an-oil-painting_s3.png", out / "ex" / "002-an-oil-painting_s3.png"
    expected = model.generate(model.prepare_identity(FACE), prompt="an oil painting", seed=3, **FAST,
                              init_image=room, init_name="room.png", denoising_strength=0.6)
    assert np.array_equal(_pixels(made), _pixels(expected.images[0]))
    assert not np.array_equal(_pixels(made), _pixels(plain))
    recorded = read_metadata(made)
    assert recorded["init_image"] == "room.png" and recorded["settings"]["denoising_strength"] == 0.6
    assert "init_image" not in read_metadata(plain)


def test_a_style_row_is_the_apis_style_call(tmp_path: Path, model: Any, loads: dict[str, int], adapter: list[str],
                                            capsys: pytest.CaptureFixture) -> None:
    ink = _picture(tmp_path / "pics" / "ink.png", 2)
    job = tmp_path / "job.yaml"
    job.write_text(f"identities: [{{name: ex, photos: [{FACE}]}}]\nseeds: [4]\nsettings: {json.dumps(FAST)}\n"
                   "prompts:\n  - {prompt: a portrait, style_image: pics/ink.png, style_strength: 0.7, "
                   "style_blocks: style+layout}\n")
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out), *adapter]) == 0, capsys.readouterr().err
    expected = model.generate(model.prepare_identity(FACE), prompt="a portrait", seed=4, **FAST, style_images=[ink],
                              style_strength=0.7, style_blocks="style+layout")
    made = out / "ex" / "001-a-portrait_s4.png"
    assert np.array_equal(_pixels(made), _pixels(expected.images[0]))
    reference = expected.metadata["style_reference"]  # an output names a local adapter by its folder's name only
    assert read_metadata(made)["style_reference"] == {**reference, "adapter": Path(reference["adapter"]).name}
    assert read_metadata(made)["style_reference"]["images"][0]["name"] == "ink.png"


def test_an_init_row_before_an_init_and_style_row(tmp_path: Path, model: Any, adapter: list[str],
                                                  tmp_path_factory: pytest.TempPathFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose first style picture comes after an image-to-image row (its style adapter loads then, after the
    image-to-image pipeline was made): the row with both is the API's call with both."""
    from instantid import InstantID
    from instantid.api.model_settings import ModelSettings

    fresh = InstantID.demo(tmp_path_factory.getbasetemp() / "demo")  # the session model's weights, nothing loaded
    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: fresh)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: fresh.analyzer)
    room, ink = _picture(tmp_path / "room.png", 1), _picture(tmp_path / "ink.png", 2)
    job = _csv(tmp_path, f"ex,{FACE},a,1,room.png,0.6,", f"ex,{FACE},b,1,room.png,0.6,ink.png",
               header="identity,photos,prompt,seed,init_image,denoising_strength,style_image")
    assert main(["batch", str(job), "-o", str(tmp_path / "out"), *adapter]) == 0
    expected = model.generate(model.prepare_identity(FACE), prompt="b", seed=1, **FAST, init_image=room,
                              denoising_strength=0.6, style_images=[ink])
    made = tmp_path / "out" / "ex" / "002-b_s1.png"
    assert np.array_equal(_pixels(made), _pixels(expected.images[0]))
    assert read_metadata(made)["init_image"] == "room.png" and "style_reference" in read_metadata(made)


def test_a_rerun_skips_until_a_picture_or_its_strength_changes(tmp_path: Path, loads: dict[str, int],
                                                               adapter: list[str], capsys: pytest.CaptureFixture
                                                               ) -> None:
    _picture(tmp_path / "room.png", 1)
    _picture(tmp_path / "ink.png", 2)
    _picture(tmp_path / "other.png", 3)
    header = "identity,photos,prompt,seed,init_image,denoising_strength,style_image"
    out = tmp_path / "out"

    def run(*rows: str) -> str:
        assert main(["batch", str(_csv(tmp_path, *rows, header=header)), "-o", str(out), *adapter]) == 0
        return capsys.readouterr().out

    rows = [f"ex,{FACE},a,1,room.png,0.6,", f"ex,{FACE},b,1,,,ink.png", f"ex,{FACE},c,1,,,"]
    assert "3 outputs, 0 already done, 3 to generate" in run(*rows)
    assert "3 outputs, 3 already done, 0 to generate" in run(*rows)
    assert loads["model"] == 1  # nothing to do: no model load
    _picture(tmp_path / "room.png", 4)  # the init picture's contents changed under the same name
    assert "2 already done, 1 to generate" in run(*rows)
    rows[0] = f"ex,{FACE},a,1,room.png,0.7,"  # its strength
    assert "2 already done, 1 to generate" in run(*rows)
    rows[1] = f"ex,{FACE},b,1,,,other.png"  # another style picture
    assert "2 already done, 1 to generate" in run(*rows)
    rows[2] += "ink.png"  # a style picture for a row that had none
    assert "2 already done, 1 to generate" in run(*rows)
    assert read_metadata(out / "ex" / "003-c_s1.png")["style_reference"]["images"][0]["name"] == "ink.png"


def test_a_row_without_pictures_digests_as_before_and_the_style_adapter_counts_for_style_rows(
        tmp_path: Path) -> None:
    plain = BatchTask(IdentitySpec("ann", ()), 1, PromptSpec("x"), 1, "w")
    styled = BatchTask(plain.identity, 2, PromptSpec("x", style_image=(_picture(tmp_path / "ink.png", 2),)), 1, "w")
    settings = GenerationSettings(prompt="x", seed=1, num_images=1)
    # The digest outputs made before rows had pictures carry: a rerun still finds them done.
    before = hashlib.sha256(json.dumps({"settings": settings.model_dump(), "model": {}}, sort_keys=True).encode())
    assert task_digest(plain, settings, {}) == before.hexdigest()[:16]
    digests = [[p.digest for p in plan(BatchJob(tmp_path / "j.csv", [plain, styled]), GenerationSettings(), (),
                                       {STYLE_ADAPTER: ref}, tmp_path / "out")[0]] for ref in (None, "h94/IP-Adapter")]
    assert digests[0][0] == digests[1][0] == task_digest(plain, settings, {})  # no style picture: no adapter
    assert digests[0][1] != digests[1][1]


def test_bad_picture_rows_are_one_line_each_before_anything_loads(tmp_path: Path, loads: dict[str, int],
                                                                  adapter: list[str], capsys: pytest.CaptureFixture
                                                                  ) -> None:
    _picture(tmp_path / "room.png", 1)
    (tmp_path / "notes.png").write_text("not a picture")
    header = "identity,photos,prompt,seed,init_image,denoising_strength,style_image,style_strength"
    job = _csv(tmp_path, f"ex,{FACE},a,1,gone.png,,,", f"ex,{FACE},b,1,room.png,1.5,,",
               f"ex,{FACE},c,1,,0.5,,", f"ex,{FACE},d,1,,,,0.5", f"ex,{FACE},e,1,,,notes.png,",
               f"ex,{FACE},f,1,,,room.png;room.png;room.png;room.png;room.png,", f"ex,{FACE},fine,1,room.png,,,",
               header=header)
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out), "--fail-fast", *adapter]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "error: 6 bad row(s), nothing generated (--fail-fast):"
    assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [f"{job} line {n}" for n in range(2, 8)]
    assert [line.split(": ", 1)[1] for line in lines[1:]] == [
        "cannot read image gone.png (init_image): no such file",
        "'denoising_strength' must be between 0.05 and 1, got '1.5'",
        "denoising_strength is for image-to-image: give an init_image too",
        "style_strength is for style references: give a style_image too",
        "cannot read image notes.png (style_image): not an image file (unknown or unsupported format)",
        "style_image takes 1 to 4 pictures, got 5",
    ]
    assert loads["model"] == 0 and not list(out.rglob("*.png"))


def test_yaml_picture_keys_are_paths_beside_the_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("identities: [{name: ex, photos: p.jpg}]\nprompts:\n"
                   "  - {prompt: a, init_image: pics/room.png, style_image: [ink.png, ~/two.png]}\n"
                   "  - {prompt: b, init_image: [one.png, two.png]}\n  - {prompt: c, style_image: {a: 1}}\n")
    parsed = load_job(job)
    spec = parsed.tasks[0].prompt
    assert spec.init_image == (tmp_path / "pics" / "room.png").resolve()
    assert spec.style_image == ((tmp_path / "ink.png").resolve(), Path("~/two.png").expanduser().resolve())
    assert [str(p) for p in parsed.problems] == [
        "prompt 2: init_image is one picture's path, got ['one.png', 'two.png']",
        "prompt 3: style_image is a path or a list of paths, got {'a': 1}",
    ]


def test_an_init_image_row_whose_steps_run_none_is_a_bad_row(tmp_path: Path) -> None:
    """2 steps at strength 0.4 run int(0.8) = 0 steps: a bad row before the model load, not a failure after it."""
    _picture(tmp_path / "room.png", 1)
    job = _csv(tmp_path, f"ex,{FACE},a,1,room.png,0.4", f"ex,{FACE},b,1,room.png,0.5")
    planned, problems = plan(load_job(job), GenerationSettings(), (), {}, tmp_path / "out")
    assert [p.task.prompt.prompt for p in planned] == ["b"]
    assert [str(p) for p in problems] == [
        "line 2: denoising strength 0.4 of 2 steps runs no step; raise the strength or the steps"]
