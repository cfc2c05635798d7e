"""Running one job, and the in-process worker that runs the SQLite queue one job at a time.

The runner takes a job the store has just moved to ``running``: the job analysed when it was submitted, from
memory (same process) or, for a remote worker or after a restart, from the job folder
(:mod:`instantid.service.stored`); generates, swaps, draws the group or redraws the faces; writes
``image-<n>.png`` + sidecar atomically under fixed names (a re-run replaces, never adds); then marks the job
done. Every outcome, including a crash of the model, ends in a finished record.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from instantid.api.settings import settings_from_record
from instantid.apps.tasks import Prepared
from instantid.errors import InstantIDError
from instantid.internal_errors import MESSAGE, report
from instantid.io.outputs import write_image
from instantid.service.jobs import JobFiles, JobRecord, JobStore

if TYPE_CHECKING:
    from instantid.api.generator import InstantID
    from instantid.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class JobCanceled(Exception):  # noqa: N818 - a signal through the pipeline's step callback, not an error
    """Raised from the step callback when the job was canceled while it ran."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    """Runs jobs on one loaded model; ``prepared_jobs`` holds the jobs this process analysed at submit (the job
    folder holds the same, for any other process)."""

    def __init__(self, model: InstantID, store: JobStore, files: JobFiles,
                 metrics: ServiceMetrics | None = None, name: str | None = None) -> None:
        self.model = model
        self.store = store
        self.files = files
        self.metrics = metrics
        self.name = name or worker_name()
        self.prepared_jobs: dict[str, Prepared] = {}

    def prepared(self, record: JobRecord) -> Prepared:
        """The analysed job: from memory when this process analysed it, else from the job folder."""
        from instantid.service.stored import load_prepared

        cached = self.prepared_jobs.pop(record.id, None)
        return cached if cached is not None else load_prepared(self.files, record.id)

    def run(self, record: JobRecord) -> str:
        """Run a job that is already ``running`` in the store; returns its final state."""
        job_id = record.id
        self.files.clear_partial(job_id)
        settings = settings_from_record(record.request["settings"])
        last_check = [0.0]

        def progress(step: int, total: int) -> None:
            self.store.update(job_id, step=step, total=total)
            now = time.monotonic()
            if now - last_check[0] > 0.2:  # a cancel is noticed within a step, without a read per step
                last_check[0] = now
                current = self.store.get(job_id)
                if current is None or current.cancel_requested:
                    raise JobCanceled

        started = time.monotonic()
        try:
            result = self.prepared(record).run(self.model, settings, progress)
            folder = self.files.folder(job_id)
            outputs = []
            for i, image in enumerate(result.images):
                path = write_image(image, result.image_metadata(i), folder, self.files.image_name(i), overwrite=True)
                outputs.append(path.name)
        except JobCanceled:
            return self._finish(job_id, "canceled", error="canceled while running")
        except InstantIDError as exc:
            return self._finish(job_id, "failed", error=str(exc))
        except Exception as exc:  # a bug, not the input: the worker survives it and the user is not blamed
            incident = report(exc, log, f"job {job_id}")
            return self._finish(job_id, "failed", error=MESSAGE, error_id=incident.error_id)
        if self.metrics:
            self.metrics.generation_seconds.observe(time.monotonic() - started)
        # A re-run (after a restart or a lost worker) ends clean: no "retrying: ..." left from the lost run.
        return self._finish(job_id, "done", outputs=outputs, seeds=result.seeds, metadata=result.metadata,
                            error=None, error_id=None)

    def _finish(self, job_id: str, state: str, **changes: Any) -> str:
        # The worker's name stays on the record: which machine made these images.
        self.store.update(job_id, state=state, finished=time.time(), **changes)
        if self.metrics:
            self.metrics.jobs_finished.labels(state=state).inc()
        log.info("job %s %s", job_id, state)
        return state


class LocalWorker:
    """One thread that runs the SQLite queue's jobs in order (the no ``--queue`` setup)."""

    def __init__(self, runner: JobRunner, poll_s: float = 0.5) -> None:
        self.runner = runner
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="instantid-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        # A job in progress keeps its thread until it ends; its record stays "running" and is recovered
        # (re-queued or failed with the reason) at the next start if the process exits first.
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        store = self.runner.store
        while not self._stop.is_set():
            record = store.claim(self.runner.name)  # type: ignore[attr-defined]
            if record is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            self.runner.run(record)
