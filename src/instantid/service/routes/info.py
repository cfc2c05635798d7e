"""``/health``, ``/ready``, ``/metrics`` and ``/v1/models``: what the service is and whether it takes jobs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from instantid.io.models import public_ref
from instantid.service.http_errors import INTERNAL_RESPONSES, READ_RESPONSES, STORE_RETRY_S
from instantid.service.routes.deps import Principal, principal, service_of, settings_of

router = APIRouter()


@router.get("/health", tags=["service"], responses=INTERNAL_RESPONSES)
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", tags=["service"], responses={
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
    queue = "redis" if settings_of(request).queue else "local"
    body: dict[str, Any] = {"status": "ready", "queue": queue, "jobs": counts}
    if service.dispatch is not None:  # ready to take jobs even with no worker yet; say how many there are
        body["workers"] = await run_in_threadpool(service.dispatch.workers)
    return JSONResponse(body)


@router.get("/metrics", tags=["service"], response_class=Response, responses=INTERNAL_RESPONSES)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: queue depth, jobs by state, generation time, face-analysis failures."""
    body, content_type = await run_in_threadpool(service_of(request).metrics.render)
    return Response(body, media_type=content_type)


@router.get("/v1/models", tags=["generation"], responses=READ_RESPONSES)
async def models(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    from instantid.api.settings import SCHEDULERS
    from instantid.api.styles import STYLES
    from instantid.apps.layouts import layout_names

    service = service_of(request)
    info: dict[str, Any] = {"styles": list(STYLES), "schedulers": list(SCHEDULERS), "layouts": list(layout_names()),
                            "face_space": service.analyzer.space if service.analyzer else None}
    if service.model is not None and not settings_of(request).queue:
        refs = {kind: public_ref(ref) for kind, ref in asdict(service.model.refs).items()}
        info.update(models=refs, embedding_space=service.model.embedding_space, demo=service.model.demo,
                    lora=public_ref(service.model.lora) if service.model.lora else None)
    return info


__all__ = ["router"]
