"""Many workers on one Redis: jobs travel through RQ, records live in :class:`RedisJobStore`.

Why RQ: a job here is one function call on a model that is already loaded; RQ is a small library on Redis
alone (no broker to run besides the Redis the store uses), its ``SimpleWorker`` runs jobs in the worker's own
process (a GPU model cannot be shared with forked children), and it ships what a lost worker needs: a
started-job registry with per-execution heartbeats, retries, and a failure callback for abandoned jobs.
Celery and Dramatiq bring their own broker abstractions and result backends we would not use.

Each worker also keeps a key ``instantid:alive:<name>`` that expires ``lease_s`` after its last beat:
``/ready`` counts those, so a killed worker stops counting within a lease (RQ's own worker registry keeps a
busy worker's entry for 90 s after it died).

A worker killed mid-job (kill -9) stops its heartbeat; ``lease_s`` later its entry in RQ's started registry
expires, and the next maintenance pass of any worker calls :func:`on_failure` (the record goes back to queued,
or fails after ``max_attempts``) and RQ re-queues the job. The next worker re-runs it from the photos in the job
folder and writes the images under the same names, atomically: each image exists once, whole.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rq import Callback, Queue, Retry, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from instantid.service.jobs import JobFiles
from instantid.service.redis_store import RedisJobStore
from instantid.service.runner import JobRunner, worker_name

if TYPE_CHECKING:
    from instantid.api.generator import InstantID
    from instantid.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
QUEUE_NAME = "instantid"
ALIVE = "instantid:alive:"  # + worker name: set every lease/3 seconds, expires after a lease
_runner: JobRunner | None = None  # the worker process's runner (its model loaded once), see run_worker


class RQDispatch:
    """The server side: hand a stored job to the workers."""

    def __init__(self, connection: Any, *, max_attempts: int, job_timeout_s: int) -> None:
        self.queue = Queue(QUEUE_NAME, connection=connection)
        self.max_attempts = max_attempts
        self.job_timeout_s = job_timeout_s

    def submit(self, job_id: str) -> None:
        self.queue.enqueue(
            perform, job_id, self.max_attempts, job_id=job_id, job_timeout=self.job_timeout_s,
            # A job that lost its worker goes to the front: it has waited longest.
            retry=Retry(max=self.max_attempts - 1, enqueue_at_front=True) if self.max_attempts > 1 else None,
            on_failure=Callback(on_failure), result_ttl=3600, failure_ttl=7 * 24 * 3600,
        )

    def workers(self) -> int:
        """Workers whose heartbeat is live (beaten within their lease)."""
        return sum(1 for _ in self.queue.connection.scan_iter(match=f"{ALIVE}*", count=1000))

    def cancel(self, job_id: str) -> None:
        try:
            Job.fetch(job_id, connection=self.queue.connection).cancel()
        except (NoSuchJobError, Exception) as exc:  # already picked up or gone: the record's state decides
            log.debug("RQ cancel of %s: %s", job_id, exc)


def perform(job_id: str, max_attempts: int) -> str:
    """The RQ job: run one stored job on this worker's model (skipped if it was canceled meanwhile)."""
    if _runner is None:
        raise RuntimeError("perform() runs inside `instantid worker` only")
    store = _runner.store
    current = store.get(job_id)
    if current is not None and current.state == "running":
        # RQ runs a started job again only after its execution expired: the worker that had it is gone
        # (normally on_failure has already said so; this covers a callback that could not run).
        store.lost(job_id, "the worker was lost", max_attempts)
    record = store.start(job_id, _runner.name)
    if record is None:
        current = store.get(job_id)
        return f"skipped: job is {current.state if current else 'gone'}"
    return _runner.run(record)


def on_failure(job: Job, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ calls this when a job raised or its worker was lost; keep the record's state in step with RQ's."""
    store = RedisJobStore(connection)
    max_attempts = int(job.args[1]) if len(job.args) > 1 else 1
    reason = f"the worker was lost ({exc_type.__name__ if exc_type else 'abandoned'})"
    state = store.lost(job.id, reason, max_attempts)
    log.warning("job %s: %s; now %s", job.id, reason, state)


class HeartbeatWorker(SimpleWorker):
    """A SimpleWorker (jobs in this process, next to the loaded model) that keeps beating while a job runs,
    so a lease of seconds works for jobs of any length and a dead worker is noticed after ``lease_s``. A busy
    worker also looks for abandoned jobs while it works (RQ does that only between jobs), so a dead peer's
    job is re-queued within a lease even when every other worker is busy."""

    lease_s = 30

    def subscribe(self) -> None:
        """No pub/sub thread: RQ's remote commands (stop a job, shut down) are not used here (a cancel goes
        through the job record), and RQ's shutdown waits for that thread's 60-second poll, so a worker with a
        metrics port took up to a minute to exit after SIGTERM."""

    def unsubscribe(self) -> None:
        """Nothing to leave (see :meth:`subscribe`)."""

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(self.lease_s)

    def execute_job(self, job: Job, queue: Queue) -> None:
        from rq.worker import WorkerStatus

        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            beats = 0
            while not stop.wait(self.lease_s / 3):
                beats += 1
                try:
                    self.maintain_heartbeats(job, execution)
                    if beats % 2 == 0:
                        recover_abandoned(queue)
                except Exception as exc:  # a missed beat is retried; the lease covers two more
                    log.warning("heartbeat for job %s failed: %s", job.id, exc)

        thread = threading.Thread(target=beat, name="instantid-heartbeat", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join()
        self.set_state(WorkerStatus.IDLE)


def recover_abandoned(queue: Queue) -> None:
    """Re-queue (or fail) jobs whose worker stopped beating; one process at a time, under RQ's maintenance lock.

    Runs off the main thread, so the failure callback's time limit is a timer, not SIGALRM."""
    if not queue.acquire_maintenance_lock():
        return
    try:
        StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
    finally:
        queue.release_maintenance_lock()


def run_worker(model: InstantID, connection: Any, root: str | Path, *, lease_s: int = 30, burst: bool = False,
               metrics: ServiceMetrics | None = None, name: str | None = None) -> None:
    """Pull jobs until stopped (SIGTERM/SIGINT finish the current job first); ``burst`` stops when idle."""
    global _runner
    store = RedisJobStore(connection)
    _runner = JobRunner(model, store, JobFiles(root), metrics, name=name or worker_name())
    queue = Queue(QUEUE_NAME, connection=connection)
    # Maintenance (which finds abandoned jobs) runs between dequeue waits: wait at most half a lease.
    maintenance_s = max(1, lease_s // 2)
    worker = HeartbeatWorker([queue], connection=connection, name=_runner.name.replace(":", "-"),
                             worker_ttl=maintenance_s + 15, maintenance_interval=maintenance_s)
    worker.lease_s = lease_s
    alive = f"{ALIVE}{worker.name}"
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                connection.set(alive, _runner.name if _runner else "", ex=lease_s)
            except Exception as exc:  # Redis away for a moment: the next beat tries again
                log.warning("worker heartbeat failed: %s", exc)
            if stop.wait(lease_s / 3):
                return

    beating = threading.Thread(target=beat, name="instantid-alive", daemon=True)
    beating.start()
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        stop.set()
        beating.join(5)
        try:
            connection.delete(alive)  # a worker that stops cleanly stops counting at once
        except Exception as exc:
            log.warning("could not remove the worker's heartbeat: %s", exc)
