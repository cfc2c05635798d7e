"""An analysed job (:class:`~instantid.apps.tasks.Prepared`) kept in its job folder: the one form in which
every job waits for its worker. The photos are analysed once, at submit (an HTTP job by the server, a web UI job
on upload, where the UI may build an identity no request can spell: a face chosen per photo, a mix); what the
model needs from that analysis (identities, the scene's chosen face, a group photo's placement, the picture's
faces, the picture) is written into the job's ``inputs`` folder, so a worker on another machine, or this server
after a restart, runs exactly that job without analysing a photo again.

Layout: ``inputs/prepared`` (JSON: everything but images), ``inputs/scene`` (the swap scene or detail picture
as PNG, lossless, so the pixels the model sees are the ones analysed) and ``inputs/pose`` (the group photo's
bytes as uploaded). Faces are written by :meth:`Face.to_dict <instantid.faces.Face.to_dict>`; floats go through
JSON as Python floats: float32 values (embeddings, keypoints) survive exactly and come back as float32 arrays.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from instantid.errors import InvalidInputError
from instantid.faces import Face

if TYPE_CHECKING:
    from instantid.api.identity import Identity, Reference
    from instantid.apps.tasks import Prepared
    from instantid.service.jobs import JobFiles

FORMAT = 2  # bumped when the layout changes; a job of another format fails with a reason, never half-read


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _reference(reference: Reference) -> dict[str, Any]:
    # Every field, so a field added to Reference is kept (the round-trip test fails until it reads back too).
    values = {f.name: _plain(getattr(reference, f.name)) for f in fields(reference) if f.name != "face"}
    return {**values, "face": reference.face.to_dict()}


def identity_to_dict(identity: Identity) -> dict[str, Any]:
    """An analysed identity as JSON: every field, exactly (its extra ControlNets' photo is a picture beside it:
    :func:`save_prepared`)."""
    special = {"embedding", "pose_face", "references", "control_photo"}
    values = {f.name: _plain(getattr(identity, f.name)) for f in fields(identity) if f.name not in special}
    return {**values, "embedding": [float(v) for v in identity.embedding],
            "pose_face": identity.pose_face.to_dict(), "references": [_reference(r) for r in identity.references]}


def identity_from_dict(data: dict[str, Any]) -> Identity:
    """The identity :func:`identity_to_dict` wrote."""
    from instantid.api.identity import Identity, Reference

    references = tuple(Reference(**{**r, "face": Face.from_dict(r["face"])}) for r in data["references"])
    width, height = data["pose_size"]
    return Identity(**{**data, "embedding": np.asarray(data["embedding"], dtype=np.float32),
                       "pose_face": Face.from_dict(data["pose_face"]), "pose_size": (int(width), int(height)),
                       "references": references, "warnings": tuple(data["warnings"]),
                       "mixed_with": tuple((n, float(w)) for n, w in data["mixed_with"])})


def save_prepared(files: JobFiles, job_id: str, job: Prepared, controls: bool = True) -> None:
    """Write ``job`` into the job's ``inputs`` folder (each file atomically; the record that points at them is
    stored after this returns, so no worker ever sees half of it). ``controls``: the job uses the extra
    ControlNets, so the photo their maps come from is kept too (else it is not written)."""
    description: dict[str, Any] = {
        "format": FORMAT, "task": job.task,
        "identity": identity_to_dict(job.identity) if job.identity is not None else None,
        "people": [identity_to_dict(p) for p in job.people], "scene_name": job.scene_name,
        "target": job.target.to_dict() if job.target is not None else None,
        "swap": job.swap.model_dump() if job.swap is not None else None,
        "pose": job.pose[0] if job.pose is not None else None,
        "placement": None, "detail": job.detail.model_dump() if job.detail is not None else None,
        "picture_faces": None if job.picture_faces is None else [f.to_dict() for f in job.picture_faces],
    }
    if job.placement is not None:
        faces, (width, height) = job.placement
        description["placement"] = {"faces": [f.to_dict() for f in faces], "size": [width, height]}
    if job.scene is not None:
        png = io.BytesIO()
        job.scene.save(png, format="PNG")
        files.save_input(job_id, "scene", png.getvalue())
    if job.pose is not None:
        files.save_input(job_id, "pose", job.pose[1])
    # The extra ControlNets' source photo and the image-to-image start, lossless as the scene.
    pictures = {"control": job.identity.control_photo if job.identity is not None and controls else None,
                "init": job.init_image,
                **{f"style-{i}": image for i, image in enumerate(job.style.images if job.style else ())}}
    for slot, picture in pictures.items():
        if picture is not None:
            png = io.BytesIO()
            picture.save(png, format="PNG")
            files.save_input(job_id, slot, png.getvalue())
    description["pictures"] = [slot for slot, picture in pictures.items() if picture is not None]
    description["init_name"] = job.init_name
    # Style pictures keep the names and hashes they were read with (the metadata records those, not the PNGs').
    description["style"] = None if job.style is None else {"names": list(job.style.names),
                                                           "sha256": list(job.style.sha256)}
    files.save_input(job_id, "prepared", json.dumps(description).encode())


def load_prepared(files: JobFiles, job_id: str) -> Prepared:
    """The job :func:`save_prepared` wrote; InvalidInputError (the job fails with that line) when it is missing
    or of another format."""
    from PIL import Image

    from instantid.api.face_detail import DetailOptions
    from instantid.apps.swap import SwapOptions
    from instantid.apps.tasks import Prepared

    try:
        data = json.loads(files.load_input(job_id, "prepared"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"the analysed job in the job folder cannot be read: {exc}") from None
    if data.get("format") != FORMAT:
        raise InvalidInputError(f"the analysed job is of format {data.get('format')}, this worker reads {FORMAT}")
    scene = None
    if data["task"] in ("swap", "detail"):
        with Image.open(io.BytesIO(files.load_input(job_id, "scene"))) as png:
            scene = png.convert("RGB")
    pictures = {}
    for slot in data.get("pictures", ()):
        with Image.open(io.BytesIO(files.load_input(job_id, slot))) as png:
            pictures[slot] = png.convert("RGB")
    identity = identity_from_dict(data["identity"]) if data["identity"] is not None else None
    if identity is not None and "control" in pictures:
        identity = replace(identity, control_photo=pictures["control"])
    placement = None
    if data["placement"] is not None:
        width, height = data["placement"]["size"]
        placement = ([Face.from_dict(f) for f in data["placement"]["faces"]], (int(width), int(height)))
    style = None
    if data.get("style") is not None:
        from instantid.api.style_images import StyleImages

        count = len(data["style"]["names"])
        style = StyleImages(tuple(pictures[f"style-{i}"] for i in range(count)), tuple(data["style"]["names"]),
                            tuple(data["style"]["sha256"]))
    return Prepared(
        task=data["task"], identity=identity, init_image=pictures.get("init"), init_name=data.get("init_name", ""),
        people=tuple(identity_from_dict(p) for p in data["people"]), scene=scene, scene_name=data["scene_name"],
        target=Face.from_dict(data["target"]) if data["target"] is not None else None,
        swap=SwapOptions.model_validate(data["swap"]) if data["swap"] is not None else None,
        pose=(data["pose"], files.load_input(job_id, "pose")) if data["pose"] is not None else None,
        placement=placement,
        picture_faces=(None if data["picture_faces"] is None
                       else tuple(Face.from_dict(f) for f in data["picture_faces"])),
        detail=DetailOptions.model_validate(data["detail"]) if data["detail"] is not None else None,
        style=style,
    )


__all__ = ["identity_from_dict", "identity_to_dict", "load_prepared", "save_prepared"]
