"""Face detail over HTTP (``/v1/detail``) and the group photo analysed once per ``/v1/group`` job, on the demo model.

A detail job's PNG is compared with the pass ``instantid detail`` runs (:func:`refine_faces`) on the same inputs:
equal pixels mean every photo and option reached the model. The group photo is counted through the face
analyzer: once at submit, never in the worker, also when the worker is another process rebuilding the job."""

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
from _service import serving, wait_for
from PIL import Image

from instantid.api.settings import GenerationSettings

OTHER = FACES / "obama_1.jpg"
GROUP = FACES / "group_two_people.jpg"
DETAIL = {"steps": "2", "seed": "3", "resolution": "64", "strength": "0.5"}



@pytest.fixture(scope="module")
def served(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    from instantid.service.server import ServerSettings, create_app

    out = tmp_path_factory.mktemp("jobs")
    settings = ServerSettings(out_dir=out, mount_ui=False, max_queued_jobs=4)
    with serving(create_app(settings, model=model)) as http:
        yield http, out


@pytest.fixture
def client(served: tuple[httpx.Client, Path]) -> httpx.Client:
    return served[0]


def upload(field: str, path: Path, name: str | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (name or path.name, path.read_bytes(), "application/octet-stream"))


def finished(response: httpx.Response) -> tuple[np.ndarray, dict]:
    assert response.status_code == 200, response.text
    out = response.json()
    with Image.open(BytesIO(base64.b64decode(out["images"][0].split(",", 1)[1]))) as png:
        return np.asarray(png.convert("RGB")), out["info"]


def count_analyses(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the pictures the face analyzer is asked about (every face search goes through analyze)."""
    seen: list[str] = []
    analyze = model.analyzer.analyze
    monkeypatch.setattr(model.analyzer, "analyze", lambda image, name=None: seen.append(name) or analyze(image, name))
    return seen


# ---- /v1/detail ----------------------------------------------------------------------------------------
def test_detail_is_the_cli_pass_and_keeps_the_rest_of_the_picture(client: httpx.Client, model: Any) -> None:
    from instantid.api.face_detail import FaceDetailOptions, refine_faces
    from instantid.faces import load_image

    files = [upload("face", FACE, "me.jpg"), upload("picture", OTHER, "picture.jpg")]
    image, info = finished(client.post("/v1/detail?wait=true", files=files, data={**DETAIL, "margin": "0.3"}))
    assert info["task"] == "face_detail" and info["source"] == "picture.jpg" and info["references"] == ["me.jpg"]
    assert info["face_detail"]["strength"] == 0.5 and info["face_detail"]["margin"] == 0.3
    assert info["settings"]["seed"] == 3
    picture = load_image(OTHER.read_bytes(), "picture.jpg")
    original = np.asarray(picture)
    assert image.shape == original.shape and (info["width"], info["height"]) == picture.size
    x1, y1, x2, y2 = info["face_detail"]["faces"][0]["crop_box"]
    outside = np.ones(original.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(image[outside], original[outside]) and not np.array_equal(image, original)
    identity = model.prepare_identity(FACE.read_bytes(), names=["me.jpg"])
    refined, _ = refine_faces(model, identity, [picture], GenerationSettings(steps=2, seed=3), [3],
                              FaceDetailOptions(strength=0.5, margin=0.3, resolution=64))
    assert np.array_equal(image, np.asarray(refined[0]))


def test_detail_json_names_the_picture_and_the_job_task(client: httpx.Client) -> None:
    body = {"faces": [base64.b64encode(FACE.read_bytes()).decode()], "picture": base64.b64encode(
            OTHER.read_bytes()).decode(), "picture_name": "holiday.jpg", "steps": 2, "resolution": 64}
    response = client.post("/v1/detail", json=body)
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"], timeout=120)
    assert status["status"] == "done" and status["task"] == "detail", status
    assert status["metadata"]["source"] == "holiday.jpg" and client.get(status["images"][0]).status_code == 200


@pytest.mark.parametrize(
    ("files", "data", "parts"),
    [
        ([("picture", NO_FACE)], {}, ["no face found in the picture edge_no_face_noise.png"]),
        ([], {}, ["'picture' field"]),
        ([("picture", OTHER)], {"strength": "0"}, ["strength must be between 0.05 and 1"]),
        ([("picture", OTHER)], {"max_faces": "0"}, ["max_faces must be between 1 and 16"]),
        ([("picture", OTHER)], {"resolution": "100"}, ["resolution must be a multiple of 8"]),
        ([("picture", OTHER)], {"width": "64", "height": "64"}, ["width is not used by /v1/detail"]),
        ([("picture", OTHER)], {"num_images": "2"}, ["num_images is not used by /v1/detail"]),
        ([("picture", OTHER)], {"face_detail_strength": "0.3"}, ["face_detail_strength is not used by /v1/detail"]),
        ([("picture", OTHER), ("pose", OTHER)], {}, ["unexpected file field 'pose' for /v1/detail"]),
        ([("picture", OTHER), ("picture", OTHER)], {}, ["picture: send one photo, got 2"]),
        ([("picture", OTHER)], {"blur": "1"}, ["unknown setting 'blur'"]),
        ([("picture", OTHER)], {"layout": "frontal"}, ["'layout' is not used by /v1/detail"]),
    ],
)
def test_detail_bad_input_is_422_naming_the_field_and_stores_nothing(
    served: tuple[httpx.Client, Path], files: list, data: dict, parts: list[str]
) -> None:
    client, out = served
    jobs_before = client.get("/v1/jobs").json()["total"]
    folders_before = sorted((out / "jobs").iterdir()) if (out / "jobs").is_dir() else []
    response = client.post("/v1/detail", files=[upload("face", FACE), *(upload(f, p) for f, p in files)],
                           data={"steps": "1", **data})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(part in detail for part in parts) and "\n" not in detail, detail
    assert client.get("/v1/jobs").json()["total"] == jobs_before
    assert (sorted((out / "jobs").iterdir()) if (out / "jobs").is_dir() else []) == folders_before


def test_detail_json_bad_picture_names_the_json_field(client: httpx.Client) -> None:
    face = base64.b64encode(FACE.read_bytes()).decode()
    response = client.post("/v1/detail", json={"faces": [face], "picture": "not base64!"})
    assert response.status_code == 422 and response.json()["detail"] == "picture is not valid base64"
    response = client.post("/v1/detail", json={"faces": [face]})
    assert response.status_code == 422 and "'picture' field" in response.json()["detail"]


def test_openapi_detail_fields_come_from_the_settings_and_detail_options(client: httpx.Client) -> None:
    from instantid.apps.detail import DetailOptions
    from instantid.apps.tasks import UNUSED_SETTINGS

    spec = client.get("/openapi.json").json()["paths"]["/v1/detail"]["post"]
    content = spec["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        properties = content[media]["schema"]["properties"]
        for name, info in {**GenerationSettings.model_fields, **DetailOptions.model_fields}.items():
            if name in UNUSED_SETTINGS["detail"]:
                assert name not in properties, (media, name)
            else:
                assert info.description in str(properties[name]), (media, name)
        assert properties["strength"]["minimum"] == 0.05 and properties["max_faces"]["maximum"] == 16
    assert content["multipart/form-data"]["schema"]["required"] == ["face", "picture"]
    assert {"202", "200", "429"} <= set(spec["responses"])


# ---- /v1/group: the group photo is analysed once ----------------------------------------------------------
def test_group_photo_is_analysed_once_per_job(client: httpx.Client, model: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count_analyses(model, monkeypatch)
    files = [upload("person0", FACE, "me.jpg"), upload("person1", OTHER, "obama.jpg"),
             upload("pose", GROUP, "group.jpg")]
    image, info = finished(client.post("/v1/group?wait=true", files=files,
                                       data={"steps": "2", "width": "64", "height": "64", "seed": "5"}))
    assert info["pose_from"] == "group.jpg"
    assert seen.count("group.jpg") == 1, seen  # at submit; the worker places the people with what it found


def test_a_worker_elsewhere_places_the_group_from_the_record(model: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from _service import Body, job_request

    from instantid.service.core import JobService, ServerSettings
    from instantid.service.jobs import SQLiteJobStore
    from instantid.service.runner import JobRunner
    from instantid.service.stored import load_prepared

    class Dispatched:  # stands in for RQ: the job goes to a worker process that has only the store and folder
        def __init__(self) -> None:
            self.jobs: list[str] = []

        def submit(self, job_id: str) -> None:
            self.jobs.append(job_id)

    store, dispatch = SQLiteJobStore(tmp_path / "jobs.sqlite3"), Dispatched()
    server = JobService(ServerSettings(out_dir=tmp_path), store, analyzer=model.analyzer, dispatch=dispatch)
    seen = count_analyses(model, monkeypatch)
    body = Body({"steps": "2", "width": "64", "height": "64", "seed": "5"},
                {"person0": [("me.jpg", FACE.read_bytes())], "person1": [("obama.jpg", OTHER.read_bytes())],
                 "pose": [("group.jpg", GROUP.read_bytes())]})
    record, _ = server.submit_request(job_request("group", body))
    faces, size = load_prepared(server.files, record.id).placement  # what a worker elsewhere reads
    assert size == Image.open(GROUP).size and len(faces) == 2
    worker = JobRunner(model, store, server.files)  # nothing in memory from the submit
    seen.clear()
    assert worker.run(store.start(record.id, "elsewhere")) == "done", store.get(record.id).error
    assert seen == [], seen  # the worker analyses no photo: people and placement come from the job folder
    with Image.open(server.files.image_path(record.id, 0)) as png:
        made = np.asarray(png.convert("RGB"))
    people = [model.prepare_identity(p.read_bytes()) for p in (FACE, OTHER)]
    direct = model.generate_group(people, GenerationSettings(steps=2, width=64, height=64, seed=5),
                                  pose=GROUP.read_bytes())
    assert np.array_equal(made, np.asarray(direct.images[0].convert("RGB")))


def test_detail_picture_is_analysed_once_per_job_here_and_in_a_worker_elsewhere(
        client: httpx.Client, model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The faces found at submit are the faces the pass redraws: the worker (this process's, or another one that
    has only the record and the job folder) never looks at the picture again, and draws the same pixels."""
    from _service import Body, job_request

    from instantid.service.core import JobService, ServerSettings
    from instantid.service.jobs import SQLiteJobStore
    from instantid.service.runner import JobRunner
    from instantid.service.stored import load_prepared

    seen = count_analyses(model, monkeypatch)
    files = [upload("face", FACE, "me.jpg"), upload("picture", OTHER, "pic.jpg")]
    here, _ = finished(client.post("/v1/detail?wait=true", files=files, data=DETAIL))
    assert seen.count("pic.jpg") == 1 and "generated image 1" not in seen, seen

    class Dispatched:  # stands in for RQ: the job goes to a worker that has only the store and folder
        def submit(self, job_id: str) -> None:
            pass

    seen.clear()
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    server = JobService(ServerSettings(out_dir=tmp_path), store, analyzer=model.analyzer, dispatch=Dispatched())
    body = Body(dict(DETAIL), {"face": [("me.jpg", FACE.read_bytes())], "picture": [("pic.jpg", OTHER.read_bytes())]})
    record, _ = server.submit_request(job_request("detail", body))
    assert len(load_prepared(server.files, record.id).picture_faces) == 1
    worker = JobRunner(model, store, server.files)  # nothing in memory from the submit
    assert worker.run(store.start(record.id, "elsewhere")) == "done", store.get(record.id).error
    assert seen.count("pic.jpg") == 1 and "generated image 1" not in seen, seen
    with Image.open(server.files.image_path(record.id, 0)) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), here)
