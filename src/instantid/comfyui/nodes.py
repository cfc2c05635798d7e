"""The ComfyUI nodes. Each is a thin surface over the modules beside it; errors are the project's typed
errors, whose one-line messages ComfyUI shows in its error panel.

How they map to the existing ComfyUI_InstantID pack (README, "ComfyUI"): Load InstantID Adapter ~
InstantIDModelLoader, Load InstantID Face Analyzer ~ InstantIDFaceAnalysis, InstantID Face Identity (new: several
photos, fusion, report), InstantID Keypoints ~ FaceKeypointsPreprocessor, Apply InstantID ~ ApplyInstantID /
ApplyInstantIDAdvanced (``ip_weight``, ``cn_strength``, ``start_at``, ``end_at``, ``image_kps``, ``mask``).
"""

from __future__ import annotations

import folder_paths
import numpy as np
import torch
from PIL import Image

from instantid.api.identity import Identity
from instantid.api.settings import FUSIONS
from instantid.apps.layouts import layout_names
from instantid.comfyui import faces as comfy_faces
from instantid.comfyui.adapter import FaceAdapter, load_face_adapter
from instantid.comfyui.identitynet import load_identitynet, with_identitynet
from instantid.comfyui.patch import face_regions, patch_model
from instantid.comfyui.paths import ADAPTERS, CONTROLNETS, adapter_files, full_path, register_model_folders
from instantid.core.keypoints import draw_kps
from instantid.errors import EmbeddingSpaceError

CATEGORY = "InstantID"
ADAPTER = "INSTANTID_ADAPTER"
ANALYZER = "INSTANTID_FACE_ANALYZER"
IDENTITY = "INSTANTID_IDENTITY"
MAX_PEOPLE = 4

register_model_folders()


def _strengths() -> dict:
    """The strength and window inputs of both Apply nodes (published script defaults: 0.8 and 0.8)."""
    return {
        "ip_weight": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 3.0, "step": 0.01}),
        "cn_strength": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 10.0, "step": 0.01}),
        "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
    }


def _embedding(adapter: FaceAdapter, identity: Identity) -> torch.Tensor:
    space = adapter.spec.embedding_space
    if space is not None and identity.space != space:
        raise EmbeddingSpaceError(
            f"the face adapter {adapter.source} was trained on {space} embeddings but the identity has "
            f"{identity.space} ones: load the matching face analyzer"
        )
    return torch.from_numpy(np.asarray(identity.embedding, dtype=np.float32))


class InstantIDAdapterLoader:
    """The face adapter (published ``ip-adapter.bin`` or a ``.safetensors`` export) from ``models/instantid``."""

    CATEGORY, FUNCTION = CATEGORY, "load"
    RETURN_TYPES, RETURN_NAMES = (ADAPTER,), ("adapter",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"instantid_file": (adapter_files(),)}}

    def load(self, instantid_file: str) -> tuple[FaceAdapter]:
        return (load_face_adapter(full_path(ADAPTERS, instantid_file)),)


class InstantIDIdentityNetLoader:
    """IdentityNet from ``models/controlnet``, any size (the built-in ControlNet loader knows only listed sizes)."""

    CATEGORY, FUNCTION = CATEGORY, "load"
    RETURN_TYPES, RETURN_NAMES = ("CONTROL_NET",), ("control_net",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"control_net_name": (folder_paths.get_filename_list(CONTROLNETS),)}}

    def load(self, control_net_name: str) -> tuple:
        return (load_identitynet(full_path(CONTROLNETS, control_net_name)),)


class InstantIDFaceAnalyzerLoader:
    """The face analyzer: antelopev2 from ``models/insightface`` (what the adapter was trained on) or dlib."""

    CATEGORY, FUNCTION = CATEGORY, "load"
    RETURN_TYPES, RETURN_NAMES = (ANALYZER,), ("face_analyzer",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"backend": (comfy_faces.FACE_BACKENDS,), "provider": (comfy_faces.PROVIDERS,)}}

    def load(self, backend: str, provider: str) -> tuple:
        return (comfy_faces.load_face_analyzer(backend, provider),)


class InstantIDFaceIdentity:
    """Face photo(s) -> one identity: several photos (an image batch) are fused, outliers left out and named."""

    CATEGORY, FUNCTION = CATEGORY, "analyse"
    RETURN_TYPES, RETURN_NAMES = (IDENTITY, "STRING"), ("identity", "report")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_analyzer": (ANALYZER,),
                "image": ("IMAGE",),
                "fusion": (FUSIONS, {"default": "auto"}),
                "face_index": ("INT", {"default": -1, "min": -1, "max": 63,
                                       "tooltip": "-1: the largest face; else faces by size, 0 = largest"}),
            },
            "optional": {"pose_image": ("IMAGE",)},
        }

    def analyse(self, face_analyzer, image: torch.Tensor, fusion: str, face_index: int,
                pose_image: torch.Tensor | None = None) -> tuple[Identity, str]:
        identity = comfy_faces.analyse_identity(face_analyzer, image, fusion, face_index, pose_image)
        return identity, comfy_faces.identity_report(identity)


class InstantIDKeypoints:
    """The keypoint picture IdentityNet reads: from a pose photo, a bundled layout, or the identity's face."""

    CATEGORY, FUNCTION = CATEGORY, "draw"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("image_kps",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        size = {"default": 1024, "min": 64, "max": 8192, "step": 8}
        return {
            "required": {"width": ("INT", size), "height": ("INT", size),
                         "layout": (("none", *layout_names()), {"default": "none"})},
            "optional": {"identity": (IDENTITY,), "pose_image": ("IMAGE",), "face_analyzer": (ANALYZER,)},
        }

    def draw(self, width: int, height: int, layout: str, identity: Identity | None = None,
             pose_image: torch.Tensor | None = None, face_analyzer=None) -> tuple[torch.Tensor]:
        picture = comfy_faces.keypoint_picture(width, height, identity=identity, layout=layout, pose=pose_image,
                                               analyzer=face_analyzer)
        return (comfy_faces.to_image(picture),)


class InstantIDApply:
    """Patch MODEL (face branch in every cross-attention layer) and chain IdentityNet on both conditionings."""

    CATEGORY, FUNCTION = CATEGORY, "apply"
    RETURN_TYPES, RETURN_NAMES = ("MODEL", "CONDITIONING", "CONDITIONING"), ("model", "positive", "negative")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "adapter": (ADAPTER,), "control_net": ("CONTROL_NET",), "identity": (IDENTITY,), "model": ("MODEL",),
                "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), **_strengths(),
            },
            "optional": {"image_kps": ("IMAGE",), "mask": ("MASK",)},
        }

    def apply(self, adapter: FaceAdapter, control_net, identity: Identity, model, positive: list, negative: list,
              ip_weight: float, cn_strength: float, start_at: float, end_at: float,
              image_kps: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> tuple:
        if image_kps is None:  # the identity's own pose, at its photo's size (ComfyUI scales it to the latent)
            image_kps = comfy_faces.to_image(comfy_faces.keypoint_picture(*identity.pose_size, identity=identity))
        region = None if mask is None else (mask[0] if mask.ndim == 3 else mask)
        regions = face_regions(adapter, [_embedding(adapter, identity)], [region])
        patched = patch_model(model, adapter, regions, ip_weight, start_at, end_at)
        positive, negative = with_identitynet(positive, negative, control_net, [(regions[0], image_kps)],
                                              cn_strength, (start_at, end_at))
        return patched, positive, negative


class InstantIDApplyGroup:
    """Several people (the paper's multi-identity synthesis): person i takes the i-th face from the left of the
    group pose photo; each one's face tokens and IdentityNet act only in the region nearest that face."""

    CATEGORY, FUNCTION = CATEGORY, "apply"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "IMAGE")
    RETURN_NAMES = ("model", "positive", "negative", "image_kps")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "adapter": (ADAPTER,), "control_net": ("CONTROL_NET",), "face_analyzer": (ANALYZER,),
                "pose_image": ("IMAGE",), "model": ("MODEL",), "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",), "identity_1": (IDENTITY,), "identity_2": (IDENTITY,), **_strengths(),
            },
            "optional": {f"identity_{i}": (IDENTITY,) for i in range(3, MAX_PEOPLE + 1)},
        }

    def apply(self, adapter: FaceAdapter, control_net, face_analyzer, pose_image: torch.Tensor, model,
              positive: list, negative: list, ip_weight: float, cn_strength: float, start_at: float, end_at: float,
              **people: Identity) -> tuple:
        from instantid.api.face_side import group_poses
        from instantid.api.regions import nearest_face_regions

        identities = [people[k] for k in sorted(people) if people[k] is not None]
        picture = comfy_faces.to_pictures(pose_image)[0]
        poses, size = group_poses(face_analyzer, picture, len(identities))
        masks = [torch.from_numpy(np.asarray(r.convert("L"), dtype=np.float32) / 255.0)
                 for r in nearest_face_regions([f.kps.mean(axis=0) for f in poses], size)]
        regions = face_regions(adapter, [_embedding(adapter, p) for p in identities], masks)
        pictures = [draw_kps(Image.new("RGB", size), face.kps) for face in poses]
        images = [comfy_faces.to_image(p) for p in pictures]
        patched = patch_model(model, adapter, regions, ip_weight, start_at, end_at)
        positive, negative = with_identitynet(positive, negative, control_net, list(zip(regions, images, strict=True)),
                                              cn_strength, (start_at, end_at))
        preview = torch.stack(images).amax(dim=0)
        return patched, positive, negative, preview


NODE_CLASS_MAPPINGS = {
    "InstantIDAdapterLoader": InstantIDAdapterLoader,
    "InstantIDIdentityNetLoader": InstantIDIdentityNetLoader,
    "InstantIDFaceAnalyzerLoader": InstantIDFaceAnalyzerLoader,
    "InstantIDFaceIdentity": InstantIDFaceIdentity,
    "InstantIDKeypoints": InstantIDKeypoints,
    "InstantIDApply": InstantIDApply,
    "InstantIDApplyGroup": InstantIDApplyGroup,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantIDAdapterLoader": "Load InstantID Adapter",
    "InstantIDIdentityNetLoader": "Load IdentityNet",
    "InstantIDFaceAnalyzerLoader": "Load InstantID Face Analyzer",
    "InstantIDFaceIdentity": "InstantID Face Identity",
    "InstantIDKeypoints": "InstantID Keypoints",
    "InstantIDApply": "Apply InstantID",
    "InstantIDApplyGroup": "Apply InstantID (several people)",
}
