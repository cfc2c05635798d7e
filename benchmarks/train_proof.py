"""Proof that training learns identity: held-out denoising loss before / after, right vs wrong identity.

A synthetic data set (``instantid.training.synthetic``): each identity owns the colours of the whole picture
(a grid of coloured cells filling the frame, and the skin, hair, eye and mouth colours of a face drawn on it);
the face geometry is the same for everyone and pose, position and scale are random, so the keypoint picture
says only the pose; every image has the same caption; each identity has a fixed random embedding (plus
per-image noise). Only the embedding tells the model which colours to denoise towards, so after training the
held-out loss must be lower with the right identity's embedding than with a wrong one's (or none).

Two phases, because InstantID trains on top of a *pretrained* SDXL and the tiny stack's base is random:

1. base pre-training (a small loop here): the tiny UNet alone (caption only, no face adapter) learns to denoise
   pictures of *other* identities (strangers), as SDXL denoises photos of people it never saw; it is then
   saved and frozen.
2. InstantID training with the real trainer (``instantid.training.trainer.main``): fresh face adapter
   (Resampler + decoupled cross-attention) and IdentityNet (a copy of the pretrained UNet, zero-initialised
   outputs) train on top of the frozen base, exactly as the paper's recipe does.

The tiny VAE is random too; its posterior is made near-deterministic and its latents unit-variance
(``make_vae_like_trained``), as a trained VAE's are. Without that, a random VAE's posterior std is ~6x the
spread of its means, so the latents the trainer samples are ~97% VAE noise: the first version of this proof
(random base, sampled latents) measured identical losses for right, wrong and zero embeddings.

Held-out images are unseen poses of the same identities. Each is scored with the same fixed noise at fixed
timesteps for every condition; the main number uses timesteps 300-700, where the image is neither visible
(t small: colours readable from x_t) nor gone (t large: eps ~ x_t); the full range is reported too.

    OMP_NUM_THREADS=2 python benchmarks/train_proof.py [--steps 2600] [--base-steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from instantid.io.tiny import TinyConfig, build_tiny_instantid
from instantid.training.config import TrainConfig
from instantid.training.data import FaceDataset, collate
from instantid.training.model import build_modules, encode_text, time_ids
from instantid.training.synthetic import SPACE, make_identities, make_vae_like_trained, write_synthetic_dataset
from instantid.training.trainer import main

RESULTS = Path(__file__).resolve().parent / "results" / "train_proof.json"
MID_TIMESTEPS = list(range(300, 701, 50))  # 9 timesteps: the range where identity decides the denoising
FULL_TIMESTEPS = list(range(50, 1000, 100))  # 10 timesteps over the whole schedule


def pretrain_base(base: Path, dataset: FaceDataset, steps: int, batch_size: int, lr: float, res: int) -> dict:
    """Phase 1: train the tiny UNet (no adapter, caption only) to denoise the synthetic images; save it in place."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    text = SimpleNamespace(
        tokenizers=tuple(CLIPTokenizer.from_pretrained(base, subfolder=s) for s in ("tokenizer", "tokenizer_2")),
        text_encoders=(CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
                       CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2")),
    )
    data = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        dist = vae.encode(data["pixel_values"]).latent_dist
        mean, std = dist.mean * vae.config.scaling_factor, dist.std * vae.config.scaling_factor
    prompt_embeds, pooled = encode_text(data["caption"][:1], text)
    tids = time_ids(data, res)
    gen = torch.Generator().manual_seed(1234)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    unet.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(dataset), (batch_size,), generator=gen)
        latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        pred = unet(
            scheduler.add_noise(latents, noise, t), t, prompt_embeds.expand(batch_size, -1, -1),
            added_cond_kwargs={"text_embeds": pooled.expand(batch_size, -1), "time_ids": tids[idx]},
        ).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    unet.save_pretrained(base / "unet")
    window = max(1, steps // 10)
    return {"loss_first_10pct": float(np.mean(losses[:window])), "loss_last_10pct": float(np.mean(losses[-window:]))}


class HeldOut:
    """Held-out latents, keypoint pictures and embeddings with fixed noise per (image, timestep)."""

    def __init__(self, modules, dataset: FaceDataset, identities, res: int, wrong_shifts: int) -> None:
        data = collate([dataset[i] for i in range(len(dataset))])
        vae = modules.vae
        with torch.no_grad():
            self.latents = (vae.encode(data["pixel_values"]).latent_dist.mean * vae.config.scaling_factor).float()
        self.kps = data["kps_image"]
        self.tids = time_ids(data, res)
        self.prompt_embeds, self.pooled = encode_text(data["caption"][:1], modules)
        ident = [r["identity"] for r in dataset.records]
        canon = [torch.from_numpy(i.embedding) for i in identities]
        self.embeddings = {"right identity": data["embedding"], "zero embedding": torch.zeros_like(data["embedding"])}
        for s in range(1, wrong_shifts + 1):
            self.embeddings[f"wrong identity +{s}"] = torch.stack([canon[(k + s) % len(canon)] for k in ident])
        gen = torch.Generator().manual_seed(99)
        timesteps = sorted(set(MID_TIMESTEPS + FULL_TIMESTEPS))
        self.noise = {t: torch.randn(self.latents.shape, generator=gen) for t in timesteps}

    def loss(self, modules, embedding: torch.Tensor, timesteps: list[int], batch: int = 64) -> float:
        """Mean eps-MSE over held-out images x ``timesteps`` (the same noise for every condition)."""
        return float(np.mean(list(self.per_timestep(modules, embedding, timesteps, batch).values())))

    @torch.no_grad()
    def per_timestep(self, modules, embedding: torch.Tensor, timesteps: list[int], batch: int = 64) -> dict:
        """``{t: mean eps-MSE over held-out images}``."""
        return {t: float(v.mean()) for t, v in self.per_image(modules, embedding, timesteps, batch).items()}

    @torch.no_grad()
    def per_image(self, modules, embedding: torch.Tensor, timesteps: list[int], batch: int = 64) -> dict:
        """``{t: (N,) eps-MSE of each held-out image}``."""
        n = self.latents.shape[0]
        out = {}
        for t in timesteps:
            total = []
            steps = torch.full((n,), t)
            noisy = modules.noise_scheduler.add_noise(self.latents, self.noise[t], steps)
            for s in range(0, n, batch):
                sl = slice(s, min(n, s + batch))
                b = sl.stop - sl.start
                pred = modules.net(
                    noisy[sl], steps[sl], self.prompt_embeds.expand(b, -1, -1), self.pooled.expand(b, -1),
                    self.tids[sl], embedding[sl], self.kps[sl],
                )
                total.append(F.mse_loss(pred, self.noise[t][sl], reduction="none").mean(dim=(1, 2, 3)))
            out[t] = torch.cat(total)
        return out

    def all_losses(self, modules, names: list[str] | None = None) -> dict:
        out = {}
        for name, emb in self.embeddings.items():
            if names is None or name in names:
                out[name] = {"mid": self.loss(modules, emb, MID_TIMESTEPS),
                             "full": self.loss(modules, emb, FULL_TIMESTEPS)}
        wrong = [v for k, v in out.items() if k.startswith("wrong")]
        if wrong:
            out["wrong identity"] = {r: float(np.mean([w[r] for w in wrong])) for r in ("mid", "full")}
        return out


def embedding_sensitivity(modules, held: HeldOut) -> dict:
    """Direct forward check that the embedding reaches the output: RMS change of the prediction (t=500)."""
    n = min(32, held.latents.shape[0])
    steps = torch.full((n,), 500)
    noisy = modules.noise_scheduler.add_noise(held.latents[:n], held.noise[500][:n], steps)

    def pred(emb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return modules.net(noisy, steps, held.prompt_embeds.expand(n, -1, -1), held.pooled.expand(n, -1),
                               held.tids[:n], emb[:n], held.kps[:n])

    right = pred(held.embeddings["right identity"])
    return {
        "prediction_rms": float(right.pow(2).mean().sqrt()),
        "rms_change_right_vs_wrong": float((right - pred(held.embeddings["wrong identity +1"])).pow(2).mean().sqrt()),
        "rms_change_right_vs_zero": float((right - pred(held.embeddings["zero embedding"])).pow(2).mean().sqrt()),
    }


def run(args: argparse.Namespace) -> dict:
    start_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="instantid-train-proof-"))
    dim, res = 128, args.resolution
    release = build_tiny_instantid(work / "tiny", TinyConfig(embedding_dim=dim, embedding_space=SPACE))
    identities = make_identities(args.identities, dim, seed=0, min_distance=args.min_distance)
    scale = tuple(args.face_scale)
    write_synthetic_dataset(work / "train", identities, args.train_per_id, res, seed=1, face_scale=scale)
    write_synthetic_dataset(work / "held_out", identities, args.test_per_id, res, seed=2, face_scale=scale)
    # The base is pre-trained on *other* people (as SDXL never saw the user): it learns what such pictures
    # look like, not the colours of the identities InstantID is then trained and tested on.
    strangers = make_identities(args.base_identities, dim, seed=3)
    write_synthetic_dataset(work / "base", strangers, args.base_per_id, res, seed=4, face_scale=scale)
    train_set = FaceDataset(work / "train", res, SPACE, dim)
    held_set = FaceDataset(work / "held_out", res, SPACE, dim)
    base_set = FaceDataset(work / "base", res, SPACE, dim)
    vae_report = make_vae_like_trained(release / "base", base_set)

    config = TrainConfig(
        data_dir=str(work / "train"), output_dir=str(work / "run"), resolution=res,
        pretrained_model=str(release / "base"), resampler_width=128, embedding_space=SPACE, embedding_dim=dim,
        train_batch_size=args.batch, max_train_steps=args.steps, learning_rate=args.lr,
        lr_scheduler="cosine", lr_warmup_steps=20, text_dropout=0.0, face_dropout=0.05, snr_gamma=args.snr_gamma,
        checkpointing_steps=args.steps, validation_steps=0, dataloader_num_workers=0,
    )
    timings = {}
    raw = build_modules(config)  # random base, fresh adapter + IdentityNet: context only
    held = HeldOut(raw, held_set, identities, res, args.wrong_shifts)
    raw_loss = held.loss(raw, held.embeddings["right identity"], MID_TIMESTEPS)
    del raw

    start = time.perf_counter()
    base_report = pretrain_base(release / "base", base_set, args.base_steps, args.base_batch, args.base_lr, res)
    timings["phase 1 base pre-training"] = time.perf_counter() - start

    before = build_modules(config)  # pretrained frozen base, fresh adapter + IdentityNet
    start = time.perf_counter()
    loss_before = held.all_losses(before, ["right identity", "zero embedding", "wrong identity +1"])
    sens_before = embedding_sensitivity(before, held)
    timings["evaluation before"] = time.perf_counter() - start
    del before

    start = time.perf_counter()
    result = main(config)
    timings["phase 2 InstantID training (real trainer)"] = time.perf_counter() - start
    after = build_modules(config)
    after.net.load_trainable(Path(config.output_dir) / f"checkpoint-{args.steps}")
    start = time.perf_counter()
    loss_after = held.all_losses(after)
    sens_after = embedding_sensitivity(after, held)
    timings["evaluation after"] = time.perf_counter() - start
    all_t = sorted(set(MID_TIMESTEPS + FULL_TIMESTEPS))
    by_t = {name: held.per_timestep(after, held.embeddings[name], all_t)
            for name in ("right identity", "wrong identity +1", "zero embedding")}
    # Paired per image (same noise, same timesteps): how often does the right embedding beat a wrong one?
    per_image = {name: torch.stack(list(held.per_image(after, held.embeddings[name], MID_TIMESTEPS).values())).mean(0)
                 for name in held.embeddings}
    wrong_names = [k for k in per_image if k.startswith("wrong identity +")]
    wins = torch.stack([per_image["right identity"] < per_image[k] for k in wrong_names]).float().mean()
    beats_zero = float((per_image["right identity"] < per_image["zero embedding"]).float().mean())
    curve = [result["losses"][s] for s in sorted(result["losses"])]
    window = max(1, len(curve) // 10)
    timings["total"] = time.perf_counter() - start_all

    table = {
        "(a) before InstantID training, right identity": loss_before["right identity"],
        "(b) after training, right identity": loss_after["right identity"],
        "(c) after training, wrong identity": loss_after["wrong identity"],
        "after training, zero embedding": loss_after["zero embedding"],
        "before InstantID training, wrong identity": loss_before["wrong identity"],
    }
    a, b, c = (table[k] for k in list(table)[:3])
    return {
        "design": "phase 1: tiny base UNet pre-trained (caption only) on pictures of other identities, then frozen; "
                  "phase 2: fresh face adapter + IdentityNet trained on top with instantid.training.trainer.main",
        "setup": {
            "identities": args.identities, "min_colour_distance": args.min_distance,
            "base_identities": args.base_identities, "base_images": len(base_set),
            "train_images": len(train_set), "held_out_images": len(held_set),
            "resolution": res, "face_scale": list(scale), "latent": list(held.latents.shape[1:]), "embedding_dim": dim,
            "base_steps": args.base_steps, "base_batch": args.base_batch, "base_lr": args.base_lr,
            "steps": args.steps, "batch": config.train_batch_size, "learning_rate": config.learning_rate,
            "mid_timesteps": MID_TIMESTEPS, "full_timesteps": FULL_TIMESTEPS,
            "wrong_identity": f"mean over the next {args.wrong_shifts} identities' embeddings",
            "vae": vae_report,
            "config": dataclasses.asdict(config) | {"data_dir": "<tmp>", "output_dir": "<tmp>",
                                                    "pretrained_model": "<tmp tiny, phase-1 base>"},
        },
        "held_out_loss": table,
        "ratios_mid": {"b/a": b["mid"] / a["mid"], "b/c": b["mid"] / c["mid"]},
        "ratios_full": {"b/a": b["full"] / a["full"], "b/c": b["full"] / c["full"]},
        "wrong_identity_by_shift": {k: v for k, v in loss_after.items() if k.startswith("wrong identity +")},
        "after_training_by_timestep": by_t,
        "right_beats_wrong_fraction_mid": float(wins),
        "right_beats_zero_fraction_mid": beats_zero,
        "random_base_loss_mid": raw_loss,
        "base_pretraining": base_report,
        "embedding_sensitivity_t500": {"before": sens_before, "after": sens_after},
        "train_loss_first_10pct": float(np.mean(curve[:window])),
        "train_loss_last_10pct": float(np.mean(curve[-window:])),
        "seconds": timings,
        "torch_threads": torch.get_num_threads(),
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2600, help="phase 2 (InstantID) optimizer steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--snr-gamma", type=float, default=1.0, help="Min-SNR loss weighting of phase 2 (0: off)")
    parser.add_argument("--base-steps", type=int, default=300, help="phase 1 (base UNet) optimizer steps")
    parser.add_argument("--base-batch", type=int, default=16)
    parser.add_argument("--base-lr", type=float, default=2e-3)
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--min-distance", type=float, default=90.0,
                        help="RGB distance kept between identities' background, skin and hair colours")
    parser.add_argument("--base-identities", type=int, default=64, help="other people the base is pre-trained on")
    parser.add_argument("--base-per-id", type=int, default=2)
    parser.add_argument("--train-per-id", type=int, default=64)
    parser.add_argument("--test-per-id", type=int, default=4)
    parser.add_argument("--wrong-shifts", type=int, default=7, help="wrong identities averaged per held-out image")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON report goes")
    parser.add_argument("--face-scale", type=float, nargs=2, default=(0.2, 0.3),
                        help="face half-width range, as fractions of the image size")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    args.snr_gamma = args.snr_gamma or None
    report = run(args)
    print(f"\n{report['design']}")
    losses = report["held_out_loss"]
    print(f"\n{'held-out denoising loss (eps MSE)':<48} {'t 300-700':>10} {'t 50-950':>10}")
    for name, value in losses.items():
        print(f"{name:<48} {value['mid']:>10.4f} {value['full']:>10.4f}")
    for key, label in (("b/a", "(b)/(a) after right / before"), ("b/c", "(b)/(c) after right / after wrong")):
        print(f"{label:<48} {report['ratios_mid'][key]:>10.3f} {report['ratios_full'][key]:>10.3f}")
    by_t = report["after_training_by_timestep"]
    shown = (50, 150, 300, 500, 700, 850, 950)
    print("(b)/(c) per timestep (wrong = next identity): " + ", ".join(
        f"t={t} {by_t['right identity'][t] / by_t['wrong identity +1'][t]:.3f}" for t in shown
    ))
    pairs = report["setup"]["held_out_images"] * args.wrong_shifts
    print(f"held-out image x wrong identity pairs where the right embedding has the lower loss, t 300-700: "
          f"{100 * report['right_beats_wrong_fraction_mid']:.1f}% of {pairs} (vs zero embedding: "
          f"{100 * report['right_beats_zero_fraction_mid']:.1f}% of {report['setup']['held_out_images']} images)")
    sens = report["embedding_sensitivity_t500"]
    print(f"\nprediction change right->wrong embedding (RMS, t=500): before "
          f"{sens['before']['rms_change_right_vs_wrong']:.4f}, after {sens['after']['rms_change_right_vs_wrong']:.4f}")
    print(f"base pre-training loss {report['base_pretraining']['loss_first_10pct']:.4f} -> "
          f"{report['base_pretraining']['loss_last_10pct']:.4f}; InstantID train loss "
          f"{report['train_loss_first_10pct']:.4f} -> {report['train_loss_last_10pct']:.4f}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main_cli()
