"""An internal error is never blamed on the user: on the HTTP API (500 with an id), in a job (failed with an id,
not the exception's text), in the web UI ("internal error <id>") and on the CLI (one line naming the id and a
log file, exit 1); the traceback is logged under that id each time. Bad input keeps its 4xx / exit 2 line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _demo import FACE, NO_FACE
from _service import serving, wait_for

from instantid.errors import InvalidInputError

ID = re.compile(r"internal error ([0-9a-f]{12})")
FAST = {"steps": "2", "width": "64", "height": "64"}
# What the crash of issue 17 said; it must reach the log, never the user.
CRASH = "face mask of 256x200 does not map onto a 208-token attention grid"


def logged_traceback(caplog: pytest.LogCaptureFixture, error_id: str) -> logging.LogRecord:
    """The one log record naming ``error_id``; it carries the traceback."""
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info is not None and record.levelno == logging.ERROR
    return record


@pytest.fixture
def client(model: Any, tmp_path: Path) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    with serving(create_app(ServerSettings(out_dir=tmp_path, mount_ui=False), model=model)) as http:
        yield http


@pytest.fixture
def crashing_model(model: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(CRASH)

    monkeypatch.setattr(model, "generate", crash)
    return model


def test_a_job_that_crashes_answers_500_with_an_id_not_422(client: httpx.Client, crashing_model: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/generate?wait=true", files=files, data=FAST)
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["detail"] == "internal error" and set(body) == {"detail", "error_id", "job_id", "status"}
    assert CRASH not in response.text and "ValueError" not in response.text
    status = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert status["status"] == "failed" and status["error"] == "internal error"
    assert status["error_id"] == body["error_id"]
    record = logged_traceback(caplog, body["error_id"])
    assert record.exc_info[0] is ValueError and CRASH in str(record.exc_info[1])
    # Without ?wait the job records the same: polled, it says failed with the id.
    created = client.post("/v1/generate", files=files, data=FAST).json()
    polled = wait_for(client, created["job_id"])
    assert polled["error"] == "internal error" and re.fullmatch("[0-9a-f]{12}", polled["error_id"])


def test_an_unexpected_exception_in_a_route_is_500_json_with_a_logged_id(
        client: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from instantid.service.jobs import SQLiteJobStore

    caplog.set_level(logging.ERROR)

    def broken(self: Any) -> dict[str, int]:
        raise ZeroDivisionError("a bug in the store")

    monkeypatch.setattr(SQLiteJobStore, "counts", broken)
    files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/generate", files=files, data=FAST)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "error_id"} and body["detail"] == "internal error"
    assert "bug" not in response.text
    assert logged_traceback(caplog, body["error_id"]).exc_info[0] is ZeroDivisionError


def test_bad_input_stays_a_422_line(client: httpx.Client) -> None:
    noise = ("face", ("noise.png", NO_FACE.read_bytes(), "image/png"))
    response = client.post("/v1/generate", files=[noise], data=FAST)
    assert response.status_code == 422 and response.json() == {"detail": "no face found in noise.png"}


def test_web_ui_says_internal_error_with_the_logged_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import gradio as gr

    from instantid.webui import UIContext

    caplog.set_level(logging.ERROR)

    def handler() -> None:
        raise KeyError(CRASH)

    with pytest.raises(gr.Error) as raised:
        UIContext(get_model=lambda: None, out_dir=tmp_path).guard(handler)()
    message = str(raised.value.message)
    assert ID.match(message) and CRASH not in message and "KeyError" not in message
    assert logged_traceback(caplog, ID.match(message).group(1)).exc_info[0] is KeyError

    def bad_input() -> None:
        raise InvalidInputError("steps must be between 1 and 200")

    with pytest.raises(gr.Error) as refused:
        UIContext(get_model=lambda: None, out_dir=tmp_path).guard(bad_input)()
    assert refused.value.message == "steps must be between 1 and 200"


def test_a_web_ui_job_that_crashes_in_the_worker_names_the_id(crashing_model: Any, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from instantid.api.settings import GenerationSettings
    from instantid.apps.tasks import Prepared
    from instantid.service.core import InternalJobError, JobService, ServerSettings

    caplog.set_level(logging.ERROR)
    service = JobService.start(ServerSettings(out_dir=tmp_path, mount_ui=False), crashing_model)
    try:
        identity = crashing_model.prepare_identity(FACE.read_bytes())
        with pytest.raises(InternalJobError) as raised:
            service.run_prepared(Prepared("generate", identity=identity),
                                 GenerationSettings(steps=2, width=64, height=64))
    finally:
        service.stop()
    assert ID.match(str(raised.value)) and CRASH not in str(raised.value)
    logged_traceback(caplog, ID.match(str(raised.value)).group(1))


def test_cli_prints_one_line_naming_the_id_and_the_log_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import instantid.cli.faces as faces_cli
    from instantid.cli import main

    monkeypatch.setenv("INSTANTID_LOG_DIR", str(tmp_path / "logs"))

    def crash(*args: Any) -> Any:
        raise ValueError(CRASH)

    monkeypatch.setattr(faces_cli, "face_analyzer", crash)
    assert main(["faces", str(FACE)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    error_id = ID.search(line).group(1)
    (log_file,) = (tmp_path / "logs").iterdir()
    assert str(log_file) in line and error_id in log_file.name and CRASH not in line
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text and f"ValueError: {CRASH}" in text and error_id in text

    def refuse(*args: Any) -> Any:
        raise InvalidInputError("--face-backend: no such backend")

    monkeypatch.setattr(faces_cli, "face_analyzer", refuse)
    assert main(["faces", str(FACE)]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --face-backend: no such backend"]
    assert len(list((tmp_path / "logs").iterdir())) == 1  # bad input leaves no traceback behind


def test_a_job_store_written_before_error_ids_opens_and_keeps_them(tmp_path: Path) -> None:
    import sqlite3

    from instantid.service.jobs import JobRecord, SQLiteJobStore, new_job_id

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:  # the table as the previous version created it
        old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, request TEXT, state TEXT, created REAL, started REAL, "
                    "finished REAL, attempts INTEGER, error TEXT, outputs TEXT, seeds TEXT, metadata TEXT, "
                    "step INTEGER, total INTEGER, owner TEXT, idempotency_key TEXT, worker TEXT, "
                    "cancel_requested INTEGER)")
    store = SQLiteJobStore(path)
    record, _ = store.add(JobRecord(id=new_job_id(), request={"settings": {}}))
    store.update(record.id, state="failed", error="internal error", error_id="0123456789ab")
    assert store.get(record.id).error_id == "0123456789ab"
