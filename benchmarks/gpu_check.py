"""GPU checks that CI (CPU only) cannot make: exactness on CUDA, fp16, CPU offload, attention switches.

    python benchmarks/gpu_check.py --fixtures ../shared/fixtures/instantid-tiny [--out DIR]

Prints one line per check and writes ``gpu_check.json``; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from instantid import StableDiffusionXLInstantIDPipeline
from instantid.core.attention import face_processors


def load(fixtures: Path, dtype: torch.dtype) -> StableDiffusionXLInstantIDPipeline:
    controlnet = ControlNetModel.from_pretrained(fixtures / "ControlNetModel", dtype=dtype)
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
        fixtures / "base", controlnet=controlnet, dtype=dtype
    )
    pipe.load_ip_adapter_instantid(fixtures / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(pipe, fixtures: Path, case: dict, **extra) -> torch.Tensor:
    keys = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "controlnet_conditioning_scale",
            "ip_adapter_scale", "control_guidance_end", "num_images_per_prompt")
    kwargs = {k: case[k] for k in keys if k in case}
    return pipe(
        image_embeds=np.load(fixtures / "face_embedding.npy"), image=Image.open(fixtures / case["kps_image"]),
        generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="latent", **kwargs, **extra,
    ).images.float().cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    args = parser.parse_args(argv)
    cases = json.loads((args.fixtures / "cases.json").read_text())["cases"]
    results: dict[str, dict] = {}

    def check(name: str, ok: bool, **info) -> None:
        results[name] = {"ok": bool(ok), **info}
        print(f"{'PASS' if ok else 'FAIL'} {name} {json.dumps(info)}", flush=True)

    start = time.perf_counter()
    pipe = load(args.fixtures, torch.float32).to(args.device)
    # TF32 convolutions (cuDNN's default) alone move these latents by ~1e-2; exactness is judged in true fp32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # CPU noise (generator on CPU), CUDA compute: same latents as the published pipeline up to GPU rounding.
    for name, case in cases.items():
        expected = torch.from_numpy(np.load(args.fixtures / case["expected_latents"]))
        diff = run_case(pipe, args.fixtures, case) - expected
        check(f"fixture_{name}_{args.device}_fp32", diff.abs().max() < 1e-3, max_abs_diff=float(diff.abs().max()))
    case = cases["square"]
    reference = run_case(pipe, args.fixtures, case)
    # The scale of a real difference: the same case without identity (both strengths at 0).
    no_identity = run_case(pipe, args.fixtures, {**case, "controlnet_conditioning_scale": 0.0, "ip_adapter_scale": 0.0})
    results["identity_effect"] = {"max_abs_diff": float((no_identity - reference).abs().max())}
    print(f"INFO identity_effect {json.dumps(results['identity_effect'])}", flush=True)
    masked = run_case(pipe, args.fixtures, case, control_mask=Image.new("RGB", tuple(case["size"]), "white"))
    check("white_mask_equals_no_mask", (masked - reference).abs().max() < 1e-4,
          max_abs_diff=float((masked - reference).abs().max()))
    count = len(face_processors(pipe.unet))
    pipe.enable_attention_slicing(1)
    sliced = run_case(pipe, args.fixtures, case)
    check("attention_slicing_keeps_identity", len(face_processors(pipe.unet)) == count
          and (sliced - reference).abs().max() < 1e-3, max_abs_diff=float((sliced - reference).abs().max()))
    pipe.disable_attention_slicing()
    try:
        pipe.enable_xformers_memory_efficient_attention()
        xf = run_case(pipe, args.fixtures, case)
        check("xformers_keeps_identity", len(face_processors(pipe.unet)) == count
              and (xf - reference).abs().max() < 1e-3, max_abs_diff=float((xf - reference).abs().max()))
    except Exception as exc:  # xformers is optional; record why it was not checked
        results["xformers_keeps_identity"] = {"ok": None, "skipped": f"{type(exc).__name__}: {exc}"[:200]}
        print(f"SKIP xformers_keeps_identity ({type(exc).__name__})", flush=True)
    del pipe
    if args.device == "cuda":
        torch.cuda.empty_cache()

    if args.device == "cuda":
        offload = load(args.fixtures, torch.float32)
        offload.enable_model_cpu_offload()
        offloaded = run_case(offload, args.fixtures, case)
        check("cpu_offload_keeps_identity", (offloaded - reference).abs().max() < 1e-3,
              max_abs_diff=float((offloaded - reference).abs().max()))
        del offload

    # Half precision: finite, and no further from fp32 than the base model alone is (identity off) — random
    # tiny weights amplify rounding, so the base model's own drift is the yardstick.
    for dtype in (torch.float16, torch.bfloat16) if args.device == "cuda" else (torch.bfloat16,):
        half = load(args.fixtures, dtype).to(args.device)
        latents = run_case(half, args.fixtures, case)
        base = run_case(half, args.fixtures, {**case, "controlnet_conditioning_scale": 0.0, "ip_adapter_scale": 0.0})
        check(f"{str(dtype).split('.')[-1]}_runs", torch.isfinite(latents).all().item(),
              max_abs_diff_vs_fp32=float((latents - reference).abs().max()),
              base_model_alone_diff_vs_fp32=float((base - no_identity).abs().max()))
        del half
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results["device"] = {"name": gpu, "torch": torch.__version__,
                         "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    print("failed:", failed or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
