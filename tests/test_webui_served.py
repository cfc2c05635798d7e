"""The web UI mounted on `instantid serve` (/ui): the Face swap, Several people and Face detail tabs submit their
work as jobs of the server's queue, like /v1/swap, /v1/group and /v1/detail, under the same limits.

The tabs' handlers are called as the browser's clicks call them (no browser): each run must add one job of its
task to the server's store, written into the job's own folder with the metadata and pixels the HTTP endpoint
gives for the same photos, and be refused like an HTTP client when the queue is full."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _demo import FACE, FACES
from _service import serving, until, wait_for
from PIL import Image

from instantid.io.outputs import METADATA_KEY, read_metadata

OTHER = FACES / "obama_1.jpg"
GROUP = FACES / "group_two_people.jpg"



@pytest.fixture(scope="module")
def served(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, httpx.Client]]:
    from instantid.service.server import ServerSettings, create_app

    app = create_app(ServerSettings(out_dir=tmp_path_factory.mktemp("jobs"), max_queued_jobs=1), model=model)
    with serving(app) as http:
        yield app, http


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB"))


def upload(field: str, path: Path) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (path.name, path.read_bytes(), "image/jpeg"))


def the_new_job(app: Any, run: Any) -> tuple[Any, list[Any]]:
    """Run a tab's handler; the one job it added to the server's store (finished) and the handler's gallery."""
    store = app.state.service.store
    before = {r.id for r in store.list(limit=100)[0]}
    gallery, _ = run()
    added = [r for r in store.list(limit=100)[0] if r.id not in before]
    assert len(added) == 1, "the tab did not submit exactly one job to the server's queue"
    return added[0], gallery


def same_as_http(app: Any, http: httpx.Client, record: Any, gallery: list[Any], endpoint: str, files: list,
                 data: dict[str, str]) -> dict:
    """The UI job's image (job folder and the UI's own copy) equals the HTTP endpoint's for the same inputs, and
    its metadata is the one the endpoint records; returns that metadata."""
    assert record.state == "done" and record.owner == "ui" and record.outputs == ["image-0.png"], record.error
    job_png = app.state.service.files.image_path(record.id, 0)
    made = pixels(job_png)
    assert np.array_equal(made, pixels(Path(gallery[0][0])))  # what the UI shows is the job's image
    response = http.post(f"/v1/{endpoint}?wait=true", files=files, data=data)
    assert response.status_code == 200, response.text
    with Image.open(BytesIO(http.get(response.json()["image_urls"][0]).content)) as png:
        assert np.array_equal(made, np.asarray(png.convert("RGB")))
        http_metadata = json.loads(png.text[METADATA_KEY])
    metadata = read_metadata(job_png)
    assert metadata == http_metadata  # what the PNG records, down to the sampler and the photo names
    return metadata


def test_ui_swap_is_a_swap_job_of_the_server(served: tuple[Any, httpx.Client]) -> None:
    app, http = served
    tab = app.state.ui.instantid.tabs["swap"]
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    scene, _, _ = tab.set_scene(str(OTHER))
    record, gallery = the_new_job(app, lambda: tab.swap(photos, None, scene, {"steps": 2, "seed": "3",
                                                                              "resolution": "64"}))
    assert record.request["task"] == "swap" and record.request["scene"] == OTHER.name
    metadata = same_as_http(app, http, record, gallery, "swap", [upload("face", FACE), upload("scene", OTHER)],
                            {"steps": "2", "seed": "3", "resolution": "64"})
    assert metadata["task"] == "swap" and metadata["swap"]["scene"] == OTHER.name


def test_ui_group_is_a_group_job_of_the_server(served: tuple[Any, httpx.Client]) -> None:
    app, http = served
    tab = app.state.ui.instantid.tabs["group"]
    a, *_ = tab.set_person([str(FACE)], 0)
    b, *_ = tab.set_person([str(OTHER)], 1)
    picture, _, _ = tab.set_group(str(GROUP))
    values = {"steps": 2, "seed": "5", "width": "64", "height": "64"}
    record, gallery = the_new_job(app, lambda: tab.generate([a, b], picture, values))
    assert record.request["task"] == "group" and record.request["people"] == [[FACE.name], [OTHER.name]]
    metadata = same_as_http(app, http, record, gallery, "group",
                            [upload("person0", FACE), upload("person1", OTHER), upload("pose", GROUP)],
                            {k: str(v) for k, v in values.items()})
    assert metadata["task"] == "group" and metadata["pose_from"] == GROUP.name


def test_ui_detail_is_a_detail_job_of_the_server(served: tuple[Any, httpx.Client]) -> None:
    app, http = served
    tab = app.state.ui.instantid.tabs["detail"]
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    picture, _, text = tab.set_picture(str(OTHER))
    assert text.startswith(f"**1 face** in {OTHER.name}")
    values = {"steps": 2, "seed": "3", "resolution": "64", "strength": 0.5}
    record, gallery = the_new_job(app, lambda: tab.detail(photos, None, picture, values))
    assert record.request["task"] == "detail" and record.request["picture"] == OTHER.name
    metadata = same_as_http(app, http, record, gallery, "detail", [upload("face", FACE), upload("picture", OTHER)],
                            {k: str(v) for k, v in values.items()})
    assert metadata["task"] == "face_detail" and metadata["source"] == OTHER.name


def test_ui_jobs_are_refused_when_the_queue_is_full(served: tuple[Any, httpx.Client], model: Any) -> None:
    from instantid.service.core import QueueFullError

    app, http = served
    group = app.state.ui.instantid.tabs["group"]
    a, *_ = group.set_person([str(FACE)], 0)
    b, *_ = group.set_person([str(OTHER)], 1)
    job = {"steps": "2", "width": "64", "height": "64"}
    pool = ThreadPoolExecutor(1)
    model._lock.acquire()  # one job waits on the model, one waits in the queue (max_queued_jobs=1)
    try:
        running = http.post("/v1/generate", files=[upload("face", FACE)], data=job).json()["job_id"]
        until(lambda: http.get(f"/v1/jobs/{running}").json()["status"] == "running", 30, "the first job")
        queued = http.post("/v1/generate", files=[upload("face", FACE)], data=job).json()["job_id"]
        total = http.get("/v1/jobs").json()["total"]
        # In a thread: a tab that went to the model itself would wait on the lock held here, not be refused.
        attempt = pool.submit(group.generate, [a, b], None, {"steps": 2, "width": "64", "height": "64"})
        with pytest.raises(QueueFullError, match="the queue is full"):
            attempt.result(timeout=30)
        assert http.get("/v1/jobs").json()["total"] == total  # refused before anything was stored
    finally:
        model._lock.release()
    pool.shutdown(wait=True)
    assert [wait_for(http, j, timeout=120)["status"] for j in (running, queued)] == ["done", "done"]


def test_served_ui_results_expire_with_the_jobs(model: Any, tmp_path: Path) -> None:
    """Under `serve`, /ui results go beside the jobs (not into a temporary folder nobody cleans) and the server's
    periodic cleanup deletes them after --keep-hours, like the jobs; gradio's cached copies expire too
    (issue 18 item 14)."""
    import os
    import time

    from instantid.service.server import ServerSettings, create_app

    keep_hours = 2 / 3600  # two seconds: the cleaner runs every second
    app = create_app(ServerSettings(out_dir=tmp_path, keep_hours=keep_hours), model=model)
    ctx = app.state.ui.instantid
    assert ctx.out_dir == tmp_path / "ui-results" and ctx.keep_s == 2
    assert app.state.ui.delete_cache == (60, 2)
    old, new = ctx.out_dir / "instantid-1.png", ctx.out_dir / "instantid-2.png"
    old.write_bytes(b"png")
    os.utime(old, (time.time() - 60, time.time() - 60))
    with serving(app):
        until(lambda: not old.exists(), 30, "the expired UI result to be removed")
        new.write_bytes(b"png")
        assert new.exists()  # a fresh one stays
