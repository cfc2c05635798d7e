"""The web UI mounted on `instantid serve` in the shared setups: behind API keys (gradio's login with a key's name
and the key; UI jobs owned by and counted against that key), with ``--queue redis://...`` (UI jobs run by an
``instantid worker`` process), and across a restart (a UI job queued when the server stopped runs after it).

The tabs' handlers are called as a click calls them, as the signed-in caller (:func:`instantid.webui.calling_as`);
that gradio hands the signed-in name to a job handler is checked with gradio's own argument injection."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _demo import CHROMIUM, CHROMIUM_ARGS, FACE, FACES, demo_model
from _service import serving, until, wait_for
from PIL import Image
from test_service_redis import REDIS, redis_url, start_worker  # noqa: F401  (redis_url is a fixture)

from instantid.errors import InvalidInputError
from instantid.service.auth import hash_key
from instantid.webui import Caller, calling_as

OTHER = FACES / "obama_1.jpg"
GROUP = FACES / "group_two_people.jpg"
ALICE, BOB = "alice-ui-key", "bob-ui-key"
FAST = {"steps": "2", "width": "64", "height": "64"}
SWAP = {"steps": 2, "seed": "3", "resolution": "64"}
WAIT = 90_000  # ms: analysis and a 2-step demo generation on a shared CPU



def pixels(path: Path | Any) -> np.ndarray:
    if isinstance(path, Path):
        with Image.open(path) as png:
            return np.asarray(png.convert("RGB"))
    return np.asarray(path.images[0].convert("RGB"))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, httpx.Client]]:
    from instantid.service.server import ServerSettings, create_app

    folder = tmp_path_factory.mktemp("keyed")
    keys = folder / "keys.txt"
    keys.write_text(f"alice {hash_key(ALICE)} jobs=1\nbob {hash_key(BOB)}\n")
    app = create_app(ServerSettings(out_dir=folder / "jobs", api_key_file=keys), model=model)
    with serving(app) as http:
        yield app, http


def test_ui_under_api_keys_signs_in_with_a_key_and_its_jobs_are_the_keys(keyed: tuple[Any, httpx.Client],
                                                                          model: Any) -> None:
    app, http = keyed
    assert http.get("/ui/config").status_code == 401  # nothing of the UI without a key
    assert http.post("/ui/login", data={"username": "alice", "password": BOB}).status_code == 400
    assert http.post("/ui/login", data={"username": "alice", "password": "alice-ui-kez"}).status_code == 400
    signed_in = http.post("/ui/login", data={"username": "alice", "password": ALICE})
    assert signed_in.status_code == 200 and signed_in.json() == {"success": True}
    assert http.get("/ui/config").status_code == 200  # the cookie gradio set opens the UI
    http.cookies.clear()

    tab = app.state.ui.instantid.tabs["portrait"]
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    values = {"steps": 2, "width": "64", "height": "64", "seed": "1"}
    with pytest.raises(InvalidInputError, match="sign in with an API key"):  # a handler reached without login
        tab.generate(photos, None, values)
    with calling_as(Caller("alice", "127.0.0.1")):
        tab.generate(photos, None, values)
    mine = http.get("/v1/jobs", headers=auth(ALICE)).json()["jobs"]
    assert len(mine) == 1 and mine[0]["status"] == "done" and mine[0]["seeds"] == [1]
    assert http.get("/v1/jobs", headers=auth(BOB)).json()["total"] == 0
    assert http.get(mine[0]["images"][0], headers=auth(ALICE)).status_code == 200

    # alice may have one job at a time: with one HTTP job waiting on the model, her UI job is refused.
    pool = ThreadPoolExecutor(1)
    with model._lock:
        files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))]
        first = http.post("/v1/generate", files=files, data=FAST, headers=auth(ALICE))
        assert first.status_code == 202, first.text

        def as_alice() -> Any:
            with calling_as(Caller("alice", "127.0.0.1")):
                return tab.generate(photos, None, values)

        from instantid.service.core import QueueFullError

        with pytest.raises(QueueFullError, match="already has 1 jobs"):
            pool.submit(as_alice).result(timeout=30)
        assert http.get("/v1/jobs", headers=auth(ALICE)).json()["total"] == 2  # refused before it was stored
    pool.shutdown(wait=True)
    assert wait_for(http, first.json()["job_id"], headers=auth(ALICE))["status"] == "done"


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
def test_browser_signs_in_with_a_key_and_the_click_is_the_keys_job(keyed: tuple[Any, httpx.Client]) -> None:
    from playwright.sync_api import sync_playwright

    app, http = keyed
    before = http.get("/v1/jobs", headers=auth(BOB)).json()["total"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{http.base_url}/ui/")
        page.locator("input[type=password]").wait_for(timeout=WAIT)  # gradio's login, nothing else
        assert page.locator("#generate").count() == 0
        page.locator("input[type=text]").first.fill("bob")
        page.locator("input[type=password]").fill(BOB)
        page.get_by_role("button", name="Login").click()
        page.locator("#generate").wait_for(timeout=WAIT)
        page.locator("#faces input[type=file]").set_input_files(str(FACE))
        page.locator("#reference-count").get_by_text("1 reference photo").wait_for(timeout=WAIT)
        page.get_by_text("Advanced").first.click()
        page.locator("#steps input[type=number]").fill("2")
        page.locator("#width textarea, #width input").first.fill("64")
        page.locator("#height textarea, #height input").first.fill("64")
        page.locator("#height textarea, #height input").first.blur()
        # gradio takes a typed number into the slider's state asynchronously: on a loaded machine a click right
        # after typing can send the old value, so wait until the slider shows it, as a person would see it.
        page.wait_for_function("document.querySelector('#steps input[type=range]').value === '2'", timeout=WAIT)
        page.locator("#generate").click()
        page.locator("#info").get_by_text("Saved as").wait_for(timeout=WAIT)
        browser.close()
    jobs = http.get("/v1/jobs", headers=auth(BOB)).json()
    assert jobs["total"] == before + 1 and jobs["jobs"][0]["status"] == "done"  # bob's job, listed under his key
    assert jobs["jobs"][0]["settings"]["steps"] == 2


def test_gradio_hands_the_signed_in_name_to_job_handlers(tmp_path: Path) -> None:
    import gradio as gr
    from gradio.helpers import special_args

    from instantid.webui import UIContext, current_caller

    seen: list[Any] = []

    def run(data: dict, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - gradio's own idiom
        seen.append((data, current_caller()))
        return "ok"

    handler = UIContext(get_model=lambda: None, out_dir=tmp_path).guard(run, job=True)
    inputs, progress_index, _, _ = special_args(handler, [{"steps": 2}], request=gr.Request(username="alice"))
    assert progress_index == 2 and handler(*inputs) == "ok"
    assert seen == [({"steps": 2}, Caller("alice", "unknown"))] and current_caller() is None


def test_ui_job_queued_at_a_restart_runs_after_it(model: Any, tmp_path: Path) -> None:
    from _service import Body, job_request

    from instantid.api.settings import settings_from_record
    from instantid.apps.tasks import prepare
    from instantid.service.core import JobService, ServerSettings
    from instantid.service.stored import load_prepared

    settings = ServerSettings(out_dir=tmp_path, mount_ui=False)
    first = JobService.start(settings, model)
    first.stop()  # no worker: the UI's jobs stay queued, as when a server dies before running them
    requests = {  # analysed as the UI analyses them (a swap's chosen face, a group photo's placement)
        "swap": Body({"steps": "2", "seed": "3", "resolution": "64"},
                     {"face": [("me.jpg", FACE.read_bytes())], "scene": [("scene.jpg", OTHER.read_bytes())]}),
        "group": Body({**FAST, "seed": "5"}, {"person0": [("a.jpg", FACE.read_bytes())],
                                              "person1": [("b.jpg", OTHER.read_bytes())],
                                              "pose": [("group.jpg", GROUP.read_bytes())]}),
        "detail": Body({"steps": "2", "seed": "4", "resolution": "64", "strength": "0.5"},
                       {"face": [("me.jpg", FACE.read_bytes())], "picture": [("pic.jpg", OTHER.read_bytes())]}),
    }
    jobs, expected = {}, {}
    for task, body in requests.items():
        request = job_request(task, body)  # type: ignore[arg-type]
        prepared = prepare(model.faces, request)
        jobs[task] = first.submit_prepared(prepared, request.settings).id
        expected[task] = pixels(prepared.run(model, request.settings))
        assert (tmp_path / "jobs" / jobs[task] / "inputs" / "prepared").is_file()
        kept = load_prepared(first.files, jobs[task])  # what a worker elsewhere reads: the faces found here
        assert [f.bbox for f in kept.picture_faces or ()] == [f.bbox for f in prepared.picture_faces or ()]
        assert (kept.target.bbox if kept.target else None) == (prepared.target.bbox if prepared.target else None)
    second = JobService.start(settings, model)  # a new process: nothing in memory, only the store and folders
    try:
        for task, job_id in jobs.items():
            record = until(lambda job_id=job_id: (r := second.store.get(job_id)).state in ("done", "failed") and r,
                           120, task)
            assert record.state == "done", record.error
            assert np.array_equal(pixels(second.files.image_path(job_id, 0)), expected[task]), task
        result = second.result(jobs["swap"])
        assert result.settings == settings_from_record(second.store.get(jobs["swap"]).request["settings"])
    finally:
        second.stop()


@pytest.mark.slow
@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server)")
def test_ui_job_through_redis_runs_on_a_worker_process(redis_url: str, tmp_path: Path,  # noqa: F811
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    from instantid.service.server import ServerSettings, create_app

    cache = tmp_path_factory.getbasetemp() / "demo"
    demo_model(cache)  # the weights the worker loads; the server itself loads only a face analyzer
    out = tmp_path / "jobs"
    worker = start_worker(redis_url, out, cache, tmp_path / "worker.log")
    settings = ServerSettings(out_dir=out, queue=redis_url, demo=True, demo_cache_dir=cache)
    try:
        app = create_app(settings)
        with serving(app) as http:
            until(lambda: worker.poll() is None and http.get("/ready").json().get("workers") == 1, 180, "the worker")
            assert app.state.service.model is None  # the UI analyses with the server's face analyzer
            tab = app.state.ui.instantid.tabs["swap"]
            photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
            scene, _, _ = tab.set_scene(str(OTHER))
            store = app.state.service.store
            gallery, _ = tab.swap(photos, None, scene, SWAP)
            (record,) = store.list(limit=10)[0]
            assert record.state == "done" and (out / "jobs" / record.id / "inputs" / "prepared").is_file(), record.error
            assert record.worker.endswith(f":{worker.pid}")  # run by the worker process, not the server
            made = pixels(out / "jobs" / record.id / "image-0.png")
            assert np.array_equal(made, pixels(Path(gallery[0][0])))
            # The same photos as an HTTP job, which the worker analyses itself: the same pixels.
            files = [("face", (FACE.name, FACE.read_bytes(), "image/jpeg")),
                     ("scene", (OTHER.name, OTHER.read_bytes(), "image/jpeg"))]
            response = http.post("/v1/swap?wait=true", files=files, data={k: str(v) for k, v in SWAP.items()})
            assert response.status_code == 200, response.text
            http_png = out / "jobs" / response.json()["job_id"] / "image-0.png"
            assert np.array_equal(made, pixels(http_png))
    finally:
        worker.terminate()
        worker.wait(30)
