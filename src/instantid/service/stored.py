"""An analysed job (:class:`~instantid.apps.tasks.Prepared`) kept in its job folder, for jobs that arrive
analysed rather than as photos: the web UI's. The UI analyses each photo once, on upload, and may build an
identity no request can spell (a face chosen per photo, a mix); what the model needs from that analysis
(identities, the scene's chosen face, a group photo's placement, the picture) is written into the job's
``inputs`` folder, so a worker on another machine or this server after a restart runs exactly that job.

Layout: ``inputs/prepared`` (JSON: everything but images), ``inputs/scene`` (the swap scene or detail picture
as PNG, lossless, so the pixels the model sees are the ones analysed) and ``inputs/pose`` (the group photo's
bytes as uploaded). Floats go through JSON as Python floats: float32 values (embeddings, keypoints) survive
exactly and come back as float32 arrays.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from instantid.errors import InvalidInputError

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.apps.tasks import Prepared
    from instantid.faces import Face
    from instantid.service.jobs import JobFiles

FORMAT = 1  # bumped when the layout changes; a job of another format fails with a reason, never half-read


def _face(face: Face) -> dict[str, Any]:
    return face.to_dict()


def _face_back(data: dict[str, Any]) -> Face:
    from instantid.faces import Face

    return Face(bbox=tuple(float(v) for v in data["bbox"]), score=float(data["score"]),  # type: ignore[arg-type]
                kps=np.asarray(data["kps"], dtype=np.float32), embedding=np.asarray(data["embedding"], np.float32),
                space=data["space"])


def _identity(identity: Identity) -> dict[str, Any]:
    return {
        "embedding": [float(v) for v in identity.embedding], "space": identity.space,
        "pose_face": _face(identity.pose_face), "pose_size": list(identity.pose_size),
        "references": [{"name": r.name, "face": _face(r.face), "quality": float(r.quality), "weight": float(r.weight),
                        "consensus_distance": r.consensus_distance, "rejected": r.rejected}
                       for r in identity.references],
        "fusion": identity.fusion, "pose_name": identity.pose_name, "warnings": list(identity.warnings),
        "mixed_with": [[name, float(weight)] for name, weight in identity.mixed_with],
    }


def _identity_back(data: dict[str, Any]) -> Identity:
    from instantid.api.identity import Identity, Reference

    references = tuple(Reference(name=r["name"], face=_face_back(r["face"]), quality=r["quality"], weight=r["weight"],
                                 consensus_distance=r["consensus_distance"], rejected=r["rejected"])
                       for r in data["references"])
    width, height = data["pose_size"]
    return Identity(embedding=np.asarray(data["embedding"], dtype=np.float32), space=data["space"],
                    pose_face=_face_back(data["pose_face"]), pose_size=(int(width), int(height)),
                    references=references, fusion=data["fusion"], pose_name=data["pose_name"],
                    warnings=tuple(data["warnings"]), mixed_with=tuple((n, float(w)) for n, w in data["mixed_with"]))


def save_prepared(files: JobFiles, job_id: str, job: Prepared) -> None:
    """Write ``job`` into the job's ``inputs`` folder (each file atomically; the record that points at them is
    stored after this returns, so no worker ever sees half of it)."""
    description: dict[str, Any] = {
        "format": FORMAT, "task": job.task,
        "identity": _identity(job.identity) if job.identity is not None else None,
        "people": [_identity(p) for p in job.people], "scene_name": job.scene_name,
        "target": _face(job.target) if job.target is not None else None,
        "swap": job.swap.model_dump() if job.swap is not None else None,
        "pose": job.pose[0] if job.pose is not None else None,
        "placement": None, "detail": job.detail.model_dump() if job.detail is not None else None,
        "picture_faces": None if job.picture_faces is None else [_face(f) for f in job.picture_faces],
    }
    if job.placement is not None:
        faces, (width, height) = job.placement
        description["placement"] = {"faces": [_face(f) for f in faces], "size": [width, height]}
    if job.scene is not None:
        png = io.BytesIO()
        job.scene.save(png, format="PNG")
        files.save_input(job_id, "scene", png.getvalue())
    if job.pose is not None:
        files.save_input(job_id, "pose", job.pose[1])
    # The extra ControlNets' source photo and the image-to-image start, lossless as the scene.
    pictures = {"control": job.identity.control_photo if job.identity is not None else None,
                "init": job.init_image}
    for slot, picture in pictures.items():
        if picture is not None:
            png = io.BytesIO()
            picture.save(png, format="PNG")
            files.save_input(job_id, slot, png.getvalue())
    description["pictures"] = [slot for slot, picture in pictures.items() if picture is not None]
    description["init_name"] = job.init_name
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
    identity = _identity_back(data["identity"]) if data["identity"] is not None else None
    if identity is not None and "control" in pictures:
        identity = replace(identity, control_photo=pictures["control"])
    placement = None
    if data["placement"] is not None:
        width, height = data["placement"]["size"]
        placement = ([_face_back(f) for f in data["placement"]["faces"]], (int(width), int(height)))
    return Prepared(
        task=data["task"], identity=identity, init_image=pictures.get("init"), init_name=data.get("init_name", ""),
        people=tuple(_identity_back(p) for p in data["people"]), scene=scene, scene_name=data["scene_name"],
        target=_face_back(data["target"]) if data["target"] is not None else None,
        swap=SwapOptions.model_validate(data["swap"]) if data["swap"] is not None else None,
        pose=(data["pose"], files.load_input(job_id, "pose")) if data["pose"] is not None else None,
        placement=placement,
        picture_faces=None if data["picture_faces"] is None else tuple(_face_back(f) for f in data["picture_faces"]),
        detail=DetailOptions.model_validate(data["detail"]) if data["detail"] is not None else None,
    )


__all__ = ["load_prepared", "save_prepared"]
