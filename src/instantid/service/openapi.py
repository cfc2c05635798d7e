"""The request bodies of the job routes in OpenAPI, both read off the one model per task
(:data:`instantid.service.requests.REQUESTS`): the JSON body as the model's schema, the multipart form as the same
schema with the photos as file fields (``mix`` as ``mix`` files plus ``mix_weight`` fields, ``people`` as
``person0``, ``person1``, ...; the ``<photo>_name(s)`` fields dropped, an upload is named by its file name)."""

from __future__ import annotations

from functools import cache
from typing import Any

from instantid.apps.tasks import TaskKind
from instantid.service.requests import REQUESTS, MixIn, photo_fields

_BINARY = {"type": "string", "format": "binary"}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` inlined: a ``$ref`` inside an operation resolves against the whole OpenAPI
    document, where the model's ``$defs`` are not."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


@cache
def json_schema(task: TaskKind = "generate") -> dict[str, Any]:
    """The JSON body of a task."""
    schema = _inlined(REQUESTS[task].model_json_schema())
    schema["title"] = f"{task.capitalize()}JSON"
    schema["description"] = (f"``application/json`` body of /v1/{task}. {schema.get('description', '')} Photos "
                             "are base64 strings (data URIs accepted).")
    return schema


@cache
def multipart_schema(task: TaskKind = "generate") -> dict[str, Any]:
    """The multipart form of a task."""
    schema = json_schema(task)
    photos = photo_fields(task)
    names = {f"{p}_name" for p in photos} | {f"{p}_names" for p in photos}
    form: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        described = {"description": prop["description"]} if "description" in prop else {}
        if name in photos:
            form[name] = {"type": "array", "items": _BINARY, **described} if photos[name] else {**_BINARY, **described}
        elif name == "mix":
            weight = MixIn.model_json_schema()["properties"]["weight"]
            form["mix"] = {"type": "array", "items": _BINARY, **described}
            form["mix_weight"] = {"type": "array", "items": {k: v for k, v in weight.items() if k != "description"},
                                  "description": "One per mix photo: " + weight["description"]}
        elif name == "people":
            for i in range(2):
                form[f"person{i}"] = {"type": "array", "items": _BINARY, "description": f"Photo(s) of person {i} "
                                      "(left to right); send person0, person1, ... as needed."}
        elif name not in names:
            form[name] = prop
    required = ["person0" if r == "people" else r for r in schema.get("required", [])]
    return {"type": "object", "title": f"{task.capitalize()}Form", "properties": form, "required": required,
            "description": f"multipart/form-data body of /v1/{task}: the photos as file fields, every setting as a "
                           "form field (an empty field means its default)."}


def request_body(task: TaskKind) -> dict[str, Any]:
    """``openapi_extra`` of a job route: its two media types."""
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart_schema(task)},
        "application/json": {"schema": json_schema(task)}}}}


__all__ = ["json_schema", "multipart_schema", "request_body"]
