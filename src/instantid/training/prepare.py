"""Turn captioned photos into a training set: face analysis, filters, and the prepared-data layout.

Inputs: folders of images with captions (``name.txt`` sidecars, or a JSONL of ``{"file", "caption"}``), or
webdataset-style tar shards (``key.jpg``/``key.png`` + ``key.txt`` members). Each kept image gets one
manifest line (see :mod:`instantid.training.data`), or with ``shard=(i, N)`` one sample in this process's tar
parts (see :mod:`instantid.training.shards`); each dropped one a line in the rejects JSONL with its reason.
Reruns skip every source already kept, so an interrupted run resumes where it stopped; a dropped source is
decided again (its caption may have been added, or a filter loosened), so the rejects file holds the latest run's
drops.

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

import numpy as np
from tqdm.auto import tqdm

from instantid.errors import ImageReadError, InvalidInputError
from instantid.faces.images import IMAGE_SUFFIXES, load_image
from instantid.io.outputs import write_bytes_atomically
from instantid.sharding import shard_of
from instantid.training.data import MANIFEST, REJECTS, SUMMARY, face_record, make_record
from instantid.training.shards import SAMPLES_PER_TAR, TarShardWriter, read_jsonl, shard_name, tar_parts


@dataclass(frozen=True)
class PrepareConfig:
    max_faces: int = 1  # drop images with more faces than this (the largest face is used)
    min_face_px: float = 64.0  # drop faces whose box is shorter than this many pixels on its short side
    min_face_fraction: float = 0.0  # ... or shorter than this fraction of the image's short side
    min_score: float = 0.0  # drop faces the detector is less sure of (scale depends on the backend)
    workers: int = 1  # analysis threads, each with its own analyzer (ONNX Runtime and dlib release the GIL)
    allow_empty_caption: bool = False  # keep images without a caption (as "") instead of dropping them

    def __post_init__(self) -> None:
        # A filter that keeps nothing (or NaN, which compares false with every score) would otherwise show up
        # only as "nothing kept" after the whole analysis.
        if self.max_faces < 1:
            raise InvalidInputError(f"--max-faces must be >= 1, got {self.max_faces}")
        if not 0 <= self.min_face_px < float("inf"):
            raise InvalidInputError(f"--min-face-px must be a number >= 0, got {self.min_face_px}")
        if not 0 <= self.min_face_fraction <= 1:
            raise InvalidInputError(f"--min-face-fraction must be between 0 and 1, got {self.min_face_fraction}")
        if not abs(self.min_score) < float("inf"):
            raise InvalidInputError(f"--min-score must be a finite number, got {self.min_score}")
        if self.workers < 1:
            raise InvalidInputError(f"--workers must be >= 1, got {self.workers}")


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


def _decide(source: Source, analyzer: Callable[[], Any], config: PrepareConfig) -> dict[str, Any]:
    """Analyse one source (``analyzer()`` is this thread's analyzer): a kept example (``{"record", "embedding",
    "image", "suffix"}``) or a drop (``{"reason", "detail"}``)."""
    caption = source.caption
    if caption is None:
        if not config.allow_empty_caption:
            return {"reason": "no_caption", "detail": "no .txt sidecar, tar member or JSONL entry"}
        caption = ""
    try:
        data = source.read()
        image = load_image(data, source.key)
        faces = analyzer().analyze(image, source.key)  # may refuse an image too small to hold a face
    except (ImageReadError, OSError) as exc:
        return {"reason": "unreadable", "detail": str(exc)}
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
    record = face_record(source.key, caption, face.embedding, face.space, face.kps, face.bbox, face.score,
                         image.size)
    return {"record": record, "embedding": face.embedding, "image": data, "suffix": source.suffix}


class FolderWriter:
    """The folder layout of :mod:`instantid.training.data` (one process: manifest.jsonl, images/, embeddings/)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if tar_parts(root):
            raise InvalidInputError(f"{root} holds tar shards from a sharded run: use another output folder")
        root.mkdir(parents=True, exist_ok=True)
        self._manifest = (root / MANIFEST).open("a", encoding="utf-8")
        # Drops are decided again on every run (see the module docstring): this run's list replaces the last.
        self._rejects = (root / REJECTS).open("w", encoding="utf-8")

    def kept_records(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.root / MANIFEST)

    def rejected(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.root / REJECTS)

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.kept_records()}

    def keep(self, result: dict[str, Any]) -> None:
        record = result["record"]
        # make_record writes the files first, so a manifest line always has its files (resume).
        line = make_record(self.root, record["key"], result["image"], result["suffix"], record["caption"],
                           result["embedding"], record["space"], np.asarray(record["kps"]), record["bbox"],
                           record["score"], (record["width"], record["height"]))
        self._manifest.write(json.dumps(line) + "\n")
        self._manifest.flush()

    def reject(self, key: str, reason: str, detail: str) -> None:
        self._rejects.write(json.dumps({"key": key, "reason": reason, "detail": detail}) + "\n")
        self._rejects.flush()

    def close(self) -> None:
        self._manifest.close()
        self._rejects.close()

    abort = close  # every manifest line is already whole


class ShardWriter(TarShardWriter):
    """:class:`TarShardWriter` with the prepare result as input (embedding inside the JSON record)."""

    def keep(self, result: dict[str, Any]) -> None:  # type: ignore[override]
        record = {**result["record"], "embedding": [float(v) for v in np.asarray(result["embedding"]).reshape(-1)]}
        super().keep(record, result["image"], result["suffix"])


def summarize(writer: FolderWriter | TarShardWriter) -> dict[str, Any]:
    """Kept and dropped counts over every run so far (from the files, so resumed runs add up)."""
    kept = list(writer.kept_records())
    reasons = Counter(r["reason"] for r in writer.rejected())
    return {
        "kept": len(kept),
        "dropped": sum(reasons.values()),
        "dropped_by_reason": dict(reasons.most_common()),
        "embedding_spaces": sorted({r["space"] for r in kept}),
    }


# What to change when a drop reason dominates (shown when nothing was kept).
_ADVICE = {
    "no_caption": "give each image a caption (name.txt beside it, a .txt tar member, or --captions JSONL), "
                  "or pass --allow-empty-caption",
    "no_face": "check the photos show a face; try --face-backend antelopev2 or dlib",
    "too_many_faces": "raise --max-faces",
    "small_face": "lower --min-face-px / --min-face-fraction",
    "low_score": "lower --min-score",
    "unreadable": "check the files are images",
}


def explain_nothing_kept(summary: dict[str, Any]) -> str:
    """One line saying why no image was kept: the top drop reasons with counts and what to change."""
    reasons = summary["dropped_by_reason"]
    top = list(reasons.items())[:3]
    listed = ", ".join(f"{reason} {count}" for reason, count in top)
    advice = _ADVICE.get(top[0][0], "") if top else ""
    return (f"nothing kept: 0 of {summary['dropped']} image(s) passed ({listed})"
            + (f"; {advice}" if advice else ""))


def prepare(
    inputs: list[str | Path], out_dir: str | Path, analyzer_factory: Callable[[], Any],
    config: PrepareConfig = PrepareConfig(), captions_jsonl: str | Path | None = None, progress: bool = True,
    shard: tuple[int, int] | None = None, samples_per_tar: int = SAMPLES_PER_TAR,
) -> dict[str, Any]:
    """Analyse every new source of ``inputs`` into ``out_dir``; returns (and writes) the summary.

    ``analyzer_factory`` builds one face analyzer per worker thread (e.g. ``lambda: create_face_analyzer("dlib")``).
    Without ``shard`` the folder layout is written; with ``shard=(i, N)`` only the sources that hash to shard
    ``i`` are analysed and written as webdataset tar parts (see :mod:`instantid.training.shards`), so N
    processes (or machines) can share one input list and one output folder.
    """
    root = Path(out_dir)
    if shard is None:
        writer: FolderWriter | TarShardWriter = FolderWriter(root)
        summary_path = root / SUMMARY
    else:
        index, count = shard
        writer = ShardWriter(root, index, count, samples_per_tar)
        summary_path = root / f"summary-{shard_name(index, count)}.json"
    try:
        session, skipped = _run(inputs, writer, analyzer_factory, config, captions_jsonl, progress, shard)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    summary = {**summarize(writer), "this_run": dict(session), "skipped_already_done": skipped}
    if shard is not None:
        summary["shard"] = f"{shard[0]}/{shard[1]}"
    write_bytes_atomically(summary_path, json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def _run(
    inputs: list[str | Path], writer: FolderWriter | TarShardWriter, analyzer_factory: Callable[[], Any],
    config: PrepareConfig, captions_jsonl: str | Path | None, progress: bool, shard: tuple[int, int] | None,
) -> tuple[Counter, int]:
    done = writer.done_keys()
    local = threading.local()

    def analyzer() -> Any:  # built on first use: a run that only drops uncaptioned images loads no model
        if not hasattr(local, "analyzer"):
            local.analyzer = analyzer_factory()
        return local.analyzer

    def work(source: Source) -> dict[str, Any]:
        return _decide(source, analyzer, config)

    mine = (s for s in iter_sources([Path(p) for p in inputs], Path(captions_jsonl) if captions_jsonl else None)
            if shard is None or shard_of(s.key, shard[1]) == shard[0])
    skipped = 0
    bar = tqdm(desc="prepare" if shard is None else f"prepare {shard[0]}/{shard[1]}", unit="img",
               disable=not progress)
    session: Counter = Counter()
    in_flight: dict[Future, Source] = {}
    # Bounded look-ahead: tar shards hand over bytes, so never queue more than a few images per worker.
    limit = 4 * max(1, config.workers)
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        exhausted = False
        while in_flight or not exhausted:
            while not exhausted and len(in_flight) < limit:
                source = next(mine, None)
                if source is None:
                    exhausted = True
                elif source.key in done:
                    skipped += 1
                else:
                    in_flight[pool.submit(work, source)] = source
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                source = in_flight.pop(future)
                result = future.result()
                if "record" in result:
                    writer.keep(result)
                    session["kept"] += 1
                else:
                    writer.reject(source.key, result["reason"], result["detail"])
                    session[result["reason"]] += 1
                bar.update(1)
                bar.set_postfix(kept=session["kept"], dropped=sum(session.values()) - session["kept"])
    bar.close()
    return session, skipped
