"""Scores of generated images: face detection rate, identity similarity, CLIP score, diversity.

Per image: is a face found, how alike it is to the reference photo(s), how well it follows its prompt.
Per identity: the means of those, and diversity, i.e. how different the generations of one identity are
from each other (a method that pastes the reference face scores high on similarity and low here).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from PIL import Image

from instantid.errors import NoFaceError
from instantid.evaluation.clip_score import NO_WEIGHTS, ClipScorer
from instantid.evaluation.identity import largest_face_embedding
from instantid.faces import FaceAnalyzer, load_image

PIXEL_SIZE = 64  # side of the thumbnails compared by the pixel diversity measure


@dataclass(frozen=True)
class Sample:
    """One generated image to score, with what it was made from."""

    image: Path
    identity: str
    references: tuple[Path, ...]
    prompt: str | None = None
    prompt_id: str | None = None
    category: str | None = None
    seed: int | None = None


@dataclass
class ImageScore:
    image: str
    identity: str
    prompt: str | None
    prompt_id: str | None
    category: str | None
    seed: int | None
    face_detected: bool
    identity_distance: float | None  # mean over the reference photos; None when no face
    identity_similarity: float | None  # derived: 1 - identity_distance (what papers report)
    same_person: bool | None  # at the recogniser's distance threshold, when it has one
    clip_score: float | None


@dataclass
class Evaluation:
    """Everything a report shows; ``to_dict`` is the JSON written to disk."""

    images: list[ImageScore]
    identities: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    references: dict[str, list[str]]  # identity -> its reference photo paths
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "summary": self.summary, "identities": self.identities,
                "references": self.references, "images": [asdict(score) for score in self.images]}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(mean(present)) if present else None


def pairwise_mean(items: Sequence[Any], distance: Callable[[Any, Any], float]) -> float | None:
    """Mean distance over all unordered pairs; ``None`` for fewer than two items."""
    pairs = [distance(a, b) for a, b in itertools.combinations(items, 2)]
    return float(mean(pairs)) if pairs else None


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails in [0, 1]: a cheap, model-free layout/colour measure."""
    return float(np.abs(a - b).mean())


def thumbnail_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((PIXEL_SIZE, PIXEL_SIZE), Image.BILINEAR), np.float32) / 255.0


def reference_embeddings(recogniser: FaceAnalyzer, references: Sequence[Path]) -> list[np.ndarray]:
    """Embeddings of every reference photo; a reference without a face is an error (nothing to compare to)."""
    out = []
    for path in references:
        embedding = largest_face_embedding(recogniser, load_image(path), str(path))
        if embedding is None:
            raise NoFaceError(f"{path} (reference photo)")
        out.append(embedding)
    return out


def _diversity(groups: dict[Any, list[tuple[np.ndarray | None, np.ndarray]]],
               recogniser: FaceAnalyzer) -> tuple[float | None, float | None]:
    """Mean over prompts of the mean pairwise distance between that prompt's generations (the seeds).

    Different prompts differ by design, so pairs are only formed within one prompt; with no prompt
    information every generation of the identity forms one group.
    """
    id_values, pixel_values = [], []
    for members in groups.values():
        embeddings = [e for e, _ in members if e is not None]
        id_values.append(pairwise_mean(embeddings, recogniser.distance))
        pixel_values.append(pairwise_mean([p for _, p in members], pixel_distance))
    return _mean(id_values), _mean(pixel_values)


def evaluate(
    samples: Sequence[Sample], recogniser: FaceAnalyzer, clip: ClipScorer | None = None,
    clip_status: str = NO_WEIGHTS, progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score every sample and summarise per identity and overall.

    Without a CLIP scorer, ``clip_status`` (why it is skipped) stands in the summaries' ``clip_score``.
    """
    clip_status = "ok" if clip is not None else clip_status
    ref_cache: dict[tuple[Path, ...], list[np.ndarray]] = {}
    scores: list[ImageScore] = []
    per_identity: dict[str, dict[Any, list[tuple[np.ndarray | None, np.ndarray]]]] = {}
    for index, sample in enumerate(samples):
        if sample.references not in ref_cache:
            ref_cache[sample.references] = reference_embeddings(recogniser, sample.references)
        image = load_image(sample.image)
        embedding = largest_face_embedding(recogniser, image, str(sample.image))
        distance = same = None
        if embedding is not None:
            distance = float(mean(recogniser.distance(embedding, r) for r in ref_cache[sample.references]))
            if recogniser.same_person_threshold is not None:
                same = distance <= recogniser.same_person_threshold
        clip_value = clip.score(image, sample.prompt) if clip is not None and sample.prompt else None
        scores.append(ImageScore(
            image=str(sample.image), identity=sample.identity, prompt=sample.prompt, prompt_id=sample.prompt_id,
            category=sample.category, seed=sample.seed, face_detected=embedding is not None,
            identity_distance=distance, identity_similarity=None if distance is None else 1.0 - distance,
            same_person=same, clip_score=clip_value,
        ))
        group = per_identity.setdefault(sample.identity, {}).setdefault(sample.prompt_id or sample.prompt, [])
        group.append((embedding, thumbnail_array(image)))
        if progress is not None:
            progress(index + 1, len(samples))

    identities = {}
    for name, groups in per_identity.items():
        mine = [s for s in scores if s.identity == name]
        if all(len(g) < 2 for g in groups.values()):
            groups = {None: [m for g in groups.values() for m in g]}
        id_div, pixel_div = _diversity(groups, recogniser)
        diversity = {"identity_diversity": id_div, "pixel_diversity": pixel_div}
        identities[name] = _summarise(mine, clip_status) | diversity
    summary = _summarise(scores, clip_status) | {
        "identity_diversity": _mean([v["identity_diversity"] for v in identities.values()]),
        "pixel_diversity": _mean([v["pixel_diversity"] for v in identities.values()]),
        "per_category": _per_category(scores),
    }
    settings = {
        "recogniser": recogniser.space, "distance": recogniser.metric, "similarity": "1 - distance",
        "same_person_distance": recogniser.same_person_threshold,
        "clip": clip.name if clip is not None else clip_status,
        "pixel_diversity": f"mean absolute difference of {PIXEL_SIZE}x{PIXEL_SIZE} RGB thumbnails, 0..1",
    }
    references = {s.identity: [str(p) for p in s.references] for s in samples}
    return Evaluation(images=scores, identities=identities, summary=summary, references=references, settings=settings)


def _summarise(scores: Sequence[ImageScore], clip_status: str) -> dict[str, Any]:
    detected = [s for s in scores if s.face_detected]
    judged = [s.same_person for s in scores if s.same_person is not None]
    face = [s.identity_similarity for s in scores if s.category == "face"]
    return {
        "images": len(scores),
        "face_detection_rate": len(detected) / len(scores) if scores else None,
        # Undetected faces count as failures in the rate but have no similarity to average.
        "identity_similarity": _mean([s.identity_similarity for s in scores]),
        "face_prompt_identity_similarity": _mean(face),
        "same_person_rate": sum(judged) / len(scores) if judged else None,
        "clip_score": _mean([s.clip_score for s in scores]) if clip_status == "ok" else clip_status,
    }


def _per_category(scores: Sequence[ImageScore]) -> dict[str, dict[str, float | None]]:
    categories = dict.fromkeys(s.category for s in scores if s.category)
    return {
        category: {
            "images": len(members),
            "face_detection_rate": sum(s.face_detected for s in members) / len(members),
            "identity_similarity": _mean([s.identity_similarity for s in members]),
            "clip_score": _mean([s.clip_score for s in members]),
        }
        for category in categories
        for members in [[s for s in scores if s.category == category]]
    }
