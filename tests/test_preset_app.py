"""Few-step presets through the high-level API and the CLI: sampler, steps and guidance as their authors say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _demo import FACE, FACES

from instantid.cli import main
from instantid.outputs import read_metadata


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A demo cache folder and a random LCM-LoRA in the published key layout for its tiny UNet."""
    from instantid import InstantID
    from instantid.presets import get_preset, write_stand_in

    cache = tmp_path_factory.mktemp("preset-demo")
    app = InstantID.demo(cache)
    return cache, write_stand_in(get_preset("lcm-lora"), app.pipe.unet, tmp_path_factory.mktemp("lcm"))


def test_preset_sets_sampler_and_defaults_and_keeps_identity(stand_in: tuple[Path, Path]) -> None:
    from instantid import InstantID

    cache, weights = stand_in
    app = InstantID.demo(cache, preset="lcm-lora", preset_weights=str(weights))
    assert app.preset_defaults() == {"steps": 4, "guidance_scale": 0.0}
    person = app.prepare_identity(FACE)
    result = app.generate(person, steps=2, seed=1, guidance_scale=0.0)
    assert result.metadata["preset"] == "lcm-lora" and result.metadata["sampler"] == "LCM"
    from instantid.attention import FaceAttnProcessor

    assert any(isinstance(p, FaceAttnProcessor) for p in app.pipe.unet.attn_processors.values())
    other = app.prepare_identity(FACES / "lecun_1.jpg", pose=FACE)
    again = app.generate(other, steps=2, seed=1, guidance_scale=0.0)
    assert np.abs(np.asarray(again.images[0], float) - np.asarray(result.images[0], float)).mean() > 0


def test_cli_preset_fills_steps_unless_typed(stand_in: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    cache, weights = stand_in
    common = ["generate", str(FACE), "--demo", "--demo-cache-dir", str(cache), "--preset", "lcm-lora",
              "--preset-weights", str(weights), "--seed", "1"]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    assert "preset lcm-lora: --steps 4, --guidance 0.0" in capsys.readouterr().err
    assert read_metadata(tmp_path / "a" / "portrait_s1.png")["settings"]["steps"] == 4
    assert main([*common, "--steps", "2", "-o", str(tmp_path / "b")]) == 0
    stored = read_metadata(tmp_path / "b" / "portrait_s1.png")["settings"]
    assert stored["steps"] == 2 and stored["guidance_scale"] == 0.0
    assert main([*common[:-2], "--preset", "nope", "-o", str(tmp_path / "c")]) == 2
