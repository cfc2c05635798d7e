"""A newcomer's mistakes, each answered with one line before anything slow runs: missing photos, unknown or
unreachable presets, fp16 on a CPU, huge photos, busy ports, Redis down, binary job files."""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path

import pytest
from _demo import FACE, NO_FACE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instantid.api.loader import load_model
from instantid.apps.batch import load_job
from instantid.cli import main
from instantid.errors import ImageReadError, InvalidInputError
from instantid.faces.images import MAX_PIXELS, load_image


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command printed on stderr (and no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every model load (the face model and the diffusion model); none may happen in these tests."""
    from instantid.api.model_settings import ModelSettings

    seen: list[str] = []

    def refuse(name: str):  # noqa: ANN202
        def load(*args: object, **kwargs: object) -> object:
            seen.append(name)
            raise AssertionError(f"{name} loaded before the check")
        return load

    monkeypatch.setattr("instantid.api.loader.load_model", refuse("model"))
    monkeypatch.setattr(ModelSettings, "face_analyzer", refuse("face model"))
    return seen


# ---- item 7: cheapest first ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["generate", "missing.jpg"],
    ["generate", str(FACE), "--pose", "missing.jpg"],
    ["generate", str(FACE), "--mix", "missing.jpg:0.3"],
    ["generate", "--person", f"{FACE},missing.jpg", "--person", str(FACE)],
    ["swap", "--face", str(FACE), "--into", "missing.jpg"],
    ["detail", "missing.jpg", "--face", str(FACE)],
])
def test_a_missing_photo_is_the_first_thing_said(command: list[str], loads: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The published adapter with the dlib face model would be refused (embedding space) once the face model
    # loads, and cuda is not here: the missing photo must still come first.
    code = main([*command, "--face-backend", "dlib", "--device", "cuda", "-o", str(tmp_path / "out")])
    assert code == 2 and loads == []
    assert _error_line(capsys) == "error: cannot read image missing.jpg: no such file"


def test_an_unknown_preset_is_refused_before_loading(loads: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(FACE), "--demo", "--preset", "turbo"]) == 2 and loads == []
    assert _error_line(capsys).startswith("error: --preset 'turbo': unknown few-step preset; choose one of lcm-lora,")


@pytest.mark.parametrize(("command", "line"), [
    (["--init-image", str(FACE), "--steps", "1"],
     "error: denoising strength 0.8 of 1 steps runs no step; raise the strength or the steps"),
    (["--init-image", str(FACE), "--steps", "4", "--denoising-strength", "0.2"],
     "error: denoising strength 0.2 of 4 steps runs no step; raise the strength or the steps"),
])
def test_an_image_to_image_run_of_no_step_is_refused_before_loading(
        command: list[str], line: str, loads: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(FACE), "--demo", *command, "-o", str(tmp_path)]) == 2 and loads == []
    assert _error_line(capsys) == line


@pytest.mark.parametrize("person", [",", " "])
def test_an_empty_person_is_named_as_such(person: str, loads: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--demo", "--person", person, "--person", str(FACE)]) == 2 and loads == []
    assert _error_line(capsys) == "error: --person takes the photo paths of one person (comma-separated), got none"


def test_an_unreachable_preset_names_both_flags(loads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached, and downloads are off")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)  # whatever this machine's cache holds
    assert main(["generate", str(FACE), "--demo", "--preset", "lightning-4step"]) == 2 and loads == []
    line = _error_line(capsys)
    assert line.startswith("error: --preset lightning-4step: cannot fetch sdxl_lightning_4step_lora.safetensors")
    assert line.endswith("download it and pass --preset-weights PATH")
    assert main(["generate", str(FACE), "--demo", "--preset", "tcd", "--preset-weights", str(tmp_path)]) == 2
    assert _error_line(capsys) == (f"error: --preset-weights {tmp_path}: no pytorch_lora_weights.safetensors there "
                                   "(the weights of --preset tcd, published in h1t/TCD-SDXL-LoRA)")


def test_fp16_on_the_cpu_is_refused_before_loading(loads: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(FACE), "--demo", "--device", "cpu", "--dtype", "fp16"]) == 2 and loads == []
    assert _error_line(capsys) == ("error: --dtype fp16 needs a GPU (cuda or mps) and this runs on the CPU: use "
                                   "--dtype fp32 (the CPU default) or --dtype bf16")


def test_the_demo_honours_dtype(tmp_path: Path) -> None:
    from instantid.api.model_settings import ModelSettings

    loaded = load_model(ModelSettings(demo=True, dtype="bf16", demo_cache_dir=tmp_path))
    assert loaded.pipe.unet.dtype.is_floating_point and str(loaded.pipe.unet.dtype) == "torch.bfloat16"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels: Pillow reads the size from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


@settings(max_examples=25, deadline=None)
@given(width=st.integers(1, 60_000), height=st.integers(1, 60_000))
def test_a_huge_photo_gets_our_size_limit_message(width: int, height: int) -> None:
    if width * height <= MAX_PIXELS:
        height = MAX_PIXELS // width + 1
    with pytest.raises(ImageReadError) as caught:
        load_image(_png_header(width, height), "huge.png")
    message = str(caught.value)
    assert message.startswith("cannot read image huge.png: ") and "megapixel limit; downscale it first" in message
    assert "decompression bomb" not in message and "DOS" not in message


def test_a_180_megapixel_photo_is_one_line_on_the_command_line(tmp_path: Path, loads: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(15_000, 12_000))
    assert main(["faces", str(huge), "--face-backend", "dlib"]) == 2
    assert _error_line(capsys) == ("error: cannot read image " + str(huge) + ": over 179 megapixels, over the "
                                   "100-megapixel limit; downscale it first")


# ---- item 8: one line, never a traceback ---------------------------------------------------------------------
@pytest.mark.parametrize("command", [["ui"], ["serve"]])
@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_a_port_out_of_range_is_named_before_loading(command: list[str], port: int, loads: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """getaddrinfo blamed the host for -1 and wrapped 70000 round to a port uvicorn then failed on."""
    assert main([*command, "--demo", "--port", str(port)]) == 2 and loads == []
    assert _error_line(capsys) == f"error: --port must be between 0 and 65535, got {port}"


@pytest.mark.parametrize("command", [["ui"], ["serve"]])
def test_a_busy_port_is_one_line_before_loading(command: list[str], loads: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main([*command, "--demo", "--port", str(port)])
    assert code == 2 and loads == []
    assert _error_line(capsys) == (f"error: --port {port}: 127.0.0.1:{port} is in use (another server?); "
                                   "stop it or choose another --port")


def test_serve_with_redis_down_is_one_line_before_loading(loads: list[str], capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert main(["serve", "--demo", "--port", "0", "--queue", f"redis://127.0.0.1:{port}/0"]) == 2 and loads == []
    assert _error_line(capsys).startswith(f"error: cannot reach Redis at redis://127.0.0.1:{port}/0: ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bom=st.sampled_from([b"", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf"]), data=st.binary(max_size=200),
       suffix=st.sampled_from([".csv", ".yaml", ".json"]))
def test_any_bytes_as_a_job_file_are_a_job_or_one_error(bom: bytes, data: bytes, suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"job{suffix}"
    path.write_bytes(bom + data)
    try:
        load_job(path)
    except InvalidInputError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("data", [b"\xff\xfe\x00", b"PK\x03\x04\x14\x00\x00\x00\x08\x00identity"])
def test_a_binary_job_file_is_one_line(data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.csv"
    job.write_bytes(data)
    assert main(["batch", str(job), "--demo", "-o", str(tmp_path / "out")]) == 2
    assert _error_line(capsys) == (f"error: job file {job} is not text in UTF-8 or Windows-1252 (a binary file?); "
                                   "save it as UTF-8 YAML, JSON or CSV")


# ---- item 9: errors name the flag the user typed --------------------------------------------------------------
@pytest.fixture
def face_model_only(model, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The demo stack's face model for the photo checks; a diffusion model load fails the test."""
    from instantid.api.model_settings import ModelSettings

    def load(*args: object, **kwargs: object) -> object:
        raise AssertionError("the model loaded although a photo was bad")

    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: model.analyzer)
    monkeypatch.setattr("instantid.api.loader.load_model", load)


@pytest.mark.usefixtures("face_model_only")
@pytest.mark.parametrize(("command", "line"), [
    (["generate", str(FACE), "--pose", str(NO_FACE)], "error: --pose: no face found in edge_no_face_noise.png"),
    (["generate", str(FACE), "--face-index", "3"], "error: --face-index: face index 3 is out of range: 1 face(s) "
     "found in face.jpg (valid indices 0..0, largest first)"),
    (["generate", "--person", str(FACE), "--person", str(FACE), "--pose", str(FACE)],
     "error: --pose: face.jpg shows 1 face(s) but 2 --person were given"),
    (["swap", "--face", str(FACE), "--into", str(FACE), "--target-index", "2"], "error: --target-index: face index 2 "
     "is out of range: 1 face(s) found in face.jpg (valid indices 0..0, largest first)"),
    (["swap", "--face", str(FACE), "--into", str(NO_FACE)], "error: --into: no face found in edge_no_face_noise.png"),
    (["detail", str(FACE), "--face", str(FACE), "--face-index", "1"], "error: --face-index: face index 1 is out of "
     "range: 1 face(s) found in face.jpg (valid indices 0..0, largest first)"),
])
def test_photo_errors_name_the_flag(command: list[str], line: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "-o", str(tmp_path)]) == 2
    assert _error_line(capsys) == line


def test_swap_with_one_step_still_runs_a_denoising_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1 step at strength 0.85 would run int(0.85) = 0 steps in diffusers: swap (like face detail) raises the
    scheduler's count to the smallest that runs one, and records it."""
    from instantid.io.outputs import read_metadata

    assert main(["swap", "--face", str(FACE), "--into", str(FACE), "--demo", "--steps", "1", "--seed", "1",
                 "-o", str(tmp_path)]) == 0, capsys.readouterr().err
    (written,) = tmp_path.glob("*.png")
    metadata = read_metadata(written)
    assert metadata["swap"]["denoising_steps"] == 1 and metadata["settings"]["steps"] == 1


def test_ctrl_c_says_interrupted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """typer turns a KeyboardInterrupt into a silent exit 130: the user must see why the run stopped."""
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("instantid.cli.generate.parse_seeds", interrupt)
    assert main(["generate", str(FACE), "--demo"]) == 130
    assert _error_line(capsys) == "interrupted"


@pytest.mark.parametrize(("flag", "value", "line"), [
    ("--job-timeout-s", "0", "error: --job-timeout-s must be > 0, got 0"),
    ("--max-upload-mb", "0", "error: --max-upload-mb must be > 0, got 0.0"),
    ("--max-attempts", "0", "error: --max-attempts must be between 1 and 10, got 0"),
])
def test_a_server_bound_is_named_as_it_is_checked(flag: str, value: str, line: str, loads: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A strict bound (gt=0) read '>= 0, got 0': the line contradicted itself."""
    assert main(["serve", "--demo", flag, value]) == 2 and loads == []
    assert _error_line(capsys) == line


def test_serve_into_a_folder_under_a_file_is_one_line_before_loading(tmp_path: Path, loads: list[str],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["serve", "--demo", "--port", "0", "--out", str(blocker / "jobs")]) == 2 and loads == []
    assert _error_line(capsys) == (f"error: --out {blocker / 'jobs'}: {blocker} is a file, not a folder; "
                                   "give another folder")
