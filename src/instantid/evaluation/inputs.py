"""Turning command-line inputs (image files, folders, PNG sidecars) into :class:`Sample` lists.

``instantid generate`` and ``instantid benchmark run`` write a JSON sidecar next to every PNG (same name,
``.json``). From it come the prompt, seed, protocol prompt id and category and, when recorded, the
reference photo(s) under ``references`` (or ``face_images``), relative to the sidecar's folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instantid.errors import InvalidInputError
from instantid.evaluation.metrics import Sample
from instantid.faces.images import IMAGE_SUFFIXES

REPORT_FILES = {"grid.png"}  # our own outputs, skipped when a report folder is evaluated again


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


def _sidecar_refs(meta: dict[str, Any], folder: Path) -> tuple[Path, ...]:
    raw = meta.get("references", meta.get("face_images"))
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else list(raw)
    return tuple(p if p.is_absolute() else folder / p for p in (Path(str(item)) for item in items))


def expand_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders searched recursively for images, in sorted order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                          and p.name not in REPORT_FILES and not p.name.startswith("."))
        elif path.is_file():
            out.append(path)
        else:
            raise InvalidInputError(f"no such image or folder: {path}")
    if not out:
        raise InvalidInputError(f"no images found in {', '.join(map(str, paths))}")
    return out


def collect_samples(
    paths: Sequence[Path], refs: Sequence[Path] = (), identity: str | None = None
) -> list[Sample]:
    """One :class:`Sample` per image; ``refs`` (when given) override the sidecars' references."""
    for ref in refs:
        if not ref.is_file():
            raise InvalidInputError(f"reference photo not found: {ref}")
    samples = []
    for image in expand_images(paths):
        meta = read_sidecar(image)
        references = tuple(refs) or _sidecar_refs(meta, image.parent)
        if not references:
            raise InvalidInputError(
                f"no reference photo for {image}: give --refs PHOTO, or evaluate images whose sidecar JSON "
                "lists 'references'"
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
    return samples
