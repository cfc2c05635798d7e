"""Lossy lever, off by default: quantize the UNet's and the ControlNets' linear layers with torchao.

Pictures change (a little): this is a speed and memory lever, not one of the exact levers of
:mod:`instantid.speed.fast`. ``benchmarks/gpu_speed.py`` reports each scheme's speed next to how far its latents move
from the exact pipeline, beside the identity effect (the latent change from another face).

Schemes (``SCHEMES``), each a torchao config applied with ``torchao.quantization.quantize_``:

* ``fp8``: fp8 (e4m3) weights and activations, a scale per row; the matmuls run in fp8 on the tensor cores.
  Needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell) and pays with ``torch.compile``
  (which fuses the activation quantization into the neighbouring kernels); bf16 is torchao's tested dtype;
* ``fp8-weights``: fp8 weights, computed in the model's dtype: half the linear weights' memory, no faster;
* ``int8``: int8 weights and dynamically quantized int8 activations (runs on CPUs too);
* ``int8-weights``: int8 weights only: memory, runs anywhere.

What stays exact: the identity branch's own layers (the face processors' ``to_k_ip``/``to_v_ip`` and the
Resampler run once per call thanks to the per-call K/V cache, so quantizing them saves nothing and would only
blur the identity), the time and size embeddings (small and sensitive), every convolution (torchao quantizes
linear layers), the text encoders and the VAE (once per call). Layers whose sizes are not multiples of 16 (fp8
kernels need it) are left as they are.

Call it after the weights are final (adapter loaded, LoRAs fused, QKV fused, device and dtype set) and before
compiling: quantized weights cannot be fused or unfused afterwards. Importing this module is cheap (no torch):
the settings read :data:`SCHEMES` from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from instantid.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# Our name -> (torchao config class, what it does, needs an fp8-capable GPU).
SCHEMES: dict[str, tuple[str, str, bool]] = {
    "fp8": ("Float8DynamicActivationFloat8WeightConfig", "fp8 weights and activations (GPU, sm89+)", True),
    "fp8-weights": ("Float8WeightOnlyConfig", "fp8 weights, compute in the model dtype (memory)", False),
    "int8": ("Int8DynamicActivationInt8WeightConfig", "int8 weights and activations", False),
    "int8-weights": ("Int8WeightOnlyConfig", "int8 weights, compute in the model dtype (memory)", False),
}
MIN_FP8_CAPABILITY = (8, 9)
# Module names (dot-separated parts) never quantized: see the module docstring.
KEEP_EXACT = ("processor", "encoder_hid_proj", "time_embedding", "add_embedding", "time_embed", "add_time_proj")
INSTALL_HINT = "pip install 'instantid[quantize]' (or pip install torchao)"


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_pipeline` changed."""

    scheme: str
    layers: dict[str, int] = field(default_factory=dict)  # model name -> linear layers quantized
    kept: dict[str, int] = field(default_factory=dict)  # model name -> linear layers left exact
    face_layers: int = 0  # InstantID face processors after the change (must not drop)

    def summary(self) -> str:
        done = ", ".join(f"{name} {n}" for name, n in self.layers.items())
        return f"quantized ({self.scheme}, lossy): linear layers {done}; face layers kept: {self.face_layers}"


def check_scheme(scheme: str, device: torch.device | str) -> None:
    """Refuse a scheme name we do not know, or fp8 compute where there is no fp8-capable GPU (one line each)."""
    import torch

    if scheme not in SCHEMES:
        raise InvalidInputError(f"quantize must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    device = torch.device(device)
    if SCHEMES[scheme][2]:
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < MIN_FP8_CAPABILITY:
            where = f"compute capability {capability[0]}.{capability[1]}" if capability else device.type
            raise InvalidInputError(
                f"quantize {scheme} needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper), this is {where}; "
                "use fp8-weights, int8 or int8-weights"
            )


@contextmanager
def _quiet_import() -> Any:
    """torchao logs its optional CUDA extensions it cannot load on this machine, and torch warns about its
    enum registrations, when it is first imported: chatter for our users, not errors."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def require_torchao(scheme: str) -> None:
    """One line when torchao is not installed, found without importing it (its import is slow and chatty)."""
    from importlib.util import find_spec

    if find_spec("torchao") is None:
        raise InvalidInputError(f"quantize {scheme} needs torchao: {INSTALL_HINT}")


def torchao_config(scheme: str) -> Any:
    """The torchao config object of ``scheme``; a one-line error when torchao is not installed."""
    try:
        with _quiet_import():
            import torchao.quantization as torchao_quantization
    except ImportError:
        raise InvalidInputError(f"quantize {scheme} needs torchao: {INSTALL_HINT}") from None
    name = SCHEMES[scheme][0]
    config = getattr(torchao_quantization, name, None)
    if config is None:
        raise InvalidInputError(f"this torchao ({_torchao_version()}) has no {name}: pip install -U torchao")
    return config()


def _torchao_version() -> str:
    from importlib.metadata import version

    return version("torchao")


def quantizable(fqn: str, module: torch.nn.Module) -> bool:
    """Whether the linear layer ``fqn`` of a UNet or ControlNet is quantized (see the module docstring)."""
    import torch

    if not isinstance(module, torch.nn.Linear) or type(module.weight) is not torch.nn.Parameter:
        return False  # not a linear layer, or already quantized (a torchao tensor subclass)
    if set(fqn.split(".")) & set(KEEP_EXACT):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def _linear_layers(model: torch.nn.Module, keep: Callable[[str, torch.nn.Module], bool]) -> int:
    import torch

    return sum(keep(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))


def _face_layers(pipe: Any) -> int:
    from instantid.core.attention import FaceAttnProcessor

    return sum(isinstance(p, FaceAttnProcessor) for p in pipe.unet.attn_processors.values())


def quantize_pipeline(pipe: Any, scheme: str) -> QuantizeReport:
    """Quantize, in place, the linear layers of ``pipe``'s UNet and ControlNets (IdentityNet first) with
    ``scheme`` (a key of :data:`SCHEMES`). Lossy: see the module docstring for what stays exact."""
    from instantid.pipelines.sdxl import controlnets

    # Under CPU offload the weights wait on the CPU; the device that will run them is the execution device.
    check_scheme(scheme, getattr(pipe, "_execution_device", None) or pipe.unet.device)
    config = torchao_config(scheme)
    from torchao.quantization import quantize_

    models = {"unet": pipe.unet}
    models.update({"identitynet" if i == 0 else f"controlnet_{i}": net for i, net in enumerate(controlnets(pipe))})
    face_before = _face_layers(pipe)
    layers: dict[str, int] = {}
    kept: dict[str, int] = {}
    for name, model in models.items():
        layers[name] = _linear_layers(model, quantizable)
        kept[name] = _linear_layers(model, lambda fqn, m: not quantizable(fqn, m))
        # torchao hands filter_fn (module, fqn); the face processors are submodules of their attention layers.
        quantize_(model, config, filter_fn=lambda module, fqn: quantizable(fqn, module))
    face_after = _face_layers(pipe)
    if face_after != face_before:  # a lever must never drop the identity branch
        raise RuntimeError(f"quantization changed the face layers ({face_before} -> {face_after})")
    return QuantizeReport(scheme=scheme, layers=layers, kept=kept, face_layers=face_after)
