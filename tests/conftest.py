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


def load_fixture_pipe(root: Path):
    """The published tiny checkpoints loaded through the drop-in API, as a user of the published code would."""
    from diffusers import ControlNetModel

    from instantid import StableDiffusionXLInstantIDPipeline

    controlnet = ControlNetModel.from_pretrained(root / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(root / "base", controlnet=controlnet)
    pipe.load_ip_adapter_instantid(root / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def fixture_pipe(tiny_fixture_dir: Path):
    """One shared pipeline on the published tiny checkpoints; tests must not change it in place."""
    return load_fixture_pipe(tiny_fixture_dir)


@pytest.fixture
def fresh_fixture_pipe(tiny_fixture_dir: Path):
    """A pipeline of its own for a test that changes modules in place (fast-path levers, presets)."""
    return load_fixture_pipe(tiny_fixture_dir)


@pytest.fixture(scope="session")
def demo_app(tmp_path_factory: pytest.TempPathFactory):
    """The tiny demo InstantID (random weights, dlib faces), one per session."""
    from _demo import demo_model

    model = demo_model(tmp_path_factory.getbasetemp() / "demo-apps")
    model.pipe.set_progress_bar_config(disable=True)
    return model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory):
    """The tiny demo InstantID the server, service and web UI tests share, one per session."""
    from _demo import demo_model

    return demo_model(tmp_path_factory.getbasetemp() / "demo")


@pytest.fixture
def demo_loads(model, monkeypatch: pytest.MonkeyPatch):
    """Every CLI model load (and its face-model-only checks) returns the session's demo model."""
    from instantid.api.model_settings import ModelSettings

    monkeypatch.setattr("instantid.api.loader.load_model", lambda self, analyzer=None: model)
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: model.analyzer)
    return model


@pytest.fixture(scope="session")
def obama(demo_app, faces_dir: Path):
    """One prepared identity for application tests."""
    return demo_app.prepare_identity(faces_dir / "obama_1.jpg")

