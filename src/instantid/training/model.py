"""The model being trained and its loss (paper section 3.4): frozen SDXL, trainable face adapter + IdentityNet.

``InstantIDNet`` is the one ``nn.Module`` handed to ``accelerator.prepare`` (so DDP sees every trained
parameter): the SDXL UNet with the face adapter installed exactly as inference installs it (diffusers'
IP-Adapter machinery + our processors) and IdentityNet. Its forward is the pipeline's denoising step
(:func:`instantid.core.denoise.denoise_step`) without guidance, so what is trained is what the pipeline runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from instantid.core.adapter import (
    check_fits_unet,
    inspect_adapter,
    install_face_adapter,
    load_adapter_state_dict,
    random_adapter_state_dict,
)
from instantid.core.attention import FaceCall, FaceRegion
from instantid.core.denoise import StepInputs, denoise_step, face_tokens
from instantid.errors import EmbeddingSpaceError, IncompatibleWeightsError, MissingWeightsError
from instantid.training.config import TrainConfig

TRAINABLE_FILE = "trainable.safetensors"  # the trained tensors of a checkpoint folder
# Parameter names (inside the UNet) that belong to the face adapter and are trained.
_ADAPTER_PARAMS = ("encoder_hid_proj.", ".to_k_ip.", ".to_v_ip.")


class InstantIDNet(torch.nn.Module):
    """UNet (frozen, with the face adapter) + IdentityNet: one denoising step as the pipeline takes it."""

    def __init__(self, unet: UNet2DConditionModel, identitynet: ControlNetModel) -> None:
        super().__init__()
        self.unet = unet
        self.identitynet = identitynet

    def forward(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
        pooled: torch.Tensor, time_ids: torch.Tensor, face_embedding: torch.Tensor, kps_image: torch.Tensor,
    ) -> torch.Tensor:
        """(B, 4, h, w) noisy latents -> (B, 4, h, w) prediction. ``face_embedding`` is (B, E), text (B, 77, D).

        The pipeline's own :func:`denoise_step` without guidance; the Resampler runs once per step and its
        tokens feed both IdentityNet and the UNet's decoupled attention."""
        faces = FaceCall((FaceRegion(face_tokens(self.unet, face_embedding)),), scale=None, cache=None)
        inputs = StepInputs(
            prompt_embeds=prompt_embeds, added_cond={"text_embeds": pooled, "time_ids": time_ids}, faces=faces,
            identity_images=(kps_image,),
        )
        return denoise_step(self.unet, [self.identitynet], noisy_latents, timesteps, inputs, scales=[1.0])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors: checkpoints stay small (the frozen UNet is never copied)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable(self, folder: str | Path) -> None:
        """Load ``folder/trainable.safetensors``, refusing a checkpoint of a differently shaped model."""
        from safetensors.torch import load_file

        path = Path(folder) / TRAINABLE_FILE
        if not path.is_file():
            raise MissingWeightsError(f"{path} not found: not a training checkpoint folder")
        state = load_file(str(path))
        own = self.trainable_state_dict()
        bad = sorted(set(state) ^ set(own)) + [k for k in state if k in own and state[k].shape != own[k].shape]
        if bad:
            raise IncompatibleWeightsError(
                f"checkpoint {folder} does not fit this model ({len(bad)} tensors differ, e.g. {bad[0]!r})"
            )
        self.load_state_dict(state, strict=False)


@dataclass
class TrainingModules:
    """Everything a training step needs; only ``net`` holds trained parameters."""

    net: InstantIDNet
    vae: AutoencoderKL
    text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection]
    tokenizers: tuple[CLIPTokenizer, CLIPTokenizer]
    noise_scheduler: DDPMScheduler


def _from_pretrained(cls: Any, path: str, subfolder: str | None = None) -> Any:
    try:
        return cls.from_pretrained(path, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        where = f"{path}/{subfolder}" if subfolder else path
        raise MissingWeightsError(f"cannot load {cls.__name__} from {where}: {str(exc).splitlines()[0]}") from exc


def _load_adapter_state(config: TrainConfig, unet: UNet2DConditionModel) -> dict:
    if config.adapter is None:
        return random_adapter_state_dict(
            unet, width=config.resampler_width, depth=config.resampler_depth, num_queries=config.num_tokens,
            embedding_dim=config.embedding_dim, seed=config.seed,
        )
    state, metadata = load_adapter_state_dict(config.adapter)
    spec = inspect_adapter(state, config.adapter, metadata)
    check_fits_unet(state, spec, unet, config.adapter)
    if spec.embedding_dim != config.embedding_dim or spec.embedding_space not in (None, config.embedding_space):
        space = spec.embedding_space or config.embedding_space
        raise EmbeddingSpaceError(
            f"--adapter {config.adapter} reads {spec.embedding_dim}-d {spec.embedding_space or 'unrecorded-space'} "
            f"embeddings but training is set up for --embedding-space {config.embedding_space} --embedding-dim "
            f"{config.embedding_dim}: pass --embedding-space {space} --embedding-dim {spec.embedding_dim} (and data "
            "prepared with that face model)"
        )
    return state


def build_modules(config: TrainConfig) -> TrainingModules:
    """Load the frozen base, create or load IdentityNet and the face adapter, and mark what trains."""
    root = config.pretrained_model
    tokenizers = (
        _from_pretrained(CLIPTokenizer, root, "tokenizer"), _from_pretrained(CLIPTokenizer, root, "tokenizer_2")
    )
    encoders = (
        _from_pretrained(CLIPTextModel, root, "text_encoder"),
        _from_pretrained(CLIPTextModelWithProjection, root, "text_encoder_2"),
    )
    vae = _from_pretrained(AutoencoderKL, config.pretrained_vae) if config.pretrained_vae else _from_pretrained(
        AutoencoderKL, root, "vae"
    )
    unet = _from_pretrained(UNet2DConditionModel, root, "unet")
    noise_scheduler = _from_pretrained(DDPMScheduler, root, "scheduler")
    # IdentityNet is copied from the UNet before the adapter changes the UNet's modules and config.
    if config.identitynet is not None:
        if not Path(config.identitynet).exists():
            raise MissingWeightsError(f"IdentityNet folder not found: {config.identitynet}")
        identitynet = _from_pretrained(ControlNetModel, config.identitynet)
    else:
        identitynet = ControlNetModel.from_unet(unet)
    install_face_adapter(unet, _load_adapter_state(config, unet), scale=1.0)

    for module in (vae, *encoders, unet):
        module.requires_grad_(False)
    for name, param in unet.named_parameters():
        if any(part in name for part in _ADAPTER_PARAMS):
            param.requires_grad_(True)
    identitynet.requires_grad_(True)
    identitynet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        identitynet.enable_gradient_checkpointing()
    return TrainingModules(InstantIDNet(unet, identitynet), vae, encoders, tokenizers, noise_scheduler)


def cast_frozen(modules: TrainingModules, dtype: torch.dtype, device: torch.device, keep_vae_fp32: bool) -> None:
    """Move everything to ``device``; frozen weights to ``dtype`` (mixed precision), trained ones stay fp32
    so the optimizer updates full-precision masters, as diffusers' training scripts do."""
    modules.net.to(device)
    for param in modules.net.unet.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)
    for encoder in modules.text_encoders:
        encoder.to(device, dtype=dtype)
    modules.vae.to(device, dtype=torch.float32 if keep_vae_fp32 else dtype)


@torch.no_grad()
def encode_text(captions: list[str], modules: TrainingModules) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL text conditioning as ``encode_prompt`` computes it: penultimate hidden states of both encoders
    concatenated (B, 77, D) and the second encoder's pooled projection (B, P)."""
    states = []
    pooled = None
    for tokenizer, encoder in zip(modules.tokenizers, modules.text_encoders, strict=True):
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def time_ids(batch: dict[str, Any], resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning (B, 6): original size, crop top-left, target size."""
    target = torch.tensor([resolution, resolution]).expand(batch["original_size"].shape[0], 2)
    return torch.cat([batch["original_size"], batch["crop_top_left"], target], dim=1).float()


def step_generator(seed: int, micro_step: int, process_index: int) -> torch.Generator:
    """Noise, timesteps and dropout are a function of (seed, micro-step, process), never of hidden RNG state:
    a resumed run draws exactly what the uninterrupted run drew."""
    return torch.Generator().manual_seed(seed * 1_000_003 + micro_step * 7919 + process_index)


def diffusion_loss(
    modules: TrainingModules, batch: dict[str, Any], generator: torch.Generator, resolution: int,
    text_dropout: float = 0.0, face_dropout: float = 0.0, net: torch.nn.Module | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Plain epsilon (or v) prediction MSE on noised VAE latents of the full image. Returns per-example loss (B,).

    ``net`` is the (possibly DDP-wrapped) model to call; defaults to ``modules.net``. ``snr_gamma`` weights each
    example by min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), as diffusers' scripts do: the almost clean
    timesteps, whose loss is large and mostly unlearnable detail, no longer dominate the gradient.
    """
    net = net or modules.net
    vae = modules.vae
    device = batch["pixel_values"].device
    bsz = batch["pixel_values"].shape[0]
    with torch.no_grad():
        dist = vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist
        latents = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(device, dist.mean.dtype)
        latents = (latents * vae.config.scaling_factor).float()
    noise = torch.randn(latents.shape, generator=generator).to(device)
    steps = modules.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (bsz,), generator=generator).to(device)
    drop_text = (torch.rand(bsz, generator=generator) < text_dropout).tolist()
    keep_face = (torch.rand(bsz, generator=generator) >= face_dropout).to(device)
    noisy = modules.noise_scheduler.add_noise(latents, noise, timesteps)

    captions = ["" if drop else c for drop, c in zip(drop_text, batch["caption"], strict=True)]
    prompt_embeds, pooled = encode_text(captions, modules)
    dtype = prompt_embeds.dtype
    face = batch["embedding"].to(device) * keep_face[:, None]  # zero embedding = the pipeline's negative branch
    pred = net(
        noisy.to(dtype), timesteps, prompt_embeds, pooled, time_ids(batch, resolution).to(device, dtype),
        face.to(dtype), batch["kps_image"].to(device, dtype),
    )
    if modules.noise_scheduler.config.prediction_type == "v_prediction":
        target = modules.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return loss
    snr = compute_snr(modules.noise_scheduler, timesteps)
    weight = snr.clamp(max=snr_gamma)
    v_pred = modules.noise_scheduler.config.prediction_type == "v_prediction"
    return loss * weight / (snr + 1 if v_pred else snr)
