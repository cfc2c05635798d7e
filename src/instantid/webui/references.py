"""The web UI's reference photos: uploads by content, one analysis per photo set, previews of what was found.

Uploads are remembered as :class:`Photo` values (file name, content hash, gradio's temporary path). The
:class:`IdentityCache` turns a set of photos into an :class:`~instantid.api.identity.Identity` once, when they are
uploaded, and generation reuses that Identity; the key is the content, so re-uploading the same file, or a
second browser tab with the same photo, does not analyse it again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from instantid.errors import ImageReadError, InvalidInputError, NoFaceError
from instantid.faces import Face, load_image
from instantid.faces.drawing import draw_faces

if TYPE_CHECKING:
    from instantid.api.generator import InstantID
    from instantid.api.identity import Identity

PREVIEW_SIDE = 384  # thumbnails: enough to see the box and the five points, small to send
CACHE_SIZE = 32  # identities kept; each holds a few faces and one embedding, so this is small


@dataclass(frozen=True)
class Photo:
    """One uploaded photo, known by its content."""

    name: str  # the file name the user uploaded (gradio keeps it as the temporary file's name)
    digest: str  # sha256 of the bytes
    path: str  # gradio's temporary copy, read again only to analyse (once) and to draw the preview

    @classmethod
    def from_upload(cls, path: str | Path) -> Photo:
        source = Path(path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ImageReadError(source.name, f"the upload could not be read ({exc.strerror or exc})") from None
        return cls(name=source.name, digest=hashlib.sha256(data).hexdigest(), path=str(source))

    def read(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError:
            raise ImageReadError(self.name, "the upload has expired; upload the photo again") from None


def photos_from_uploads(paths: Sequence[str | Path] | str | Path | None) -> tuple[Photo, ...]:
    """Photos from a gradio upload value (one path, several, or none), skipping exact duplicates."""
    if paths is None:
        return ()
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    photos: dict[str, Photo] = {}
    for item in items:
        photo = Photo.from_upload(getattr(item, "name", item))
        photos.setdefault(photo.digest, photo)
    return tuple(photos.values())


def merge(current: Sequence[Photo], new: Sequence[Photo], add: bool) -> tuple[Photo, ...]:
    """The reference set after an upload: ``new`` replaces ``current`` unless the user chose to add."""
    if not add:
        return tuple(new)
    known = {p.digest for p in current}
    return (*current, *(p for p in new if p.digest not in known))


class IdentityCache:
    """Identities by (photo contents and names, pose, face index, fusion), least recently used dropped."""

    def __init__(self, get_model: Callable[[], InstantID], size: int = CACHE_SIZE) -> None:
        self._get_model = get_model
        self._size = size
        self._items: OrderedDict[tuple[Any, ...], Identity] = OrderedDict()
        self._lock = threading.Lock()
        self.analysed = 0  # photo sets analysed so far (a cache miss each)

    def get(self, photos: Sequence[Photo], pose: Photo | None = None, face_index: int | None = None,
            fusion: str = "auto") -> Identity:
        if not photos:
            raise InvalidInputError("upload at least one face photo")
        key = (tuple((p.digest, p.name) for p in photos), pose and (pose.digest, pose.name), face_index, fusion)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        identity = self._get_model().prepare_identity(
            [p.read() for p in photos], names=[p.name for p in photos], pose=pose.read() if pose else None,
            pose_name=pose.name if pose else None, face_index=face_index, fusion=fusion,
        )
        with self._lock:
            self.analysed += 1
            self._items[key] = identity
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return identity


def _thumbnail(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return image


def preview(identity: Identity, photos: Sequence[Photo], pose: Photo | None) -> list[tuple[Image.Image, str]]:
    """Each reference with the face that was used (box + five keypoints), and the pose photo's face."""
    items = []
    for number, (photo, reference) in enumerate(zip(photos, identity.references, strict=True), start=1):
        drawn = draw_faces(load_image(photo.read(), photo.name), [reference.face],
                           [reference.face_index if reference.faces_found > 1 else None], keypoint_numbers=False)
        caption = f"{number}. {photo.name}"
        if reference.rejected:
            caption += " (left out: looks like another person)"
        items.append((_thumbnail(drawn), caption))
    if pose is not None:
        items.append((_thumbnail(draw_faces(load_image(pose.read(), pose.name), [identity.pose_face], [None],
                                            keypoint_numbers=False)),
                      f"pose: {pose.name}"))
    return items


def summary(identity: Identity | None) -> str:
    """The count line under the thumbnails."""
    if identity is None:
        return ("No face photo yet: upload one (several photos of the same person work better). A new upload "
                "replaces the set; \"+ Add another photo\" adds to it.")
    count = len(identity.references)
    text = f"**{count} reference photo{'s' if count != 1 else ''}** of one person"
    if count > 1:
        text += f", fused by {identity.fusion}"
    if identity.rejected:
        text += f"; {len(identity.rejected)} left out: " + ", ".join(r.name for r in identity.rejected)
    several = [r for r in identity.references if r.faces_found > 1]
    if several:  # numbered from 0, largest first, as the face index control and every surface count them
        text += ". Used " + ", ".join(f"face {r.face_index} of {r.faces_found} in {r.name}" for r in several)
    if identity.pose_name and identity.pose_name != identity.references[0].name:
        text += f". Pose from {identity.pose_name}"
    return text + "."


def warnings_text(identity: Identity | None) -> str:
    """Warnings the fusion raised (different people, left-out photos), one per line."""
    if identity is None or not identity.warnings:
        return ""
    return "\n".join(f"⚠️ **Check your photos:** {line}" for line in identity.warnings)


class PictureFaces:
    """Every face of uploaded pictures (swap scenes, group photos), analysed once per picture content; the last
    ``kept`` pictures are remembered. ``left_to_right`` orders them as people stand (else largest first)."""

    def __init__(self, analyze: Callable[[bytes, str], list[Face]], kept: int = 16,
                 left_to_right: bool = False) -> None:
        self._analyze = analyze
        self._kept = kept
        self._left_to_right = left_to_right
        self._faces: OrderedDict[str, list[Face]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, picture: Photo) -> list[Face]:
        found = self.largest_first(picture)
        return sorted(found, key=lambda f: f.bbox[0] + f.bbox[2]) if self._left_to_right else found

    def largest_first(self, picture: Photo) -> list[Face]:
        """The faces in the analyzer's own order (largest first), whatever ``left_to_right`` says."""
        with self._lock:
            if picture.digest in self._faces:
                return self._faces[picture.digest]
        found = self._analyze(picture.read(), picture.name)
        if not found:
            raise NoFaceError(picture.name)
        with self._lock:
            self._faces[picture.digest] = found
            while len(self._faces) > self._kept:
                self._faces.popitem(last=False)
        return found

    def drawn(self, picture: Photo) -> tuple[list[Face], Image.Image]:
        """The faces and the picture with them drawn and numbered, as a preview."""
        found = self(picture)
        drawn = draw_faces(load_image(picture.read(), picture.name), found, keypoint_numbers=False)
        drawn.thumbnail((PREVIEW_SIDE * 2, PREVIEW_SIDE * 2))
        return found, drawn
