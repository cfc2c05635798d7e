"""The SQLite job store's contract, field by field (the served queue is tests/test_jobs.py): cancel of queued,
running and finished jobs, list filters and order, queue positions on equal timestamps, idempotency keys, counts,
the per-owner active count, a lost worker's retry or give-up, and the job folders' delete."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from instantid.service.jobs import JobFiles, JobRecord, SQLiteJobStore, new_job_id


def record(job_id: str | None = None, **changes: object) -> JobRecord:
    return JobRecord(id=job_id or new_job_id(), request={"faces": ["a.jpg"]}, **changes)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "state" / "db" / "jobs.sqlite3")  # folders made as needed


def test_cancel_a_queued_job_ends_it_and_a_running_one_is_only_asked(store: SQLiteJobStore) -> None:
    queued, _ = store.add(record(created=1.0))
    running, _ = store.add(record(created=2.0, error="earlier note"))
    store.start(running.id, "w")
    before = time.time()
    canceled = store.cancel(queued.id)
    assert (canceled.state, canceled.error) == ("canceled", "canceled before it started")
    assert canceled.cancel_requested is True
    assert canceled.finished >= before
    asked = store.cancel(running.id)
    assert (asked.state, asked.error, asked.finished, asked.cancel_requested) == (
        "running", "earlier note", None, True)
    assert store.start(queued.id, "w") is None  # a canceled job never starts
    store.update(running.id, state="done", finished=5.0)
    assert store.cancel(running.id) is None and store.cancel(new_job_id()) is None
    assert store.get(running.id).finished == 5.0


def test_a_queued_job_with_a_cancel_request_does_not_start(store: SQLiteJobStore) -> None:
    job, _ = store.add(record(cancel_requested=True))
    assert store.start(job.id, "w") is None and store.get(job.id).state == "queued"


def test_list_filters_orders_newest_first_and_pages(store: SQLiteJobStore) -> None:
    ids = sorted(new_job_id() for _ in range(4))
    jobs = [store.add(record(ids[i], created=c, owner=o))[0]
            for i, (c, o) in enumerate([(1.0, "a"), (3.0, "b"), (3.0, "a"), (2.0, "a")])]
    store.update(jobs[3].id, state="done")
    everything, total = store.list()
    assert total == 4 and [j.id for j in everything] == [ids[1], ids[2], ids[3], ids[0]]  # equal times by id
    page, total = store.list(offset=1, limit=2)
    assert total == 4 and [j.id for j in page] == [ids[2], ids[3]]
    mine, total = store.list(owner="a")
    assert total == 3 and [j.id for j in mine] == [ids[2], ids[3], ids[0]]
    done, total = store.list(owner="a", state="done")
    assert total == 1 and [j.id for j in done] == [ids[3]]
    assert store.list(state="failed") == ([], 0)
    assert store.list(owner="a", limit=1)[1] == 3  # the total ignores the page


def test_position_counts_earlier_queued_jobs_with_ties_by_id(store: SQLiteJobStore) -> None:
    ids = sorted(new_job_id() for _ in range(4))
    for i, created in enumerate([5.0, 5.0, 4.0, 6.0]):
        store.add(record(ids[i], created=created))
    assert [store.position(i) for i in ids] == [1, 2, 0, 3]
    store.start(ids[2], "w")
    assert [store.position(i) for i in ids] == [0, 1, None, 2]  # running jobs are not ahead of anyone
    assert store.position(new_job_id()) is None


def test_idempotency_keys_per_owner_and_plain_duplicates(store: SQLiteJobStore) -> None:
    first, created = store.add(record(owner="a", idempotency_key="k"))
    assert created and store.by_key("a", "k").id == first.id
    assert store.by_key("b", "k") is None and store.by_key("a", "other") is None
    again, created = store.add(record(owner="a", idempotency_key="k"))
    assert not created and again.id == first.id
    with pytest.raises(sqlite3.IntegrityError):  # the same id twice, no key: a bug, not a retry
        store.add(record(first.id))
    store.add(record(owner="a"))
    store.add(record(owner="a"))  # no key: never a duplicate
    assert store.list(owner="a")[1] == 3


def test_counts_active_running_and_delete(store: SQLiteJobStore) -> None:
    jobs = [store.add(record(owner=o, created=float(i)))[0] for i, o in enumerate("aaab")]
    store.start(jobs[0].id, "w")
    store.update(jobs[1].id, state="failed", finished=1.0)
    assert store.counts() == {"queued": 2, "running": 1, "done": 0, "failed": 1, "canceled": 0}
    assert store.active("a") == 2 and store.active("b") == 1 and store.active("c") == 0
    assert store.running() == [jobs[0].id]
    assert store.finished_before(2.0) == [jobs[1].id] and store.finished_before(1.0) == []
    store.delete(jobs[1].id)
    assert store.get(jobs[1].id) is None and store.counts()["failed"] == 0


def test_a_lost_worker_requeues_while_attempts_are_left(store: SQLiteJobStore) -> None:
    job, _ = store.add(record())
    assert store.lost(job.id, "gone", max_attempts=1) == "queued"  # not running: nothing to do
    assert store.lost(new_job_id(), "gone", max_attempts=1) == "unknown"
    store.start(job.id, "w1")
    store.update(job.id, step=7)
    assert store.lost(job.id, "worker w1 stopped", max_attempts=2) == "queued"
    again = store.get(job.id)
    assert (again.state, again.worker, again.step, again.error, again.finished) == (
        "queued", None, 0, "retrying: worker w1 stopped", None)
    store.start(job.id, "w2")
    assert store.lost(job.id, "worker w2 stopped", max_attempts=2) == "failed"
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.error == "worker w2 stopped (attempt 2 of 2); giving up"
    assert failed.worker is None and failed.finished is not None


def test_job_files_without_pose_and_delete(tmp_path: Path) -> None:
    files = JobFiles(tmp_path)
    job_id = new_job_id()
    files.save_input(job_id, "face-0", b"one")
    assert files.load_input(job_id, "face-0") == b"one"
    assert files.image_path(job_id, 2) == tmp_path / "jobs" / job_id / "image-2.png"
    files.clear_partial(new_job_id())  # no folder: nothing to clear, no error
    files.delete(job_id)
    assert not (tmp_path / "jobs" / job_id).exists()
    files.delete(job_id)  # already gone: no error


def test_other_threads_and_connections_see_the_same_jobs(store: SQLiteJobStore) -> None:
    """The server's threads share one store; a restarted server (another connection) sees every committed job."""
    import threading

    job, _ = store.add(record(created=1.0))
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.claim("w")))
    thread.start()
    thread.join()
    assert seen[0].id == job.id and seen[0].worker == "w"
    again = SQLiteJobStore(store.path)
    assert again.get(job.id).state == "running" and again.get(job.id).worker == "w"
    assert again.claim("w") is None  # nothing queued: no job, no error


def test_list_pages_twenty_by_default(store: SQLiteJobStore) -> None:
    for i in range(21):
        store.add(record(created=float(i)))
    page, total = store.list()
    assert len(page) == 20 and total == 21


def test_bad_ids_and_slots_are_named_in_one_short_line(tmp_path: Path) -> None:
    from instantid.service.jobs import UnknownJobError, check_job_id

    long = "x" * 60
    with pytest.raises(UnknownJobError) as caught:
        check_job_id(long)
    assert str(caught.value) == f"no job {'x' * 40!r}: job ids are 32 hex digits"
    with pytest.raises(Exception) as caught:
        JobFiles(tmp_path).input_path(new_job_id(), "../" + long)
    assert str(caught.value) == f"not an input slot: {('../' + long)[:40]!r}"
