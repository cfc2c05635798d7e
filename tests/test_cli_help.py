"""Help and output as a newcomer reads them: bracketed help text shown whole, on/off options without a value,
--version, `train --help` laid out like the others, stderr lines never wrapped, the demo banner once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _demo import FACE

from instantid import __version__
from instantid.cli import main
from instantid.cli.generate import DEMO_WARNING


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    assert main([*command, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # the words, whatever the wrapping


def test_bracketed_help_text_is_shown_whole(capsys: pytest.CaptureFixture[str]) -> None:
    serve = _help(capsys, "serve")
    assert "one 'NAME sha256:HEX [rate=N] [jobs=N]' per line" in serve
    assert "(pip install 'instantid[quantize]')" in serve


@pytest.mark.parametrize("command", [["generate"], ["batch"], ["swap"], ["detail"], ["serve"], ["prepare"]])
def test_on_off_options_show_no_value(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    text = _help(capsys, *command)
    assert "<bool>" not in text and "--help Show this message and exit." in text


def test_a_value_after_an_on_off_option_is_explained(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["generate", str(FACE), "--overwrite", "true", "--demo", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: 'true' was read as a photo: on/off options take no value (write --overwrite, not --overwrite true; "
        "--no-face-detail to turn one off)")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"instantid {__version__}\n"


def test_train_help_is_laid_out_like_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--help"]) == 0
    prepare = capsys.readouterr().out.splitlines()
    assert main(["train", "--help"]) == 0
    train = capsys.readouterr().out.splitlines()
    assert train[0] == "Usage: instantid train [OPTIONS]" and prepare[0].startswith("Usage: ")
    assert "Options:" in train and "Options:" in prepare
    option = next(line for line in train if line.lstrip().startswith("--resolution"))
    assert option.startswith("  --resolution <int>"), "two-space indent, <type> metavar, as click shows them"
    assert any(line.lstrip().startswith("--help") and "Show this message and exit." in line for line in train)


def test_stderr_lines_are_not_wrapped_and_the_demo_banner_shows_once(
        model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.api.model_settings import ModelSettings

    monkeypatch.setattr("instantid.api.loader.load_model", lambda settings, analyzer=None: model)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: model.analyzer)
    assert main(["generate", str(FACE), "--demo", "--steps", "1", "--seed", "1", "-o", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert len(DEMO_WARNING) > 80 and err.count(DEMO_WARNING) == 1, err
