"""Few-step presets through the high-level API and the CLI: sampler, steps and guidance as their authors say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _demo import FACE, FACES

from instantid.cli import main
from instantid.io.outputs import read_metadata


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A demo cache folder and a random LCM-LoRA in the published key layout for its tiny UNet."""
    from instantid import InstantID
    from instantid.speed.presets import get_preset, write_stand_in

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
    from instantid.core.attention import FaceAttnProcessor

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


# ---- one rule for every surface (issue 18 item 1) ----------------------------------------------------------
GROUP = FACES / "group_two_people.jpg"


@pytest.fixture(scope="module")
def preset_app(stand_in: tuple[Path, Path]):
    from instantid import InstantID

    cache, weights = stand_in
    return InstantID.demo(cache, preset="lcm-lora", preset_weights=str(weights))


def test_recorded_settings_keep_what_was_chosen() -> None:
    from instantid.api.settings import GenerationSettings, settings_from_record

    chosen = GenerationSettings(prompt="x", seed=3).updated(width=64, height=64)
    assert chosen.model_fields_set == {"prompt", "seed", "width", "height"}
    again = settings_from_record(chosen.record())
    assert again == chosen and again.model_fields_set == chosen.model_fields_set
    # A plain dump (a record written before choices were kept) counts every field as chosen.
    assert settings_from_record(chosen.model_dump()).model_fields_set == set(GenerationSettings.model_fields)


def test_preset_steps_and_guidance_reach_every_task(preset_app) -> None:
    """generate, group, swap and detail through the Python API: the preset's 4 steps and guidance 0 where the
    caller chose none, the caller's own values where they did; the metadata records what ran."""
    from instantid.api.face_detail import FaceDetailOptions
    from instantid.api.settings import GenerationSettings
    from instantid.apps.detail import detail_picture
    from instantid.apps.swap import SwapOptions, swap_face
    from instantid.faces import load_image

    app = preset_app
    person = app.prepare_identity(FACE)
    small = GenerationSettings(seed=1, width=64, height=64)
    totals: list[int] = []

    def seen(step: int, total: int) -> None:
        totals.append(total)

    runs = {
        "generate": lambda s: app.generate(person, s, progress=seen),
        "keywords": lambda s: app.generate(person, progress=seen, **s.model_dump(exclude_unset=True)),
        "group": lambda s: app.generate_group([person, person], s, progress=seen),
        "swap": lambda s: swap_face(app, person, load_image(GROUP), s.updated(width=None, height=None),
                                    SwapOptions(resolution=64, strength=1.0), progress=seen),
        "detail": lambda s: detail_picture(app, person, load_image(GROUP), "group.jpg",
                                           s.updated(width=None, height=None),
                                           FaceDetailOptions(resolution=64, strength=1.0),
                                           progress=seen),
    }
    for task, run in runs.items():
        totals.clear()
        result = run(small)
        assert (result.settings.steps, result.settings.guidance_scale) == (4, 0.0), task
        assert result.metadata["settings"]["steps"] == 4 and max(totals) == 4, task
        totals.clear()
        own = run(small.updated(steps=2, guidance_scale=1.5))
        assert (own.settings.steps, own.settings.guidance_scale) == (2, 1.5), task
        assert max(totals) == 2, task


def test_http_jobs_take_the_preset_unless_sent(preset_app, tmp_path: Path) -> None:
    from _service import serving

    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path, mount_ui=False)
    face = ("face", ("face.jpg", FACE.read_bytes(), "image/jpeg"))
    scene = ("scene", ("group.jpg", GROUP.read_bytes(), "image/jpeg"))
    with serving(create_app(settings, model=preset_app)) as http:
        for path, files, extra in (("generate", [face], {"width": "64", "height": "64"}),
                                   ("swap", [face, scene], {"resolution": "64"})):
            out = http.post(f"/v1/{path}?wait=true", files=files, data={"seed": "1", **extra}).json()
            assert out["info"]["settings"]["steps"] == 4, out
            assert out["info"]["settings"]["guidance_scale"] == 0.0
            own = http.post(f"/v1/{path}?wait=true", files=files, data={"seed": "1", "steps": "2", **extra}).json()
            assert own["info"]["settings"]["steps"] == 2, own


def test_cli_swap_detail_and_batch_take_the_preset(stand_in: tuple[Path, Path], tmp_path: Path) -> None:
    cache, weights = stand_in
    model = ["--demo", "--demo-cache-dir", str(cache), "--preset", "lcm-lora", "--preset-weights", str(weights)]
    assert main(["swap", "--face", str(FACE), "--into", str(GROUP), "--seed", "1", "--resolution", "64",
                 "-o", str(tmp_path / "swap"), *model]) == 0
    assert main(["detail", str(GROUP), "--face", str(FACE), "--seed", "1", "--resolution", "64",
                 "-o", str(tmp_path / "detail"), *model]) == 0
    job = tmp_path / "job.yaml"
    job.write_text(f"identities: [{{name: me, photos: [{FACE}]}}]\nprompts: [a portrait]\nseeds: [1]\n"
                   "settings: {width: 64, height: 64}\n")
    assert main(["batch", str(job), "-o", str(tmp_path / "batch"), *model]) == 0
    for folder in ("swap", "detail", "batch/me"):
        written = sorted((tmp_path / folder).glob("*.png"))
        assert written, folder
        stored = read_metadata(written[0])["settings"]
        assert (stored["steps"], stored["guidance_scale"]) == (4, 0.0), folder
