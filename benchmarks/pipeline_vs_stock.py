"""Our InstantID pipeline against diffusers' stock SDXL ControlNet pipeline, on the same weights.

Both pipelines are loaded from one folder in the published layout (default: the tiny random-weight
release, built on the fly), run alternately with the same seed, size and steps, and timed per denoising
step (via ``callback_on_step_end``) and end to end. The stock pipeline has no face adapter, so the ratio is
the price of InstantID's identity branch (Resampler + decoupled attention + face tokens to IdentityNet).

    python benchmarks/pipeline_vs_stock.py                      # tiny, CPU
    python benchmarks/pipeline_vs_stock.py --device cuda --dtype fp16 --models DIR --size 1024 --steps 30

Prints a table and writes JSON (``--out``, default ``benchmarks/results/pipeline_vs_stock.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
from PIL import Image

from instantid import StableDiffusionXLInstantIDPipeline, draw_kps
from instantid.tiny import build_tiny_instantid

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class PeakMemory:
    """Peak memory of one run: CUDA allocator peak on GPU; on CPU, the sampled process RSS above its level at the
    start of the run (so the weights of both pipelines, loaded before, are not counted)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._start = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(0, self.peak - self._start)


def load(models: Path, device: str, dtype: torch.dtype):
    controlnet = ControlNetModel.from_pretrained(models / "ControlNetModel", torch_dtype=dtype)
    ours = StableDiffusionXLInstantIDPipeline.from_pretrained(models / "base", controlnet=controlnet, torch_dtype=dtype)
    ours.load_ip_adapter_instantid(models / "ip-adapter.bin")
    controlnet = ControlNetModel.from_pretrained(models / "ControlNetModel", torch_dtype=dtype)
    stock = StableDiffusionXLControlNetPipeline.from_pretrained(
        models / "base", controlnet=controlnet, torch_dtype=dtype
    )
    for pipe in (ours, stock):
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    return ours, stock


def timed_run(pipe, kwargs: dict, device: str) -> dict:
    stamps: list[float] = []

    def on_step(p, i, t, tensors):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return tensors

    with PeakMemory(device) as mem:
        start = time.perf_counter()
        pipe(**kwargs, callback_on_step_end=on_step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - start
    steps = np.diff([start, *stamps])[1:]  # drop step 0: it also pays for prompt encoding
    return {"total_s": total, "step_s": float(np.median(steps)) if len(steps) else float("nan"), "peak_bytes": mem.peak}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="base/, ControlNetModel/, ip-adapter.bin folder (default: tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_vs_stock.json")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")]
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or build_tiny_instantid(Path(tmp) / "tiny")
        ours, stock = load(models, args.device, dtype)
        embed_dim = ours.adapter_spec.embedding_dim
    s = args.size
    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]])
    kps = draw_kps(Image.new("RGB", (s, s)), face * s)
    common = dict(prompt="a portrait of a person", negative_prompt="blurry", image=kps, num_inference_steps=args.steps,
                  guidance_scale=5.0, controlnet_conditioning_scale=0.8, output_type="latent")
    emb = np.random.default_rng(0).normal(size=embed_dim).astype(np.float32)
    runs = {
        "instantid": (ours, {**common, "image_embeds": emb, "ip_adapter_scale": 0.8}),
        "diffusers_controlnet": (stock, common),
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for pipe, kwargs in runs.values():  # warm-up
        timed_run(pipe, {**kwargs, "num_inference_steps": 2}, args.device)
    for _ in range(args.repeats):  # alternate so drift hits both alike
        for name, (pipe, kwargs) in runs.items():
            kwargs = {**kwargs, "generator": torch.Generator("cpu").manual_seed(0)}
            results[name].append(timed_run(pipe, kwargs, args.device))
    summary = {
        name: {
            "step_s": statistics.median(r["step_s"] for r in rows),
            "total_s": statistics.median(r["total_s"] for r in rows),
            "peak_mib": max(r["peak_bytes"] for r in rows) / 2**20,
        }
        for name, rows in results.items()
    }
    ratio = {k: summary["instantid"][k] / summary["diffusers_controlnet"][k] for k in ("step_s", "total_s", "peak_mib")}
    report = {
        "config": {**vars(args), "models": str(args.models or "tiny"), "out": str(args.out), "dtype": str(dtype)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "runs": results, "summary": summary, "ratio_instantid_over_stock": ratio,
    }
    print(f"{'pipeline':<22}{'step (ms)':>12}{'total (s)':>12}{'peak (MiB)':>12}")
    for name, row in summary.items():
        print(f"{name:<22}{row['step_s'] * 1e3:>12.1f}{row['total_s']:>12.3f}{row['peak_mib']:>12.0f}")
    print(f"{'ratio ours/stock':<22}{ratio['step_s']:>12.3f}{ratio['total_s']:>12.3f}{ratio['peak_mib']:>12.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
