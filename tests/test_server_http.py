"""HTTP API details a client relies on: Idempotency-Key reuse, what /v1/models reveals, one name for the face
photos, the OpenAPI document (version, summary, request bodies), a 202 that never says "queued" without a
position, and a job re-run after a restart that ends without the lost run's error."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _demo import FACE
from _service import serving, until, wait_for

FAST = {"steps": "2", "width": "64", "height": "64"}


def face_file() -> tuple[str, tuple[str, bytes, str]]:
    return ("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))


@pytest.fixture(scope="module")
def client(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("http-jobs"), mount_ui=False)
    with serving(create_app(settings, model=model)) as http:
        yield http


def test_idempotency_key_reused_with_another_body_is_422(client: httpx.Client) -> None:
    key = {"Idempotency-Key": "order-17"}
    first = client.post("/v1/generate", files=[face_file()], data={**FAST, "seed": "1"}, headers=key)
    retry = client.post("/v1/generate", files=[face_file()], data={**FAST, "seed": "1"}, headers=key)
    assert first.status_code == 202 and retry.status_code == 200
    assert retry.json()["job_id"] == first.json()["job_id"]  # another multipart boundary, the same request
    other = client.post("/v1/generate", files=[face_file()], data={**FAST, "seed": "2"}, headers=key)
    assert other.status_code == 422 and "Idempotency-Key 'order-17' was already used" in other.json()["detail"]
    wait_for(client, first.json()["job_id"])


def test_models_show_no_server_paths(client: httpx.Client, model: Any) -> None:
    info = client.get("/v1/models").json()
    text = json.dumps(info)
    assert str(Path(model.refs.base).parent) not in text and '"/' not in text
    assert info["models"] == {"base": "base", "identitynet": "ControlNetModel", "adapter": "ip-adapter.bin"}


def test_hub_ids_stay_and_local_paths_lose_their_folders(tmp_path: Path) -> None:
    from instantid.io.models import public_ref

    assert public_ref("InstantX/InstantID") == "InstantX/InstantID"
    assert public_ref(str(tmp_path / "sdxl.safetensors")) == "sdxl.safetensors"
    assert public_ref("~/models/juggernaut") == "juggernaut"


def test_face_is_the_one_photo_name_in_json_and_multipart(client: httpx.Client) -> None:
    photo = base64.b64encode(FACE.read_bytes()).decode()
    settings = {"steps": 2, "width": 64, "height": 64}
    for body in ({"face": [photo]}, {"faces": [photo]}):  # the name, and the old JSON name still read
        response = client.post("/v1/generate", json={**body, **settings})
        assert response.status_code == 202, response.text
        assert wait_for(client, response.json()["job_id"])["status"] == "done"
    both = client.post("/v1/generate", json={"face": [photo], "faces": [photo], **settings})
    assert both.status_code == 422 and "'face' only" in both.json()["detail"]
    missing = client.post("/v1/generate", json=settings)
    assert missing.status_code == 422 and "'face' field" in missing.json()["detail"]
    bodies = client.get("/openapi.json").json()["paths"]["/v1/swap"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        assert "face" in bodies[media]["schema"]["properties"]
        assert "faces" not in bodies[media]["schema"]["properties"]


def test_openapi_version_summary_and_bodies(client: httpx.Client) -> None:
    import instantid

    document = client.get("/openapi.json").json()
    assert document["info"]["version"] == instantid.__version__
    summary = document["info"]["summary"]
    assert summary.endswith(".") and summary.count(". ") == 0  # one whole sentence
    text = json.dumps(document)
    assert "#/$defs/" not in text  # every reference resolves inside the document
    for task in ("generate", "swap", "group", "detail"):
        content = document["paths"][f"/v1/{task}"]["post"]["requestBody"]["content"]
        form = content["multipart/form-data"]["schema"]
        assert form["description"].startswith("multipart/form-data body") and "application/json" not in json.dumps(
            form)
        files = [name for name, field in form["properties"].items()
                 if "binary" in json.dumps(field)]
        assert files and set(form["required"]) <= set(files)
        assert content["application/json"]["schema"]["description"].startswith("``application/json`` body")


def test_a_202_is_queued_with_a_position_or_says_what_it_is(model: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from instantid.service.jobs import SQLiteJobStore
    from instantid.service.server import ServerSettings, create_app

    original = SQLiteJobStore.add

    def claimed_at_once(self: SQLiteJobStore, record: Any) -> Any:  # a worker faster than the answer
        added = original(self, record)
        self.start(record.id, "quick-worker")
        return added

    monkeypatch.setattr(SQLiteJobStore, "add", claimed_at_once)
    with serving(create_app(ServerSettings(out_dir=tmp_path, mount_ui=False), model=model)) as http:
        created = http.post("/v1/generate", files=[face_file()], data=FAST)
        body = created.json()
        assert created.status_code == 202 and body["status"] == "running" and body["position"] is None, body
        status = http.get(f"/v1/jobs/{body['job_id']}").json()
        assert status["status"] == "running" and status["worker"] == "quick-worker"


def test_a_job_rerun_after_a_restart_ends_done_without_the_retrying_error(model: Any, tmp_path: Path) -> None:
    from instantid.api.settings import GenerationSettings
    from instantid.apps.tasks import JobRequest
    from instantid.service.core import JobService, ServerSettings

    settings = ServerSettings(out_dir=tmp_path, mount_ui=False)
    first = JobService.start(settings, model)
    first.stop()  # no worker from here: the job is taken by a "worker" that dies with the server
    request = JobRequest("generate", GenerationSettings(steps=2, width=64, height=64),
                         faces=(("me.jpg", FACE.read_bytes()),))
    record, _ = first.submit_request(request)
    first.store.start(record.id, "the-server-that-died")
    second = JobService.start(settings, model)  # recovers the running job: back to queued, "retrying: ..."
    try:
        until(lambda: second.store.get(record.id).state == "done", 60, "the re-run")
        done = second.store.get(record.id)
        assert done.attempts == 2 and done.error is None and done.error_id is None
    finally:
        second.stop()


def test_readme_python_example_writes_pngs_that_keep_their_settings(model: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's high-level example, run as written on the demo model (tiny sizes): its PNGs carry metadata."""
    from PIL import Image

    from instantid import InstantID
    from instantid.io.outputs import METADATA_KEY

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### High-level API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "write_image(" in block and ".save(" not in block
    block = (block.replace('["me1.jpg", "me2.jpg", "me3.jpg"], pose="pose.jpg"', repr(str(FACE)))
                  .replace("num_images=2", "num_images=2, steps=1, width=64, height=64"))
    monkeypatch.setattr(InstantID, "from_pretrained", classmethod(lambda cls: model))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    written = sorted((tmp_path / "outputs").glob("*.png"))
    assert [p.name for p in written] == ["knight-7.png", "knight-8.png"]
    for path in written:
        with Image.open(path) as png:
            assert json.loads(png.text[METADATA_KEY])["settings"]["prompt"] == "a knight in armour"
