"""``POST /v1/generate|swap|group|detail``: queue a job (202), or with ``?wait=true`` answer with its images.

Cheap checks come first: API key (401/403), rate and job limits and a full queue (429) before the upload is
read; then 413 too large, 415 neither multipart nor JSON, 422 a bad field, unreadable image or no face (the
message names the field); only then is the job stored and queued. The body is parsed into the task's request
model (:mod:`instantid.service.requests`), whichever of the two media types it came as.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from instantid.apps.tasks import JobRequest, Photo, TaskKind
from instantid.errors import InvalidInputError
from instantid.service.core import JobService, QueueFullError
from instantid.service.http_errors import JOB_RESPONSES, failed_job_response
from instantid.service.jobs import JobRecord
from instantid.service.openapi import request_body
from instantid.service.requests import form_values, job_request
from instantid.service.responses import GenerationOutput, JobCreated
from instantid.service.routes.deps import Principal, limiter_of, principal, service_of, settings_of, where_is

MAX_FILES = 32  # file parts in one multipart body
MAX_FIELDS = 64
router = APIRouter(tags=["generation"])
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": GenerationOutput, "description": "?wait=true: the finished images; without it, the job an earlier "
          "request with the same Idempotency-Key created"},
    202: {"model": JobCreated}, **JOB_RESPONSES}
# Shown by /docs (Markdown: single backticks); the fields themselves are documented by the request models.
SUMMARIES: dict[TaskKind, str] = {
    "generate": """Queue a generation. Multipart: `face` file(s) (one person; several are fused), optional `pose`
        file or `layout` name, `mix` file(s) with one `mix_weight` each, and any setting as a form field. JSON: the
        settings plus base64 `face` / `pose`, `layout`, `mix: [{photo, weight}]`. An `Idempotency-Key` header makes
        a retried request return the job the first one created (the same key with a different request: 422).""",
    "swap": """Queue a face swap: the person of the `face` file(s) (and `mix`) put into the `scene` picture; its
        `target_index`-th face (0 = largest) is repainted, every pixel outside the feathered head mask is kept.
        Settings and swap options as form fields (JSON: base64 `face`, `scene`).""",
    "group": """Queue a picture of several people: `person0`, `person1`, ... file(s), one field per person; an
        optional `pose` group photo places person i at its i-th face from the left (else side by side). JSON:
        `people: [[base64, ...], ...]`, `pose`.""",
    "detail": """Queue face detail on an existing picture: each face of the `picture` (largest first, up to
        `max_faces`) is cropped, re-denoised at the model's resolution as the person of the `face` file(s) (and
        `mix`) and blended back; every pixel outside the feathered face masks is kept. Settings and face-detail
        options as form fields (JSON: base64 `face`, `picture`).""",
}


def _job_route(task: TaskKind) -> None:
    async def endpoint(
        request: Request, who: Principal = Depends(principal),
        wait: bool = Query(False, description="Answer when the job is done, with the images (A1111/cog style)."),
    ) -> Response:
        return await queue_job(request, who, wait, task)

    endpoint.__doc__ = SUMMARIES[task]
    router.post(f"/v1/{task}", status_code=202, responses=_RESPONSES, openapi_extra=request_body(task),
                name=task)(endpoint)


for _task in SUMMARIES:
    _job_route(_task)


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
            retry = limiter_of(request).take(who.name or who.client, who.rate)
            if retry is not None:
                raise QueueFullError(f"rate limit of {who.rate:g} submissions per minute reached", retry)
        service.check_capacity(who.name, who.max_jobs)
    return key


async def queue_job(request: Request, who: Principal, wait: bool, task: TaskKind) -> Response:
    service, settings = service_of(request), settings_of(request)
    key = admit(request, who)
    job = await parse_request(request, task, settings.max_upload_bytes)
    record, created = await run_in_threadpool(service.submit_request, job, owner=who.name, key=key)
    if wait or request.headers.get("prefer", "").lower() == "wait":
        finished = await service.wait(record.id, settings.wait_timeout_s)
        if finished is not None and finished.state == "done":
            return JSONResponse(_output(request, service, finished).model_dump())
        if finished is not None and (failed := failed_job_response(finished)) is not None:
            return failed
        created = True
    url = str(request.url_for("job_status", job_id=record.id))
    record, position = where_is(service, record)
    body = JobCreated(job_id=record.id, status=record.state, status_url=url, position=position)
    return JSONResponse(body.model_dump(), status_code=202 if created else 200, headers={"Location": url})


async def parse_request(request: Request, task: TaskKind, limit: int) -> JobRequest:
    """The body as the task's checked request, from multipart/form-data or application/json."""
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        fields, files = await _form(request, body, limit)
        return job_request(task, form_values(task, fields, files), form=True)
    if content_type.startswith("application/json"):
        return job_request(task, json_object(body))
    raise HTTPException(415, "send multipart/form-data or application/json")


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON request body, which must be an object (one line naming what is wrong otherwise)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError("the JSON body must be an object")
    return data


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (declared or actual length)."""
    too_large = HTTPException(413, f"request body over the {limit}-byte upload limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, body: bytes, limit: int) -> tuple[list[tuple[str, str]], list[tuple[str, Photo]]]:
    """A multipart body's text fields and file parts (file name, bytes), in order."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    fields, files = [], []
    # As a context manager Starlette closes the uploads' temporary files when the request is parsed.
    async with Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=MAX_FIELDS,
                                                   max_part_size=limit) as form:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((key, (value.filename or "", await value.read())))
            else:
                fields.append((key, value))
    return fields, files


def _output(request: Request, service: JobService, record: JobRecord) -> GenerationOutput:
    images, urls = [], []
    for n in range(len(record.outputs)):
        data = service.files.image_path(record.id, n).read_bytes()
        images.append("data:image/png;base64," + base64.b64encode(data).decode())
        urls.append(str(request.url_for("job_image", job_id=record.id, n=n)))
    return GenerationOutput(job_id=record.id, status=record.state, images=images, image_urls=urls,
                            seeds=record.seeds, parameters=(record.metadata or {}).get("settings", {}),
                            info=record.metadata or {})


__all__ = ["SUMMARIES", "parse_request", "queue_job", "read_body", "router"]
