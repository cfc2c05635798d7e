"""Splitting work between processes: ``--shard i/N`` or the ranks of ``accelerate launch`` / torchrun.

Work item ``key`` belongs to shard ``hash(key) % N``: stable across runs and independent of the order in which
items are listed, so every item is done by exactly one process and a rerun of a shard resumes its own items.
Used by ``instantid prepare`` (training data) and ``instantid batch`` (generation jobs).
"""

from __future__ import annotations

import hashlib
import os
import re

from instantid.errors import InvalidInputError


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise InvalidInputError(f"--shard must look like i/N with 0 <= i < N (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def resolve_shard(text: str | None) -> tuple[int, int] | None:
    """The shard this process prepares: ``--shard`` when given; under ``accelerate launch`` (or torchrun) with
    several processes, accelerate's process index and count; else ``None`` (one process, everything)."""
    if text is not None:
        return parse_shard(text)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # Only the rank and count are needed: a CPU (gloo) group gives them on any machine, GPUs or not.
        state = PartialState(cpu=True)
        return state.process_index, state.num_processes
    return None


def shard_of(key: str, count: int) -> int:
    """Which of ``count`` shards owns a source key: a hash, so each key is in exactly one shard."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % count
