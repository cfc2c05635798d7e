"""Reading a batch job file (YAML, JSON or CSV; the format is described in :mod:`instantid.apps.batch`): every bad
entry is found and named before anything runs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from instantid.api.settings import GenerationSettings
from instantid.api.style_images import MAX_STYLE_IMAGES
from instantid.errors import InvalidInputError
from instantid.io.outputs import (
    slug,
)

# Fields a row or the job's settings cannot set: the prompt and seed have their own keys, one image per row.
NOT_SETTINGS = ("prompt", "seed", "num_images")
SETTING_NAMES = tuple(n for n in GenerationSettings.model_fields if n not in NOT_SETTINGS)


@dataclass(frozen=True)
class IdentitySpec:
    """A person as the job file names them; analysed once into an :class:`~instantid.api.identity.Identity`."""

    name: str
    photos: tuple[Path, ...]


@dataclass(frozen=True)
class PromptSpec:
    """A row's own keys (a prompt entry's keys, CSV columns), named as the settings and ``generate``'s flags."""

    prompt: str
    style: str | None = None
    negative_prompt: str | None = None  # None = the job's default negative prompt
    settings: tuple[tuple[str, Any], ...] = ()  # this row's own settings (hashable, in file order)
    # Pictures besides the person's photos (--init-image, --style-image), resolved from the job file's folder.
    init_image: Path | None = None  # image-to-image from this picture, at the row's denoising_strength
    style_image: tuple[Path, ...] = ()  # style references (InstantStyle), at its style_strength and style_blocks

    def pictures(self) -> dict[str, tuple[Path, ...]]:
        """The row's pictures by key, those it names only."""
        found = {"init_image": (self.init_image,) if self.init_image else (), "style_image": self.style_image}
        return {key: paths for key, paths in found.items() if paths}


# A row's keys besides settings, declared once: the fields above.
ROW_KEYS = tuple(f.name for f in fields(PromptSpec) if f.name != "settings")


@dataclass(frozen=True)
class BatchTask:
    """One output image, and where the job file asked for it (for messages)."""

    identity: IdentitySpec
    prompt_number: int
    prompt: PromptSpec
    seed: int
    where: str

    @property
    def stem(self) -> str:
        return f"{self.prompt_number:03d}-{slug(self.prompt.prompt)}_s{self.seed}"

    def output(self, out_dir: Path) -> Path:
        return out_dir / self.identity.name / f"{self.stem}.png"

    @property
    def label(self) -> str:
        style = f" [{self.prompt.style}]" if self.prompt.style else ""
        return f"{self.identity.name}\n{self.prompt.prompt}{style}\nseed {self.seed}"


@dataclass(frozen=True)
class Failure:
    """A row that could not be made: where the job file asks for it, why, and the output it would have been."""

    where: str
    error: str
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "error": self.error, "output": self.output}

    def __str__(self) -> str:
        return f"{self.where}: {self.error}"


@dataclass
class BatchJob:
    path: Path
    tasks: list[BatchTask]
    settings: dict[str, Any] = field(default_factory=dict)  # the job file's shared settings
    problems: list[Failure] = field(default_factory=list)  # bad rows found while reading (left out of tasks)


# ---- reading job files ---------------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    """A job file's text: UTF-8 (with or without Excel's BOM), UTF-16 with a BOM, or Windows-1252 (Excel's
    'CSV' on Windows); anything else is one readable error."""
    data = path.read_bytes()
    # UTF-16 needs its BOM; NUL bytes anywhere else mean a binary file (Windows-1252 would decode it as junk).
    encodings = ("utf-16",) if data.startswith((b"\xff\xfe", b"\xfe\xff")) else () if b"\0" in data else (
        "utf-8-sig", "cp1252")
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidInputError(f"job file {path} is not text in UTF-8 or Windows-1252 (a binary file?); save it as "
                            "UTF-8 YAML, JSON or CSV")


def load_job(path: str | Path) -> BatchJob:
    """Parse a job file. A file-wide problem is an :class:`InvalidInputError`; a bad row is listed in
    ``problems`` (with its line or entry) and left out, so every bad row can be reported at once."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"job file {path} not found")
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        return _from_csv(path, text)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InvalidInputError(f"job file {path} is not valid {path.suffix.lstrip('.').upper()}: {reason}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"job file {path} must hold a mapping with identities, prompts and seeds")
    return _from_mapping(path, data)


def _from_mapping(path: Path, data: dict[str, Any]) -> BatchJob:
    unknown = set(data) - {"identities", "prompts", "seeds", "settings"}
    if unknown:
        raise InvalidInputError(f"job file {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise InvalidInputError(f"job file {path}: seeds must be a list of non-negative integers")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise InvalidInputError(f"job file {path}: settings must be a mapping")
    _check_setting_names(path, "settings", settings)
    problems: list[Failure] = []
    identities = _collect(problems, "identity", _list(path, data, "identities"), lambda e: _identity(path, e))
    prompts = _collect(problems, "prompt", _list(path, data, "prompts"), lambda e: _prompt(path, e))
    names = [identity.name for _, identity in identities]
    for name in {n for n in names if names.count(n) > 1}:
        raise InvalidInputError(f"job file {path}: identity name {name!r} is used twice; names are folder names")
    tasks = [
        BatchTask(identity, number, prompt, seed, f"identity {identity.name}, prompt {number}, seed {seed}")
        for _, identity in identities
        for number, prompt in prompts
        for seed in seeds
    ]
    return BatchJob(path, tasks, settings, problems)


def _collect(problems: list[Failure], kind: str, entries: list[Any], parse: Callable[[Any], Any]
             ) -> list[tuple[int, Any]]:
    """Parse each entry (numbered from 1); keep what parses, note what does not, with where it is."""
    kept = []
    for number, entry in enumerate(entries, start=1):
        try:
            kept.append((number, parse(entry)))
        except InvalidInputError as exc:
            problems.append(Failure(f"{kind} {number}", str(exc)))
    return kept


def _list(path: Path, data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"job file {path}: '{key}' must be a non-empty list")
    return value


def _check_setting_names(path: Path, where: str, values: dict[str, Any]) -> None:
    unknown = sorted(str(k) for k in values if k not in SETTING_NAMES)
    if unknown:
        raise InvalidInputError(f"job file {path} {where}: unknown setting(s) {', '.join(unknown)}; "
                                f"known: {', '.join(SETTING_NAMES)}")


def _identity(path: Path, entry: Any) -> IdentitySpec:
    if not isinstance(entry, dict) or "name" not in entry or "photos" not in entry:
        raise InvalidInputError(f"each identity needs a name and photos, got {entry!r}")
    photos = entry["photos"] if isinstance(entry["photos"], list) else [entry["photos"]]
    return _make_identity(path, str(entry["name"]), [str(p) for p in photos if p is not None])


def _make_identity(path: Path, name: str, photos: list[str]) -> IdentitySpec:
    if not name or slug(name, 80) != name.lower():
        raise InvalidInputError(f"identity name {name!r} must use only letters, digits and '-'")
    if not photos:
        raise InvalidInputError(f"identity {name} has no photos")
    return IdentitySpec(name, tuple(_resolve(path, p) for p in photos))


def _prompt(path: Path, entry: Any) -> PromptSpec:
    if isinstance(entry, str):
        return PromptSpec(entry)
    if isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
        unknown = sorted(str(k) for k in entry if k not in ROW_KEYS and k not in SETTING_NAMES)
        if unknown:
            raise InvalidInputError(f"unknown key(s) {', '.join(unknown)}")
        own = tuple((k, v) for k, v in entry.items() if k not in ROW_KEYS)
        init, styles = entry.get("init_image"), entry.get("style_image")
        if init is not None and not isinstance(init, str):
            raise InvalidInputError(f"init_image is one picture's path, got {init!r}")
        styles = [styles] if isinstance(styles, str) else [] if styles is None else styles
        if not isinstance(styles, list) or not all(isinstance(s, str) for s in styles):
            raise InvalidInputError(f"style_image is a path or a list of paths, got {entry['style_image']!r}")
        return PromptSpec(entry["prompt"], entry.get("style"), entry.get("negative_prompt"), own,
                          *_pictures(path, init, styles))
    raise InvalidInputError(f"a prompt is a string or a mapping with 'prompt', got {entry!r}")


def _pictures(path: Path, init: str | None, styles: list[str]) -> tuple[Path | None, tuple[Path, ...]]:
    """A row's init and style pictures as paths (relative to the job file, like photos), their count checked."""
    if len(styles) > MAX_STYLE_IMAGES:
        raise InvalidInputError(f"style_image takes 1 to {MAX_STYLE_IMAGES} pictures, got {len(styles)}")
    return (_resolve(path, init) if init else None), tuple(_resolve(path, s) for s in styles)


def _resolve(path: Path, photo: str) -> Path:
    # "~/x.jpg" is the home folder's, not a "~" folder beside the job file.
    return (path.parent / Path(photo).expanduser()).resolve()


def _from_csv(path: Path, text: str) -> BatchJob:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # Excel and hand-made files vary in case and spacing of the header.
    reader.fieldnames = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    missing = {"identity", "photos", "prompt"} - set(reader.fieldnames)
    if missing:
        raise InvalidInputError(f"job file {path}: CSV needs the column(s) {', '.join(sorted(missing))}")
    extra = [c for c in reader.fieldnames if c and c not in {"identity", "photos", "seed", *ROW_KEYS}]
    _check_setting_names(path, "header", dict.fromkeys(extra))
    prompts: dict[tuple[str, Path | None, tuple[Path, ...]], int] = {}
    tasks, problems = [], []
    for row in reader:
        line = reader.line_num
        cells = {k: (v or "").strip() for k, v in row.items() if k}  # missing cells read as None: empty
        if not any(cells.values()):
            continue  # blank line, or a row of empty cells as spreadsheets export them
        try:
            photos = [p.strip() for p in cells.get("photos", "").split(";") if p.strip()]
            identity = _make_identity(path, cells.get("identity", ""), photos)
            if not cells.get("seed", "0").isdigit() and cells.get("seed"):
                raise InvalidInputError(f"seed must be a non-negative integer, got {cells['seed']!r}")
            own = tuple((k, cells[k]) for k in extra if cells.get(k))
            styles = [p.strip() for p in cells.get("style_image", "").split(";") if p.strip()]
            spec = PromptSpec(cells.get("prompt", ""), cells.get("style") or None,
                              cells.get("negative_prompt") or None, own,
                              *_pictures(path, cells.get("init_image") or None, styles))
        except InvalidInputError as exc:
            problems.append(Failure(f"line {line}", str(exc)))
            continue
        # One number per prompt and pictures: rows that differ in their init or style picture are other outputs.
        number = prompts.setdefault((spec.prompt, spec.init_image, spec.style_image), len(prompts) + 1)
        tasks.append(BatchTask(identity, number, spec, int(cells.get("seed") or 0), f"line {line}"))
    if not tasks and not problems:
        raise InvalidInputError(f"job file {path}: no rows")
    return BatchJob(path, tasks, {}, problems)
