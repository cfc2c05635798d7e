"""Turn captioned photos into a training set: face analysis, filters, and the prepared-data layout.

Inputs: folders of images with captions (``name.txt`` sidecars, or a JSONL of ``{"file", "caption"}``), or
webdataset-style tar shards (``key.jpg``/``key.png`` + ``key.txt`` members). Each kept image gets one
manifest line (see :mod:`instantid.training.data`); each dropped one a line in ``rejects.jsonl`` with its
reason. Reruns skip every source already decided, so an interrupted run resumes where it stopped.

Paper recipe: single-person images (``max_faces=1``), full images (not crops), antelopev2 embeddings.
"""

from __future__ import annotations

import json
import tarfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from instantid.errors import ImageReadError, InvalidInputError
from instantid.faces.images import IMAGE_SUFFIXES, load_image
from instantid.training.data import MANIFEST, REJECTS, SUMMARY, make_record, read_jsonl


@dataclass(frozen=True)
class PrepareConfig:
    max_faces: int = 1  # drop images with more faces than this (the largest face is used)
    min_face_px: float = 64.0  # drop faces whose box is shorter than this many pixels on its short side
    min_face_fraction: float = 0.0  # ... or shorter than this fraction of the image's short side
    min_score: float = 0.0  # drop faces the detector is less sure of (scale depends on the backend)
    workers: int = 1  # analysis threads, each with its own analyzer (ONNX Runtime and dlib release the GIL)
    allow_empty_caption: bool = False  # keep images without a caption (as "") instead of dropping them


@dataclass(frozen=True)
class Source:
    """One input image, not yet decoded."""

    key: str  # unique and stable across runs: what resume matches on
    suffix: str  # image file suffix, kept for the copy
    caption: str | None
    read: Callable[[], bytes]


def _folder_sources(folder: Path, captions: dict[str, str]) -> Iterator[Source]:
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(folder).as_posix()
        sidecar = path.with_suffix(".txt")
        caption = captions.get(rel, captions.get(path.name))
        if caption is None and sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        yield Source(f"{folder.name}/{rel}", path.suffix, caption, path.read_bytes)


def _tar_sources(shard: Path) -> Iterator[Source]:
    """webdataset convention: members sharing everything before the first dot of the file name form a sample."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                path = PurePosixPath(member.name)
                stem, _, ext = path.name.partition(".")
                data = tar.extractfile(member)
                if data is not None:
                    samples.setdefault(str(path.parent / stem), {})[f".{ext.lower()}"] = data.read()
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInputError(f"cannot read tar shard {shard}: {exc}") from exc
    for key, members in samples.items():
        image_ext = next((e for e in IMAGE_SUFFIXES if e in members), None)
        if image_ext is None:
            continue
        caption = members[".txt"].decode("utf-8", errors="replace").strip() if ".txt" in members else None
        data = members[image_ext]
        yield Source(f"{shard.name}/{key}", image_ext, caption, lambda data=data: data)


def iter_sources(inputs: list[Path], captions_jsonl: Path | None = None) -> Iterator[Source]:
    """Every image of every input (folder or ``.tar`` shard), with its caption when it has one."""
    captions: dict[str, str] = {}
    if captions_jsonl is not None:
        if not captions_jsonl.is_file():
            raise InvalidInputError(f"captions file not found: {captions_jsonl}")
        for line in read_jsonl(captions_jsonl):
            if "file" in line and "caption" in line:
                captions[str(line["file"])] = str(line["caption"])
    for item in inputs:
        if item.is_dir():
            yield from _folder_sources(item, captions)
        elif item.suffix == ".tar" and item.is_file():
            yield from _tar_sources(item)
        else:
            raise InvalidInputError(f"{item} is neither a folder of images nor a .tar shard")


def _decide(source: Source, analyzer: Any, config: PrepareConfig, root: Path) -> dict[str, Any]:
    """Analyse one source: a manifest record (``{"record": ...}``) or a reject (``{"reason", "detail"}``)."""
    caption = source.caption
    if caption is None:
        if not config.allow_empty_caption:
            return {"reason": "no_caption", "detail": "no .txt sidecar, tar member or JSONL entry"}
        caption = ""
    try:
        data = source.read()
        image = load_image(data, source.key)
    except (ImageReadError, OSError) as exc:
        return {"reason": "unreadable", "detail": str(exc)}
    faces = analyzer.analyze(image, source.key)
    if not faces:
        return {"reason": "no_face", "detail": ""}
    if len(faces) > config.max_faces:
        return {"reason": "too_many_faces", "detail": f"{len(faces)} faces (max {config.max_faces})"}
    face = faces[0]
    if face.score < config.min_score:
        return {"reason": "low_score", "detail": f"score {face.score:.3f} < {config.min_score}"}
    x1, y1, x2, y2 = face.bbox
    short = min(x2 - x1, y2 - y1)
    if short < config.min_face_px or short < config.min_face_fraction * min(image.size):
        return {"reason": "small_face", "detail": f"face box short side {short:.0f}px in a {image.size} image"}
    record = make_record(
        root, source.key, data, source.suffix, caption, face.embedding, face.space, face.kps, face.bbox,
        face.score, image.size,
    )
    return {"record": record}


def summarize(root: Path) -> dict[str, Any]:
    """Kept and dropped counts over every run so far (from the files, so resumed runs add up)."""
    kept = list(read_jsonl(root / MANIFEST))
    reasons = Counter(r["reason"] for r in read_jsonl(root / REJECTS))
    return {
        "kept": len(kept),
        "dropped": sum(reasons.values()),
        "dropped_by_reason": dict(sorted(reasons.items())),
        "embedding_spaces": sorted({r["space"] for r in kept}),
    }


def prepare(
    inputs: list[str | Path], out_dir: str | Path, analyzer_factory: Callable[[], Any],
    config: PrepareConfig = PrepareConfig(), captions_jsonl: str | Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Analyse every new source of ``inputs`` into ``out_dir``; returns (and writes) the summary.

    ``analyzer_factory`` builds one face analyzer per worker thread (e.g. ``lambda: create_face_analyzer("dlib")``).
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_jsonl(root / MANIFEST)} | {r["key"] for r in read_jsonl(root / REJECTS)}
    local = threading.local()

    def work(source: Source) -> dict[str, Any]:
        if not hasattr(local, "analyzer"):
            local.analyzer = analyzer_factory()
        return _decide(source, local.analyzer, config, root)

    sources = (s for s in iter_sources([Path(p) for p in inputs], Path(captions_jsonl) if captions_jsonl else None)
               if s.key not in done)
    bar = tqdm(desc="prepare", unit="img", disable=not progress)
    session = Counter()
    in_flight: dict[Future, Source] = {}
    # Bounded look-ahead: tar shards hand over bytes, so never queue more than a few images per worker.
    limit = 4 * max(1, config.workers)
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool, \
            (root / MANIFEST).open("a", encoding="utf-8") as manifest, \
            (root / REJECTS).open("a", encoding="utf-8") as rejects:
        exhausted = False
        while in_flight or not exhausted:
            while not exhausted and len(in_flight) < limit:
                source = next(sources, None)
                if source is None:
                    exhausted = True
                else:
                    in_flight[pool.submit(work, source)] = source
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                source = in_flight.pop(future)
                result = future.result()
                if "record" in result:
                    manifest.write(json.dumps(result["record"]) + "\n")
                    manifest.flush()
                    session["kept"] += 1
                else:
                    rejects.write(json.dumps({"key": source.key, **result}) + "\n")
                    rejects.flush()
                    session[result["reason"]] += 1
                bar.update(1)
                bar.set_postfix(kept=session["kept"], dropped=sum(session.values()) - session["kept"])
    bar.close()
    summary = {**summarize(root), "this_run": dict(session), "skipped_already_done": len(done)}
    (root / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
