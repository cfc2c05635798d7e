"""``instantid serve`` (HTTP API, durable jobs, the web UI at /ui) and ``instantid worker`` (one per GPU, pulls
jobs from the Redis queue a server fills)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from instantid.cli import app
from instantid.cli.generate import load_model
from instantid.cli.options import check_port, with_model_options

HOST = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 exposes it to the network).")
OUT = typer.Option(Path("instantid-jobs"), "--out", help="Job store and job folders; with --queue a path every "
                   "worker sees (shared disk).")
QUEUE = typer.Option(None, "--queue", help="redis://host:6379/0: jobs go to `instantid worker` processes "
                     "(default: SQLite under --out and one worker in this process).")


@app.command("serve")
@with_model_options
def serve_command(
    host: str = HOST,
    port: int = typer.Option(8000, help="Port."),
    out: Path = OUT,
    queue: str | None = QUEUE,
    max_upload_mb: float = typer.Option(20.0, help="Largest request body accepted (413 above)."),
    max_queued_jobs: int = typer.Option(16, help="Waiting jobs beyond this are refused with 429."),
    keep_hours: float = typer.Option(24.0, help="Finished jobs and their images are deleted after this."),
    max_attempts: int = typer.Option(2, help="Runs of a job whose worker died (or server restarted) before it "
                                     "fails."),
    api_key_file: Path | None = typer.Option(None, help="Hashed API keys, one 'NAME sha256:HEX [rate=N] [jobs=N]' "
                                             "per line; every /v1, /sdapi and /controlnet call then needs one."),
    new_api_key: str | None = typer.Option(None, help="Print a new key for NAME and its line for --api-key-file, "
                                           "then exit."),
    rate_limit: float | None = typer.Option(None, help="Submissions per minute per key (or client address)."),
    max_jobs_per_key: int | None = typer.Option(None, help="Queued + running jobs per API key."),
    cors_origin: list[str] = typer.Option([], help="Allow browser calls from this origin (repeat; default: "
                                          "CORS off)."),
    no_ui: bool = typer.Option(False, "--no-ui", help="Do not mount the web UI at /ui (its jobs, every tab's, join "
                               "this server's queue and limits, also with --queue; with --api-key-file it asks to "
                               "sign in: user name = the key's name, password = the key)."),
    model: Any = None,
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

    from instantid.service.auth import load_api_keys
    from instantid.service.server import ServerSettings, create_app

    if api_key_file is not None:
        load_api_keys(api_key_file)  # a bad key line is one error line before minutes of model loading
    check_port(host, port)
    if queue:
        from instantid.service.redis_store import connect

        connect(queue)  # Redis down is one line now, as for `worker`, not a traceback from the app's startup

    settings = ServerSettings(
        **model.model_dump(), out_dir=out, queue=queue, max_upload_bytes=int(max_upload_mb * 2**20),
        max_queued_jobs=max_queued_jobs, keep_hours=keep_hours, max_attempts=max_attempts,
        api_key_file=api_key_file, rate_limit=rate_limit, max_jobs_per_key=max_jobs_per_key,
        cors_origins=cors_origin, mount_ui=not no_ui,
    )
    # Load (and check the key file) before uvicorn starts, so a bad weight file or key line is one clean line.
    loaded = None if queue else load_model(model)
    # The service's own lines (jobs, internal errors with their id and traceback) beside uvicorn's access log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings, loaded), host=host, port=port)


@app.command("worker")
@with_model_options
def worker_command(
    queue: str = typer.Option(..., "--queue", help="redis://host:6379/0, the same as the server's."),
    out: Path = OUT,
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
