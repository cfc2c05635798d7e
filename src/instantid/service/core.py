"""The job service behind the HTTP API (and the web UI mounted on it): check, store, queue, cancel, clean up.

Two setups, one interface. Without ``queue``: records in SQLite under ``out_dir``, one worker thread in this
process on the model this process loaded. With ``queue="redis://..."``: records in Redis, jobs through RQ to any
number of ``instantid worker`` processes; this process loads only a face analyzer (``out_dir`` must be a path
every worker sees). Either way a job's photos are analysed once, at submit (an HTTP job here, a web UI job on
upload), and the analysed job (:class:`~instantid.apps.tasks.Prepared`: identities, the scene's face, where
a group photo's people stand) is what is kept in the job folder (:mod:`instantid.service.stored`) and run: no
worker, local, remote or after a restart, analyses a photo again (this process's worker takes it from memory).
Jobs are generations, face swaps, group pictures or face detail on a picture (:mod:`instantid.apps.tasks`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instantid.api.face_side import FaceSide
from instantid.api.settings import MAX_SEED, GenerationSettings, settings_from_record
from instantid.apps.tasks import JobRequest, Prepared, prepare
from instantid.errors import ImageReadError, InstantIDError, InvalidInputError, NoFaceError
from instantid.internal_errors import MESSAGE
from instantid.service.jobs import FINISHED, JobFiles, JobRecord, JobStore, SQLiteJobStore, new_job_id
from instantid.service.metrics import ServiceMetrics
from instantid.service.settings import ServerSettings

if TYPE_CHECKING:
    from instantid.api.generator import GenerationResult, InstantID
    from instantid.faces import FaceAnalyzer

log = logging.getLogger(__name__)


class QueueFullError(InstantIDError):
    """The queue (or this key's share of it) is full: HTTP 429."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalJobError(InstantIDError):
    """The job failed on a bug, not on its input: the message names the id its traceback is logged under."""


def _same_request(earlier: JobRecord, fingerprint: str, key: str) -> JobRecord:
    """The job an Idempotency-Key made, if this request is the same one again (a retry); a different request
    under a used key is refused, as payment APIs do, rather than answered with a job it did not ask for."""
    recorded = earlier.request.get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise InvalidInputError(f"Idempotency-Key {key[:40]!r} was already used for a different request; use a "
                                "new key for a new request")
    return earlier


class JobService:
    """Everything the surfaces do with jobs; build with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, settings: ServerSettings, store: JobStore, *, model: InstantID | None = None,
                 analyzer: FaceAnalyzer | None = None, dispatch: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.files = JobFiles(settings.out_dir)
        self.metrics = ServiceMetrics(store)
        self.model = model
        self.analyzer = analyzer or (model.analyzer if model is not None else None)
        # Photos are checked at submit by the model's face side, or, when workers run elsewhere, by a face side
        # on the bare analyzer (shared with the web UI: one analysis at a time, as a loaded model does).
        self.faces: FaceSide | None = (model.faces if model is not None
                                      else FaceSide(self.analyzer) if self.analyzer is not None else None)
        self.dispatch = dispatch  # RQDispatch with a queue, else None (the local worker)
        self.runner: Any = None
        self.worker: Any = None

    @classmethod
    def start(cls, settings: ServerSettings, model: InstantID | None = None) -> JobService:
        """Open the store, recover jobs a previous process left running, start the in-process worker."""
        if settings.queue:
            from instantid.service.redis_store import RedisJobStore, connect
            from instantid.service.rq_worker import RQDispatch

            connection = connect(settings.queue)
            dispatch = RQDispatch(connection, max_attempts=settings.max_attempts,
                                  job_timeout_s=settings.job_timeout_s)
            analyzer = None if model is not None else settings.face_analyzer()  # the workers' face model
            return cls(settings, RedisJobStore(connection), model=model, analyzer=analyzer, dispatch=dispatch)
        from instantid.api import loader
        from instantid.service.runner import JobRunner, LocalWorker

        store = SQLiteJobStore(Path(settings.out_dir) / "jobs.sqlite3")
        service = cls(settings, store, model=model or loader.load_model(settings))
        for job_id in store.running():
            state = store.lost(job_id, "interrupted by a server restart", settings.max_attempts)
            log.warning("job %s was running when the server stopped: now %s", job_id, state)
        service.runner = JobRunner(service.model, store, service.files, service.metrics)
        service.worker = LocalWorker(service.runner)
        service.worker.start()
        return service

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    # ---- submit --------------------------------------------------------------------------------
    def check_capacity(self, owner: str, max_jobs: int | None) -> None:
        """Cheap checks first: a full queue is refused before the upload is read or a face analysed."""
        queued = self.store.counts()["queued"]
        if queued >= self.settings.max_queued_jobs:
            raise QueueFullError(f"the queue is full ({queued} jobs waiting); retry later")
        if max_jobs is not None and self.store.active(owner) >= max_jobs:
            raise QueueFullError(f"this API key already has {max_jobs} jobs queued or running; wait for one "
                                 "to finish", retry_after=10.0)

    def submit_request(self, request: JobRequest, *, owner: str = "", key: str | None = None
                       ) -> tuple[JobRecord, bool]:
        """Analyse the photos once, keep the analysed job, queue it; ``(record, created)``.

        Blocking (face analysis): call it from a worker thread in async code.
        """
        fingerprint = request.fingerprint()
        if key is not None:
            earlier = self.store.by_key(owner, key)
            if earlier is not None:
                return _same_request(earlier, fingerprint, key), False
        prepared = self._prepare(request)
        record, created = self._queue(prepared, request.settings, owner=owner, key=key, fingerprint=fingerprint)
        return (record, True) if created else (_same_request(record, fingerprint, key or ""), False)

    def run_prepared(self, prepared: Prepared, settings: GenerationSettings, progress: Any = None, *,
                     owner: str = "ui", max_jobs: int | None = None) -> GenerationResult:
        """Run a job whose photos the caller has analysed (any task: the web UI's ``submit`` hook) through the
        queue and limits, waiting for it (:meth:`submit_prepared`, then :meth:`result`). Blocking."""
        record = self.submit_prepared(prepared, settings, owner=owner, max_jobs=max_jobs)
        return self.result(record.id, progress)

    def submit_prepared(self, prepared: Prepared, settings: GenerationSettings, *, owner: str = "ui",
                        max_jobs: int | None = None) -> JobRecord:
        """Queue an analysed job; it is stored, run and written like an HTTP job of its task (job folder,
        metadata). The analysed job is saved in the job folder (:mod:`instantid.service.stored`), so a worker on
        another machine runs it, and a job queued or running when the server stopped is run again after a
        restart. ``owner`` / ``max_jobs``: the API key it counts against (QueueFullError when over)."""
        self.check_capacity(owner, max_jobs)
        return self._queue(prepared, settings, owner=owner)[0]

    def _queue(self, prepared: Prepared, settings: GenerationSettings, *, owner: str, key: str | None = None,
               fingerprint: str | None = None) -> tuple[JobRecord, bool]:
        """Store an analysed job and queue it; ``(record, created)``: not created when another request with the
        same Idempotency-Key raced in first (that job's record, these files dropped)."""
        from instantid.service.stored import save_prepared

        if settings.seed is None:  # fixed now, so a re-run after a lost worker makes the same images
            settings = settings.updated(seed=random.randint(0, MAX_SEED))
        request = {**prepared.names(), "settings": settings.record(), "fingerprint": fingerprint}
        job_id, created = new_job_id(), False
        try:
            # Before the record: a worker may claim it at once.
            save_prepared(self.files, job_id, prepared, controls=bool(settings.control_strengths()))
            if self.dispatch is None:  # this process's worker takes it from memory, not from the folder
                self.runner.prepared_jobs[job_id] = prepared
            record, created = self.store.add(JobRecord(id=job_id, request=request, owner=owner, idempotency_key=key))
        finally:
            if not created:  # nothing half-written: no folder without its record
                self.files.delete(job_id)
                if self.dispatch is None:
                    self.runner.prepared_jobs.pop(job_id, None)
        if not created:
            return record, False
        if self.dispatch is not None:
            self.dispatch.submit(job_id)
        else:
            self.worker.wake()
        return record, True

    def result(self, job_id: str, progress: Any = None, poll_s: float = 0.1) -> GenerationResult:
        """Wait for a job (reporting its steps to ``progress(step, total)``) and return its images; a failed or
        canceled job is one InvalidInputError line. Blocking."""
        from PIL import Image

        from instantid.api.generator import GenerationResult

        shown = (-1, -1)
        while (current := self.store.get(job_id)) is not None and current.state not in FINISHED:
            if progress is not None and (current.step, current.total) != shown and current.total:
                shown = (current.step, current.total)
                progress(*shown)
            time.sleep(poll_s)
        if current is not None and current.error_id:
            raise InternalJobError(f"{MESSAGE} {current.error_id}; the server log has the traceback")
        if current is None or current.state != "done":
            raise InvalidInputError(f"generation {current.state if current else 'lost'}: "
                                    f"{current.error if current else 'the job expired'}")
        images = []
        for n in range(len(current.outputs)):
            with Image.open(self.files.image_path(job_id, n)) as png:
                images.append(png.convert("RGB"))
        metadata = current.metadata or {}
        used = settings_from_record(metadata.get("settings", current.request["settings"]))
        return GenerationResult(images=images, seeds=current.seeds, settings=used, metadata=metadata)

    def _prepare(self, request: JobRequest) -> Prepared:
        """The job's photos analysed, once: by the model's face side, or, when workers run elsewhere, by a face
        side on the bare analyzer (the same face model as theirs)."""
        try:
            return prepare(self.faces, request)
        except (NoFaceError, ImageReadError):
            self.metrics.face_failures.labels(stage="submit").inc()
            raise

    # ---- after submit --------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord | None:
        record = self.store.cancel(job_id)
        if record is not None and record.state == "canceled":  # it never started: drop what waited for it
            if self.dispatch is not None:
                self.dispatch.cancel(job_id)
            else:
                self.runner.prepared_jobs.pop(job_id, None)
        return record

    def delete(self, job_id: str) -> None:
        self.files.delete(job_id)
        self.store.delete(job_id)

    def cleanup(self, now: float | None = None) -> int:
        """Delete finished jobs older than ``keep_hours`` with their folders; how many."""
        expired = self.store.finished_before((now or time.time()) - self.settings.keep_hours * 3600)
        for job_id in expired:
            self.delete(job_id)
        return len(expired)

    async def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """Poll until the job is finished or ``timeout`` passes; the last record seen."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            record = self.store.get(job_id)
            if record is None or record.state in FINISHED or time.monotonic() >= deadline:
                return record
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
