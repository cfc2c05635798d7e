"""``instantid evaluate`` (score generated images) and ``instantid benchmark run`` (generate + score a protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from instantid.cli import app
from instantid.cli.faces import ANTELOPEV2_ROOT_OPTION, BACKEND_ALIAS_OPTION, face_analyzer
from instantid.cli.generate import load_model, progress_bar
from instantid.cli.options import with_generation_options, with_model_options
from instantid.errors import InvalidInputError

if TYPE_CHECKING:
    from instantid.evaluation import Sample

benchmark_app = typer.Typer(help="Run an evaluation protocol: generate its images, then score them.",
                            no_args_is_help=True, rich_markup_mode=None)
app.add_typer(benchmark_app, name="benchmark")

_ID_MODEL = typer.Option(
    None, "--id-model", dir_okay=False,
    help="ArcFace-style ONNX recogniser, run by insightface (norm_crop + get_feat; cosine distance) "
    "[default: dlib's offline descriptor].",
)
_ID_THRESHOLD = typer.Option(
    None, "--id-threshold", help="Cosine distance (1 - similarity) at or below which a face counts as the same "
    "person (--id-model only; dlib uses its calibrated Euclidean 0.6).",
)
_CLIP_WEIGHTS = typer.Option(
    None, "--clip-weights", dir_okay=False, envvar="INSTANTID_CLIP_WEIGHTS",
    help="Local open_clip checkpoint for the CLIP score; without it the score is reported as skipped.",
)
# Scoring defaults to dlib: a generator scored by the face model that conditioned it is rewarded for copying
# that model's quirks.
_SCORING_BACKEND = typer.Option(
    "dlib", "--face-backend", help="Face model that finds faces (and embeds them unless --id-model is given): "
    "dlib, antelopev2 or auto.",
)
_CLIP_MODEL = typer.Option("ViT-B-32", "--clip-model", help="open_clip architecture of --clip-weights.")


def _score_and_report(samples: list[Sample], out: Path, id_model: Path | None, id_threshold: float | None,
                      clip_weights: Path | None, clip_model: str, title: str, detector: Any = None) -> None:
    from instantid.evaluation import create_recogniser, evaluate, load_clip_scorer, write_report

    if id_threshold is not None and id_model is None:
        raise InvalidInputError("--id-threshold applies to --id-model only")
    recogniser = create_recogniser(id_model, id_threshold, detector=detector)
    clip, clip_status = load_clip_scorer(clip_weights, clip_model)
    if clip is None:
        typer.echo(f"CLIP score {clip_status}", err=True)

    with progress_bar() as bar:
        task = bar.add_task("scoring", total=len(samples))
        evaluation = evaluate(samples, recogniser, clip, clip_status,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    paths = write_report(evaluation, out, title)
    summary = evaluation.summary
    for key in ("images", "face_detection_rate", "identity_similarity", "face_prompt_identity_similarity",
                "same_person_rate", "clip_score", "identity_diversity", "pixel_diversity"):
        value = summary.get(key)
        typer.echo(f"{key:34} {value:.4f}" if isinstance(value, float) else f"{key:34} {value}")
    typer.echo(f"wrote {paths['json']}, {paths['html']}, {paths['grid']}")


@app.command("evaluate")
def evaluate_command(
    images: list[Path] = typer.Argument(..., help="Generated images, or folders of them (searched recursively)."),
    refs: list[Path] = typer.Option(
        [], "--refs", help="Reference photos, or folders of them (repeatable): each image is scored against the "
        "ones whose content its metadata records (outputs record file names and SHA-256, not paths), so one "
        "folder serves outputs of many people; a photo that matches none stands for every image. Without it the "
        "recorded names are looked for beside each image and in the working directory.",
    ),
    identity: str | None = typer.Option(None, "--identity", help="Name of the person [default: reference stem]."),
    out: Path = typer.Option(Path("evaluation"), "-o", "--out", file_okay=False,
                             help="Folder for evaluation.json, report.html and grid.png."),
    face_backend: str = _SCORING_BACKEND,
    backend: str | None = BACKEND_ALIAS_OPTION,
    antelopev2_root: Path | None = ANTELOPEV2_ROOT_OPTION,
    id_model: Path | None = _ID_MODEL,
    id_threshold: float | None = _ID_THRESHOLD,
    clip_weights: Path | None = _CLIP_WEIGHTS,
    clip_model: str = _CLIP_MODEL,
) -> None:
    """Score generated images: face detection rate, identity similarity, CLIP score and diversity."""
    from instantid.evaluation import find_samples
    from instantid.faces.images import check_image
    from instantid.io.outputs import prepare_folder

    samples, skipped = find_samples(images, refs, identity)
    # Every file opens as an image (its header: cheap) before any folder is made, the scorers load and the bar starts.
    for path in dict.fromkeys(p for sample in samples for p in (sample.image, *sample.references)):
        check_image(path)
    prepare_folder(out, "--out")  # a bad folder is found before the scoring, not at the report
    if skipped:
        typer.echo(f"skipped {len(skipped)} image(s) that are not generations:", err=True)
        for item in skipped[:10]:
            typer.echo(f"  {item.path}: {item.reason}", err=True)
        if len(skipped) > 10:
            typer.echo(f"  ... and {len(skipped) - 10} more", err=True)
    detector = face_analyzer(face_backend, backend, antelopev2_root)
    _score_and_report(samples, out, id_model, id_threshold, clip_weights, clip_model, "InstantID evaluation",
                      detector)


@benchmark_app.command("run")
@with_model_options
@with_generation_options(exclude=("prompt", "seed", "num_images"))
def benchmark_run_command(
    refs: list[Path] = typer.Option(
        ..., "--refs", help="Reference photos or folders: a photo is one identity; a folder's photos are one "
        "identity each, its sub-folders one identity with several photos.",
    ),
    out: Path = typer.Option(..., "-o", "--out", file_okay=False, help="Output folder (resumable)."),
    protocol: str = typer.Option("pulid", "--protocol", help="Bundled protocol name or a YAML file."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts (face prompt first)."),
    id_model: Path | None = _ID_MODEL,
    id_threshold: float | None = _ID_THRESHOLD,
    clip_weights: Path | None = _CLIP_WEIGHTS,
    clip_model: str = _CLIP_MODEL,
    *,
    settings: Any = None,
    model: Any = None,
) -> None:
    """Generate a protocol's images for every reference identity (skipping existing ones), then score them.

    The generation options are `generate`'s; the protocol sets each image's prompt and seed.
    """
    from instantid.evaluation import identities_from_refs, load_protocol, run_protocol
    from instantid.io.outputs import prepare_folder

    chosen = load_protocol(protocol)
    identities = identities_from_refs(refs)
    prepare_folder(out, "--out")
    app_ = load_model(model)  # announces demo mode: its images are noise and its scores say nothing
    samples = run_protocol(app_, chosen, identities, out, settings, limit,
                           progress=lambda line: typer.echo(line, err=True))
    _score_and_report(samples, out, id_model, id_threshold, clip_weights, clip_model,
                      f"InstantID benchmark: {chosen.name} protocol")
