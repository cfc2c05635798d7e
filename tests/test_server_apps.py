"""The applications over HTTP (issue 11): layout and mix on /v1/generate, /v1/swap, /v1/group, face detail.

Each job's PNG is compared with the same call through the Python API on the same demo model: equal pixels mean
the server passed every photo, weight, layout and option through (and rebuilt them after a restart)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _demo import FACE, FACES, NO_FACE
from _service import Body, job_request, serving, until
from PIL import Image

from instantid.api.settings import GenerationSettings, settings_from_record
from instantid.apps.layouts import layout_names, with_layout
from instantid.service.jobs import FINISHED

OTHER = FACES / "obama_1.jpg"
GROUP = FACES / "group_two_people.jpg"
FAST = {"steps": "2", "width": "64", "height": "64", "seed": "5"}
SETTINGS = GenerationSettings(steps=2, width=64, height=64, seed=5)



@pytest.fixture(scope="module")
def client(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("jobs"), mount_ui=False, max_queued_jobs=4)
    with serving(create_app(settings, model=model)) as http:
        yield http


def upload(field: str, path: Path, name: str | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (name or path.name, path.read_bytes(), "image/jpeg"))


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def finished(response: httpx.Response) -> tuple[np.ndarray, dict]:
    """The first image (pixels) and the info of a ``?wait=true`` answer."""
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["status"] == "done", out
    with Image.open(BytesIO(base64.b64decode(out["images"][0].split(",", 1)[1]))) as png:
        return np.asarray(png.convert("RGB")), out["info"]


def pixels(result: Any) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"))


def refused(response: httpx.Response, *parts: str) -> str:
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    for part in parts:
        assert part in detail, detail
    return detail


# ---- /v1/generate: layout and mix -------------------------------------------------------------------------
def test_generate_with_mix_and_layout_is_the_python_api_call(client: httpx.Client, model: Any) -> None:
    files = [upload("face", FACE, "me.jpg"), upload("mix", OTHER, "other.jpg")]
    data = {**FAST, "layout": "three-quarter-left", "mix_weight": "0.3"}
    image, info = finished(client.post("/v1/generate?wait=true", files=files, data=data))
    assert info["mixed_with"] == [{"name": "other.jpg", "weight": 0.3}]
    assert info["pose_from"] == "layout:three-quarter-left" and info["task"] == "generate"
    me = model.prepare_identity(FACE.read_bytes(), names=["me.jpg"])
    mixed = with_layout(me.mix(model.prepare_identity(OTHER.read_bytes()), 0.3), "three-quarter-left", 64, 64)
    assert np.array_equal(image, pixels(model.generate(mixed, SETTINGS)))
    # The mix and the layout each change the picture (so the equality above is not trivially true).
    plain, _ = finished(client.post("/v1/generate?wait=true", files=files[:1], data={**FAST, "layout": "frontal"}))
    assert not np.array_equal(image, plain)
    # The layout's pose alone (same mix, no face-region mask that would move with it) reaches the picture.
    unmasked = {**data, "enhance_face_region": "false"}
    turned, _ = finished(client.post("/v1/generate?wait=true", files=files, data=unmasked))
    frontal, _ = finished(client.post("/v1/generate?wait=true", files=files, data={**unmasked, "layout": "frontal"}))
    assert np.abs(turned.astype(float) - frontal).mean() > 1


def test_generate_json_mix_and_layout(client: httpx.Client) -> None:
    body = {"faces": [b64(FACE)], "mix": [{"photo": b64(OTHER), "weight": 0.6, "name": "obama.jpg"}],
            "layout": "frontal", "steps": 2, "width": 64, "height": 64}
    _, info = finished(client.post("/v1/generate?wait=true", json=body))
    assert info["mixed_with"] == [{"name": "obama.jpg", "weight": 0.6}] and info["pose_from"] == "layout:frontal"


def test_face_detail_flows_through_the_settings(client: httpx.Client) -> None:
    _, info = finished(client.post("/v1/generate?wait=true", files=[upload("face", FACE)],
                                   data={**FAST, "face_detail": "true", "face_detail_strength": "0.35"}))
    assert info["settings"]["face_detail"] is True and info["face_detail"]["strength"] == 0.35


@pytest.mark.parametrize(
    ("files", "data", "parts"),
    [
        ([], {"layout": "sideways"}, ["unknown layout 'sideways'", *layout_names()]),
        ([("pose", FACE)], {"layout": "frontal"}, ["pose photo or a layout, not both"]),
        ([("mix", OTHER)], {"mix_weight": "1.5"}, ["mix_weight must be between 0 and 1", "1.5"]),
        ([("mix", OTHER)], {"mix_weight": "lots"}, ["mix_weight input should be a valid number"]),
        ([("mix", OTHER)], {}, ["mix_weight: send one per mix photo (1 photo(s), 0 weight(s))"]),
        ([("mix", NO_FACE)], {"mix_weight": "0.5"}, ["no face found in edge_no_face_noise.png"]),
        ([("scene", OTHER)], {}, ["unexpected file field 'scene' for /v1/generate"]),
    ],
)
def test_generate_bad_layout_or_mix_is_422_naming_the_field(
    client: httpx.Client, files: list, data: dict, parts: list[str]
) -> None:
    sent = [upload("face", FACE), *(upload(field, path) for field, path in files)]
    response = client.post("/v1/generate", files=sent, data={**FAST, **data})
    assert response.status_code == 422
    refused(response, *parts)


def test_generate_json_bad_mix_weight_names_the_json_field(client: httpx.Client) -> None:
    body = {"faces": [b64(FACE)], "mix": [{"photo": b64(OTHER), "weight": 2}]}
    refused(client.post("/v1/generate", json=body), "mix[0].weight must be between 0 and 1")
    body = {"faces": [b64(FACE)], "mix": [{"photo": "not base64!", "weight": 0.5}]}
    refused(client.post("/v1/generate", json=body), "mix[0].photo is not valid base64")


def test_openapi_shows_layouts_and_mix(client: httpx.Client) -> None:
    content = client.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
    form = content["multipart/form-data"]["schema"]["properties"]
    assert {"face", "pose", "mix", "mix_weight", "layout"} <= set(form)
    assert set(layout_names()) <= set(str(form["layout"]).replace("'", " ").split())
    assert "mix" in content["application/json"]["schema"]["properties"]
    assert client.get("/v1/models").json()["layouts"] == list(layout_names())


# ---- /v1/swap ------------------------------------------------------------------------------------------
SWAP = {"steps": "2", "seed": "3", "resolution": "64", "strength": "0.6", "head_margin": "0.2"}


def test_swap_is_the_python_api_call_and_keeps_the_rest_of_the_scene(client: httpx.Client, model: Any) -> None:
    from instantid.apps.swap import SwapOptions, swap_face

    files = [upload("face", FACE, "me.jpg"), upload("scene", OTHER, "scene.jpg")]
    image, info = finished(client.post("/v1/swap?wait=true", files=files, data=SWAP))
    assert info["task"] == "swap" and info["references"] == ["me.jpg"]
    assert info["swap"]["scene"] == "scene.jpg" and info["swap"]["head_margin"] == 0.2
    assert info["pose_from"] == "scene.jpg (face 0)" and info["swap"]["strength"] == 0.6
    scene = np.asarray(Image.open(OTHER).convert("RGB"))
    assert image.shape == scene.shape
    x1, y1, x2, y2 = info["swap"]["crop_box"]
    outside = np.ones(scene.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(image[outside], scene[outside]) and not np.array_equal(image, scene)
    options = SwapOptions(resolution=64, strength=0.6, head_margin=0.2)
    direct = swap_face(model, model.prepare_identity(FACE.read_bytes()), OTHER.read_bytes(),
                       GenerationSettings(steps=2, seed=3), options, scene_name="scene.jpg")
    assert np.array_equal(image, pixels(direct))


def test_swap_json_with_mix_and_idempotency(client: httpx.Client) -> None:
    body = {"faces": [b64(FACE)], "scene": b64(OTHER), "scene_name": "party.jpg", "steps": 2, "resolution": 64,
            "mix": [{"photo": b64(OTHER), "weight": 0.25}]}
    headers = {"Idempotency-Key": "swap-1"}
    first = client.post("/v1/swap?wait=true", json=body, headers=headers)
    _, info = finished(first)
    assert info["swap"]["scene"] == "party.jpg" and info["mixed_with"] == [{"name": "mix[0]", "weight": 0.25}]
    again = client.post("/v1/swap", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
    status = client.get(again.json()["status_url"]).json()
    assert status["task"] == status["metadata"]["task"] == "swap"
    assert client.get(status["images"][0]).status_code == 200


@pytest.mark.parametrize(
    ("scene", "data", "parts"),
    [
        (NO_FACE, {}, ["no face found in the scene photo edge_no_face_noise.png"]),
        (OTHER, {"target_index": "3"}, ["face index 3 is out of range"]),
        (OTHER, {"width": "64", "height": "64"}, ["width is not used by /v1/swap"]),
        (OTHER, {"face_detail": "true"}, ["face_detail is not used by /v1/swap"]),
        (OTHER, {"head_margin": "5"}, ["head_margin must be between 0 and 2"]),
        (OTHER, {"resolution": "100"}, ["resolution"]),
        (OTHER, {"layout": "frontal"}, ["'layout' is not used by /v1/swap"]),
        (None, {}, ["'scene' field"]),
    ],
)
def test_swap_bad_input_is_422_naming_the_field(
    client: httpx.Client, scene: Path | None, data: dict, parts: list[str]
) -> None:
    files = [upload("face", FACE)] + ([upload("scene", scene)] if scene else [])
    response = client.post("/v1/swap", files=files, data={"steps": "1", **data})
    assert response.status_code == 422
    refused(response, *parts)


def test_openapi_swap_fields_come_from_the_settings_and_swap_options(client: httpx.Client) -> None:
    from instantid.apps.swap import SwapOptions
    from instantid.apps.tasks import UNUSED_SETTINGS

    content = client.get("/openapi.json").json()["paths"]["/v1/swap"]["post"]["requestBody"]["content"]
    assert not set(SwapOptions.model_fields) & set(GenerationSettings.model_fields)  # one namespace for both
    for media in ("multipart/form-data", "application/json"):
        properties = content[media]["schema"]["properties"]
        for name, info in {**GenerationSettings.model_fields, **SwapOptions.model_fields}.items():
            if name in UNUSED_SETTINGS["swap"]:
                assert name not in properties, (media, name)
            else:
                assert info.description in str(properties[name]), (media, name)
    assert {"face", "scene"} <= set(content["multipart/form-data"]["schema"]["properties"])


# ---- /v1/group -----------------------------------------------------------------------------------------
def test_group_is_the_python_api_call(client: httpx.Client, model: Any) -> None:
    files = [upload("person0", FACE, "me.jpg"), upload("person1", OTHER, "obama.jpg"),
             upload("pose", GROUP, "group.jpg")]
    image, info = finished(client.post("/v1/group?wait=true", files=files, data=FAST))
    assert info["task"] == "group" and info["pose_from"] == "group.jpg"
    assert [p["references"] for p in info["people"]] == [["me.jpg"], ["obama.jpg"]]
    people = [model.prepare_identity(p.read_bytes()) for p in (FACE, OTHER)]
    direct = model.generate_group(people, SETTINGS, pose=GROUP.read_bytes())
    assert np.array_equal(image, pixels(direct))
    swapped = model.generate_group(people[::-1], SETTINGS, pose=GROUP.read_bytes())
    assert not np.array_equal(image, pixels(swapped))  # who stands where is carried, not only who
    unposed = model.generate_group(people, SETTINGS.updated(identitynet_strength=0.0), pose=GROUP.read_bytes())
    assert np.abs(image.astype(float) - pixels(unposed)).max() > 10  # the group's keypoints reach IdentityNet


def test_group_json_side_by_side(client: httpx.Client) -> None:
    body = {"people": [[b64(FACE)], [b64(OTHER), b64(FACES / "obama_2.jpg")]], "steps": 1, "width": 64,
            "height": 64}
    _, info = finished(client.post("/v1/group?wait=true", json=body))
    assert info["pose_from"] == "columns"
    assert [p["references"] for p in info["people"]] == [["people[0][0]"], ["people[1][0]", "people[1][1]"]]


@pytest.mark.parametrize(
    ("files", "data", "parts"),
    [
        ([("person0", FACE), ("person1", OTHER), ("pose", FACE)], {}, ["pose: face.jpg shows 1 face(s) but 2 people"]),
        ([("person0", FACE), ("person2", OTHER)], {}, ["person1: send people as person0, person1, ... without gaps"]),
        ([("person0", FACE), ("person1", NO_FACE)], {}, ["no face found in edge_no_face_noise.png"]),
        ([("person0", FACE), ("person1", OTHER)], {"face_detail": "true"}, ["face_detail is not used by /v1/group"]),
        ([("person0", FACE), ("person1", OTHER), ("face", OTHER)], {}, ["unexpected file field 'face' for /v1/group"]),
        # One rule for the number of people on every surface (issue 18 item 3).
        ([("person0", FACE)], {}, ["takes 2 to 4 people (person0, person1, ...), got 1"]),
        ([(f"person{i}", FACE) for i in range(5)], {}, ["takes 2 to 4 people (person0, person1, ...), got 5"]),
    ],
)
def test_group_bad_input_is_422_naming_the_field(
    client: httpx.Client, files: list, data: dict, parts: list[str]
) -> None:
    sent = [upload(field, path) for field, path in files]
    response = client.post("/v1/group", files=sent, data={"steps": "1", **data})
    assert response.status_code == 422
    refused(response, *parts)


def test_group_json_needs_people(client: httpx.Client) -> None:
    refused(client.post("/v1/group", json={"steps": 1}), "send the 'people' field")
    refused(client.post("/v1/group", json={"people": [[]]}), "people[0] list should have at least 1 item")
    refused(client.post("/v1/group", files=[upload("pose", GROUP)]), "takes 2 to 4 people (person0, person1, ...), "
                                                                      "got 0")
    refused(client.post("/v1/group", json={"people": [[b64(FACE)]]}), "takes 2 to 4 people (one list of photos per "
                                                                      "person), got 1")


# ---- restart: a job is rebuilt from its record and the photos in its folder ---------------------------------
def test_queued_jobs_of_every_task_run_after_a_restart(model: Any, tmp_path: Path) -> None:

    from instantid.service.core import JobService, ServerSettings

    def photo(path: Path, name: str | None = None) -> tuple[str, bytes]:
        return (name or path.name, path.read_bytes())

    settings = ServerSettings(out_dir=tmp_path, mount_ui=False)
    first = JobService.start(settings, model)
    first.stop()  # no worker: the jobs stay queued, as when a server dies before running them
    requests = {
        "generate": Body({**FAST, "layout": "three-quarter-right", "mix_weight": ["0.4"]},
                         {"face": [photo(FACE)], "mix": [photo(OTHER)]}),
        "swap": Body({"steps": "2", "seed": "3", "resolution": "64"}, {"face": [photo(FACE)],
                                                                        "scene": [photo(OTHER, "scene.jpg")]}),
        "group": Body(dict(FAST), {"person0": [photo(FACE)], "person1": [photo(OTHER)], "pose": [photo(GROUP)]}),
        "detail": Body({"steps": "2", "seed": "3", "resolution": "64"}, {"face": [photo(FACE)],
                                                                          "picture": [photo(OTHER, "pic.jpg")]}),
    }
    expected, jobs = {}, {}
    for task, body in requests.items():
        record, _ = first.submit_request(job_request(task, body))  # type: ignore[arg-type]
        jobs[task] = record.id
        # What the first process prepared and would have run: the reference pixels.
        expected[task] = pixels(first.runner.prepared_jobs[record.id].run(
            model, settings_from_record(record.request["settings"])))
    second = JobService.start(settings, model)  # a new process: nothing in memory, only the store and folders
    try:
        for task, job_id in jobs.items():
            record = until(lambda job_id=job_id: (r := second.store.get(job_id)).state in FINISHED and r, 120, task)
            assert record.state == "done", record.error
            assert record.metadata["task"] == {"detail": "face_detail"}.get(task, task)
            with Image.open(second.files.image_path(job_id, 0)) as png:
                assert np.array_equal(np.asarray(png.convert("RGB")), expected[task]), task
        assert second.store.get(jobs["generate"]).metadata["mixed_with"] == [{"name": "obama_1.jpg", "weight": 0.4}]
    finally:
        second.stop()


def test_the_analysed_job_is_kept_exactly(model: Any, tmp_path: Path) -> None:
    """The one form a job waits in (HTTP and web UI jobs alike): every field of every identity and face comes
    back from the job folder as analysed, so a worker elsewhere runs what was checked at submit."""
    from dataclasses import fields

    from instantid.apps.tasks import prepare
    from instantid.service.jobs import JobFiles
    from instantid.service.stored import load_prepared, save_prepared

    body = Body(dict(FAST), {"face": [photo_of(FACE, "me.jpg"), photo_of(OTHER, "obama.jpg")],
                             "mix": [photo_of(FACES / "obama_2.jpg")]})
    body.fields.append(("mix_weight", "0.3"))
    prepared = prepare(model.faces, job_request("generate", body))
    files = JobFiles(tmp_path)
    job_id = "0" * 32
    save_prepared(files, job_id, prepared)
    kept, analysed = load_prepared(files, job_id).identity, prepared.identity
    assert analysed.references[0].sha256 and analysed.mixed_with  # the fields below are not trivially empty
    for field in fields(analysed):
        a, b = getattr(kept, field.name), getattr(analysed, field.name)
        if field.name == "references":
            for ka, kb in zip(a, b, strict=True):
                assert all(getattr(ka, f.name) == getattr(kb, f.name) for f in fields(ka) if f.name != "face")
                assert ka.face.to_dict() == kb.face.to_dict()
        elif field.name == "pose_face":
            assert a.to_dict() == b.to_dict()
        elif field.name == "embedding":
            assert a.dtype == b.dtype and np.array_equal(a, b)
        elif field.name == "control_photo":  # a picture: kept as a PNG beside the identity
            assert (a is None) == (b is None) and (a is None or np.array_equal(np.asarray(a), np.asarray(b)))
        else:
            assert a == b, field.name


def photo_of(path: Path, name: str | None = None) -> tuple[str, bytes]:
    return (name or path.name, path.read_bytes())


class Dispatched:
    """Stands in for the RQ dispatch of a ``--queue`` server: records which jobs were handed to the workers."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def submit(self, job_id: str) -> None:
        self.jobs.append(job_id)


def test_queue_server_checks_faces_with_the_analyzer_and_a_worker_rebuilds_the_job(model: Any, tmp_path: Path
                                                                                    ) -> None:

    from instantid.errors import InvalidInputError, NoFaceError
    from instantid.service.core import JobService, ServerSettings
    from instantid.service.jobs import SQLiteJobStore
    from instantid.service.runner import JobRunner

    store, dispatch = SQLiteJobStore(tmp_path / "jobs.sqlite3"), Dispatched()
    server = JobService(ServerSettings(out_dir=tmp_path), store, analyzer=model.analyzer, dispatch=dispatch)
    bad_scene = Body({"steps": "2"}, {"face": [("me.jpg", FACE.read_bytes())],
                                      "scene": [("noise.png", NO_FACE.read_bytes())]})
    with pytest.raises(NoFaceError, match="scene photo noise.png"):
        server.submit_request(job_request("swap", bad_scene))
    crowded = Body({"steps": "2"}, {"person0": [("a.jpg", FACE.read_bytes())], "person1": [("b.jpg",
                                    OTHER.read_bytes())], "pose": [("solo.jpg", FACE.read_bytes())]})
    with pytest.raises(InvalidInputError, match="pose: solo.jpg shows 1 face"):
        server.submit_request(job_request("group", crowded))
    assert dispatch.jobs == [] and store.counts()["queued"] == 0  # nothing stored for refused jobs
    good = Body({"steps": "2", "seed": "3", "resolution": "64"},
                {"face": [("me.jpg", FACE.read_bytes())], "scene": [("scene.jpg", OTHER.read_bytes())]})
    record, created = server.submit_request(job_request("swap", good))
    assert created and dispatch.jobs == [record.id]
    worker = JobRunner(model, store, server.files)  # another process: only the store and the job folder
    assert worker.run(store.start(record.id, "elsewhere")) == "done", store.get(record.id).error
    assert store.get(record.id).metadata["swap"]["scene"] == "scene.jpg"
