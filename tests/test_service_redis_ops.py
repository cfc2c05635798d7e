"""Operating the many-worker setup on a real redis-server: /ready counts workers by live heartbeat (a kill -9'd
worker stops counting within a lease), a worker with a metrics port exits promptly after SIGTERM, and a server
whose Redis goes away answers 503 JSON with Retry-After instead of a 500."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from _demo import FACE, REPO, demo_model
from _service import REDIS, free_port, redis_server, serving, until, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server)"),
]
LEASE_S = 3
FAST = {"steps": "2", "width": "64", "height": "64"}


def start_worker(url: str, out: Path, cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "INSTANTID_DEMO_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "instantid.cli", "worker", "--queue", url, "--out", str(out), "--demo",
               "--lease", str(LEASE_S), "--metrics-port", str(free_port())]
    with log.open("wb") as stderr:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def workers_ready(client: httpx.Client) -> int:
    return client.get("/ready").json()["workers"]


def test_ready_counts_live_workers_and_sigterm_exits_promptly(tmp_path: Path,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    from instantid.service.server import ServerSettings, create_app

    cache = tmp_path_factory.getbasetemp() / "demo"
    model = demo_model(cache)
    out = tmp_path / "jobs"
    with redis_server(tmp_path) as (url, _):
        settings = ServerSettings(out_dir=out, queue=url, mount_ui=False)
        with serving(create_app(settings, model=model)) as client:
            victim = start_worker(url, out, cache, tmp_path / "victim.log")
            try:
                until(lambda: workers_ready(client) == 1, 180, "the first worker")
                job = client.post("/v1/generate", files=[("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))],
                                  data=FAST).json()
                assert wait_for(client, job["job_id"], 120)["status"] == "done"  # it has been busy once
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                # Within a few leases, not RQ's 90 s busy-worker TTL.
                until(lambda: workers_ready(client) == 0, 5 * LEASE_S, "the killed worker to stop counting")
            finally:
                if victim.poll() is None:
                    victim.kill()
                    victim.wait(10)
            worker = start_worker(url, out, cache, tmp_path / "worker.log")
            try:
                until(lambda: workers_ready(client) == 1, 180, "the second worker")
                job = client.post("/v1/generate", files=[("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))],
                                  data=FAST).json()
                assert wait_for(client, job["job_id"], 120)["status"] == "done"
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(5 * LEASE_S) == 0, (tmp_path / "worker.log").read_text()[-2000:]
                assert workers_ready(client) == 0  # a clean exit takes its heartbeat with it
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(10)


def test_worker_has_no_pubsub_thread_to_wait_for(tmp_path: Path) -> None:
    import redis
    from redis.client import PubSubWorkerThread
    from rq import Queue

    from instantid.service.rq_worker import HeartbeatWorker

    with redis_server(tmp_path) as (url, _):
        connection = redis.Redis.from_url(url)
        worker = HeartbeatWorker([Queue("instantid", connection=connection)], connection=connection)
        worker.subscribe()
        try:
            assert worker.pubsub_thread is None
            assert not any(isinstance(t, PubSubWorkerThread) for t in threading.enumerate())
        finally:
            worker.unsubscribe()


def test_redis_down_is_503_json_with_retry_after(tmp_path: Path, model: object) -> None:
    from instantid.service.server import ServerSettings, create_app

    with redis_server(tmp_path) as (url, process):
        settings = ServerSettings(out_dir=tmp_path / "jobs", queue=url, mount_ui=False)
        with serving(create_app(settings, model=model)) as client:
            process.terminate()
            process.wait(10)
            files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
            for response in (client.post("/v1/generate", files=files, data=FAST),
                             client.get("/v1/jobs"), client.get("/ready")):
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/json"
                assert int(response.headers["retry-after"]) > 0
                assert "detail" in response.json() or "status" in response.json()
            generate = client.post("/v1/generate", files=files, data=FAST)
            assert int(generate.headers["retry-after"]) > 0 and "job store" in generate.json()["detail"]
