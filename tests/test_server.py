"""The HTTP API over real HTTP: uvicorn on 127.0.0.1 in a thread, the demo model, httpx requests."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from _demo import FACE, NO_FACE, demo_model
from PIL import Image

from instantid.outputs import METADATA_KEY

MAX_UPLOAD = 2_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    import uvicorn

    from instantid.server import ServerSettings, create_app

    model = demo_model(tmp_path_factory.getbasetemp() / "demo")
    app = create_app(ServerSettings(max_upload_bytes=MAX_UPLOAD, max_queued_jobs=4), model=model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        yield http
    server.should_exit = True
    thread.join(10)


def wait_for(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_multipart_job_runs_to_png(client: httpx.Client) -> None:
    files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
    fields = {"prompt": "a knight", "steps": "2", "seed": "7", "num_images": "2", "style": ""}
    response = client.post("/v1/generate", files=files, data=fields)
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"])
    assert status["status"] == "done", status
    assert status["seeds"] == [7, 8] and status["step"] == status["total"] == 2
    assert len(status["images"]) == 2
    image = client.get(status["images"][1])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with Image.open(BytesIO(image.content)) as png:
        assert '"seed": 8' in png.text[METADATA_KEY]
    assert client.get(status["images"][0].replace("/images/0", "/images/5")).status_code == 404


def test_json_job_with_base64(client: httpx.Client) -> None:
    body = {"faces": [base64.b64encode(FACE.read_bytes()).decode()], "steps": 1, "width": 128, "height": 128}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"])
    assert status["status"] == "done" and status["metadata"]["width"] == 128


@pytest.mark.parametrize(
    ("name", "data", "fields", "message"),
    [
        ("notes.txt", b"hello, not an image", {}, "cannot read image notes.txt"),
        ("noise.png", NO_FACE, {}, "no face found in noise.png"),
        ("me.jpg", FACE, {"steps": "500"}, "steps must be between 1 and 200"),
        ("me.jpg", FACE, {"steps": "many"}, "steps"),
        ("me.jpg", FACE, {"sampler": "x"}, "sampler"),
    ],
)
def test_bad_input_is_422_naming_the_problem(
    client: httpx.Client, name: str, data: bytes | Path, fields: dict, message: str
) -> None:
    data = data.read_bytes() if isinstance(data, Path) else data  # read at run time, not at collection
    response = client.post("/v1/generate", files=[("face", (name, data, "application/octet-stream"))], data=fields)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_oversized_upload_is_413(client: httpx.Client) -> None:
    files = [("face", ("big.jpg", b"\0" * (MAX_UPLOAD + 1), "image/jpeg"))]
    assert client.post("/v1/generate", files=files).status_code == 413


def test_unknown_job_is_404(client: httpx.Client) -> None:
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/nope/images/0").status_code == 404


def test_health_models_and_openapi(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["demo"] is True and "Watercolor" in models["styles"] and models["embedding_space"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/generate", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{n}", "/health", "/v1/models"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/generate"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    assert client.get("/ui/").status_code == 200


def test_path_in_request_is_never_opened(client: httpx.Client, tmp_path: Path) -> None:
    response = client.post("/v1/generate", json={"faces": [str(FACE)]})
    assert response.status_code == 422 and "base64" in response.json()["detail"]


def test_full_queue_refuses_with_429() -> None:
    from fastapi import HTTPException

    from instantid.generator import GenerationSettings
    from instantid.server import Job, JobQueue

    queue = JobQueue(max_queued=1, max_kept=10)
    queue.submit(Job("a", [b""], None, GenerationSettings()))
    with pytest.raises(HTTPException) as refused:
        queue.submit(Job("b", [b""], None, GenerationSettings()))
    assert refused.value.status_code == 429 and "b" not in queue.jobs
