"""An :class:`Identity`: who to draw (one fused face embedding) and how the face sits (pose face and size).

Surfaces build one Identity per request from the photos and hand it on; generation never re-opens photos.
Several photos of one person are fused into one embedding (the paper averages them):

* ``mean``: the plain average, as the published code does;
* ``weighted``: weighted by each photo's quality (detector score, face size, sharpness);
* ``robust``: photos whose embedding is far from the others' consensus (another person slipped into the set,
  a bad detection) are dropped and named, then the rest are weighted by quality. ``auto`` = robust for three or
  more photos (two cannot outvote each other), else mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import Field

from instantid.api.settings import FUSIONS
from instantid.errors import InvalidInputError
from instantid.faces import Face, FaceAnalyzer

# A face this many pixels wide (or more) counts as full quality; the recognisers work on 112-150 px crops.
# The weight of a person mixed in (Identity.mix), declared once: the HTTP body, the CLI's PHOTO:WEIGHT and the web
# UI's slider take its range, default and words from here, and check it with check_mix_weight.
MIX_WEIGHT_RANGE = (0, 1)
MIX_WEIGHT_DEFAULT = 0.3  # the web UI's starting value and the CLI's example
MIX_WEIGHT_HELP = "How much of the other person: 0 = this person, 1 = the other."
MixWeight = Annotated[float, Field(ge=MIX_WEIGHT_RANGE[0], le=MIX_WEIGHT_RANGE[1], description=MIX_WEIGHT_HELP)]


def check_mix_weight(weight: float, label: str = "mix weight") -> float:
    """``weight`` if it is in :data:`MIX_WEIGHT_RANGE`, else one :class:`InvalidInputError` line naming ``label``."""
    low, high = MIX_WEIGHT_RANGE
    if not low <= weight <= high:
        raise InvalidInputError(f"{label} must be between {low} and {high}, got {weight}")
    return weight

FULL_QUALITY_FACE_PX = 112.0
# Variance of the Laplacian of a sharp 8-bit face crop is in the hundreds; below this the crop is blurry.
SHARP_LAPLACIAN_VAR = 100.0


@dataclass(frozen=True)
class Reference:
    """One reference photo's face and what fusion made of it."""

    name: str  # file name or label, never a full path unless the caller gave one as the label
    face: Face
    quality: float  # 0..1: detector score x face size x sharpness terms
    weight: float = 0.0  # share in the fused embedding (0 when rejected)
    consensus_distance: float | None = None  # distance to the consensus of the set (robust fusion)
    rejected: str | None = None  # why it was left out, or None
    face_index: int = 0  # which face of the photo this is (0 = largest)
    faces_found: int = 1  # how many faces the photo holds
    # SHA-256 of the photo file's bytes (None for an in-memory picture): lets `instantid evaluate` find the
    # reference among photos it is given without any path being recorded; it says nothing about the face.
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "sha256": self.sha256, "face_index": self.face_index, "faces_found": self.faces_found,
            "quality": round(self.quality, 4), "weight": round(self.weight, 4),
            "consensus_distance": None if self.consensus_distance is None else round(self.consensus_distance, 4),
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class Identity:
    """One person ready to generate: fused embedding, pose face and the size of the photo it came from."""

    embedding: np.ndarray = field(repr=False)  # (E,) float32, fused over the kept references
    space: str  # embedding space, e.g. "antelopev2-512"
    pose_face: Face  # keypoints and box of the face whose pose the output takes
    pose_size: tuple[int, int]  # (width, height) of the photo pose_face is in
    references: tuple[Reference, ...]
    fusion: str  # the fusion that was applied: mean, weighted or robust
    pose_name: str = ""
    warnings: tuple[str, ...] = ()
    mixed_with: tuple[tuple[str, float], ...] = ()  # (name, weight) of identities mixed in
    # The photo the extra ControlNets' maps are made from (instantid.api.controls): the pose photo, else the first
    # face photo; None for an identity built by hand.
    control_photo: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def kept(self) -> tuple[Reference, ...]:
        return tuple(r for r in self.references if r.rejected is None)

    @property
    def rejected(self) -> tuple[Reference, ...]:
        return tuple(r for r in self.references if r.rejected is not None)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description recorded with every output."""
        return {
            "references": [r.name for r in self.references],
            "reference_details": [r.to_dict() for r in self.references],
            "rejected_references": [r.name for r in self.rejected],
            "fusion": self.fusion, "pose_from": self.pose_name, "embedding_space": self.space,
            "warnings": list(self.warnings),
            "mixed_with": [{"name": n, "weight": w} for n, w in self.mixed_with],
        }

    def mix(self, other: Identity, weight: float, name: str = "other") -> Identity:
        """Interpolate towards ``other`` (``weight`` 0 = self, 1 = other); pose stays this identity's."""
        check_mix_weight(weight)
        if other.space != self.space:
            raise InvalidInputError(f"cannot mix {self.space} and {other.space} embeddings")
        embedding = ((1 - weight) * self.embedding + weight * other.embedding).astype(np.float32)
        return replace(self, embedding=embedding, mixed_with=(*self.mixed_with, (name, float(weight))))


def face_quality(photo: Image.Image, face: Face) -> float:
    """0..1 quality of a detected face: detector confidence x face size x sharpness.

    Each term saturates at 1 for a good face so a set of good photos gets equal weights; a tiny, blurry or
    barely detected face gets less say in the fused identity.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, photo.width), min(y2, photo.height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    size = min(1.0, min(x2 - x1, y2 - y1) / FULL_QUALITY_FACE_PX)
    gray = np.asarray(photo.crop((x1, y1, x2, y2)).convert("L"), dtype=np.float32)
    lap = gray[1:-1, 1:-1] * -4 + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
    sharp = min(1.0, float(lap.var()) / SHARP_LAPLACIAN_VAR) if lap.size else 0.0
    # Detector scores are backend-specific (dlib's HOG margin, SCRFD's probability): squash to (0, 1].
    score = float(np.clip(face.score, 0.0, 1.0)) if face.score <= 1.0 else 1.0
    return float(max(size * max(sharp, 0.05) * max(score, 0.05), 1e-3))


def _weighted_mean(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights[:, None] * embeddings).sum(0) / weights.sum()


def fuse(
    analyzer: FaceAnalyzer, photos: Sequence[tuple[str, Image.Image, Face]], fusion: str = "auto",
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, tuple[Reference, ...], str, tuple[str, ...]]:
    """Fuse reference faces into one embedding; returns ``(embedding, references, fusion used, warnings)``.

    ``weights`` (one per photo) fixes the weights by hand and implies ``weighted``.
    """
    if not photos:
        raise InvalidInputError("give at least one face photo")
    if fusion not in FUSIONS:
        raise InvalidInputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    embeddings = np.stack([face.embedding for _, _, face in photos]).astype(np.float32)
    quality = np.array([face_quality(photo, face) for _, photo, face in photos], dtype=np.float64)
    if fusion == "auto":
        fusion = "robust" if len(photos) >= 3 else "mean"
    base = np.ones(len(photos)) if fusion == "mean" else quality
    if weights is not None:
        given = np.asarray(weights, dtype=np.float64).reshape(-1)
        if given.shape[0] != len(photos) or (given < 0).any() or given.sum() <= 0:
            raise InvalidInputError(f"need one non-negative weight per photo ({len(photos)}), with a positive sum")
        fusion, base = "weighted", given
    keep = np.ones(len(photos), dtype=bool)
    distances = np.full(len(photos), np.nan)
    warnings: list[str] = []
    if fusion == "robust" and len(photos) >= 3:
        distances, keep = _consensus(analyzer, embeddings)
    names = [name for name, _, _ in photos]
    if fusion != "robust" and len(photos) >= 2:
        # Not deciding, only telling: two photos that look like different people usually are a mistake.
        pairs = [
            f"{names[i]} / {names[j]} ({analyzer.distance(embeddings[i], embeddings[j]):.2f})"
            for i in range(len(photos)) for j in range(i + 1, len(photos))
            if not analyzer.is_same(embeddings[i], embeddings[j])
        ]
        if pairs:
            more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
            warnings.append(f"the reference photos look like different people: {', '.join(pairs[:3])}{more}; "
                            "use photos of one person, or fusion 'robust' to drop outliers")
    for i in np.flatnonzero(~keep):
        warnings.append(f"{names[i]} was left out: it looks like another person than the rest "
                        f"(distance {distances[i]:.2f} to their consensus)")
    used = np.where(keep, base, 0.0)
    shares = used / used.sum()
    fused = _weighted_mean(embeddings, used).astype(np.float32)
    references = tuple(
        Reference(
            name=names[i], face=photos[i][2], quality=float(quality[i]), weight=float(shares[i]),
            consensus_distance=None if np.isnan(distances[i]) else float(distances[i]),
            rejected=None if keep[i] else "outlier: far from the other photos' consensus",
        )
        for i in range(len(photos))
    )
    return fused, references, fusion, tuple(warnings)


def _consensus(analyzer: FaceAnalyzer, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the consensus and which photos to keep.

    The consensus is the medoid (the photo with the smallest summed distance to the others), which one
    stranger among several photos cannot drag towards themselves the way a mean is dragged. A photo is an
    outlier when it is not the same person as the consensus by the face model's own threshold; a majority
    is always kept, so a set of several different people degrades to weighted fusion with warnings.
    """
    n = len(embeddings)
    pairwise = np.array([[analyzer.distance(embeddings[i], embeddings[j]) for j in range(n)] for i in range(n)])
    medoid = int(pairwise.sum(1).argmin())
    distances = pairwise[medoid]
    keep = np.array([analyzer.is_same(embeddings[medoid], embeddings[i]) for i in range(n)])
    keep[medoid] = True
    if keep.sum() * 2 <= n:  # no majority agrees: do not guess who the "real" person is
        keep[:] = True
    return distances, keep


def everyone(people: Sequence[Identity]) -> dict[str, Any]:
    """The top-level reference fields of a group picture over every person (``people`` has each one's own)."""
    each = [p.metadata() for p in people]
    return {
        "references": [name for m in each for name in m["references"]],
        "reference_details": [d for m in each for d in m["reference_details"]],
        "rejected_references": [name for m in each for name in m["rejected_references"]],
        "warnings": [f"person {i}: {w}" for i, m in enumerate(each) for w in m["warnings"]],
        "reference_faces": sum(len(p.kept) for p in people),
    }
