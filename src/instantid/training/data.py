"""The prepared training set on disk, and the Dataset that turns it into training examples.

``instantid prepare`` writes one of two layouts: webdataset tar shards (``--shard``, many processes; see
:mod:`instantid.training.shards`), read in place, or this folder (one process; the synthetic proof writes it
too)::

    data_dir/manifest.jsonl     one kept record per line (see :func:`make_record`)
    data_dir/rejects.jsonl      one dropped source per line: {"key", "reason", "detail"}
    data_dir/summary.json       kept / dropped counts by reason
    data_dir/images/<stem>.<ext>        a byte copy of the source image
    data_dir/embeddings/<stem>.npy      the face embedding, float32 (D,)

Training uses the full image (not a face crop), as the paper does; keypoints are in source-image pixels and
are moved with the resize and crop so the keypoint picture is drawn at training resolution.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from instantid.core.keypoints import draw_kps
from instantid.errors import EmbeddingSpaceError, InvalidInputError
from instantid.faces.images import load_image

MANIFEST = "manifest.jsonl"
REJECTS = "rejects.jsonl"
SUMMARY = "summary.json"


def record_stem(key: str) -> str:
    """A file-name-safe, collision-free stem for a source key (readable prefix + hash)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._")[:80]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def face_record(
    key: str, caption: str, embedding: np.ndarray, space: str, kps: np.ndarray, bbox: tuple[float, ...],
    score: float, size: tuple[int, int],
) -> dict[str, Any]:
    """What training needs to know about one kept example besides its pixels (JSON-able)."""
    return {
        "key": key,
        "space": space,
        "embedding_dim": int(np.asarray(embedding).size),
        "caption": caption,
        "kps": [[float(x), float(y)] for x, y in np.asarray(kps).reshape(5, 2)],
        "bbox": [float(v) for v in bbox],
        "score": float(score),
        "width": int(size[0]),
        "height": int(size[1]),
    }


def make_record(
    root: Path, key: str, image_bytes: bytes, suffix: str, caption: str, embedding: np.ndarray, space: str,
    kps: np.ndarray, bbox: tuple[float, ...], score: float, size: tuple[int, int],
) -> dict[str, Any]:
    """Write the image copy and the embedding of one kept example; return its manifest line.

    Files are written before the manifest line exists, so a manifest line always has its files (resume).
    """
    stem = record_stem(key)
    image_rel = f"images/{stem}{suffix.lower()}"
    emb_rel = f"embeddings/{stem}.npy"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "embeddings").mkdir(parents=True, exist_ok=True)
    (root / image_rel).write_bytes(image_bytes)
    np.save(root / emb_rel, np.asarray(embedding, dtype=np.float32).reshape(-1))
    return {"image": image_rel, "embedding": emb_rel,
            **face_record(key, caption, embedding, space, kps, bbox, score, size)}


def read_manifest(root: str | Path) -> list[dict[str, Any]]:
    """All kept records of a prepared data folder: its manifest, or else the records of its tar shards
    (``instantid prepare --shard``; any webdataset tar whose samples carry our JSON record)."""
    from instantid.training.shards import read_jsonl, read_tar_index

    root = Path(root)
    if (root / MANIFEST).is_file():
        return list(read_jsonl(root / MANIFEST))
    tars = sorted(root.glob("*.tar")) if root.is_dir() else []
    if not tars:
        raise InvalidInputError(
            f"{root} has no {MANIFEST} and no .tar shards: prepare the data first with `instantid prepare`"
        )
    return [record for tar in tars for record in read_tar_index(tar)]


def resize_and_crop(
    image: Image.Image, kps: np.ndarray, resolution: int
) -> tuple[Image.Image, np.ndarray, tuple[int, int]]:
    """Short side to ``resolution``, centre crop to a square; keypoints follow. Returns the crop's (top, left)."""
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    moved = np.asarray(kps, dtype=np.float64) * [new_w / w, new_h / h] - [left, top]
    return image, moved, (top, left)


class FaceDataset(torch.utils.data.Dataset):
    """Prepared records -> ``pixel_values`` (3, R, R) in [-1, 1], ``kps_image`` (3, R, R) in [0, 1],
    ``embedding`` (E,), ``caption``, ``original_size`` (h, w), ``crop_top_left`` (top, left)."""

    def __init__(self, root: str | Path, resolution: int, embedding_space: str, embedding_dim: int) -> None:
        self.root = Path(root)
        self.resolution = resolution
        self.records = read_manifest(self.root)
        if not self.records:
            raise InvalidInputError(f"{self.root / MANIFEST} has no records: nothing to train on")
        # The trainer's flags are named: they are what a user changes to train on this data.
        spaces = {r["space"] for r in self.records}
        dims = {r["embedding_dim"] for r in self.records}
        if len(spaces) > 1 or len(dims) > 1:
            raise EmbeddingSpaceError(
                f"the data in {self.root} mixes embeddings of {', '.join(sorted(spaces))} (sizes {sorted(dims)}): "
                "prepare it again with one --face-backend"
            )
        if spaces != {embedding_space} or dims != {embedding_dim}:
            (space,), (dim,) = spaces, dims
            raise EmbeddingSpaceError(
                f"the data in {self.root} holds {dim}-d {space} embeddings but training is set up for "
                f"--embedding-space {embedding_space} --embedding-dim {embedding_dim}: pass --embedding-space "
                f"{space} --embedding-dim {dim}, or prepare the data with the matching --face-backend"
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        # Decoded as face analysis decoded it (EXIF-upright RGB), so the keypoints sit on the same pixels.
        if "tar" in record:  # straight from the tar shard: one seek, nothing extracted
            from instantid.training.shards import read_member

            image = load_image(read_member(record), f"{record['tar']}:{record['key']}")
            embedding = np.asarray(record["embedding"], dtype=np.float32)
        else:
            image = load_image(self.root / record["image"])
            embedding = np.load(self.root / record["embedding"]).astype(np.float32)
        original_size = (image.height, image.width)
        image, kps, crop = resize_and_crop(image, np.asarray(record["kps"]), self.resolution)
        kps_image = draw_kps(image, kps)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        control = torch.from_numpy(np.asarray(kps_image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {
            "pixel_values": pixels,
            "kps_image": control,
            "embedding": torch.from_numpy(embedding),
            "caption": record["caption"],
            "original_size": torch.tensor(original_size),
            "crop_top_left": torch.tensor(crop),
        }


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; captions stay a list of strings."""
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0] if k != "caption"}
    batch["caption"] = [e["caption"] for e in examples]
    return batch
