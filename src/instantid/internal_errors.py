"""An internal error is never blamed on the user: one id, the traceback kept under it, one line shown.

Every surface turns an exception that is not one of :mod:`instantid.errors` (a bug, not bad input) into
:func:`report`: a short random id, the traceback written to the surface's log with that id, and a line that
names the id (HTTP 500 ``{"detail": "internal error", "error_id": ...}``, the web UI's "internal error <id>",
the CLI's one line naming a log file). Whoever reads the log finds the traceback by the id the user quotes.

The CLI has no server log to write to: ``report(..., to_file=True)`` keeps one traceback per file in :func:`log_dir`:
``$INSTANTID_LOG_DIR``,
else ``$XDG_STATE_HOME/instantid/logs``, else ``~/.local/state/instantid/logs`` (a temporary folder when none
of them can be written).
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

MESSAGE = "internal error"  # what the user sees, with the id; never the exception's own text


@dataclass(frozen=True)
class InternalError:
    """One unexpected exception as reported: its id, and the file holding its traceback (CLI only)."""

    error_id: str
    log_path: Path | None = None

    def line(self) -> str:
        """The one line a user sees."""
        where = f"; the traceback is in {self.log_path}" if self.log_path else "; the log has the traceback"
        return f"{MESSAGE} {self.error_id}{where}"


def new_error_id() -> str:
    return uuid.uuid4().hex[:12]


def log_dir() -> Path:
    """Where the CLI writes tracebacks (see the module docstring)."""
    if os.environ.get("INSTANTID_LOG_DIR"):
        return Path(os.environ["INSTANTID_LOG_DIR"]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(state).expanduser() / "instantid" / "logs"


def report(exc: BaseException, logger: logging.Logger | None, where: str, *, to_file: bool = False
           ) -> InternalError:
    """Log ``exc``'s traceback to ``logger`` under a new id (``where``: what was being done) and return the id;
    with ``to_file`` the traceback goes into its own file under :func:`log_dir` (the CLI's case, which passes
    no logger: its terminal gets the one line only)."""
    error_id = new_error_id()
    if logger is not None:
        logger.error("%s %s in %s: %s: %s", MESSAGE, error_id, where, type(exc).__name__, exc, exc_info=exc)
    path = _write(error_id, where, exc) if to_file else None
    return InternalError(error_id, path)


def _write(error_id: str, where: str, exc: BaseException) -> Path | None:
    text = f"{MESSAGE} {error_id} in {where}\n" + "".join(traceback.format_exception(exc))
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "instantid-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"error-{error_id}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


__all__ = ["MESSAGE", "InternalError", "log_dir", "new_error_id", "report"]
