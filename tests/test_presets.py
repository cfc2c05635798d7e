"""Few-step presets load random stand-ins of the published layouts, keep the identity branch and sample with
their authors' scheduler settings (tiny stack, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantid.core.attention import FaceAttnProcessor
from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError
from instantid.speed.fast import enable_fast_inference
from instantid.speed.presets import PRESETS, apply_preset, random_lora_state_dict, write_stand_in

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
SIZE = 64


@pytest.fixture
def pipe(fresh_fixture_pipe):
    return fresh_fixture_pipe


def _run(pipe, emb_seed: int = 0, **kwargs) -> tuple[torch.Tensor, list[int]]:
    from instantid import draw_kps

    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * SIZE
    steps: list[int] = []

    def on_step(p, i, t, tensors):
        steps.append(int(t))
        return tensors

    latents = pipe(
        prompt="a portrait", image=draw_kps(Image.new("RGB", (SIZE, SIZE)), face),
        image_embeds=np.random.default_rng(emb_seed).normal(size=512).astype(np.float32),
        generator=torch.Generator().manual_seed(0), output_type="latent", callback_on_step_end=on_step, **kwargs,
    ).images
    return latents, steps


def _face_layers(pipe) -> list[str]:
    return [n for n, p in pipe.unet.attn_processors.items() if isinstance(p, FaceAttnProcessor)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_loads_its_layout_keeps_the_identity_and_samples_as_published(pipe, tmp_path, name):
    preset = PRESETS[name]
    faces = _face_layers(pipe)
    q = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    controlnet_q = pipe.controlnet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    apply_preset(pipe, name, weights=write_stand_in(preset, pipe.unet, tmp_path))

    # The weights went into the UNet (LoRA fused, no LoRA layers left) and only there.
    attn1 = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert not torch.equal(attn1.to_q.weight, q) and not hasattr(attn1.to_q, "base_layer")
    assert torch.equal(pipe.controlnet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight,
                       controlnet_q)
    # The scheduler the authors specify, with their settings.
    assert type(pipe.scheduler).__name__ == preset.scheduler
    for key, value in preset.scheduler_config.items():
        assert pipe.scheduler.config[key] == value
    # The identity branch is intact: same face layers, and the face still changes the picture.
    assert _face_layers(pipe) == faces
    latents, timesteps = _run(pipe, **preset.call_kwargs())
    other, _ = _run(pipe, emb_seed=1, **preset.call_kwargs())
    assert len(timesteps) == preset.steps and torch.isfinite(latents).all()
    assert (other - latents).abs().max() > 1e-3
    if preset.scheduler_config.get("timestep_spacing") == "trailing":
        assert timesteps[0] == 999  # trailing spacing starts at the last training timestep


def test_published_settings():
    """The facts from the model cards, spelled out once more so a typo in the table fails here."""
    expected = {
        "lcm-lora": ("LCMScheduler", 4, 0.0, None), "lightning-4step": ("EulerDiscreteScheduler", 4, 0.0, None),
        "lightning-8step-unet": ("EulerDiscreteScheduler", 8, 0.0, None),
        "hyper-sd-8step": ("DDIMScheduler", 8, 0.0, None), "hyper-sd-8step-cfg": ("DDIMScheduler", 8, 5.0, None),
        "tcd": ("TCDScheduler", 4, 0.0, 0.3),
    }
    for name, (scheduler, steps, guidance, eta) in expected.items():
        p = PRESETS[name]
        assert (p.scheduler, p.steps, p.guidance_scale, p.eta) == (scheduler, steps, guidance, eta), name
    assert PRESETS["lightning-4step"].weight_name == "sdxl_lightning_4step_lora.safetensors"
    assert PRESETS["lightning-8step-unet"].kind == "unet"


def test_preset_errors(pipe, tmp_path):
    with pytest.raises(InvalidInputError, match="unknown few-step preset"):
        apply_preset(pipe, "turbo", weights=tmp_path)
    with pytest.raises(MissingWeightsError, match="sdxl_lightning_4step_lora.safetensors"):
        apply_preset(pipe, "lightning-4step", weights=tmp_path)
    from safetensors.torch import save_file

    save_file({"conv_in.weight": torch.zeros(1)}, str(tmp_path / "sdxl_lightning_4step_unet.safetensors"))
    with pytest.raises(IncompatibleWeightsError, match="keys missing"):
        apply_preset(pipe, "lightning-4step-unet", weights=tmp_path)


def test_fused_qkv_never_drops_an_unfused_lora(pipe):
    pipe.load_lora_weights(random_lora_state_dict(pipe.unet), adapter_name="style")
    with pytest.raises(InvalidInputError, match="unfused LoRA"):
        enable_fast_inference(pipe, fuse_qkv=True, channels_last=False)
    before, _ = _run(pipe, num_inference_steps=2)
    report = enable_fast_inference(pipe, channels_last=False)  # default: fuse what carries no LoRA
    after, _ = _run(pipe, num_inference_steps=2)
    in_unet = [n for n, p in pipe.unet.attn_processors.items() if type(p).__name__ == "FusedAttnProcessor2_0"]
    assert not in_unet and report.fused_qkv_layers > 0  # IdentityNet carries no LoRA: fused
    assert (after - before).abs().max() < 1e-5


def test_preset_then_fast_path_runs(pipe, tmp_path):
    preset = PRESETS["tcd"]
    apply_preset(pipe, "tcd", weights=write_stand_in(preset, pipe.unet, tmp_path))
    before, _ = _run(pipe, **preset.call_kwargs())
    report = enable_fast_inference(pipe)
    after, _ = _run(pipe, **preset.call_kwargs())
    assert report.fused_qkv_layers > 0 and (after - before).abs().max() < 1e-4
