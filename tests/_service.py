"""Helpers for the server and job-service tests: uvicorn on 127.0.0.1 in a thread, a throwaway redis-server,
bounded polling."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Any, timeout: float = 30) -> Iterator[httpx.Client]:
    """Serve ``app`` over real HTTP until the block ends; yields a client bound to it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "server failed to start"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(15)


def wait_for(client: httpx.Client, job_id: str, timeout: float = 60, headers: dict | None = None) -> dict:
    """Poll a job until it is finished (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if status.get("status") in ("done", "failed", "canceled"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def until(condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Wait (bounded) until ``condition()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


REDIS = shutil.which("redis-server")


@contextmanager
def redis_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server on 127.0.0.1 (nothing saved) until the block ends: its URL and its process."""
    import redis

    assert REDIS is not None, "redis-server is not installed"
    port = free_port()
    process = subprocess.Popen(
        [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url).ping())
            except redis.exceptions.ConnectionError:
                return False

        until(answers, 20, "redis-server")
        yield url, process
    finally:
        process.terminate()
        process.wait(10)


class Body:
    """A multipart body as the server receives it: text fields and file parts ``{field: [(name, bytes), ...]}``."""

    def __init__(self, values: dict[str, Any], files: dict[str, list[tuple[str, bytes]]]) -> None:
        self.fields = [(k, v) for k, value in values.items() for v in (value if isinstance(value, list) else [value])]
        self.files = [(k, photo) for k, photos in files.items() for photo in photos]


def job_request(task: str, body: Body) -> Any:
    """The checked request the server builds from ``body`` (the path an HTTP multipart request takes)."""
    from instantid.service import requests

    return requests.job_request(task, requests.form_values(task, body.fields, body.files), form=True)  # type: ignore
