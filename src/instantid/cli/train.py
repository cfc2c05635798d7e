"""``instantid prepare`` (captioned photos -> training set), ``instantid train`` and ``instantid export``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from instantid.cli import app
from instantid.cli.faces import ANTELOPEV2_ROOT_OPTION, BACKEND_ALIAS_OPTION, FACE_BACKEND_OPTION, face_analyzer


@app.command()
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Folders of images (+ .txt captions) or webdataset .tar shards."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for manifest.jsonl, images/, embeddings/."),
    face_backend: str = FACE_BACKEND_OPTION,
    backend: str | None = BACKEND_ALIAS_OPTION,
    antelopev2_root: Path | None = ANTELOPEV2_ROOT_OPTION,
    captions: Path | None = typer.Option(None, "--captions", help='JSONL of {"file", "caption"} for folder inputs.'),
    max_faces: int = typer.Option(1, help="Drop images with more faces (paper: single-person images)."),
    min_face_px: float = typer.Option(64.0, help="Drop faces whose box is shorter than this (pixels)."),
    min_face_fraction: float = typer.Option(0.0, help="Drop faces shorter than this fraction of the image."),
    min_score: float = typer.Option(0.0, help="Drop detections below this score (backend-specific scale)."),
    workers: int = typer.Option(1, help="Analysis threads, each with its own face analyzer."),
    allow_empty_caption: bool = typer.Option(False, help="Keep images without a caption (as an empty one)."),
    shard: str | None = typer.Option(
        None, "--shard", help="i/N: analyse only this process's share of the inputs (a stable hash split) and "
        "write webdataset tar parts; under `accelerate launch` the process index and count are used. "
        "0/1 writes tar parts from one process.",
    ),
    samples_per_tar: int = typer.Option(1000, "--samples-per-tar", min=1, help="Samples per tar part."),
) -> None:
    """Analyse captioned photos into a training set (resumable: reruns skip the images already kept and look
    again at the dropped ones, e.g. after adding captions or loosening a filter).

    Exit code 2 when nothing is kept, with the main reasons images were dropped (a shard only warns: its
    share of the inputs may hold nothing usable while the other shards keep plenty).
    """
    from instantid.errors import InvalidInputError
    from instantid.io.outputs import prepare_folder
    from instantid.sharding import resolve_shard
    from instantid.training.prepare import PrepareConfig, explain_nothing_kept
    from instantid.training.prepare import prepare as run_prepare

    chosen = resolve_shard(shard)
    config = PrepareConfig(max_faces=max_faces, min_face_px=min_face_px, min_face_fraction=min_face_fraction,
                           min_score=min_score, workers=workers, allow_empty_caption=allow_empty_caption)
    prepare_folder(out, "--out")
    summary = run_prepare(
        inputs, out, lambda: face_analyzer(face_backend, backend, antelopev2_root), config, captions_jsonl=captions,
        shard=chosen, samples_per_tar=samples_per_tar,
    )
    typer.echo(json.dumps(summary, indent=2))
    if summary["kept"] > 0:
        return
    if chosen is not None:  # one shard's share may hold nothing usable while the others keep plenty
        reason = explain_nothing_kept(summary) if summary["dropped"] else "no input image falls into it"
        typer.echo(f"warning: shard {summary['shard']}: {reason}", err=True)
    elif summary["dropped"] == 0:
        raise InvalidInputError(f"no images found in {', '.join(map(str, inputs))}")
    else:
        raise InvalidInputError(explain_nothing_kept(summary))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Train the face adapter and IdentityNet. Flags: `instantid train --help` lists every config field.

    Multi-GPU / multi-node: `accelerate launch ... -m instantid.training.trainer <same flags>`.
    """
    from instantid.training.config import parse_args
    from instantid.training.trainer import main

    result = main(parse_args(ctx.args))
    typer.echo(f"trained {result['global_step']} steps; published-layout weights in {result['release']}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False,
                                      help="A run's checkpoint-N folder, or the run folder (its latest checkpoint)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ip-adapter.* and ControlNetModel/."),
    adapter_format: str = typer.Option("bin", "--format", help="bin (published) or safetensors."),
) -> None:
    """Write a training checkpoint in the published layout (ip-adapter.bin + ControlNetModel/)."""
    from instantid.training.export import export_checkpoint, find_checkpoint

    chosen = find_checkpoint(checkpoint)
    if chosen != checkpoint:
        typer.echo(f"exporting the latest checkpoint of {checkpoint}: {chosen.name}", err=True)
    typer.echo(f"exported to {export_checkpoint(chosen, out, adapter_format)}")
