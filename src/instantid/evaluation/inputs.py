"""Turning command-line inputs (image files, folders, PNG sidecars) into :class:`Sample` lists.

``instantid generate`` and ``instantid benchmark run`` write a JSON sidecar next to every PNG (same name,
``.json``) and the same JSON inside the PNG. From it come the prompt, seed, protocol prompt id and category
and the reference photo(s): their file names under ``references`` (or ``face_images``) and the SHA-256 of each
photo's bytes under ``reference_details``. No path is recorded (unless made with ``--full-paths``), so the
photos are found by content among the ``--refs`` photos and folders given, else by name beside the image or in
the working directory. Images without metadata (contact sheets, report grids, unrelated pictures) are not
generations.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from instantid.errors import InvalidInputError
from instantid.evaluation.metrics import Sample
from instantid.faces.images import IMAGE_SUFFIXES
from instantid.io.outputs import METADATA_KEY

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
        with warnings.catch_warnings():  # a huge picture: scoring reports it with the image's own one-line error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(image) as png:
                raw = getattr(png, "text", {}).get(METADATA_KEY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return {}  # unreadable: scoring reports it with the image's own error
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded(meta: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The references an image's metadata names: ``(file name or path, SHA-256 or None)`` each."""
    details = meta.get("reference_details")
    if isinstance(details, list) and details and all(isinstance(d, dict) and "name" in d for d in details):
        return [(str(d["name"]), d.get("sha256")) for d in details]
    raw = meta.get("references", meta.get("face_images"))
    if raw is None:
        return []
    return [(str(item), None) for item in ([raw] if isinstance(raw, str) else list(raw))]


def _find_recorded(image: Path, recorded: list[tuple[str, str | None]]) -> tuple[Path, ...]:
    """Each recorded reference beside the image, else in the working directory (a full path as recorded), and
    with the recorded content when a hash was recorded."""
    found = []
    for name, digest in recorded:
        path = Path(name)
        places = [path] if path.is_absolute() else [image.parent / path, path]
        match = next((p for p in places if p.is_file() and (digest is None or file_sha256(p) == digest)), None)
        if match is None:
            content = f" (SHA-256 {digest[:12]}...)" if digest else ""
            raise InvalidInputError(
                f"reference photo {name}{content} of {image} is not beside it or in the working directory "
                "(outputs record file names and content hashes, not paths): give --refs PHOTO, or --refs FOLDER "
                "holding it"
            )
        found.append(match)
    return tuple(found)


def reference_photos(refs: Sequence[Path]) -> dict[Path, str]:
    """``--refs`` photos, folders expanded to their images (recursively), each with its SHA-256."""
    photos: dict[Path, str] = {}
    for ref in refs:
        if ref.is_dir():
            items = sorted(p for p in ref.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif ref.is_file():
            items = [ref]
        else:
            raise InvalidInputError(f"reference photo not found: {ref}")
        photos.update((p, file_sha256(p)) for p in items)
    return photos


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
    metadata (no sidecar, no PNG chunk). ``refs``: photos and folders of photos. An image's references are the
    given photos whose content matches the SHA-256 its metadata records (so one folder serves outputs of many
    people); when none matches, photos given one by one stand for every image (any image is then scored), and
    without ``refs`` the recorded names are looked for beside the image and in the working directory. Nothing
    left to score is an error that says what was skipped.
    """
    given = reference_photos(refs)
    by_content = {digest: path for path, digest in given.items()}
    loose = tuple(p for p in refs if p.is_file())  # photos named one by one (not found in a folder)
    samples, skipped = [], []
    for image in expand_images(paths):
        if image.name in NOT_GENERATIONS:
            skipped.append(Skipped(image, f"{NOT_GENERATIONS[image.name]}, not a generation"))
            continue
        meta = read_generation_metadata(image)
        if not meta and not refs:
            skipped.append(Skipped(image, "no InstantID metadata (give --refs PHOTO to score any image)"))
            continue
        recorded = _recorded(meta)
        matched = tuple(by_content[d] for _, d in recorded if d in by_content)
        if matched or loose:
            references = matched or loose
        elif given:
            raise InvalidInputError(f"none of the --refs photos is a reference of {image} (it records "
                                    f"{', '.join(name for name, _ in recorded) or 'none'})")
        elif recorded:
            references = _find_recorded(image, recorded)
        else:
            raise InvalidInputError(
                f"no reference photo for {image}: its metadata lists no 'references'; give --refs PHOTO"
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
