"""Turning command-line inputs (image files, folders, PNG sidecars) into :class:`Sample` lists.

``instantid generate`` and ``instantid benchmark run`` write a JSON sidecar next to every PNG (same name,
``.json``) and the same JSON inside the PNG. From it come the prompt, seed, protocol prompt id and category
and, when recorded, the reference photo(s) under ``references`` (or ``face_images``), relative to the image's
folder. Images without it (contact sheets, report grids, unrelated pictures) are not generations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from instantid.errors import InvalidInputError
from instantid.evaluation.metrics import Sample
from instantid.faces.images import IMAGE_SUFFIXES
from instantid.outputs import METADATA_KEY

# Pictures our own commands write next to generations that are not generations themselves.
NOT_GENERATIONS = {
    "grid.png": "an evaluation grid",
    "contact_sheet.png": "a batch contact sheet",
}


@dataclass(frozen=True)
class Skipped:
    """An image that was found but not scored, and why."""

    path: Path
    reason: str


def read_sidecar(image: Path) -> dict[str, Any]:
    """The JSON written beside ``image``, or ``{}`` when there is none."""
    path = image.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read sidecar {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"sidecar {path} must hold a JSON object")
    return data


def read_generation_metadata(image: Path) -> dict[str, Any]:
    """What made ``image``: its JSON sidecar, else the ``instantid`` PNG text chunk; ``{}`` for neither."""
    meta = read_sidecar(image)
    if meta or image.suffix.lower() != ".png":
        return meta
    try:
        with Image.open(image) as png:
            raw = getattr(png, "text", {}).get(METADATA_KEY)
    except (OSError, ValueError):
        return {}  # unreadable: scoring reports it with the image's own error
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _resolve_ref(path: Path, folder: Path) -> Path:
    """A relative reference is looked for beside the image, then in the working directory (outputs record
    file names only unless made with full paths)."""
    if path.is_absolute() or (folder / path).is_file() or not path.is_file():
        return path if path.is_absolute() else folder / path
    return path


def _sidecar_refs(meta: dict[str, Any], folder: Path) -> tuple[Path, ...]:
    raw = meta.get("references", meta.get("face_images"))
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else list(raw)
    return tuple(_resolve_ref(Path(str(item)), folder) for item in items)


def expand_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders searched recursively for images, in sorted order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                          and not p.name.startswith("."))
        elif path.is_file():
            out.append(path)
        else:
            raise InvalidInputError(f"no such image or folder: {path}")
    if not out:
        raise InvalidInputError(f"no images found in {', '.join(map(str, paths))}")
    return out


def find_samples(
    paths: Sequence[Path], refs: Sequence[Path] = (), identity: str | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """One :class:`Sample` per generation, and the images skipped as not being generations.

    Skipped: our own grids and contact sheets and, when no ``refs`` are given, any image without InstantID
    metadata (no sidecar, no PNG chunk). ``refs`` (when given) override the metadata's references, and then
    any other image is scored. Nothing left to score is an error that says what was skipped.
    """
    for ref in refs:
        if not ref.is_file():
            raise InvalidInputError(f"reference photo not found: {ref}")
    samples, skipped = [], []
    for image in expand_images(paths):
        if image.name in NOT_GENERATIONS:
            skipped.append(Skipped(image, f"{NOT_GENERATIONS[image.name]}, not a generation"))
            continue
        meta = read_generation_metadata(image)
        if not meta and not refs:
            skipped.append(Skipped(image, "no InstantID metadata (give --refs PHOTO to score any image)"))
            continue
        references = tuple(refs) or _sidecar_refs(meta, image.parent)
        if not references:
            raise InvalidInputError(
                f"no reference photo for {image}: its metadata lists no 'references'; give --refs PHOTO"
            )
        missing = [ref for ref in references if not ref.is_file()]
        if missing:
            raise InvalidInputError(
                f"reference photo {missing[0]} named by {image}'s metadata not found (outputs record file names "
                "only, unless made with full paths): give --refs PHOTO"
            )
        seed = meta.get("seed")
        samples.append(Sample(
            image=image,
            identity=identity or str(meta.get("identity") or references[0].stem),
            references=references,
            prompt=meta.get("user_prompt") or meta.get("prompt") or None,
            prompt_id=meta.get("prompt_id"),
            category=meta.get("category"),
            seed=int(seed) if isinstance(seed, int) else None,
        ))
    if not samples:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise InvalidInputError(f"nothing to evaluate: every image was skipped ({reasons}{more})")
    return samples, skipped


def collect_samples(
    paths: Sequence[Path], refs: Sequence[Path] = (), identity: str | None = None
) -> list[Sample]:
    """The samples of :func:`find_samples`, without the list of skipped images."""
    return find_samples(paths, refs, identity)[0]
