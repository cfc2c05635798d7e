"""The HTTP request and response shapes. The generation fields ARE :class:`GenerationSettings`: the JSON body
subclasses it and the multipart form is read from its ``model_fields``, so OpenAPI shows every knob with its
description, range and choices (styles, schedulers), and a knob added in ``settings.py`` appears here."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import PurePath
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from instantid.errors import InvalidInputError
from instantid.service.jobs import JobState
from instantid.settings import GenerationSettings, make_settings

MAX_FACES = 8
Photo = tuple[str, bytes]
PHOTO_FIELDS = ("face", "faces", "pose")


class GenerateJSON(GenerationSettings):
    """``application/json`` body: the generation settings plus base64 photos (data URIs accepted)."""

    faces: list[str] = Field(..., min_length=1, max_length=MAX_FACES,
                             description="Base64-encoded face photo(s) of one person; several are fused.")
    face_names: list[str] | None = Field(None, description="Names for the photos in messages and metadata.")
    pose: str | None = Field(None, description="Base64-encoded pose photo (keypoints and size from here).")


class JobCreated(BaseModel):
    job_id: str
    status: str
    status_url: str
    position: int | None = Field(None, description="Jobs ahead of this one in the queue.")


class JobStatus(BaseModel):
    job_id: str
    status: JobState
    position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    step: int
    total: int
    attempts: int
    worker: str | None = Field(None, description="host:pid of the worker that runs (ran) the job.")
    error: str | None
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


async def parse_multipart(request: Request, body: bytes, limit: int) -> tuple[dict, list[Photo], Photo | None]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=MAX_FACES + 1, max_fields=64, max_part_size=limit)
    values: dict[str, str] = {}
    faces: list[Photo] = []
    pose = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in PHOTO_FIELDS:
                raise InvalidInputError(f"unexpected file field {key!r}; send photos as 'face' and 'pose'")
            item = (_upload_name(value.filename, key), await value.read())
            if key == "pose":
                pose = item
            else:
                faces.append(item)
        elif key in PHOTO_FIELDS:
            raise InvalidInputError(f"field {key!r} must be a file upload")
        elif value != "":  # an empty form field means "default"
            values[key] = value
    if not faces:
        raise InvalidInputError("upload at least one face photo in the 'face' field")
    return values, faces, pose


def parse_json(body: bytes) -> tuple[dict, list[Photo], Photo | None]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError("the JSON body must be an object")
    photos = data.pop("faces", None)
    if not isinstance(photos, list) or not photos or not all(isinstance(p, str) for p in photos):
        raise InvalidInputError("faces must be a non-empty list of base64-encoded photos")
    if len(photos) > MAX_FACES:
        raise InvalidInputError(f"faces: at most {MAX_FACES} photos per job, got {len(photos)}")
    names = data.pop("face_names", None) or [f"faces[{i}]" for i in range(len(photos))]
    if not isinstance(names, list) or len(names) != len(photos):
        raise InvalidInputError(f"face_names must be a list of one name per photo ({len(photos)})")
    faces = [(_upload_name(str(n), f"faces[{i}]"), _b64(f"faces[{i}]", p))
             for i, (n, p) in enumerate(zip(names, photos, strict=True))]
    raw_pose = data.pop("pose", None)
    if raw_pose is not None and not isinstance(raw_pose, str):
        raise InvalidInputError("pose must be a base64-encoded photo")
    return data, faces, ("pose", _b64("pose", raw_pose)) if raw_pose else None


def _b64(name: str, data: str) -> bytes:
    try:
        return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{name} is not valid base64") from None


def settings_from(values: dict[str, Any]) -> GenerationSettings:
    """Validated settings; errors name the JSON / form field as sent."""
    return make_settings(values)


def multipart_schema() -> dict[str, Any]:
    schema = GenerationSettings.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    schema["properties"] = {
        "face": {"type": "array", "items": binary, "description": "Face photo(s) of one person."},
        "pose": {**binary, "description": "Optional pose photo."},
        **schema["properties"],
    }
    schema["required"] = ["face"]
    schema["title"] = "GenerateForm"
    return schema
