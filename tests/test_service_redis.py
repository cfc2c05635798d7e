"""Many workers: a real redis-server on 127.0.0.1, the HTTP server with ``queue=redis://...`` and two
``instantid worker`` processes on the tiny demo stack. Jobs spread across both workers; one worker is killed
with kill -9 mid-job and its job is finished by the other; every job's images exist exactly once; a restarted
server still lists and serves every job. Prints jobs/s through the queue and the recovery time after the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _demo import FACE, REPO, demo_model
from _service import REDIS, redis_server, serving, until, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server)"),
]
LEASE_S = 3


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as (url, _):
        yield url


def test_redis_store_has_the_sqlite_semantics(redis_url: str) -> None:
    import redis

    from instantid.service.jobs import JobRecord, new_job_id
    from instantid.service.redis_store import RedisJobStore

    store = RedisJobStore(redis.Redis.from_url(redis_url))

    def record(**changes: object) -> JobRecord:
        return JobRecord(id=new_job_id(), request={"settings": {}, "faces": ["a.jpg"], "pose": None}, **changes)

    first, created = store.add(record(owner="alice", idempotency_key="k", created=1.0))
    again, created_again = store.add(record(owner="alice", idempotency_key="k"))
    assert created and not created_again and again.id == first.id and store.by_key("alice", "k").id == first.id
    second, _ = store.add(record(owner="bob", created=2.0))
    third, _ = store.add(record(owner="alice", created=3.0))
    assert [store.position(j.id) for j in (first, second, third)] == [0, 1, 2]
    assert store.start(first.id, "w1").attempts == 1 and store.start(first.id, "w2") is None
    assert store.cancel(second.id).state == "canceled" and store.position(third.id) == 0
    assert store.cancel(first.id).state == "running" and store.get(first.id).cancel_requested
    store.update(first.id, step=3, total=9)  # a progress write keeps the cancel request (one field per value)
    assert store.get(first.id).cancel_requested and store.get(first.id).step == 3
    assert store.lost(first.id, "worker died", max_attempts=1) == "failed"
    assert store.counts() == {"queued": 1, "running": 0, "done": 0, "failed": 1, "canceled": 1}
    page, total = store.list(offset=0, limit=1, owner="alice")
    assert total == 2 and page[0].id == third.id
    assert store.list(owner="alice", state="failed")[0][0].id == first.id and store.active("alice") == 1
    assert set(store.finished_before(time.time() + 1)) == {first.id, second.id}
    store.delete(first.id)
    assert store.get(first.id) is None and store.by_key("alice", "k") is None
    assert store.counts()["failed"] == 0 and store.list()[1] == 2


def start_worker(url: str, out: Path, cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "INSTANTID_DEMO_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "instantid.cli", "worker", "--queue", url, "--out", str(out), "--demo",
               "--lease", str(LEASE_S)]
    with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def submit(client, steps: int, seed: int) -> str:  # noqa: ANN001
    face = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/generate", files=face, data={"steps": str(steps), "width": "64", "height": "64",
                                                               "seed": str(seed)})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_two_workers_a_kill_and_a_server_restart(redis_url: str, tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from instantid.service.server import ServerSettings, create_app

    cache = tmp_path_factory.getbasetemp() / "demo"
    model = demo_model(cache)  # builds the weights the workers load; the server uses its face analyzer only
    out = tmp_path / "jobs"
    workers = [start_worker(redis_url, out, cache, tmp_path / f"worker-{i}.log") for i in range(2)]
    settings = ServerSettings(out_dir=out, queue=redis_url, mount_ui=False, max_queued_jobs=50)
    jobs: list[str] = []
    try:
        with serving(create_app(settings, model=model)) as client:
            def ready_workers() -> bool:
                for i, worker in enumerate(workers):
                    assert worker.poll() is None, (tmp_path / f"worker-{i}.log").read_text()[-3000:]
                return client.get("/ready").json()["workers"] == 2

            until(ready_workers, 180, "two workers")
            # 1. Throughput, and jobs spread across both workers.
            start = time.monotonic()
            fast = [submit(client, 2, seed) for seed in range(6)]
            done = [wait_for(client, job_id, 120) for job_id in fast]
            rate = len(fast) / (time.monotonic() - start)
            assert all(s["status"] == "done" for s in done), done
            names = {s["worker"] for s in done}
            assert len(names) == 2, names
            jobs += fast

            # 2. kill -9 a worker mid-job: the other one finishes its job after the lease.
            slow = [submit(client, 30, 100 + seed) for seed in range(3)]
            jobs += slow
            victim_name = None

            def victim_running() -> str | None:
                for job_id in slow:
                    status = client.get(f"/v1/jobs/{job_id}").json()
                    if status["status"] == "running" and status["step"] >= 2:
                        return job_id
                return None

            victim_job = until(victim_running, 120, "a running job")
            victim_name = client.get(f"/v1/jobs/{victim_job}").json()["worker"]
            pid = int(victim_name.rsplit(":", 1)[1])
            victim = next(w for w in workers if w.pid == pid)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_at = time.monotonic()
            until(lambda: client.get(f"/v1/jobs/{victim_job}").json()["attempts"] == 2, 60, "the job to restart")
            restarted = time.monotonic() - killed_at
            finals = [wait_for(client, job_id, 180) for job_id in slow]
            assert all(s["status"] == "done" for s in finals), finals
            recovered = time.monotonic() - killed_at
            survivor = next(w for w in workers if w is not victim)
            by_id = dict(zip(slow, finals, strict=True))
            assert by_id[victim_job]["attempts"] == 2 and by_id[victim_job]["worker"] != victim_name
            assert by_id[victim_job]["error"] is None  # done, without the lost run's "retrying: ..."
            assert f":{survivor.pid}" in by_id[victim_job]["worker"]
            print(f"\nqueue: {rate:.2f} jobs/s with 2 workers (2-step 64 px demo jobs); after kill -9: job "
                  f"restarted in {restarted:.1f} s, all jobs done {recovered:.1f} s after the kill "
                  f"(lease {LEASE_S} s)")

        # 3. A new server process on the same Redis and folder: nothing lost, everything downloadable.
        with serving(create_app(settings, model=model)) as client:
            listed = client.get("/v1/jobs", params={"limit": 100}).json()
            assert listed["total"] == len(jobs) and {j["job_id"] for j in listed["jobs"]} == set(jobs)
            assert all(j["status"] == "done" for j in listed["jobs"])
            for job in listed["jobs"]:
                assert client.get(job["images"][0]).status_code == 200
            metrics = client.get("/metrics").text
            assert f'instantid_jobs{{state="done"}} {float(len(jobs))}' in metrics
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    worker.kill()
    for job_id in jobs:  # exactly once: one PNG + sidecar per image, no leftovers from the killed writer
        files = sorted(p.name for p in (out / "jobs" / job_id).iterdir() if p.is_file())
        assert files == ["image-0.json", "image-0.png"], (job_id, files)
