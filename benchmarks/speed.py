"""Speed and memory of InstantID generation, per stage, against diffusers' stock SDXL ControlNet pipeline.

Stages: face analysis (the photo -> keypoints + embedding), prompt encoding (both text encoders), each
denoising step (UNet + IdentityNet + face adapter; mean and p50), VAE decode, and end to end. The stock
``StableDiffusionXLControlNetPipeline`` runs on the very same UNet/ControlNet/VAE/text-encoder weights in
the same process (before the face adapter is installed), so ``ours / stock`` isolates what InstantID adds.

    python benchmarks/speed.py                                   # tiny random stack on CPU, seconds
    python benchmarks/speed.py --device cuda --full-size --steps 20 --out benchmarks/results

``--full-size`` builds random-weight models with the official SDXL sizes (UNet 2.6B, ControlNet, VAE, CLIP-L
and bigG text encoders) straight on the device in the chosen dtype, plus a published-size face adapter:
nothing is downloaded. Writes ``speed-<device>.json`` and ``speed-<device>.png`` into ``--out``.

``--first-call`` measures start-up instead: three fresh processes each build the pipeline and time their first
and second call: eager, then compiled (``enable_fast_inference(compile=True, cache_dir=...)``) with an empty
on-disk compile cache, then compiled again with the cache the previous process left (a warm start). Writes
``first-call-<device>.json``; ``--cache-dir`` keeps the cache folder (default: a temporary one, so "cold" is).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACE = REPO.parent / "shared" / "faces" / "obama_1.jpg"
PROMPT = "photo of a person in a yellow raincoat, city street, soft light"
NEGATIVE = "blurry, lowres"
# Published SDXL-base sizes (stabilityai/stable-diffusion-xl-base-1.0 configs).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)
# Token ids come from the tiny byte-level tokenizer (no download); bos/eos must match it so the pooled
# output is read at the right position. Encoder cost does not depend on which ids fill the 77 slots.
_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu", **_TOKENS)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 projection_dim=1280, hidden_act="gelu", **_TOKENS)
FALLBACK_KPS = np.array([[0.38, 0.42], [0.62, 0.42], [0.5, 0.55], [0.41, 0.68], [0.59, 0.68]])  # x, y / size
FALLBACK_BOX = np.array([0.25, 0.2, 0.75, 0.85])  # x1, y1, x2, y2 / size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-size", action="store_true", help="official SDXL sizes, random weights")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--height", type=int, help="default: 1024 full-size, 128 tiny")
    parser.add_argument("--width", type=int, help="default: 1024 full-size, 128 tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed denoising steps (default 20 full, 8 tiny)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up call")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--face-image", type=Path, default=DEFAULT_FACE, help="photo for the face-analysis stage")
    parser.add_argument("--face-backend", default="auto", help="auto, antelopev2 or dlib")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the short stages (median reported)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--first-call", action="store_true", help="cold vs warm start in fresh processes")
    parser.add_argument("--cache-dir", type=Path, help="compile cache folder for --first-call (default: temporary)")
    parser.add_argument("--first-call-worker", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2: step times are the intervals between step ends")
    args.height = args.height or (1024 if args.full_size else 128)
    args.width = args.width or (1024 if args.full_size else 128)
    args.steps = args.steps or (20 if args.full_size else 8)
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    return args


# ---- measuring ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (device synchronised) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far (it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on the device in the target dtype: a full-size fp32 copy on the host
    would need ~20 GB and minutes of random initialisation."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


# ---- models ---------------------------------------------------------------------------------------
def build_components(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, folder: Path) -> dict:
    """UNet, ControlNet, VAE, text encoders, tokenizers and scheduler: tiny (the test stack) or full-size."""
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from instantid.io.tiny import TinyConfig, build_tiny_components, build_tiny_instantid

    build_tiny_instantid(folder)  # also the source of the offline tokenizers
    tokenizers = {name: CLIPTokenizer.from_pretrained(folder / "base" / name) for name in ("tokenizer", "tokenizer_2")}
    if not args.full_size:
        parts = build_tiny_components(TinyConfig())
        for name, part in parts.items():
            if isinstance(part, torch.nn.Module):
                parts[name] = part.to(device=device, dtype=dtype)
        return parts | tokenizers
    with building_on(device, dtype):
        unet = UNet2DConditionModel(**SDXL_UNET)
        parts = {
            "unet": unet,
            "controlnet": ControlNetModel.from_unet(unet),
            "vae": AutoencoderKL(**SDXL_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)),
        }
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return {name: part.eval() for name, part in parts.items()} | tokenizers | {"scheduler": scheduler}


def install_adapter(pipe: Any, args: argparse.Namespace, folder: Path) -> int:
    """A random face adapter (published sizes at full size) through the real loading code; returns its
    embedding size."""
    from instantid.core.adapter import random_adapter_state_dict

    width, dim = (1280, 512) if args.full_size else (128, 512)
    state = random_adapter_state_dict(pipe.unet, width=width, depth=4, num_queries=16, embedding_dim=dim)
    path = folder / "ip-adapter-random.bin"
    torch.save(state, path)
    pipe.load_ip_adapter_instantid(path)
    pipe.unet.to(device=pipe.unet.device, dtype=pipe.unet.dtype)  # the new adapter layers too
    return dim


# ---- stages ---------------------------------------------------------------------------------------
def face_stage(args: argparse.Namespace, size: tuple[int, int]) -> tuple[dict, np.ndarray, Image.Image]:
    """Time face analysis on the CPU-side face model; return keypoints and face-region mask at ``size``.

    Without a face model or face, canned keypoints and box stand in, so the generation workload (mask
    included) is the same either way.
    """
    width, height = size
    info: dict[str, Any]
    kps, box = FALLBACK_KPS * np.array(size), FALLBACK_BOX * np.tile(size, 2)
    try:
        from instantid.faces import create_face_analyzer, load_image

        analyzer = create_face_analyzer(args.face_backend)
        photo = load_image(args.face_image)
        seconds, faces = timed(lambda: analyzer.analyze(photo), torch.device("cpu"), args.repeats)
        info = {"seconds": seconds, "backend": analyzer.space}
        if faces:
            scale = np.array([width / photo.width, height / photo.height])
            kps, box = faces[0].kps * scale, np.array(faces[0].bbox) * np.tile(scale, 2)
        else:
            info["note"] = "no face found: canned keypoints used"
    except Exception as exc:  # a missing face model or photo must not stop the speed benchmark
        info = {"skipped": f"{type(exc).__name__}: {exc}"}
    mask = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = (max(int(v), 0) for v in box)
    mask[y1:y2, x1:x2] = 255
    return info, kps, Image.fromarray(mask)


@torch.no_grad()
def encode(pipe: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Both text encoders, positive and negative prompt, as a guided call does."""
    return pipe.encode_prompt(PROMPT, device=device, negative_prompt=NEGATIVE)


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode as both pipelines do it (fp16 SDXL VAE upcast to fp32), then to PIL."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(torch.float32)
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    if upcast:
        vae.to(torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")


def time_pipeline(pipe: Any, call: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Warm-up call, a stepped call (per-step times via ``callback_on_step_end``), then end-to-end calls
    without callback (median of ``--repeats``)."""
    seed = {"generator": torch.Generator(device).manual_seed(0)}
    pipe(**call, **seed, num_inference_steps=args.warmup_steps, output_type="latent")
    # On CUDA, events recorded at each step end time the GPU stream without synchronising: a sync per step
    # would stall the CPU's launch queue and add its launch latency to every step.
    marks: list[Any] = []

    def on_step(_pipe: Any, _i: int, _t: Any, tensors: dict) -> dict:
        if device.type == "cuda":
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        else:
            marks.append(time.perf_counter())
        return tensors

    pipe(**call, **seed, num_inference_steps=args.steps, output_type="latent", callback_on_step_end=on_step)
    sync(device)
    # Intervals between step ends; the first step also holds encoding and set-up, so it is left out.
    if device.type == "cuda":
        steps = [a.elapsed_time(b) / 1e3 for a, b in zip(marks[:-1], marks[1:], strict=True)]
    else:
        steps = list(np.diff(marks))
    reset_peak(device)
    end_to_end, _ = timed(lambda: pipe(**call, **seed, num_inference_steps=args.steps), device, args.repeats)
    step_mean = float(np.mean(steps))
    return {
        "end_to_end_s": end_to_end, "step_mean_s": step_mean, "step_p50_s": float(np.median(steps)),
        # Encoding, preparation, decode and anything else the end-to-end call spends beyond its steps.
        "outside_denoising_s": end_to_end - step_mean * args.steps,
        "steps_s": [float(s) for s in steps], "peak_memory_mb": peak_memory_mb(device),
    }


def run(args: argparse.Namespace) -> dict:
    from diffusers import StableDiffusionXLControlNetPipeline

    from instantid.core.keypoints import draw_kps
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    size = (args.width, args.height)
    face, kps, mask = face_stage(args, size)
    kps_image = draw_kps(Image.new("RGB", size), kps)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        parts = build_components(args, device, dtype, Path(tmp))
        build_s = time.perf_counter() - started
        common = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "image": kps_image, "height": args.height,
                  "width": args.width, "guidance_scale": args.guidance_scale, "controlnet_conditioning_scale": 0.8}

        # The stock pipeline first: once the face adapter is installed the shared UNet expects face embeds.
        stock = StableDiffusionXLControlNetPipeline(**parts, add_watermarker=False).to(device)
        stock.set_progress_bar_config(disable=True)
        stock_result = time_pipeline(stock, common, args, device)
        encode_s, _ = timed(lambda: encode(stock, device), device, args.repeats)
        latents = torch.randn(1, 4, args.height // 8, args.width // 8, device=device, dtype=dtype)
        decode_s, _ = timed(lambda: decode(stock, latents), device, args.repeats)

        ours = StableDiffusionXLInstantIDPipeline(**parts, add_watermarker=False).to(device)
        ours.set_progress_bar_config(disable=True)
        dim = install_adapter(ours, args, Path(tmp))
        embedding = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
        ours_call = common | {"image_embeds": embedding, "control_mask": mask, "ip_adapter_scale": 0.8}
        ours_result = time_pipeline(ours, ours_call, args, device)
    return {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "scale": "full-size SDXL (random weights)" if args.full_size else "tiny",
        "full_size": args.full_size, "dtype": args.dtype, "height": args.height, "width": args.width,
        "steps": args.steps, "guidance_scale": args.guidance_scale, "build_s": build_s,
        "stages": {"face_analysis": face, "prompt_encoding_s": encode_s, "vae_decode_s": decode_s},
        "pipelines": {"instantid": ours_result, "stock_controlnet": stock_result},
        "ratio_ours_over_stock": {
            key: ours_result[key] / stock_result[key] for key in ("step_mean_s", "step_p50_s", "end_to_end_s")
        },
    }


# ---- start-up -------------------------------------------------------------------------------------
def first_call_worker(args: argparse.Namespace) -> dict:
    """In a fresh process: build the pipeline, switch the fast path on (or not), time the first two calls."""
    from torch._dynamo.utils import counters

    from instantid.core.keypoints import draw_kps
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline
    from instantid.speed.fast import enable_fast_inference

    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        parts = build_components(args, device, dtype, Path(tmp))
        pipe = StableDiffusionXLInstantIDPipeline(**parts, add_watermarker=False).to(device)
        dim = install_adapter(pipe, args, Path(tmp))
    pipe.set_progress_bar_config(disable=True)
    if args.first_call_worker == "compiled":
        enable_fast_inference(pipe, compile=True, cache_dir=args.cache_dir)
    size = (args.width, args.height)
    kps = draw_kps(Image.new("RGB", size), FALLBACK_KPS * size)
    call = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "image": kps,
            "image_embeds": np.random.default_rng(0).standard_normal(dim).astype(np.float32),
            "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "output_type": "latent"}
    build_s = time.perf_counter() - started
    first_s, _ = timed(lambda: pipe(**call), device)
    second_s, _ = timed(lambda: pipe(**call), device)
    return {"build_s": build_s, "first_call_s": first_s, "second_call_s": second_s,
            "cache": {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items()
                      if "cache" in k}}


def first_call(args: argparse.Namespace) -> dict:
    """Eager, compiled with an empty cache, compiled with a warm cache: each a fresh process (in that order)."""
    import subprocess

    passed = ["--device", args.device, "--dtype", args.dtype, "--height", str(args.height), "--width",
              str(args.width), "--steps", str(args.steps)] + (["--full-size"] if args.full_size else [])
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "compile-cache"
        runs = {}
        for name, mode in (("eager", "eager"), ("compiled, cold cache", "compiled"),
                           ("compiled, warm cache", "compiled")):
            done = subprocess.run(
                [sys.executable, __file__, *passed, "--first-call-worker", mode, "--cache-dir", str(cache)],
                capture_output=True, text=True, check=True,
            )
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"device": args.device, "torch": torch.__version__, "scale": "full-size" if args.full_size else "tiny",
            "dtype": args.dtype, "height": args.height, "width": args.width, "steps": args.steps,
            "cache_dir": str(args.cache_dir) if args.cache_dir else "temporary", "runs": runs}


def first_call_table(result: dict) -> str:
    lines = [f"first call in a fresh process: {result['scale']} on {result['device']}, {result['dtype']}, "
             f"{result['width']}x{result['height']}, {result['steps']} steps",
             f"{'':24}{'build (s)':>11}{'first (s)':>11}{'second (s)':>12}  compile cache"]
    for name, run in result["runs"].items():
        cache = ", ".join(f"{k} {v}" for k, v in sorted(run["cache"].items())) or "-"
        lines.append(f"{name:24}{run['build_s']:>11.1f}{run['first_call_s']:>11.1f}{run['second_call_s']:>12.2f}"
                     f"  {cache}")
    return "\n".join(lines)


# ---- output ---------------------------------------------------------------------------------------
def table(result: dict) -> str:
    ours, stock = result["pipelines"]["instantid"], result["pipelines"]["stock_controlnet"]
    ratio = result["ratio_ours_over_stock"]
    face = result["stages"]["face_analysis"]
    face_text = f"{face['seconds'] * 1e3:.1f} ms ({face['backend']})" if "seconds" in face else face["skipped"]
    lines = [
        f"{result['scale']} on {result['device']} ({result['device_name']}), {result['dtype']}, "
        f"{result['width']}x{result['height']}, {result['steps']} steps, guidance {result['guidance_scale']}",
        f"face analysis            {face_text}",
        f"prompt encoding          {result['stages']['prompt_encoding_s'] * 1e3:.1f} ms",
        f"VAE decode               {result['stages']['vae_decode_s'] * 1e3:.1f} ms",
        f"{'':24} {'InstantID':>12} {'stock':>12} {'ours/stock':>11}",
    ]
    for label, key, unit in (("denoising step, mean", "step_mean_s", 1e3), ("denoising step, p50", "step_p50_s", 1e3),
                             ("outside the steps", "outside_denoising_s", 1), ("end to end", "end_to_end_s", 1)):
        suffix = "ms" if unit == 1e3 else "s"
        ratio_text = f"{ratio[key]:11.3f}" if key in ratio else ""
        values = f"{ours[key] * unit:10.2f}{suffix:>2} {stock[key] * unit:10.2f}{suffix:>2}"
        lines.append(f"{label:24} {values} {ratio_text}")
    memory = "peak allocated" if result["device"].startswith("cuda") else "process peak RSS"
    lines.append(f"{memory + ' (MiB)':24} {ours['peak_memory_mb']:12.0f} {stock['peak_memory_mb']:12.0f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """A bar chart drawn with PIL (no plotting dependency): each stage, ours next to stock."""
    ours, stock = result["pipelines"]["instantid"], result["pipelines"]["stock_controlnet"]
    stages = result["stages"]
    face = [("face analysis", stages["face_analysis"]["seconds"], None)] if "seconds" in stages["face_analysis"] else []
    rows = [*face, ("prompt encoding", stages["prompt_encoding_s"], None),
            ("step (mean)", ours["step_mean_s"], stock["step_mean_s"]),
            ("VAE decode", stages["vae_decode_s"], None),
            ("end to end", ours["end_to_end_s"], stock["end_to_end_s"])]
    font = ImageFont.load_default(size=14)
    width, bar_h, left = 900, 18, 170
    image = Image.new("RGB", (width, 60 + len(rows) * 3 * bar_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"{result['scale']}, {result['device_name']}, {result['width']}x{result['height']}, "
              f"{result['dtype']} (blue: InstantID, grey: stock)", fill="black", font=font)
    longest = max(max(a, b or 0.0) for _, a, b in rows) or 1.0
    for i, (label, value, baseline) in enumerate(rows):
        y = 40 + i * 3 * bar_h
        draw.text((10, y), label, fill="black", font=font)
        for j, (v, colour) in enumerate(((value, (52, 101, 164)), (baseline, (150, 150, 150)))):
            if v is None:
                continue
            x2 = left + int((width - left - 120) * v / longest)
            draw.rectangle([left, y + j * bar_h, max(left + 1, x2), y + j * bar_h + bar_h - 3], fill=colour)
            draw.text((x2 + 6, y + j * bar_h), f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s", fill="black",
                      font=font)
    image.save(path)


def main(argv: list[str] | None = None) -> dict:
    from diffusers.utils import logging as diffusers_logging

    args = parse_args(argv)
    diffusers_logging.set_verbosity_error()  # casting notes for random-weight models are noise here
    label = args.device.replace(":", "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights overflow to NaN in fp16; numpy warns on the cast
        if args.first_call_worker:
            print(json.dumps(first_call_worker(args)))
            return {}
        if args.first_call:
            result = first_call(args)
            print(first_call_table(result))
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"first-call-{label}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.out / f'first-call-{label}.json'}")
            return result
        result = run(args)
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"speed-{label}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"speed-{label}.png")
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # runs from a plain checkout too
    main()
