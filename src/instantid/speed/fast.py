"""The fast path: one switch that compiles and tunes an InstantID pipeline without changing its pictures.

:func:`enable_fast_inference` applies, each on its own flag:

* **regional compilation** (``compile``): ``torch.compile`` of the repeated transformer blocks of the UNet
  (diffusers' ``compile_repeated_blocks``) and of IdentityNet / every ControlNet (same blocks, compiled the
  same way since ``ControlNetModel`` declares no ``_repeated_blocks``). Identical blocks share one compiled
  graph, so the first call costs seconds to a minute instead of the minutes a whole-UNet compile takes.
  ``dynamic=False``: shapes are static, which is what inductor and CUDA graphs do best.
* **on-disk compile cache** (``cache_dir``): torch's own FX-graph and AOTAutograd caches (on by default) are
  pointed at ``cache_dir`` through ``TORCHINDUCTOR_CACHE_DIR`` (Triton kernels under ``cache_dir/triton``).
  A second process with the same folder skips inductor's code generation and kernel tuning and only
  re-traces the blocks with dynamo (seconds). The folder is safe to share between processes.
  (torch writes its default, ``/tmp/torchinductor_<user>``, into that variable when inductor is imported, so
  only a value other than the default counts as the user's own choice.)
* **fused QKV** (``fuse_qkv``): the self-attention (``attn1``) projections become one matmul
  (``Attention.fuse_projections`` + ``FusedAttnProcessor2_0``). Cross-attention layers keep their processors,
  so the InstantID face layers (:class:`~instantid.core.attention.FaceAttnProcessor`) stay where they are.
* **channels-last** memory format for the UNet, the ControlNets and the VAE (convolutions run in NHWC).
* **fp16-safe VAE** (``vae_fp16``): swap in a VAE that decodes in fp16 without overflow (e.g.
  ``madebyollin/sdxl-vae-fp16-fix``), so decoding does not upcast the VAE to fp32 every call.
* **VAE tiling** (``vae_tiling``): decode in overlapping tiles above the VAE's native size (1024 px for SDXL);
  needed for large pictures on small cards, and a no-op at or below the native size.

What recompiles (with ``dynamic=False``): a new output size, a new batch size (prompts x images x 2 under
guidance), guidance switched on or off, a new dtype or device, and for the face layers a new number of people,
the face mask switched on or off, and the adapter scale switched between 0 and not 0. The first call of each
new combination pays the compile (or a cache hit). Nothing else does: prompt, negative prompt, seed,
``ip_adapter_scale`` values, ``controlnet_conditioning_scale``, guidance scale value, face embedding,
face-region mask contents and scheduler all reuse the compiled blocks.

The face layers are traced into the compiled blocks (one graph per block shape, no graph break): the pipeline
prepares each call's face keys/values (adapter scale folded into the values) and region weights before the
loop (:func:`instantid.core.attention.prepare_faces`), so a block reads only tensors, and a compiled block finds its
own layer's keys/values by a tensor index. ``compile_face_layers=False`` keeps each face cross-attention eager
(a graph break inside each UNet block), to measure what the break costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

from instantid.core.attention import FaceAttnProcessor
from instantid.errors import IncompatibleWeightsError, InvalidInputError
from instantid.pipelines.sdxl import controlnets
from instantid.speed.compile_cache import use_compile_cache

# Block classes compiled one by one; UNet2DConditionModel declares the same list as ``_repeated_blocks``.
REPEATED_BLOCKS = ("BasicTransformerBlock",)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RECOMPILES_ON = ("output size", "batch size", "guidance on/off", "dtype or device", "number of people",
                 "face mask on/off", "adapter scale 0 <-> not 0")
# dynamo counts recompiles per code object, and every compiled block shares BasicTransformerBlock.forward:
# SDXL needs ~2 token grids x 2 models x mask on/off variants before any size changes.
DEFAULT_RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class FastReport:
    """What :func:`enable_fast_inference` changed."""

    compiled_blocks: dict[str, int] = field(default_factory=dict)  # model name -> compiled blocks
    backend: str | None = None  # torch.compile backend, None when not compiled
    mode: str | None = None  # torch.compile mode
    face_layers_compiled: bool = False  # face cross-attention traced into the compiled blocks (no graph break)
    cache_dir: str | None = None  # TORCHINDUCTOR_CACHE_DIR in effect
    channels_last: bool = False
    fused_qkv_layers: int = 0  # self-attention layers now running one fused projection
    face_layers: int = 0  # InstantID face processors installed after the changes (must not drop)
    vae_fp16: bool = False  # the VAE decodes in fp16 without upcasting
    vae_tiling: bool = False
    quantized: str | None = None  # torchao scheme (lossy, instantid.speed.quantize); None = exact weights
    recompiles_on: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for logs."""
        parts = []
        if self.backend:
            blocks = ", ".join(f"{name} {n}" for name, n in self.compiled_blocks.items())
            parts.append(f"compiled ({self.backend}, {self.mode or 'default'}; blocks: {blocks})")
        if self.cache_dir:
            parts.append(f"cache {self.cache_dir}")
        if self.fused_qkv_layers:
            parts.append(f"fused QKV x{self.fused_qkv_layers}")
        if self.channels_last:
            parts.append("channels-last")
        if self.vae_fp16:
            parts.append("fp16 VAE")
        if self.quantized:
            parts.append(f"quantized {self.quantized} (lossy)")
        if self.vae_tiling:
            parts.append("VAE tiling")
        return "fast path: " + ("; ".join(parts) or "nothing enabled") + f"; face layers kept: {self.face_layers}"


def _models(pipe: Any) -> dict[str, torch.nn.Module]:
    models = {"unet": pipe.unet}
    for i, net in enumerate(controlnets(pipe)):
        models["identitynet" if i == 0 else f"controlnet_{i}"] = net
    return models


def _count_face_layers(pipe: Any) -> int:
    return sum(isinstance(p, FaceAttnProcessor) for p in pipe.unet.attn_processors.values())


def fuse_self_attention(model: torch.nn.Module, *, skip_lora: bool = False) -> int:
    """Fuse q/k/v of every transformer block's self-attention (``attn1``) into one projection; returns how
    many were fused.

    Only ``attn1`` layers running diffusers' stock ``AttnProcessor2_0`` are touched: cross-attention (the face
    layers included), the Resampler's attention (which reads a concatenation, not its input) and any custom
    processor keep what they have. A layer carrying an unfused LoRA is refused (fusing would copy the base
    weight and silently drop the LoRA), or left as it is with ``skip_lora``.
    """
    fused = 0
    for name, module in model.named_modules():
        if not name.endswith("attn1") or not isinstance(module, Attention) or module.is_cross_attention:
            continue
        if type(module.processor) is FusedAttnProcessor2_0:
            continue  # already fused
        if type(module.processor) is not AttnProcessor2_0:
            continue
        if any(hasattr(getattr(module, p), "base_layer") for p in ("to_q", "to_k", "to_v")):  # peft's LoRA wrapper
            if skip_lora:
                continue
            raise InvalidInputError(
                f"{name} carries an unfused LoRA: fuse it first (pipe.fuse_lora(); pipe.unload_lora_weights()) "
                "or pass fuse_qkv=False"
            )
        module.fuse_projections()
        module.set_processor(FusedAttnProcessor2_0())
        fused += 1
    return fused


def _compile_blocks(
    model: torch.nn.Module, backend: str, mode: str | None, compile_face_layers: bool
) -> int:
    """torch.compile each repeated block of ``model`` in place (module names, hooks and processors stay)."""
    options: dict[str, Any] = {"backend": backend, "dynamic": False, "fullgraph": False}
    if mode not in (None, "default"):
        options["mode"] = mode
    blocks = [m for m in model.modules() if type(m).__name__ in REPEATED_BLOCKS]
    for block in blocks:
        attn2 = getattr(block, "attn2", None)
        if not compile_face_layers and attn2 is not None and isinstance(attn2.processor, FaceAttnProcessor):
            # An instance attribute, so the processor (and the adapter's layer numbering) is untouched.
            attn2.forward = torch.compiler.disable(attn2.forward, reason="InstantID face layer runs eagerly")
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**options)  # diffusers' regional compilation (the UNet)
    else:
        for block in blocks:  # ControlNetModel declares no _repeated_blocks: the same thing by hand
            block.compile(**options)
    return len(blocks)


def _load_fp16_vae(pipe: Any, source: str | Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    dtype = torch.float16
    try:
        vae = AutoencoderKL.from_pretrained(str(source), dtype=dtype)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IncompatibleWeightsError(f"cannot load the fp16 VAE {source}: {reason}") from exc
    if vae.config.force_upcast:
        raise IncompatibleWeightsError(
            f"the VAE {source} declares force_upcast=True (not fp16-safe); use an fp16-fixed VAE such as "
            "madebyollin/sdxl-vae-fp16-fix"
        )
    if vae.config.latent_channels != pipe.vae.config.latent_channels:
        raise IncompatibleWeightsError(
            f"the VAE {source} has {vae.config.latent_channels} latent channels, the pipeline's has "
            f"{pipe.vae.config.latent_channels}"
        )
    return vae.to(pipe.unet.device)


def enable_fast_inference(
    pipe: Any,
    *,
    compile: bool | str = False,
    compile_mode: str | None = None,
    compile_face_layers: bool = True,
    cache_dir: str | Path | None = None,
    channels_last: bool = True,
    fuse_qkv: bool | None = None,
    vae_fp16: bool | str | Path = False,
    vae_tiling: bool = False,
    quantize: str | None = None,
    recompile_limit: int = DEFAULT_RECOMPILE_LIMIT,
) -> FastReport:
    """Make ``pipe`` (an InstantID pipeline, or any SDXL ControlNet pipeline) faster, keeping its pictures.

    Call it after the weights are final (face adapter loaded, LoRAs fused, device and dtype set):
    fused projections copy the weights they fuse, and compiled blocks trace the modules they find.

    Args:
        compile: ``True`` for inductor, or a ``torch.compile`` backend name (``"inductor"``, ``"eager"``,
            ``"aot_eager"``, ``"cudagraphs"``); ``False`` runs eagerly.
        compile_mode: ``torch.compile`` mode; ``"reduce-overhead"`` adds CUDA graphs (GPU only),
            ``"max-autotune-no-cudagraphs"`` tunes kernels (longer first call).
        compile_face_layers: trace the face cross-attention into the compiled blocks (no graph break, no
            recompile on a new scale or face); ``False`` keeps it eager.
        cache_dir: folder for torch's on-disk compile caches, reused by later processes.
        channels_last, fuse_qkv: exact levers (same pictures up to float rounding). ``fuse_qkv=None`` fuses
            every self-attention layer that carries no unfused LoRA; ``True`` refuses such a LoRA
            (fuse it first: ``pipe.fuse_lora(); pipe.unload_lora_weights()``).
        vae_fp16: a path or Hub id of an fp16-safe VAE to swap in, or ``True`` when the pipeline's VAE already
            declares ``force_upcast=False``; the VAE is then kept in fp16.
        vae_tiling: decode pictures larger than the VAE's native size in tiles (changes their pixels slightly).
        quantize: lossy and off by default: a scheme of :data:`instantid.speed.quantize.SCHEMES` (``fp8`` on sm89+
            GPUs, ``fp8-weights``, ``int8``, ``int8-weights``) for the UNet's and ControlNets' linear layers
            (torchao); applied after fusing and before compiling.
        recompile_limit: dynamo's per-function recompile limit, raised because all blocks share one forward.
    """
    face_before = _count_face_layers(pipe)
    models = _models(pipe)
    report: dict[str, Any] = {}

    # 1. The VAE: fp16 without upcast, tiling for large pictures.
    if vae_fp16 is not False:
        if vae_fp16 is True:
            if pipe.vae.config.force_upcast:
                raise InvalidInputError(
                    "this VAE upcasts to fp32 to avoid fp16 overflow (force_upcast=True): pass vae_fp16 the path "
                    "or Hub id of an fp16-safe VAE, e.g. madebyollin/sdxl-vae-fp16-fix"
                )
            pipe.vae.to(torch.float16)
        else:
            pipe.register_modules(vae=_load_fp16_vae(pipe, vae_fp16))
        report["vae_fp16"] = True
    if vae_tiling:
        pipe.vae.enable_tiling()
        report["vae_tiling"] = True

    # 2. Exact kernel levers.
    if fuse_qkv is not False:
        report["fused_qkv_layers"] = sum(fuse_self_attention(m, skip_lora=fuse_qkv is None) for m in models.values())
    if channels_last:
        for module in (*models.values(), pipe.vae):
            module.to(memory_format=torch.channels_last)
        report["channels_last"] = True

    # 3. Lossy, opt-in: quantized linear layers (after fusing, which copies weights; before compiling).
    if quantize is not None:
        from instantid.speed.quantize import quantize_pipeline

        report["quantized"] = quantize_pipeline(pipe, quantize).scheme

    # 4. Regional compilation with an on-disk cache.
    if compile:
        backend = "inductor" if compile is True else str(compile)
        if compile_mode not in COMPILE_MODES:
            raise InvalidInputError(f"compile_mode must be one of {COMPILE_MODES[1:]}, got {compile_mode!r}")
        if cache_dir is not None:
            report["cache_dir"] = use_compile_cache(cache_dir)
        if backend == "inductor":
            import torch._inductor.config as inductor_config

            # 1x1 convolutions as matmuls: the SDXL setting diffusers recommends; exact up to rounding.
            inductor_config.conv_1x1_as_mm = True
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
        report["compiled_blocks"] = {
            name: _compile_blocks(model, backend, compile_mode, compile_face_layers) for name, model in models.items()
        }
        report.update(backend=backend, mode=compile_mode, face_layers_compiled=compile_face_layers,
                      recompiles_on=RECOMPILES_ON)

    face_after = _count_face_layers(pipe)
    if face_after != face_before:  # a lever must never drop the identity branch
        raise RuntimeError(f"the fast path changed the face layers ({face_before} -> {face_after})")
    return FastReport(face_layers=face_after, **report)
