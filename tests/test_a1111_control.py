"""The A1111 / Forge routes around a generation over real HTTP on the demo model, driven by the webuiapi client:
options (per API key, never the server's own settings), progress, interrupt / skip (a running job stops at its
next step; a key stops only its own jobs) and the scripts list."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _demo import FACE
from _service import serving, until
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from instantid.service.a1111_options import OptionsUpdate
from instantid.service.auth import hash_key
from instantid.service.settings import ServerSettings

FACE_B64 = base64.b64encode(FACE.read_bytes()).decode()
STEPS = 50  # an interrupted job stops after its first; the whole run would take several seconds
KEYS = {"alice": "iid_alice-control-key", "bob": "iid_bob-control-key"}


def txt2img(steps: int = 2) -> dict[str, Any]:
    return {"prompt": "a knight", "steps": steps, "width": 64, "height": 64, "seed": 5, "alwayson_scripts": {
        "controlnet": {"args": [{"module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl",
                                 "image": FACE_B64}]}}}


def webui(http: httpx.Client, key: str | None = None) -> Any:
    import webuiapi

    api = webuiapi.WebUIApi(baseurl=str(http.base_url).rstrip("/") + "/sdapi/v1")
    if key is not None:
        api.set_auth("me", key)  # A1111's --api-auth: HTTP Basic, the key as the password
    return api


@pytest.fixture(scope="module")
def app(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from instantid.service.server import create_app

    return create_app(ServerSettings(out_dir=tmp_path_factory.mktemp("a1111-control"), mount_ui=False), model=model)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[httpx.Client]:
    with serving(app) as http:
        yield http


def running_job(http: httpx.Client, headers: dict[str, str] | None = None) -> dict[str, Any]:
    listed = lambda: http.get("/v1/jobs", params={"state": "running"}, headers=headers).json()["jobs"]  # noqa: E731
    return until(listed, what="a running job")[0]


def test_scripts_and_options_round_trip(client: httpx.Client) -> None:
    api = webui(client)
    assert api.get_scripts() == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    options = api.get_options()
    assert options["sd_model_checkpoint"].startswith("base [") and options["samples_format"] == "png"
    assert api.set_options(options) == {"ignored": []}  # what GET says is accepted back as is
    api.util_set_model("base")  # webuiapi picks the closest title and posts it
    assert api.util_get_current_model() == options["sd_model_checkpoint"]
    try:
        assert api.set_options({"samples_format": "jpg", "jpeg_quality": 90, "sd_vae": "x"}) == {"ignored": ["sd_vae"]}
        assert {k: api.get_options()[k] for k in ("samples_format", "jpeg_quality")} == {"samples_format": "jpg",
                                                                                        "jpeg_quality": 90}
        answer = client.post("/sdapi/v1/txt2img", json=txt2img())
        assert answer.status_code == 200, answer.text
        jpeg = base64.b64decode(answer.json()["images"][0])
        assert jpeg[:3] == b"\xff\xd8\xff"  # A1111's samples_format: a JPEG, its infotext in EXIF UserComment
        with Image.open(io.BytesIO(jpeg)) as image:
            comment = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        assert comment.startswith(b"UNICODE\0") and "Seed: 5" in comment[8:].decode("utf-16-be")
    finally:
        api.set_options({"samples_format": "png"})
    assert base64.b64decode(client.post("/sdapi/v1/txt2img", json=txt2img()).json()["images"][0])[:4] == b"\x89PNG"


@pytest.mark.parametrize(("body", "message"), [
    ({"jpeg_quality": "90"}, "jpeg_quality: Input should be a valid integer"),
    ({"jpeg_quality": True}, "jpeg_quality: Input should be a valid integer"),
    ({"samples_format": "gif"}, "samples_format: Input should be 'png', 'jpg', 'jpeg' or 'webp'"),
    ({"samples_format": "webp", "jpeg_quality": 0}, "jpeg_quality: Input should be greater than or equal to 1"),
    ({"sd_model_checkpoint": "sd_xl_turbo [abc]"}, "sd_model_checkpoint: unknown model 'sd_xl_turbo [abc]'"),
    ({"sd_checkpoint_hash": "0" * 10}, "sd_checkpoint_hash is read-only"),
    ({"CLIP_stop_at_last_layers": 2}, "CLIP_stop_at_last_layers: this server runs 1 only"),
    ([{"samples_format": "jpg"}], "the JSON body must be an object"),
])
def test_a_wrong_option_is_one_line_422_and_sets_nothing(client: httpx.Client, body: Any, message: str) -> None:
    before = client.get("/sdapi/v1/options").json()
    answer = client.post("/sdapi/v1/options", json=body)
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
    assert "\n" not in answer.json()["detail"] and client.get("/sdapi/v1/options").json() == before


JSON_VALUES = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=2)
OPTION_NAMES = (st.sampled_from(sorted(ServerSettings.model_fields))  # the server's own settings, by name
                | st.sampled_from(["api_auth", "api_enable_requests", "api_forbid_local_requests", "outdir_samples"])
                | st.text(min_size=1, max_size=12)).filter(lambda name: name not in OptionsUpdate.model_fields)


@given(body=st.dictionaries(OPTION_NAMES, JSON_VALUES, max_size=6))
@settings(max_examples=25, deadline=None)
def test_options_it_does_not_have_are_ignored_and_named_never_applied(app: Any, client: httpx.Client,
                                                                     body: dict) -> None:
    """A1111's other options, and every name of the server's own settings (keys, limits, paths), change nothing:
    the server's settings stay as started and GET options stays as it was."""
    server_settings = app.state.settings.model_dump()
    before = client.get("/sdapi/v1/options").json()
    answer = client.post("/sdapi/v1/options", json=body)
    assert answer.status_code == 200 and answer.json() == {"ignored": sorted(body)}, answer.text
    assert client.get("/sdapi/v1/options").json() == before and app.state.settings.model_dump() == server_settings


def test_interrupt_stops_the_running_job_at_its_next_step(app: Any, client: httpx.Client, model: Any) -> None:
    api = webui(client)
    with ThreadPoolExecutor(1) as pool, model._lock:  # the worker claims the job and waits for the model
        waiting: Future = pool.submit(client.post, "/sdapi/v1/txt2img", json=txt2img(STEPS))
        job = running_job(client)
        app.state.service.store.update(job["job_id"], step=30, total=STEPS)  # as the runner reports step 30
        progress = api.get_progress()
        assert progress["state"]["job"] == job["job_id"] and progress["state"]["job_count"] == 1
        assert (progress["state"]["sampling_step"], progress["state"]["sampling_steps"]) == (30, STEPS)
        assert progress["progress"] == 0.6 and progress["eta_relative"] >= 0  # from the time spent so far
        assert len(progress["state"]["job_timestamp"]) == 14  # A1111's %Y%m%d%H%M%S of the start
        assert not progress["state"]["interrupted"] and progress["current_image"] is None
        assert api.interrupt() == {}
        assert api.get_progress()["state"]["interrupted"]  # asked; it stops at its next step
    answer = waiting.result(timeout=60)
    assert answer.status_code == 409 and answer.json()["status"] == "canceled", answer.text
    status = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert status["status"] == "canceled" and status["images"] == []
    assert (status["step"], status["total"]) == (1, STEPS)  # its first step ran, not the other 49
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["state"]["job"] == ""
    assert api.interrupt() == {} and api.skip() is None  # nothing running: nothing to stop, as in A1111


def test_a_key_stops_and_sets_only_its_own(model: Any, tmp_path: Path) -> None:
    from instantid.service.server import create_app

    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{name} {hash_key(key)}\n" for name, key in KEYS.items()))
    settings = ServerSettings(out_dir=tmp_path / "jobs", api_key_file=keys, mount_ui=False)
    alice_auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    with serving(create_app(settings, model=model)) as http:
        alice, bob = webui(http, KEYS["alice"]), webui(http, KEYS["bob"])
        for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/options"):
            assert http.post(path, json={}).status_code == 401
        assert http.get("/sdapi/v1/scripts").status_code == 401
        assert bob.set_options({"samples_format": "webp"}) == {"ignored": []}
        assert (alice.get_options()["samples_format"], bob.get_options()["samples_format"]) == ("png", "webp")
        with ThreadPoolExecutor(1) as pool, model._lock:
            waiting: Future = pool.submit(http.post, "/sdapi/v1/txt2img", json=txt2img(STEPS), headers=alice_auth)
            job = running_job(http, alice_auth)
            assert bob.get_progress()["state"]["job_count"] == 0  # bob neither sees alice's job
            assert bob.interrupt() == {} and bob.skip() is None  # nor stops it
            assert not alice.get_progress()["state"]["interrupted"]
            assert alice.skip() is None and alice.get_progress()["state"]["interrupted"]
        answer = waiting.result(timeout=60)
        assert answer.status_code == 409 and answer.json()["job_id"] == job["job_id"]
        status = http.get(f"/v1/jobs/{job['job_id']}", headers=alice_auth).json()
        assert status["status"] == "canceled" and status["step"] == 1
