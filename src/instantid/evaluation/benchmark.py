"""Running a protocol: generate every (identity, prompt, seed) image, then score them all.

Outputs go to ``OUT/images/<identity>/<prompt id>-s<seed>.png``, each with its JSON sidecar. A run is
resumable: an image whose PNG and sidecar both exist is not generated again. ``OUT/run.json`` records
what produced the images, so resuming with a different model or settings is refused instead of mixing
two methods in one report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from instantid.errors import InvalidInputError
from instantid.evaluation.metrics import Sample
from instantid.evaluation.protocol import Protocol
from instantid.faces.images import IMAGE_SUFFIXES
from instantid.io.outputs import png_bytes, write_bytes_atomically

Progress = Callable[[str], None]


def identities_from_refs(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """Identity name -> reference photos. A photo is one identity (named by its stem); a folder of photos
    holds one identity per photo, and each of its sub-folders one identity with several photos."""
    identities: dict[str, list[Path]] = {}

    def add(name: str, photos: list[Path]) -> None:
        if name in identities:
            raise InvalidInputError(f"two references are both named {name!r}: rename one")
        identities[name] = photos

    def photos_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    for path in paths:
        if path.is_dir():
            for photo in photos_in(path):
                add(photo.stem, [photo])
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                if photos_in(sub):
                    add(sub.name, photos_in(sub))
        elif path.is_file():
            add(path.stem, [path])
        else:
            raise InvalidInputError(f"reference photo or folder not found: {path}")
    if not identities:
        raise InvalidInputError(f"no reference photos found in {', '.join(map(str, paths))}")
    return identities


def _check_run(out_dir: Path, record: dict[str, Any]) -> None:
    path = out_dir / "run.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != record:
            changed = sorted(k for k in record.keys() | previous.keys() if record.get(k) != previous.get(k))
            raise InvalidInputError(
                f"{out_dir} holds a run with different {', '.join(changed)}: use another output folder"
            )
        return
    data = json.dumps(record, indent=2).encode("utf-8")
    write_bytes_atomically(path, data)


def run_protocol(
    app: Any, protocol: Protocol, identities: dict[str, list[Path]], out_dir: Path, settings: Any,
    limit: int | None = None, progress: Progress | None = None,
) -> list[Sample]:
    """Generate what is missing and return every sample of the run (existing ones included).

    ``app`` is an :class:`instantid.InstantID`; ``settings`` a ``GenerationSettings`` whose prompt and seed
    are replaced per image. Each identity's photos are analysed once, when its first missing image is made.
    """
    prompts = protocol.all_prompts(limit)
    _check_run(out_dir, {
        "protocol": protocol.name, "models": asdict(app.refs), "demo_weights": app.demo,
        "settings": settings.updated(prompt="", seed=None).model_dump(mode="json"),
    })
    samples = []
    total = len(identities) * len(prompts) * len(protocol.seeds)
    done = 0
    for name, photos in identities.items():
        folder = out_dir / "images" / name
        identity = None
        for prompt in prompts:
            for seed in protocol.seeds:
                image_path = folder / f"{prompt.id}-s{seed}.png"
                sidecar = image_path.with_suffix(".json")
                done += 1
                if not (image_path.is_file() and sidecar.is_file()):
                    if identity is None:
                        identity = app.prepare_identity(photos)
                    result = app.generate(identity, settings.updated(prompt=prompt.text, seed=seed, num_images=1))
                    meta = result.image_metadata(0) | {
                        "identity": name, "references": [str(p.resolve()) for p in photos],
                        "protocol": protocol.name, "prompt_id": prompt.id, "category": prompt.category,
                    }
                    # The image first, the sidecar last: a sidecar marks a finished image when resuming.
                    write_bytes_atomically(image_path, png_bytes(result.images[0], meta))
                    write_bytes_atomically(sidecar, json.dumps(meta, indent=2).encode("utf-8"))
                    status = "generated"
                else:
                    status = "exists"
                if progress is not None:
                    progress(f"[{done}/{total}] {name} {prompt.id} seed {seed}: {status}")
                samples.append(Sample(
                    image=image_path, identity=name, references=tuple(photos), prompt=prompt.text,
                    prompt_id=prompt.id, category=prompt.category, seed=seed,
                ))
    return samples
