"""Faces in ComfyUI terms: IMAGE tensors to photos, face analyzers from ComfyUI's folders, identities, and
keypoint pictures back to IMAGE tensors. All the face work is the project's own (``instantid.faces``,
``instantid.api.identity``, ``instantid.core.keypoints``, ``instantid.apps.layouts``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from instantid.api.face_side import prepare_identity, with_pose
from instantid.api.identity import Identity
from instantid.apps.layouts import layout_pose
from instantid.comfyui.paths import find_antelopev2_folder, require_antelopev2_folder
from instantid.core.keypoints import draw_kps
from instantid.errors import InvalidInputError
from instantid.faces import Face, FaceAnalyzer, create_face_analyzer

FACE_BACKENDS = ("auto", "antelopev2", "dlib")
PROVIDERS = ("CPU", "CUDA", "ROCM", "CoreML")  # onnxruntime execution providers, as the existing pack offers


def to_pictures(image: torch.Tensor) -> list[Image.Image]:
    """A ComfyUI IMAGE (B, H, W, C) in [0, 1] as B RGB pictures."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"expected a ComfyUI IMAGE (batch, height, width, channels), got {tuple(image.shape)}")
    arrays = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a if a.shape[-1] == 3 else np.repeat(a, 3, axis=-1)) for a in arrays]


def to_image(picture: Image.Image) -> torch.Tensor:
    """An RGB picture as a ComfyUI IMAGE (1, H, W, 3)."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]


def load_face_analyzer(backend: str, provider: str = "CPU") -> FaceAnalyzer:
    """antelopev2 from ComfyUI's insightface folder, or dlib (installs from PyPI, offline); ``auto`` = antelopev2
    when its files are there. Only antelopev2 embeddings fit the published adapter."""
    if backend not in FACE_BACKENDS:
        raise InvalidInputError(f"unknown face backend {backend!r}; choose one of {', '.join(FACE_BACKENDS)}")
    if backend == "auto":
        backend = "antelopev2" if find_antelopev2_folder() is not None else "dlib"
    if backend == "dlib":
        return create_face_analyzer("dlib")
    return create_face_analyzer("antelopev2", root=require_antelopev2_folder(),
                                providers=list(dict.fromkeys([f"{provider}ExecutionProvider", "CPUExecutionProvider"])))


def analyse_identity(analyzer: FaceAnalyzer, photos: torch.Tensor, fusion: str, face_index: int,
                     pose: torch.Tensor | None = None) -> Identity:
    """One identity from a batch of photos (fused as :func:`instantid.api.identity.fuse` does); the pose from the
    first photo's chosen face, or from the largest face of ``pose``."""
    pictures = to_pictures(photos)
    names = [f"photo {i + 1}" for i in range(len(pictures))]
    index = None if face_index < 0 else face_index
    identity = prepare_identity(analyzer, pictures, face_index=index, fusion=fusion, names=names)
    if pose is not None:
        identity = with_pose(analyzer, identity, to_pictures(pose)[0], "pose image")
    return identity


def identity_report(identity: Identity) -> str:
    """What fusion did, one line per photo, then the warnings: shown in ComfyUI as the node's STRING output."""
    lines = [f"fusion: {identity.fusion}, {len(identity.kept)} of {len(identity.references)} photo(s) used"]
    for ref in identity.references:
        state = f"left out ({ref.rejected})" if ref.rejected else f"weight {ref.weight:.2f}"
        lines.append(f"{ref.name}: {state}")
    lines += [f"warning: {w}" for w in identity.warnings]
    return "\n".join(lines)


def scaled(face: Face, size: tuple[int, int], width: int, height: int) -> np.ndarray:
    """A face's keypoints in a ``width`` x ``height`` picture, from a picture of ``size``."""
    return np.asarray(face.kps, dtype=np.float64) * np.array([width / size[0], height / size[1]])


def keypoint_picture(width: int, height: int, *, identity: Identity | None = None, layout: str = "none",
                     pose: torch.Tensor | None = None, analyzer: FaceAnalyzer | None = None) -> Image.Image:
    """The keypoint picture IdentityNet reads, from (first found) a pose photo's largest face, a bundled layout,
    or the identity's own pose face."""
    canvas = Image.new("RGB", (width, height))
    if pose is not None:
        if analyzer is None:
            raise InvalidInputError("a pose image needs a face analyzer: connect Load InstantID Face Analyzer")
        picture = to_pictures(pose)[0]
        face = analyzer.get_face(picture, "pose image")
        return draw_kps(canvas, scaled(face, picture.size, width, height))
    if layout != "none":
        return draw_kps(canvas, layout_pose(layout, width, height).kps)
    if identity is not None:
        return draw_kps(canvas, scaled(identity.pose_face, identity.pose_size, width, height))
    raise InvalidInputError("nothing to take the pose from: connect an identity or a pose image, or pick a layout")
