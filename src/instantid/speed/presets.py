"""Few-step presets: distilled SDXL LoRAs / UNets with the sampler settings their authors publish.

Each :class:`FewStepPreset` names the weights (Hub repo + file), how they load (a LoRA fused into the UNet, or
a full UNet state dict), the scheduler and its settings, the number of steps, the guidance scale and, for TCD,
``eta``. The values are the ones in each model card's diffusers example:

* ``lcm-lora``: latent-consistency/lcm-lora-sdxl, ``LCMScheduler``, 4 steps, guidance 0 (the card passes 0
  to disable guidance; SDXL pipelines disable it for any value <= 1).
* ``lightning-{4,8}step`` (LoRA) and ``lightning-{4,8}step-unet``: ByteDance/SDXL-Lightning,
  ``EulerDiscreteScheduler`` with ``timestep_spacing="trailing"``, guidance 0, 4 or 8 steps with the
  checkpoint of the same step count.
* ``hyper-sd-{4,8}step`` (LoRA): ByteDance/Hyper-SD, ``DDIMScheduler`` with ``timestep_spacing="trailing"``,
  guidance 0; ``hyper-sd-8step-cfg``: the CFG-preserving 8-step LoRA, guidance 5 (the card: 5 to 8), so
  negative prompts still work.
* ``tcd``: h1t/TCD-SDXL-LoRA, ``TCDScheduler``, 4 steps, guidance 0, ``eta`` (gamma) 0.3.

The authors' examples start from stable-diffusion-xl-base-1.0's scheduler config, so the settings it
provides to those schedulers (no sample clipping, ``set_alpha_to_one=False``) are set explicitly: a base
model whose scheduler config lacks them samples the same way.

LoRAs are fused into the UNet and then unloaded: no LoRA layers stay behind to cost time each step, and the
fast path (:func:`instantid.speed.fast.enable_fast_inference`) can fuse projections and compile afterwards. Only
the UNet changes: IdentityNet and the face adapter (the identity branch) are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from instantid.core.attention import FaceAttnProcessor
from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError

# What stable-diffusion-xl-base-1.0's scheduler_config.json gives the schedulers below (see module docstring).
_SDXL_BASE = {"clip_sample": False, "set_alpha_to_one": False}


@dataclass(frozen=True)
class FewStepPreset:
    """One few-step recipe, as its authors publish it."""

    name: str
    repo: str  # Hub repository of the weights
    weight_name: str  # file in that repository
    kind: str  # "lora" (fused into the UNet) or "unet" (full UNet state dict, diffusers names)
    scheduler: str  # diffusers scheduler class
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # overrides of the base model's config
    steps: int = 4
    guidance_scale: float = 0.0
    eta: float | None = None  # TCD's gamma; None = the pipeline default
    lora_scale: float = 1.0

    def call_kwargs(self) -> dict[str, Any]:
        """The sampler arguments of a pipeline call with this preset."""
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps, "guidance_scale": self.guidance_scale}
        if self.eta is not None:
            kwargs["eta"] = self.eta
        return kwargs


def _lightning(steps: int, kind: str) -> FewStepPreset:
    suffix = "" if kind == "lora" else "-unet"
    return FewStepPreset(
        name=f"lightning-{steps}step{suffix}", repo="ByteDance/SDXL-Lightning",
        weight_name=f"sdxl_lightning_{steps}step_{kind}.safetensors", kind=kind, scheduler="EulerDiscreteScheduler",
        scheduler_config={"timestep_spacing": "trailing"}, steps=steps, guidance_scale=0.0,
    )


def _hyper(steps: int, cfg: bool) -> FewStepPreset:
    return FewStepPreset(
        name=f"hyper-sd-{steps}step" + ("-cfg" if cfg else ""), repo="ByteDance/Hyper-SD",
        weight_name=f"Hyper-SDXL-{steps}steps-{'CFG-' if cfg else ''}lora.safetensors", kind="lora",
        scheduler="DDIMScheduler", scheduler_config={**_SDXL_BASE, "timestep_spacing": "trailing"}, steps=steps,
        guidance_scale=5.0 if cfg else 0.0,
    )


PRESETS: dict[str, FewStepPreset] = {
    p.name: p
    for p in (
        FewStepPreset(
            name="lcm-lora", repo="latent-consistency/lcm-lora-sdxl", weight_name="pytorch_lora_weights.safetensors",
            kind="lora", scheduler="LCMScheduler", scheduler_config=dict(_SDXL_BASE), steps=4, guidance_scale=0.0,
        ),
        _lightning(4, "lora"), _lightning(8, "lora"), _lightning(4, "unet"), _lightning(8, "unet"),
        _hyper(4, cfg=False), _hyper(8, cfg=False), _hyper(8, cfg=True),
        FewStepPreset(
            name="tcd", repo="h1t/TCD-SDXL-LoRA", weight_name="pytorch_lora_weights.safetensors", kind="lora",
            scheduler="TCDScheduler", scheduler_config=dict(_SDXL_BASE), steps=4, guidance_scale=0.0, eta=0.3,
        ),
    )
}


def get_preset(name: str, flag: str = "preset") -> FewStepPreset:
    """The preset called ``name``; ``flag`` is how the caller's user spells the option (``--preset``)."""
    if name not in PRESETS:
        raise InvalidInputError(f"{flag} {name!r}: unknown few-step preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_weights_file(name: str, weights: str | Path | None = None, flags: tuple[str, str] = (
        "preset", "preset_weights")) -> Path:
    """The local weights file of preset ``name``: ``weights`` when given (a file, or a folder holding the published
    file name), else the Hub download (a cache hit after the first). Surfaces call it before loading the model, so
    an unknown name or unreachable weights cost seconds, not a model load; errors name ``flags`` (the preset's and
    its weights' option, e.g. ``("--preset", "--preset-weights")``)."""
    flag, weights_flag = flags
    preset = get_preset(name, flag)
    if weights is not None:
        path = Path(weights).expanduser()
        path = path / preset.weight_name if path.is_dir() else path
        if not path.is_file():
            raise MissingWeightsError(f"{weights_flag} {weights}: no {preset.weight_name} there (the weights of "
                                      f"{flag} {name}, published in {preset.repo})")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(preset.repo, preset.weight_name))
    except Exception as exc:  # offline, gated, or gone: one line naming what was looked for
        raise MissingWeightsError(
            f"{flag} {name}: cannot fetch {preset.weight_name} from {preset.repo} ({type(exc).__name__}); "
            f"download it and pass {weights_flag} PATH"
        ) from None


def _adapter_key(key: str) -> bool:
    """UNet state-dict keys that belong to the face adapter, not to the base UNet."""
    return key.startswith("encoder_hid_proj.") or ".processor." in key


def load_unet_weights(unet: torch.nn.Module, path: Path) -> None:
    """Replace the base UNet weights with a full UNet checkpoint (diffusers names), checking every key and
    shape first; the face adapter's layers are kept."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for a corrupt or foreign file
        raise IncompatibleWeightsError(f"cannot read UNet weights {path}: {type(exc).__name__}: {exc}") from None
    own = {k: v for k, v in unet.state_dict().items() if not _adapter_key(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        sample = (missing or unexpected)[0]
        raise IncompatibleWeightsError(
            f"UNet weights {path} do not fit this UNet: {len(missing)} keys missing, {len(unexpected)} unexpected "
            f"(e.g. {sample!r}); expected a full SDXL UNet in diffusers names"
        )
    wrong = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise IncompatibleWeightsError(
            f"UNet weights {path}: {wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, "
            f"this UNet needs {tuple(own[wrong[0]].shape)}"
        )
    unet.load_state_dict(state, strict=False)  # strict=False only because the adapter keys are not in the file


def apply_preset(pipe: Any, name: str, weights: str | Path | None = None) -> FewStepPreset:
    """Load a preset's weights into ``pipe`` and set its scheduler; returns the preset, whose
    :meth:`~FewStepPreset.call_kwargs` go into each call.

    ``weights``: the downloaded file (or a folder holding it); default: fetched from the Hub.
    """
    import diffusers

    preset = get_preset(name)
    path = preset_weights_file(name, weights)
    face_layers = sum(isinstance(p, FaceAttnProcessor) for p in pipe.unet.attn_processors.values())
    if preset.kind == "unet":
        load_unet_weights(pipe.unet, path)
    else:
        try:
            pipe.load_lora_weights(str(path), adapter_name=preset.name.replace("-", "_"))
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IncompatibleWeightsError(f"{preset.name}: cannot load the LoRA {path}: {reason}") from None
        pipe.fuse_lora(lora_scale=preset.lora_scale)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    pipe.scheduler = getattr(diffusers, preset.scheduler).from_config(pipe.scheduler.config, **preset.scheduler_config)
    kept = sum(isinstance(p, FaceAttnProcessor) for p in pipe.unet.attn_processors.values())
    if kept != face_layers:
        raise RuntimeError(f"{preset.name} changed the face layers ({face_layers} -> {kept})")
    return preset


# ---- random stand-ins in the published layouts (tests, benchmarks: no download) ---------------------------
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def lora_target_modules(unet: torch.nn.Module) -> list[str]:
    """The UNet modules the published SDXL LoRAs adapt: every transformer block's attention and feed-forward
    projections and each transformer's ``proj_in`` / ``proj_out``."""
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.startswith("encoder_hid_proj") or ".processor." in name:
            continue
        if name.endswith(LORA_TARGETS) or (".attentions." in name and name.endswith(("proj_in", "proj_out"))):
            names.append(name)
    return names


def random_lora_state_dict(
    unet: torch.nn.Module, rank: int = 4, alpha: float | None = None, std: float = 0.02, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random LoRA for ``unet`` in the kohya layout the published SDXL few-step LoRAs use
    (``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), so loading it goes
    through diffusers' own kohya conversion. Both factors are non-zero, so it changes the UNet."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in lora_target_modules(unet):
        module = unet.get_submodule(name)
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * std
        state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * std
        state[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    return state


def random_unet_state_dict(unet: torch.nn.Module, std: float = 0.01, seed: int = 0) -> dict[str, torch.Tensor]:
    """A perturbed copy of ``unet``'s base weights in diffusers names (the layout of SDXL-Lightning's
    ``*_unet.safetensors``), without the face adapter's keys."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (v.float() + torch.randn(v.shape, generator=gen) * std).to(v.dtype).contiguous()
        for k, v in unet.state_dict().items()
        if not _adapter_key(k)
    }


def write_stand_in(preset: FewStepPreset, unet: torch.nn.Module, folder: str | Path, seed: int = 0) -> Path:
    """Random weights for ``preset`` under its published file name in ``folder``; returns the file."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make = random_unet_state_dict if preset.kind == "unet" else random_lora_state_dict
    state = make(unet, seed=seed)
    path = folder / preset.weight_name
    save_file(state, str(path))
    return path
