"""Model loading failures are one line naming the file, never a traceback or advice to load unsafely
(issue 10 items 4-7), and the A1111 model hash is the checkpoint's SHA-256 prefix (item 18)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from _demo import demo_model

from instantid.errors import InstantIDError, InvalidInputError, MissingWeightsError, WeightsError
from instantid.io import loading
from instantid.io.loading import check_lora, describe_checkpoint, load_lora, load_pipeline, pick_device


class _RunsCode:
    """A pickle that would call a function when loaded: what weights_only=True exists to refuse."""

    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "demo"
    demo_model(folder)  # builds the tiny release on disk (shared with the other CLI tests)
    return folder


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    assert "weights_only" not in text and "trust" not in text  # never PyTorch's advice to load unsafely
    return text


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(InvalidInputError) as info:
        pick_device("gpu", "--device")
    assert _one_line(info.value) == "--device 'gpu' is not a device; choose cuda, cuda:N, mps or cpu"
    with pytest.raises(InvalidInputError, match="not a device"):
        pick_device("cpu:1")
    assert pick_device("CPU") == "cpu"


def test_cuda_without_cuda_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(InvalidInputError) as info:
            pick_device(device, "--device")
        assert f"--device {device}: CUDA is not available here" in _one_line(info.value)


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == "cuda:1"
    with pytest.raises(InvalidInputError, match=r"there are 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        pick_device("cuda:2")


def _load(tiny: Path, base: Path | None = None, identitynet: Path | None = None, adapter: Path | None = None) -> None:
    load_pipeline(base or tiny / "base", identitynet or tiny / "ControlNetModel", adapter or tiny / "ip-adapter.bin",
                  dtype=torch.float32)


def test_identitynet_with_garbage_weights(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ControlNetModel"
    folder.mkdir()
    shutil.copy(tiny / "ControlNetModel" / "config.json", folder / "config.json")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights at all" * 50)
    with pytest.raises(WeightsError) as info:
        _load(tiny, identitynet=folder)
    assert _one_line(info.value) == (f"cannot load IdentityNet {folder}: diffusion_pytorch_model.safetensors is "
                                     "corrupt or not a weights file")


def test_identitynet_with_garbage_config(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ControlNetModel"
    shutil.copytree(tiny / "ControlNetModel", folder)
    (folder / "config.json").write_text("{this is not json")
    with pytest.raises(WeightsError) as info:
        _load(tiny, identitynet=folder)
    assert _one_line(info.value) == f"cannot load IdentityNet {folder}: its config.json is not valid JSON"


def test_garbage_single_file_base(tiny: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes((16).to_bytes(8, "little") + b"{broken header}" + b"x" * 64)
    with pytest.raises(WeightsError) as info:
        _load(tiny, base=checkpoint)
    assert _one_line(info.value).startswith(f"cannot load base model {checkpoint}: model.safetensors is corrupt")


def test_adapter_that_runs_code_is_refused_without_unsafe_advice(tiny: Path, tmp_path: Path) -> None:
    evil = tmp_path / "ip-adapter.bin"
    torch.save({"image_proj": _RunsCode(), "ip_adapter": {}}, evil)
    with pytest.raises(InstantIDError) as info:
        _load(tiny, adapter=evil)
    assert "not a plain weights file" in _one_line(info.value) and str(evil) in str(info.value)


def test_lora_missing_file_offline_hub_id_and_pickled_code(tiny: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = demo_model(tiny).pipe
    with pytest.raises(MissingWeightsError) as info:
        check_lora(str(tmp_path / "missing.safetensors"), "--lora")
    assert _one_line(info.value).startswith(f"--lora '{tmp_path / 'missing.safetensors'}' not found")
    with pytest.raises(MissingWeightsError):
        load_lora(pipe, "missing.safetensors")
    with pytest.raises(WeightsError) as info:
        load_lora(pipe, "nobody-here/no-such-lora")
    assert _one_line(info.value) == ("cannot load LoRA nobody-here/no-such-lora: not in the Hugging Face cache and "
                                     "not downloadable now")
    evil = tmp_path / "lora.bin"
    torch.save({"lora": _RunsCode()}, evil)
    with pytest.raises(WeightsError) as info:
        load_lora(pipe, str(evil))
    assert "not a plain weights file" in _one_line(info.value)


def test_model_hash_is_the_a1111_sha256_prefix_and_is_cached(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "HASH_CACHE", tmp_path / "hashes.json")
    checkpoint = tmp_path / "sd_xl_base_1.0.safetensors"
    checkpoint.write_bytes(b"pretend checkpoint" * 1000)
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert describe_checkpoint(str(checkpoint), checkpoint) == ("sd_xl_base_1.0", expected[:10])
    # A diffusers folder: its UNet weights file's hash, named by the folder (or the Hub id it came from).
    unet = tiny / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    unet_hash = hashlib.sha256(unet.read_bytes()).hexdigest()[:10]
    assert describe_checkpoint(str(tiny / "base"), tiny / "base") == ("base", unet_hash)
    assert describe_checkpoint("someone/sdxl-model", tiny / "base") == ("someone/sdxl-model", unet_hash)
    # Cached by path, size and mtime: a stored value is used as long as the file is unchanged...
    cache = json.loads((tmp_path / "hashes.json").read_text())
    key = next(k for k in cache if k.startswith(str(checkpoint.resolve())))
    (tmp_path / "hashes.json").write_text(json.dumps({**cache, key: "f" * 64}))
    assert describe_checkpoint(str(checkpoint), checkpoint)[1] == "f" * 10
    # ...and recomputed when the file changes.
    checkpoint.write_bytes(b"another checkpoint")
    assert describe_checkpoint(str(checkpoint), checkpoint)[1] == hashlib.sha256(b"another checkpoint").hexdigest()[:10]
    entries = [k for k in json.loads((tmp_path / "hashes.json").read_text()) if k.startswith(str(checkpoint.resolve()))]
    assert len(entries) == 1  # the old version's entry is gone: the cache does not grow with every edit
