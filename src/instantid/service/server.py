"""HTTP API: submit a generation job, poll or wait for it, fetch its PNGs. Built by :func:`create_app`; loads
nothing at import. The routes live in :mod:`instantid.service.routes`, one router per concern:

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
                                      /sdapi/v1 and /controlnet routes they call: see service.a1111 and
                                      service.a1111_control (options, progress, interrupt, skip, scripts)
    GET    /v1/models, /health, /ready, /metrics (Prometheus), /docs (offline), /openapi.json; the web UI at /ui,
                                      whose every tab submits its jobs through the same queue and limits
                                      (with API keys: behind a login, jobs owned by the key; see service.ui)

Every request body is parsed by the model that documents it (:mod:`instantid.service.requests`). Jobs and their
images outlive the process (see instantid.service).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from instantid import __version__
from instantid.io.models import public_ref
from instantid.service import a1111, a1111_control
from instantid.service.a1111_options import A1111Options
from instantid.service.auth import KeyRing, RateLimiter, load_api_keys
from instantid.service.core import JobService, ServerSettings
from instantid.service.http_errors import install_error_handlers
from instantid.service.routes import info, jobs, submit
from instantid.service.routes.deps import where_is

if TYPE_CHECKING:
    from instantid.api.generator import InstantID

log = logging.getLogger(__name__)
SUMMARY = "Identity-preserving image generation: submit a job, poll or wait for it, fetch its PNGs."
DESCRIPTION = ("Jobs: generate (one person), swap (a face into a scene), group (several people), detail (redraw "
               "the faces of a picture). Send photos as multipart/form-data files or as base64 in JSON. Bad input "
               "answers 4xx with one `detail` line; an internal error answers 500 with an `error_id` to quote.")
__all__ = ["ServerSettings", "create_app", "public_ref", "where_is"]


def create_app(settings: ServerSettings | None = None, model: InstantID | None = None) -> FastAPI:
    """The FastAPI app. ``model`` is used as is (without ``queue``: else it is loaded at startup; with a
    ``queue`` only its face analyzer is used, to check uploads)."""
    from fastapi_offline import FastAPIOffline

    settings = settings or ServerSettings()

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
    # What the routes read of the server (routes.deps): its options, API keys and the rate limiter they share.
    app.state.settings = settings
    app.state.keys = KeyRing(load_api_keys(settings.api_key_file)) if settings.api_key_file else None
    app.state.limiter = RateLimiter()
    app.state.a1111_options = A1111Options()  # each key's /sdapi/v1/options, in this process's memory
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key"])
    install_error_handlers(app, with_redis=bool(settings.queue))

    app.include_router(info.router)
    app.include_router(submit.router)
    app.include_router(jobs.router)
    app.include_router(a1111.router)
    app.include_router(a1111_control.router)
    if settings.mount_ui:
        from instantid.service.ui import mount_ui

        mount_ui(app, settings, app.state.keys, app.state.limiter)
    return app


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
