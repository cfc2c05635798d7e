"""One InstantID denoising step: UNet + IdentityNet + face tokens at one timestep (paper section 3).

:func:`denoise_step` is the single implementation that both the pipelines sample with and the trainer
differentiates through (``training.model.InstantIDNet.forward``), so what is trained is what is run.
Everything it reads besides the latents and the timestep is one frozen :class:`StepInputs`, built once per
call (pipeline) or per training step; the face tokens inside it were made by the Resampler once
(:func:`face_tokens`), never inside the step.

Several identities (the paper's multi-identity synthesis): IdentityNet runs once per identity, with that
identity's keypoint picture and face tokens, and its residuals are multiplied by the identity's region mask
before they are summed (MultiControlNet-style); in the UNet each identity's tokens act only inside its
region (:class:`instantid.core.attention.FaceAttnProcessor`). The text steers the whole picture.

Lossy lever, off by default: ``StepInputs.control_cache_interval = N > 1`` runs IdentityNet (and any extra
ControlNet) on every N-th step only and adds its last residuals again on the steps in between. The residuals are
kept in the call's own cache (``FaceCall.cache``), never on a module, so calls cannot see each other's. Why this
cache and not DeepCache's reuse of the UNet's deep features: IdentityNet is the part InstantID adds (about 30%
of a step's arithmetic at 1024 px), its residuals depend on the latents only weakly (its picture and face tokens
do not change within a call), and skipping it needs no change to diffusers' UNet forward; DeepCache replaces
the forward of UNet2DConditionModel's blocks (its own helper patches them in place), which a per-call value
cannot do without re-typing that forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from instantid.core.attention import FaceCall


@dataclass(frozen=True)
class StepInputs:
    """What a denoising step reads besides latents and timestep. ``B'`` is the UNet's batch: twice the
    latents' batch under guidance (negative half first), else the same."""

    prompt_embeds: torch.Tensor  # (B', L, D) text for the UNet and the extra ControlNets
    added_cond: dict[str, torch.Tensor]  # SDXL: {"text_embeds": (B', P), "time_ids": (B', 6)}
    faces: FaceCall  # per identity: face tokens (B', Q, D) and region mask; adapter scale; per-call cache
    identity_images: tuple[torch.Tensor, ...]  # per identity: keypoint picture for IdentityNet (B'|B, 3, H, W)
    control_images: tuple[torch.Tensor, ...] = ()  # extra ControlNets' images, in net order after IdentityNet
    guidance_scale: float | None = None  # classifier-free guidance weight; None = no guidance
    guess_mode: bool = False  # control only the conditional half (under guidance) and let nets guess
    timestep_cond: torch.Tensor | None = None  # LCM-style guidance embedding
    cross_attention_kwargs: dict | None = None  # e.g. {"scale": LoRA scale}
    control_cache_interval: int = 1  # lossy lever: ControlNets run every N-th step, residuals reused between


@dataclass(frozen=True)
class _ReusedResiduals:
    """The last ControlNet residuals of a call, reused by the next ``interval - 1`` steps at the same strengths."""

    down: list[torch.Tensor] | None
    mid: torch.Tensor | None
    scales: tuple[float, ...]  # the strengths they were made with (a change, e.g. a closing window, recomputes)
    age: int  # steps served so far, the computing one included


def face_tokens(unet: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """Face embeddings (B, E) -> face tokens (B, Q, D) through the Resampler loaded in ``unet``, on the
    embeddings' device in the Resampler's dtype."""
    resampler = unet.encoder_hid_proj.image_projection_layers[0]
    param = next(resampler.parameters())
    # Under CPU offload the UNet (and so the Resampler) may sit elsewhere than the embeddings.
    if param.device.type == "meta":
        return resampler(embeds[:, None])
    return resampler(embeds[:, None].to(param.device, param.dtype)).to(embeds.device)


def _resized_mask(faces: FaceCall, index: int, mask: torch.Tensor, size: torch.Size, like: torch.Tensor):
    """Region mask resized (bilinear, as published) to a residual's size; memoised for the call."""

    def make() -> torch.Tensor:
        return F.interpolate(mask[None, None], size, mode="bilinear").to(like)

    if faces.cache is None:
        return make()
    key = ("control-mask", index, tuple(size))
    if key not in faces.cache:
        faces.cache[key] = make()
    return faces.cache[key]


def control_residuals(
    controlnets: Sequence[torch.nn.Module], sample: torch.Tensor, t: torch.Tensor, inputs: StepInputs,
    scales: Sequence[float], conditional_only: bool,
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """Sum of every ControlNet's residuals for ``sample``: IdentityNet (``controlnets[0]``) once per identity
    with its face tokens and region mask, the other nets once with the text. ``scales`` holds one strength
    per net for this step (0 = outside its guidance window: skipped, contributes exactly zero)."""

    def half(x: torch.Tensor) -> torch.Tensor:
        return x.chunk(2)[1] if conditional_only else x

    text = half(inputs.prompt_embeds)
    added = {k: half(v) for k, v in inputs.added_cond.items()}
    jobs = [
        (controlnets[0], image, half(region.tokens), index, region.mask, scales[0])
        for index, (region, image) in enumerate(zip(inputs.faces.regions, inputs.identity_images, strict=True))
    ]
    jobs += [
        (net, image, text, None, None, scale)
        for net, image, scale in zip(controlnets[1:], inputs.control_images, scales[1:], strict=True)
    ]
    down_sum: list[torch.Tensor] | None = None
    mid_sum: torch.Tensor | None = None
    for net, image, states, index, mask, scale in jobs:
        if scale == 0:
            continue
        down, mid = net(
            sample, t, encoder_hidden_states=states, controlnet_cond=image, conditioning_scale=scale,
            guess_mode=inputs.guess_mode, added_cond_kwargs=added, return_dict=False,
        )
        if mask is not None:
            down = [d * _resized_mask(inputs.faces, index, mask, d.shape[-2:], d) for d in down]
            mid = mid * _resized_mask(inputs.faces, index, mask, down[-1].shape[-2:], mid)
        if down_sum is None:
            down_sum, mid_sum = list(down), mid
        else:
            down_sum = [a + b for a, b in zip(down_sum, down, strict=True)]
            mid_sum = mid_sum + mid
    return down_sum, mid_sum


def cached_control_residuals(
    controlnets: Sequence[torch.nn.Module], sample: torch.Tensor, t: torch.Tensor, inputs: StepInputs,
    scales: Sequence[float], conditional_only: bool,
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """:func:`control_residuals`, or the call's last ones while ``inputs.control_cache_interval`` allows (lossy).

    The nets run on the first step, then every ``control_cache_interval``-th step; a step whose strengths differ
    from the cached ones (a guidance window opening or closing) runs them too. Without a per-call cache
    (training) every step runs them. Control images replaced by a step-end callback take effect at the next
    step that runs the nets.
    """
    cache = inputs.faces.cache
    if inputs.control_cache_interval <= 1 or cache is None:
        return control_residuals(controlnets, sample, t, inputs, scales, conditional_only)
    key = ("control-residuals",)
    last: _ReusedResiduals | None = cache.get(key)
    if last is not None and last.scales == tuple(scales) and last.age < inputs.control_cache_interval:
        cache[key] = replace(last, age=last.age + 1)
        return last.down, last.mid
    down, mid = control_residuals(controlnets, sample, t, inputs, scales, conditional_only)
    cache[key] = _ReusedResiduals(down, mid, tuple(scales), age=1)
    return down, mid


def denoise_step(
    unet: torch.nn.Module, controlnets: Sequence[torch.nn.Module], latents: torch.Tensor, t: torch.Tensor,
    inputs: StepInputs, scales: Sequence[float],
) -> torch.Tensor:
    """(B, C, h, w) latents, already scaled by the scheduler -> (B, C, h, w) noise prediction, guided when
    ``inputs.guidance_scale`` is set (Ho & Salimans: uncond + w * (cond - uncond))."""
    cfg = inputs.guidance_scale is not None
    model_input = torch.cat([latents] * 2) if cfg else latents
    # Guess mode under guidance: control only the conditional half; the unconditional half gets no residuals.
    trim = cfg and inputs.guess_mode
    down, mid = cached_control_residuals(controlnets, latents if trim else model_input, t, inputs, scales, trim)
    if down is not None and trim:
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    # The UNet gets every identity's full face tokens through its image-conditioning channel.
    noise_pred = unet(
        model_input, t, encoder_hidden_states=inputs.prompt_embeds, timestep_cond=inputs.timestep_cond,
        cross_attention_kwargs=inputs.cross_attention_kwargs, down_block_additional_residuals=down,
        mid_block_additional_residual=mid, added_cond_kwargs={**inputs.added_cond, "image_embeds": inputs.faces},
        return_dict=False,
    )[0]
    if cfg:
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + inputs.guidance_scale * (cond - uncond)
    return noise_pred
