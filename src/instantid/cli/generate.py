"""``instantid generate`` (face photos -> PNGs), ``instantid batch`` (job file) and ``instantid doctor``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from instantid.cli import app
from instantid.errors import InvalidInputError

console = Console(stderr=True)
DEMO_WARNING = (
    "DEMO MODE: tiny random weights, no download. The whole pipeline runs, but the images are noise, "
    "not portraits. Drop --demo (and see `instantid doctor`) for real results."
)

# The model options every generating command takes; env vars let a deployment set them once.
MODEL_OPTIONS: dict[str, tuple[type, Any]] = {
    "base": (str | None, typer.Option(None, envvar="INSTANTID_BASE", help="SDXL base: folder, .safetensors file or "
                                      "Hub id (default: stabilityai/stable-diffusion-xl-base-1.0).")),
    "identitynet": (str | None, typer.Option(None, envvar="INSTANTID_IDENTITYNET", help="IdentityNet (ControlNet) "
                                             "folder or Hub id (default: InstantX/InstantID).")),
    "adapter": (str | None, typer.Option(None, envvar="INSTANTID_ADAPTER", help="Face adapter ip-adapter.bin or "
                                         "Hub id (default: InstantX/InstantID).")),
    "face_backend": (str, typer.Option("auto", help="Face model: auto, antelopev2 (published) or dlib.")),
    "antelopev2_root": (Path | None, typer.Option(None, envvar="INSTANTID_ANTELOPEV2", file_okay=False,
                                                  help="Folder with scrfd_10g_bnkps.onnx and glintr100.onnx.")),
    "device": (str | None, typer.Option(None, help="cuda, mps or cpu (default: the best available).")),
    "dtype": (str | None, typer.Option(None, help="fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU).")),
    "cpu_offload": (bool, typer.Option(False, "--cpu-offload", help="Keep idle sub-models in RAM (low VRAM).")),
    "scheduler": (str | None, typer.Option(None, help="euler, euler_a, dpm++, dpm++_karras, ddim, unipc, lcm.")),
    "lora": (str | None, typer.Option(None, help="LoRA file, folder or Hub id (a name with 'lcm' selects LCM).")),
    "lora_scale": (float, typer.Option(1.0, help="LoRA weight.")),
    "demo": (bool, typer.Option(False, "--demo", help="Tiny random weights, offline, seconds: images are noise.")),
}


def with_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the model options above; it receives them as one ``ModelSettings`` named ``model``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "model"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in MODEL_OPTIONS.items()]

    def wrapper(**kwargs: Any) -> Any:
        from pydantic import ValidationError

        from instantid.server import ModelSettings

        try:
            model = ModelSettings(**{name: kwargs.pop(name) for name in MODEL_OPTIONS})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidInputError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
        return command(model=model, **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
    return wrapper


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
def generate_command(
    faces: list[Path] = typer.Argument(..., help="Photo(s) of one person; several are averaged.", dir_okay=False),
    prompt: str = typer.Option("", "--prompt", "-p", help="What to make (empty = from the face alone)."),
    negative_prompt: str = typer.Option("", help="What to avoid."),
    style: str | None = typer.Option(None, help="Style preset, e.g. Watercolor, 'Film Noir' (see /v1/models)."),
    identitynet_strength: float = typer.Option(0.8, help="IdentityNet (ControlNet) scale, 0..2."),
    adapter_strength: float = typer.Option(0.8, help="Image adapter scale, 0..2."),
    steps: int = typer.Option(30, help="Denoising steps."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance scale."),
    seed: list[int] = typer.Option([], help="Seed; repeat for several runs."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 1,2,3."),
    num_images: int = typer.Option(1, help="Images per seed (consecutive seeds)."),
    width: int | None = typer.Option(None, help="Output width (multiple of 8) (default: from the photo)."),
    height: int | None = typer.Option(None, help="Output height (multiple of 8)."),
    pose: Path | None = typer.Option(None, help="Take pose (keypoints) and size from this photo.", dir_okay=False),
    no_enhance_face_region: bool = typer.Option(False, "--no-enhance-face-region",
                                                help="Let IdentityNet act on the whole image, not just the face."),
    face_index: int | None = typer.Option(None, help="Which face in the photos, 0 = largest."),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Output folder.", file_okay=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of numbering."),
    model: Any = None,
) -> None:
    """Generate images of the person in FACE: PNGs with settings inside, plus a JSON sidecar each."""
    from instantid.batch import slug
    from instantid.generator import GenerationSettings
    from instantid.outputs import write_image

    settings = GenerationSettings(
        prompt=prompt, negative_prompt=negative_prompt, style=style, num_images=num_images, steps=steps,
        guidance_scale=guidance, identitynet_strength=identitynet_strength, adapter_strength=adapter_strength,
        width=width, height=height, enhance_face_region=not no_enhance_face_region, face_index=face_index,
    ).validate()  # before the (slow) model load
    run_seeds = parse_seeds(seed, seeds)
    for value in run_seeds:
        GenerationSettings(seed=value).validate()
    instant = load_model(model)
    written: list[Path] = []
    with progress_bar() as bar:
        for value in run_seeds:
            task = bar.add_task(f"seed {value if value is not None else 'random'}", total=steps)
            result = instant.generate([str(f) for f in faces], settings, pose_image=pose, seed=value,
                                      progress=lambda step, total, task=task: bar.update(task, completed=step,
                                                                                          total=total))
            for i, image in enumerate(result.images):
                metadata = result.image_metadata(i)
                stem = f"{slug(prompt or 'portrait', 30)}_s{metadata['seed']}"
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
    from instantid.generator import GenerationSettings

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
    base: str | None = MODEL_OPTIONS["base"][1],
    identitynet: str | None = MODEL_OPTIONS["identitynet"][1],
    adapter: str | None = MODEL_OPTIONS["adapter"][1],
    antelopev2_root: Path | None = MODEL_OPTIONS["antelopev2_root"][1],
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
