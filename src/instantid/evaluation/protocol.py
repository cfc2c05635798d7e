"""Evaluation protocols bundled as data: which prompts, in which categories, with which seeds."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from instantid.errors import InvalidInputError

BUNDLED = {"pulid": "protocol_pulid.yaml"}


@dataclass(frozen=True)
class ProtocolPrompt:
    id: str  # stable name used in output file names, e.g. "clothing-1"
    category: str  # e.g. "clothing"; the face-similarity prompt has category "face"
    text: str


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    seeds: tuple[int, ...]  # the same seeds for every prompt and every method
    face_prompt: ProtocolPrompt  # realistic prompt on which face similarity is reported
    prompts: tuple[ProtocolPrompt, ...]  # prompt-following set

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(p.category for p in self.prompts))

    def all_prompts(self, limit: int | None = None) -> list[ProtocolPrompt]:
        """Face prompt first, then the others; ``limit`` keeps the first ``limit`` of them (quick runs)."""
        prompts = [self.face_prompt, *self.prompts]
        return prompts if limit is None else prompts[:limit]


def _prompt(raw: object, source: str) -> ProtocolPrompt:
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("id", "category", "text")):
        raise InvalidInputError(f"{source}: every prompt needs string fields id, category and text, got {raw!r}")
    return ProtocolPrompt(id=raw["id"], category=raw["category"], text=raw["text"])


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A bundled protocol by name (``pulid``) or a YAML file of the same shape."""
    if str(name_or_path) in BUNDLED:
        source = f"protocol {name_or_path}"
        text = resources.files("instantid").joinpath("data", BUNDLED[str(name_or_path)]).read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise InvalidInputError(
                f"unknown protocol {name_or_path!r}: give one of {', '.join(BUNDLED)} or a YAML file path"
            )
        source, text = str(path), path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not raw.get("prompts") or not raw.get("seeds") or "face_prompt" not in raw:
        raise InvalidInputError(f"{source} needs 'seeds', 'face_prompt' and a non-empty 'prompts' list")
    prompts = tuple(_prompt(p, source) for p in raw["prompts"])
    ids = [p.id for p in prompts] + [raw["face_prompt"].get("id")]
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"{source}: prompt ids must be unique")
    return Protocol(
        name=str(raw.get("name", Path(str(name_or_path)).stem)),
        description=str(raw.get("description", "")),
        seeds=tuple(int(s) for s in raw["seeds"]),
        face_prompt=_prompt(raw["face_prompt"], source),
        prompts=prompts,
    )
