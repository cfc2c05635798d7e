"""Test-wide settings: offline, quiet, one thread (two shared cores spin-wait under load)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_fixture_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "instantid-tiny"


@pytest.fixture(scope="session")
def faces_dir(shared_dir: Path) -> Path:
    return shared_dir / "faces"


@pytest.fixture(scope="session")
def fixture_pipe(tiny_fixture_dir: Path):
    """The published tiny checkpoints loaded through the drop-in API, as a user of the published code would."""
    from diffusers import ControlNetModel

    from instantid import StableDiffusionXLInstantIDPipeline

    controlnet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(tiny_fixture_dir / "base", controlnet=controlnet)
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    return pipe
