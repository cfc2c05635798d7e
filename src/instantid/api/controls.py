"""The published demo's extra ControlNets (pose, canny, depth) beside IdentityNet, and image-to-image.

A loaded :class:`~instantid.InstantID` holds one :class:`ExtraControls`: each extra ControlNet and its map model load
on first use (a call with ``<kind>_strength`` above 0) and stay; a call then runs a pipeline variant that shares
every module of the loaded one, with a ``MultiControlNetModel`` whose first net is IdentityNet (the face tokens go to
IdentityNet only, the text to the others, as the published ``_full`` pipeline does). The maps are made from the
identity's pose photo, else its first face photo, resized to the output size first, as the demo does.
"""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from instantid.api.identity import Identity
from instantid.api.settings import GenerationSettings
from instantid.errors import InvalidInputError
from instantid.io.models import ControlRefs


class ExtraControls:
    """The extra ControlNets and map models of one loaded model, loaded once each, when first asked for."""

    def __init__(self, refs: ControlRefs | None = None) -> None:
        self.refs = refs or ControlRefs()
        self._loaded: dict[str, tuple[Any, Any]] = {}  # kind -> (ControlNetModel, map maker)
        self._variants: dict[tuple[type, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def load(self, pipe: Any, kind: str) -> tuple[Any, Any]:
        """``kind``'s ControlNet (on ``pipe``'s device, in IdentityNet's dtype) and map maker."""
        from instantid.io.loading import library_chatter, load_controlnet, load_mapper

        with self._lock, library_chatter():
            if kind not in self._loaded:
                dtype = pipe.identitynet.dtype
                # With CPU offload the modules rest on the CPU: the nets go where the steps run.
                device = getattr(pipe, "_execution_device", pipe.device)
                net = load_controlnet(kind, self.refs.controlnet(kind), dtype=dtype)
                mapper = load_mapper(kind, self.refs.map_model(kind))
                model = getattr(mapper, "model", None)
                if model is not None:
                    model.to(device, dtype)
                self._loaded[kind] = (net.to(device), mapper)
            return self._loaded[kind]

    def pipeline(self, pipe: Any, kinds: tuple[str, ...], image_to_image: bool) -> Any:
        """``pipe`` itself, or the variant for these extra nets and/or image-to-image (made once, shares weights)."""
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        from instantid.io.loading import library_chatter
        from instantid.pipelines.inpaint import img2img_pipeline
        from instantid.pipelines.sdxl import StableDiffusionXLInstantIDImg2ImgPipeline

        if not kinds:
            return img2img_pipeline(pipe) if image_to_image else pipe
        cls = StableDiffusionXLInstantIDImg2ImgPipeline if image_to_image else type(pipe)
        key = (cls, kinds)
        if key not in self._variants:
            nets = [pipe.identitynet, *(self.load(pipe, kind)[0] for kind in kinds)]
            with library_chatter():  # from_pipe's dtype notes are about modules it only shares
                variant = cls.from_pipe(pipe, controlnet=MultiControlNetModel(nets))
            variant.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
            self._variants[key] = variant
        return self._variants[key]

    def maps(self, pipe: Any, identity: Identity, kinds: tuple[str, ...], size: tuple[int, int]) -> list[Image.Image]:
        """Each kind's control map of the identity's pose photo (else first face photo) at ``size``."""
        if not kinds:
            return []
        if identity.control_photo is None:
            raise InvalidInputError("the pose / canny / depth ControlNets need the photo the pose comes from: "
                                    "build the identity with prepare_identity()")
        photo = identity.control_photo.convert("RGB").resize(size, Image.LANCZOS)
        return [self.load(pipe, kind)[1](photo).resize(size, Image.LANCZOS) for kind in kinds]


def call_arguments(pipe: Any, controls: ExtraControls, identity: Identity, settings: GenerationSettings,
                   keypoints: Image.Image, size: tuple[int, int], init_image: Image.Image | None
                   ) -> tuple[Any, dict[str, Any]]:
    """The pipeline a generation runs and its control arguments: the keypoint picture alone, or with the extra
    nets' maps, strengths and windows (IdentityNet keeps the settings' window, the others run every step), and
    with an init image its noising ``strength``."""
    strengths = settings.control_strengths()
    kinds = tuple(strengths)
    variant = controls.pipeline(pipe, kinds, init_image is not None)
    arguments: dict[str, Any] = {}
    control: Any = keypoints
    if kinds:
        control = [keypoints, *controls.maps(pipe, identity, kinds, size)]
        arguments.update(
            controlnet_conditioning_scale=[settings.identitynet_strength, *strengths.values()],
            control_guidance_start=[settings.control_guidance_start, *(0.0 for _ in kinds)],
            control_guidance_end=[settings.control_guidance_end, *(1.0 for _ in kinds)],
        )
    if init_image is None:
        arguments["image"] = control
    else:
        arguments.update(image=init_image.convert("RGB").resize(size, Image.LANCZOS), control_image=control,
                         strength=settings.denoising_strength)
    return variant, arguments


def model_refs(controls: ExtraControls, settings: GenerationSettings) -> dict[str, str]:
    """For the metadata's ``models`` (shared by name only, as the others): the extra nets and map models run."""
    refs: dict[str, str] = {}
    for kind in settings.control_strengths():
        refs[f"{kind}_controlnet"] = controls.refs.controlnet(kind)
        mapper = controls.refs.map_model(kind)
        if mapper is not None:
            refs[f"{kind}_map_model"] = mapper
    return refs
