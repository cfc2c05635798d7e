"""Proof that training learns identity: held-out denoising loss before / after, right vs wrong identity.

A synthetic data set (``instantid.training.synthetic``) draws faces whose colours and proportions belong to
an identity, at random pose, position and scale, all with the same caption; each identity has a fixed random
embedding (plus per-image noise). Only the embedding tells the model which colours to denoise towards, so
after training the held-out loss must be lower with the right identity's embedding than with a wrong one's.

The tiny random-weight SDXL-shaped stack (``instantid.tiny``) is the frozen base; the face adapter and
IdentityNet train from scratch with the real trainer. Held-out images are unseen poses of the same people;
each is scored with fixed noise and timesteps (the same draws for every condition).

    OMP_NUM_THREADS=2 python benchmarks/train_proof.py [--steps 600]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instantid.tiny import TinyConfig, build_tiny_instantid
from instantid.training.config import TrainConfig
from instantid.training.data import FaceDataset, collate
from instantid.training.model import build_modules, diffusion_loss
from instantid.training.synthetic import SPACE, make_identities, write_synthetic_dataset
from instantid.training.trainer import main

RESULTS = Path(__file__).resolve().parent / "results" / "train_proof.json"


def _unit_latent_scale(base: Path, dataset: FaceDataset) -> float:
    """Set the tiny VAE's scaling factor so latents have unit variance, as SD's 0.18215 / SDXL's 0.13025 do
    for theirs; a random VAE's raw latents are tiny next to unit noise and would hide the image content."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    batch = collate([dataset[i] for i in range(min(64, len(dataset)))])
    with torch.no_grad():
        std = float(vae.encode(batch["pixel_values"]).latent_dist.mean.std())
    path = base / "vae" / "config.json"
    config = json.loads(path.read_text())
    config["scaling_factor"] = 1.0 / std
    path.write_text(json.dumps(config, indent=2))
    return 1.0 / std


def held_out_losses(modules, dataset: FaceDataset, identities, wrong_shift: int, seeds: int, res: int) -> dict:
    """Mean denoising loss over held-out images x ``seeds`` fixed (noise, timestep) draws, per condition."""
    sums = {"right identity": [], "wrong identity": [], "zero embedding": []}
    for i in range(len(dataset)):
        record = dataset.records[i]
        batch = collate([dataset[i]])
        wrong = identities[(record["identity"] + wrong_shift) % len(identities)].embedding
        variants = {
            "right identity": batch["embedding"],
            "wrong identity": torch.from_numpy(wrong)[None],
            "zero embedding": torch.zeros_like(batch["embedding"]),
        }
        for name, emb in variants.items():
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(seed)
                with torch.no_grad():
                    loss = diffusion_loss(modules, {**batch, "embedding": emb}, generator, res)
                sums[name].append(float(loss))
    return {k: float(np.mean(v)) for k, v in sums.items()}


def run(steps: int, identities_count: int, train_per_id: int, test_per_id: int, res: int, seeds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="instantid-train-proof-"))
    dim = 128
    release = build_tiny_instantid(work / "tiny", TinyConfig(embedding_dim=dim, embedding_space=SPACE))
    identities = make_identities(identities_count, dim, seed=0)
    write_synthetic_dataset(work / "train", identities, train_per_id, res, seed=1)
    write_synthetic_dataset(work / "held_out", identities, test_per_id, res, seed=2)
    train_set = FaceDataset(work / "train", res, SPACE, dim)
    held_out = FaceDataset(work / "held_out", res, SPACE, dim)
    scale = _unit_latent_scale(release / "base", train_set)

    config = TrainConfig(
        data_dir=str(work / "train"), output_dir=str(work / "run"), resolution=res,
        pretrained_model=str(release / "base"), resampler_width=128, embedding_space=SPACE, embedding_dim=dim,
        train_batch_size=8, max_train_steps=steps, learning_rate=1e-3, lr_scheduler="constant_with_warmup",
        lr_warmup_steps=20, checkpointing_steps=steps, validation_steps=0, dataloader_num_workers=0,
    )
    before = build_modules(config)
    start = time.perf_counter()
    loss_before = held_out_losses(before, held_out, identities, 1, seeds, res)
    eval_s = time.perf_counter() - start
    del before

    start = time.perf_counter()
    result = main(config)
    train_s = time.perf_counter() - start
    after = build_modules(config)
    after.net.load_trainable(Path(config.output_dir) / f"checkpoint-{steps}")
    loss_after = held_out_losses(after, held_out, identities, 1, seeds, res)
    curve = [result["losses"][s] for s in sorted(result["losses"])]
    window = max(1, len(curve) // 10)
    return {
        "setup": {
            "identities": identities_count, "train_images": len(train_set), "held_out_images": len(held_out),
            "resolution": res, "embedding_dim": dim, "steps": steps, "batch": config.train_batch_size,
            "learning_rate": config.learning_rate, "draws_per_image": seeds, "vae_scaling_factor": scale,
            "config": dataclasses.asdict(config) | {"data_dir": "<tmp>", "output_dir": "<tmp>",
                                                    "pretrained_model": "<tmp tiny>"},
        },
        "held_out_loss": {
            "before training (right identity)": loss_before["right identity"],
            "before training (wrong identity)": loss_before["wrong identity"],
            "after training, right identity": loss_after["right identity"],
            "after training, wrong identity": loss_after["wrong identity"],
            "after training, zero embedding": loss_after["zero embedding"],
        },
        "train_loss_first_10pct": float(np.mean(curve[:window])),
        "train_loss_last_10pct": float(np.mean(curve[-window:])),
        "train_seconds": train_s,
        "eval_seconds_per_condition_set": eval_s,
        "torch_threads": torch.get_num_threads(),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--train-per-id", type=int, default=16)
    parser.add_argument("--test-per-id", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--draws", type=int, default=4, help="fixed (noise, timestep) draws per held-out image")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    report = run(args.steps, args.identities, args.train_per_id, args.test_per_id, args.resolution, args.draws)
    losses = report["held_out_loss"]
    print(f"\n{'held-out denoising loss (eps MSE)':<40} {'value':>10}")
    for name, value in losses.items():
        print(f"{name:<40} {value:>10.4f}")
    right = losses["after training, right identity"]
    print(f"\nright vs before: {right / losses['before training (right identity)']:.3f}x   "
          f"right vs wrong: {right / losses['after training, wrong identity']:.3f}x   "
          f"train loss {report['train_loss_first_10pct']:.4f} -> {report['train_loss_last_10pct']:.4f}   "
          f"({report['train_seconds']:.0f} s training)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main_cli()
