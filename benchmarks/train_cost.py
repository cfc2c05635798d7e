"""Training cost: measured steps/s and peak memory of the tiny stack, and an estimate for full SDXL.

Measured: the real trainer step (``diffusion_loss`` + backward + AdamW) on the tiny random-weight stack at
64 px; peak memory is the process' peak RSS on CPU (``torch.cuda.max_memory_allocated`` on a GPU).

Estimated: full SDXL is built on the ``meta`` device (no weights, no memory) from SDXL-base's published
UNet config, so the trainable parameter counts are exact; memory for mixed-precision AdamW follows

    trained params x 16 B (fp32 weight 4 + fp32 grad 4 + Adam m, v 8)  +  frozen params x 2 B (bf16)

plus activations, which the estimate does not model (see the printed note).

    OMP_NUM_THREADS=2 python benchmarks/train_cost.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "train_cost.json"
# SDXL-base-1.0's UNet sizes, shared with the speed benchmark.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import SDXL_UNET  # noqa: E402

PAPER_GPUS, PAPER_BATCH = 48, 2
TEXT_ENCODERS_PARAMS = 123_060_480 + 694_659_840  # CLIP ViT-L text + OpenCLIP bigG text (with projection)
VAE_PARAMS = 83_653_863


def measure_tiny(steps: int, batch: int) -> dict:
    """Seconds per optimizer step and peak memory of the real training step on the tiny stack."""
    from instantid.io.tiny import TinyConfig, build_tiny_instantid
    from instantid.training.config import TrainConfig
    from instantid.training.data import FaceDataset, collate
    from instantid.training.model import build_modules, cast_frozen, diffusion_loss, step_generator
    from instantid.training.synthetic import SPACE, make_identities, write_synthetic_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="instantid-train-cost-"))
    release = build_tiny_instantid(work / "tiny", TinyConfig(embedding_dim=128, embedding_space=SPACE))
    write_synthetic_dataset(work / "data", make_identities(4, 128), batch, 64)
    config = TrainConfig(data_dir=str(work / "data"), resolution=64, pretrained_model=str(release / "base"),
                         resampler_width=128, embedding_space=SPACE, embedding_dim=128)
    modules = build_modules(config)
    cast_frozen(modules, torch.float32, device, keep_vae_fp32=True)
    data = collate([FaceDataset(work / "data", 64, SPACE, 128)[i] for i in range(batch)])
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    params = modules.net.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(i: int) -> None:
        loss = diffusion_loss(modules, data, step_generator(0, i, 0), 64).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up: allocator, oneDNN / cuDNN kernel choice, Adam state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = (time.perf_counter() - start) / steps
    return {
        "device": str(device), "batch": batch, "resolution": 64, "steps_timed": steps,
        "seconds_per_step": seconds, "steps_per_second": 1 / seconds, "images_per_second": batch / seconds,
        "peak_memory_mib": peak, "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
        else "process peak RSS (includes Python, torch and the frozen models)",
        "trainable_params": sum(p.numel() for p in params),
        "frozen_params": sum(p.numel() for p in modules.net.parameters() if not p.requires_grad),
    }


def sdxl_estimate() -> dict:
    """Exact parameter counts of full-size SDXL + InstantID (meta device) and the memory formula."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from instantid.core.adapter import _cross_attention_layers

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        identitynet = ControlNetModel(**{k: v for k, v in SDXL_UNET.items()
                                         if k not in ("sample_size", "out_channels", "up_block_types")})
    width, depth, queries, emb, cross = 1280, 4, 16, 512, 2048
    resampler = (queries * width + emb * width + width + cross * width + cross + 2 * cross
                 + depth * (4 * width + 4 * width * width + 2 * width + 8 * width * width))
    layers = _cross_attention_layers(unet)
    ip = sum(2 * hidden * cross for _, _, hidden in layers)
    trained = resampler + ip + sum(p.numel() for p in identitynet.parameters())
    frozen = sum(p.numel() for p in unet.parameters()) + TEXT_ENCODERS_PARAMS + VAE_PARAMS
    gib = 2**30
    per_gpu = trained * 16 + frozen * 2
    return {
        "resampler_params": resampler,
        "ip_layers": len(layers),
        "ip_params": ip,
        "identitynet_params": trained - resampler - ip,
        "trainable_params": trained,
        "frozen_params (unet + text encoders + vae)": frozen,
        "formula": "trainable x 16 B (fp32 weight + fp32 grad + AdamW m, v) + frozen x 2 B (bf16), + activations",
        "weights_grads_optimizer_gib_per_gpu": per_gpu / gib,
        "with_8bit_adam_gib_per_gpu": (trained * 10 + frozen * 2) / gib,
        "global_batch": PAPER_GPUS * PAPER_BATCH,
        "note": "activations come on top: a 1024x1024 batch of 2 through the SDXL UNet + IdentityNet needs tens "
                "of GiB without gradient checkpointing; with --gradient_checkpointing it fits an 80 GB GPU.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tiny = measure_tiny(args.steps, args.batch)
    sdxl = sdxl_estimate()
    print(f"\n{'tiny stack (64 px)':<44} {'value':>16}")
    for key in ("device", "batch", "seconds_per_step", "steps_per_second", "peak_memory_mib", "trainable_params"):
        value = tiny[key]
        print(f"{key:<44} {value:>16.3f}" if isinstance(value, float) else f"{key:<44} {value!s:>16}")
    print(f"\n{'full SDXL InstantID (estimate)':<44} {'value':>16}")
    for key, value in sdxl.items():
        if isinstance(value, float):
            print(f"{key:<44} {value:>16.1f}")
        elif isinstance(value, int):
            print(f"{key:<44} {value:>16,}")
    print(f"formula: {sdxl['formula']}\nnote: {sdxl['note']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"tiny": tiny, "sdxl_estimate": sdxl}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
