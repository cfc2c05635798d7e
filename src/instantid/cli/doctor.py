"""``instantid doctor``: what is installed, what is missing and where to get it; ``--fix`` downloads what is
missing (with ``instantid download``'s licence question) and checks again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from instantid.cli import app
from instantid.cli.options import model_option


@app.command("doctor")
def doctor_command(
    base: str | None = model_option("base"),
    identitynet: str | None = model_option("identitynet"),
    adapter: str | None = model_option("adapter"),
    antelopev2_root: Path | None = model_option("antelopev2_root"),
    fix: bool = typer.Option(False, "--fix", help="Download what is missing from the Hub into the Hugging Face "
                             "cache (as `instantid download`: licences shown first, each file verified), then check "
                             "again."),
    accept_licences: bool = typer.Option(False, "--accept-licences", help="With --fix: accept the licences shown "
                                         "without asking (for scripts)."),
) -> None:
    """Report what is installed, what is missing and where to get it; downloads nothing unless --fix.

    Exit 0 when everything for real generation is present, else 1.
    """
    import torch

    from instantid.errors import InvalidInputError
    from instantid.io.models import ModelRefs

    if accept_licences and not fix:
        raise InvalidInputError("--accept-licences is for --fix (or `instantid download`)")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    cuda = f"yes ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "no"
    typer.echo(f"torch {torch.__version__}: CUDA {cuda}, MPS {'yes' if mps else 'no'}")
    refs = ModelRefs(**{k: v for k, v in (("base", base), ("identitynet", identitynet), ("adapter", adapter)) if v})
    missing = _report(refs, antelopev2_root)
    if missing and fix:
        models, left = _fixable(refs, antelopev2_root, missing)
        for why in left:
            typer.echo(f"--fix cannot fetch {why}")
        if models:
            from instantid.cli.download import fetch_models

            fetch_models(models, accept_licences=accept_licences)
            typer.echo("checking again:")
            missing = _report(refs, antelopev2_root)
    typer.echo("everything needed for real generation is present" if not missing else
               "some files are missing (see above); `instantid doctor --fix` downloads them, and "
               "`instantid generate --demo` works without them")
    # main() runs click with standalone_mode=False, which returns an Exit's code rather than exiting.
    raise typer.Exit(0 if not missing else 1)


def _report(refs: Any, antelopev2_root: Path | None) -> list[str]:
    """Print one line per model; returns the kinds missing (base, identitynet, adapter, antelopev2)."""
    from instantid.errors import MissingWeightsError
    from instantid.faces.antelopev2 import candidate_folders, find_antelopev2
    from instantid.faces.dlib_backend import dlib_models_dir
    from instantid.io.models import ANTELOPEV2_HINT, describe

    missing = []
    for kind, _ref, path, problem in describe(refs):
        if problem is not None:
            missing.append(kind)
        typer.echo(f"[{'ok' if problem is None else 'MISSING'}] {kind}: {path or problem}")
    folder = find_antelopev2(antelopev2_root)
    if folder is None:
        missing.append("antelopev2")
    searched = ", ".join(str(f) for f in candidate_folders(antelopev2_root))
    typer.echo(f"[ok] antelopev2: {folder}" if folder else f"[MISSING] antelopev2 (searched {searched}): "
               f"{ANTELOPEV2_HINT}")
    try:
        typer.echo(f"[ok] dlib face models (for --face-backend dlib and --demo): {dlib_models_dir()}")
    except MissingWeightsError as exc:
        typer.echo(f"[info] dlib face models: {exc}")
    typer.echo(f"[info] extra ControlNets (optional, for --<kind>-strength): {_extra_controlnets()}")
    typer.echo(f"[info] style adapter (optional, for --style-image): {_style_adapter()}")
    return missing


def _extra_controlnets() -> str:
    """Which of the published demo's extra ControlNets (and their map models) the cache holds."""
    from instantid.api.settings import CONTROL_KINDS
    from instantid.errors import MissingWeightsError
    from instantid.io.models import DEFAULT_MAPPERS, resolve_controlnet, resolve_mapper

    states = []
    for kind in CONTROL_KINDS:
        try:
            resolve_controlnet(kind, local_only=True)
            if kind in DEFAULT_MAPPERS:
                resolve_mapper(kind, local_only=True)
            states.append(f"{kind} ready")
        except MissingWeightsError:
            states.append(f"{kind} not downloaded (`instantid download --controlnet {kind}`)")
    return "; ".join(states)


def _style_adapter() -> str:
    """Whether the cache holds the published style adapter (what a style image loads by default)."""
    from instantid.errors import MissingWeightsError
    from instantid.io.models import DEFAULT_STYLE_ADAPTER, resolve_style_adapter

    try:
        weights, _ = resolve_style_adapter(DEFAULT_STYLE_ADAPTER, local_only=True)
    except MissingWeightsError:
        return f"{DEFAULT_STYLE_ADAPTER} not downloaded (`instantid download --style-adapter`)"
    return f"{DEFAULT_STYLE_ADAPTER} ready ({weights.parent})"


def _fixable(refs: Any, antelopev2_root: Path | None, missing: list[str]) -> tuple[list[Any], list[str]]:
    """The Hub models that fetch what is missing, and why the rest cannot be fetched (a local path)."""
    from instantid.hub.catalog import default_models
    from instantid.io.models import INSTANTID_REPO, looks_like_repo_id

    wanted, left = set(), []
    if "base" in missing:
        if looks_like_repo_id(refs.base):
            wanted.add("base")
        else:
            left.append(f"the base {refs.base}: a local path, not a Hub repository")
    for kind in ("identitynet", "adapter"):
        if kind in missing:
            if getattr(refs, kind) == INSTANTID_REPO:
                wanted.add("instantid")
            else:
                left.append(f"the {kind} {getattr(refs, kind)}: only the published {INSTANTID_REPO} is fetched")
    if "antelopev2" in missing:
        if antelopev2_root is None:
            wanted.add("antelopev2")
        else:
            left.append(f"antelopev2 into --antelopev2-root {antelopev2_root}: it goes into the Hugging Face "
                        "cache; drop --antelopev2-root to use that copy")
    base = refs.base if "base" in wanted else None
    models = [m for m in (default_models(base) if base else default_models()) if m.key in wanted]
    return models, left
