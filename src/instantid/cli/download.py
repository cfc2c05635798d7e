"""``instantid download``: every model real generation needs, in one command, into the Hugging Face cache."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from instantid.api.settings import CONTROL_KINDS
from instantid.cli import app
from instantid.faces.antelopev2 import ANTELOPEV2_REPO_ENV, DEFAULT_ANTELOPEV2_REPO

if TYPE_CHECKING:
    from instantid.hub.catalog import HubModel

PARTS = ("base", "instantid", "antelopev2")


@app.command("download", help=f"""\
Fetch the published weights into the standard Hugging Face cache: the SDXL base, InstantID's IdentityNet and \
face adapter, the antelopev2 face detector and recogniser, with --preset a few-step preset's weights and with \
--controlnet the published demo's extra ControlNets (pose, canny, depth) and their map models, with \
--style-adapter the style adapter for --style-image (h94/IP-Adapter's SDXL adapter and its image encoder).

Each model's licence is shown first and needs a yes (--accept-licences for scripts). Every file is checked \
after download: antelopev2's two files against their published SHA-256, the others against the SHA-256 the Hub \
reports at the commit fetched. An interrupted run continues where it stopped when run again. Afterwards \
`instantid doctor` says ready and `instantid generate` needs no other step.

antelopev2 comes from {DEFAULT_ANTELOPEV2_REPO} unless --antelopev2-repo or ${ANTELOPEV2_REPO_ENV} names another \
copy (keep ${ANTELOPEV2_REPO_ENV} set for generate to find that copy).""")
def download_command(
    preset: list[str] = typer.Option([], "--preset", help="Also fetch this few-step preset's weights "
                                     "(see `instantid generate --help`); repeatable."),
    controlnet: list[str] = typer.Option([], "--controlnet", help="Also fetch an extra ControlNet and its map "
                                         f"model, for --<kind>-strength: one of {', '.join(CONTROL_KINDS)}; "
                                         "repeatable."),
    style_adapter: bool = typer.Option(False, "--style-adapter", help="Also fetch the style adapter for "
                                       "--style-image (InstantStyle): h94/IP-Adapter's sdxl_models/"
                                       "ip-adapter_sdxl.safetensors and its image_encoder/."),
    skip: list[str] = typer.Option([], "--skip", help=f"Leave out one of: {', '.join(PARTS)}; repeatable."),
    base: str | None = typer.Option(None, "--base", help="Another SDXL base repository in diffusers layout "
                                    "(default stabilityai/stable-diffusion-xl-base-1.0)."),
    antelopev2_from: str | None = typer.Option(None, "--antelopev2-repo", envvar=ANTELOPEV2_REPO_ENV,
                                               help=f"Hub repository holding the antelopev2 .onnx files "
                                               f"(default {DEFAULT_ANTELOPEV2_REPO})."),
    accept_licences: bool = typer.Option(False, "--accept-licences",
                                         help="Accept the licences shown without asking (for scripts)."),
    verify: bool = typer.Option(False, "--verify", help="Also re-hash the files already in the cache (a bad one "
                                "is removed; run again to fetch it)."),
) -> None:
    from instantid.errors import InvalidInputError
    from instantid.hub.catalog import (
        antelopev2_repo,
        controlnet_models,
        default_models,
        preset_model,
        style_adapter_model,
    )
    from instantid.io.models import DEFAULT_BASE

    # 1. What to fetch (names checked before any network).
    unknown = [s for s in skip if s not in PARTS]
    if unknown:
        raise InvalidInputError(f"--skip {unknown[0]!r}: choose one of {', '.join(PARTS)}")
    models = [m for m in default_models(base or DEFAULT_BASE, antelopev2_from) if m.key not in skip]
    models += [preset_model(name) for name in dict.fromkeys(preset)]
    wrong = [k for k in controlnet if k not in CONTROL_KINDS]
    if wrong:
        raise InvalidInputError(f"--controlnet {wrong[0]!r}: choose one of {', '.join(CONTROL_KINDS)}")
    models += [m for kind in dict.fromkeys(controlnet) for m in controlnet_models(kind)]
    if style_adapter:
        models.append(style_adapter_model())
    if not models:
        raise InvalidInputError("nothing to download: every part is skipped and no --preset, --controlnet or "
                                "--style-adapter given")
    fetch_models(models, accept_licences=accept_licences, verify=verify)
    if "antelopev2" not in skip and antelopev2_repo(antelopev2_from) != antelopev2_repo():
        typer.echo(f"set {ANTELOPEV2_REPO_ENV}={antelopev2_from} so generate finds this antelopev2 copy")


def fetch_models(models: list[HubModel], *, accept_licences: bool, verify: bool = False) -> None:
    """Plan, show each licence and ask for a yes (or take ``accept_licences``), then fetch and verify what the
    cache lacks: the steps of ``instantid download``, shared with ``instantid doctor --fix``."""
    from huggingface_hub import constants
    from rich.filesize import decimal

    from instantid.hub.fetch import DownloadError, cached_path, fetch_file, plan, record_revision, verify_cached

    # 1. Commits, files and sizes from the Hub (metadata only), then the licences and a yes.
    resolved = plan(models)
    for item in resolved:
        typer.echo(f"{item.model.title}: {item.model.repo}@{item.commit[:12]}, {len(item.files)} files, "
                   f"{decimal(item.size)}")
        typer.echo(f"  licence: {item.licence.name} ({item.licence.url})")
        typer.echo(f"  {item.licence.terms}")
    total = sum(item.size for item in resolved)
    if not accept_licences:
        if not sys.stdin.isatty():
            raise DownloadError("the licences above need an explicit yes: run interactively, or pass "
                                "--accept-licences if you accept them")
        if not typer.confirm(f"Accept these licences and download up to {decimal(total)}?", default=False):
            raise DownloadError("licences not accepted; nothing downloaded")
    # 2. Each file: cached, or downloaded (resuming a partial one) and verified before it enters the cache.
    cache_dir = Path(constants.HF_HUB_CACHE)
    for item in resolved:
        for file in item.files:
            path = cached_path(file, cache_dir)
            if path is None:
                path = fetch_file(file, cache_dir, on_start=lambda f, done: typer.echo(
                    f"fetching {f.repo}/{f.path}" + (f" (resuming at {decimal(done)})" if done else ""), err=True))
                state = "downloaded, verified"
            elif verify:
                verify_cached(file, cache_dir)
                state = "cached, verified"
            else:
                state = "cached"
            typer.echo(f"[ok] {file.repo}/{file.path} ({decimal(file.size)}; {state}: {file.algorithm} "
                       f"{file.source}) -> {path}")
        record_revision(item, cache_dir)
    typer.echo(f"done: {len(resolved)} models at the commits shown, in {cache_dir}")
