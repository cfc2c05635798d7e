"""``instantid generate`` (face photos -> PNGs) and ``instantid batch`` (job file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from instantid.api.settings import MAX_SEED
from instantid.cli import app
from instantid.cli.options import (
    MIX_HELP,
    apply_mixes,
    check_photos,
    naming,
    parse_mix,
    with_generation_options,
    with_model_options,
)
from instantid.errors import FaceIndexError, InvalidInputError

# soft_wrap: never hard-wrap a line at 80 columns when stderr is a file or pipe (a log, CI) rather than a terminal.
console = Console(stderr=True, soft_wrap=True)
DEMO_WARNING = (
    "DEMO MODE: tiny random weights, no download. The whole pipeline runs, but the images are noise, "
    "not portraits. Drop --demo (and see `instantid doctor`) for real results."
)

def load_model(model: Any, analyzer: Any = None) -> Any:
    """Load with a spinner (quietly unless ``--verbose``: :func:`instantid.api.loader.load_model`); announce demo
    mode loudly, once."""
    from instantid.api import loader

    check_model_options(model)
    with console.status("loading models..."):
        instant = loader.load_model(model, analyzer)
    instant.pipe.set_progress_bar_config(disable=True)  # our own bar shows the steps
    if instant.demo:
        console.print(f"[bold yellow]{DEMO_WARNING}[/]")
    return instant


def preset_settings(instant: Any, settings: Any) -> Any:
    """``settings`` as the model runs them (:meth:`InstantID.call_settings`: a loaded preset's steps and guidance
    where no flag chose them), saying what the preset set."""
    from instantid.api.settings import field_label

    fills = instant.preset_fills(settings)
    if fills:  # a typed --steps / --guidance still wins over the preset's
        console.print(f"preset {instant.preset.name}: " + ", ".join(f"{field_label(k)} {v}" for k, v in fills.items()))
    return instant.call_settings(settings)


def check_model_options(model: Any) -> None:
    """What can be checked about the model options without loading the model (device and dtype, LoRA path,
    --demo, the preset's name and weights: fetched now when not cached, as the load would)."""
    from instantid.io.loading import check_lora, pick_device, pick_dtype

    pick_dtype(model.dtype, pick_device(model.device, "--device"), "--dtype")
    if model.lora:
        check_lora(model.lora, "--lora")
    from instantid.io.models import ControlRefs

    given = [name.replace("_", "-") for name in ("base", "identitynet", "adapter", *ControlRefs.__dataclass_fields__)
             if getattr(model, name)]
    if model.demo and given:
        raise InvalidInputError(f"--demo uses its own tiny weights; drop --{', --'.join(given)}")
    if model.preset:
        from instantid.speed.presets import preset_weights_file

        preset_weights_file(model.preset, model.preset_weights, ("--preset", "--preset-weights"))


def style_references(paths: list[Path], settings: Any, model: Any, full_paths: bool) -> tuple[Any, Any]:
    """The --style-image pictures, read now, and the model options with the style adapter to load: its files are
    found (or fetched) before the slow model load, as the load would. Style knobs without a picture are refused."""
    from instantid.api.settings import field_label

    if not paths:
        chosen = [field_label(k) for k in ("style_strength", "style_blocks") if k in settings.model_fields_set]
        if chosen:
            verb = "needs" if len(chosen) == 1 else "need"
            raise InvalidInputError(f"{' and '.join(chosen)} {verb} --style-image (the style reference picture)")
        return None, model  # a --style-adapter (or INSTANTID_STYLE_ADAPTER) alone is loaded, as asked
    from instantid.api.style_images import load_style_images

    with naming("--style-image"):
        style = load_style_images(paths, full_paths=full_paths)
    return style, with_style_adapter(model)


def with_style_adapter(model: Any) -> Any:
    """The model options with the style adapter that style images need: its files are found (or fetched) now,
    before the slow model load, as the load would."""
    from instantid.io.models import DEFAULT_STYLE_ADAPTER, resolve_style_adapter

    if model.demo and not model.style_adapter:
        return model  # the demo's own tiny style adapter
    ref = model.style_adapter or DEFAULT_STYLE_ADAPTER
    with naming("--style-adapter"):
        resolve_style_adapter(ref)
    return model.model_copy(update={"style_adapter": ref})


def face_detail_note(metadata: dict[str, Any], path: Path, demo: bool) -> str | None:
    """The line saying the face-detail pass skipped this image (it found no face to redraw), else None."""
    reports = (metadata.get("face_detail") or {}).get("images") or []
    index = metadata.get("index", 0)
    if index >= len(reports) or not reports[index].get("skipped"):
        return None
    why = " (the demo's images are noise, with no face to find)" if demo else ""
    return f"--face-detail: {reports[index]['skipped']} in {path.name}{why}, so it was not redrawn"


def face_analyzer(model: Any) -> Any:
    """The face model alone (seconds), to check photos before the diffusion model loads (minutes)."""
    from instantid.io.loading import library_chatter

    with library_chatter(model.verbose):
        return model.face_analyzer()


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console)


def parse_seeds(seeds: list[int], seed_list: str | None) -> list[int | None]:
    """The seeds asked for, checked by the settings' seed rule (-1 = random); None = random, recorded in the
    output."""
    from instantid.api.settings import field_label, make_settings

    values = list(seeds)
    parts = [part.strip() for part in (seed_list or "").split(",") if part.strip()]
    if seed_list is not None and not parts:  # e.g. an empty shell variable: not silently "random"
        raise InvalidInputError(f"--seeds must be comma-separated integers (-1 = random), got {seed_list!r}")
    for part in parts:
        if not part.removeprefix("-").isdigit():
            raise InvalidInputError(f"--seeds must be comma-separated integers (-1 = random), got {part!r}")
        values.append(int(part))
    return [make_settings({"seed": value}, field_label).seed for value in values] or [None]


def plan_seeds(starts: list[int | None], num_images: int) -> tuple[list[tuple[int | None, int]], list[int]]:
    """Runs of consecutive seeds to generate, as ``(first seed, count)``, and the seeds asked for twice.

    The rule: every image has its own seed and no seed is made twice. Each given seed S starts a run of
    ``num_images`` seeds S, S+1, ..., S+N-1; a seed an earlier run already made is left out (so ``--seeds 1,2
    --num-images 2`` makes seeds 1, 2, 3). A random start (no seed given) is one run of N.
    """
    runs: list[tuple[int | None, int]] = []
    done: set[int] = set()
    repeated: list[int] = []
    for start in starts:
        if start is None:
            runs.append((None, num_images))
            continue
        run: list[int] = []
        for value in ((start + i) % (MAX_SEED + 1) for i in range(num_images)):
            if value in done:
                repeated.append(value)
                if run:
                    runs.append((run[0], len(run)))
                run = []
                continue
            done.add(value)
            run.append(value)
        if run:
            runs.append((run[0], len(run)))
    return runs, repeated


SEED_RULE = ("Each seed S gives --num-images images with seeds S, S+1, ...; a seed already made by an earlier one "
             "is not made twice.")


@app.command("generate", help=(
    "Generate images of the person in FACES (or of several people, one --person each): PNGs with settings "
    "inside, plus a JSON sidecar each.\n\n"
    f"The photos, the output folder and the faces are checked before the (slow) model load. {SEED_RULE}"))
@with_model_options
@with_generation_options(exclude=("num_images", "seed"))
def generate_command(
    faces: list[Path] = typer.Argument(None, help="Photo(s) of one person; several are fused.", dir_okay=False,
                                       show_default=False),
    person: list[str] = typer.Option([], help="Several people in one picture: the photo(s) of one person "
                                     "(comma-separated); repeat per person. --pose takes their places from a "
                                     "group photo, left to right; without it they stand side by side."),
    seed: list[int] = typer.Option([], help="Seed; repeat for several runs."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 1,2,3."),
    num_images: int = typer.Option(1, help=f"Images per seed. {SEED_RULE}"),
    pose: Path | None = typer.Option(None, help="Take pose (keypoints) and size from this photo.", dir_okay=False),
    layout: str | None = typer.Option(None, help="Pose from a bundled keypoint layout instead of a photo "
                                      "(see `instantid layouts`), e.g. three-quarter-left."),
    mix: list[str] = typer.Option([], help=MIX_HELP),
    init_image: Path | None = typer.Option(None, "--init-image", help="Image-to-image: start from this picture "
                                           "(resized to the output size); --denoising-strength says how much of "
                                           "it is redrawn.", dir_okay=False),
    style_image: list[Path] = typer.Option([], "--style-image", dir_okay=False, help="Style reference picture "
                                           "(InstantStyle): the picture takes its style, the face keeps the "
                                           "identity; repeatable. See --style-strength, --style-blocks, "
                                           "--style-adapter."),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    full_paths: bool = typer.Option(False, "--full-paths", help="Record full paths of photos and model folders "
                                    "in the images (default: file names and Hub ids only, safe to share)."),
    settings: Any = None,
    model: Any = None,
) -> None:
    from instantid.api.face_side import group_poses, prepare_identity, with_pose
    from instantid.api.settings import check_people, check_used, field_label, make_settings
    from instantid.apps.layouts import DEFAULT_LAYOUT_SIZE, get_layout, with_layout
    from instantid.faces import load_image
    from instantid.io.loading import library_chatter
    from instantid.io.outputs import image_stem, prepare_folder, write_image

    # 1. Cheap checks first: the photos exist, seeds, settings, device, output folder.
    groups = [[Path(p.strip()) for p in spec.split(",") if p.strip()] for spec in person]
    if groups:  # a count needs no file: before the photos
        check_people(len(groups), "one --person per person")
    check_photos(*(faces or []), *(p for g in groups for p in g), *([pose] if pose else []),
                 *(parse_mix(spec)[0] for spec in mix), *([init_image] if init_image else []), *style_image)
    run_seeds = parse_seeds(seed, seeds)
    settings = make_settings({**settings.model_dump(exclude_unset=True), "num_images": num_images}, field_label)
    if groups:
        check_used(settings, "group", "--person", field_label)
    for value in run_seeds:
        make_settings({"seed": value}, field_label)
    runs, repeated = plan_seeds(run_seeds, num_images)
    if pose is not None and layout is not None:
        raise InvalidInputError("give --pose or --layout, not both")
    if layout is not None:
        get_layout(layout)
    if bool(faces) == bool(groups):
        raise InvalidInputError("give the photos of one person, or one --person per person, not both"
                                if faces else "give at least one face photo (or --person for several people)")
    if any(not g for g in groups):
        raise InvalidInputError("--person takes the photo paths of one person (comma-separated), got none")
    if groups and (layout is not None or mix):
        raise InvalidInputError("--layout and --mix are for one person, not with --person")
    if groups and (init_image is not None or settings.control_strengths()):
        raise InvalidInputError("--init-image and --pose/--canny/--depth-strength are for one person")
    if init_image is None and "denoising_strength" in settings.model_fields_set:
        raise InvalidInputError("--denoising-strength is for image-to-image: give --init-image too")
    settings.check_init_image(init_image is not None, "--init-image")
    with naming("--init-image"):
        init_picture = load_image(init_image, init_image.name) if init_image is not None else None
    check_model_options(model)
    style, model = style_references(style_image, settings, model, full_paths)
    prepare_folder(out, "--out")
    # 2. Faces, with the face model only: a faceless photo is found in seconds, not after the model load.
    with console.status("checking the photos..."):
        analyzer = face_analyzer(model)
        with naming("--face-index", FaceIndexError):
            people = [prepare_identity(analyzer, group, face_index=settings.face_index, fusion=settings.fusion,
                                       full_paths=full_paths) for group in groups]
            identity = people[0] if people else prepare_identity(
                analyzer, list(faces), face_index=settings.face_index, fusion=settings.fusion, full_paths=full_paths)
            identity = apply_mixes(analyzer, identity, mix, face_index=settings.face_index, full_paths=full_paths)
        with naming("--pose"):
            if pose is not None and not people:
                identity = with_pose(analyzer, identity, pose, full_paths=full_paths)
            # Where each person stands, before the model load (and analysed once for every seed's run).
            placed = group_poses(analyzer, pose, len(people), pose.name, "--person") if people and pose else None
    if layout is not None:
        identity = with_layout(identity, layout, settings.width or DEFAULT_LAYOUT_SIZE,
                               settings.height or DEFAULT_LAYOUT_SIZE)
    for warning in [w for p in (people or [identity]) for w in p.warnings]:
        console.print(f"[yellow]warning: {warning}[/]")
    if repeated:
        console.print(f"seed(s) {', '.join(map(str, sorted(set(repeated))))} asked for twice: made once")
    # 3. The model, then the images.
    instant = load_model(model, analyzer)
    settings = preset_settings(instant, settings)
    written: list[Path] = []
    with progress_bar() as bar, library_chatter(model.verbose):
        for start, count in runs:
            task = bar.add_task(f"seed {start if start is not None else 'random'}", total=settings.steps)
            call = settings.updated(seed=start, num_images=count)
            report = lambda step, total, task=task: bar.update(task, completed=step, total=total)  # noqa: E731
            result = (instant.generate_group(people, call, pose_faces=placed, style_images=style,
                                             pose_name=pose.name if pose else "columns", progress=report)
                      if people else instant.generate(identity, call, progress=report, init_image=init_picture,
                                                      init_name=init_image.name if init_image else "init image",
                                                      style_images=style))
            for i, image in enumerate(result.images):
                metadata = result.image_metadata(i)
                stem = image_stem(metadata["seed"], prompt=settings.prompt)
                written.append(write_image(image, metadata, out, stem, overwrite=overwrite, full_paths=full_paths))
                note = face_detail_note(metadata, written[-1], instant.demo)
                if note:
                    bar.console.print(f"[yellow]{note}[/]", highlight=False)
    for path in written:
        typer.echo(str(path))
