"""``instantid generate`` (face photos -> PNGs), ``instantid batch`` (job file) and ``instantid doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from instantid.cli import app
from instantid.cli.options import model_option, with_generation_options, with_model_options
from instantid.errors import InvalidInputError

console = Console(stderr=True)
DEMO_WARNING = (
    "DEMO MODE: tiny random weights, no download. The whole pipeline runs, but the images are noise, "
    "not portraits. Drop --demo (and see `instantid doctor`) for real results."
)

def load_model(model: Any) -> Any:
    """Load with a spinner; announce demo mode loudly, before and after."""
    if model.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")
    with console.status("loading models..."):
        instant = model.load()
    instant.pipe.set_progress_bar_config(disable=True)  # our own bar shows the steps
    return instant


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console)


def parse_seeds(seeds: list[int], seed_list: str | None) -> list[int | None]:
    values = list(seeds)
    for part in (seed_list or "").split(","):
        if part.strip():
            if not part.strip().isdigit():
                raise InvalidInputError(f"--seeds must be comma-separated non-negative integers, got {part.strip()!r}")
            values.append(int(part))
    return values or [None]  # None = random, recorded in the output


@app.command("generate")
@with_model_options
@with_generation_options(exclude=("num_images", "seed"))
def generate_command(
    faces: list[Path] = typer.Argument(..., help="Photo(s) of one person; several are fused.", dir_okay=False),
    seed: list[int] = typer.Option([], help="Seed; repeat for several runs."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 1,2,3."),
    num_images: int = typer.Option(1, help="Images per seed (consecutive seeds)."),
    pose: Path | None = typer.Option(None, help="Take pose (keypoints) and size from this photo.", dir_okay=False),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder.", file_okay=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    settings: Any = None,
    model: Any = None,
) -> None:
    """Generate images of the person in FACE: PNGs with settings inside, plus a JSON sidecar each."""
    from instantid.batch import slug
    from instantid.outputs import write_image
    from instantid.settings import field_label, make_settings

    run_seeds = parse_seeds(seed, seeds)
    settings = make_settings({**settings.model_dump(), "num_images": num_images}, field_label)
    for value in run_seeds:
        make_settings({"seed": value}, field_label)
    instant = load_model(model)
    identity = instant.prepare_identity([str(f) for f in faces], pose=pose, face_index=settings.face_index,
                                        fusion=settings.fusion)
    for warning in identity.warnings:
        console.print(f"[yellow]warning: {warning}[/]")
    written: list[Path] = []
    with progress_bar() as bar:
        for value in run_seeds:
            task = bar.add_task(f"seed {value if value is not None else 'random'}", total=settings.steps)
            result = instant.generate(identity, settings.updated(seed=value),
                                      progress=lambda step, total, task=task: bar.update(task, completed=step,
                                                                                          total=total))
            for i, image in enumerate(result.images):
                metadata = result.image_metadata(i)
                stem = f"{slug(settings.prompt or 'portrait', 30)}_s{metadata['seed']}"
                written.append(write_image(image, metadata, out, stem, overwrite=overwrite))
    for path in written:
        typer.echo(str(path))
    if instant.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")


@app.command("batch")
@with_model_options
def batch_command(
    jobfile: Path = typer.Argument(..., help="YAML, JSON or CSV: identities x prompts x seeds.", dir_okay=False),
    out: Path = typer.Option(Path("outputs/batch"), "--out", "-o", help="Output folder.", file_okay=False),
    steps: int = typer.Option(30, help="Denoising steps (a job file's settings win)."),
    model: Any = None,
) -> None:
    """Run a job file with one model load; rerun to resume. Ends with a labelled contact sheet.

    Finished outputs (PNG + sidecar under deterministic names) are skipped.
    """
    from instantid.batch import load_job, pending, run_batch
    from instantid.settings import GenerationSettings

    job = load_job(jobfile)
    todo = list(pending(job, out))
    typer.echo(f"{len(job.tasks)} outputs, {len(job.tasks) - len(todo)} already done, {len(todo)} to generate")
    instant = load_model(model) if todo or not (out / "contact_sheet.png").exists() else None
    if instant is None:
        typer.echo(f"nothing to do: {out / 'contact_sheet.png'}")
        return
    with progress_bar() as bar:
        overall = bar.add_task("images", total=len(todo))
        steps_task = bar.add_task("steps", total=steps)
        sheet = run_batch(
            instant, job, out, GenerationSettings(steps=steps),
            on_image=lambda task, path: (bar.advance(overall), bar.console.print(str(path))),
            progress=lambda step, total: bar.update(steps_task, completed=step, total=total),
        )
    typer.echo(f"contact sheet: {sheet}")
    if instant.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")


@app.command("doctor")
def doctor_command(
    base: str | None = model_option("base"),
    identitynet: str | None = model_option("identitynet"),
    adapter: str | None = model_option("adapter"),
    antelopev2_root: Path | None = model_option("antelopev2_root"),
) -> None:
    """Report what is installed, what is missing and where to get it; downloads nothing.

    Exit 0 when everything for real generation is present, else 1.
    """
    import torch

    from instantid.errors import MissingWeightsError
    from instantid.faces.antelopev2 import candidate_folders, find_antelopev2
    from instantid.faces.dlib_backend import dlib_models_dir
    from instantid.models import ANTELOPEV2_HINT, ModelRefs, describe

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    cuda = f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
    typer.echo(f"torch {torch.__version__}: CUDA {cuda}, MPS {'yes' if mps else 'no'}")
    refs = ModelRefs(**{k: v for k, v in (("base", base), ("identitynet", identitynet), ("adapter", adapter)) if v})
    ok = True
    for kind, _ref, path, problem in describe(refs):
        ok &= problem is None
        typer.echo(f"[{'ok' if problem is None else 'MISSING'}] {kind}: {path or problem}")
    folder = find_antelopev2(antelopev2_root)
    ok &= folder is not None
    searched = ", ".join(str(f) for f in candidate_folders(antelopev2_root))
    typer.echo(f"[ok] antelopev2: {folder}" if folder else f"[MISSING] antelopev2 (searched {searched}): "
               f"{ANTELOPEV2_HINT}")
    try:
        typer.echo(f"[ok] dlib face models (for --face-backend dlib and --demo): {dlib_models_dir()}")
    except MissingWeightsError as exc:
        typer.echo(f"[info] dlib face models: {exc}")
    typer.echo("everything needed for real generation is present" if ok else
               "some files are missing (see above); `instantid generate --demo` works without them")
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which drops Exit codes.
    raise SystemExit(0 if ok else 1)
