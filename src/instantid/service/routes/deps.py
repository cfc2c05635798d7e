"""What every route asks of a request: who is calling (:func:`principal`: API key, limits) and the job service.
``create_app`` puts the server's settings, key ring and rate limiter on ``app.state`` for these."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

from fastapi import HTTPException, Request

from instantid.service.auth import KeyRing, RateLimiter
from instantid.service.core import JobService, ServerSettings
from instantid.service.jobs import JobRecord, check_job_id


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's name and limits, or the client address when the server has no keys."""

    name: str
    client: str
    rate: float | None
    max_jobs: int | None


def settings_of(request: Request) -> ServerSettings:
    return request.app.state.settings


def keys_of(request: Request) -> KeyRing | None:
    return request.app.state.keys


def limiter_of(request: Request) -> RateLimiter:
    return request.app.state.limiter


def service_of(request: Request) -> JobService:
    return request.app.state.service


def principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` or ``X-API-Key`` (401 without one, 403 for a wrong one)."""
    settings, keys = settings_of(request), keys_of(request)
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


def own_job(request: Request, job_id: str, who: Principal) -> JobRecord:
    """The caller's job ``job_id``; another key's job looks unknown (404), so ids cannot be probed."""
    record = service_of(request).store.get(check_job_id(job_id))
    if record is None or record.owner != who.name:
        raise HTTPException(404, f"no job {job_id} (unknown or expired)")
    return record


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


__all__ = ["Principal", "own_job", "principal", "service_of", "settings_of", "where_is"]


def basic_password(token: str) -> str:
    """The password of an HTTP Basic credential ("" when it is malformed: answered as no key)."""
    try:
        return base64.b64decode(token.strip(), validate=True).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""
