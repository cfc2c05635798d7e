"""The high-level API: one object that loads everything and makes images of a person.

    from instantid import InstantID
    app = InstantID.from_pretrained()            # published weights (GPU); or InstantID.demo() offline
    person = app.prepare_identity(["me1.jpg", "me2.jpg"])        # photos -> Identity, analysed once
    result = app.generate(person, prompt="an astronaut", style="Watercolor", seed=7)
    result.images[0].save("astronaut.png")

Data flows one way: photos -> :meth:`InstantID.prepare_identity` -> :class:`~instantid.api.identity.Identity` ->
:meth:`InstantID.generate` with :class:`~instantid.api.settings.GenerationSettings` -> images. The CLI, the web UI,
the server and the batch runner all build an Identity once and hand it on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instantid.api.controls import ExtraControls, call_arguments, model_refs
from instantid.api.face_side import FaceSide, prepare_identity
from instantid.api.group import GroupMixin
from instantid.api.identity import Identity
from instantid.api.pipeline_call import call_seeds, settings_arguments
from instantid.api.regions import face_region_mask
from instantid.api.results import GenerationResult, ImageInput, Progress, versions
from instantid.api.settings import GenerationSettings, make_settings, with_overrides
from instantid.api.style_images import StyleImages, load_style_images, style_metadata
from instantid.api.styles import get_style
from instantid.core.keypoints import demo_resize_size, draw_kps
from instantid.core.style_blocks import block_scales
from instantid.errors import EmbeddingSpaceError, InvalidInputError
from instantid.faces import (
    DEMO_BACKEND,
    SPACE_ANTELOPEV2,
    SPACE_DLIB,
    Face,
    FaceAnalyzer,
    create_face_analyzer,
    load_image,
)
from instantid.io.loading import (
    describe_checkpoint,
    load_lora,
    load_pipeline,
    pick_device,
    pick_dtype,
)
from instantid.io.models import (
    DEFAULT_STYLE_ADAPTER,
    STYLE_SUBFOLDER,
    ControlRefs,
    ModelRefs,
    resolve_adapter,
    resolve_base,
    resolve_identitynet,
)
from instantid.pipelines.inpaint import check_unet_fits
from instantid.pipelines.prompts import prompt_arguments
from instantid.pipelines.schedulers import make_scheduler, sampler_label
from instantid.pipelines.schedulers import scheduler_name as _scheduler_name
from instantid.pipelines.style import share_style_modules


class InstantID(GroupMixin):
    """InstantID ready to generate: pipeline, face analyzer and model references together."""

    def __init__(
        self, pipe: Any, analyzer: FaceAnalyzer, refs: ModelRefs, *, demo: bool = False,
        max_side: int = 1280, min_side: int = 1024, allow_embedding_mismatch: bool = False,
        controls: ControlRefs | None = None,
    ) -> None:
        self.pipe = pipe
        self.controls = ExtraControls(controls)  # pose / canny / depth ControlNets, each loaded when first used
        self.faces = FaceSide(analyzer)  # photos -> Identity under its own lock; works without this model too
        self.refs = refs
        self.demo = demo  # random tiny weights: images are noise
        self.max_side = max_side
        self.min_side = min_side
        self.allow_embedding_mismatch = allow_embedding_mismatch
        self.lora: str | None = None
        self.preset: Any = None  # an instantid.speed.presets.FewStepPreset once apply_preset() ran
        self.quantize: str | None = None  # torchao scheme the weights were quantized with (lossy), if any
        self.model_name: str | None = None  # A1111's 'Model' / 'Model hash' (loading.describe_checkpoint)
        self.model_hash: str | None = None
        self.default_scheduler = pipe.scheduler
        self.style_adapter: str | None = None  # the style adapter loaded (load_style_adapter), if any
        self.default_style_adapter = DEFAULT_STYLE_ADAPTER  # what a first style image loads
        self._offload_device: str | None = None  # CPU offload's device: a later load re-arms it
        # One pipeline call at a time per model: a call sets its sampler on the pipeline (run_pipeline) and an
        # inpainting call hooks the shared UNet; the lock keeps those from reaching another call, and both are
        # undone before it is released. (Face state travels with each call and needs no lock.)
        self._lock = threading.Lock()
        spec = pipe.adapter_spec
        self.embedding_space = spec.embedding_space or (SPACE_ANTELOPEV2 if spec.embedding_dim == 512 else None)
        self._check_space()

    @property
    def analyzer(self) -> FaceAnalyzer:
        return self.faces.analyzer

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, base: str | None = None, identitynet: str | None = None, adapter: str | None = None, *,
        face_backend: str = "auto", antelopev2_root: str | Path | None = None, device: str | None = None,
        dtype: str | None = None, cpu_offload: bool = False, scheduler: str | None = None,
        lora: str | None = None, lora_scale: float = 1.0, allow_embedding_mismatch: bool = False,
        demo: bool = False, max_side: int = 1280, min_side: int = 1024, compile: bool = False,
        analyzer: FaceAnalyzer | None = None, preset: str | None = None, preset_weights: str | Path | None = None,
        compile_cache: str | Path | None = None, quantize: str | None = None, controls: ControlRefs | None = None,
        style_adapter: str | None = None,
    ) -> InstantID:
        """Load base + IdentityNet + adapter (paths or Hub ids) and a face analyzer (``analyzer``: one already made,
        e.g. by a CLI that checked the photos with it before this slow load). ``controls``: where the extra
        pose / canny / depth ControlNets come from (default: the published demo's), loaded when first used."""
        refs = ModelRefs(**{k: v for k, v in (("base", base), ("identitynet", identitynet), ("adapter", adapter)) if v})
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        base_path = resolve_base(refs.base)
        identitynet_path = resolve_identitynet(refs.identitynet)
        adapter_path = resolve_adapter(refs.adapter)
        analyzer = analyzer or create_face_analyzer(face_backend, root=antelopev2_root)
        pipe = load_pipeline(base_path, identitynet_path, adapter_path, dtype=torch_dtype)
        model_name, model_hash = describe_checkpoint(refs.base, base_path)
        if scheduler:
            pipe.scheduler = make_scheduler(pipe.scheduler.config, scheduler)
        app = cls(
            pipe, analyzer, refs, demo=demo, max_side=max_side, min_side=min_side,
            allow_embedding_mismatch=allow_embedding_mismatch, controls=controls,
        )
        app.model_name, app.model_hash = model_name, model_hash
        if lora:
            app.load_lora(lora, lora_scale)
        if preset:
            app.apply_preset(preset, preset_weights)
        if style_adapter:  # else loaded by the first style image
            app.load_style_adapter(style_adapter)
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
            app._offload_device = device
        else:
            pipe.to(device)
        if compile or quantize:
            from instantid.speed.fast import enable_fast_inference

            # After the preset: its LoRA is fused, so changing nothing per call recompiles nothing.
            enable_fast_inference(pipe, compile=compile, cache_dir=compile_cache, quantize=quantize)
        app.quantize = quantize
        return app

    @classmethod
    def demo(cls, cache_dir: str | Path | None = None, **kwargs: Any) -> InstantID:
        """Tiny random weights + the offline dlib face model: runs anywhere in seconds, makes noise."""
        from instantid.io.tiny import TinyConfig, build_tiny_controls, build_tiny_instantid, build_tiny_style_adapter

        folder = Path(cache_dir or os.environ.get("INSTANTID_DEMO_DIR", "~/.cache/instantid/tiny-demo")).expanduser()
        config = TinyConfig(embedding_dim=128, embedding_space=SPACE_DLIB)
        build_tiny_instantid(folder, config)
        kwargs = {"face_backend": DEMO_BACKEND, "max_side": 256, "min_side": 256, "dtype": "fp32",
                  "controls": build_tiny_controls(folder), **kwargs}
        app = cls.from_pretrained(
            str(folder / "base"), str(folder / "ControlNetModel"), str(folder / "ip-adapter.bin"), demo=True, **kwargs
        )
        # A tiny style adapter in h94/IP-Adapter's layout, for style images in demo mode.
        app.default_style_adapter = str(build_tiny_style_adapter(folder / "style", config) / STYLE_SUBFOLDER)
        return app

    def apply_preset(self, name: str, weights: str | Path | None = None) -> None:
        """A few-step preset (LCM-LoRA, SDXL-Lightning, Hyper-SD, TCD: :mod:`instantid.speed.presets`): its weights are
        fused into the UNet and its sampler becomes the default; :meth:`preset_defaults` gives its steps and
        guidance for settings the user did not choose."""
        from instantid.speed.presets import apply_preset

        self.preset = apply_preset(self.pipe, name, weights)
        self.default_scheduler = self.pipe.scheduler

    def preset_defaults(self) -> dict[str, Any]:
        """Generation settings the loaded preset chooses (steps, guidance), for fields the caller left unset."""
        if self.preset is None:
            return {}
        return {"steps": self.preset.steps, "guidance_scale": self.preset.guidance_scale}

    def preset_fills(self, settings: GenerationSettings) -> dict[str, Any]:
        """What the loaded preset sets in ``settings``: its steps and guidance where the caller chose none (a
        field is chosen when it is in ``settings.model_fields_set``: given to the constructor, a keyword of
        :meth:`generate`, a JSON field, a typed flag)."""
        return {k: v for k, v in self.preset_defaults().items() if k not in settings.model_fields_set}

    def call_settings(self, settings: GenerationSettings | Mapping[str, Any] | None = None,
                      **overrides: Any) -> GenerationSettings:
        """The settings a call runs with: ``settings`` (default: the defaults) with keyword ``overrides``, and the
        loaded preset's steps and guidance where neither chose them. Every task (generate, group, swap, detail)
        and so every surface goes through this one rule; the result records the values used."""
        settings = with_overrides(settings, overrides)
        fills = self.preset_fills(settings)
        return settings.updated(**fills) if fills else settings

    def load_style_adapter(self, ref: str | None = None) -> None:
        """Load the style adapter for style images (InstantStyle): a folder, an ``ip-adapter_sdxl`` file or a Hub id
        (default :attr:`default_style_adapter`); without this call the first style image loads the default."""
        with self._lock:
            self._load_style(ref)

    def _load_style(self, ref: str | None) -> None:
        from instantid.io.loading import load_style_adapter

        ref = ref or self.default_style_adapter
        load_style_adapter(self.pipe, ref)
        self.style_adapter = ref
        if self._offload_device is not None:  # the image encoder joins the offload sequence
            self.pipe.enable_model_cpu_offload(device=self._offload_device)

    def load_lora(self, ref: str, scale: float = 1.0) -> None:
        """Load a LoRA (file, folder or Hub id); a name containing 'lcm' also selects the LCM sampler."""
        load_lora(self.pipe, ref, scale)
        self.default_scheduler = self.pipe.scheduler
        self.lora = ref

    def _check_space(self) -> None:
        space = self.analyzer.space
        if self.embedding_space and space != self.embedding_space and not self.allow_embedding_mismatch:
            raise EmbeddingSpaceError(
                f"the face model gives {space} embeddings but the face adapter was trained on "
                f"{self.embedding_space}: use the matching face backend"
            )

    # ---- faces -> identity ---------------------------------------------------------------------
    def analyze(self, image: ImageInput, name: str | None = None) -> list[Face]:
        """Every face in a photo, largest first."""
        return self.faces.analyze(image, name)

    def find_face(
        self, image: ImageInput, name: str | None = None, index: int | None = None
    ) -> tuple[Image.Image, Face]:
        """The photo (upright RGB) and its largest (or ``index``-th) face; NoFaceError if there is none."""
        return self.faces.find_face(image, name, index)

    def prepare_identity(
        self, photos: ImageInput | Sequence[ImageInput], *, pose: ImageInput | None = None,
        face_index: int | None = None, fusion: str = "auto", weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None, pose_name: str | None = None, full_paths: bool = False,
    ) -> Identity:
        """Analyse the photos once: fused embedding (see :mod:`instantid.api.identity`), pose face and size.

        ``pose`` takes keypoints and size from another photo (its largest face); otherwise the first photo's
        chosen face. ``names`` label in-memory photos (uploads) in messages and metadata; file photos are named
        by their file name, or their full path with ``full_paths``.
        """
        return self.faces.prepare_identity(photos, pose=pose, face_index=face_index, fusion=fusion,
                                           weights=weights, names=names, pose_name=pose_name,
                                           full_paths=full_paths)

    # ---- generation ----------------------------------------------------------------------------
    def output_size(self, identity: Identity, settings: GenerationSettings) -> tuple[int, int]:
        return self._size(settings, identity.pose_size)

    def _size(self, settings: GenerationSettings, natural: tuple[int, int]) -> tuple[int, int]:
        """The settings' width x height, else the published demo's resize of a picture of size ``natural``."""
        if settings.width is not None and settings.height is not None:
            return settings.width, settings.height
        return demo_resize_size(*natural, self.max_side, self.min_side)

    def generate(
        self, identity: Identity | ImageInput | Sequence[ImageInput],
        settings: GenerationSettings | Mapping[str, Any] | None = None, *,
        pose_image: ImageInput | None = None, init_image: ImageInput | None = None, init_name: str = "init image",
        progress: Progress | None = None, style_images: StyleImages | ImageInput | Sequence[ImageInput] | None = None,
        **overrides: Any,
    ) -> GenerationResult:
        """Images of ``identity`` (an :class:`Identity`; photos are accepted and analysed first).

        With ``init_image`` the pictures start from it (image-to-image, ``settings.denoising_strength``), resized
        to the output size. ``settings.pose_strength`` / ``canny_strength`` / ``depth_strength`` above 0 add the
        published demo's extra ControlNets (:mod:`instantid.api.controls`). ``style_images``: the pictures take
        their style (InstantStyle: ``style_strength``, ``style_blocks``)."""
        settings = self.call_settings(settings, **overrides)
        if init_image is not None:
            settings.check_init_steps()
        style = load_style_images(style_images) if style_images is not None else None
        if not isinstance(identity, Identity):
            identity = self.prepare_identity(identity, pose=pose_image, face_index=settings.face_index,
                                             fusion=settings.fusion)
        elif pose_image is not None:
            raise InvalidInputError("give the pose photo to prepare_identity(), not to generate()")

        # 1. Output size; the keypoint picture and face mask at that size.
        width, height = self.output_size(identity, settings)
        scale = (width / identity.pose_size[0], height / identity.pose_size[1])
        kps_image = draw_kps(Image.new("RGB", (width, height)), identity.pose_face.kps * np.array(scale))
        mask = face_region_mask(identity.pose_face, (width, height), scale) if settings.enhance_face_region else None

        # 2. The extra ControlNets' maps and the init picture, if any, and the pipeline variant that takes them.
        settings.check_init_image(init_image is not None)
        init = load_image(init_image, init_name) if init_image is not None else None
        pipe, arguments = call_arguments(self.pipe, self.controls, identity, settings, kps_image, (width, height),
                                         init)

        # 3. Generate (styled prompt, seeds, per-call sampler), then the optional face-detail pass.
        images, seeds, used_scheduler = self.run_pipeline(
            pipe, settings, progress, style_images=style, image_embeds=identity.embedding, control_mask=mask,
            **arguments,
        )
        settings = settings.updated(seed=seeds[0])
        detail = None
        if settings.face_detail:
            from instantid.api.face_detail import FaceDetailOptions, refine_faces

            images, detail = refine_faces(self, identity, images, settings, seeds,
                                          FaceDetailOptions(strength=settings.face_detail_strength),
                                          progress=progress)
        metadata = {**self.call_metadata(identity, settings, used_scheduler, style=style), "width": width,
                    "height": height}
        metadata["models"].update(model_refs(self.controls, settings))
        if init is not None:
            metadata["init_image"] = init_name
        if settings.face_detail:
            metadata["face_detail"] = detail
        return GenerationResult(images=images, seeds=seeds, settings=settings, metadata=metadata)

    def call_scheduler(self, settings: GenerationSettings) -> Any:
        """The sampler a call with ``settings`` runs: the one named in the settings on the model's noise
        schedule, else the model's own."""
        if settings.scheduler:
            return make_scheduler(self.default_scheduler.config, settings.scheduler)
        return self.default_scheduler

    def run_pipeline(
        self, pipe: Any, settings: GenerationSettings, progress: Progress | None = None, *,
        style_images: StyleImages | None = None, **arguments: Any,
    ) -> tuple[list[Image.Image], list[int], Any]:
        """One call of ``pipe`` (``self.pipe`` or a variant sharing its weights: img2img, inpainting) with the
        settings' styled prompt, strengths, steps, guidance window, seeds and sampler, one call at a time per
        model. ``arguments`` are the call's own (identity embedding, keypoint picture, mask, init image...);
        ``style_images``: style pictures at the settings' strength and blocks (the style adapter loads on first
        use).
        Returns ``(images, seeds, the scheduler used)``."""
        check_unet_fits(pipe)
        prompt, negative = get_style(settings.style).apply(settings.prompt, settings.negative_prompt)
        seeds = call_seeds(settings)
        eta = self.preset.eta if self.preset is not None else None
        # The call's own arguments win (e.g. one strength and window per ControlNet when there are several).
        call = {**settings_arguments(settings, seeds, pipe.device, progress, eta), **arguments}
        with self._lock:
            if style_images is not None:
                if self.style_adapter is None:
                    self._load_style(None)
                share_style_modules(pipe, self.pipe)  # a variant (image-to-image...) made before the adapter loaded
                call.update(style_image=list(style_images.images),
                            style_scale=block_scales(settings.style_blocks, settings.style_strength))
            pipe.scheduler = self.call_scheduler(settings)
            try:
                images = pipe(
                    **prompt_arguments(pipe, prompt, negative, settings.guidance_scale, settings.comma_padding),
                    **call,
                ).images
                used = pipe.scheduler
            finally:
                pipe.scheduler = self.default_scheduler
        return images, seeds, used

    def call_metadata(self, identity: Identity, settings: GenerationSettings, scheduler: Any,
                      task: str = "generate", style: StyleImages | None = None) -> dict[str, Any]:
        """What every output records: task, prompt as used, settings, models, sampler, identity, versions, and the
        style reference pictures when there are some."""
        prompt, negative = get_style(settings.style).apply(settings.prompt, settings.negative_prompt)
        if style is not None:
            reference = style_metadata(style, settings.style_strength, settings.style_blocks, self.style_adapter)
        return {
            "task": task, "prompt": prompt, "negative_prompt": negative, "user_prompt": settings.prompt,
            "settings": settings.model_dump(), "models": asdict(self.refs), "lora": self.lora,
            "model_name": self.model_name, "model_hash": self.model_hash,
            "preset": None if self.preset is None else self.preset.name, "quantize": self.quantize,
            "scheduler": _scheduler_name(scheduler), "sampler": sampler_label(scheduler),
            "embedding_space": self.analyzer.space, "reference_faces": len(identity.kept), **identity.metadata(),
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."), "device": str(self.pipe.device),
            "versions": versions(), "demo_weights": self.demo,
            **({"style_reference": reference} if style is not None else {}),
        }


__all__ = ["GenerationResult", "GenerationSettings", "Identity", "InstantID", "make_settings", "prepare_identity"]
