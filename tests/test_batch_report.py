"""What `instantid batch` prints about bad rows: counts that match what is made, failures in file order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _demo import FACE, NO_FACE

from instantid.apps.batch import FAILURES, Failure, in_file_order
from instantid.cli import main


@pytest.mark.usefixtures("demo_loads")
def test_counts_with_bad_rows_say_what_will_be_made_and_failures_are_in_file_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.csv"
    job.write_text("identity,photos,prompt,seed,steps\n"
                   f"me,{FACE},good,1,1\n"
                   f"noface,{NO_FACE},faceless,1,1\n"  # found when the photos are checked
                   f"me,{FACE},bad steps,1,0\n"  # found when the settings are planned
                   f",{FACE},no identity,1,1\n")  # found when the file is read
    out = tmp_path / "out"
    assert main(["batch", str(job), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "4 outputs, 0 already done, 3 bad row(s), 1 to generate" in captured.out
    assert len(list(out.rglob("*.png"))) - 1 == 1, "one image and the contact sheet"
    listed = [line.split(":")[0].strip() for line in captured.err.splitlines() if line.startswith(f"  {job}")]
    assert listed == [f"{job} line {n}" for n in (3, 4, 5)]
    assert [json.loads(line)["where"] for line in (out / FAILURES).read_text().splitlines()] == [
        "line 3", "line 4", "line 5"]
    assert main(["batch", str(job), "-o", str(out)]) == 1
    assert "4 outputs, 1 already done, 3 bad row(s), 0 to generate" in capsys.readouterr().out


def test_failures_sort_by_line_number_not_text() -> None:
    places = ["line 10", "identity b, prompt 2, seed 1", "line 9", "identity b, prompt 10, seed 1", "line 2"]
    assert [f.where for f in in_file_order(Failure(p, "x") for p in places)] == [
        "identity b, prompt 2, seed 1", "identity b, prompt 10, seed 1", "line 2", "line 9", "line 10"]


def test_a_missing_photo_is_a_bad_row_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.api.model_settings import ModelSettings

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model loaded although no row can be made")

    monkeypatch.setattr(ModelSettings, "face_analyzer", refuse)
    monkeypatch.setattr("instantid.api.loader.load_model", refuse)
    job = tmp_path / "job.csv"
    job.write_text(f"identity,photos,prompt\nme,{tmp_path / 'typo.jpg'},a portrait\n")
    assert main(["batch", str(job), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "1 outputs, 0 already done, 1 bad row(s), 0 to generate" in captured.out
    assert f"  {job} line 2: cannot read image typo.jpg: no such file" in captured.err


def test_across_shards_every_bad_row_is_reported_by_exactly_one_process(tmp_path: Path) -> None:
    from instantid.api.settings import GenerationSettings
    from instantid.apps.batch import load_job, plan, shard_failures

    job = tmp_path / "job.csv"
    job.write_text("identity,photos,prompt,seed,steps\n" + "".join(
        f"p{n},{tmp_path / 'typo.jpg'},row {n},{n},\n" for n in range(6))  # missing photos: bad at planning
        + f"q,{FACE},bad steps,1,0\n,{FACE},no identity,1,\n")
    out = tmp_path / "out"
    _, problems = plan(load_job(job), GenerationSettings(), [], {}, out)
    assert len(problems) == 8
    shares = [shard_failures(problems, out, (i, 3)) for i in range(3)]
    assert sorted(f.where for share in shares for f in share) == sorted(f.where for f in problems)
    assert [f.where for f in shares[0] if f.output is None] == ["line 9"], "an unreadable row: process 0"
