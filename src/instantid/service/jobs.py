"""Job records, the job's own folder on disk, and the SQLite job store (the default; needs nothing installed).

A job record holds the request, its state, timestamps, attempts, error and output names; the photos that came
with the request and the images it produced live in the job's own folder ``<root>/jobs/<job id>/``. Every path
is built from a job id checked against :data:`JOB_ID` (32 hex digits), never from anything else in a request.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``canceled``. A running job whose worker is lost
goes back to ``queued`` while it has attempts left, else it fails with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from instantid.errors import InvalidInputError
from instantid.io.outputs import write_bytes_atomically

JOB_ID = re.compile(r"[0-9a-f]{32}")
SLOT = re.compile(r"[a-z]+(-[0-9]{1,3}){0,2}")  # an input photo's file name, built by the server (face-0, pose)
STATES = ("queued", "running", "done", "failed", "canceled")
FINISHED = ("done", "failed", "canceled")
JobState = Literal["queued", "running", "done", "failed", "canceled"]


class UnknownJobError(InvalidInputError):
    """No job with that id (never existed, expired, or not a job id at all)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is a well-formed id; the only gate between a request and a path on disk."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise UnknownJobError(f"no job {job_id[:40]!r}: job ids are 32 hex digits")
    return job_id


@dataclass
class JobRecord:
    """What the store keeps about one job (JSON-able; the photos and images stay on disk)."""

    id: str
    request: dict[str, Any]  # Prepared.names() (task, photo names, options), settings, Idempotency fingerprint
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    error: str | None = None
    error_id: str | None = None  # an internal error (a bug, not the input): the id its traceback is logged under
    outputs: list[str] = field(default_factory=list)  # file names inside the job folder
    seeds: list[int] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    step: int = 0
    total: int = 0
    owner: str = ""  # API key name; "" when the server has no keys
    idempotency_key: str | None = None
    worker: str | None = None
    cancel_requested: bool = False

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        for name in JSON_FIELDS:
            row[name] = json.dumps(row[name])
        row["cancel_requested"] = int(self.cancel_requested)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRecord:
        values = dict(row)
        for name in JSON_FIELDS:
            values[name] = json.loads(values[name]) if isinstance(values[name], (str, bytes)) else values[name]
        values["cancel_requested"] = bool(int(values["cancel_requested"]))
        return cls(**{f.name: values[f.name] for f in fields(cls)})


JSON_FIELDS = ("request", "outputs", "seeds", "metadata")
COLUMNS = tuple(f.name for f in fields(JobRecord))


class JobFiles:
    """The job folders under ``root``: the analysed job in (``inputs/``), the images and sidecars out."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, job_id: str) -> Path:
        return self.root / "jobs" / check_job_id(job_id)

    def input_path(self, job_id: str, slot: str) -> Path:
        if not SLOT.fullmatch(slot):
            raise InvalidInputError(f"not an input slot: {slot[:40]!r}")
        return self.folder(job_id) / "inputs" / slot

    def save_input(self, job_id: str, slot: str, data: bytes) -> None:
        write_bytes_atomically(self.input_path(job_id, slot), data)

    def load_input(self, job_id: str, slot: str) -> bytes:
        return self.input_path(job_id, slot).read_bytes()

    def image_name(self, index: int) -> str:
        """Deterministic names, so a re-run of a job replaces its images instead of adding more."""
        return f"image-{index}"

    def image_path(self, job_id: str, index: int) -> Path:
        return self.folder(job_id) / f"{self.image_name(int(index))}.png"

    def clear_partial(self, job_id: str) -> None:
        """Temporary files a killed worker left behind (finished files are replaced atomically anyway)."""
        folder = self.folder(job_id)
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


class JobStore(ABC):
    """Where job records live; the same interface in SQLite (one machine) and Redis (many workers)."""

    @abstractmethod
    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new queued job; with an idempotency key already used by this owner, the earlier job and
        False instead."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def by_key(self, owner: str, key: str) -> JobRecord | None:
        """The job this owner submitted with this idempotency key, if it is still kept."""

    @abstractmethod
    def update(self, job_id: str, **changes: Any) -> None: ...

    @abstractmethod
    def start(self, job_id: str, worker: str) -> JobRecord | None:
        """Atomically move a queued job to running (attempts + 1); None if it is not queued any more."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobRecord | None:
        """Ask a queued or running job to stop: a queued one is canceled at once, a running one when its worker
        sees the request (within a step). The updated record; None when the job is already finished."""

    @abstractmethod
    def list(self, offset: int = 0, limit: int = 20, owner: str | None = None,
             state: str | None = None) -> tuple[list[JobRecord], int]:
        """Newest first, and the total matching."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs by state (every state present, 0 when none)."""

    @abstractmethod
    def position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one; None when it is not queued."""

    @abstractmethod
    def active(self, owner: str) -> int:
        """Queued plus running jobs of one owner (the per-key concurrent-job limit)."""

    @abstractmethod
    def finished_before(self, when: float) -> list[str]:
        """Ids of jobs that finished before ``when`` (retention)."""

    @abstractmethod
    def delete(self, job_id: str) -> None: ...

    def lost(self, job_id: str, reason: str, max_attempts: int) -> str:
        """A running job's worker is gone: back to queued while attempts are left, else failed. New state."""
        record = self.get(job_id)
        if record is None or record.state != "running":
            return record.state if record else "unknown"
        if record.attempts < max_attempts:  # the reason is told until the next run ends (runner clears it)
            self.update(job_id, state="queued", worker=None, step=0, error=f"retrying: {reason}")
            return "queued"
        self.update(job_id, state="failed", finished=time.time(), worker=None,
                    error=f"{reason} (attempt {record.attempts} of {max_attempts}); giving up")
        return "failed"


class SQLiteJobStore(JobStore):
    """Job records in one SQLite file (WAL); safe across the server's threads, survives restarts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, request TEXT, state TEXT, created REAL, "
                "started REAL, finished REAL, attempts INTEGER, error TEXT, outputs TEXT, seeds TEXT, "
                "metadata TEXT, step INTEGER, total INTEGER, owner TEXT, idempotency_key TEXT, worker TEXT, "
                "cancel_requested INTEGER, error_id TEXT)"
            )
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name in COLUMNS:  # a store written by an older version gains the newer fields
                if name not in present:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} TEXT")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created)")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs (owner, idempotency_key) "
                             "WHERE idempotency_key IS NOT NULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple = ()) -> JobRecord | None:
        row = self._db.execute(sql, args).fetchone()
        return JobRecord.from_row(dict(row)) if row else None

    def add(self, record: JobRecord) -> tuple[JobRecord, bool]:
        row = record.to_row()
        with self._lock:
            try:
                self._db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                 tuple(row[c] for c in COLUMNS))
            except sqlite3.IntegrityError:
                earlier = self._one("SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?",
                                    (record.owner, record.idempotency_key))
                if earlier is None:
                    raise
                return earlier, False
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def by_key(self, owner: str, key: str) -> JobRecord | None:
        with self._lock:
            return self._one("SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key))

    def update(self, job_id: str, **changes: Any) -> None:
        row = JobRecord(id=job_id, request={}, **changes).to_row()  # encodes the JSON fields
        sets = ", ".join(f"{name} = ?" for name in changes)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*(row[n] for n in changes), job_id))

    def start(self, job_id: str, worker: str) -> JobRecord | None:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ?, worker = ?, step = 0 "
                "WHERE id = ? AND state = 'queued' AND cancel_requested = 0", (time.time(), worker, job_id))
            return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)) if cursor.rowcount else None

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET cancel_requested = 1, "
                "finished = CASE WHEN state = 'queued' THEN ? ELSE finished END, "
                "error = CASE WHEN state = 'queued' THEN 'canceled before it started' ELSE error END, "
                "state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END "
                "WHERE id = ? AND state IN ('queued', 'running')", (time.time(), job_id))
            return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)) if cursor.rowcount else None

    def next_queued(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, id LIMIT 1").fetchone()
        return row["id"] if row else None

    def claim(self, worker: str) -> JobRecord | None:
        """The oldest queued job, now running on ``worker`` (the in-process worker's loop)."""
        while (job_id := self.next_queued()) is not None:
            record = self.start(job_id, worker)
            if record is not None:
                return record
        return None

    def list(self, offset: int = 0, limit: int = 20, owner: str | None = None,
             state: str | None = None) -> tuple[list[JobRecord], int]:
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {clause}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs {clause} ORDER BY created DESC, id LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
        return [JobRecord.from_row(dict(r)) for r in rows], total

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {**dict.fromkeys(STATES, 0), **{r[0]: r[1] for r in rows}}

    def position(self, job_id: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT created, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "queued":
                return None
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (created < ? OR (created = ? AND id < ?))",
                (row["created"], row["created"], job_id)).fetchone()[0]

    def active(self, owner: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ('queued', 'running')",
                                    (owner,)).fetchone()[0]

    def finished_before(self, when: float) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state IN ('done', 'failed', 'canceled') "
                                    "AND finished < ?", (when,)).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def running(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
