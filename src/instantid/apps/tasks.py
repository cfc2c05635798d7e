"""What a job asks for, one value per task kind, and how it becomes images.

* ``generate``: one person (face photos, optionally mixed with others), posed by a pose photo, a bundled layout
  or their own photo (:meth:`InstantID.generate`);
* ``swap``: one person put into a scene photo (:func:`instantid.apps.swap.swap_face`);
* ``group``: several people in one picture, placed by a group photo or side by side
  (:meth:`InstantID.generate_group`);
* ``detail``: the faces of an existing picture redrawn as one person (:mod:`instantid.apps.detail`).

:func:`prepare` analyses a :class:`JobRequest`'s photos, each once, into a :class:`Prepared` job, the form in which
every job is kept in its job folder (:mod:`instantid.service.stored`) until a worker runs it
(:meth:`Prepared.run`): no worker analyses a photo again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from instantid.api.identity import check_mix_weight
from instantid.api.settings import UNUSED_SETTINGS, GenerationSettings, check_people, check_used
from instantid.errors import InvalidInputError, NoFaceError

if TYPE_CHECKING:
    from PIL import Image

    from instantid.api.face_side import FaceSide
    from instantid.api.generator import GenerationResult, InstantID
    from instantid.api.identity import Identity
    from instantid.api.style_images import StyleImages
    from instantid.apps.detail import DetailOptions
    from instantid.apps.swap import SwapOptions
    from instantid.faces import Face

TaskKind = Literal["generate", "swap", "group", "detail"]
Photo = tuple[str, bytes]  # (name shown in messages and metadata, bytes)
Progress = Callable[[int, int], None]
# Where the people of a group photo stand: the chosen faces left to right and the photo's (width, height).
Placement = tuple[list["Face"], tuple[int, int]]

@dataclass(frozen=True)
class Mix:
    """Another person mixed into the identity (:meth:`Identity.mix`): 0 = this person, 1 = the other."""

    photo: Photo
    weight: float




@dataclass(frozen=True)
class JobRequest:
    """One job as submitted. Checks that need no face analysis run at construction (cheap, before any model)."""

    task: TaskKind
    settings: GenerationSettings
    faces: tuple[Photo, ...] = ()  # the person (generate, swap); several photos are fused
    mixes: tuple[Mix, ...] = ()  # mixed into that person (generate, swap)
    pose: Photo | None = None  # pose photo (generate) or group photo (group)
    layout: str | None = None  # a bundled keypoint layout instead of a pose photo (generate)
    scene: Photo | None = None  # the picture whose face is replaced (swap)
    swap: SwapOptions | None = None
    people: tuple[tuple[Photo, ...], ...] = ()  # one tuple of photos per person (group)
    picture: Photo | None = None  # the picture whose faces are redrawn (detail)
    detail: DetailOptions | None = None
    init_image: Photo | None = None  # image-to-image from this picture (generate)
    style: tuple[Photo, ...] = ()  # style reference pictures (generate, group)

    def __post_init__(self) -> None:
        from instantid.apps.layouts import get_layout

        if self.task == "group":
            if any(not p for p in self.people):
                raise InvalidInputError("give the photo(s) of each person: person0, person1, ...")
            check_people(len(self.people), "person0, person1, ...")
            if self.faces or self.mixes or self.layout or self.scene:
                raise InvalidInputError("a group job takes people and an optional pose photo only")
        else:
            if not self.faces:
                raise InvalidInputError("upload at least one face photo in the 'face' field")
            if self.people:
                raise InvalidInputError("people are for /v1/group")
        if self.task == "swap" and (self.scene is None or self.swap is None):
            raise InvalidInputError("upload the picture whose face is replaced in the 'scene' field")
        if self.task != "swap" and (self.scene is not None or self.swap is not None):
            raise InvalidInputError("a scene photo is for /v1/swap")
        if self.task == "detail" and (self.picture is None or self.detail is None):
            raise InvalidInputError("upload the picture whose faces are redrawn in the 'picture' field")
        if self.task != "detail" and (self.picture is not None or self.detail is not None):
            raise InvalidInputError("a picture to redraw is for /v1/detail")
        if self.layout is not None:
            if self.task != "generate":
                raise InvalidInputError("layout is for /v1/generate (one person)")
            if self.pose is not None:
                raise InvalidInputError("give a pose photo or a layout, not both")
            get_layout(self.layout)
        if self.task == "swap" and self.pose is not None:
            raise InvalidInputError("a swap takes its pose from the scene's face; do not send a pose photo")
        if self.task == "detail" and self.pose is not None:
            raise InvalidInputError("face detail keeps each face's own pose; do not send a pose photo")
        if self.task != "generate" and self.init_image is not None:
            raise InvalidInputError("init_image (image-to-image) is for /v1/generate")
        if self.task == "generate":
            self.settings.check_init_image(self.init_image is not None, "an init_image")
        if self.style and self.task not in ("generate", "group"):
            why = UNUSED_SETTINGS[self.task]["style_strength"]
            raise InvalidInputError(f"style_image is not used by /v1/{self.task}: {why}")
        for i, mix in enumerate(self.mixes):
            check_mix_weight(mix.weight, f"mix_weight of mix photo {i}")
        check_used(self.settings, self.task, f"/v1/{self.task}")

    # ---- identity of a request (Idempotency-Key) ----------------------------------------------------
    def files(self) -> dict[str, bytes]:
        """The photos by slot name (what :meth:`fingerprint` digests beside :meth:`record`)."""
        slots = {f"face-{i}": data for i, (_, data) in enumerate(self.faces)}
        slots.update({f"mix-{i}": m.photo[1] for i, m in enumerate(self.mixes)})
        slots.update({f"person-{p}-{i}": data for p, photos in enumerate(self.people)
                      for i, (_, data) in enumerate(photos)})
        if self.pose is not None:
            slots["pose"] = self.pose[1]
        if self.scene is not None:
            slots["scene"] = self.scene[1]
        if self.picture is not None:
            slots["picture"] = self.picture[1]
        if self.init_image is not None:
            slots["init"] = self.init_image[1]
        slots.update({f"style-{i}": data for i, (_, data) in enumerate(self.style)})
        return slots

    def record(self) -> dict[str, Any]:
        """Everything the request asks but the photos' bytes, as JSON (what :meth:`fingerprint` digests)."""
        return {
            "task": self.task, "settings": self.settings.record(), "faces": [n for n, _ in self.faces],
            "pose": self.pose[0] if self.pose else None, "layout": self.layout,
            "mix": [{"name": m.photo[0], "weight": m.weight} for m in self.mixes],
            "scene": self.scene[0] if self.scene else None,
            "swap": self.swap.model_dump() if self.swap is not None else None,
            "people": [[n for n, _ in photos] for photos in self.people],
            "picture": self.picture[0] if self.picture else None,
            "detail": self.detail.model_dump() if self.detail is not None else None,
            "init_image": self.init_image[0] if self.init_image else None,
            **({"style": [n for n, _ in self.style]} if self.style else {}),
        }

    def fingerprint(self) -> str:
        """A digest of everything the request asks (settings as given, photo names and bytes): a retry under the
        same Idempotency-Key has the same one whatever multipart boundary or JSON key order it was sent with."""
        digest = hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode())
        for slot, data in sorted(self.files().items()):
            digest.update(f"\0{slot}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()


def _identity(faces: FaceSide, photos: Sequence[Photo], settings: GenerationSettings,
              pose: Photo | None = None) -> Identity:
    return faces.prepare_identity([d for _, d in photos], pose=pose[1] if pose else None,
                                  pose_name=pose[0] if pose else None, face_index=settings.face_index,
                                  fusion=settings.fusion, names=[n for n, _ in photos])


def _style(photos: Sequence[Photo]) -> StyleImages | None:
    """The style pictures decoded once (an unreadable one is an ImageReadError naming it)."""
    from instantid.api.style_images import load_style_images

    return load_style_images([d for _, d in photos], names=[n for n, _ in photos]) if photos else None


def _group_poses(faces: FaceSide, photo: Photo, count: int) -> Placement:
    """Where ``count`` people stand in a group photo (:func:`instantid.api.face_side.group_poses`)."""
    try:
        return faces.group_poses(photo[1], count, photo[0])
    except InvalidInputError as exc:
        raise InvalidInputError(f"pose: {exc}") from None


@dataclass(frozen=True)
class Prepared:
    """A job whose photos are analysed (each once), ready for the model."""

    task: TaskKind
    identity: Identity | None = None  # generate, swap (mixes and layout applied)
    people: tuple[Identity, ...] = ()  # group
    scene: Image.Image | None = None  # swap: the picture, upright RGB
    scene_name: str = ""
    target: Face | None = None  # swap: the scene's face that is replaced
    swap: SwapOptions | None = None
    pose: Photo | None = None  # group: the group photo (its faces place the people)
    placement: Placement | None = None  # group: where the group photo's people stand (found once)
    detail: DetailOptions | None = None  # detail: the pass's options (``scene``: the picture redrawn)
    picture_faces: tuple[Face, ...] | None = None  # detail: the picture's faces, largest first (found once)
    init_image: Image.Image | None = None  # generate: image-to-image from this picture (upright RGB)
    init_name: str = ""
    style: StyleImages | None = None  # generate, group: style reference pictures (decoded once)

    def run(self, model: InstantID, settings: GenerationSettings, progress: Progress | None = None
            ) -> GenerationResult:
        if self.task == "swap":
            from instantid.apps.swap import swap_face

            return swap_face(model, self.identity, self.scene, settings, self.swap, scene_name=self.scene_name,
                             target=self.target, progress=progress)
        if self.task == "group":
            # Where the group photo's people stand was found when the job was prepared: not looked for again.
            return model.generate_group(list(self.people), settings, pose_faces=self.placement,
                                        pose_name=self.pose[0] if self.pose else "columns", progress=progress,
                                        style_images=self.style)
        if self.task == "detail":
            from instantid.apps.detail import detail_picture

            assert self.scene is not None and self.detail is not None  # checked when prepared
            return detail_picture(model, self.identity, self.scene, self.scene_name, settings, self.detail,
                                  progress, faces=self.picture_faces)
        return model.generate(self.identity, settings, progress=progress, init_image=self.init_image,
                              init_name=self.init_name or "init image", style_images=self.style)

    def names(self) -> dict[str, Any]:
        """What the job record says of the job (task, photo names, options); the job itself waits in the job
        folder (:mod:`instantid.service.stored`)."""
        return {
            "task": self.task, "faces": [r.name for r in self.identity.references] if self.identity else [],
            "pose": self.pose[0] if self.pose else None,
            "scene": self.scene_name if self.task == "swap" else None,
            "swap": self.swap.model_dump() if self.swap is not None else None,
            "people": [[r.name for r in p.references] for p in self.people],
            "picture": self.scene_name if self.task == "detail" else None,
            "detail": self.detail.model_dump() if self.detail is not None else None,
            **({"style": list(self.style.names)} if self.style is not None else {}),
        }


def prepare(faces: FaceSide, request: JobRequest) -> Prepared:
    """Analyse the request's photos: NoFaceError / ImageReadError / InvalidInputError name the photo or field."""
    settings = request.settings
    style = _style(request.style)
    if request.task == "group":
        people = tuple(_identity(faces, photos, settings) for photos in request.people)
        placement = _group_poses(faces, request.pose, len(people)) if request.pose is not None else None
        return Prepared("group", people=people, pose=request.pose, placement=placement, style=style)
    identity = _identity(faces, request.faces, settings, pose=request.pose)
    for mix in request.mixes:
        identity = identity.mix(_identity(faces, [mix.photo], settings), mix.weight, name=mix.photo[0])
    if request.layout is not None:
        from instantid.apps.layouts import DEFAULT_LAYOUT_SIZE, with_layout

        identity = with_layout(identity, request.layout, settings.width or DEFAULT_LAYOUT_SIZE,
                               settings.height or DEFAULT_LAYOUT_SIZE)
    if request.task == "generate":
        from instantid.faces import load_image

        init = request.init_image
        return Prepared("generate", identity=identity, init_image=load_image(init[1], init[0]) if init else None,
                        init_name=init[0] if init else "", style=style)
    if request.task == "detail":
        from instantid.faces import load_image

        assert request.picture is not None  # checked at construction
        # Cheap before slow: a picture without a face is refused here, not after the model ran.
        picture = load_image(request.picture[1], request.picture[0])
        picture_faces = tuple(faces.analyze(picture, request.picture[0]))
        if not picture_faces:
            raise NoFaceError(f"the picture {request.picture[0]}")
        return Prepared("detail", identity=identity, scene=picture, scene_name=request.picture[0],
                        detail=request.detail, picture_faces=picture_faces)
    assert request.scene is not None and request.swap is not None  # checked at construction
    try:
        scene, target = faces.find_face(request.scene[1], request.scene[0], request.swap.target_index)
    except NoFaceError:
        raise NoFaceError(f"the scene photo {request.scene[0]}") from None
    return Prepared("swap", identity=identity, scene=scene, scene_name=request.scene[0], target=target,
                    swap=request.swap)


__all__ = ["JobRequest", "Mix", "Photo", "Placement", "Prepared", "TaskKind", "UNUSED_SETTINGS",
           "prepare"]
