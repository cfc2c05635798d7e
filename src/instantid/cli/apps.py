"""Applications beyond plain generation: ``instantid swap`` (face swap into a photo), ``instantid detail`` (face
detail pass on existing pictures) and ``instantid layouts`` (the bundled keypoint layouts).

"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from instantid.cli import app
from instantid.cli.generate import (
    DEMO_WARNING,
    check_model_options,
    console,
    face_analyzer,
    load_model,
    progress_bar,
)
from instantid.cli.options import apply_mixes, option_parameters, parse_mix, with_generation_options, with_model_options
from instantid.errors import NoFaceError

MIX_HELP = "Mix in another person: PHOTO:WEIGHT, weight 0..1 towards them (e.g. b.jpg:0.3); repeatable."


# ---- identity mixing -------------------------------------------------------------------------------------
# ---- swap options on the command line -----------------------------------------------------------------
def with_swap_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one option per :class:`~instantid.swap.SwapOptions` field; it receives them validated as
    ``swap`` (errors name the flag)."""
    from instantid.swap import SwapOptions, make_swap_options

    names = list(SwapOptions.model_fields)
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "swap"]

    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        return command(**kwargs, swap=make_swap_options(values, lambda n: "--" + n.replace("_", "-")))

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = inspect.Signature([*own, *option_parameters(SwapOptions, names)])  # type: ignore[attr-defined]
    return wrapper


def _scene_name(path: Path, full_paths: bool) -> str:
    return str(path.resolve()) if full_paths else path.name


# ---- commands ------------------------------------------------------------------------------------------
@app.command("swap", short_help="Put the person of --face into the picture --into (face swap).", help="""\
Put the person of --face into the picture --into: the target face's head is repainted with that identity, \
in the target's pose; every pixel outside the feathered head mask is kept exactly.

The model works on a crop around the head at its own resolution, so a big photo costs what a small one does.
The photos and the target face are checked before the (slow) model load.""")
@with_model_options
@with_generation_options(exclude=("width", "height", "num_images", "face_detail", "face_detail_strength"))
@with_swap_options
def swap_command(
    face: list[Path] = typer.Option(..., "--face", help="Photo(s) of the person to put in; several are fused.",
                                    dir_okay=False),
    into: Path = typer.Option(..., "--into", help="The picture whose face is replaced.", dir_okay=False),
    mix: list[str] = typer.Option([], "--mix", help=MIX_HELP),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record full paths of photos in the images."),
    settings: Any = None,
    model: Any = None,
    swap: Any = None,
) -> None:
    from instantid.batch import slug
    from instantid.faces import load_image
    from instantid.generator import prepare_identity
    from instantid.outputs import prepare_folder, write_image
    from instantid.swap import swap_face

    # 1. Cheap checks: model options, output folder, --mix syntax.
    check_model_options(model)
    prepare_folder(out, "--out")
    for spec in mix:
        parse_mix(spec)
    # 2. Faces with the face model only: the reference(s), the mixes and the target face.
    with console.status("checking the photos..."):
        analyzer = face_analyzer(model)
        identity = prepare_identity(analyzer, [str(f) for f in face], face_index=settings.face_index,
                                    fusion=settings.fusion, full_paths=full_paths)
        identity = apply_mixes(analyzer, identity, mix, full_paths=full_paths)
        name = _scene_name(into, full_paths)
        scene = load_image(str(into), name)
        target = analyzer.get_face(scene, name, swap.target_index)
    for warning in identity.warnings:
        console.print(f"[yellow]warning: {warning}[/]")
    # 3. The model, then the swap.
    instant = load_model(model, analyzer)
    with progress_bar() as bar:
        task = bar.add_task("swap", total=settings.steps)
        result = swap_face(instant, identity, scene, settings, swap, scene_name=name, target=target,
                           progress=lambda step, total: bar.update(task, completed=step, total=total))
    for i, image in enumerate(result.images):
        metadata = result.image_metadata(i)
        stem = f"swap_{slug(into.stem, 30)}_s{metadata['seed']}"
        typer.echo(str(write_image(image, metadata, out, stem, overwrite=overwrite, full_paths=full_paths)))
    if instant.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")


@app.command("detail", short_help="Redraw the faces in existing pictures as the person of --face.",
             help="Redraw the faces in existing pictures as the person of --face (the face-detail pass): each face "
                  "is cropped with a margin, re-denoised at the model's resolution and blended back. Pictures "
                  "without a face are reported and not written.")
@with_model_options
@with_generation_options(exclude=("width", "height", "num_images", "face_detail", "face_detail_strength"))
def detail_command(
    pictures: list[Path] = typer.Argument(..., help="Pictures whose faces are redrawn.", dir_okay=False),
    face: list[Path] = typer.Option(..., "--face", help="Photo(s) of the person; several are fused.",
                                    dir_okay=False),
    strength: float = typer.Option(0.4, "--strength", min=0.05, max=1.0, help="Re-denoising strength."),
    margin: float = typer.Option(0.25, "--margin", min=0.0, max=2.0, help="Room around each face box, as a "
                                 "fraction of the face size."),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record full paths of photos in the images."),
    settings: Any = None,
    model: Any = None,
) -> None:
    import random

    from instantid.face_detail import FaceDetailOptions, refine_faces
    from instantid.faces import load_image
    from instantid.generator import prepare_identity
    from instantid.outputs import prepare_folder, write_image
    from instantid.settings import MAX_SEED

    options = FaceDetailOptions(strength=strength, margin=margin)
    check_model_options(model)
    prepare_folder(out, "--out")
    with console.status("checking the photos..."):
        analyzer = face_analyzer(model)
        identity = prepare_identity(analyzer, [str(f) for f in face], face_index=settings.face_index,
                                    fusion=settings.fusion, full_paths=full_paths)
        images = [load_image(str(p), _scene_name(p, full_paths)) for p in pictures]
        # Cheap before slow: a run in which no picture shows a face would load the model for nothing.
        if not any(analyzer.analyze(image, _scene_name(p, full_paths)) for p, image in zip(pictures, images,
                                                                                           strict=True)):
            raise NoFaceError(", ".join(p.name for p in pictures))
    instant = load_model(model, analyzer)
    seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(len(images))]
    with progress_bar() as bar:
        task = bar.add_task("face detail", total=settings.steps)
        refined, info = refine_faces(instant, identity, images, settings, seeds, options,
                                     progress=lambda step, total: bar.update(task, completed=step, total=total))
    metadata = instant.call_metadata(identity, settings, instant.call_scheduler(settings), "face_detail")
    skipped = 0
    for i, (path, image) in enumerate(zip(pictures, refined, strict=True)):
        report = info["images"][i]
        if report["skipped"]:
            console.print(f"[yellow]{path.name}: {report['skipped']}, not written[/]")
            skipped += 1
            continue
        one = {**metadata, "source": _scene_name(path, full_paths), "seed": seeds[i],
               "width": image.width, "height": image.height,
               "face_detail": {**{k: v for k, v in info.items() if k != "images"}, **report}}
        typer.echo(str(write_image(image, one, out, f"{path.stem}_detail", overwrite=overwrite,
                                   full_paths=full_paths)))
    if instant.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")
    if skipped:  # some pictures were not written: say so in the exit code too
        raise typer.Exit(1)


@app.command("layouts")
def layouts_command(
    draw: Path | None = typer.Option(None, "--draw", help="Also write each layout's keypoint picture here.",
                                     file_okay=False),
    size: int = typer.Option(512, "--size", min=64, max=2048, help="Size of the drawn pictures."),
) -> None:
    """List the bundled keypoint layouts (for --layout: a pose without a pose photo)."""
    from PIL import Image

    from instantid.keypoints import draw_kps
    from instantid.layouts import get_layout, layout_names, layout_pose
    from instantid.outputs import prepare_folder, save_png_atomically

    if draw is not None:
        prepare_folder(draw, "--draw")
    for name in layout_names():
        layout = get_layout(name)
        line = f"{name:<22} yaw {layout.yaw_degrees:+4.0f}  {layout.description}"
        if draw is not None:
            pose = layout_pose(name, size, size)
            path = save_png_atomically(draw_kps(Image.new("RGB", (size, size)), pose.kps), draw / f"{name}.png")
            line += f"  -> {path}"
        typer.echo(line)


__all__ = ["with_swap_options"]
