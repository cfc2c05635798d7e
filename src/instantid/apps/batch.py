"""Batch jobs: identities x prompts x seeds from one YAML, JSON or CSV file, resumable, with a contact sheet.

YAML/JSON::

    identities:                       # one person each; several photos are fused
      - name: alice
        photos: [alice_1.jpg, alice_2.jpg]   # relative to the job file
    prompts:
      - a watercolor portrait          # a plain string, or a mapping with any settings for this row:
      - {prompt: an astronaut, style: Mars, negative_prompt: helmet, steps: 20}
    seeds: [1, 2]                      # default [0]; fixed seeds keep output names deterministic
    settings: {steps: 30, guidance_scale: 5}   # any generation setting, for every row

CSV (UTF-8, also as Excel saves it: with a BOM and CRLF line ends; Windows-1252 is read too): one image per
row, columns ``identity, photos`` (``;``-separated), ``prompt`` and optionally ``style, negative_prompt, seed``
and any generation setting by its field name (``steps``, ``guidance_scale``...). Empty cells mean "not set".

Precedence, highest first (see :data:`PRECEDENCE`): a flag typed on the command line, the row (prompt entry or
CSV row), the job file's ``settings``, the defaults.

Each output is ``<identity>/<prompt-number>-<prompt-slug>_s<seed>.png`` (+ ``.json``). The sidecar holds a
digest of everything that made the image (settings, photos, models); a rerun skips an output only when its
PNG and sidecar are there with the same digest, so an interrupted or re-tuned batch redoes exactly what changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instantid.api.settings import GenerationSettings, make_settings
from instantid.errors import InstantIDError, InvalidInputError
from instantid.faces.images import check_file
from instantid.io.outputs import (
    contact_sheet,
    is_complete,
    save_png_atomically,
    slug,
    write_bytes_atomically,
    write_image,
)
from instantid.sharding import shard_of

CONTACT_SHEET = "contact_sheet.png"
FAILURES = "failures.jsonl"
DIGEST_KEY = "batch_digest"
PRECEDENCE = "command-line flags > job file rows > job file 'settings' > defaults"
# Fields a row or the job's settings cannot set: the prompt and seed have their own keys, one image per row.
ROW_KEYS = ("prompt", "style", "negative_prompt")
NOT_SETTINGS = ("prompt", "seed", "num_images")
SETTING_NAMES = tuple(n for n in GenerationSettings.model_fields if n not in NOT_SETTINGS)


@dataclass(frozen=True)
class IdentitySpec:
    """A person as the job file names them; analysed once into an :class:`~instantid.api.identity.Identity`."""

    name: str
    photos: tuple[Path, ...]


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    style: str | None = None
    negative_prompt: str | None = None  # None = the job's default negative prompt
    settings: tuple[tuple[str, Any], ...] = ()  # this row's own settings (hashable, in file order)


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


@dataclass(frozen=True)
class PlannedTask:
    """A task with its final settings and the digest of everything that makes its image."""

    task: BatchTask
    settings: GenerationSettings
    digest: str


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
    prompts = _collect(problems, "prompt", _list(path, data, "prompts"), _prompt)
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
    # "~/x.jpg" is the home folder's, not a "~" folder beside the job file.
    return IdentitySpec(name, tuple((path.parent / Path(p).expanduser()).resolve() for p in photos))


def _prompt(entry: Any) -> PromptSpec:
    if isinstance(entry, str):
        return PromptSpec(entry)
    if isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
        unknown = sorted(str(k) for k in entry if k not in ROW_KEYS and k not in SETTING_NAMES)
        if unknown:
            raise InvalidInputError(f"unknown key(s) {', '.join(unknown)}")
        own = tuple((k, v) for k, v in entry.items() if k not in ROW_KEYS)
        return PromptSpec(entry["prompt"], entry.get("style"), entry.get("negative_prompt"), own)
    raise InvalidInputError(f"a prompt is a string or a mapping with 'prompt', got {entry!r}")


def _from_csv(path: Path, text: str) -> BatchJob:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # Excel and hand-made files vary in case and spacing of the header.
    reader.fieldnames = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    missing = {"identity", "photos", "prompt"} - set(reader.fieldnames)
    if missing:
        raise InvalidInputError(f"job file {path}: CSV needs the column(s) {', '.join(sorted(missing))}")
    extra = [c for c in reader.fieldnames if c and c not in {"identity", "photos", "seed", *ROW_KEYS}]
    _check_setting_names(path, "header", dict.fromkeys(extra))
    prompts: dict[str, int] = {}
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
            spec = PromptSpec(cells.get("prompt", ""), cells.get("style") or None,
                              cells.get("negative_prompt") or None, own)
        except InvalidInputError as exc:
            problems.append(Failure(f"line {line}", str(exc)))
            continue
        number = prompts.setdefault(spec.prompt, len(prompts) + 1)
        tasks.append(BatchTask(identity, number, spec, int(cells.get("seed") or 0), f"line {line}"))
    if not tasks and not problems:
        raise InvalidInputError(f"job file {path}: no rows")
    return BatchJob(path, tasks, {}, problems)


# ---- settings, digests, resume -------------------------------------------------------------------------------
def task_settings(job: BatchJob, task: BatchTask, cli: GenerationSettings, given: Iterable[str]) -> GenerationSettings:
    """The task's settings by :data:`PRECEDENCE`; a bad job-file value is an error naming its key."""
    row = dict(task.prompt.settings)
    for key, value in (("style", task.prompt.style), ("negative_prompt", task.prompt.negative_prompt)):
        if value is not None:
            row[key] = value
    values: dict[str, Any] = {**job.settings, **row}
    values.update({name: getattr(cli, name) for name in given if name not in NOT_SETTINGS})
    values.update(prompt=task.prompt.prompt, seed=task.seed, num_images=1)
    return make_settings(values, lambda name: repr(name))


def task_digest(task: BatchTask, settings: GenerationSettings, model: dict[str, Any]) -> str:
    """A digest of what makes the image: settings, the photos' bytes, the models. Changes -> regenerate."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"settings": settings.model_dump(), "model": model}, sort_keys=True,
                             default=str).encode())
    for photo in task.identity.photos:
        digest.update(_file_digest(photo).encode())
    return digest.hexdigest()[:16]


_photo_digests: dict[tuple[Path, int, int], str] = {}


def _file_digest(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"missing:{path.name}"
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _photo_digests:
        _photo_digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _photo_digests[key]


def model_files(model: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """Size and modification time of each file of every local model file or folder in ``model`` (base,
    IdentityNet, adapter, LoRA): a model replaced under the same name changes the digest. Hub ids have none.
    Not the contents' hash, unlike photos: hashing gigabytes of weights on every rerun would cost minutes."""
    found: dict[str, list[list[Any]]] = {}
    for key, value in sorted(model.items()):
        path = Path(value).expanduser() if isinstance(value, str) else None
        if path is None or not path.exists():
            continue
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found[key] = [[p.relative_to(path).as_posix() if p != path else p.name, p.stat().st_size,
                       p.stat().st_mtime_ns] for p in files]
    return found


def is_done(planned: PlannedTask, out_dir: Path) -> bool:
    """An output counts as done only with its sidecar and the same digest (same settings, photos, models)."""
    png = planned.task.output(out_dir)
    if not is_complete(png):
        return False
    try:
        stored = json.loads(png.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and stored.get(DIGEST_KEY) == planned.digest


def plan(job: BatchJob, cli: GenerationSettings, given: Iterable[str], model: dict[str, Any], out_dir: Path
         ) -> tuple[list[PlannedTask], list[Failure]]:
    """Every task's settings and digest, plus every bad row (the job file's own problems first). A row whose photo
    is missing is a bad row here, before any face model loads."""
    given = set(given)
    files = model_files(model)
    if files:  # only then, so that digests made with Hub models alone stay valid
        model = {**model, "files": files}
    planned, problems = [], list(job.problems)
    for task in job.tasks:
        try:
            for photo in task.identity.photos:
                check_file(photo, photo.name)
            settings = task_settings(job, task, cli, given)
        except InstantIDError as exc:
            problems.append(Failure(task.where, str(exc), str(task.output(out_dir))))
            continue
        planned.append(PlannedTask(task, settings, task_digest(task, settings, model)))
    return planned, problems


def identity_key(planned: PlannedTask) -> tuple[str, int | None, str]:
    """What an analysed identity depends on: the person, which face in the photos, how they are fused."""
    return planned.task.identity.name, planned.settings.face_index, planned.settings.fusion


# ---- running -------------------------------------------------------------------------------------------------
def prepare_identities(analyze: Callable[[IdentitySpec, GenerationSettings], Any], tasks: Iterable[PlannedTask],
                       out_dir: Path) -> tuple[dict[tuple[str, int | None, str], Any], list[Failure]]:
    """Analyse each identity's photos once (``analyze`` builds an Identity); a bad photo fails every row of that
    identity, each listed once in the failures."""
    identities: dict[tuple[str, int | None, str], Any] = {}
    errors: dict[tuple[str, int | None, str], str] = {}
    failures = []
    for planned in tasks:
        key = identity_key(planned)
        if key not in identities and key not in errors:
            try:
                identities[key] = analyze(planned.task.identity, planned.settings)
            except InstantIDError as exc:
                errors[key] = str(exc)
        if key in errors:
            failures.append(Failure(planned.task.where, errors[key], str(planned.task.output(out_dir))))
    return identities, failures


def run_batch(
    app: Any, todo: Iterable[PlannedTask], identities: dict[Any, Any], out_dir: str | Path, *,
    on_image: Callable[[PlannedTask, Path], None] | None = None, progress: Callable[[int, int], None] | None = None,
    fail_fast: bool = False, full_paths: bool = False,
) -> list[Failure]:
    """Generate every task in ``todo`` with one loaded model; a task that fails is recorded and the rest go on
    (``fail_fast``: the first failure stops the batch)."""
    out_dir = Path(out_dir)
    failures = []
    for planned in todo:
        task = planned.task
        try:
            result = app.generate(identities[identity_key(planned)], planned.settings, progress=progress)
            metadata = {**result.image_metadata(0), "identity": task.identity.name, DIGEST_KEY: planned.digest}
            # Deterministic names: an output with other settings, or without its sidecar, is replaced.
            png = write_image(result.images[0], metadata, out_dir / task.identity.name, task.stem, overwrite=True,
                              full_paths=full_paths)
        except InstantIDError as exc:
            if fail_fast:
                raise
            failures.append(Failure(task.where, str(exc), str(task.output(out_dir))))
            continue
        if on_image is not None:
            on_image(planned, png)
    return failures


def shard_tasks(planned: list[PlannedTask], out_dir: Path, shard: tuple[int, int] | None) -> list[PlannedTask]:
    """The outputs process ``i`` of ``N`` makes: those whose output path hashes to ``i`` (see
    :mod:`instantid.sharding`), so every output is made by exactly one process, whatever the row order."""
    if shard is None:
        return planned
    index, count = shard
    return [p for p in planned if _owner(p.task.output(out_dir), out_dir, count) == index]


def shard_failures(failures: list[Failure], out_dir: Path, shard: tuple[int, int] | None) -> list[Failure]:
    """The bad rows process ``i`` of ``N`` reports: those whose output would be its own (as :func:`shard_tasks`),
    and on process 0 those without an output (a row that could not even be read)."""
    if shard is None:
        return failures
    index, count = shard
    return [f for f in failures if (_owner(Path(f.output), out_dir, count) if f.output else 0) == index]


def _owner(output: Path, out_dir: Path, count: int) -> int:
    return shard_of(output.relative_to(out_dir).as_posix(), count)


def failures_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    """``failures.jsonl``, or ``failures-<i>-of-<N>.jsonl`` per shard (processes never write one file)."""
    return Path(out_dir) / (FAILURES if shard is None else f"{Path(FAILURES).stem}-{shard[0]}-of-{shard[1]}.jsonl")


def in_file_order(failures: Iterable[Failure]) -> list[Failure]:
    """Failures in the order of the job file: by where, numbers compared as numbers ("line 9" before "line 10")."""
    def key(failure: Failure) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", failure.where)]

    return sorted(failures, key=key)


def write_failures(out_dir: Path, failures: list[Failure], shard: tuple[int, int] | None = None) -> Path | None:
    """``failures.jsonl`` (one JSON object per failed row) when something failed; a stale one is removed."""
    path = failures_path(out_dir, shard)
    if not failures:
        path.unlink(missing_ok=True)
        return None
    return write_bytes_atomically(path, "".join(json.dumps(f.to_dict()) + "\n" for f in failures).encode())


def finished(planned: Iterable[PlannedTask], out_dir: Path) -> Iterator[PlannedTask]:
    return (p for p in planned if is_done(p, out_dir))


def write_contact_sheet(planned: list[PlannedTask], out_dir: Path) -> Path | None:
    """The contact sheet of every finished output (none when nothing is finished)."""
    done = [(p.task.output(out_dir), p.task.label) for p in finished(planned, out_dir)]
    return save_png_atomically(contact_sheet(done), out_dir / CONTACT_SHEET) if done else None
