"""A procedurally drawn face data set whose identity lives only in the face embedding.

For proving that training learns identity (``benchmarks/train_proof.py``) and for tests: each identity has
its own skin, hair, eye and mouth colours and face proportions, and a fixed random embedding (with a little
per-image noise, as a real face model gives). Every image gets the same caption, and pose, position and
scale are random, so the colours can only be recovered from the embedding, and the keypoints vary.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instantid.training.data import MANIFEST, make_record

CAPTION = "a photo of a person"
SPACE = "synthetic"


@dataclass(frozen=True)
class SyntheticIdentity:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    mouth: tuple[int, int, int]
    eye_spacing: float  # half distance between the eyes, as a fraction of the face half-width
    mouth_width: float  # half mouth width, as a fraction of the face half-width
    embedding: np.ndarray  # (D,) float32


def make_identities(count: int, dim: int, seed: int = 0) -> list[SyntheticIdentity]:
    rng = np.random.default_rng(seed)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(20, 236, size=3))

    return [
        SyntheticIdentity(
            skin=colour(), hair=colour(), eyes=colour(), mouth=colour(),
            eye_spacing=float(rng.uniform(0.3, 0.55)), mouth_width=float(rng.uniform(0.2, 0.5)),
            embedding=rng.standard_normal(dim).astype(np.float32),
        )
        for _ in range(count)
    ]


def draw_face(
    identity: SyntheticIdentity, size: int, rng: np.random.Generator, face_scale: tuple[float, float] = (0.2, 0.32)
) -> tuple[Image.Image, np.ndarray, tuple[float, float, float, float]]:
    """One picture of ``identity`` at a random pose; returns (RGB image, keypoints (5, 2), face box).

    The face's half-width is drawn from ``face_scale`` (fractions of the image size); larger faces make the
    identity's colours a larger share of the picture."""
    canvas = np.full((size, size, 3), 128, dtype=np.uint8)
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
    left_eye, right_eye = at(-identity.eye_spacing, -0.35), at(identity.eye_spacing, -0.35)
    nose = at(0, 0.15)
    mouth_l, mouth_r = at(-identity.mouth_width, 0.6), at(identity.mouth_width, 0.6)
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
