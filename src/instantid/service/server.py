"""HTTP API: submit a generation job, poll or wait for it, fetch its PNGs. Built by :func:`create_app`; loads
nothing at import.

    POST   /v1/generate               multipart (face files, optional pose or layout, mix files, settings fields)
                                      or JSON (base64) -> 202 {job_id}; ?wait=true -> 200 with the images as data URIs
    POST   /v1/swap                   face file(s) + scene file + settings + swap options: same answers
    POST   /v1/group                  person0, person1, ... files + optional pose group photo: same answers
    POST   /v1/detail                 face file(s) + picture file + settings + face-detail options: same answers
    GET    /v1/jobs                   newest first, paged (?offset=&limit=&state=)
    GET    /v1/jobs/{id}              queued (with position) | running (step/total) | done | failed | canceled
    DELETE /v1/jobs/{id}              cancel a queued or running job; delete a finished one and its files
    GET    /v1/jobs/{id}/images/{n}   PNG with its settings inside
    POST   /sdapi/v1/txt2img, img2img A1111 / Forge clients (sd-webui-controlnet's InstantID units), with the
                                      read-only /sdapi/v1 and /controlnet routes they call: see service.a1111
    GET    /v1/models, /health, /ready, /metrics (Prometheus), /docs (offline), /openapi.json; the web UI at /ui,
                                      whose every tab submits its jobs through the same queue and limits
                                      (with API keys: behind a login, jobs owned by the key; see service.ui)

Cheap checks come first: API key (401/403), rate and job limits and a full queue (429) before the upload is
read; then 413 too large, 422 unreadable image, no face or out-of-range setting (the message names the field);
only then is the job stored and queued. Jobs and their images outlive the process (see instantid.service).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from instantid import __version__
from instantid.api.settings import settings_from_record
from instantid.apps.tasks import TaskKind
from instantid.io.models import public_ref
from instantid.service.auth import KeyRing, RateLimiter, load_api_keys
from instantid.service.core import JobService, QueueFullError, ServerSettings
from instantid.service.http_errors import (
    INTERNAL_RESPONSES,
    JOB_RESPONSES,
    READ_RESPONSES,
    STORE_RETRY_S,
    failed_job_response,
    install_error_handlers,
)
from instantid.service.jobs import JobRecord, JobState, check_job_id
from instantid.service.schema import (
    GenerationOutput,
    JobCreated,
    JobList,
    JobStatus,
    job_request,
    json_schema,
    multipart_schema,
    parse_json,
    parse_multipart,
    read_body,
)

if TYPE_CHECKING:
    from instantid.api.generator import InstantID

log = logging.getLogger(__name__)
MAX_OFFSET = 2**31  # /v1/jobs paging: far past any store, and within what SQLite takes as an integer
SUMMARY = "Identity-preserving image generation: submit a job, poll or wait for it, fetch its PNGs."
DESCRIPTION = ("Jobs: generate (one person), swap (a face into a scene), group (several people), detail (redraw "
               "the faces of a picture). Send photos as multipart/form-data files or as base64 in JSON. Bad input "
               "answers 4xx with one `detail` line; an internal error answers 500 with an `error_id` to quote.")
__all__ = ["ServerSettings", "create_app"]


class Principal:
    """Who is calling: an API key's name and limits, or the client address when the server has no keys."""

    def __init__(self, name: str, client: str, rate: float | None, max_jobs: int | None) -> None:
        self.name, self.client, self.rate, self.max_jobs = name, client, rate, max_jobs


def create_app(settings: ServerSettings | None = None, model: InstantID | None = None) -> FastAPI:
    """The FastAPI app. ``model`` is used as is (without ``queue``: else it is loaded at startup; with a
    ``queue`` only its face analyzer is used, to check uploads)."""
    from fastapi_offline import FastAPIOffline

    settings = settings or ServerSettings()
    keys = KeyRing(load_api_keys(settings.api_key_file)) if settings.api_key_file else None
    limiter = RateLimiter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await run_in_threadpool(JobService.start, settings, model)
        app.state.service = service
        ui = getattr(app.state, "ui", None)  # the mounted web UI's results expire with the jobs
        cleaner = asyncio.create_task(_clean_periodically(service, ui.instantid.prune if ui is not None else None))
        try:
            yield
        finally:
            cleaner.cancel()
            await run_in_threadpool(service.stop)

    # Swagger UI and ReDoc from files inside the fastapi-offline wheel: /docs works without a CDN.
    app = FastAPIOffline(title="InstantID", version=__version__, lifespan=lifespan, summary=SUMMARY,
                         description=DESCRIPTION)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key"])

    install_error_handlers(app, with_redis=bool(settings.queue))

    def principal(request: Request) -> Principal:
        client = request.client.host if request.client else "unknown"
        if keys is None:
            return Principal("", client, settings.rate_limit, None)  # job limits are per key
        presented = request.headers.get("x-api-key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            presented = token.strip()
        elif scheme.lower() == "basic":  # A1111 clients' --api-auth: any user name, the key as the password
            presented = basic_password(token)
        if not presented:
            raise HTTPException(401, "send an API key: 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        key = keys.identify(presented)
        if key is None:
            raise HTTPException(403, "this API key is not valid")
        return Principal(key.name, client, key.rate_per_minute or settings.rate_limit,
                         key.max_jobs or settings.max_jobs_per_key)

    def service_of(request: Request) -> JobService:
        return request.app.state.service

    def own_job(request: Request, job_id: str, who: Principal) -> JobRecord:
        record = service_of(request).store.get(check_job_id(job_id))
        if record is None or record.owner != who.name:  # another key's job looks unknown: ids cannot be probed
            raise HTTPException(404, f"no job {job_id} (unknown or expired)")
        return record

    def status_of(request: Request, record: JobRecord) -> JobStatus:
        record, position = where_is(service_of(request), record)
        return JobStatus(
            job_id=record.id, task=record.request.get("task", "generate"), status=record.state,
            position=position, step=record.step, total=record.total, attempts=record.attempts,
            worker=record.worker, error=record.error, error_id=record.error_id,
            created=record.created, started=record.started, finished=record.finished,
            images=[str(request.url_for("job_image", job_id=record.id, n=n)) for n in range(len(record.outputs))],
            seeds=record.seeds, settings=settings_from_record(record.request["settings"]).model_dump(),
            metadata=record.metadata,
        )

    @app.get("/health", tags=["service"], responses=INTERNAL_RESPONSES)
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses={
        **INTERNAL_RESPONSES, 503: {"description": "Starting, or the job store cannot be reached."}})
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the model (or face analyzer) is loaded and the job store answers."""
        service = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            counts = await run_in_threadpool(service.store.counts)
        except Exception as exc:  # the store is down: not ready, say why
            return JSONResponse({"status": "store unavailable", "detail": str(exc)}, status_code=503,
                                headers={"Retry-After": str(STORE_RETRY_S)})
        body: dict[str, Any] = {"status": "ready", "queue": "redis" if settings.queue else "local", "jobs": counts}
        if service.dispatch is not None:  # ready to take jobs even with no worker yet; say how many there are
            body["workers"] = await run_in_threadpool(service.dispatch.workers)
        return JSONResponse(body)

    @app.get("/metrics", tags=["service"], response_class=Response, responses=INTERNAL_RESPONSES)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: queue depth, jobs by state, generation time, face-analysis failures."""
        body, content_type = await run_in_threadpool(service_of(request).metrics.render)
        return Response(body, media_type=content_type)

    @app.get("/v1/models", tags=["generation"], responses=READ_RESPONSES)
    async def models(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        from instantid.api.settings import SCHEDULERS
        from instantid.api.styles import STYLES
        from instantid.apps.layouts import layout_names

        service = service_of(request)
        info: dict[str, Any] = {"styles": list(STYLES), "schedulers": list(SCHEDULERS),
                                "layouts": list(layout_names()),
                                "face_space": service.analyzer.space if service.analyzer else None}
        if service.model is not None and not settings.queue:
            refs = {kind: public_ref(ref) for kind, ref in asdict(service.model.refs).items()}
            info.update(models=refs, embedding_space=service.model.embedding_space, demo=service.model.demo,
                        lora=public_ref(service.model.lora) if service.model.lora else None)
        return info

    def job_route(task: TaskKind, summary: str) -> Any:
        """Register POST /v1/<task>: the same limits, idempotency, queue and ``?wait=true`` for every task.
        ``summary`` is shown by /docs (Markdown: single backticks)."""
        responses: dict[int | str, dict[str, Any]] = {
            200: {"model": GenerationOutput, "description": "?wait=true: the finished images; without it, the job "
                  "an earlier request with the same Idempotency-Key created"},
            202: {"model": JobCreated}, **JOB_RESPONSES}
        body = {"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": multipart_schema(task)},
            "application/json": {"schema": json_schema(task)}}}}

        async def endpoint(
            request: Request, who: Principal = Depends(principal),
            wait: bool = Query(False, description="Answer when the job is done, with the images (A1111/cog style)."),
        ) -> Response:
            return await queue_job(request, who, wait, task)

        endpoint.__doc__ = summary
        app.post(f"/v1/{task}", status_code=202, tags=["generation"], responses=responses, openapi_extra=body,
                 name=task)(endpoint)

    job_route("generate", """Queue a generation. Multipart: `face` file(s) (one person; several are fused), optional
        `pose` file or `layout` name, `mix` file(s) with one `mix_weight` each, and any setting as a form
        field. JSON: the settings plus base64 `face` / `pose`, `layout`, `mix: [{photo, weight}]`. An
        `Idempotency-Key` header makes a retried request return the job the first one created (the same key with
        a different request: 422).""")
    job_route("swap", """Queue a face swap: the person of the `face` file(s) (and `mix`) put into the `scene`
        picture; its `target_index`-th face (0 = largest) is repainted, every pixel outside the feathered head
        mask is kept. Settings and swap options as form fields (JSON: base64 `face`, `scene`).""")
    job_route("group", """Queue a picture of several people: `person0`, `person1`, ... file(s), one field per
        person; an optional `pose` group photo places person i at its i-th face from the left (else side by
        side). JSON: `people: [[base64, ...], ...]`, `pose`.""")
    job_route("detail", """Queue face detail on an existing picture: each face of the `picture` (largest first, up
        to `max_faces`) is cropped, re-denoised at the model's resolution as the person of the `face` file(s)
        (and `mix`) and blended back; every pixel outside the feathered face masks is kept. Settings and
        face-detail options as form fields (JSON: base64 `face`, `picture`).""")

    def admit(request: Request, who: Principal) -> str | None:
        """The cheap checks of a submission, before its upload is read (rate limit, full queue, the key's jobs);
        returns its Idempotency-Key. Every route that queues jobs (also the A1111 ones) comes through here."""
        service = service_of(request)
        key = request.headers.get("idempotency-key") or None
        if key is not None and len(key) > 200:
            raise HTTPException(422, "Idempotency-Key: at most 200 characters")
        retried = key is not None and service.store.by_key(who.name, key) is not None
        if not retried:  # a retry is not a new submission: no limits, and its body is compared, not queued
            if who.rate is not None:
                retry = limiter.take(who.name or who.client, who.rate)
                if retry is not None:
                    raise QueueFullError(f"rate limit of {who.rate:g} submissions per minute reached", retry)
            service.check_capacity(who.name, who.max_jobs)
        return key

    async def queue_job(request: Request, who: Principal, wait: bool, task: TaskKind) -> Response:
        service = service_of(request)
        key = admit(request, who)
        record, created = await _submit(request, service, who, key, task)
        wait = wait or request.headers.get("prefer", "").lower() == "wait"
        if wait:
            finished = await service.wait(record.id, settings.wait_timeout_s)
            if finished is not None and finished.state == "done":
                return JSONResponse(_output(request, service, finished).model_dump())
            if finished is not None and (failed := failed_job_response(finished)) is not None:
                return failed
        url = str(request.url_for("job_status", job_id=record.id))
        record, position = where_is(service, record)
        body = JobCreated(job_id=record.id, status=record.state, status_url=url, position=position)
        return JSONResponse(body.model_dump(), status_code=202 if created or wait else 200,
                            headers={"Location": url})

    async def _submit(request: Request, service: JobService, who: Principal, key: str | None,
                      task: TaskKind) -> tuple[JobRecord, bool]:
        body = await read_body(request, settings.max_upload_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            parsed = await parse_multipart(request, body, settings.max_upload_bytes)
        elif content_type.startswith("application/json"):
            parsed = parse_json(body)
        else:
            raise HTTPException(415, "send multipart/form-data or application/json")
        job = job_request(task, parsed)
        return await run_in_threadpool(service.submit_request, job, owner=who.name, key=key)

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=READ_RESPONSES)
    async def list_jobs(
        request: Request, who: Principal = Depends(principal), offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(20, ge=1, le=100), state: JobState | None = Query(None),
    ) -> JobList:
        """Jobs of this API key (every job without keys), newest first."""
        owner = who.name if keys is not None else None
        records, total = service_of(request).store.list(offset, limit, owner=owner, state=state)
        following = None
        if offset + len(records) < total:
            following = str(request.url.include_query_params(offset=offset + limit, limit=limit))
        return JobList(jobs=[status_of(request, r) for r in records], total=total, offset=offset, limit=limit,
                       next=following)

    @app.get("/v1/jobs/{job_id}", response_model=JobStatus, tags=["jobs"], responses=READ_RESPONSES)
    async def job_status(request: Request, job_id: str, who: Principal = Depends(principal)) -> JobStatus:
        return status_of(request, own_job(request, job_id, who))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], responses=READ_RESPONSES)
    async def cancel_job(request: Request, job_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        """Cancel a queued job (at once) or a running one (within a step); a finished job is deleted with its
        images."""
        record = own_job(request, job_id, who)
        service = service_of(request)
        if record.state in ("queued", "running"):
            updated = service.cancel(job_id) or service.store.get(job_id) or record
            status = "canceling" if updated.state == "running" else updated.state
            return {"job_id": job_id, "status": status}
        await run_in_threadpool(service.delete, job_id)
        return {"job_id": job_id, "status": "deleted"}

    @app.get("/v1/jobs/{job_id}/images/{n}", response_class=Response, tags=["jobs"],
             responses={200: {"content": {"image/png": {}}}, **READ_RESPONSES,
                        409: {"description": "The job is not done (yet)."}})
    async def job_image(request: Request, job_id: str, n: int, who: Principal = Depends(principal)) -> Response:
        record = own_job(request, job_id, who)
        if record.state != "done":
            raise HTTPException(409, f"job {job_id} is {record.state}, not done")
        if not 0 <= n < len(record.outputs):
            raise HTTPException(404, f"job {job_id} has images 0..{len(record.outputs) - 1}")
        path = service_of(request).files.image_path(job_id, n)
        data = await run_in_threadpool(path.read_bytes)
        headers = {"Content-Disposition": f'inline; filename="instantid-{job_id[:8]}-{n}.png"'}
        return Response(data, media_type="image/png", headers=headers)

    from instantid.service.a1111 import a1111_router

    app.include_router(a1111_router(settings, principal, admit))
    if settings.mount_ui:
        from instantid.service.ui import mount_ui

        mount_ui(app, settings, keys, limiter)
    return app


def basic_password(token: str) -> str:
    """The password of an HTTP Basic credential ("" when it is malformed: answered as no key)."""
    try:
        return base64.b64decode(token.strip(), validate=True).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


def where_is(service: JobService, record: JobRecord) -> tuple[JobRecord, int | None]:
    """The job's current record and its queue position, consistent with each other: a worker may claim the job
    between two reads, so the position is read first and a job without one is read again (never "queued" with
    no position)."""
    current = record
    for _ in range(5):
        position = service.store.position(record.id)
        if position is not None:
            return replace(current, state="queued"), position
        current = service.store.get(record.id) or current
        if current.state != "queued":
            return current, None
    return current, 0  # re-queued as often as read (lost workers): it is at the front


def _output(request: Request, service: JobService, record: JobRecord) -> GenerationOutput:
    images, urls = [], []
    for n in range(len(record.outputs)):
        data = service.files.image_path(record.id, n).read_bytes()
        images.append("data:image/png;base64," + base64.b64encode(data).decode())
        urls.append(str(request.url_for("job_image", job_id=record.id, n=n)))
    return GenerationOutput(job_id=record.id, status=record.state, images=images, image_urls=urls,
                            seeds=record.seeds, parameters=(record.metadata or {}).get("settings", {}),
                            info=record.metadata or {})


async def _clean_periodically(service: JobService, prune_ui: Callable[[], int] | None = None) -> None:
    interval = min(3600.0, max(1.0, service.settings.keep_hours * 3600 / 4))
    while True:
        try:
            removed = await run_in_threadpool(service.cleanup)
            if removed:
                log.info("removed %d expired jobs", removed)
            pruned = await run_in_threadpool(prune_ui) if prune_ui is not None else 0
            if pruned:
                log.info("removed %d expired web UI result files", pruned)
        except Exception as exc:  # a store hiccup must not stop the cleaning for good
            log.warning("job cleanup failed: %s", exc)
        await asyncio.sleep(interval)
