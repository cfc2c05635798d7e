"""Batch jobs: identities x prompts x seeds from one YAML, JSON or CSV file, resumable, with a contact sheet.

YAML/JSON::

    identities:                       # one person each; several photos are fused
      - name: alice
        photos: [alice_1.jpg, alice_2.jpg]   # relative to the job file
    prompts:
      - a watercolor portrait          # a plain string, or a mapping with any settings for this row:
      - {prompt: an astronaut, style: Mars, negative_prompt: helmet, steps: 20}
      - {prompt: an oil painting, init_image: room.jpg, denoising_strength: 0.6}   # image-to-image
      - {prompt: a portrait, style_image: [ink1.jpg, ink2.jpg], style_strength: 0.8}  # style references
    seeds: [1, 2]                      # default [0]; fixed seeds keep output names deterministic
    settings: {steps: 30, guidance_scale: 5}   # any generation setting, for every row

CSV (UTF-8, also as Excel saves it: with a BOM and CRLF line ends; Windows-1252 is read too): one image per
row, columns ``identity, photos`` (``;``-separated), ``prompt`` and optionally ``style, negative_prompt, seed``,
``init_image``, ``style_image`` (``;``-separated) and any generation setting by its field name (``steps``,
``guidance_scale``, ``denoising_strength``, ``style_strength``...). Empty cells mean "not set". Picture paths are
relative to the job file.

Precedence, highest first (see :data:`PRECEDENCE`): a flag typed on the command line, the row (prompt entry or
CSV row), the job file's ``settings``, the defaults.

Each output is ``<identity>/<prompt-number>-<prompt-slug>_s<seed>.png`` (+ ``.json``). The sidecar holds a
digest of everything that made the image (settings, photos, init and style pictures, models); a rerun skips an
output only when its PNG and sidecar are there with the same digest, so an interrupted or re-tuned batch redoes
exactly what changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantid.api.settings import GenerationSettings, make_settings
from instantid.apps.batch_file import (
    NOT_SETTINGS,
    BatchJob,
    BatchTask,
    Failure,
    IdentitySpec,
    load_job,
)
from instantid.errors import InstantIDError, InvalidInputError
from instantid.faces.images import check_file, check_image
from instantid.io.outputs import (
    contact_sheet,
    is_complete,
    save_png_atomically,
    write_bytes_atomically,
    write_image,
)
from instantid.sharding import shard_of

CONTACT_SHEET = "contact_sheet.png"
FAILURES = "failures.jsonl"
DIGEST_KEY = "batch_digest"
PRECEDENCE = "command-line flags > job file rows > job file 'settings' > defaults"
STYLE_ADAPTER = "style_adapter"  # the model option that only rows with a style picture depend on

if TYPE_CHECKING:
    from instantid.api.generator import InstantID


@dataclass(frozen=True)
class PlannedTask:
    """A task with its final settings and the digest of everything that makes its image."""

    task: BatchTask
    settings: GenerationSettings
    digest: str


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
    """A digest of what makes the image: settings, the photos' bytes, the models, and the row's init and style
    pictures (names and bytes; a row without them digests as it did before they existed). Changes -> regenerate."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"settings": settings.model_dump(), "model": model}, sort_keys=True,
                             default=str).encode())
    for photo in task.identity.photos:
        digest.update(_file_digest(photo).encode())
    for key, pictures in task.prompt.pictures().items():
        for picture in pictures:
            digest.update(f"{key}:{picture.name}:{_file_digest(picture)}".encode())
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
    or picture is missing, or whose strengths need a picture it does not name, is a bad row here, before any face
    model loads. ``model[STYLE_ADAPTER]`` counts for the digests of rows with a style picture only."""
    given = set(given)
    keys = {styled: _model_key({k: v for k, v in model.items() if styled or k != STYLE_ADAPTER})
            for styled in (False, True)}
    planned, problems = [], list(job.problems)
    for task in job.tasks:
        try:
            for photo in task.identity.photos:
                check_file(photo, photo.name)
            for key, pictures in task.prompt.pictures().items():
                for picture in pictures:
                    check_image(picture, f"{picture.name} ({key})")
            settings = task_settings(job, task, cli, given)
            check_pictures(task, settings)
        except InstantIDError as exc:
            problems.append(Failure(task.where, str(exc), str(task.output(out_dir))))
            continue
        model_key = keys[bool(task.prompt.style_image)]
        planned.append(PlannedTask(task, settings, task_digest(task, settings, model_key)))
    return planned, problems


def _model_key(model: dict[str, Any]) -> dict[str, Any]:
    files = model_files(model)
    # "files" only when there are some, so that digests made with Hub models alone stay valid.
    return {**model, "files": files} if files else model


def check_pictures(task: BatchTask, settings: GenerationSettings) -> None:
    """The strengths a row's settings give need its pictures: ``denoising_strength`` an init image (the API's one
    rule), ``style_strength`` / ``style_blocks`` a style image (as ``generate``'s flags), rather than being
    ignored or failing at generation."""
    settings.check_init_image(task.prompt.init_image is not None, "an init_image")
    if not task.prompt.style_image:
        for name in ("style_strength", "style_blocks"):
            if getattr(settings, name) != GenerationSettings.model_fields[name].default:
                raise InvalidInputError(f"{name} is for style references: give a style_image too")


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
    app: InstantID, todo: Iterable[PlannedTask], identities: dict[Any, Any], out_dir: str | Path, *,
    on_image: Callable[[PlannedTask, Path], None] | None = None, progress: Callable[[int, int], None] | None = None,
    fail_fast: bool = False, full_paths: bool = False,
) -> list[Failure]:
    """Generate every task in ``todo`` with one loaded model; a task that fails is recorded and the rest go on
    (``fail_fast``: the first failure stops the batch)."""
    from instantid.api.style_images import StyleImages, load_style_images

    out_dir = Path(out_dir)
    failures = []
    styles: dict[tuple[Path, ...], StyleImages] = {}  # each set of style pictures read once
    for planned in todo:
        task = planned.task
        init, style_paths = task.prompt.init_image, task.prompt.style_image
        try:
            if style_paths and style_paths not in styles:
                styles[style_paths] = load_style_images(list(style_paths), full_paths=full_paths)
            # The pictures are named in the metadata as `instantid generate` names them.
            result = app.generate(identities[identity_key(planned)], planned.settings, progress=progress,
                                  init_image=init, init_name=init.name if init else "init image",
                                  style_images=styles.get(style_paths))
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


# The job file's reader is re-exported: callers read and run a batch through this one module.
__all__ = [
    "CONTACT_SHEET", "DIGEST_KEY", "FAILURES", "PRECEDENCE", "STYLE_ADAPTER", "BatchJob", "BatchTask", "Failure",
    "IdentitySpec", "PlannedTask", "check_pictures", "failures_path", "finished", "identity_key", "in_file_order",
    "is_done", "load_job", "model_files", "plan", "prepare_identities", "run_batch", "shard_failures", "shard_tasks",
    "task_digest", "task_settings", "write_contact_sheet", "write_failures",
]
