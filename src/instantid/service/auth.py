"""API keys and per-key limits for a shared server.

The key file (``--api-key-file``) holds one key per line, only its SHA-256, never the key itself::

    # name   sha256 of the key                                                   optional limits
    alice    sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b  rate=30 jobs=2
    ci-bot   sha256:...

``rate`` = submissions per minute (token bucket), ``jobs`` = queued + running jobs at once; a key without them
gets the server's ``--rate-limit`` / ``--max-jobs-per-key``. Make a key and its line with
``instantid serve --new-api-key NAME``. Clients send ``Authorization: Bearer <key>`` (or ``X-API-Key``).
A presented key is hashed and compared with every stored digest by :func:`hmac.compare_digest`, so the
time taken says nothing about how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from instantid.errors import InvalidInputError

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key
    rate_per_minute: float | None = None
    max_jobs: int | None = None


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_api_key(name: str) -> tuple[str, str]:
    """A fresh random key and its line for the key file."""
    if not NAME.fullmatch(name):
        raise InvalidInputError(f"API key name {name!r}: use letters, digits, '_', '.', '@' or '-' (max 64)")
    key = "iid_" + secrets.token_urlsafe(32)
    return key, f"{name} {hash_key(key)}"


def load_api_keys(path: str | Path) -> list[ApiKey]:
    """Parse the key file; a malformed line is an error naming the line (a server must not start half-locked)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the API key file {path}: {exc}") from None
    keys: list[ApiKey] = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path.name} line {number}"
        if len(words) < 2 or not NAME.fullmatch(words[0]) or not DIGEST.fullmatch(words[1]):
            raise InvalidInputError(f"{where}: expected 'NAME sha256:<64 hex digits> [rate=N] [jobs=N]'")
        limits: dict[str, float] = {}
        for word in words[2:]:
            option, _, value = word.partition("=")
            try:
                if option not in ("rate", "jobs") or float(value) <= 0:
                    raise ValueError
                limits[option] = float(value)
            except ValueError:
                raise InvalidInputError(f"{where}: {word!r} is not rate=N or jobs=N with N > 0") from None
        digest = bytes.fromhex(DIGEST.fullmatch(words[1]).group(1))  # type: ignore[union-attr]
        keys.append(ApiKey(words[0], digest, limits.get("rate"),
                           int(limits["jobs"]) if "jobs" in limits else None))
    if not keys:
        raise InvalidInputError(f"the API key file {path} holds no keys")
    return keys


class KeyRing:
    """Finds the key a request presents; constant time in the presented key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def named(self, name: str) -> ApiKey | None:
        """The key called ``name`` (the web UI signs in by name; its limits apply to UI jobs)."""
        return next((key for key in self.keys if key.name == name), None)

    def sign_in(self, name: str, presented: str) -> bool:
        """The web UI's login: user name = the key's name, password = the key (constant time in the key)."""
        key = self.identify(presented)
        return key is not None and hmac.compare_digest(key.name.encode(), name.encode())

    def identify(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class RateLimiter:
    """A token bucket per client: ``rate`` submissions per minute, bursts up to ``rate``."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, client: str, rate_per_minute: float) -> float | None:
        """None if allowed (a token is taken), else the seconds until the next token."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (rate_per_minute, now))
            tokens = min(rate_per_minute, tokens + (now - last) * rate_per_minute / 60)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return (1 - tokens) * 60 / rate_per_minute
            self._buckets[client] = (tokens - 1, now)
            return None
