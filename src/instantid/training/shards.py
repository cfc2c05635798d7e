"""webdataset-style tar shards of prepared training data, and splitting the inputs between processes.

A prepared sample is two tar members sharing a key (webdataset's convention: everything before the first dot
of the file name): ``<key>.<jpg|png|...>``, the source image bytes unchanged, and ``<key>.json``, the record
(``key`` of the source, ``caption``, ``embedding`` as a list of floats, ``space``, ``embedding_dim``, ``kps``,
``bbox``, ``score``, ``width``, ``height``). Any webdataset reader can stream these files; ours
(:func:`read_tar_index`) indexes them for random access, so training keeps its shuffling and exact resume.

Process ``i`` of ``N`` owns the inputs whose key hashes to ``i`` (stable across runs, whatever the order in
which inputs are listed) and writes ``data-<i>-of-<N>-<part>.tar`` files. A part is written under a hidden
temporary name and renamed when complete, so a part on disk is always whole; resuming reads the finished
parts' keys and skips them; the dropped sources are decided again, the shard's ``rejects-<i>-of-<N>.jsonl``
listing the latest run's drops.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from instantid.errors import InvalidInputError
from instantid.faces.images import IMAGE_SUFFIXES

SAMPLES_PER_TAR = 1000  # webdataset's usual shard size for images of a few hundred KB (a few hundred MB per tar)
_PART = re.compile(r"^data-(\d+)-of-(\d+)-(\d+)\.tar$")


def sample_key(source_key: str) -> str:
    """A tar-safe webdataset key for a source key: no dots or slashes (they delimit keys), readable + hash."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", source_key).strip("_")[:80]
    return f"{readable}-{hashlib.sha1(source_key.encode('utf-8')).hexdigest()[:10]}"


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # identical inputs give identical tar files
    tar.addfile(info, io.BytesIO(data))


def read_tar_index(path: Path) -> list[dict[str, Any]]:
    """The records of one tar shard, each with ``tar``, ``image_offset`` and ``image_size`` added so the
    image can be read later without scanning the archive again. Samples without a record or an image are
    skipped (a webdataset shard may hold other kinds of members)."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_path = PurePosixPath(member.name)
                stem, _, ext = member_path.name.partition(".")
                sample = samples.setdefault(str(member_path.parent / stem), {})
                ext = f".{ext.lower()}"
                if ext == ".json":
                    stream = tar.extractfile(member)
                    sample["record"] = json.loads(stream.read()) if stream is not None else None
                elif ext in IMAGE_SUFFIXES:
                    sample["image"] = (member.offset_data, member.size, ext)
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read tar shard {path}: {exc}") from None
    records = []
    for sample in samples.values():
        if isinstance(sample.get("record"), dict) and "image" in sample:
            offset, size, ext = sample["image"]
            records.append({**sample["record"], "tar": str(path), "image_offset": offset, "image_size": size,
                            "image_suffix": ext})
    return records


def read_member(record: dict[str, Any]) -> bytes:
    """The image bytes of a record from :func:`read_tar_index` (one seek and read, no tar scan)."""
    with open(record["tar"], "rb") as stream:
        stream.seek(record["image_offset"])
        return stream.read(record["image_size"])


def tar_parts(root: Path) -> list[Path]:
    """Every finished tar part under ``root`` (any shard), in name order."""
    return sorted(p for p in root.glob("data-*.tar") if _PART.match(p.name))



def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (crash mid-write) is ignored so resume still works."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

class TarShardWriter:
    """Writes one shard's kept samples into tar parts and its drops into a JSONL; resumes where it stopped."""

    def __init__(self, root: Path, index: int, count: int, samples_per_tar: int = SAMPLES_PER_TAR) -> None:
        self.root, self.index, self.count, self.samples_per_tar = root, index, count, samples_per_tar
        root.mkdir(parents=True, exist_ok=True)
        others = {int(m.group(2)) for p in tar_parts(root) if (m := _PART.match(p.name))} - {count}
        if others:
            raise InvalidInputError(
                f"{root} holds shards of a {sorted(others)[0]}-way split; this run splits {count} ways: "
                "use the same N or another output folder"
            )
        self.name = shard_name(index, count)
        self.rejects_path = root / f"rejects-{self.name}.jsonl"
        for stale in root.glob(f".data-{self.name}-*.tar.tmp"):  # a part cut off by a crash: its samples redo
            stale.unlink()
        self.parts = sorted(root.glob(f"data-{self.name}-*.tar"))
        self._tar: tarfile.TarFile | None = None
        self._in_part = 0
        self._rejects = self.rejects_path.open("w", encoding="utf-8")  # drops are decided again each run

    def kept_records(self) -> Iterator[dict[str, Any]]:
        for part in self.parts:
            yield from read_tar_index(part)

    def rejected(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.rejects_path)

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.kept_records()}

    def keep(self, record: dict[str, Any], image: bytes, suffix: str) -> None:
        if self._tar is None:
            self._tmp = self.root / f".data-{self.name}-{len(self.parts):05d}.tar.tmp"
            self._tar = tarfile.open(self._tmp, "w")
        key = sample_key(record["key"])
        _add(self._tar, f"{key}{suffix.lower()}", image)
        _add(self._tar, f"{key}.json", json.dumps(record).encode("utf-8"))
        self._in_part += 1
        if self._in_part >= self.samples_per_tar:
            self._finish_part()

    def reject(self, key: str, reason: str, detail: str) -> None:
        self._rejects.write(json.dumps({"key": key, "reason": reason, "detail": detail}) + "\n")
        self._rejects.flush()

    def _finish_part(self) -> None:
        assert self._tar is not None
        self._tar.close()
        with open(self._tmp, "rb") as stream:
            os.fsync(stream.fileno())
        final = self.root / f"data-{self.name}-{len(self.parts):05d}.tar"
        os.replace(self._tmp, final)
        self.parts.append(final)
        self._tar, self._in_part = None, 0

    def close(self) -> None:
        """Finish the open part (its samples are all whole) and the rejects file."""
        if self._tar is not None:
            self._finish_part()
        self._rejects.close()

    def abort(self) -> None:
        """Drop the open part (a sample may be half-added after an interrupt); a rerun redoes its samples."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
        self._rejects.close()
