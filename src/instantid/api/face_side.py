"""The face side: photos in, an :class:`~instantid.api.identity.Identity` out, with no diffusion model.

One object, :class:`FaceSide`, does every analysis any surface needs (a loaded :class:`~instantid.InstantID`
holds one; a server whose workers run elsewhere builds one from a bare face analyzer), so photos are checked
(unreadable, faceless, several faces) before a slow model load and analysed once.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from instantid.api.identity import Identity, fuse
from instantid.api.results import ImageInput
from instantid.errors import InvalidInputError
from instantid.faces import Face, FaceAnalyzer, choose_face, load_image, several_faces


def content_hash(source: ImageInput) -> str | None:
    """SHA-256 of a photo file's bytes (what `sha256sum` prints), or None for an in-memory picture."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    if isinstance(source, (str, Path)):
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return None


def _label(source: Any, index: int, full_paths: bool) -> str:
    """How a photo is named in messages and metadata: its file name (full path only on request)."""
    if isinstance(source, (str, Path)):
        return str(Path(source).resolve()) if full_paths else Path(source).name
    return f"face image {index + 1}"


MAP_PHOTO_SIDE = 2048  # the largest output side: an identity keeps its map photo no larger (batches hold many)


def for_maps(picture: Image.Image) -> Image.Image:
    """The photo the extra ControlNets' maps are made from, at most :data:`MAP_PHOTO_SIDE` on its long side (a
    photo that size or smaller is kept as it is, so its maps are the published demo's exactly)."""
    if max(picture.size) <= MAP_PHOTO_SIDE:
        return picture
    scale = MAP_PHOTO_SIDE / max(picture.size)
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                          Image.LANCZOS)


def prepare_identity(
    analyzer: FaceAnalyzer, photos: ImageInput | Sequence[ImageInput], *, pose: ImageInput | None = None,
    face_index: int | None = None, fusion: str = "auto", weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None, pose_name: str | None = None, full_paths: bool = False,
) -> Identity:
    """:meth:`InstantID.prepare_identity` with only a face analyzer: the face side needs no diffusion model, so a
    surface can check photos (unreadable, faceless) before the slow model load and hand the Identity on."""
    sources = [photos] if isinstance(photos, (str, Path, bytes, Image.Image)) else list(photos)
    if not sources:
        raise InvalidInputError("give at least one face photo")
    if names is not None and len(names) != len(sources):
        raise InvalidInputError(f"give one name per photo ({len(sources)}), got {len(names)}")
    labels = list(names) if names is not None else [_label(s, i, full_paths) for i, s in enumerate(sources)]
    found, counts, notes = [], [], []
    for source, label in zip(sources, labels, strict=True):
        picture = load_image(source, label)
        faces = analyzer.analyze(picture, label)
        found.append((label, picture, choose_face(faces, label, face_index)))
        counts.append(len(faces))
        notes.append(several_faces(label, len(faces), face_index))
    embedding, references, used, warnings = fuse(analyzer, found, fusion, weights)
    references = tuple(replace(r, face_index=face_index or 0, faces_found=n, sha256=content_hash(source))
                       for r, n, source in zip(references, counts, sources, strict=True))
    label, pose_picture, pose_face = found[0]
    identity = Identity(
        embedding=embedding, space=analyzer.space, pose_face=pose_face,
        pose_size=(pose_picture.width, pose_picture.height), references=references, fusion=used,
        pose_name=label, warnings=(*(n for n in notes if n), *warnings), control_photo=for_maps(pose_picture),
    )
    return identity if pose is None else with_pose(analyzer, identity, pose, pose_name, full_paths)


def with_pose(analyzer: FaceAnalyzer, identity: Identity, pose: ImageInput, pose_name: str | None = None,
              full_paths: bool = False) -> Identity:
    """``identity`` in the pose of the largest face of the photo ``pose`` (its keypoints and picture size)."""
    label = pose_name or (_label(pose, 0, full_paths) if isinstance(pose, (str, Path)) else "pose image")
    picture = load_image(pose, label)
    faces = analyzer.analyze(picture, label)
    face = choose_face(faces, label)
    note = several_faces(label, len(faces), None, "the pose is taken from face 0 (the largest)")
    return replace(identity, pose_face=face, pose_size=(picture.width, picture.height), pose_name=label,
                   control_photo=for_maps(picture), warnings=(*identity.warnings, *([note] if note else [])))


def group_poses(
    analyzer: FaceAnalyzer, pose: ImageInput, count: int, name: str = "pose image", people: str = "people",
) -> tuple[list[Face], tuple[int, int]]:
    """The ``count`` largest faces of a group photo, left to right, and the photo's size: where each person of
    :meth:`InstantID.generate_group` stands. Needs only the face analyzer, so a surface can check it early."""
    picture = load_image(pose, name)
    faces = analyzer.analyze(picture, name)
    if len(faces) < count:
        raise InvalidInputError(f"{name} shows {len(faces)} face(s) but {count} {people} were given")
    chosen = sorted(faces[:count], key=lambda f: f.bbox[0] + f.bbox[2])
    return chosen, (picture.width, picture.height)


class FaceSide:
    """A face analyzer behind a lock (the face models are not known to be thread-safe: dlib), with every question
    the surfaces ask of photos. ``lock``: share one with other users of the same analyzer."""

    def __init__(self, analyzer: FaceAnalyzer, lock: threading.Lock | None = None) -> None:
        self.analyzer = analyzer
        self.lock = lock or threading.Lock()

    @property
    def space(self) -> str:
        return self.analyzer.space

    def analyze(self, image: ImageInput, name: str | None = None) -> list[Face]:
        """Every face in a photo, largest first."""
        picture = load_image(image, name)
        with self.lock:
            return self.analyzer.analyze(picture, name)

    def find_face(self, image: ImageInput, name: str | None = None, index: int | None = None
                  ) -> tuple[Image.Image, Face]:
        """The photo (upright RGB) and its largest (or ``index``-th) face; NoFaceError if there is none."""
        picture = load_image(image, name)
        with self.lock:
            return picture, self.analyzer.get_face(picture, name, index)

    def prepare_identity(self, photos: ImageInput | Sequence[ImageInput], **options: Any) -> Identity:
        """:func:`prepare_identity` under the lock (same options)."""
        with self.lock:
            return prepare_identity(self.analyzer, photos, **options)

    def group_poses(self, pose: ImageInput, count: int, name: str = "pose image", people: str = "people"
                    ) -> tuple[list[Face], tuple[int, int]]:
        """:func:`group_poses` under the lock."""
        with self.lock:
            return group_poses(self.analyzer, pose, count, name, people)
