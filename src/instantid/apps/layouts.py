"""Bundled keypoint layouts: a pose for users without a pose photo (frontal, three-quarter, near profile).

A layout (``data/layouts.json``) is five face keypoints and a face box in a unit square; :func:`layout_pose`
places it on an output of any size (the square is centred on the short side, so the face is never
stretched), and :func:`with_layout` makes it the pose of an :class:`~instantid.api.identity.Identity`:

    person = with_layout(app.prepare_identity("me.jpg"), "three-quarter-left", 1024, 1024)
    app.generate(person, prompt="a portrait")

IdentityNet only sees the keypoint picture, so a layout poses the face exactly as a photo with the same
five points would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

import numpy as np

from instantid.api.identity import Identity
from instantid.errors import InvalidInputError
from instantid.faces import Face

DEFAULT_LAYOUT_SIZE = 1024  # the size a layout is placed at when no output size is given (SDXL's)


@dataclass(frozen=True)
class Layout:
    """One bundled layout in unit-square coordinates."""

    name: str
    description: str
    yaw_degrees: float  # negative = turned towards the image's left
    kps: np.ndarray  # (5, 2) in [0, 1], detector order (image-left eye first)
    bbox: tuple[float, float, float, float]  # face box x1, y1, x2, y2 in [0, 1]


@dataclass(frozen=True)
class LayoutPose:
    """A layout placed on a ``size`` = (width, height) picture, in pixels: what a detected pose face gives."""

    name: str
    kps: np.ndarray  # (5, 2) float32 pixels
    bbox: tuple[float, float, float, float]  # pixels
    size: tuple[int, int]  # (width, height)


@cache
def _layouts() -> dict[str, Layout]:
    data = json.loads(resources.files("instantid").joinpath("data/layouts.json").read_text(encoding="utf-8"))
    return {
        name: Layout(
            name=name, description=entry["description"], yaw_degrees=float(entry["yaw_degrees"]),
            kps=np.asarray(entry["kps"], dtype=np.float64), bbox=tuple(float(v) for v in entry["bbox"]),
        )
        for name, entry in data["layouts"].items()
    }


def layout_names() -> tuple[str, ...]:
    """The bundled layouts' names, in file order (frontal first)."""
    return tuple(_layouts())


def get_layout(name: str) -> Layout:
    """A layout by name (case and ``_`` / space instead of ``-`` forgiven); InvalidInputError naming the choices."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    layouts = _layouts()
    if key not in layouts:
        raise InvalidInputError(f"unknown layout {name!r}; choose one of {', '.join(layouts)}")
    return layouts[key]


def layout_pose(name: str, width: int = DEFAULT_LAYOUT_SIZE, height: int = DEFAULT_LAYOUT_SIZE) -> LayoutPose:
    """The layout's keypoints and face box in pixels of a ``width`` x ``height`` output.

    The unit square maps onto a centred square of the short side, so a wide or tall output keeps the face's
    proportions (keypoints scaled separately in x and y would squash it).
    """
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"layout size must be positive, got {width}x{height}")
    layout = get_layout(name)
    side = min(width, height)
    offset = np.array([(width - side) / 2, (height - side) / 2])
    kps = (layout.kps * side + offset).astype(np.float32)
    x1, y1, x2, y2 = layout.bbox
    bbox = (x1 * side + offset[0], y1 * side + offset[1], x2 * side + offset[0], y2 * side + offset[1])
    return LayoutPose(name=layout.name, kps=kps, bbox=tuple(float(v) for v in bbox), size=(int(width), int(height)))


def with_layout(
    identity: Identity, name: str, width: int = DEFAULT_LAYOUT_SIZE, height: int = DEFAULT_LAYOUT_SIZE
) -> Identity:
    """``identity`` posed by a bundled layout instead of a photo (embedding and references unchanged).

    Give the output size when it is known (``settings.width/height``): the generator scales the pose face by
    output size / ``pose_size`` per axis, which is exact when both are the same size.
    """
    pose = layout_pose(name, width, height)
    face = Face(
        bbox=pose.bbox, score=1.0, kps=pose.kps,
        # The pose face's embedding is never used for identity; the fused one keeps the Face well-formed.
        embedding=np.asarray(identity.embedding, dtype=np.float32), space=identity.space,
    )
    return replace(identity, pose_face=face, pose_size=pose.size, pose_name=f"layout:{pose.name}")


__all__ = ["DEFAULT_LAYOUT_SIZE", "Layout", "LayoutPose", "get_layout", "layout_names", "layout_pose", "with_layout"]
