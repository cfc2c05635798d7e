"""Output writing: A1111-readable parameters, no local paths in shared images, output folders checked up front
(issue 10 items 2 and 18)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from instantid.errors import InvalidInputError
from instantid.io.outputs import (
    METADATA_KEY,
    PARAMETERS_KEY,
    parameters_text,
    png_bytes,
    prepare_folder,
    read_metadata,
    shareable,
    write_image,
)


def _metadata(**changes: object) -> dict:
    metadata = {
        "prompt": "a portrait, soft light", "negative_prompt": "blurry", "seed": 7, "width": 1024, "height": 1280,
        "settings": {"steps": 30, "guidance_scale": 5.0, "identitynet_strength": 0.8, "adapter_strength": 0.8,
                     "style": None},
        "sampler": "DPM++ 2M Karras", "scheduler": "dpm++_karras", "model_name": "sd_xl_base_1.0",
        "model_hash": "31e35c80fc", "dtype": "float16", "device": "cuda:0", "reference_faces": 1,
        "versions": {"instantid": "0.1.0"}, "lora": None,
        "models": {"base": "/home/me/models/sd_xl_base_1.0.safetensors", "identitynet": "InstantX/InstantID",
                   "adapter": "/home/me/models/ip-adapter.bin"},
    }
    return {**metadata, **changes}


def test_parameters_read_like_a1111() -> None:
    lines = parameters_text(_metadata()).splitlines()
    assert lines[0] == "a portrait, soft light"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5.0, Seed: 7, Size: 1024x1280, "
                               "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, ")
    assert "Dtype: float16, Device: \"cuda:0\"" in lines[2]  # a value with ':' is quoted, as A1111 does
    assert lines[2].endswith("Version: instantid 0.1.0")


def test_empty_prompt_stays_empty_and_empty_negative_has_no_line() -> None:
    lines = parameters_text(_metadata(prompt="", negative_prompt="")).split("\n")
    assert lines[0] == "" and len(lines) == 2 and lines[1].startswith("Steps: 30")


def test_shared_images_hold_model_names_not_local_paths(tmp_path: Path) -> None:
    public = shareable(_metadata(lora=str(tmp_path / "styles" / "my-lora.safetensors")))
    assert public["models"] == {"base": "sd_xl_base_1.0.safetensors", "identitynet": "InstantX/InstantID",
                                "adapter": "ip-adapter.bin"}
    assert public["lora"] == "my-lora.safetensors"
    image = Image.new("RGB", (8, 8))
    png = write_image(image, _metadata(), tmp_path / "out", "x")
    assert "/home/me" not in png.with_suffix(".json").read_text()
    assert "/home/me" not in json.dumps(read_metadata(png))
    kept = write_image(image, _metadata(), tmp_path / "out", "y", full_paths=True)
    assert read_metadata(kept)["models"]["base"] == "/home/me/models/sd_xl_base_1.0.safetensors"
    with Image.open(png) as written:
        assert "Model: sd_xl_base_1.0" in written.text[PARAMETERS_KEY]
    with Image.open(io.BytesIO(png_bytes(image, _metadata()))) as served:  # what the server sends
        assert "/home/me" not in served.text[METADATA_KEY]


def test_output_folder_problems_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match=r"--out .*/file/sub: .*/file is a file, not a folder"):
        prepare_folder(tmp_path / "file" / "sub", "--out")
    with pytest.raises(InvalidInputError, match="is a file, not a folder"):
        write_image(Image.new("RGB", (8, 8)), _metadata(), tmp_path / "file", "x")
    assert prepare_folder(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"


def test_unwritable_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root every folder is writable, so the permission answer is simulated where it is asked.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked")
    (tmp_path / "locked").mkdir()
    with pytest.raises(InvalidInputError, match="--out .*locked: the folder is not writable"):
        prepare_folder(tmp_path / "locked", "--out")
