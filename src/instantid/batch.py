"""Batch jobs: identities x prompts x seeds from one YAML, JSON or CSV file, resumable, with a contact sheet.

YAML/JSON::

    identities:                       # one person each; several photos are averaged
      - name: alice
        photos: [alice_1.jpg, alice_2.jpg]   # relative to the job file
    prompts:
      - a watercolor portrait          # a plain string, or:
      - {prompt: an astronaut, style: Mars, negative_prompt: helmet}
    seeds: [1, 2]                      # default [0]; fixed seeds keep output names deterministic
    settings: {steps: 30, guidance_scale: 5}   # any GenerationSettings field

CSV: one image per row, columns ``identity, photos`` (``;``-separated), ``prompt`` and optionally
``style, negative_prompt, seed``; settings come from the command line.

Each output is ``<identity>/<prompt-number>-<prompt-slug>_s<seed>.png`` (+ ``.json``); a rerun skips
every output whose PNG and sidecar are both there, so an interrupted batch picks up where it stopped.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from instantid.errors import InvalidInputError, NoFaceError
from instantid.outputs import contact_sheet, is_complete, save_png_atomically, write_image

CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class Identity:
    name: str
    photos: tuple[Path, ...]


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    style: str | None = None
    negative_prompt: str | None = None  # None = the job's default negative prompt


@dataclass(frozen=True)
class BatchTask:
    """One output image."""

    identity: Identity
    prompt_number: int
    prompt: PromptSpec
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.prompt_number:03d}-{slug(self.prompt.prompt)}_s{self.seed}"

    def output(self, out_dir: Path) -> Path:
        return out_dir / self.identity.name / f"{self.stem}.png"

    @property
    def label(self) -> str:
        style = f" [{self.prompt.style}]" if self.prompt.style else ""
        return f"{self.identity.name}\n{self.prompt.prompt}{style}\nseed {self.seed}"


@dataclass
class BatchJob:
    tasks: list[BatchTask]
    settings: dict[str, Any] = field(default_factory=dict)  # GenerationSettings fields shared by all tasks


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe, deterministic short form of ``text``."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "no-prompt"


def load_job(path: str | Path) -> BatchJob:
    """Parse a job file; every problem is an :class:`InvalidInputError` naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"job file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return _from_csv(path, text)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"job file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"job file {path} must hold a mapping with identities, prompts and seeds")
    return _from_mapping(path, data)


def _from_mapping(path: Path, data: dict[str, Any]) -> BatchJob:
    unknown = set(data) - {"identities", "prompts", "seeds", "settings"}
    if unknown:
        raise InvalidInputError(f"job file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    identities = [_identity(path, entry) for entry in _list(path, data, "identities")]
    prompts = [_prompt(path, entry) for entry in _list(path, data, "prompts")]
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise InvalidInputError(f"job file {path}: seeds must be a list of non-negative integers")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise InvalidInputError(f"job file {path}: settings must be a mapping")
    tasks = [
        BatchTask(identity, number, prompt, seed)
        for identity in identities
        for number, prompt in enumerate(prompts, start=1)
        for seed in seeds
    ]
    return BatchJob(tasks, settings)


def _list(path: Path, data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"job file {path}: '{key}' must be a non-empty list")
    return value


def _identity(path: Path, entry: Any) -> Identity:
    if not isinstance(entry, dict) or "name" not in entry or "photos" not in entry:
        raise InvalidInputError(f"job file {path}: each identity needs a name and photos, got {entry!r}")
    photos = entry["photos"] if isinstance(entry["photos"], list) else [entry["photos"]]
    return _make_identity(path, str(entry["name"]), [str(p) for p in photos])


def _make_identity(path: Path, name: str, photos: list[str]) -> Identity:
    if slug(name, 80) != name.lower():
        raise InvalidInputError(f"job file {path}: identity name {name!r} must use only letters, digits and '-'")
    if not photos:
        raise InvalidInputError(f"job file {path}: identity {name} has no photos")
    return Identity(name, tuple((path.parent / p).resolve() for p in photos))


def _prompt(path: Path, entry: Any) -> PromptSpec:
    if isinstance(entry, str):
        return PromptSpec(entry)
    if isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
        unknown = set(entry) - {"prompt", "style", "negative_prompt"}
        if unknown:
            raise InvalidInputError(f"job file {path}: unknown prompt key(s) {', '.join(sorted(unknown))}")
        return PromptSpec(entry["prompt"], entry.get("style"), entry.get("negative_prompt"))
    raise InvalidInputError(f"job file {path}: a prompt is a string or a mapping with 'prompt', got {entry!r}")


def _from_csv(path: Path, text: str) -> BatchJob:
    rows = list(csv.DictReader(text.splitlines()))
    missing = {"identity", "photos", "prompt"} - set(rows[0] if rows else {})
    if missing:
        raise InvalidInputError(f"job file {path}: CSV needs the column(s) {', '.join(sorted(missing))}")
    prompts: dict[PromptSpec, int] = {}
    tasks = []
    for line, row in enumerate(rows, start=2):
        photos = [p.strip() for p in row["photos"].split(";") if p.strip()]
        identity = _make_identity(path, row["identity"].strip(), photos)
        spec = PromptSpec(row["prompt"], row.get("style") or None, row.get("negative_prompt") or None)
        number = prompts.setdefault(spec, len(prompts) + 1)
        seed_text = (row.get("seed") or "0").strip()
        if not seed_text.isdigit():
            raise InvalidInputError(f"job file {path} line {line}: seed must be a non-negative integer")
        tasks.append(BatchTask(identity, number, spec, int(seed_text)))
    return BatchJob(tasks)


def check_settings(settings: dict[str, Any]) -> None:
    from instantid.generator import GenerationSettings

    known = {f.name for f in fields(GenerationSettings)} - {"prompt", "seed", "num_images"}
    unknown = set(settings) - known
    if unknown:
        raise InvalidInputError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")


def check_faces(app: Any, job: BatchJob) -> None:
    """Fail before the first generation if any photo is unreadable or faceless, not halfway through."""
    for photo in sorted({p for task in job.tasks for p in task.identity.photos}):
        if not app.analyze(photo, str(photo)):
            raise NoFaceError(str(photo))


def pending(job: BatchJob, out_dir: Path) -> Iterator[BatchTask]:
    return (task for task in job.tasks if not is_complete(task.output(out_dir)))


def run_batch(
    app: Any, job: BatchJob, out_dir: str | Path, base_settings: Any,
    on_image: Callable[[BatchTask, Path], None] | None = None, progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate every missing output (one model, loaded once by the caller), then the contact sheet."""
    out_dir = Path(out_dir)
    check_settings(job.settings)
    settings = replace(base_settings, **job.settings, num_images=1).validate()
    check_faces(app, job)
    for task in pending(job, out_dir):
        negative = task.prompt.negative_prompt if task.prompt.negative_prompt is not None else settings.negative_prompt
        result = app.generate(
            list(task.identity.photos), settings, progress=progress, prompt=task.prompt.prompt,
            style=task.prompt.style or settings.style, negative_prompt=negative, seed=task.seed,
        )
        metadata = {**result.image_metadata(0), "identity": task.identity.name}
        # Deterministic names: a leftover PNG without its sidecar is an interrupted write, so replace it.
        png = write_image(result.images[0], metadata, out_dir / task.identity.name, task.stem, overwrite=True)
        if on_image is not None:
            on_image(task, png)
    sheet = contact_sheet([(task.output(out_dir), task.label) for task in job.tasks])
    return save_png_atomically(sheet, out_dir / CONTACT_SHEET)
