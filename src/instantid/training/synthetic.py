"""A procedurally drawn face data set whose identity lives only in the face embedding.

For proving that training learns identity (``benchmarks/train_proof.py``) and for tests. Each identity owns
the colours of the whole picture: its background, skin, hair, eyes and mouth. Every identity has the same
face geometry, so the keypoints (pose: position, scale, roll) say nothing about who it is; every image has
the same caption; each identity has a fixed random embedding (plus a little per-image noise, as a real face
model gives). So the only way to know an identity's appearance is its embedding.

Why the whole picture: with a grey background and a face a third of the picture wide, a wrong identity
changes a minority of the pixels, and the denoiser can read much of it back from the noisy input; and an
earlier version gave each identity its own eye spacing and mouth width, which the keypoint picture shows, so
IdentityNet could tell identities apart without the embedding.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from instantid.training.data import MANIFEST, collate, make_record

CAPTION = "a photo of a person"
SPACE = "synthetic"
EYE_SPACING = 0.42  # half distance between the eyes, as a fraction of the face half-width (same for everyone)
MOUTH_WIDTH = 0.35  # half mouth width, as a fraction of the face half-width (same for everyone)
PARTS = ("background", "skin", "hair", "eyes", "mouth")


@dataclass(frozen=True)
class SyntheticIdentity:
    background: np.ndarray  # (G, G, 3) uint8: the colours of a G x G grid of cells filling the frame
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    mouth: tuple[int, int, int]
    embedding: np.ndarray  # (D,) float32


def make_identities(
    count: int, dim: int, seed: int = 0, min_distance: float = 0.0, grid: int = 4
) -> list[SyntheticIdentity]:
    """``count`` identities with random colours and embeddings.

    ``min_distance`` (RGB units) keeps identities apart: each new identity's background, skin and hair are at
    least that far from every earlier identity's same part (and its skin from its own background), so a wrong
    identity is visibly wrong. Raises ``ValueError`` when the colours cannot be placed that far apart."""
    rng = np.random.default_rng(seed)
    chosen: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        for _attempt in range(10_000):
            colours = {part: rng.integers(20, 236, size=3) for part in PARTS[1:]}
            colours["background"] = rng.integers(20, 236, size=(grid, grid, 3))
            apart = all(
                _distance(colours[p], other[p]) >= min_distance
                for other in chosen for p in ("background", "skin", "hair")
            )
            if apart and _distance(colours["background"], colours["skin"]) >= min_distance:
                chosen.append(colours)
                break
        else:
            raise ValueError(f"cannot place {count} identities {min_distance} RGB units apart")
    return [
        SyntheticIdentity(
            background=c["background"].astype(np.uint8), **{p: tuple(int(v) for v in c[p]) for p in PARTS[1:]},
            embedding=rng.standard_normal(dim).astype(np.float32),
        )
        for c in chosen
    ]


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean RGB distance between two colours or colour grids (a colour is compared with every cell)."""
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1).mean())


def draw_face(
    identity: SyntheticIdentity, size: int, rng: np.random.Generator, face_scale: tuple[float, float] = (0.2, 0.32)
) -> tuple[Image.Image, np.ndarray, tuple[float, float, float, float]]:
    """One picture of ``identity`` at a random pose; returns (RGB image, keypoints (5, 2), face box).

    The face's half-width is drawn from ``face_scale`` (fractions of the image size)."""
    canvas = np.ascontiguousarray(cv2.resize(identity.background, (size, size), interpolation=cv2.INTER_NEAREST))
    half_w = size * rng.uniform(*face_scale)
    half_h = half_w * 1.3
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    roll = rng.uniform(-25, 25)
    r = math.radians(roll)

    def at(dx: float, dy: float) -> tuple[float, float]:
        """A point given in the face's own frame (units of half-width), rotated by the roll."""
        x, y = dx * half_w, dy * half_w
        return cx + x * math.cos(r) - y * math.sin(r), cy + x * math.sin(r) + y * math.cos(r)

    def ipt(p: tuple[float, float]) -> tuple[int, int]:
        return int(round(p[0])), int(round(p[1]))

    axes = (int(half_w), int(half_h))
    cv2.ellipse(canvas, ipt(at(0, -0.35)), (int(half_w * 1.15), int(half_h * 0.95)), roll, 180, 360, identity.hair, -1)
    cv2.ellipse(canvas, ipt((cx, cy)), axes, roll, 0, 360, identity.skin, -1)
    eye_r = max(1, int(half_w * 0.14))
    left_eye, right_eye = at(-EYE_SPACING, -0.35), at(EYE_SPACING, -0.35)
    nose = at(0, 0.15)
    mouth_l, mouth_r = at(-MOUTH_WIDTH, 0.6), at(MOUTH_WIDTH, 0.6)
    for eye in (left_eye, right_eye):
        cv2.circle(canvas, ipt(eye), eye_r, identity.eyes, -1)
    cv2.circle(canvas, ipt(nose), max(1, eye_r // 2), tuple(c // 2 for c in identity.skin), -1)
    cv2.line(canvas, ipt(mouth_l), ipt(mouth_r), identity.mouth, max(1, int(half_w * 0.12)))
    kps = np.array([left_eye, right_eye, nose, mouth_l, mouth_r], dtype=np.float32)
    extent = math.hypot(half_w, half_h)
    bbox = (cx - extent, cy - extent, cx + extent, cy + extent)
    return Image.fromarray(canvas), kps, bbox


def write_synthetic_dataset(
    root: str | Path, identities: list[SyntheticIdentity], per_identity: int, size: int, seed: int = 0,
    embedding_noise: float = 0.05, face_scale: tuple[float, float] = (0.2, 0.32),
) -> list[dict]:
    """Write ``per_identity`` pictures of each identity as a prepared data folder; returns the records."""

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for ident_index, identity in enumerate(identities):
        for i in range(per_identity):
            image, kps, bbox = draw_face(identity, size, rng, face_scale)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            emb = identity.embedding + embedding_noise * rng.standard_normal(identity.embedding.shape)
            record = make_record(
                root, f"id{ident_index:03d}/{i:04d}", buffer.getvalue(), ".png", CAPTION, emb.astype(np.float32),
                SPACE, kps, bbox, 1.0, image.size,
            )
            record["identity"] = ident_index
            records.append(record)
    with (root / MANIFEST).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return records


def make_vae_like_trained(base: Path, dataset: torch.utils.data.Dataset) -> dict:
    """Give the tiny random VAE the two properties of a trained one that training relies on.

    1. Latents of unit variance: the scaling factor is set from the data, as SD's 0.18215 / SDXL's 0.13025
       are for theirs (a random VAE's raw latents are tiny next to unit noise and would hide the content).
    2. A near-deterministic posterior: a random VAE's posterior std (~1 in raw units) is ~6x the spread of its
       means, so ``latent_dist.sample()`` (what the trainer encodes with, as diffusers' scripts do) would be
       mostly VAE noise and there would be no image, let alone an identity, to learn. A trained VAE's logvar
       is very negative; here the logvar half of ``quant_conv`` is set to the clamp value -30 (std ~3e-7).
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    batch = collate([dataset[i] for i in range(min(64, len(dataset)))])
    with torch.no_grad():
        dist = vae.encode(batch["pixel_values"]).latent_dist
        mean_std, random_posterior_std = float(dist.mean.std()), float(dist.std.mean())
        channels = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -30.0
    vae.register_to_config(scaling_factor=1.0 / mean_std)
    vae.save_pretrained(base / "vae")
    return {"scaling_factor": 1.0 / mean_std,
            "random_vae_posterior_std_over_mean_spread": random_posterior_std / mean_std}
