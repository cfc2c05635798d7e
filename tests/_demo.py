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


# What a person sees wrong in the web UI's boxes (gradio floats a label over its box's top-left corner): a label
# over a picture, a button or a drop zone's icon; a drop zone's text running out of its box; a gallery thumbnail
# taller than the gallery (a picture cut at the bottom). One line per defect, naming the box.
_LAYOUT_DEFECTS = """() => {
  const box = (e) => e.getBoundingClientRect();
  const shown = (e) => e.getClientRects().length > 0 && box(e).width > 0;
  const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const within = (a, b) => a.top >= b.top - 1 && a.bottom <= b.bottom + 1;
  const out = [];
  for (const block of document.querySelectorAll('.block')) {
    if (!shown(block)) continue;
    const name = block.id || block.className;
    for (const label of block.querySelectorAll('label.float')) {
      if (label.closest('.block') !== block || !shown(label)) continue;
      for (const other of block.querySelectorAll('img, .icon-button-wrapper, .icon-wrap'))
        if (shown(other) && hit(box(label), box(other)))
          out.push(`${name}: label over ${other.className.split(' ')[0] || 'img'}`);
    }
    for (const zone of block.querySelectorAll('.upload-container .wrap'))
      if (shown(zone) && !within(box(zone), box(block))) out.push(`${name}: drop zone text out of the box`);
    for (const wrap of block.querySelectorAll('.grid-wrap'))
      for (const item of wrap.querySelectorAll('.thumbnail-item'))
        if (box(item).height > wrap.clientHeight + 1) out.push(`${name}: thumbnail taller than the gallery`);
  }
  return out;
}"""


def layout_defects(page: object) -> list[str]:
    """The layout defects (see above) in the page as shown now; [] when there are none."""
    return page.evaluate(_LAYOUT_DEFECTS)
