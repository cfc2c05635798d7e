"""``instantid ui`` (gradio web UI); ``serve`` and ``worker`` are in :mod:`instantid.cli.service`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from instantid.cli import app
from instantid.cli.generate import load_model, with_model_options
from instantid.cli.options import check_port


@app.command("ui")
@with_model_options
def ui_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(7860, help="Port."),
    out: Path = typer.Option(Path("outputs/ui"), "--out", "-o", file_okay=False,
                             help="Folder the images are saved to (PNG with its settings + JSON sidecar)."),
    model: Any = None,
) -> None:
    """Start the web UI: upload a face, pick a style, generate."""
    import logging
    import os

    # Before gradio is imported: its analytics and version-check threads phone home (and can hold the process
    # for 30 s at exit when offline). Set the variable to True yourself to allow them.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from instantid.webui import create_ui, prepare_out_dir

    # One line per UI error (the UI logs user errors at WARNING); library INFO chatter stays off.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = prepare_out_dir(out, label="--out")  # a bad folder is one line now, not after the models load
    check_port(host, port)
    typer.echo(f"Images are saved to {folder}")
    ui = create_ui(load_model(model), out_dir=folder)
    # quiet: gradio's banner advertises share=True, which this command does not offer; print our own line.
    ui.launch(server_name=host, server_port=port, share=False, quiet=True, prevent_thread_lock=True)
    typer.echo(f"Web UI on {ui.local_url} (Ctrl+C to stop)")
    try:
        ui.block_thread()
    finally:
        ui.close()


# `serve` and `worker` live in instantid.cli.service; importing it here registers them with this module.
from instantid.cli import service as _service  # noqa: E402, F401
