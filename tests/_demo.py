"""Test helpers shared by the CLI, server and web UI tests: quiet offline environment, one demo model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Before torch/gradio/huggingface_hub are imported by any test module.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

REPO = Path(__file__).resolve().parents[1]
FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
FACE = REPO / "examples" / "face.jpg"
NO_FACE = FACES / "edge_no_face_noise.png"
CORRUPT = FACES / "edge_corrupt.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

_models: dict[Path, object] = {}


def demo_model(cache_dir: Path) -> object:
    """One tiny random-weight InstantID per cache folder, built once per test session."""
    if cache_dir not in _models:
        import torch

        from instantid import InstantID
        from instantid.io.loading import library_chatter

        torch.set_num_threads(1)
        with library_chatter():
            _models[cache_dir] = InstantID.demo(cache_dir)
    return _models[cache_dir]


def record_calls(monkeypatch: pytest.MonkeyPatch, pipeline: type, keep: Callable[[dict], Any] = dict) -> list:
    """What each call of ``pipeline`` was given (``keep`` of its keyword arguments), the call itself unchanged."""
    seen: list = []
    original = pipeline.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(keep(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "__call__", spy)
    return seen
