"""``instantid ui`` (gradio web UI) and ``instantid serve`` (HTTP API, with the UI at /ui)."""

from __future__ import annotations

from typing import Any

import typer

from instantid.cli import app
from instantid.cli.generate import load_model, with_model_options


@app.command("ui")
@with_model_options
def ui_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(7860, help="Port."),
    model: Any = None,
) -> None:
    """Start the web UI: upload a face, pick a style, generate."""
    from instantid.webui import create_ui

    create_ui(load_model(model)).launch(server_name=host, server_port=port, share=False)


@app.command("serve")
@with_model_options
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, help="Port."),
    max_upload_mb: float = typer.Option(20.0, help="Largest request body accepted (413 above)."),
    max_queued_jobs: int = typer.Option(16, help="Waiting jobs beyond this are refused with 429."),
    no_ui: bool = typer.Option(False, "--no-ui", help="Do not mount the web UI at /ui."),
    model: Any = None,
) -> None:
    """Start the HTTP API (docs at /docs) with the web UI at /ui."""
    import uvicorn

    from instantid.server import ServerSettings, create_app

    settings = ServerSettings(**model.model_dump(), max_upload_bytes=int(max_upload_mb * 2**20),
                              max_queued_jobs=max_queued_jobs, mount_ui=not no_ui)
    # Load before uvicorn starts so a missing weight file is one clean line, not a startup traceback.
    uvicorn.run(create_app(settings, load_model(settings)), host=host, port=port)
