"""``instantid batch``: a job file of identities x prompts x seeds with one model load, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress

from instantid.apps.batch import FAILURES, PRECEDENCE
from instantid.cli import app
from instantid.cli.generate import (
    check_model_options,
    console,
    face_analyzer,
    face_detail_note,
    load_model,
    progress_bar,
    with_style_adapter,
)
from instantid.cli.options import with_generation_options, with_model_options
from instantid.errors import InvalidInputError

BATCH_HELP = (
    "Run a job file (YAML, JSON or CSV: identities x prompts x seeds) with one model load; rerun to resume. Ends "
    "with a labelled contact sheet.\n\n"
    f"Settings precedence: {PRECEDENCE}.\n\n"
    "Every row is checked first (settings, photos, init and style pictures, faces) and all bad rows are reported at "
    f"once; the good rows are then made, the bad ones listed in {FAILURES} in the output folder, and the exit code is "
    "1. With --fail-fast a bad row stops the batch before anything is generated (exit 2).\n\n"
    "An output counts as done only when its sidecar records the same settings, pictures and models, so a rerun redoes "
    "exactly what changed."
)


@app.command("batch", help=BATCH_HELP)
@with_model_options
@with_generation_options(exclude=("prompt", "seed", "num_images"))
def batch_command(
    jobfile: Path = typer.Argument(..., help="YAML, JSON or CSV: identities x prompts x seeds.", dir_okay=False),
    out: Path = typer.Option(Path("outputs/batch"), "--out", "-o", help="Output folder (created if missing)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first bad row or failed image."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record full paths of photos and model folders "
                                    "in the images (default: file names and Hub ids only)."),
    shard: str | None = typer.Option(None, "--shard", help="i/N: make only this process's share of the outputs "
                                     "(default under accelerate launch / torchrun: its rank and count)."),
    settings: Any = None,
    settings_given: set[str] | None = None,
    model: Any = None,
) -> None:
    from instantid.api.settings import field_label
    from instantid.apps import batch
    from instantid.io.outputs import prepare_folder
    from instantid.sharding import resolve_shard

    # 1. Cheap checks: the job file, every row's settings, the device and the output folder.
    job = batch.load_job(jobfile)
    given = sorted(settings_given or ())
    from_cli = ", ".join(f"{field_label(n)} {getattr(settings, n)}" for n in given)
    typer.echo(f"settings: {batch.PRECEDENCE}" + (f" (from the command line: {from_cli})" if from_cli else ""))
    check_model_options(model)
    if any(task.prompt.style_image for task in job.tasks):
        model = with_style_adapter(model)
    prepare_folder(out, "--out")
    model_key = model.model_dump(include={"base", "identitynet", "adapter", "lora", "lora_scale", "demo", "preset",
                                          "preset_weights", batch.STYLE_ADAPTER})
    planned, problems = batch.plan(job, settings, given, model_key, out)
    chosen = resolve_shard(shard)
    mine = batch.shard_tasks(planned, out, chosen)
    problems = batch.shard_failures(problems, out, chosen)  # each process reports the bad rows of its own share
    todo = [p for p in mine if not batch.is_done(p, out)]
    done = len(mine) - len(todo)
    # 2. Faces, each identity analysed once with the face model only, before the model load.
    identities: dict[Any, Any] = {}
    if todo:
        with console.status("checking the photos..."):
            analyzer = face_analyzer(model)
            identities, bad_faces = batch.prepare_identities(
                lambda spec, s: _prepare(analyzer, spec, s, full_paths), todo, out)
        problems += bad_faces
        for (name, *_), identity in identities.items():  # e.g. which face of a group photo is used
            for warning in identity.warnings:
                console.print(f"[yellow]warning: {name}: {warning}[/]", highlight=False)
        failed = {f.output for f in bad_faces}
        todo = [p for p in todo if str(p.task.output(out)) not in failed]
    # Counted once every row is checked, so "to generate" is what will be made (bad rows are not in it).
    where = f" (shard {chosen[0]}/{chosen[1]}: {len(mine)} of them)" if chosen is not None else ""
    bad = f", {len(problems)} bad row(s)" if problems else ""
    typer.echo(f"{len(job.tasks) + len(job.problems)} outputs{where}, {done} already done{bad}, {len(todo)} to "
               "generate")
    problems = batch.in_file_order(problems)
    if problems:
        report = "\n".join(f"  {job.path} {p}" for p in problems)
        if fail_fast:
            raise InvalidInputError(f"{len(problems)} bad row(s), nothing generated (--fail-fast):\n{report}")
        console.print(f"[red]{len(problems)} bad row(s), skipped:[/]\n{report}", highlight=False)
    # 3. One model load, every good row.
    failures = list(problems)
    if todo:
        instant = load_model(model, analyzer)
        fills = {k: v for p in todo for k, v in instant.preset_fills(p.settings).items()}
        if fills:  # each row's own steps / guidance (or a flag) still win over the preset's
            console.print(f"preset {instant.preset.name}: " + ", ".join(f"{field_label(k)} {v}" for k, v in
                                                                      fills.items()) + " where a row sets none")
        made: list[Path] = []
        try:
            with progress_bar() as bar, _chatter(model):
                overall = bar.add_task("images", total=len(todo))
                steps_task = bar.add_task("steps", total=max(instant.call_settings(p.settings).steps for p in todo))
                failures += batch.run_batch(
                    instant, todo, identities, out, fail_fast=fail_fast, full_paths=full_paths,
                    on_image=lambda planned, path: _made(bar, overall, path, instant.demo, made),
                    progress=lambda step, total: bar.update(steps_task, completed=step, total=total),
                )
        except KeyboardInterrupt:  # Ctrl-C: every written image is whole (atomic writes), so a rerun resumes
            console.print(f"interrupted after {len(made)} of {len(todo)} image(s); rerun the same command to "
                          "resume (the images made are kept)", highlight=False)
            raise typer.Exit(130) from None
    # Sharded, the sheet waits for the last process to finish: it is drawn once every output exists.
    if chosen is None or all(batch.is_done(p, out) for p in planned):
        sheet = batch.write_contact_sheet(planned, out)
        if sheet is not None:
            typer.echo(f"contact sheet: {sheet}")
    listed = batch.write_failures(out, batch.in_file_order(failures), chosen)
    if listed is not None:
        console.print(f"[red]{len(failures)} row(s) failed; listed in {listed}[/]", highlight=False)
        raise typer.Exit(1)


def _made(bar: Progress, overall: Any, path: Path, demo: bool, made: list[Path]) -> None:
    """One batch output written: the overall bar moves, its path is printed, and a skipped face-detail pass said."""
    import json

    made.append(path)
    bar.advance(overall)
    bar.console.print(str(path), highlight=False)
    note = face_detail_note(json.loads(path.with_suffix(".json").read_text(encoding="utf-8")), path, demo)
    if note:
        bar.console.print(f"[yellow]{note}[/]", highlight=False)


def _prepare(analyzer: Any, spec: Any, settings: Any, full_paths: bool) -> Any:
    from instantid.api.face_side import prepare_identity

    return prepare_identity(analyzer, list(spec.photos), face_index=settings.face_index, fusion=settings.fusion,
                            full_paths=full_paths)


def _chatter(model: Any) -> Any:
    from instantid.io.loading import library_chatter

    return library_chatter(model.verbose)
