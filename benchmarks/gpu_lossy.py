"""Section 6 of ``gpu_speed.py``: the lossy levers, each alone, against the exact pipeline in the same process.

* IdentityNet's residuals reused between steps (``controlnet_cache_interval`` 2 and 3; :mod:`instantid.core.denoise`);
* torchao quantization of the UNet's and IdentityNet's linear layers (:mod:`instantid.speed.quantize`): ``fp8`` (fp8
  weights and activations, GPUs of compute capability 8.9+), ``fp8-weights``, ``int8``, each eager against
  eager, and one scheme (``--compiled-scheme``, fp8 by default) under compilation against the compiled exact
  pipeline, which is where fp8 pays.

Each lever is timed interleaved with its baseline (best and median of the rounds; on a CPU this thread's CPU
time, robust on a shared machine) and reports how far its final latents move from the exact eager latents (max
and mean absolute difference), next to the identity effect: how far the latents move when the face changes.
A scheme this machine cannot build or run is listed with the reason, and the other levers still run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch

from instantid.errors import InvalidInputError
from instantid.speed.fast import enable_fast_inference, fuse_self_attention

CACHE_INTERVALS = (2, 3)  # IdentityNet every N-th step
QUANTIZE_SCHEMES = ("fp8", "fp8-weights", "int8")  # torchao, eager


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def prepare_quantized(bench: Any, schemes: tuple[str, ...], compiled: str | None) -> dict[str, str]:
    """Put a quantized copy of UNet + IdentityNet per scheme in ``bench.quantized`` (and the ``compiled`` scheme
    under compilation: fused QKV, channels-last, compiled, as gpu_speed's exact ``compiled`` variant); returns
    the schemes skipped, with why. Quantizing is one-way, so the exact modules stay as they are; the copies are
    made of the eager modules (no fused processor, no compiled block: a copied compiled block would still call
    the original's forward)."""
    from instantid.speed.quantize import check_scheme, quantize_pipeline, torchao_config

    bench.variant("eager")
    skipped = {}
    todo = [(scheme, scheme, False) for scheme in schemes]
    if compiled:
        todo.append((f"{compiled}_compiled", compiled, True))
    for name, scheme, compile_it in todo:
        try:
            check_scheme(scheme, bench.args.device)
            torchao_config(scheme)
        except InvalidInputError as exc:
            skipped[name] = str(exc)
            continue
        copies = copy.deepcopy(bench.exact_modules[0]), copy.deepcopy(bench.exact_modules[1])
        bench.use_modules(*copies)
        try:
            if compile_it:
                for model in copies:
                    fuse_self_attention(model)
                    model.to(memory_format=torch.channels_last)
            quantize_pipeline(bench.ours, scheme)
            if compile_it:
                enable_fast_inference(bench.ours, compile=bench.args.backend, compile_mode=bench.args.mode,
                                      fuse_qkv=False, channels_last=False)
            bench.quantized[name] = copies
        except Exception as exc:  # one failing scheme must not cost the device call the others
            skipped[name] = _reason(exc)
        finally:
            bench.use_modules(*bench.exact_modules)
    return skipped


def latent_distance(latents: torch.Tensor, exact: torch.Tensor) -> dict:
    diff = (latents - exact).abs()
    return {"latent_max_diff": diff.max().item(), "latent_mean_diff": diff.mean().item()}


def lossy(bench: Any, args: argparse.Namespace, skip: set[str], summarise: Callable[[list[dict]], dict]) -> dict:
    """Each lossy lever alone, interleaved round by round with its exact baseline; ``summarise`` turns one
    variant's runs into gpu_speed's row (best, median, step times, peak memory)."""
    compiled = None if "lossy_compiled" in skip else args.compiled_scheme
    skipped = prepare_quantized(bench, QUANTIZE_SCHEMES, compiled)
    names = ["eager", *(f"identitynet_cache_{k}" for k in CACHE_INTERVALS),
             *(f"quantize_{s}" for s in QUANTIZE_SCHEMES if s in bench.quantized)]
    if f"{compiled}_compiled" in bench.quantized:
        names += ["compiled", f"quantize_{compiled}_compiled"]
    for name in list(names):  # warm-up (compiles, allocator); a lever that fails is reported, the rest go on
        try:
            bench.run(*bench.variant(name))
        except Exception as exc:
            if name in ("eager", "compiled"):
                raise
            names.remove(name)
            skipped[name] = _reason(exc)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            rows[name].append(bench.run(*bench.variant(name)))
    pipe, kwargs = bench.variant("eager")
    exact = rows["eager"][0]["latents"]
    other = bench.run(pipe, {**kwargs, "image_embeds": bench.faces[1]})["latents"]
    time_key = "total_s" if args.device.startswith("cuda") else "cpu_s"  # see gpu_speed's Bench.run
    levers = {}
    for name, runs in rows.items():
        base = "compiled" if name.endswith("compiled") else "eager"
        row = summarise(runs) | latent_distance(runs[0]["latents"], exact)
        row |= {"baseline": base, "speedup_of": time_key, "speedup": statistics.median(r[time_key] for r in rows[base])
                / statistics.median(r[time_key] for r in runs)}
        levers[name] = row
    bench.quantized.clear()  # free the copies
    return {"levers": levers, "skipped": skipped, "identity_effect": latent_distance(other, exact)}


def lossy_table(section: dict) -> list[str]:
    """The section's lines of gpu_speed's table."""
    lines = [f"{'lossy lever, alone':<28}{'best (s)':>10}{'median (s)':>11}{'CPU (s)':>9}{'step mean (ms)':>15}"
             f"{'speedup':>9}{'vs':>10}{'latent max':>12}{'latent mean':>13}"]
    for name, row in section["levers"].items():
        lines.append(f"{name:<28}{row['best_s']:>10.3f}{row['median_s']:>11.3f}{row['cpu_median_s']:>9.3f}"
                     f"{row['step_mean_s'] * 1e3:>15.2f}{row['speedup']:>9.2f}{row['baseline']:>10}"
                     f"{row['latent_max_diff']:>12.2e}{row['latent_mean_diff']:>13.2e}")
    rows = list(section["levers"].values())
    if rows:
        lines.append(f"speedup: the baseline's median {rows[0]['speedup_of']} over the lever's (CPU time on a CPU)")
    effect = section["identity_effect"]
    lines.append(f"identity effect (another face, eager): latent max {effect['latent_max_diff']:.2e}, "
                 f"mean {effect['latent_mean_diff']:.2e}")
    lines += [f"skipped {name}: {why}" for name, why in section["skipped"].items()]
    return lines
