"""Durable jobs: the SQLite store's semantics, job folders that only job ids can name, retention, and a server
killed (kill -9) mid-job whose jobs all finish after a restart, with finished ones still downloadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _demo import FACE, REPO, demo_model
from _service import free_port, serving, until, wait_for

from instantid.errors import InvalidInputError
from instantid.service.jobs import JobFiles, JobRecord, SQLiteJobStore, UnknownJobError, check_job_id, new_job_id


def record(**changes: object) -> JobRecord:
    return JobRecord(id=new_job_id(), request={"settings": {}, "faces": ["a.jpg"], "pose": None}, **changes)


def test_store_round_trip_idempotency_and_atomic_start(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    first, created = store.add(record(owner="alice", idempotency_key="k1"))
    again, created_again = store.add(record(owner="alice", idempotency_key="k1"))
    other, created_other = store.add(record(owner="bob", idempotency_key="k1"))  # keys are per owner
    assert created and not created_again and created_other
    assert again.id == first.id and other.id != first.id and store.by_key("alice", "k1").id == first.id
    assert store.get(first.id).request == first.request
    started = store.start(first.id, "w1")
    assert started.state == "running" and started.attempts == 1 and started.worker == "w1"
    assert store.start(first.id, "w2") is None  # two workers never both start one job
    store.update(first.id, state="done", outputs=["image-0.png"], seeds=[3], metadata={"a": [1]}, finished=1.0)
    done = store.get(first.id)
    assert (done.state, done.outputs, done.seeds, done.metadata) == ("done", ["image-0.png"], [3], {"a": [1]})
    assert store.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0, "canceled": 0}


def test_position_cancel_list_and_lost_worker(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    jobs = [store.add(record(created=100.0 + i, owner="o"))[0] for i in range(3)]
    assert [store.position(j.id) for j in jobs] == [0, 1, 2]
    assert store.cancel(jobs[1].id).state == "canceled" and store.position(jobs[2].id) == 1
    assert store.cancel(jobs[1].id) is None  # finished: nothing to cancel
    page, total = store.list(offset=1, limit=1)
    assert total == 3 and page[0].id == jobs[1].id  # newest first
    assert store.active("o") == 2 and store.claim("w").id == jobs[0].id
    assert store.cancel(jobs[0].id).state == "running"  # a running job is asked, its worker stops it
    assert store.get(jobs[0].id).cancel_requested
    running = store.claim("w")
    assert running.id == jobs[2].id
    assert store.lost(running.id, "worker died", max_attempts=2) == "queued"
    assert store.start(running.id, "w").attempts == 2
    assert store.lost(running.id, "worker died", max_attempts=2) == "failed"
    failed = store.get(running.id)
    assert "worker died (attempt 2 of 2)" in failed.error and failed.finished is not None


def test_job_ids_are_the_only_way_to_a_path(tmp_path: Path) -> None:
    files = JobFiles(tmp_path)
    job_id = new_job_id()
    assert files.folder(job_id).parent == tmp_path / "jobs"
    for bad in ("..", "../../etc", "a" * 31, "A" * 32, "0" * 32 + "/x", "", "0" * 31 + "\n"):
        with pytest.raises(UnknownJobError):
            check_job_id(bad)
        with pytest.raises(InvalidInputError):
            files.image_path(bad, 0)
    files.save_input(job_id, "face-0", b"one")
    files.save_input(job_id, "pose", b"pose")
    assert (files.load_input(job_id, "face-0"), files.load_input(job_id, "pose")) == (b"one", b"pose")
    (files.folder(job_id) / ".image-0.png.x.tmp").write_bytes(b"half")  # a killed writer's leftover
    files.clear_partial(job_id)
    assert not list(files.folder(job_id).glob(".*.tmp")) and (files.folder(job_id) / "inputs").is_dir()


def test_retention_deletes_old_finished_jobs_and_their_folders(tmp_path: Path) -> None:
    from instantid.service.core import JobService, ServerSettings

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    service = JobService(ServerSettings(out_dir=tmp_path, keep_hours=1), store)
    old, recent, queued = record(), record(), record(created=0.0)
    for job in (old, recent, queued):
        store.add(job)
        service.files.save_input(job.id, "face-0", b"x")
    store.update(old.id, state="done", finished=time.time() - 7200)
    store.update(recent.id, state="failed", finished=time.time() - 60)
    assert service.cleanup() == 1
    assert store.get(old.id) is None and not service.files.folder(old.id).exists()
    assert store.get(recent.id) and store.get(queued.id) and service.files.folder(queued.id).is_dir()


@pytest.mark.slow
def test_server_killed_mid_job_loses_nothing(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import httpx

    from instantid.service.server import ServerSettings, create_app

    cache = tmp_path_factory.getbasetemp() / "demo"
    model = demo_model(cache)  # built here first, so the subprocess finds the weights ready
    out = tmp_path / "jobs"
    port = free_port()
    env = {**os.environ, "INSTANTID_DEMO_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "instantid.cli", "serve", "--demo", "--no-ui", "--out", str(out), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def up() -> bool:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                return http.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        until(up, 120, "the server subprocess")
        face = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
        finished = http.post("/v1/generate?wait=true", files=face, data={"steps": "2", "width": "64",
                                                                         "height": "64", "seed": "1"}).json()
        slow = {"steps": "60", "width": "64", "height": "64"}
        jobs = [http.post("/v1/generate", files=face, data={**slow, "seed": str(i)}).json()["job_id"]
                for i in range(3)]
        until(lambda: http.get(f"/v1/jobs/{jobs[0]}").json()["step"] >= 2, 60, "the first job to be running")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stderr.close()

    settings = ServerSettings(out_dir=out, mount_ui=False)
    with serving(create_app(settings, model=model)) as client:
        statuses = [wait_for(client, job_id, timeout=120) for job_id in jobs]
        assert [s["status"] for s in statuses] == ["done"] * 3
        assert statuses[0]["attempts"] == 2  # re-run: it was running when the server died
        assert [s["attempts"] for s in statuses[1:]] == [1, 1]  # queued ones simply ran
        assert [s["seeds"] for s in statuses] == [[0], [1], [2]]
        old = client.get(f"/v1/jobs/{finished['job_id']}")
        assert old.json()["status"] == "done" and client.get(old.json()["images"][0]).status_code == 200
        for job_id in jobs:
            folder = out / "jobs" / job_id
            assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["image-0.json", "image-0.png"]


def test_web_ui_generations_go_through_the_same_queue(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from instantid.api.settings import GenerationSettings
    from instantid.apps.tasks import JobRequest, Prepared
    from instantid.service.core import JobService, QueueFullError, ServerSettings

    model = demo_model(tmp_path_factory.getbasetemp() / "demo")
    service = JobService.start(ServerSettings(out_dir=tmp_path, mount_ui=False, max_queued_jobs=1), model)
    try:
        identity = model.prepare_identity(FACE.read_bytes(), names=["me.jpg"])
        settings = GenerationSettings(steps=2, width=64, height=64, seed=3)
        result = service.run_prepared(Prepared("generate", identity=identity), settings)
        assert result.seeds == [3] and result.images[0].size == (64, 64)
        assert result.metadata["references"] == ["me.jpg"] and result.settings.seed == 3
        records, total = service.store.list(owner="ui")
        assert total == 1 and records[0].state == "done" and records[0].outputs == ["image-0.png"]
        http_job = JobRequest("generate", settings, faces=(("me.jpg", FACE.read_bytes()),))
        with model._lock:  # one job waits on the model, one is queued: the UI is refused like an HTTP client
            running, _ = service.submit_request(http_job)
            until(lambda: service.store.get(running.id).state == "running", 30, "the first job to start")
            queued, _ = service.submit_request(http_job)
            with pytest.raises(QueueFullError):
                service.run_prepared(Prepared("generate", identity=identity), settings)
        until(lambda: service.store.get(queued.id).state == "done", 60, "the queued job")
    finally:
        service.stop()
