"""Loading the diffusion side of InstantID: SDXL base + IdentityNet + face adapter, device, dtype, sampler, LoRA.

:func:`load_pipeline` turns model references (paths or Hub ids, see :mod:`instantid.io.models`) into a ready
:class:`~instantid.pipelines.sdxl.StableDiffusionXLInstantIDPipeline`; every failure is a typed one-line error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from instantid.errors import InstantIDError, InvalidInputError, MissingWeightsError, WeightsError
from instantid.io.devices import DEVICES, torch_dtype
from instantid.pipelines.schedulers import set_scheduler

DEVICE_CHOICES = "cuda, cuda:N, mps or cpu"


def pick_device(device: str | None, label: str = "device") -> str:
    """The device to run on: the one asked for (checked: known and present), else cuda, else mps, else cpu.

    ``label`` is how the caller's user spells the option (``--device`` on the command line).
    """
    if device:
        return _check_device(device.strip().lower(), label)
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_device(device: str, label: str) -> str:
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise InvalidInputError(f"{label} {device!r} is not a device; choose {DEVICE_CHOICES}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"{label} {device}: CUDA is not available here (this torch is "
                                    f"{torch.__version__}); use {label} cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise InvalidInputError(f"{label} {device}: there are {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise InvalidInputError(f"{label} mps: Apple's MPS is not available here; use {label} cpu")
    return device


def pick_dtype(dtype: str | None, device: str, label: str = "dtype") -> torch.dtype:
    """The dtype asked for, else fp16 on a GPU and fp32 on the CPU. fp16 on the CPU is refused rather than run:
    many CPU kernels lack it or upcast, so it would be slower than fp32 for no saving."""
    gpu = device.split(":")[0] in ("cuda", "mps")
    if dtype is None:
        return torch.float16 if gpu else torch.float32
    if dtype == "fp16" and not gpu:
        raise InvalidInputError(f"{label} fp16 needs a GPU (cuda or mps) and this runs on the CPU: use {label} fp32 "
                                f"(the CPU default) or {label} bf16")
    return torch_dtype(dtype)


def load_pipeline(
    base_path: Path, identitynet_path: Path, adapter_path: Path, *, dtype: torch.dtype,
) -> Any:
    """Base + IdentityNet + face adapter as one pipeline, on the CPU in ``dtype``.

    A file that is corrupt, truncated or not a plain weights file is a :class:`WeightsError` naming it.
    """
    from diffusers import ControlNetModel

    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    with _reading("IdentityNet", identitynet_path):
        controlnet = ControlNetModel.from_pretrained(identitynet_path, dtype=dtype)
    with _reading("base model", base_path):
        if base_path.is_file():
            pipe = StableDiffusionXLInstantIDPipeline.from_single_file(base_path, controlnet=controlnet, dtype=dtype)
        else:
            pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(base_path, controlnet=controlnet, dtype=dtype)
    with _reading("face adapter", adapter_path):
        pipe.load_ip_adapter_instantid(adapter_path)
    return pipe


def load_controlnet(kind: str, ref: str | None, *, dtype: torch.dtype) -> Any:
    """One of the published demo's extra ControlNets (``kind``: pose, canny, depth), on the CPU in ``dtype``."""
    from diffusers import ControlNetModel

    from instantid.io.models import resolve_controlnet

    path = resolve_controlnet(kind, ref)
    with _reading(f"{kind} ControlNet", path):
        return ControlNetModel.from_pretrained(path, dtype=dtype)


def load_mapper(kind: str, ref: str | None) -> Any:
    """What makes ``kind``'s control map (:func:`instantid.core.control_maps.mapper`; canny loads nothing)."""
    from instantid.core.control_maps import mapper
    from instantid.io.models import resolve_mapper

    if kind == "canny":
        return mapper(kind, None)
    path = resolve_mapper(kind, ref)
    with _reading(f"{kind} map model", path):
        return mapper(kind, path)
def load_style_adapter(pipe: Any, ref: str) -> None:
    """Load the style adapter for style images (InstantStyle) with its image encoder: a folder (h94's
    ``sdxl_models``), an ``ip-adapter_sdxl`` file with ``image_encoder/`` beside it, or a Hub id."""
    from instantid.io.models import resolve_style_adapter

    weights, encoder = resolve_style_adapter(ref)
    with _reading("style adapter", ref):
        pipe.load_style_adapter(weights, encoder)


def load_lora(pipe: Any, ref: str, scale: float = 1.0) -> None:
    """Load a LoRA (file, folder or Hub id), e.g. LCM-LoRA; a name containing 'lcm' also selects the LCM
    scheduler, which few-step LCM generation needs."""
    path = check_lora(ref)
    with _reading("LoRA", ref):
        pipe.load_lora_weights(str(path) if path.exists() else ref, adapter_name="user")
    pipe.set_adapters(["user"], adapter_weights=[scale])
    if "lcm" in str(ref).lower():
        set_scheduler(pipe, "lcm")


@contextmanager
def _reading(kind: str, ref: str | Path) -> Iterator[None]:
    """Turn a library's loading failure into one line naming ``kind`` and ``ref``; our own errors pass through."""
    try:
        yield
    except InstantIDError as exc:
        if _UNSAFE_ADVICE.search(str(exc)):
            raise type(exc)(f"{kind} {ref}: {NOT_PLAIN_WEIGHTS}") from None
        raise
    except Exception as exc:  # the libraries raise builtins and their own types (SafetensorError, HTTP errors...)
        raise WeightsError(f"cannot load {kind} {ref}: {load_failure_reason(exc)}") from exc


NOT_PLAIN_WEIGHTS = ("not a plain weights file (it asks to run pickled code, which is never done); "
                     "use the published .safetensors / .bin files")
def check_lora(ref: str, label: str = "LoRA") -> Path:
    """A LoRA reference that is neither an existing file/folder nor a Hub id (``owner/name``) is refused now,
    before any loading; ``label`` names the option as the user typed it."""
    path = Path(ref).expanduser()
    if not path.exists() and (ref.count("/") != 1 or ref.startswith((".", "/", "~")) or path.suffix):
        raise MissingWeightsError(f"{label} '{ref}' not found: no such file or folder, and not a Hub id (owner/name)")
    return path


# PyTorch's weights_only refusal goes on to advise unsafe loading: that advice is never passed on.
_UNSAFE_ADVICE = re.compile(r"weights_only|Weights only load failed|Unsupported global", re.IGNORECASE)


def load_failure_reason(exc: BaseException) -> str:
    """One short line saying why a file did not load, without the libraries' tracebacks or unsafe advice."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 8:
            break
    texts = [str(e).strip() for e in chain]
    if any(isinstance(e, pickle.UnpicklingError) for e in chain) or any(_UNSAFE_ADVICE.search(t) for t in texts):
        return NOT_PLAIN_WEIGHTS
    text = texts[0]
    network = ("LocalEntryNotFound", "Connect", "Timeout", "Offline")
    if any("offline" in t.lower() or "connect" in t.lower() for t in texts) or any(
            word in type(e).__name__ for e in chain for word in network):
        return "not in the Hugging Face cache and not downloadable now"
    if any(isinstance(e, json.JSONDecodeError) for e in chain) or ("config" in text.lower() and "json" in text.lower()):
        return "its config.json is not valid JSON"
    unreadable = re.search(r"Unable to load weights from checkpoint file for '([^']+)'", text)
    if unreadable:
        return f"{Path(unreadable.group(1)).name} is corrupt or not a weights file"
    first = text.splitlines()[0] if text else type(exc).__name__
    if any(word in first.lower() for word in ("header", "deserializ", "invalid load key", "truncat")):
        return f"the weights file is corrupt or not a weights file ({first[:120]})"
    return first[:200]


# ---- A1111-style model name and hash, for the images' metadata --------------------------------------------
HASH_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "instantid" / "model-hashes.json"
_UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def describe_checkpoint(ref: str, path: Path) -> tuple[str, str | None]:
    """The base model's name and short hash as A1111 writes them (``Model``, ``Model hash``).

    A single-file checkpoint: its file name and the first 10 hex digits of its SHA-256 (what A1111 and image
    sites compute). A diffusers folder has no one file, so the hash is that of its UNet weights file: stable
    for a given release, but not the hash of the single-file checkpoint sites may know. The name is the Hub id
    or the folder's name, never a full path. Hashes are cached by path, size and modification time.
    """
    if path.is_file():
        name, target = path.stem, path
    else:
        name = ref if not Path(ref).expanduser().exists() else path.name
        target = next((path / "unet" / f for f in _UNET_WEIGHTS if (path / "unet" / f).is_file()), None)
    try:
        return name, (file_hash(target)[:10] if target is not None else None)
    except OSError:  # the weights loaded, so this is a race with the file changing: leave the hash out
        return name, None


def file_hash(path: Path) -> str:
    """SHA-256 of a file (hex), read from :data:`HASH_CACHE` when the file has not changed since."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _read_hash_cache()
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            digest.update(block)
    # One entry per file: an older version's hash is dropped.
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
    cache[key] = digest.hexdigest()
    try:
        from instantid.io.outputs import write_bytes_atomically

        write_bytes_atomically(HASH_CACHE, json.dumps(cache, indent=1).encode())
    except OSError:
        pass  # a read-only cache folder only costs the hash next time
    return cache[key]


def _read_hash_cache() -> dict[str, str]:
    try:
        data = json.loads(HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- library chatter --------------------------------------------------------------------------------------
@contextmanager
def library_chatter(verbose: bool = False) -> Iterator[None]:
    """Silence diffusers/transformers/huggingface_hub loading bars, info logs and deprecation warnings while
    loading (``verbose`` keeps them): a user sees our one-line progress and errors, not the libraries'."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    before = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    if verbose:  # the CLI keeps the libraries at "error" by default; show their warnings as asked
        for lib in libraries:
            lib.set_verbosity_warning()
        try:
            yield
        finally:
            for lib, (level, _) in zip(libraries, before, strict=True):
                lib.set_verbosity(level)
        return
    hub_bars = not hub_utils.are_progress_bars_disabled()
    # huggingface_hub logs each failed request (e.g. offline) at warning level before our one-line error.
    hub_logger = logging.getLogger("huggingface_hub")
    hub_level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        hub_logger.setLevel(hub_level)
        for lib, (level, bars) in zip(libraries, before, strict=True):
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()
        if hub_bars:
            hub_utils.enable_progress_bars()
