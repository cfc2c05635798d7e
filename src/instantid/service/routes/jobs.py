"""``/v1/jobs``: a key's jobs, newest first; one job's status; cancel or delete it; its PNGs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from instantid.api.settings import settings_from_record
from instantid.service.http_errors import READ_RESPONSES
from instantid.service.jobs import JobRecord, JobState
from instantid.service.responses import JobList, JobStatus
from instantid.service.routes.deps import Principal, keys_of, own_job, principal, service_of, where_is

MAX_OFFSET = 2**31  # paging: far past any store, and within what SQLite takes as an integer
router = APIRouter(tags=["jobs"])


def status_of(request: Request, record: JobRecord) -> JobStatus:
    record, position = where_is(service_of(request), record)
    return JobStatus(
        job_id=record.id, task=record.request["task"], status=record.state, position=position, step=record.step,
        total=record.total, attempts=record.attempts, worker=record.worker, error=record.error,
        error_id=record.error_id, created=record.created, started=record.started, finished=record.finished,
        images=[str(request.url_for("job_image", job_id=record.id, n=n)) for n in range(len(record.outputs))],
        seeds=record.seeds, settings=settings_from_record(record.request["settings"]).model_dump(),
        metadata=record.metadata,
    )


@router.get("/v1/jobs", response_model=JobList, responses=READ_RESPONSES)
async def list_jobs(
    request: Request, who: Principal = Depends(principal), offset: int = Query(0, ge=0, le=MAX_OFFSET),
    limit: int = Query(20, ge=1, le=100), state: JobState | None = Query(None),
) -> JobList:
    """Jobs of this API key (every job without keys), newest first."""
    owner = who.name if keys_of(request) is not None else None
    records, total = service_of(request).store.list(offset, limit, owner=owner, state=state)
    following = None
    if offset + len(records) < total:
        following = str(request.url.include_query_params(offset=offset + limit, limit=limit))
    return JobList(jobs=[status_of(request, r) for r in records], total=total, offset=offset, limit=limit,
                   next=following)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=READ_RESPONSES)
async def job_status(request: Request, job_id: str, who: Principal = Depends(principal)) -> JobStatus:
    return status_of(request, own_job(request, job_id, who))


@router.delete("/v1/jobs/{job_id}", responses=READ_RESPONSES)
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


@router.get("/v1/jobs/{job_id}/images/{n}", response_class=Response,
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


__all__ = ["router", "status_of"]
