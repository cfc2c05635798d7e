"""The HTTP job requests, one pydantic model per task: the one declaration of each body, which both parses every
request (multipart and JSON alike) and documents it in OpenAPI (:mod:`instantid.service.openapi`).

A model's fields are its photos, its task's options (:class:`~instantid.apps.swap.SwapOptions`,
:class:`~instantid.api.face_detail.FaceDetailOptions`) and the generation settings the task uses (every
:class:`GenerationSettings` field but :data:`UNUSED_SETTINGS`), so a knob added there appears here.

Photos are the fields typed :data:`PhotoIn`: base64 strings (data URIs accepted) in JSON, file parts of the same
name in multipart. Two multipart spellings differ from JSON, both mapped by :func:`form_values`: ``mix`` files with
one ``mix_weight`` field each (JSON: ``mix: [{photo, weight, name}]``) and ``person0``, ``person1``, ... (JSON:
``people: [[...], ...]``). A JSON photo is named by the ``<field>_name(s)`` field beside it (multipart: by its
file name). ``faces``, the name of ``face`` before 0.2, is still read as ``face``.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import cache
from pathlib import PurePath
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from instantid.api.face_detail import FaceDetailOptions
from instantid.api.identity import MixWeight
from instantid.api.settings import UNUSED_SETTINGS, GenerationSettings, check_people, make_settings, normalize
from instantid.api.style_images import MAX_STYLE_IMAGES
from instantid.api.validation import Location, json_path, one_line
from instantid.apps.layouts import layout_names
from instantid.apps.swap import SwapOptions
from instantid.apps.tasks import JobRequest, Mix, Photo, TaskKind
from instantid.errors import InvalidInputError

MAX_FACES = 8  # photos of one person
MAX_MIXES = 4
PHOTO_SCHEMA: dict[str, Any] = {"type": "string", "contentEncoding": "base64"}  # marks a photo in the schema
LayoutName = Literal[layout_names()]  # type: ignore[valid-type]
PERSON_FIELD = re.compile(r"person([0-9]{1,2})")


def upload_name(name: str | None, fallback: str) -> str:
    """A photo's label for messages and metadata; never used as a path."""
    return PurePath(name or fallback).name[:120] or fallback


def _photo(value: Any) -> Photo:
    if isinstance(value, tuple):  # a multipart file part: (file name, bytes)
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64-encoded photo")
    try:
        return "", base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


PhotoIn = Annotated[Photo, PlainValidator(_photo), WithJsonSchema(PHOTO_SCHEMA)]


class MixIn(BaseModel):
    """Another person mixed into this one (:meth:`Identity.mix`)."""

    model_config = ConfigDict(extra="forbid")

    photo: PhotoIn = Field(description="Photo of the person mixed in.")
    weight: MixWeight
    name: str | None = Field(None, description="Name for the photo in messages and metadata.")


def _one_or_more(value: Any) -> Any:
    if isinstance(value, (str, tuple)):
        return [value]
    if not isinstance(value, list):
        raise ValueError("must be a base64-encoded photo or a list of them")
    return value


# Style reference pictures (InstantStyle), for generate and group: one photo or a list (repeated file parts).
StyleIn = Annotated[list[PhotoIn], BeforeValidator(_one_or_more), Field(
    min_length=1, max_length=MAX_STYLE_IMAGES, description=f"Style reference picture(s), at most "
    f"{MAX_STYLE_IMAGES} (InstantStyle): the picture takes their style at style_strength, the face keeps the "
    "identity.")]


def _styles(photos: list[Photo] | None) -> tuple[Photo, ...]:
    return tuple(_named(p, None, f"style_image[{i}]") for i, p in enumerate(photos or ()))


def _named(photo: Photo, name: str | None, fallback: str) -> Photo:
    return upload_name(name or photo[0] or None, fallback), photo[1]


class _Body(BaseModel):
    """What every job body shares: the generation settings its task uses, checked as on every surface."""

    model_config = ConfigDict(extra="forbid")
    task: ClassVar[TaskKind]
    options: ClassVar[type[BaseModel] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, why in UNUSED_SETTINGS[cls.task].items():  # a default is harmless, a value would be ignored
            if name in data and _setting(name, data.pop(name)) != GenerationSettings.model_fields[name].default:
                raise InvalidInputError(f"{name} is not used by /v1/{cls.task}: {why}")
        return normalize(data)  # style names in any case

    def settings(self) -> GenerationSettings:
        """The settings the client chose (the rest stay unset: a loaded preset may fill them)."""
        declared = GenerationSettings.model_fields
        return make_settings({k: getattr(self, k) for k in self.model_fields_set if k in declared})

    def chosen_options(self) -> Any:
        assert self.options is not None
        return self.options(**{k: getattr(self, k) for k in self.model_fields_set if k in self.options.model_fields})


def _setting(name: str, value: Any) -> Any:
    try:
        return getattr(GenerationSettings.model_validate({name: value}), name)
    except ValidationError:
        return value  # not even valid: certainly not the default


class _OnePerson(_Body):
    face: list[PhotoIn] = Field(min_length=1, max_length=MAX_FACES,
                                description="Face photo(s) of the person; several are fused.")
    face_names: list[str] | None = Field(None, description="Names for the face photos in messages and metadata.")
    mix: list[MixIn] | None = Field(None, max_length=MAX_MIXES, description="Other people mixed into this one.")

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "faces" in data:
            if "face" in data:
                raise InvalidInputError("send the photos in 'face' only ('faces' is its old name)")
            data = {**data, "face": data["faces"]}
            del data["faces"]
        return data

    def faces(self) -> tuple[Photo, ...]:
        names = self.face_names or [None] * len(self.face)
        if len(names) != len(self.face):
            raise InvalidInputError(f"face_names must be a list of one name per photo ({len(self.face)})")
        return tuple(_named(p, n, f"face[{i}]") for i, (p, n) in enumerate(zip(self.face, names, strict=True)))

    def mixes(self) -> tuple[Mix, ...]:
        return tuple(Mix(_named(m.photo, m.name, f"mix[{i}]"), m.weight) for i, m in enumerate(self.mix or ()))


class _Generate(_OnePerson):
    """Generate one person: settings, face photo(s), an optional pose photo or bundled layout, people mixed in."""

    task = "generate"
    pose: PhotoIn | None = Field(None, description="Pose photo (keypoints and size from here).")
    layout: LayoutName | None = Field(None, description="A bundled keypoint layout instead of a pose photo.")
    init_image: PhotoIn | None = Field(None, description="Picture to start from (image-to-image; "
                                       "denoising_strength says how much of it is redrawn).")
    style_image: StyleIn | None = None

    @field_validator("layout", mode="before")
    @classmethod
    def _known_layout(cls, value: Any) -> Any:
        if isinstance(value, str):
            from instantid.apps.layouts import get_layout

            get_layout(value)  # the friendly "unknown layout ...; choose one of" line
        return value

    def job(self) -> JobRequest:
        return JobRequest("generate", self.settings(), faces=self.faces(), mixes=self.mixes(),
                          pose=_named(self.pose, None, "pose") if self.pose else None, layout=self.layout,
                          init_image=_named(self.init_image, None, "init_image") if self.init_image else None,
                          style=_styles(self.style_image))


class _Swap(_OnePerson):
    """Swap: settings, swap options, the face photo(s) of the person put in and the scene."""

    task = "swap"
    options = SwapOptions
    scene: PhotoIn = Field(description="The picture whose face is replaced.")
    scene_name: str | None = Field(None, description="Name for the scene in messages and metadata.")

    def job(self) -> JobRequest:
        return JobRequest("swap", self.settings(), faces=self.faces(), mixes=self.mixes(),
                          scene=_named(self.scene, self.scene_name, "scene"), swap=self.chosen_options())


class _Detail(_OnePerson):
    """Face detail: settings, face-detail options, the face photo(s) of the person and the picture redrawn."""

    task = "detail"
    options = FaceDetailOptions
    picture: PhotoIn = Field(description="The picture whose faces are redrawn as this person.")
    picture_name: str | None = Field(None, description="Name for the picture in messages and metadata.")

    def job(self) -> JobRequest:
        return JobRequest("detail", self.settings(), faces=self.faces(), mixes=self.mixes(),
                          picture=_named(self.picture, self.picture_name, "picture"), detail=self.chosen_options())


class _Group(_Body):
    """A picture of several people: settings, the photo(s) of each person, an optional group photo."""

    task = "group"
    people: list[Annotated[list[PhotoIn], Field(min_length=1, max_length=MAX_FACES)]] = Field(
        description="Per person, left to right, their photo(s).")
    pose: PhotoIn | None = Field(None, description="Group photo: person i takes its i-th face from the left "
                                                   "(without it: side by side).")
    style_image: StyleIn | None = None

    @field_validator("people")
    @classmethod
    def _count(cls, people: list[list[Photo]], info: ValidationInfo) -> list[list[Photo]]:
        form = bool(info.context and info.context.get("form"))
        check_people(len(people), "person0, person1, ..." if form else "one list of photos per person")
        return people

    def job(self) -> JobRequest:
        people = tuple(tuple(_named(p, None, f"people[{n}][{i}]") for i, p in enumerate(photos))
                       for n, photos in enumerate(self.people))
        return JobRequest("group", self.settings(), people=people,
                          pose=_named(self.pose, None, "pose") if self.pose else None, style=_styles(self.style_image))


def _with_settings(base: type[_Body]) -> type[_Body]:
    """``base`` plus its task's options and the settings the task uses, as one flat body."""
    unused = UNUSED_SETTINGS[base.task]
    fields: dict[str, Any] = {n: (i.annotation, i) for n, i in GenerationSettings.model_fields.items()
                              if n not in unused}
    if base.options is not None:
        fields.update({n: (i.annotation, i) for n, i in base.options.model_fields.items()})
    return create_model(f"{base.task.capitalize()}Request", __base__=base, __doc__=base.__doc__, **fields)


REQUESTS: dict[str, type[_Body]] = {b.task: _with_settings(b) for b in (_Generate, _Swap, _Group, _Detail)}


def form_name(loc: Location) -> str:
    """A value's multipart field name from its place in the model (``("mix", 0, "weight")`` -> ``mix_weight``)."""
    if loc[:1] == ("people",) and len(loc) > 1:
        return f"person{loc[1]}"
    if loc[:1] == ("mix",) and len(loc) > 2 and loc[2] == "weight":
        return "mix_weight"
    return str(loc[0]) if loc else "request"


def job_request(task: TaskKind, values: dict[str, Any], *, form: bool = False) -> JobRequest:
    """The checked request of a ``task`` endpoint from a JSON object or :func:`form_values`; errors are one
    line naming the field as the client spelled it."""
    model = REQUESTS[task]
    try:
        parsed = model.model_validate(values, context={"form": form})
    except ValidationError as exc:
        raise InvalidInputError(_message(exc, model, task, form_name if form else json_path)) from None
    return parsed.job()  # type: ignore[attr-defined]


def _message(exc: ValidationError, model: type[_Body], task: str, name: Any) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    if first["type"] == "missing" and field in model.model_fields:
        return f"send the {name(first['loc'])!r} field: {model.model_fields[field].description}"
    if first["type"] == "extra_forbidden" and any(field in other.model_fields for other in REQUESTS.values()):
        return f"{name(first['loc'])!r} is not used by /v1/{task}"
    known = [n for n in model.model_fields if n in GenerationSettings.model_fields
             or (model.options is not None and n in model.options.model_fields)]
    return one_line(exc, model, name, known=known)


@cache
def photo_fields(task: TaskKind) -> dict[str, bool]:
    """The task's photo fields and whether each takes several photos, read off its schema (``mix`` and
    ``people`` aside: :func:`form_values` spells them)."""
    found = {}
    for name, prop in REQUESTS[task].model_json_schema()["properties"].items():
        options = prop.get("anyOf", [prop])
        if any(o.get("contentEncoding") == "base64" for o in options):
            found[name] = False
        elif any(o.get("items", {}).get("contentEncoding") == "base64" for o in options):
            found[name] = True
    return found


def form_values(task: TaskKind, fields: list[tuple[str, str]], files: list[tuple[str, Photo]]) -> dict[str, Any]:
    """A multipart body (its text fields and file parts, in order) as the values of the task's model."""
    photos = photo_fields(task)
    values: dict[str, Any] = {}
    uploads: dict[str, list[Photo]] = {}
    weights: list[str] = []
    for key, value in fields:
        if key in photos or key == "mix" or PERSON_FIELD.fullmatch(key):
            raise InvalidInputError(f"field {key!r} must be a file upload")
        if key == "mix_weight":  # one per mix photo, in order
            weights.append(value)
        elif value != "":  # an empty form field means "default"
            values[key] = value
    for key, photo in files:
        uploads.setdefault("face" if key == "faces" else key, []).append((upload_name(photo[0], key), photo[1]))
    if task == "group":
        found = {int(m.group(1)): uploads.pop(k) for k in list(uploads) if (m := PERSON_FIELD.fullmatch(k))}
        missing = [i for i in range(len(found)) if i not in found]
        if missing:
            raise InvalidInputError(f"person{missing[0]}: send people as person0, person1, ... without gaps")
        values["people"] = [found[i] for i in range(len(found))]
    elif "mix" in uploads or weights:
        mixes = uploads.pop("mix", [])
        if len(weights) != len(mixes):
            raise InvalidInputError(f"mix_weight: send one per mix photo ({len(mixes)} photo(s), "
                                    f"{len(weights)} weight(s))")
        values["mix"] = [{"photo": p, "weight": w} for p, w in zip(mixes, weights, strict=True)]
    for key, sent in uploads.items():
        if key not in photos:
            raise InvalidInputError(f"unexpected file field {key!r} for /v1/{task}")
        if not photos[key] and len(sent) > 1:
            raise InvalidInputError(f"{key}: send one photo, got {len(sent)}")
        values[key] = sent if photos[key] else sent[0]
    return values


__all__ = ["MAX_FACES", "MAX_MIXES", "PHOTO_SCHEMA", "REQUESTS", "MixIn", "PhotoIn", "form_name", "form_values",
           "job_request", "photo_fields", "upload_name"]
