"""Our InstantID pipeline against diffusers' stock SDXL ControlNet pipeline, on the same weights.

Both pipelines are loaded from one folder in the published layout (default: the tiny random-weight
release, built on the fly), run alternately with the same seed, size and steps, and timed per denoising
step (via ``callback_on_step_end``) and end to end. The stock pipeline has no face adapter, so the ratio is
the price of InstantID's identity branch (Resampler + decoupled attention + face tokens to IdentityNet).
``--compile inductor`` compiles the transformer blocks both pipelines share, face layers traced (the warm-up
calls pay the compiles).

    python benchmarks/pipeline_vs_stock.py                      # tiny, CPU
    python benchmarks/pipeline_vs_stock.py --device cuda --full-size --size 1024 --steps 20 --profile

``--full-size`` uses random weights at the official SDXL sizes (built on the device, no download; see
``speed.py``), shared by both pipelines: the face layers are switched in and out between runs. Runs are
interleaved (stock, ours, ours with the face-region mask, repeated) so clock and thermal drift hit all alike.
On CPU the table also gives each step's CPU time (one torch thread does all the work, and CPU time leaves out
what other processes take on a shared machine): read that ratio there. ``paired`` is the median over rounds of
each round's own ratio (ours / the stock run just before it): on a loaded machine the load changes between
rounds far more than within one, so this is the steadiest number; many short rounds (``--repeats 30 --steps 4``)
beat a few long ones. ``--profile`` adds the top CUDA/CPU
operators of a short run of each, to see where a difference comes from.

Prints a table and writes JSON (``--out``, default ``benchmarks/results/pipeline_vs_stock.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
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
from instantid.io.devices import DTYPE_NAMES, torch_dtype
from instantid.io.tiny import build_tiny_instantid


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


class FaceLayers:
    """Switch one UNet between the stock layers and InstantID's face layers, so both pipelines share every
    weight (two full-size SDXL UNets would not fit beside each other on many GPUs)."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.face = (dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)

    def stock(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet.encoder_hid_proj = None  # first: the Resampler has attention layers of its own
        self.unet.config.encoder_hid_dim_type = None
        self.unet.set_attn_processor(AttnProcessor2_0())

    def instantid(self) -> None:
        processors, proj, kind = self.face
        self.unet.encoder_hid_proj = proj
        self.unet.config.encoder_hid_dim_type = kind
        self.unet.set_attn_processor(dict(processors))  # diffusers empties the dict it is given


def load(args: argparse.Namespace, dtype: torch.dtype, tmp: Path):
    """Both pipelines on one set of components; returns (ours, stock, face-layer switch)."""
    if args.full_size:
        sys.path.insert(0, str(Path(__file__).parent))
        from speed import build_components  # the full-size random SDXL builder

        from instantid.core.adapter import random_adapter_state_dict

        parts = build_components(argparse.Namespace(full_size=True), torch.device(args.device), dtype, tmp)
        state = random_adapter_state_dict(parts["unet"], width=1280, depth=4, num_queries=16, embedding_dim=512)
        torch.save(state, tmp / "ip-adapter.bin")
        adapter = tmp / "ip-adapter.bin"
    else:
        models = args.models or build_tiny_instantid(tmp / "tiny")
        base = StableDiffusionXLControlNetPipeline.from_pretrained(
            models / "base", controlnet=ControlNetModel.from_pretrained(models / "ControlNetModel"), dtype=dtype
        )
        parts = dict(base.components)
        parts.pop("feature_extractor", None), parts.pop("image_encoder", None)
        adapter = models / "ip-adapter.bin"
    stock = StableDiffusionXLControlNetPipeline(**{k: v for k, v in parts.items() if k != "add_watermarker"},
                                                add_watermarker=False)
    ours = StableDiffusionXLInstantIDPipeline(**{k: v for k, v in parts.items() if k != "add_watermarker"},
                                              add_watermarker=False)
    ours.load_ip_adapter_instantid(adapter)
    for pipe in (ours, stock):
        pipe.to(args.device, dtype)
        pipe.set_progress_bar_config(disable=True)
    return ours, stock, FaceLayers(ours.unet)


def timed_run(pipe, kwargs: dict, device: str) -> dict:
    """Per-step times from CUDA events (or wall clock on CPU) at each step end, end-to-end wall time, peak memory.

    On CPU also the thread's CPU time per step: with one torch thread all the work runs on this thread, and CPU
    time does not count the time the OS gives to other processes, so it holds on a shared machine where wall
    clock does not.
    """
    marks: list = []
    cpu_marks: list[float] = []

    def on_step(p, i, t, tensors):
        if device.startswith("cuda"):
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        else:
            marks.append(time.perf_counter())
            cpu_marks.append(time.thread_time())
        return tensors

    with PeakMemory(device) as mem:
        start, cpu_start = time.perf_counter(), time.thread_time()
        pipe(**kwargs, callback_on_step_end=on_step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total, cpu_total = time.perf_counter() - start, time.thread_time() - cpu_start
    row = {"total_s": total, "peak_bytes": mem.peak}
    if device.startswith("cuda"):
        steps = [a.elapsed_time(b) / 1e3 for a, b in zip(marks[:-1], marks[1:], strict=True)]
    else:
        steps = list(np.diff(marks))  # step 0 also pays for prompt encoding: left out
        cpu_steps = list(np.diff(cpu_marks))
        row |= {"step_cpu_s": float(np.median(cpu_steps)) if cpu_steps else float("nan"), "total_cpu_s": cpu_total}
    return row | {"step_s": float(np.median(steps)) if steps else float("nan")}


def profile_run(pipe, kwargs: dict, device: str, rows: int = 12) -> list[dict]:
    """Top operators of a 3-step run by device time (CPU time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        pipe(**{**kwargs, "num_inference_steps": 3})
    key = "device_time_total" if device.startswith("cuda") else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:rows]
    return [
        {"op": e.key, "calls": e.count, "device_ms": getattr(e, "device_time_total", 0) / 1e3,
         "cpu_ms": e.cpu_time_total / 1e3}
        for e in events
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="base/, ControlNetModel/, ip-adapter.bin folder (default: tiny)")
    parser.add_argument("--full-size", action="store_true", help="random weights at the official SDXL sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None)
    parser.add_argument("--size", type=int, default=None, help="default 1024 full-size, 128 tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also list the top operators of each pipeline")
    parser.add_argument("--compile", choices=("inductor", "eager", "aot_eager"), default=None,
                        help="compile the blocks both pipelines share (regional, as enable_fast_inference does)")
    parser.add_argument("--face-layers-eager", action="store_true",
                        help="with --compile: keep the face layers out of the graphs (a graph break in each block)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_vs_stock.json")
    args = parser.parse_args(argv)
    dtype = torch_dtype(args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32"))
    size = args.size or (1024 if args.full_size else 128)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        ours, stock, layers = load(args, dtype, Path(tmp))
    if args.compile:
        from instantid.speed.fast import enable_fast_inference

        # The shared blocks, compiled once: each pipeline's processors get graphs of their own. Only the compile
        # lever, so both pipelines stay comparable (fusing QKV would fuse ours and not the stock layers).
        enable_fast_inference(ours, compile=args.compile, compile_face_layers=not args.face_layers_eager,
                              fuse_qkv=False, channels_last=False)
    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * size
    kps = draw_kps(Image.new("RGB", (size, size)), face)
    mask = np.zeros((size, size, 3), np.uint8)
    mask[size // 5 : size * 4 // 5, size // 4 : size * 3 // 4] = 255
    common = dict(prompt="a portrait of a person", negative_prompt="blurry", image=kps, num_inference_steps=args.steps,
                  guidance_scale=5.0, controlnet_conditioning_scale=0.8, output_type="latent")
    emb = np.random.default_rng(0).normal(size=ours.adapter_spec.embedding_dim).astype(np.float32)
    face_call = {**common, "image_embeds": emb, "ip_adapter_scale": 0.8}
    runs = {  # name: (pipeline, face layers on?, call arguments)
        "diffusers_controlnet": (stock, False, common),
        "instantid": (ours, True, face_call),
        "instantid_face_mask": (ours, True, {**face_call, "control_mask": Image.fromarray(mask)}),
    }

    def call(name: str, fn, **extra):
        pipe, face_on, kwargs = runs[name]
        layers.instantid() if face_on else layers.stock()
        return fn(pipe, {**kwargs, **extra, "generator": torch.Generator("cpu").manual_seed(0)}, args.device)

    for name in runs:  # warm-up
        call(name, timed_run, num_inference_steps=2)
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved so drift hits every pipeline alike
        for name in runs:
            results[name].append(call(name, timed_run))
    summary = {
        name: {
            **{key: statistics.median(r[key] for r in rows)
               for key in ("step_s", "total_s", "step_cpu_s", "total_cpu_s") if key in rows[0]},
            "peak_mib": max(r["peak_bytes"] for r in rows) / 2**20,
        }
        for name, rows in results.items()
    }
    stock_row = summary["diffusers_controlnet"]
    ratios = {
        name: {k: row[k] / stock_row[k] if stock_row[k] else float("nan") for k in row}
        for name, row in summary.items() if name != "diffusers_controlnet"
    }
    time_key = "step_cpu_s" if "step_cpu_s" in stock_row else "step_s"
    paired = {  # each round against the stock run of the same round
        name: statistics.median(r[time_key] / s[time_key] for r, s in zip(rows, results["diffusers_controlnet"],
                                                                         strict=True))
        for name, rows in results.items() if name != "diffusers_controlnet"
    }
    report = {
        "config": {**vars(args), "models": str(args.models or ("full-size random" if args.full_size else "tiny")),
                   "out": str(args.out), "dtype": str(dtype), "size": size},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "runs": results, "summary": summary, "ratio_over_stock": ratios,
        "paired_step_ratio": {"time": time_key, **paired},
    }
    cpu = "step_cpu_s" in stock_row
    print(f"{'pipeline':<22}{'step (ms)':>12}{'total (s)':>12}{'peak (MiB)':>12}{'step ratio':>12}{'total ratio':>12}"
          + (f"{'CPU step (ms)':>15}{'CPU ratio':>11}" if cpu else "") + f"{'paired':>8}")
    for name, row in summary.items():
        r = ratios.get(name, dict.fromkeys(row, 1.0))
        print(f"{name:<22}{row['step_s'] * 1e3:>12.1f}{row['total_s']:>12.3f}{row['peak_mib']:>12.0f}"
              f"{r['step_s']:>12.3f}{r['total_s']:>12.3f}"
              + (f"{row['step_cpu_s'] * 1e3:>15.1f}{r['step_cpu_s']:>11.3f}" if cpu else "")
              + f"{paired.get(name, 1.0):>8.3f}")
    if args.profile:
        report["profile"] = {name: call(name, lambda p, kw, d: profile_run(p, kw, d)) for name in runs}
        for name, ops in report["profile"].items():
            print(f"\ntop operators: {name}")
            for op in ops:
                print(f"  {op['op'][:60]:<60}{op['calls']:>7}{op['device_ms']:>10.1f} ms dev"
                      f"{op['cpu_ms']:>10.1f} ms cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
