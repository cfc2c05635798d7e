"""One spelling for every flag: --face-backend everywhere, hyphenated train flags; old spellings still work."""

from __future__ import annotations

from pathlib import Path

import pytest

from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.training.config import parse_args

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_photos = pytest.mark.skipif(not FACES_DIR.is_dir(), reason=f"shared photos not found at {FACES_DIR}")


def _help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside flag names
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [["faces"], ["compare"], ["prepare"], ["evaluate"]])
def test_face_commands_offer_face_backend_and_hide_the_old_spelling(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    text = _help(capsys, monkeypatch, *command)
    assert "--face-backend" in text and "--antelopev2-root" in text
    assert "--backend " not in text.replace("--face-backend", "")


def test_train_help_lists_hyphenated_flags_with_their_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(capsys, monkeypatch, "train")
    for flag in ("--data-dir", "--output-dir", "--train-batch-size", "--use-ema", "--no-use-ema", "--mixed-precision"):
        assert flag in text
    assert "--data_dir" not in text and "--train_batch_size" not in text
    assert "A folder written by `instantid prepare`" in text, "each flag's help comes from the config's comment"


def test_train_flags_accept_both_spellings() -> None:
    new = parse_args(["--data-dir", "d", "--use-ema", "--train-batch-size", "3", "--no-gradient-checkpointing"])
    old = parse_args(["--data_dir", "d", "--use_ema", "--train_batch_size", "3", "--no-gradient_checkpointing"])
    assert new == old
    assert (new.data_dir, new.use_ema, new.train_batch_size, new.gradient_checkpointing) == ("d", True, 3, False)


def test_train_errors_name_the_flag_the_user_types() -> None:
    with pytest.raises(InvalidInputError, match="^--data-dir is required"):
        parse_args([])
    with pytest.raises(InvalidInputError, match="^--mixed-precision must be"):
        parse_args(["--data-dir", "d", "--mixed-precision", "fp8"])


@needs_photos
@pytest.mark.parametrize("spelling", ["--face-backend", "--backend"])
def test_compare_takes_both_backend_spellings(capsys: pytest.CaptureFixture[str], spelling: str) -> None:
    assert main(["compare", str(FACES_DIR / "obama_1.jpg"), str(FACES_DIR / "obama_2.jpg"), spelling, "dlib"]) == 0
    assert "(dlib-128," in capsys.readouterr().out


def test_unknown_backend_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["faces", str(FACES_DIR / "obama_1.jpg"), "--face-backend", "yolo"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown face backend 'yolo'; choose one of auto, dlib, antelopev2")
