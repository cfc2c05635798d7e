"""``instantid serve`` (HTTP API, durable jobs, the web UI at /ui) and ``instantid worker`` (one per GPU, pulls
jobs from the Redis queue a server fills)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from instantid.cli import app
from instantid.cli.generate import load_model
from instantid.cli.options import check_port, model_option, with_model_options, with_settings_options
from instantid.service.settings import ServerSettings

HOST = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network).")


@app.command("serve")
@with_settings_options(ServerSettings, "settings")
def serve_command(
    host: str = HOST,
    port: int = typer.Option(8000, help="Port."),
    new_api_key: str | None = typer.Option(None, help="Print a new key for NAME and its line for --api-key-file, "
                                           "then exit."),
    settings: Any = None,
) -> None:
    """Start the HTTP API (docs at /docs, metrics at /metrics) with the web UI at /ui."""
    if new_api_key:
        from instantid.service.auth import new_api_key as make_key

        key, line = make_key(new_api_key)
        typer.echo(f"key (give it to the client; it is not stored): {key}")
        typer.echo(f"line for --api-key-file: {line}")
        return
    import logging

    import uvicorn

    from instantid.io.outputs import prepare_folder
    from instantid.service.auth import load_api_keys
    from instantid.service.server import create_app

    if settings.api_key_file is not None:
        load_api_keys(settings.api_key_file)  # a bad key line is one error line before minutes of model loading
    check_port(host, port)
    prepare_folder(settings.out_dir, "--out")  # before the model load, named by its flag
    if settings.queue:
        from instantid.service.redis_store import connect

        connect(settings.queue)  # Redis down is one line now, as for `worker`, not a traceback from the app's startup
    # Load (and check the key file) before uvicorn starts, so a bad weight file or key line is one clean line.
    loaded = None if settings.queue else load_model(settings)
    # The service's own lines (jobs, internal errors with their id and traceback) beside uvicorn's access log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings, loaded), host=host, port=port)


@app.command("worker")
@with_model_options
def worker_command(
    queue: str = typer.Option(..., "--queue", help="redis://host:6379/0, the same as the server's."),
    out: Path = model_option("out_dir", ServerSettings),
    lease: int = typer.Option(30, min=3, help="Seconds without a heartbeat after which this worker's job is given to "
                              "another worker."),
    burst: bool = typer.Option(False, help="Exit when the queue is empty."),
    metrics_port: int | None = typer.Option(None, help="Serve this worker's Prometheus metrics on this port."),
    model: Any = None,
) -> None:
    """Run jobs from the Redis queue on this machine's GPU (start one per GPU, on any number of machines)."""
    import logging

    from instantid.service.redis_store import connect
    from instantid.service.rq_worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    connection = connect(queue)  # a wrong URL fails before the model loads
    loaded = load_model(model)
    metrics = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        from instantid.service.metrics import ServiceMetrics

        metrics = ServiceMetrics()
        start_http_server(metrics_port, registry=metrics.registry)
    run_worker(loaded, connection, out, lease_s=lease, burst=burst, metrics=metrics)
