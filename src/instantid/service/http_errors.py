"""How the HTTP API answers when something goes wrong, in one place.

* Bad input (:mod:`instantid.errors`, request validation): 4xx with one ``detail`` line (422; 404 unknown job;
  429 with ``Retry-After`` for a full queue or rate limit).
* The job store (Redis) cannot be reached: 503 with ``Retry-After``, as ``/ready`` says.
* Anything else is a bug, never blamed on the user: 500 ``{"detail": "internal error", "error_id": ...}`` and
  the traceback in the server log under that id (:mod:`instantid.internal_errors`).

:data:`JOB_RESPONSES` and :data:`READ_RESPONSES` declare these answers in OpenAPI, so a client (and the
schemathesis run in the tests) knows every status a route can give.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instantid.errors import InstantIDError
from instantid.internal_errors import MESSAGE, report
from instantid.service.jobs import JobRecord, UnknownJobError

log = logging.getLogger("instantid.service.server")
STORE_RETRY_S = 5  # Retry-After of a 503 while the job store is down

_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
_INTERNAL = {"type": "object", "properties": {"detail": {"type": "string", "enum": [MESSAGE]},
                                              "error_id": {"type": "string"}}, "required": ["detail", "error_id"]}


def _answer(description: str, schema: dict[str, Any] = _DETAIL) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


INTERNAL_RESPONSES: dict[int | str, dict[str, Any]] = {
    500: _answer("An internal error (a bug, not the request): quote error_id; the server log has it.", _INTERNAL),
    503: _answer("The job store cannot be reached; retry after Retry-After seconds."),
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _answer("No API key sent (servers with API keys)."),
    403: _answer("The API key is not valid."),
    404: _answer("No such job (unknown, expired, or another key's)."),
    422: _answer("A malformed parameter (the message names it)."),
    **INTERNAL_RESPONSES,
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in READ_RESPONSES.items() if k != 404},
    400: {"description": "The client went away during the upload (nobody reads this)."},
    409: _answer("?wait=true: the job was canceled."),
    413: _answer("The request body is over the upload limit."),
    415: _answer("Neither multipart/form-data nor application/json."),
    422: _answer("Bad input: an unreadable photo, no face, an out-of-range setting, an Idempotency-Key used with "
                 "another body, or (?wait=true) the job failed on its input."),
    429: _answer("The queue, this key's job limit or the rate limit is full; retry after Retry-After seconds."),
}


def internal_error_response(error_id: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": MESSAGE, "error_id": error_id, **extra}, status_code=500)


def failed_job_response(record: JobRecord) -> JSONResponse | None:
    """The answer to a request that waited for its job, when the job did not end done: 500 with its error_id
    (a bug), 422 with its error (failed on its input) or 409 (canceled); None while it is still running."""
    if record.error_id:
        return internal_error_response(record.error_id, job_id=record.id, status=record.state)
    if record.state in ("failed", "canceled"):
        return JSONResponse({"detail": record.error, "job_id": record.id, "status": record.state},
                            status_code=422 if record.state == "failed" else 409)
    return None


class InternalErrorMiddleware:
    """Any exception no handler took becomes the 500 answer above (instead of Starlette's plain-text one),
    logged with its traceback under the id the answer names."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            incident = report(exc, log, f"{scope.get('method', '')} {scope.get('path', '')}")
            if started:  # half an answer is out: nothing sensible can follow it
                raise
            await internal_error_response(incident.error_id)(scope, receive, send)


def install_error_handlers(app: FastAPI, with_redis: bool) -> None:
    """The answers above on ``app``; ``with_redis``: a Redis connection error is the 503."""

    @app.exception_handler(InstantIDError)
    async def instantid_error(request: Request, exc: InstantIDError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)  # QueueFullError
        if retry_after is not None:
            return JSONResponse({"detail": str(exc)}, 429, headers={"Retry-After": str(int(retry_after) + 1)})
        return JSONResponse({"detail": str(exc)}, status_code=404 if isinstance(exc, UnknownJobError) else 422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("query", "path", "body")) or "request"
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client %s disconnected during the upload", request.client.host if request.client else "?")
        return Response(status_code=400)  # nobody reads it

    if with_redis:
        import redis

        async def store_down(request: Request, exc: Exception) -> JSONResponse:
            log.warning("job store unavailable during %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": f"the job store is unavailable ({type(exc).__name__}); retry later"},
                                status_code=503, headers={"Retry-After": str(STORE_RETRY_S)})

        for error in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            app.add_exception_handler(error, store_down)
    app.add_middleware(InternalErrorMiddleware)


__all__ = ["INTERNAL_RESPONSES", "JOB_RESPONSES", "READ_RESPONSES", "InternalErrorMiddleware",
           "failed_job_response", "install_error_handlers", "internal_error_response"]
