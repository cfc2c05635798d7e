"""The fast path on one GPU: eager vs each lever vs compiled vs diffusers' stock pipeline, in one process.

Full-size random SDXL + IdentityNet + a published-size face adapter (built on the device, no download; see
``pipeline_vs_stock.py``), 1024x1024, 30 steps, CFG 5, end to end with VAE decode. Sections, each written to
the JSON as soon as it is done (a run cut short still leaves its results):

1. first call after a process start, in two fresh processes sharing one compile cache folder: cold (empty
   cache) then warm (cache written by the cold one);
2. variants, interleaved round by round (best and median of ``--repeats``): stock, eager, each exact lever
   alone (fused QKV, channels-last, fp16 VAE without upcast), compiled (regional, with the exact levers),
   the stock pipeline under the same compilation, and the lossy IdentityNet window (``control_guidance_end``);
   per-step time from CUDA events, and the final latents' distance to eager next to the identity effect
   (eager latents of another face);
3. throughput at batch 1, 4 and 8 (compiled), with peak memory;
4. the few-step presets (compiled; their scheduler, steps and guidance: a fused LoRA or a swapped UNet costs
   nothing per step, and their loading is tested in tests/test_presets.py);
5. a 24 GB-card profile: the allocator capped at 24 GiB, VAE tiling on, compiled, identity branch on;
6. the lossy levers (``gpu_lossy.py``), each alone against its exact baseline, interleaved: IdentityNet's
   residuals reused between steps and torchao quantization (fp8 where the GPU has it, fp8 weights, int8; one
   scheme under compilation), each with its latents' distance from the exact eager latents next to the identity
   effect; a scheme this machine cannot run is listed with the reason.

    python benchmarks/gpu_speed.py --out $OUT/gpu_speed.json                 # on the GPU, ~8 minutes
    python benchmarks/gpu_speed.py --tiny --device cpu --out /tmp/speed.json   # the whole script in < 1 min

``--tiny`` runs the tiny random stack at 64 px; on CPU it compiles with the ``eager`` backend (dynamo only), so
it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from gpu_lossy import lossy, lossy_table  # noqa: E402  (section 6)
from pipeline_vs_stock import PeakMemory, load  # noqa: E402  (the shared builders)

from instantid import draw_kps  # noqa: E402
from instantid.io.devices import DTYPE_NAMES, torch_dtype  # noqa: E402
from instantid.speed.fast import enable_fast_inference, fuse_self_attention  # noqa: E402
from instantid.speed.presets import PRESETS  # noqa: E402

PROMPT, NEGATIVE = "a portrait of a person, city street, soft light", "blurry"
FEW_STEP = ("lcm-lora", "lightning-4step", "hyper-sd-8step", "tcd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random stack (checks the script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default fp16 on cuda, fp32 on cpu")
    parser.add_argument("--size", type=int, default=None, help="default 1024, tiny 64")
    parser.add_argument("--steps", type=int, default=None, help="default 30, tiny 4")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of the variants (default 3, tiny 1)")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,4,8; tiny 1,2)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor; eager on a CPU)")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--cache-dir", type=Path, default=None, help="compile cache (default: a fresh temp folder)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: first_call,batches,presets,"
                        "24gb,lossy,lossy_compiled")
    parser.add_argument("--compiled-scheme", default="fp8", help="quantization measured under compilation against "
                        "the compiled exact pipeline (lossy section; int8 checks that path on a CPU)")
    parser.add_argument("--child-timeout", type=int, default=240, help="seconds for each first-call process")
    parser.add_argument("--first-call-only", action="store_true", help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_speed.json")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 1024)
    args.steps = args.steps or (3 if args.tiny else 30)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    args.batches = args.batches or ("1,2" if args.tiny else "1,4,8")
    args.backend = args.backend or ("eager" if args.device == "cpu" else "inductor")
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    return args


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Bench:
    """The loaded pipelines, the call arguments and switches that turn each lever on and off in place."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.dtype = torch_dtype(args.dtype)
        self.ours, self.stock, self.layers = load(
            argparse.Namespace(full_size=not args.tiny, models=None, device=args.device), self.dtype, tmp
        )
        # ControlNetModel.from_unet zero-initialises IdentityNet's output convolutions (training starts there):
        # random ones make IdentityNet move the latents, so the latent differences below mean something.
        gen = torch.Generator().manual_seed(0)
        net = self.ours.identitynet
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.data.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.02)
        size = args.size
        face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * size
        kps = draw_kps(Image.new("RGB", (size, size)), face)
        self.common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=kps, height=size, width=size,
                           num_inference_steps=args.steps, guidance_scale=5.0, controlnet_conditioning_scale=0.8)
        dim = self.ours.adapter_spec.embedding_dim
        self.faces = [np.random.default_rng(s).normal(size=dim).astype(np.float32) for s in (0, 1)]
        self.blocks: list[torch.nn.Module] = []
        self.compiled_impls: list[Any] = []
        self.unet_attn1 = [m for n, m in self.ours.unet.named_modules() if n.endswith("attn1")]
        self.cn_attn1 = [m for n, m in self.ours.identitynet.named_modules() if n.endswith("attn1")]
        self.plain: dict[int, Any] = {}
        self.fused: dict[int, Any] = {}
        self.exact_modules = (self.ours.unet, self.ours.controlnet)
        self.quantized: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}

    # ---- lossy: the quantized copies of gpu_lossy swap in and out -----------------------------------------------
    def use_modules(self, unet: torch.nn.Module, identitynet: torch.nn.Module) -> None:
        self.ours.unet, self.ours.controlnet = unet, identitynet

    def prepare_fused(self) -> None:
        """Create the fused projections once; afterwards fusing is a processor swap."""
        attn1 = self.unet_attn1 + self.cn_attn1
        self.plain = {id(m): m.processor for m in attn1}
        fuse_self_attention(self.ours.unet), fuse_self_attention(self.ours.identitynet)
        self.fused = {id(m): m.processor for m in attn1}
        self.set_fused(False)

    def set_fused(self, on: bool) -> None:
        for m in self.unet_attn1 + self.cn_attn1:
            m.set_processor((self.fused if on else self.plain)[id(m)])

    def set_channels_last(self, on: bool) -> None:
        fmt = torch.channels_last if on else torch.contiguous_format
        for module in (self.ours.unet, self.ours.identitynet, self.ours.vae):
            module.to(memory_format=fmt)

    def set_vae_fp16(self, on: bool) -> None:
        """Timing only: the random VAE decodes in fp16 without the upcast (a real run swaps in an fp16-fixed VAE)."""
        self.ours.vae.register_to_config(force_upcast=not on)

    def compile(self) -> None:
        report = enable_fast_inference(self.ours, compile=self.args.backend, compile_mode=self.args.mode,
                                       fuse_qkv=False, channels_last=False)
        self.report = report
        self.blocks = [m for model in (self.ours.unet, self.ours.identitynet) for m in model.modules()
                       if type(m).__name__ == "BasicTransformerBlock"]
        self.compiled_impls = [b._compiled_call_impl for b in self.blocks]

    def set_compiled(self, on: bool) -> None:
        # torch's Module.compile keeps the compiled callable in _compiled_call_impl; None runs the module eagerly.
        for block, impl in zip(self.blocks, self.compiled_impls, strict=True):
            block._compiled_call_impl = impl if on else None

    def variant(self, name: str) -> tuple[Any, dict]:
        """Switch every lever for ``name``; returns (pipeline, call arguments)."""
        stock = name.startswith("stock")
        self.use_modules(*self.exact_modules)  # the switches below act on the exact modules
        self.layers.stock() if stock else self.layers.instantid()
        self.set_fused(name in ("fuse_qkv", "compiled", "stock_compiled"))
        self.set_channels_last(name in ("channels_last", "compiled", "stock_compiled"))
        self.set_vae_fp16(name == "vae_fp16")
        self.set_compiled(name in ("compiled", "stock_compiled", "lossy_identitynet_end_0.6"))
        kwargs = dict(self.common)
        if not stock:
            kwargs |= {"image_embeds": self.faces[0], "ip_adapter_scale": 0.8}
        if name == "lossy_identitynet_end_0.6":
            kwargs["control_guidance_end"] = 0.6
        if name.startswith("identitynet_cache_"):
            kwargs["controlnet_cache_interval"] = int(name.removeprefix("identitynet_cache_"))
        if name.startswith("quantize_"):
            self.use_modules(*self.quantized[name.removeprefix("quantize_")])
        return (self.stock if stock else self.ours), kwargs

    # ---- one measured call -------------------------------------------------------------------------
    def run(self, pipe: Any, kwargs: dict, seed: int = 0) -> dict:
        device = self.args.device
        marks: list[Any] = []
        final: list[torch.Tensor] = []

        def on_step(p: Any, i: int, t: Any, tensors: dict) -> dict:
            if device.startswith("cuda"):
                marks.append(torch.cuda.Event(enable_timing=True))
                marks[-1].record()
            else:
                marks.append(time.perf_counter())
            final[:] = [tensors["latents"]]
            return tensors

        with PeakMemory(device) as mem:
            sync(device)
            start, cpu_start = time.perf_counter(), time.thread_time()
            pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step)
            sync(device)
            total, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        if device.startswith("cuda"):
            steps = [a.elapsed_time(b) / 1e3 for a, b in zip(marks[:-1], marks[1:], strict=True)]
        else:
            steps = list(np.diff(marks))
        # The mean as well: with IdentityNet reused between steps, steps alternate between two costs.
        # On a CPU this thread does the work (one torch thread): its CPU time leaves out what other processes of
        # a shared machine take, so the lossy section compares that there.
        return {"total_s": total, "cpu_s": cpu, "step_s": float(np.median(steps)) if steps else float("nan"),
                "step_mean_s": float(np.mean(steps)) if steps else float("nan"),
                "peak_mib": mem.peak / 2**20, "latents": final[0].float().cpu()}


def first_call(args: argparse.Namespace) -> dict:
    """Child process: build, enable the fast path with the shared cache, time the first full call."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
    built = time.perf_counter() - started
    enable_fast_inference(bench.ours, compile=args.backend, compile_mode=args.mode, cache_dir=args.cache_dir)
    pipe, kwargs = bench.ours, {**bench.common, "image_embeds": bench.faces[0]}
    first = bench.run(pipe, kwargs)
    second = bench.run(pipe, kwargs)
    return {"build_s": built, "first_call_s": first["total_s"], "second_call_s": second["total_s"]}


def child(args: argparse.Namespace, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--first-call-only", "--device", args.device, "--dtype", args.dtype,
           "--size", str(args.size), "--steps", str(args.steps), "--repeats", "1", "--backend", args.backend,
           "--cache-dir", str(cache), *(["--tiny"] if args.tiny else []), *(["--mode", args.mode] if args.mode else [])]
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    try:  # bounded, so one slow compile cannot eat the whole device call
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no first call within {args.child_timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def summarise(rows: list[dict]) -> dict:
    totals, steps = [r["total_s"] for r in rows], [r["step_s"] for r in rows]
    return {"best_s": min(totals), "median_s": statistics.median(totals), "step_best_s": min(steps),
            "step_median_s": statistics.median(steps),
            "step_mean_s": statistics.median(r["step_mean_s"] for r in rows),
            "cpu_median_s": statistics.median(r["cpu_s"] for r in rows),
            "peak_mib": max(r["peak_mib"] for r in rows)}


def run(args: argparse.Namespace, save) -> dict:
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
    }
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="instantid-compile-cache-"))
    args.cache_dir = cache
    # 1. First call in fresh processes: cold, then warm from the folder the cold one wrote.
    if "first_call" not in skip:
        report["first_call"] = {"cold": child(args, cache), "warm": child(args, cache)}
        save(report)
    from instantid.speed.fast import use_compile_cache

    use_compile_cache(cache)  # this process reads the same (now warm) cache
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
    bench.prepare_fused()
    bench.compile()
    report["fast_report"] = bench.report.summary()

    # 2. Variants, interleaved; warm-up first (compiles happen there).
    names = ["stock", "eager", "fuse_qkv", "channels_last", "vae_fp16", "compiled", "stock_compiled",
             "lossy_identitynet_end_0.6"]
    for name in names:
        bench.run(*bench.variant(name))
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            rows[name].append(bench.run(*bench.variant(name)))
    pipe, kwargs = bench.variant("eager")
    other = bench.run(pipe, {**kwargs, "image_embeds": bench.faces[1]})["latents"]
    eager = rows["eager"][0]["latents"]
    identity = (other - eager).abs()
    variants = {}
    for name, runs in rows.items():
        row = summarise(runs)
        if not name.startswith("stock"):
            diff = (runs[0]["latents"] - eager).abs()
            row |= {"latent_max_diff": diff.max().item(), "latent_mean_diff": diff.mean().item()}
        variants[name] = row
    for name, row in variants.items():
        base = variants["stock_compiled" if name in ("compiled", "lossy_identitynet_end_0.6") else "stock"]
        row["step_over_stock"] = row["step_median_s"] / base["step_median_s"]
        row["speedup_over_eager"] = variants["eager"]["median_s"] / row["median_s"]
    report["variants"] = variants
    report["identity_effect"] = {"latent_max_diff": identity.max().item(), "latent_mean_diff": identity.mean().item()}
    save(report)

    # 3. Throughput (compiled; each batch size compiles once).
    if "batches" not in skip:
        report["batches"] = {}
        pipe, kwargs = bench.variant("compiled")
        for batch in (int(b) for b in args.batches.split(",")):
            call = {**kwargs, "num_images_per_prompt": batch}
            bench.run(pipe, call)
            result = bench.run(pipe, call)
            report["batches"][batch] = {"images_per_s": batch / result["total_s"], "total_s": result["total_s"],
                                        "peak_mib": result["peak_mib"]}
            save(report)

    # 4. Few-step presets at their steps, guidance and scheduler.
    if "presets" not in skip:
        import diffusers

        report["presets"] = {}
        pipe, kwargs = bench.variant("compiled")
        original = pipe.scheduler
        for name in FEW_STEP:
            preset = PRESETS[name]
            scheduler = getattr(diffusers, preset.scheduler)
            pipe.scheduler = scheduler.from_config(original.config, **preset.scheduler_config)
            call = {**kwargs, **preset.call_kwargs()}
            bench.run(pipe, call)
            timings = [bench.run(pipe, call)["total_s"] for _ in range(args.repeats)]
            report["presets"][name] = {"steps": preset.steps, "guidance_scale": preset.guidance_scale,
                                       "best_s": min(timings), "median_s": statistics.median(timings)}
            save(report)
        pipe.scheduler = original

    # 5. A 24 GB card: the allocator capped at 24 GiB, VAE tiling, compiled, identity on.
    if "24gb" not in skip and args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 24 * 2**30 / total))
        bench.ours.vae.enable_tiling()
        pipe, kwargs = bench.variant("compiled")
        try:
            bench.run(pipe, kwargs)
            result = bench.run(pipe, kwargs)
            report["profile_24gb"] = {"total_s": result["total_s"], "peak_mib": result["peak_mib"]}
        except torch.OutOfMemoryError as exc:
            report["profile_24gb"] = {"error": str(exc).splitlines()[0]}
        finally:  # the lossy section below runs on the whole card, without tiling
            torch.cuda.set_per_process_memory_fraction(1.0)
            bench.ours.vae.disable_tiling()
        save(report)

    # 6. The lossy levers, each alone.
    if "lossy" not in skip:
        report["lossy"] = lossy(bench, args, skip, summarise)
        save(report)
    return report


def table(report: dict) -> str:
    lines = [f"{'variant':<28}{'best (s)':>10}{'median (s)':>11}{'step (ms)':>11}{'step/stock':>11}"
             f"{'x eager':>9}{'latent diff':>13}{'peak MiB':>10}"]
    for name, row in report.get("variants", {}).items():
        diff = f"{row['latent_mean_diff']:.2e}" if "latent_mean_diff" in row else "-"
        lines.append(f"{name:<28}{row['best_s']:>10.3f}{row['median_s']:>11.3f}"
                     f"{row['step_median_s'] * 1e3:>11.2f}{row['step_over_stock']:>11.3f}"
                     f"{row['speedup_over_eager']:>9.2f}{diff:>13}{row['peak_mib']:>10.0f}")
    if "identity_effect" in report:
        effect = report["identity_effect"]["latent_mean_diff"]
        lines.append(f"identity effect (another face, eager): mean latent diff {effect:.2e}")
    for kind, row in report.get("first_call", {}).items():
        lines.append(f"first call, {kind} cache: {row}")
    for batch, row in report.get("batches", {}).items():
        lines.append(f"batch {batch}: {row['images_per_s']:.2f} images/s, peak {row['peak_mib']:.0f} MiB")
    for name, row in report.get("presets", {}).items():
        lines.append(f"preset {name} ({row['steps']} steps, guidance {row['guidance_scale']}): "
                     f"best {row['best_s']:.3f} s")
    if "profile_24gb" in report:
        lines.append(f"24 GB profile: {report['profile_24gb']}")
    if "lossy" in report:
        lines += ["", *lossy_table(report["lossy"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    if args.first_call_only:
        result = first_call(args)
        print(json.dumps(result))
        return result
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:
        args.out.write_text(json.dumps(report, indent=2, default=str))

    report = run(args, save)
    print(table(report))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
