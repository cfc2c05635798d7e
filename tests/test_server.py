"""The HTTP API over real HTTP: uvicorn on 127.0.0.1 in a thread, the demo model, the SQLite job store."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from _demo import FACE, NO_FACE
from _service import serving, until, wait_for
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.io.outputs import METADATA_KEY

MAX_UPLOAD = 2_000_000
MAX_QUEUED = 2
FAST = {"steps": "2", "width": "64", "height": "64"}


class Calls:
    """Counts face analyses (the analyzer's analyze, which get_face goes through too) of the shared demo model."""

    def __init__(self, analyzer: Any) -> None:
        self.count = 0
        self.original = analyzer.analyze

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.original(*args, **kwargs)



@pytest.fixture(scope="module")
def calls(model: Any) -> Iterator[Calls]:
    counter = Calls(model.analyzer)
    model.analyzer.analyze = counter
    yield counter
    del model.analyzer.analyze


@pytest.fixture(scope="module")
def client(model: Any, calls: Calls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("jobs"), max_upload_mb=MAX_UPLOAD / 2**20,
                              max_queued_jobs=MAX_QUEUED)
    with serving(create_app(settings, model=model)) as http:
        yield http


def face_file(name: str = "me.jpg") -> tuple[str, tuple[str, bytes, str]]:
    return ("face", (name, FACE.read_bytes(), "image/jpeg"))


def submit(client: httpx.Client, **fields: Any) -> dict:
    response = client.post("/v1/generate", files=[face_file()], data={**FAST, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def test_multipart_job_runs_to_png_with_absolute_urls(client: httpx.Client) -> None:
    response = client.post("/v1/generate", files=[face_file()],
                           data={"prompt": "a knight", "steps": "2", "seed": "7", "num_images": "2", "style": ""})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status_url"].startswith("http://127.0.0.1:") and response.headers["location"] == created[
        "status_url"]
    status = wait_for(client, created["job_id"])
    assert status["status"] == "done", status
    assert status["seeds"] == [7, 8] and status["step"] == status["total"] == 2 and status["attempts"] == 1
    assert len(status["images"]) == 2 and all(url.startswith("http://127.0.0.1:") for url in status["images"])
    image = client.get(status["images"][1])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with Image.open(BytesIO(image.content)) as png:
        assert '"seed": 8' in png.text[METADATA_KEY]
    assert client.get(status["images"][0].replace("/images/0", "/images/5")).status_code == 404
    assert status["metadata"]["references"] == ["me.jpg"]  # the upload's name, never a server path


def test_json_job_with_base64_and_new_knobs(client: httpx.Client) -> None:
    body = {"faces": [base64.b64encode(FACE.read_bytes()).decode()], "face_names": ["alice.jpg"], "steps": 2,
            "width": 64, "height": 64, "scheduler": "euler_a", "control_guidance_start": 0.25,
            "control_guidance_end": 0.75, "style": "watercolor"}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"])
    assert status["status"] == "done", status
    metadata = status["metadata"]
    assert metadata["width"] == 64 and metadata["sampler"] == "Euler a" and metadata["references"] == ["alice.jpg"]
    assert metadata["settings"]["control_guidance_start"] == 0.25 and metadata["settings"]["style"] == "Watercolor"


def test_wait_returns_the_images_as_data_uris(client: httpx.Client) -> None:
    response = client.post("/v1/generate?wait=true", files=[face_file()], data={**FAST, "seed": "11"})
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["status"] == "done" and out["seeds"] == [11] and out["parameters"]["seed"] == 11
    assert out["images"][0].startswith("data:image/png;base64,")
    with Image.open(BytesIO(base64.b64decode(out["images"][0].split(",", 1)[1]))) as png:
        assert png.size == (64, 64) and '"seed": 11' in png.text[METADATA_KEY]
    assert out["info"]["sampler"] and out["image_urls"][0].startswith("http://")


@pytest.mark.parametrize(
    ("name", "data", "fields", "message"),
    [
        ("notes.txt", b"hello, not an image", {}, "cannot read image notes.txt"),
        ("noise.png", NO_FACE, {}, "no face found in noise.png"),
        ("me.jpg", FACE, {"steps": "500"}, "steps must be between 1 and 200"),
        ("me.jpg", FACE, {"steps": "many"}, "steps"),
        ("me.jpg", FACE, {"sampler": "x"}, "unknown setting 'sampler'"),
        ("me.jpg", FACE, {"scheduler": "warp"}, "scheduler must be one of"),
        ("me.jpg", FACE, {"control_guidance_start": "0.9", "control_guidance_end": "0.5"},
         "control_guidance_start must be below control_guidance_end"),
        ("me.jpg", FACE, {"width": "100", "height": "64"}, "width must be a multiple of 8"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: httpx.Client, name: str, data: bytes | Path, fields: dict, message: str
) -> None:
    data = data.read_bytes() if isinstance(data, Path) else data  # read at run time, not at collection
    response = client.post("/v1/generate", files=[("face", (name, data, "application/octet-stream"))], data=fields)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_an_image_to_image_request_of_no_step_is_422_not_a_failed_job(client: httpx.Client) -> None:
    response = client.post("/v1/generate", files=[face_file(), ("init_image", ("room.jpg", FACE.read_bytes()))],
                           data={"steps": "1"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == ("denoising strength 0.8 of 1 steps runs no step; raise the strength or "
                                         "the steps")


def test_json_errors_name_the_json_field(client: httpx.Client) -> None:
    face = base64.b64encode(FACE.read_bytes()).decode()
    response = client.post("/v1/generate", json={"faces": [face], "guidance_scale": 99})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("guidance_scale must be between 0 and 30")  # not the CLI's --guidance
    assert client.post("/v1/generate", json={"faces": []}).status_code == 422
    mix = client.post("/v1/generate", json={"faces": [face], "mix": [face[:8]]})
    assert mix.status_code == 422 and mix.json()["detail"] == f"mix[0] must be a JSON object, got {face[:8]!r}"
    assert client.post("/v1/generate", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    files = [("face", ("big.jpg", b"\0" * (MAX_UPLOAD + 1), "image/jpeg"))]
    assert client.post("/v1/generate", files=files).status_code == 413


def test_unknown_or_malformed_job_ids_are_404(client: httpx.Client) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/images/0", "/v1/jobs/" + "0" * 32, "/v1/jobs/..%2F..%2Fjobs.sqlite3",
                 "/v1/jobs/%2E%2E/images/0"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "detail" in response.json()


def test_path_in_request_is_never_opened(client: httpx.Client) -> None:
    response = client.post("/v1/generate", json={"faces": [str(FACE)]})
    assert response.status_code == 422 and "base64" in response.json()["detail"]


def test_each_photo_is_analysed_once(client: httpx.Client, calls: Calls) -> None:
    before = calls.count
    files = [face_file("a.jpg"), face_file("b.jpg")]
    response = client.post("/v1/generate", files=files, data=FAST)
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["job_id"])["status"] == "done"
    assert calls.count - before == 2  # at submit; the worker reuses the Identity


def test_full_queue_is_429_before_face_analysis_then_position_and_cancel(
    client: httpx.Client, model: Any, calls: Calls
) -> None:
    with model._lock:  # the worker takes the first job and waits on the model: the rest stay queued
        running = submit(client)
        until(lambda: client.get(f"/v1/jobs/{running['job_id']}").json()["status"] == "running", what="running")
        queued = [submit(client) for _ in range(MAX_QUEUED)]
        assert [q["position"] for q in queued] == [0, 1]
        assert client.get(f"/v1/jobs/{queued[1]['job_id']}").json()["position"] == 1
        before = calls.count
        refused = client.post("/v1/generate", files=[face_file()], data=FAST)
        assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        assert calls.count == before  # refused before any face analysis
        listed = client.get("/v1/jobs", params={"state": "queued"}).json()
        assert listed["total"] == MAX_QUEUED
        assert client.delete(f"/v1/jobs/{queued[0]['job_id']}").json()["status"] == "canceled"
        assert client.get(f"/v1/jobs/{queued[1]['job_id']}").json()["position"] == 0
        assert client.delete(f"/v1/jobs/{running['job_id']}").json()["status"] == "canceling"
    assert wait_for(client, running["job_id"])["status"] == "canceled"
    assert wait_for(client, queued[0]["job_id"])["status"] == "canceled"
    assert wait_for(client, queued[1]["job_id"])["status"] == "done"
    assert client.get(f"/v1/jobs/{queued[1]['job_id']}/images/0").status_code == 200
    deleted = client.delete(f"/v1/jobs/{queued[1]['job_id']}")
    assert deleted.json()["status"] == "deleted"
    assert client.get(f"/v1/jobs/{queued[1]['job_id']}").status_code == 404


def test_job_list_pages(client: httpx.Client) -> None:
    for _ in range(2):
        wait_for(client, submit(client)["job_id"])
    first = client.get("/v1/jobs", params={"limit": 1}).json()
    assert len(first["jobs"]) == 1 and first["total"] >= 2 and first["next"].startswith("http://")
    second = client.get(first["next"]).json()
    assert second["offset"] == 1 and second["jobs"][0]["job_id"] != first["jobs"][0]["job_id"]
    assert first["jobs"][0]["created"] >= second["jobs"][0]["created"]  # newest first
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_idempotency_key_makes_one_job(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/generate", files=[face_file()], data=FAST, headers=headers)
    again = client.post("/v1/generate", files=[face_file()], data=FAST, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"]
    other = client.post("/v1/generate", files=[face_file()], data=FAST, headers={"Idempotency-Key": "order-43"})
    assert other.json()["job_id"] != first.json()["job_id"]
    for response in (first, other):
        wait_for(client, response.json()["job_id"])


def test_openapi_is_derived_from_generation_settings(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/generate", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{n}", "/health", "/ready",
            "/metrics", "/v1/models"} <= set(paths)
    assert "delete" in paths["/v1/jobs/{job_id}"]
    content = paths["/v1/generate"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        properties = content[media]["schema"]["properties"]
        for name, info in GenerationSettings.model_fields.items():
            assert name in properties, (media, name)
            assert info.description in str(properties[name]), (media, name)
        assert "Watercolor" in str(properties["style"]) and "dpm++_karras" in str(properties["scheduler"])
        assert properties["steps"]["maximum"] == 200 and properties["control_guidance_end"]["maximum"] == 1


def test_docs_work_offline(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text.replace("https://fastapi.tiangolo.com", "")
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        served = client.get(f"/static-offline-docs/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000


def test_health_ready_models_metrics(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["queue"] == "local" and "done" in ready["jobs"]
    models = client.get("/v1/models").json()
    assert models["demo"] is True and "Watercolor" in models["styles"] and "lcm" in models["schedulers"]
    client.post("/v1/generate", files=[("face", ("noise.png", NO_FACE.read_bytes(), "image/png"))])
    text = client.get("/metrics").text
    assert "instantid_queue_depth" in text and 'instantid_jobs{state="done"}' in text
    assert 'instantid_face_analysis_failures_total{stage="submit"}' in text
    count = [line for line in text.splitlines() if line.startswith("instantid_generation_seconds_count")]
    assert count and float(count[0].split()[-1]) >= 1


def test_ui_is_mounted(client: httpx.Client) -> None:
    assert client.get("/ui/").status_code == 200


def test_client_disconnect_mid_upload_logs_one_line(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    host, port = client.base_url.host, client.base_url.port
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, port)) as raw:
        raw.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 100000\r\n\r\n--b\r\n")
        time.sleep(0.2)
    until(lambda: any("disconnected during the upload" in r.getMessage() for r in caplog.records), 10, "log line")
    assert client.get("/health").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
