"""`instantid batch`: job files as people save them, every bad row reported at once, resume by settings digest,
flag precedence, one face analysis per identity (issue 10 items 3, 11-13; issue 9 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _demo import FACE, FACES, NO_FACE, demo_model

from instantid.api.settings import GenerationSettings
from instantid.apps.batch import FAILURES, load_job, plan, task_settings
from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.io.outputs import read_metadata


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "demo"
    demo_model(folder)
    return folder


@pytest.fixture
def loads(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The session's demo model for every load; counts model loads and face lookups (analyze / get_face calls)."""
    from instantid.api.model_settings import ModelSettings

    counts = {"model": 0, "faces": 0}
    model = demo_model(demo_dir)

    class CountingAnalyzer:
        def __getattr__(self, name: str) -> object:
            return getattr(model.analyzer, name)

        def get_face(self, *args: object, **kwargs: object) -> object:
            counts["faces"] += 1
            return model.analyzer.get_face(*args, **kwargs)

        def analyze(self, *args: object, **kwargs: object) -> object:
            counts["faces"] += 1
            return model.analyzer.analyze(*args, **kwargs)

    def load(self: ModelSettings, analyzer: object = None) -> object:
        counts["model"] += 1
        return model

    monkeypatch.setattr("instantid.api.loader.load_model", load)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: CountingAnalyzer())
    return counts


# ---- reading job files -----------------------------------------------------------------------------------
def test_excel_csv_with_bom_crlf_and_missing_cells(tmp_path: Path) -> None:
    job = tmp_path / "jobs.csv"
    job.write_bytes(
        "\ufeffIdentity, Photos ,prompt,seed,steps\r\n"
        f"ex,{FACE},a portrait,3,2\r\n"
        f"ex,{FACE}\r\n"  # a short row: the missing cells read as empty
        ",,,,\r\n".encode()  # a spreadsheet's empty row
    )
    parsed = load_job(job)
    assert parsed.problems == []
    assert [(t.prompt.prompt, t.seed, t.prompt.settings) for t in parsed.tasks] == [
        ("a portrait", 3, (("steps", "2"),)), ("", 0, ())]
    assert task_settings(parsed, parsed.tasks[0], GenerationSettings(), ()).steps == 2


def test_windows_1252_job_file_is_read(tmp_path: Path) -> None:
    job = tmp_path / "jobs.csv"
    job.write_bytes(f"identity,photos,prompt\nex,{FACE},caf\xe9 au lait portrait\n".encode("cp1252"))
    assert load_job(job).tasks[0].prompt.prompt == "café au lait portrait"


def test_binary_job_file_is_one_line(tmp_path: Path) -> None:
    job = tmp_path / "jobs.yaml"
    job.write_bytes(b"\x81\x8d\x8f\x90\x9d" * 10)
    with pytest.raises(InvalidInputError, match="not text in UTF-8 or Windows-1252"):
        load_job(job)


def test_precedence_flag_over_row_over_job_settings(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"identities: [{{name: ex, photos: [{FACE}]}}]\n"
                   "prompts: [a, {prompt: b, steps: 2, guidance_scale: 3}]\n"
                   "settings: {steps: 7, guidance_scale: 4, adapter_strength: 0.5}\n")
    parsed = load_job(job)
    cli = GenerationSettings(steps=1, guidance_scale=9)
    first, second = parsed.tasks
    assert [task_settings(parsed, t, cli, ()).steps for t in (first, second)] == [7, 2]  # row > job settings
    assert task_settings(parsed, second, cli, ()).guidance_scale == 3
    both = [task_settings(parsed, t, cli, {"steps"}) for t in (first, second)]
    assert [s.steps for s in both] == [1, 1]  # a typed flag wins over every row
    assert [s.guidance_scale for s in both] == [4, 3]  # an untyped flag does not
    assert both[0].adapter_strength == 0.5  # defaults < job settings


def test_every_bad_row_is_found_before_anything_runs(tmp_path: Path) -> None:
    job = tmp_path / "job.csv"
    job.write_text(
        "identity,photos,prompt,seed,steps\n"
        f"ok,{FACE},fine,1,\n"
        f"ok,{FACE},bad steps,1,0\n"
        f"Bad Name,{FACE},x,1,\n"
        f"ok,{FACE},bad seed,-4,\n"
    )
    parsed = load_job(job)
    planned, problems = plan(parsed, GenerationSettings(), (), {}, tmp_path / "out")
    assert [p.task.prompt.prompt for p in planned] == ["fine"]
    messages = [str(p) for p in problems]
    assert messages[0].startswith("line 4: identity name 'Bad Name'")
    assert messages[1].startswith("line 5: seed must be a non-negative integer")
    assert messages[2] == "line 3: 'steps' must be between 1 and 200, got '0'"


# ---- the command -------------------------------------------------------------------------------------------
def _job(tmp_path: Path, steps: int = 1, photos: str = f"[{FACE}]") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(f"identities:\n  - name: ex\n    photos: {photos}\n"
                   f"prompts: [a portrait, {{prompt: a knight, style: Watercolor}}]\n"
                   f"seeds: [1, 2]\nsettings: {{steps: {steps}}}\n")
    return job


def test_one_face_analysis_per_identity_and_one_model_load(tmp_path: Path, loads: dict[str, int]) -> None:
    job = _job(tmp_path, photos=f"[{FACE}, {FACE}]")
    assert main(["batch", str(job), "-o", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out" / "ex").glob("*.png"))) == 4
    assert loads == {"model": 1, "faces": 2}  # 2 photos, once each: not per prompt x seed


def test_a_group_photo_says_which_face_each_identity_uses(tmp_path: Path, loads: dict[str, int],
                                                           capsys: pytest.CaptureFixture) -> None:
    group = FACES / "group_two_people.jpg"
    assert main(["batch", str(_job(tmp_path, photos=f"[{group}]")), "-o", str(tmp_path / "out")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: ex: group_two_people.jpg: 2 faces found, used face 0 (the largest)" in err


def test_resume_redoes_only_what_changed(tmp_path: Path, loads: dict[str, int],
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["batch", str(_job(tmp_path)), "-o", str(out)]) == 0
    assert "4 outputs, 0 already done, 4 to generate" in capsys.readouterr().out
    assert main(["batch", str(_job(tmp_path)), "-o", str(out)]) == 0
    assert "4 outputs, 4 already done, 0 to generate" in capsys.readouterr().out
    assert loads["model"] == 1  # nothing to do: no model load
    assert main(["batch", str(_job(tmp_path, steps=2)), "-o", str(out)]) == 0
    assert "4 outputs, 0 already done, 4 to generate" in capsys.readouterr().out
    assert read_metadata(out / "ex" / "001-a-portrait_s1.png")["settings"]["steps"] == 2
    # A flag typed on the command line wins over the job file, and counts as a change too.
    assert main(["batch", str(_job(tmp_path, steps=2)), "-o", str(out), "--steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "(from the command line: --steps 1)" in printed and "0 already done, 4 to generate" in printed
    assert read_metadata(out / "ex" / "002-a-knight_s2.png")["settings"]["steps"] == 1


def test_resume_redoes_a_photo_whose_contents_changed_under_the_same_name(
        tmp_path: Path, loads: dict[str, int], capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "me.jpg"
    photo.write_bytes(FACE.read_bytes())
    out = tmp_path / "out"
    assert main(["batch", str(_job(tmp_path, photos=f"[{photo}]")), "-o", str(out)]) == 0
    assert main(["batch", str(_job(tmp_path, photos=f"[{photo}]")), "-o", str(out)]) == 0
    assert "4 outputs, 4 already done, 0 to generate" in capsys.readouterr().out
    photo.write_bytes((FACES / "obama_1.jpg").read_bytes())
    assert main(["batch", str(_job(tmp_path, photos=f"[{photo}]")), "-o", str(out)]) == 0
    assert "4 outputs, 0 already done, 4 to generate" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--lora", "--base"])
def test_resume_redoes_everything_when_a_model_changes_under_the_same_name(
        tmp_path: Path, loads: dict[str, int], capsys: pytest.CaptureFixture, option: str) -> None:
    """A LoRA file or a model folder replaced under the same name (a retrained LoRA, an updated checkpoint)."""
    weights = tmp_path / "model" / "unet" / "weights.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first")
    model = weights if option == "--lora" else tmp_path / "model"
    out, job = tmp_path / "out", _job(tmp_path)
    assert main(["batch", str(job), "-o", str(out), option, str(model)]) == 0
    assert main(["batch", str(job), "-o", str(out), option, str(model)]) == 0
    assert "4 outputs, 4 already done, 0 to generate" in capsys.readouterr().out
    weights.write_bytes(b"second, retrained")
    assert main(["batch", str(job), "-o", str(out), option, str(model)]) == 0
    assert "4 outputs, 0 already done, 4 to generate" in capsys.readouterr().out
    assert main(["batch", str(job), "-o", str(out)]) == 0  # no LoRA / the default model: a change too
    assert "4 outputs, 0 already done, 4 to generate" in capsys.readouterr().out


def test_bad_rows_reported_at_once_good_rows_made_failures_listed(
        tmp_path: Path, loads: dict[str, int], capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.csv"
    job.write_text(
        "identity,photos,prompt,seed,guidance_scale\n"
        f"good,{FACE},a portrait,1,\n"
        f"faceless,{NO_FACE},a portrait,1,\n"
        f"gone,{tmp_path / 'missing.jpg'},a portrait,1,\n"
        f"good,{FACE},too strong,2,99\n"
    )
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "3 bad row(s), skipped" in err and "Traceback" not in err
    assert [p.name for p in out.rglob("*.png") if p.name != "contact_sheet.png"] == ["001-a-portrait_s1.png"]
    failures = [json.loads(line) for line in (out / FAILURES).read_text().splitlines()]
    assert [f["where"] for f in failures] == ["line 3", "line 4", "line 5"], "in file order"
    assert "no face found in edge_no_face_noise.png" in failures[0]["error"]
    assert "missing.jpg" in failures[1]["error"]
    assert "'guidance_scale' must be between 0 and 30" in failures[2]["error"]
    assert (out / "contact_sheet.png").is_file()


def test_fail_fast_generates_nothing_and_loads_nothing(tmp_path: Path, loads: dict[str, int],
                                                       capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.csv"
    job.write_text(f"identity,photos,prompt\ngood,{FACE},a portrait\nfaceless,{NO_FACE},a portrait\n")
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out), "--fail-fast"]) == 2
    err = capsys.readouterr().err
    assert "error: 1 bad row(s), nothing generated (--fail-fast)" in err and "no face found" in err
    assert loads["model"] == 0 and not list(out.rglob("*.png"))


def test_output_folder_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").write_text("x")
    assert main(["batch", str(_job(tmp_path)), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file, not a folder; give another folder")


def test_example_job_file_is_valid_and_a_typed_flag_wins() -> None:
    example = load_job(Path(__file__).resolve().parents[1] / "examples" / "jobs.yaml")
    planned, problems = plan(example, GenerationSettings(steps=4), {"steps"}, {}, Path("unused"))
    assert problems == [] and len(planned) == 6
    assert {p.settings.steps for p in planned} == {4}  # the README's quick demo: --steps 4 beats the file's 30
    assert [p.settings.guidance_scale for p in planned] == [5.0, 5.0, 5.0, 5.0, 4.0, 4.0]


def test_a_typed_flag_wins_even_at_its_default_value(tmp_path: Path, loads: dict[str, int],
                                                     capsys: pytest.CaptureFixture) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"identities: [{{name: ex, photos: [{FACE}]}}]\nprompts: [a]\nseeds: [1]\n"
                   "settings: {steps: 1, guidance_scale: 3}\n")
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out), "--guidance", "5.0"]) == 0  # 5.0 is also the default
    assert "(from the command line: --guidance 5.0)" in capsys.readouterr().out
    assert read_metadata(out / "ex" / "001-a_s1.png")["settings"]["guidance_scale"] == 5.0
