"""The job store in Redis (``--queue redis://...``): the same records as SQLite, shared by servers and workers.

Keys (prefix ``instantid:``): ``job:<id>`` a hash (one JSON value per record field, so a progress update and a
cancel request never overwrite each other), ``jobs`` and ``owner:<name>`` (every job, by creation time),
``state:<state>`` (by creation time: queue position and counts), ``finished`` (by finish time: retention),
``key:<owner>:<idempotency key>`` (the job a client key made). State changes are WATCH/MULTI transactions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from instantid.service.jobs import COLUMNS, FINISHED, STATES, JobRecord, JobStore

PREFIX = "instantid:"


def _encode(record: JobRecord) -> dict[str, str]:
    return {name: json.dumps(getattr(record, name)) for name in COLUMNS}


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
    values = {k.decode(): json.loads(v) for k, v in raw.items()}
    return JobRecord(**{name: values[name] for name in COLUMNS if name in values})


class RedisJobStore(JobStore):
    """Job records in Redis; ``connection`` is a ``redis.Redis`` (see :func:`connect`)."""

    def __init__(self, connection: Any) -> None:
        self.redis = connection

    @staticmethod
    def _job(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    def by_key(self, owner: str, key: str) -> JobRecord | None:
        job_id = self.redis.get(f"{PREFIX}key:{owner}:{key}")
        return self.get(job_id.decode()) if job_id else None

    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        if record.idempotency_key is not None:
            claim = f"{PREFIX}key:{record.owner}:{record.idempotency_key}"
            if not self.redis.set(claim, record.id, nx=True):
                earlier = self.by_key(record.owner, record.idempotency_key)
                if earlier is not None:
                    return earlier, False
                self.redis.set(claim, record.id)  # the earlier job expired: the key is free again
        with self.redis.pipeline() as pipe:
            pipe.hset(self._job(record.id), mapping=_encode(record))
            pipe.zadd(f"{PREFIX}jobs", {record.id: record.created})
            pipe.zadd(f"{PREFIX}owner:{record.owner}", {record.id: record.created})
            pipe.zadd(f"{PREFIX}state:{record.state}", {record.id: record.created})
            pipe.execute()
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self._job(job_id))
        return _decode(raw) if raw else None

    def update(self, job_id: str, **changes: Any) -> None:
        self._transition(job_id, lambda record: changes)

    def _transition(self, job_id: str, decide: Any) -> JobRecord | None:
        """Apply ``decide(record) -> changes | None`` atomically; the updated record, or None if nothing."""
        key = self._job(job_id)
        result: list[JobRecord | None] = [None]

        def apply(pipe: Any) -> None:
            raw = pipe.hgetall(key)
            if not raw:
                return
            record = _decode(raw)
            changes = decide(record)
            if changes is None:
                return
            pipe.multi()
            pipe.hset(key, mapping={name: json.dumps(value) for name, value in changes.items()})
            new_state = changes.get("state", record.state)
            if new_state != record.state:
                pipe.zrem(f"{PREFIX}state:{record.state}", job_id)
                pipe.zadd(f"{PREFIX}state:{new_state}", {job_id: record.created})
                if new_state in FINISHED:
                    pipe.zadd(f"{PREFIX}finished", {job_id: changes.get("finished") or time.time()})
            for name, value in changes.items():
                setattr(record, name, value)
            result[0] = record

        self.redis.transaction(apply, key)
        return result[0]

    def start(self, job_id: str, worker: str) -> JobRecord | None:
        def decide(record: JobRecord) -> dict[str, Any] | None:
            if record.state != "queued" or record.cancel_requested:
                return None
            return {"state": "running", "attempts": record.attempts + 1, "started": time.time(),
                    "worker": worker, "step": 0}

        return self._transition(job_id, decide)

    def cancel(self, job_id: str) -> JobRecord | None:
        def decide(record: JobRecord) -> dict[str, Any] | None:
            if record.state == "queued":
                return {"cancel_requested": True, "state": "canceled", "finished": time.time(),
                        "error": "canceled before it started"}
            return {"cancel_requested": True} if record.state == "running" else None

        return self._transition(job_id, decide)

    def list(self, offset: int = 0, limit: int = 20, owner: str | None = None,
             state: str | None = None) -> tuple[list[JobRecord], int]:
        index = f"{PREFIX}owner:{owner}" if owner is not None else (
            f"{PREFIX}state:{state}" if state is not None else f"{PREFIX}jobs")
        if owner is not None and state is not None:
            # Both filters: one owner's jobs are few; filter them here rather than keep an index per pair.
            ids = [i.decode() for i in self.redis.zrevrange(index, 0, -1)]
            records = [r for r in map(self.get, ids) if r is not None and r.state == state]
            return records[offset: offset + limit], len(records)
        total = self.redis.zcard(index)
        ids = [i.decode() for i in self.redis.zrevrange(index, offset, offset + limit - 1)]
        return [r for r in map(self.get, ids) if r is not None], total

    def counts(self) -> dict[str, int]:
        with self.redis.pipeline() as pipe:
            for state in STATES:
                pipe.zcard(f"{PREFIX}state:{state}")
            return dict(zip(STATES, pipe.execute(), strict=True))

    def position(self, job_id: str) -> int | None:
        return self.redis.zrank(f"{PREFIX}state:queued", job_id)

    def active(self, owner: str) -> int:
        ids = [i.decode() for i in self.redis.zrange(f"{PREFIX}owner:{owner}", 0, -1)]
        with self.redis.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(self._job(job_id), "state")
            states = pipe.execute()
        return sum(1 for s in states if s is not None and json.loads(s) in ("queued", "running"))

    def finished_before(self, when: float) -> list[str]:
        return [i.decode() for i in self.redis.zrangebyscore(f"{PREFIX}finished", 0, when)]

    def delete(self, job_id: str) -> None:
        record = self.get(job_id)
        with self.redis.pipeline() as pipe:
            pipe.delete(self._job(job_id))
            for index in ("jobs", "finished", *(f"state:{s}" for s in STATES)):
                pipe.zrem(f"{PREFIX}{index}", job_id)
            if record is not None:
                pipe.zrem(f"{PREFIX}owner:{record.owner}", job_id)
                if record.idempotency_key is not None:
                    pipe.delete(f"{PREFIX}key:{record.owner}:{record.idempotency_key}")
            pipe.execute()


def connect(url: str) -> Any:
    """A Redis connection for ``redis://host:port/db`` (a clear error if the server cannot be reached)."""
    import redis

    from instantid.errors import InvalidInputError

    try:
        connection = redis.Redis.from_url(url)
        connection.ping()
    except ValueError as exc:
        raise InvalidInputError(f"--queue {url!r} is not a Redis URL ({exc}); use redis://host:6379/0") from None
    except redis.exceptions.RedisError as exc:
        raise InvalidInputError(f"cannot reach Redis at {url}: {exc}") from None
    return connection
