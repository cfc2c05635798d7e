"""The HTTP request and response shapes. The generation fields ARE :class:`GenerationSettings` (and the swap
fields :class:`~instantid.apps.swap.SwapOptions`, the face-detail fields
:class:`~instantid.apps.detail.DetailOptions`): the JSON bodies are built from their ``model_fields`` and the
multipart forms from the JSON bodies, so OpenAPI shows every knob with its description, range and choices
(styles, schedulers, layouts), and a knob added in ``settings.py``, ``swap.py`` or ``detail.py`` appears here.

Photos: multipart file fields (``face``, ``pose``, ``mix`` with one ``mix_weight`` each, ``scene``, ``picture``,
``person0``, ``person1``, ...) or base64 strings in JSON under the same names (``face`` a list, ``pose``,
``mix: [{photo, weight}]``, ``scene``, ``picture``; ``people: [[...], ...]`` for the ``personN`` fields). ``faces``,
the JSON name before 0.2, is still read as ``face`` in both. :func:`job_request` turns either into a checked
:class:`~instantid.apps.tasks.JobRequest`."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field, create_model
from starlette.datastructures import UploadFile

from instantid.api.settings import MAX_PEOPLE, MIN_PEOPLE, GenerationSettings, check_people, make_settings
from instantid.api.style_images import MAX_STYLE_IMAGES
from instantid.apps.detail import DetailOptions, make_detail_options
from instantid.apps.layouts import layout_names
from instantid.apps.swap import SwapOptions, make_swap_options
from instantid.apps.tasks import UNUSED_SETTINGS, JobRequest, Mix, Photo, TaskKind
from instantid.errors import InvalidInputError
from instantid.service.jobs import JobState

MAX_FACES = 8  # photos of one person
MAX_MIXES = 4
MAX_FILES = 32  # file parts in one multipart body
PERSON_FIELD = re.compile(r"person([0-9]{1,2})")
FILE_FIELDS = ("face", "faces", "pose", "mix", "scene", "picture", "init_image", "style_image")  # plus person<i>
LayoutName = Literal[layout_names()]  # type: ignore[valid-type]
STYLE_IMAGE_HELP = (f"Style reference picture(s), at most {MAX_STYLE_IMAGES} (InstantStyle; base64 in JSON): the "
                    "picture takes their style at style_strength, the face keeps the identity.")


class MixJSON(BaseModel):
    photo: str = Field(description="Base64-encoded photo of the person mixed in.")
    weight: float = Field(ge=0, le=1, description="0 = the main person, 1 = this one.")
    name: str | None = Field(None, description="Name for the photo in messages and metadata.")


class GenerateJSON(GenerationSettings):
    """``application/json`` body: the generation settings plus base64 photos (data URIs accepted)."""

    face: list[str] = Field(..., min_length=1, max_length=MAX_FACES,
                            description="Base64-encoded face photo(s) of one person; several are fused ('faces' "
                                        "is read as this too).")
    face_names: list[str] | None = Field(None, description="Names for the photos in messages and metadata.")
    pose: str | None = Field(None, description="Base64-encoded pose photo (keypoints and size from here).")
    layout: LayoutName | None = Field(None, description="A bundled keypoint layout instead of a pose photo.")
    mix: list[MixJSON] | None = Field(None, max_length=MAX_MIXES, description="Other people mixed into this one.")
    init_image: str | None = Field(None, description="Base64-encoded picture to start from (image-to-image; "
                                   "denoising_strength says how much of it is redrawn).")
    style_image: str | list[str] | None = Field(None, description=STYLE_IMAGE_HELP)


def _settings_fields(task: TaskKind) -> dict[str, Any]:
    """The generation settings a task uses, as ``create_model`` field definitions."""
    return {name: (info.annotation, info) for name, info in GenerationSettings.model_fields.items()
            if name not in UNUSED_SETTINGS[task]}


SwapJSON = create_model(
    "SwapJSON", __doc__="``application/json`` body of /v1/swap: settings, swap options and base64 photos.",
    face=(list[str], Field(..., min_length=1, max_length=MAX_FACES,
                            description="Base64-encoded face photo(s) of the person put in; several are fused.")),
    face_names=(list[str] | None, Field(None, description="Names for the photos in messages and metadata.")),
    scene=(str, Field(..., description="Base64-encoded picture whose face is replaced.")),
    scene_name=(str | None, Field(None, description="Name for the scene in messages and metadata.")),
    mix=(list[MixJSON] | None, Field(None, max_length=MAX_MIXES, description="Other people mixed in.")),
    **_settings_fields("swap"), **{name: (info.annotation, info) for name, info in SwapOptions.model_fields.items()},
)
GroupJSON = create_model(
    "GroupJSON", __doc__="``application/json`` body of /v1/group: settings and base64 photos per person.",
    people=(list[list[str]], Field(..., min_length=MIN_PEOPLE, max_length=MAX_PEOPLE,
                                   description="Per person, base64-encoded photo(s); left to right.")),
    pose=(str | None, Field(None, description="Base64-encoded group photo: person i takes its i-th face from "
                                             "the left (without it: side by side).")),
    style_image=(str | list[str] | None, Field(None, description=STYLE_IMAGE_HELP)),
    **_settings_fields("group"),
)
DetailJSON = create_model(
    "DetailJSON", __doc__="``application/json`` body of /v1/detail: settings, face-detail options and base64 "
                          "photos.",
    face=(list[str], Field(..., min_length=1, max_length=MAX_FACES,
                            description="Base64-encoded face photo(s) of the person; several are fused.")),
    face_names=(list[str] | None, Field(None, description="Names for the photos in messages and metadata.")),
    picture=(str, Field(..., description="Base64-encoded picture whose faces are redrawn as this person.")),
    picture_name=(str | None, Field(None, description="Name for the picture in messages and metadata.")),
    mix=(list[MixJSON] | None, Field(None, max_length=MAX_MIXES, description="Other people mixed in.")),
    **_settings_fields("detail"),
    **{name: (info.annotation, info) for name, info in DetailOptions.model_fields.items()},
)


class JobCreated(BaseModel):
    job_id: str
    status: str
    status_url: str
    position: int | None = Field(None, description="Jobs ahead of this one in the queue.")


class JobStatus(BaseModel):
    job_id: str
    task: TaskKind = Field("generate", description="What the job makes: generate, swap, group or detail.")
    status: JobState
    position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    step: int
    total: int
    attempts: int
    worker: str | None = Field(None, description="host:pid of the worker that runs (ran) the job.")
    error: str | None
    error_id: str | None = Field(None, description="An internal error (not the request's fault): the id to quote; "
                                                   "the server log has its traceback.")
    created: float
    started: float | None
    finished: float | None
    images: list[str] = Field(description="Absolute URLs of the PNGs (settings inside).")
    seeds: list[int]
    settings: dict[str, Any]
    metadata: dict[str, Any] | None


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    offset: int
    limit: int
    next: str | None = Field(None, description="URL of the next page, if any.")


class GenerationOutput(BaseModel):
    """``?wait=true``: the images themselves, as A1111's ``/sdapi/v1/txt2img`` returns them."""

    job_id: str
    status: str
    images: list[str] = Field(description="data:image/png;base64,... one per image.")
    image_urls: list[str]
    seeds: list[int]
    parameters: dict[str, Any] = Field(description="The settings used (seed resolved).")
    info: dict[str, Any] = Field(description="Everything recorded with the images.")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (declared or actual length)."""
    too_large = HTTPException(413, f"request body over the {limit}-byte upload limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _upload_name(name: str | None, fallback: str) -> str:
    # A label for messages and metadata only; never used as a path.
    return PurePath(name or fallback).name[:120] or fallback


@dataclass
class Body:
    """A parsed request body: form fields or JSON values, and (multipart) the uploaded files by field."""

    values: dict[str, Any]
    files: dict[str, list[Photo]] = field(default_factory=dict)
    json: bool = False


async def parse_multipart(request: Request, body: bytes, limit: int) -> Body:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    # As a context manager Starlette closes the uploads' temporary files when the request is parsed.
    async with Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=64, max_part_size=limit) as form:
        parsed = Body(values={})
        weights: list[str] = []
        for key, value in form.multi_items():
            is_file_field = key in FILE_FIELDS or PERSON_FIELD.fullmatch(key) is not None
            if isinstance(value, UploadFile):
                if not is_file_field:
                    raise InvalidInputError(f"unexpected file field {key!r}; send photos as 'face', 'pose', 'mix', "
                                            "'scene', 'picture' or 'person0', 'person1', ...")
                parsed.files.setdefault(key, []).append((_upload_name(value.filename, key), await value.read()))
            elif is_file_field:
                raise InvalidInputError(f"field {key!r} must be a file upload")
            elif key == "mix_weight":  # one per mix photo, in order
                weights.append(value)
            elif value != "":  # an empty form field means "default"
                parsed.values[key] = value
    if weights:
        parsed.values["mix_weight"] = weights
    return parsed


def parse_json(body: bytes) -> Body:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError("the JSON body must be an object")
    return Body(values=data, json=True)


def _json_photos(values: dict[str, Any], key: str, names_key: str | None, limit: int) -> list[Photo]:
    photos = values.pop(key, None)
    if not isinstance(photos, list) or not photos or not all(isinstance(p, str) for p in photos):
        raise InvalidInputError(f"{key} must be a non-empty list of base64-encoded photos")
    if len(photos) > limit:
        raise InvalidInputError(f"{key}: at most {limit} photos, got {len(photos)}")
    names = (values.pop(names_key, None) if names_key else None) or [f"{key}[{i}]" for i in range(len(photos))]
    if not isinstance(names, list) or len(names) != len(photos):
        raise InvalidInputError(f"{names_key} must be a list of one name per photo ({len(photos)})")
    return [(_upload_name(str(n), f"{key}[{i}]"), _b64(f"{key}[{i}]", p))
            for i, (n, p) in enumerate(zip(names, photos, strict=True))]


def _json_photo(values: dict[str, Any], key: str) -> Photo | None:
    raw = values.pop(key, None)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInputError(f"{key} must be a base64-encoded photo")
    name = values.pop(f"{key}_name", None) if key in ("scene", "picture") else None
    return _upload_name(str(name) if name else None, key), _b64(key, raw)


def _weight(value: Any, label: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if isinstance(value, bool) or not 0 <= weight <= 1:
        raise InvalidInputError(f"{label} must be a number between 0 and 1, got {value!r}")
    return weight


def _mixes(body: Body) -> tuple[Mix, ...]:
    if body.json:
        entries = body.values.pop("mix", None) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidInputError('mix must be a list of {"photo": base64, "weight": 0..1}')
        photos = []
        for i, entry in enumerate(entries):
            if not isinstance(entry.get("photo"), str) or set(entry) - {"photo", "weight", "name"}:
                raise InvalidInputError(f'mix[{i}] must be {{"photo": base64, "weight": 0..1, "name": optional}}')
            name = _upload_name(str(entry["name"]) if entry.get("name") else None, f"mix[{i}]")
            photos.append(Mix((name, _b64(f"mix[{i}].photo", entry["photo"])),
                              _weight(entry.get("weight"), f"mix[{i}].weight")))
    else:
        files = body.files.pop("mix", [])
        weights = body.values.pop("mix_weight", [])
        if len(weights) != len(files):
            raise InvalidInputError(f"mix_weight: send one per mix photo ({len(files)} photo(s), "
                                    f"{len(weights)} weight(s))")
        photos = [Mix(photo, _weight(w, "mix_weight")) for photo, w in zip(files, weights, strict=True)]
    if len(photos) > MAX_MIXES:
        raise InvalidInputError(f"mix: at most {MAX_MIXES} people mixed in, got {len(photos)}")
    return tuple(photos)


def _faces(body: Body) -> tuple[Photo, ...]:
    if body.json:
        if "face" in body.values and "faces" in body.values:
            raise InvalidInputError("send the photos in 'face' only ('faces' is its old name)")
        return tuple(_json_photos(body.values, "faces" if "faces" in body.values else "face", "face_names",
                                  MAX_FACES))
    faces = body.files.pop("face", []) + body.files.pop("faces", [])
    if not faces:
        raise InvalidInputError("upload at least one face photo in the 'face' field")
    if len(faces) > MAX_FACES:
        raise InvalidInputError(f"face: at most {MAX_FACES} photos per person, got {len(faces)}")
    return tuple(faces)


def _photo(body: Body, key: str) -> Photo | None:
    if body.json:
        return _json_photo(body.values, key)
    photos = body.files.pop(key, [])
    if len(photos) > 1:
        raise InvalidInputError(f"{key}: send one photo, got {len(photos)}")
    return photos[0] if photos else None


def _people(body: Body) -> tuple[tuple[Photo, ...], ...]:
    if body.json:
        groups = body.values.pop("people", None)
        if not isinstance(groups, list) or not groups or not all(isinstance(g, list) for g in groups):
            raise InvalidInputError("people must be a non-empty list with one list of base64 photos per person")
        if any(not g or len(g) > MAX_FACES or not all(isinstance(x, str) for x in g) for g in groups):
            raise InvalidInputError(f"people: each person is a list of 1 to {MAX_FACES} base64 photos")
        people = [tuple((f"people[{p}][{i}]", _b64(f"people[{p}][{i}]", x)) for i, x in enumerate(g))
                  for p, g in enumerate(groups)]
    else:
        found = {int(m.group(1)): body.files.pop(k) for k in list(body.files) if (m := PERSON_FIELD.fullmatch(k))}
        missing = [i for i in range(len(found)) if i not in found]
        if missing:
            raise InvalidInputError(f"person{missing[0]}: send people as person0, person1, ... without gaps")
        people = [tuple(found[i]) for i in range(len(found))]
        for i, photos in enumerate(people):
            if len(photos) > MAX_FACES:
                raise InvalidInputError(f"person{i}: at most {MAX_FACES} photos per person, got {len(photos)}")
    check_people(len(people), "person0, person1, ..." if not body.json else "one list of photos per person")
    return tuple(people)


def _style_images(body: Body) -> tuple[Photo, ...]:
    """The style reference picture(s): repeated file fields, or a base64 string or list in JSON."""
    if body.json:
        raw = body.values.pop("style_image", None)
        raw = [raw] if isinstance(raw, str) else raw
        photos = [] if raw is None else _json_photos({"style_image": raw}, "style_image", None, MAX_STYLE_IMAGES)
    else:
        photos = body.files.pop("style_image", [])
    if len(photos) > MAX_STYLE_IMAGES:
        raise InvalidInputError(f"style_image: at most {MAX_STYLE_IMAGES} pictures, got {len(photos)}")
    return tuple(photos)


def job_request(task: TaskKind, body: Body) -> JobRequest:
    """The checked request of a ``task`` endpoint; errors name the field as the client spelled it."""
    kind = "JSON field" if body.json else "field"
    pose = scene = layout = swap = picture = detail = None
    faces: tuple[Photo, ...] = ()
    mixes: tuple[Mix, ...] = ()
    people: tuple[tuple[Photo, ...], ...] = ()
    style = _style_images(body) if task in ("generate", "group") else ()
    if task == "group":
        people = _people(body)
        pose = _photo(body, "pose")
    else:
        faces = _faces(body)
        mixes = _mixes(body)
    init = None
    if task == "generate":
        pose = _photo(body, "pose")
        init = _photo(body, "init_image")
        layout = body.values.pop("layout", None)
        if layout is not None and not isinstance(layout, str):
            raise InvalidInputError("layout must be the name of a bundled layout")
    if task == "swap":
        scene = _photo(body, "scene")
        if scene is None:
            raise InvalidInputError("upload the picture whose face is replaced in the 'scene' field")
        swap = make_swap_options({k: body.values.pop(k) for k in list(body.values) if k in SwapOptions.model_fields})
    if task == "detail":
        picture = _photo(body, "picture")
        if picture is None:
            raise InvalidInputError("upload the picture whose faces are redrawn in the 'picture' field")
        detail = make_detail_options({k: body.values.pop(k) for k in list(body.values)
                                      if k in DetailOptions.model_fields})
    if body.files:
        raise InvalidInputError(f"unexpected file field {next(iter(body.files))!r} for /v1/{task}")
    for name in ("face", "faces", "face_names", "pose", "mix", "mix_weight", "scene", "scene_name", "picture",
                 "picture_name", "people", "layout", "init_image", "style_image"):
        if name in body.values:
            raise InvalidInputError(f"{kind} {name!r} is not used by /v1/{task}")
    return JobRequest(task, settings_from(body.values), faces=faces, mixes=mixes, pose=pose, layout=layout,
                      scene=scene, swap=swap, people=people, picture=picture, detail=detail, init_image=init,
                      style=style)


def _b64(name: str, data: str) -> bytes:
    try:
        return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name} is not valid base64") from None


def settings_from(values: dict[str, Any]) -> GenerationSettings:
    """Validated settings; errors name the JSON / form field as sent."""
    return make_settings(values)


JSON_BODIES: dict[str, type[BaseModel]] = {"generate": GenerateJSON, "swap": SwapJSON, "group": GroupJSON,
                                           "detail": DetailJSON}
_BINARY = {"type": "string", "format": "binary"}
_MIX_FILES: dict[str, Any] = {  # mixing another person in: the same two fields on every one-person task
    "mix": {"type": "array", "items": _BINARY, "description": "Photo(s) of people mixed in."},
    "mix_weight": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                   "description": "One weight per mix photo: 0 = the main person, 1 = the other."},
}
_FORM_FILES: dict[str, dict[str, Any]] = {
    "generate": {
        "face": {"type": "array", "items": _BINARY, "description": "Face photo(s) of one person."},
        "pose": {**_BINARY, "description": "Optional pose photo."},
        "init_image": {**_BINARY, "description": "Optional picture to start from (image-to-image)."},
        **_MIX_FILES,
        "style_image": {"type": "array", "items": _BINARY, "description": STYLE_IMAGE_HELP},
    },
    "swap": {
        "face": {"type": "array", "items": _BINARY, "description": "Face photo(s) of the person put in."},
        "scene": {**_BINARY, "description": "The picture whose face is replaced."},
        **_MIX_FILES,
    },
    "group": {
        **{f"person{i}": {"type": "array", "items": _BINARY, "description": f"Photo(s) of person {i} (left to "
                          "right); send person0, person1, ... as needed."} for i in range(2)},
        "pose": {**_BINARY, "description": "Optional group photo: person i takes its i-th face from the left."},
        "style_image": {"type": "array", "items": _BINARY, "description": STYLE_IMAGE_HELP},
    },
    "detail": {
        "face": {"type": "array", "items": _BINARY, "description": "Face photo(s) of the person."},
        "picture": {**_BINARY, "description": "The picture whose faces are redrawn."},
        **_MIX_FILES,
    },
}
_JSON_ONLY = ("face", "faces", "face_names", "pose", "mix", "scene", "scene_name", "picture", "picture_name", "people",
              "init_image", "style_image")


def json_schema(task: TaskKind = "generate") -> dict[str, Any]:
    """The JSON body of a task as an OpenAPI schema: its nested shapes (mix entries) inlined, since a ``$ref``
    inside an operation resolves against the whole OpenAPI document, where the model's ``$defs`` are not."""
    schema = JSON_BODIES[task].model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


def multipart_schema(task: TaskKind = "generate") -> dict[str, Any]:
    """The multipart form of a task: its JSON body with the base64 photos as file fields."""
    schema = JSON_BODIES[task].model_json_schema()
    settings = {k: v for k, v in schema["properties"].items() if k not in _JSON_ONLY}
    schema["properties"] = {**_FORM_FILES[task], **settings}
    schema["required"] = {"generate": ["face"], "swap": ["face", "scene"], "group": ["person0"],
                          "detail": ["face", "picture"]}[task]
    schema["title"] = f"{task.capitalize()}Form"
    schema["description"] = (f"multipart/form-data body of /v1/{task}: the photos as file fields, every setting as "
                             "a form field (an empty field means its default).")
    schema.pop("$defs", None)  # the JSON body's nested shapes (mix entries): files and plain fields here
    return schema
