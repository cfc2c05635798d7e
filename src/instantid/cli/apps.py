"""Applications beyond plain generation: ``instantid swap`` (face swap into a photo), ``instantid detail`` (face
detail pass on existing pictures) and ``instantid layouts`` (the bundled keypoint layouts).

"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from instantid.api.settings import UNUSED_SETTINGS
from instantid.cli import app
from instantid.cli.generate import (
    check_model_options,
    console,
    face_analyzer,
    load_model,
    preset_settings,
    progress_bar,
)
from instantid.cli.options import (
    MIX_HELP,
    apply_mixes,
    check_photos,
    naming,
    option_parameters,
    parse_mix,
    with_generation_options,
    with_model_options,
)
from instantid.errors import FaceIndexError, NoFaceError


# ---- identity mixing -------------------------------------------------------------------------------------
# ---- swap and face-detail options on the command line -----------------------------------------------
def with_declared_options(declaration: Any, make: Callable[..., Any], parameter: str
                          ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``declaration`` (a pydantic model: type, default, range, help);
    it receives them validated by ``make(values, name)`` as ``parameter`` (errors name the flag)."""
    names = list(declaration.model_fields)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != parameter]

        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, **{parameter: make(values, lambda n: "--" + n.replace("_", "-"))})

        wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*own, *option_parameters(declaration, names)])
        return wrapper

    return decorate


def with_swap_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per :class:`~instantid.apps.swap.SwapOptions` field; the command receives ``swap``."""
    from instantid.apps.swap import SwapOptions, make_swap_options

    return with_declared_options(SwapOptions, make_swap_options, "swap")(command)


def with_detail_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per :class:`~instantid.api.face_detail.FaceDetailOptions` field (``--strength``, ``--margin``,
    ``--max-faces``...); the command receives ``detail``."""
    from instantid.api.face_detail import FaceDetailOptions, make_detail_options

    return with_declared_options(FaceDetailOptions, make_detail_options, "detail")(command)


def _scene_name(path: Path, full_paths: bool) -> str:
    return str(path.resolve()) if full_paths else path.name


def _person(analyzer: Any, face: list[Path], settings: Any, full_paths: bool) -> Any:
    """The person of ``--face`` (photos fused), analysed with the face model alone, before the slow model load."""
    from instantid.api.face_side import prepare_identity

    with naming("--face-index", FaceIndexError):
        return prepare_identity(analyzer, [str(f) for f in face], face_index=settings.face_index,
                                fusion=settings.fusion, full_paths=full_paths)


def _warn(identity: Any) -> None:
    for warning in identity.warnings:
        console.print(f"[yellow]warning: {warning}[/]", highlight=False)


# ---- commands ------------------------------------------------------------------------------------------
@app.command("swap", short_help="Put the person of --face into the picture --into (face swap).", help="""\
Put the person of --face into the picture --into: the target face's head is repainted with that identity, \
in the target's pose; every pixel outside the feathered head mask is kept exactly.

The model works on a crop around the head at its own resolution, so a big photo costs what a small one does.
The photos and the target face are checked before the (slow) model load.""")
@with_model_options
@with_generation_options(exclude=UNUSED_SETTINGS["swap"])
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
    from instantid.apps.swap import swap_face
    from instantid.faces import choose_face, load_image
    from instantid.io.outputs import image_stem, prepare_folder, write_image

    # 1. Cheap checks: the photos exist, model options, output folder.
    check_photos(*face, into, *(parse_mix(spec)[0] for spec in mix))
    check_model_options(model)
    prepare_folder(out, "--out")
    # 2. Faces with the face model only: the reference(s), the mixes and the target face.
    with console.status("checking the photos..."):
        analyzer = face_analyzer(model)
        identity = apply_mixes(analyzer, _person(analyzer, face, settings, full_paths), mix, full_paths=full_paths)
        name = _scene_name(into, full_paths)
        scene = load_image(str(into), name)
        with naming("--target-index", FaceIndexError), naming("--into", NoFaceError):
            in_scene = analyzer.analyze(scene, name)
            target = choose_face(in_scene, name, swap.target_index)
    _warn(identity)
    if len(in_scene) > 1:  # which face is replaced, in the numbering of `instantid faces` (largest first)
        console.print(f"{name}: {len(in_scene)} faces found, replacing face {swap.target_index}"
                      f"{' (the largest)' if swap.target_index == 0 else ''}; --target-index picks another",
                      highlight=False)
    # 3. The model, then the swap.
    instant = load_model(model, analyzer)
    settings = preset_settings(instant, settings)
    with progress_bar() as bar:
        task = bar.add_task("swap", total=settings.steps)
        result = swap_face(instant, identity, scene, settings, swap, scene_name=name, target=target,
                           progress=lambda step, total: bar.update(task, completed=step, total=total))
    for i, image in enumerate(result.images):
        metadata = result.image_metadata(i)
        stem = image_stem(metadata["seed"], picture=into.name, kind="swap")
        typer.echo(str(write_image(image, metadata, out, stem, overwrite=overwrite, full_paths=full_paths)))


@app.command("detail", short_help="Redraw the faces in existing pictures as the person of --face.",
             help="Redraw the faces in existing pictures as the person of --face (the face-detail pass): each face "
                  "is cropped with a margin, re-denoised at the model's resolution and blended back. Pictures "
                  "without a face are reported and not written.")
@with_model_options
@with_generation_options(exclude=UNUSED_SETTINGS["detail"])
@with_detail_options
def detail_command(
    pictures: list[Path] = typer.Argument(..., help="Pictures whose faces are redrawn.", dir_okay=False),
    face: list[Path] = typer.Option(..., "--face", help="Photo(s) of the person; several are fused.",
                                    dir_okay=False),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record full paths of photos in the images."),
    settings: Any = None,
    model: Any = None,
    detail: Any = None,
) -> None:
    import random

    from instantid.api.settings import MAX_SEED
    from instantid.apps.detail import detail_picture
    from instantid.faces import load_image
    from instantid.io.outputs import image_stem, prepare_folder, write_image

    check_photos(*face, *pictures)
    check_model_options(model)
    prepare_folder(out, "--out")
    with console.status("checking the photos..."):
        analyzer = face_analyzer(model)
        identity = _person(analyzer, face, settings, full_paths)
        names = [_scene_name(p, full_paths) for p in pictures]
        images = [load_image(str(p), name) for p, name in zip(pictures, names, strict=True)]
        # Each picture analysed once, here: the pass redraws these faces (no second look after the model load).
        found = [analyzer.analyze(image, name) for image, name in zip(images, names, strict=True)]
        # Cheap before slow: a run in which no picture shows a face would load the model for nothing.
        if not any(found):
            raise NoFaceError(", ".join(p.name for p in pictures))
    _warn(identity)
    instant = load_model(model, analyzer)
    settings = preset_settings(instant, settings)
    seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
    skipped = 0
    with progress_bar() as bar:
        task = bar.add_task("face detail", total=settings.steps)
        for i, (path, image) in enumerate(zip(pictures, images, strict=True)):
            if not found[i]:
                console.print(f"[yellow]{path.name}: no face found, not written[/]")
                skipped += 1
                continue
            # The same function and record format as /v1/detail and the web UI's Face detail tab.
            result = detail_picture(instant, identity, image, names[i],
                                    settings.updated(seed=(seed + i) % (MAX_SEED + 1)), detail,
                                    lambda step, total: bar.update(task, completed=step, total=total),
                                    faces=found[i])
            metadata = result.image_metadata(0)
            stem = image_stem(metadata["seed"], picture=path.name, kind="detail")
            typer.echo(str(write_image(result.images[0], metadata, out, stem, overwrite=overwrite,
                                       full_paths=full_paths)))
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

    from instantid.apps.layouts import get_layout, layout_names, layout_pose
    from instantid.core.keypoints import draw_kps
    from instantid.io.outputs import prepare_folder, save_png_atomically

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


__all__ = ["with_declared_options", "with_detail_options", "with_swap_options"]
