"""The high-level API: one object that loads everything and makes images of a person.

    from instantid import InstantID
    app = InstantID.from_pretrained()            # published weights (GPU); or InstantID.demo() offline
    person = app.prepare_identity(["me1.jpg", "me2.jpg"])        # photos -> Identity, analysed once
    result = app.generate(person, prompt="an astronaut", style="Watercolor", seed=7)
    result.images[0].save("astronaut.png")

Data flows one way: photos -> :meth:`InstantID.prepare_identity` -> :class:`~instantid.identity.Identity` ->
:meth:`InstantID.generate` with :class:`~instantid.settings.GenerationSettings` -> images. The CLI, the web UI,
the server and the batch runner all build an Identity once and hand it on.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from instantid.errors import EmbeddingSpaceError, IncompatibleWeightsError, InvalidInputError
from instantid.faces import (
    SPACE_ANTELOPEV2,
    SPACE_DLIB,
    Face,
    FaceAnalyzer,
    choose_face,
    create_face_analyzer,
    load_image,
    several_faces,
)
from instantid.identity import Identity, fuse
from instantid.keypoints import demo_resize_size, draw_kps
from instantid.loading import (
    describe_checkpoint,
    load_lora,
    load_pipeline,
    make_scheduler,
    pick_device,
    pick_dtype,
    sampler_label,
)
from instantid.loading import scheduler_name as _scheduler_name
from instantid.models import ModelRefs, resolve_adapter, resolve_base, resolve_identitynet
from instantid.prompts import encode_prompt_weighted
from instantid.settings import MAX_SEED, GenerationSettings, check_people, make_settings
from instantid.styles import get_style

ImageInput = str | Path | bytes | Image.Image
Progress = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """Images plus everything needed to reproduce them."""

    images: list[Image.Image]
    seeds: list[int]
    settings: GenerationSettings
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able; written beside every output

    def image_metadata(self, index: int) -> dict[str, Any]:
        """Metadata of one image (its own seed)."""
        return {**self.metadata, "seed": self.seeds[index], "index": index}


def face_region_mask(face: Face, size: tuple[int, int], scale: tuple[float, float]) -> Image.Image:
    """White rectangle over the (rescaled) face box on black: the demo's 'enhance non-face region' mask."""
    w, h = size
    mask = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v * s) for v, s in zip(face.bbox, scale * 2, strict=True))
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 255
    return Image.fromarray(mask)


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
        pose_name=label, warnings=(*(n for n in notes if n), *warnings),
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
                   warnings=(*identity.warnings, *([note] if note else [])))


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


class InstantID:
    """InstantID ready to generate: pipeline, face analyzer and model references together."""

    def __init__(
        self, pipe: Any, analyzer: FaceAnalyzer, refs: ModelRefs, *, demo: bool = False,
        max_side: int = 1280, min_side: int = 1024, allow_embedding_mismatch: bool = False,
    ) -> None:
        self.pipe = pipe
        self.analyzer = analyzer
        self.refs = refs
        self.demo = demo  # random tiny weights: images are noise
        self.max_side = max_side
        self.min_side = min_side
        self.allow_embedding_mismatch = allow_embedding_mismatch
        self.lora: str | None = None
        self.preset: Any = None  # an instantid.presets.FewStepPreset once apply_preset() ran
        self.quantize: str | None = None  # torchao scheme the weights were quantized with (lossy), if any
        self.model_name: str | None = None  # A1111's 'Model' / 'Model hash' (loading.describe_checkpoint)
        self.model_hash: str | None = None
        self.default_scheduler = pipe.scheduler
        self._lock = threading.Lock()  # one generation at a time per model
        self._face_lock = threading.Lock()  # the face models are not known to be thread-safe (dlib)
        spec = pipe.adapter_spec
        self.embedding_space = spec.embedding_space or (SPACE_ANTELOPEV2 if spec.embedding_dim == 512 else None)
        self._check_space()

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, base: str | None = None, identitynet: str | None = None, adapter: str | None = None, *,
        face_backend: str = "auto", antelopev2_root: str | Path | None = None, device: str | None = None,
        dtype: str | None = None, cpu_offload: bool = False, scheduler: str | None = None,
        lora: str | None = None, lora_scale: float = 1.0, allow_embedding_mismatch: bool = False,
        demo: bool = False, max_side: int = 1280, min_side: int = 1024, compile: bool = False,
        analyzer: FaceAnalyzer | None = None, preset: str | None = None, preset_weights: str | Path | None = None,
        compile_cache: str | Path | None = None, quantize: str | None = None,
    ) -> InstantID:
        """Load base + IdentityNet + adapter (paths or Hub ids) and a face analyzer (``analyzer``: one already made,
        e.g. by a CLI that checked the photos with it before this slow load)."""
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
            allow_embedding_mismatch=allow_embedding_mismatch,
        )
        app.model_name, app.model_hash = model_name, model_hash
        if lora:
            app.load_lora(lora, lora_scale)
        if preset:
            app.apply_preset(preset, preset_weights)
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if compile or quantize:
            from instantid.fast import enable_fast_inference

            # After the preset: its LoRA is fused, so changing nothing per call recompiles nothing.
            enable_fast_inference(pipe, compile=compile, cache_dir=compile_cache, quantize=quantize)
        app.quantize = quantize
        return app

    @classmethod
    def demo(cls, cache_dir: str | Path | None = None, **kwargs: Any) -> InstantID:
        """Tiny random weights + the offline dlib face model: runs anywhere in seconds, makes noise."""
        from instantid.tiny import TinyConfig, build_tiny_instantid

        folder = Path(cache_dir or os.environ.get("INSTANTID_DEMO_DIR", "~/.cache/instantid/tiny-demo")).expanduser()
        build_tiny_instantid(folder, TinyConfig(embedding_dim=128, embedding_space=SPACE_DLIB))
        kwargs = {"face_backend": "dlib", "max_side": 256, "min_side": 256, "dtype": "fp32", **kwargs}
        return cls.from_pretrained(
            str(folder / "base"), str(folder / "ControlNetModel"), str(folder / "ip-adapter.bin"), demo=True, **kwargs
        )

    def apply_preset(self, name: str, weights: str | Path | None = None) -> None:
        """A few-step preset (LCM-LoRA, SDXL-Lightning, Hyper-SD, TCD: :mod:`instantid.presets`): its weights are
        fused into the UNet and its sampler becomes the default; :meth:`preset_defaults` gives its steps and
        guidance for settings the user did not choose."""
        from instantid.presets import apply_preset

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

    def call_settings(self, settings: GenerationSettings | None = None, **overrides: Any) -> GenerationSettings:
        """The settings a call runs with: ``settings`` (default: the defaults) with keyword ``overrides``, and the
        loaded preset's steps and guidance where neither chose them. Every task (generate, group, swap, detail)
        and so every surface goes through this one rule; the result records the values used."""
        settings = _with_overrides(settings, overrides)
        fills = self.preset_fills(settings)
        return settings.updated(**fills) if fills else settings

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
        picture = load_image(image, name)
        with self._face_lock:
            return self.analyzer.analyze(picture, name)

    def find_face(
        self, image: ImageInput, name: str | None = None, index: int | None = None
    ) -> tuple[Image.Image, Face]:
        """The photo (upright RGB) and its largest (or ``index``-th) face; NoFaceError if there is none."""
        picture = load_image(image, name)
        with self._face_lock:
            return picture, self.analyzer.get_face(picture, name, index)

    def prepare_identity(
        self, photos: ImageInput | Sequence[ImageInput], *, pose: ImageInput | None = None,
        face_index: int | None = None, fusion: str = "auto", weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None, pose_name: str | None = None, full_paths: bool = False,
    ) -> Identity:
        """Analyse the photos once: fused embedding (see :mod:`instantid.identity`), pose face and size.

        ``pose`` takes keypoints and size from another photo (its largest face); otherwise the first photo's
        chosen face. ``names`` label in-memory photos (uploads) in messages and metadata; file photos are named
        by their file name, or their full path with ``full_paths``.
        """
        with self._face_lock:
            return prepare_identity(self.analyzer, photos, pose=pose, face_index=face_index, fusion=fusion,
                                    weights=weights, names=names, pose_name=pose_name, full_paths=full_paths)

    # ---- generation ----------------------------------------------------------------------------
    def output_size(self, identity: Identity, settings: GenerationSettings) -> tuple[int, int]:
        return self._size(settings, identity.pose_size)

    def _size(self, settings: GenerationSettings, natural: tuple[int, int]) -> tuple[int, int]:
        """The settings' width x height, else the published demo's resize of a picture of size ``natural``."""
        if settings.width is not None and settings.height is not None:
            return settings.width, settings.height
        return demo_resize_size(*natural, self.max_side, self.min_side)

    def generate(
        self, identity: Identity | ImageInput | Sequence[ImageInput], settings: GenerationSettings | None = None, *,
        pose_image: ImageInput | None = None, progress: Progress | None = None, init_image: ImageInput | None = None,
        strength: float = 0.75, **overrides: Any,
    ) -> GenerationResult:
        """Images of ``identity`` (an :class:`Identity`; photos are accepted and analysed first). With
        ``init_image``: image-to-image, starting from that picture (resized to the output size) noised to
        ``strength`` (1 = from noise); ``int(steps * strength)`` steps run, as in A1111 and diffusers."""
        settings = self.call_settings(settings, **overrides)
        if init_image is not None and int(settings.steps * strength) < 1:
            raise InvalidInputError(f"denoising strength {strength} of {settings.steps} steps runs no step; raise "
                                    "the strength or the steps")
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

        # 2. Generate (styled prompt, seeds, per-call sampler) from noise or from the init image, then the
        # optional face-detail pass.
        pipe, start = self.pipe, {"image": kps_image}
        if init_image is not None:
            from instantid.inpaint import img2img_pipeline

            pipe = img2img_pipeline(self.pipe)
            start = {"image": load_image(init_image, "init image").resize((width, height), Image.LANCZOS),
                     "control_image": kps_image, "strength": strength, "width": width, "height": height}
        images, seeds, used_scheduler = self.run_pipeline(
            pipe, settings, progress, image_embeds=identity.embedding, control_mask=mask, **start,
        )
        settings = settings.updated(seed=seeds[0])
        detail = None
        if settings.face_detail:
            from instantid.face_detail import FaceDetailOptions, refine_faces

            images, detail = refine_faces(self, identity, images, settings, seeds,
                                          FaceDetailOptions(strength=settings.face_detail_strength),
                                          progress=progress)
        metadata = {**self.call_metadata(identity, settings, used_scheduler), "width": width, "height": height}
        if init_image is not None:
            metadata["image_to_image"] = {"strength": strength, "denoising_steps": int(settings.steps * strength)}
        if settings.face_detail:
            metadata["face_detail"] = detail
        return GenerationResult(images=images, seeds=seeds, settings=settings, metadata=metadata)

    def group_poses(self, pose: ImageInput, count: int, name: str = "pose image") -> tuple[list[Face], tuple[int, int]]:
        """:func:`group_poses` with this model's face analyzer."""
        with self._face_lock:
            return group_poses(self.analyzer, pose, count, name)

    def generate_group(
        self, people: Sequence[Identity], settings: GenerationSettings | None = None, *,
        pose: ImageInput | None = None, pose_name: str = "pose image", progress: Progress | None = None,
        pose_faces: tuple[list[Face], tuple[int, int]] | None = None, **overrides: Any,
    ) -> GenerationResult:
        """Several people in one picture (the paper's multi-identity synthesis): person ``i`` takes the ``i``-th
        face from the left of the group photo ``pose`` (or, without one, column ``i`` of the picture in their own
        pose); each person's face tokens and IdentityNet act only in the region nearest their face. Takes
        :data:`~instantid.settings.MIN_PEOPLE` to :data:`~instantid.settings.MAX_PEOPLE` people, as every surface."""
        check_people(len(people))
        return self._generate_group(list(people), self.call_settings(settings, **overrides), pose=pose,
                                    pose_name=pose_name, progress=progress, pose_faces=pose_faces)

    def _generate_group(
        self, people: list[Identity], settings: GenerationSettings, *, pose: ImageInput | None, pose_name: str,
        progress: Progress | None, pose_faces: tuple[list[Face], tuple[int, int]] | None,
    ) -> GenerationResult:
        """:meth:`generate_group` for any number of people (one person gives what :meth:`generate` gives: the
        tests check the group machinery that way)."""
        from instantid.pipeline import Person, nearest_face_regions

        if len({p.space for p in people}) != 1:
            raise InvalidInputError("every person must come from the same face model")
        if pose_faces is None and pose is not None:
            pose_faces = self.group_poses(pose, len(people), pose_name)
        if pose_faces is not None:
            faces, size = pose_faces
            width, height = self._size(settings, size)
            scale = np.array((width / size[0], height / size[1]))
            kps = [f.kps * scale for f in faces]
            boxes = [np.asarray(f.bbox).reshape(2, 2) * scale for f in faces]
        else:
            width, height = self._size(settings, (self.min_side * max(len(people), 2) // 2, self.min_side))
            placed = [_in_column(p.pose_face, i, len(people), width, height) for i, p in enumerate(people)]
            kps, boxes = [k for k, _ in placed], [b for _, b in placed]
        regions = nearest_face_regions([k.mean(axis=0) for k in kps], (width, height))
        if settings.enhance_face_region:  # as for one person: identity acts on the face box, here within the region
            regions = [_within_box(region, box) for region, box in zip(regions, boxes, strict=True)]
        canvas = Image.new("RGB", (width, height))
        persons = [Person(p.embedding, draw_kps(canvas, k), region) for p, k, region in zip(people, kps, regions,
                                                                                             strict=True)]
        images, seeds, used = self.run_pipeline(self.pipe, settings, progress, identities=persons)
        settings = settings.updated(seed=seeds[0])
        metadata = {
            **self.call_metadata(people[0], settings, used, task="group"), **_everyone(people), "width": width,
            "height": height, "people": [p.metadata() for p in people],
            "pose_from": pose_name if pose_faces is not None else "columns",
        }
        return GenerationResult(images=images, seeds=seeds, settings=settings, metadata=metadata)

    def call_scheduler(self, settings: GenerationSettings) -> Any:
        """The sampler a call with ``settings`` runs: the one named in the settings on the model's noise
        schedule, else the model's own."""
        if settings.scheduler:
            return make_scheduler(self.default_scheduler.config, settings.scheduler)
        return self.default_scheduler

    def run_pipeline(
        self, pipe: Any, settings: GenerationSettings, progress: Progress | None = None, **arguments: Any,
    ) -> tuple[list[Image.Image], list[int], Any]:
        """One call of ``pipe`` (``self.pipe`` or a variant sharing its weights: img2img, inpainting) with the
        settings' styled prompt, strengths, steps, guidance window, seeds and sampler, one call at a time per
        model. ``arguments`` are the call's own (identity embedding, keypoint picture, mask, init image...).
        Returns ``(images, seeds, the scheduler used)``."""
        _check_unet_fits(pipe)
        prompt, negative = get_style(settings.style).apply(settings.prompt, settings.negative_prompt)
        seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(settings.num_images)]
        gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
        generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]

        def on_step(step_pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if progress is not None:
                progress(step + 1, step_pipe.num_timesteps)
            return tensors

        with self._lock:
            pipe.scheduler = self.call_scheduler(settings)
            try:
                images = pipe(
                    **_prompt_arguments(pipe, prompt, negative, settings.guidance_scale, settings.comma_padding),
                    controlnet_conditioning_scale=settings.identitynet_strength,
                    ip_adapter_scale=settings.adapter_strength, num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, num_images_per_prompt=settings.num_images,
                    control_guidance_start=settings.control_guidance_start,
                    control_guidance_end=settings.control_guidance_end,
                    controlnet_cache_interval=settings.identitynet_cache_interval,
                    generator=generators, callback_on_step_end=on_step,
                    **({"eta": self.preset.eta} if self.preset is not None and self.preset.eta is not None else {}),
                    **arguments,
                ).images
                used = pipe.scheduler
            finally:
                pipe.scheduler = self.default_scheduler
        return images, seeds, used

    def call_metadata(self, identity: Identity, settings: GenerationSettings, scheduler: Any,
                      task: str = "generate") -> dict[str, Any]:
        """What every output records: task, prompt as used, settings, models, sampler, identity, versions."""
        prompt, negative = get_style(settings.style).apply(settings.prompt, settings.negative_prompt)
        return {
            "task": task, "prompt": prompt, "negative_prompt": negative, "user_prompt": settings.prompt,
            "settings": settings.model_dump(), "models": asdict(self.refs), "lora": self.lora,
            "model_name": self.model_name, "model_hash": self.model_hash,
            "preset": None if self.preset is None else self.preset.name, "quantize": self.quantize,
            "scheduler": _scheduler_name(scheduler), "sampler": sampler_label(scheduler),
            "embedding_space": self.analyzer.space, "reference_faces": len(identity.kept), **identity.metadata(),
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."), "device": str(self.pipe.device),
            "versions": _versions(), "demo_weights": self.demo,
        }


def _prompt_arguments(pipe: Any, prompt: str, negative: str, guidance_scale: float,
                      comma_padding: int = 0) -> dict[str, Any]:
    """The call's text as embeddings from :func:`instantid.prompts.encode_prompt_weighted`, for every prompt:
    A1111-style weights and prompts past CLIP's 77 tokens work, and a plain prompt gives bit for bit what
    ``pipe``'s own ``encode_prompt`` makes of the text (tests/test_generator.py checks empty prompts, zeroed
    negatives, guidance off, several images, a text-encoder LoRA, and the img2img/inpainting variants).

    An empty negative goes in as None so the model's ``force_zeros_for_empty_prompt`` zeroes it, as diffusers
    does for a missing negative. Negatives are made whenever guidance > 1: a pipeline that skips guidance
    anyway (diffusers' text-to-image with an LCM-distilled UNet) ignores them.
    """
    embeds = encode_prompt_weighted(pipe, prompt, negative or None, do_classifier_free_guidance=guidance_scale > 1,
                                    comma_padding_backtrack=comma_padding)
    return embeds._asdict()


def _check_unet_fits(pipe: Any) -> None:
    """An SDXL inpainting base (a UNet reading 9 channels: latents, mask, masked picture) works only in the
    inpainting pipeline; in the others diffusers would stop inside the first step with a shape error."""
    from instantid.inpaint import INPAINT_UNET_CHANNELS, StableDiffusionXLInstantIDInpaintPipeline
    from instantid.pipeline import StableDiffusionXLInstantIDImg2ImgPipeline

    inpainting = isinstance(pipe, StableDiffusionXLInstantIDInpaintPipeline)
    if pipe.unet.config.in_channels != INPAINT_UNET_CHANNELS or inpainting:
        return
    image_to_image = isinstance(pipe, StableDiffusionXLInstantIDImg2ImgPipeline)
    task = "redraw a whole picture (face detail)" if image_to_image else "make a picture from text"
    raise IncompatibleWeightsError(
        f"the base model is an SDXL inpainting model (9-channel UNet): it repaints masked parts and cannot {task}; "
        "use it with `instantid swap` (or instantid.inpaint.inpaint_pipeline), or load a text-to-image SDXL base"
    )


def _with_overrides(settings: GenerationSettings | None, overrides: dict[str, Any]) -> GenerationSettings:
    """``settings`` (default: the defaults) with keyword overrides applied and validated."""
    settings = settings or GenerationSettings()
    return settings.updated(**overrides) if overrides else settings


def _everyone(people: Sequence[Identity]) -> dict[str, Any]:
    """The top-level reference fields of a group picture over every person (``people`` has each one's own)."""
    each = [p.metadata() for p in people]
    return {
        "references": [name for m in each for name in m["references"]],
        "reference_details": [d for m in each for d in m["reference_details"]],
        "rejected_references": [name for m in each for name in m["rejected_references"]],
        "warnings": [f"person {i}: {w}" for i, m in enumerate(each) for w in m["warnings"]],
        "reference_faces": sum(len(p.kept) for p in people),
    }


def _in_column(face: Face, index: int, count: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A person's own five keypoints and face box moved into column ``index`` of ``count``, the face half a
    column wide: ``(kps (5, 2), box (2, 2) as [[x1, y1], [x2, y2]])``."""
    x1, y1, x2, y2 = face.bbox
    side = max(x2 - x1, y2 - y1, 1.0)
    target = 0.5 * width / count
    centre = np.array(((x1 + x2) / 2, (y1 + y2) / 2))
    new_centre = np.array(((index + 0.5) * width / count, 0.4 * height))

    def move(points: np.ndarray) -> np.ndarray:
        return (points - centre) * (target / side) + new_centre

    return move(face.kps), move(np.asarray(face.bbox, dtype=np.float64).reshape(2, 2))


def _within_box(region: Image.Image, box: np.ndarray) -> Image.Image:
    """``region`` (white inside) cut down to the face box, the single-person "enhance face region" rule."""
    inside = np.zeros((region.height, region.width), dtype=bool)
    (x1, y1), (x2, y2) = (int(v) for v in box[0]), (int(v) for v in box[1])
    inside[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    pixels = np.asarray(region).copy()
    pixels[~inside] = 0
    return Image.fromarray(pixels)


def _versions() -> dict[str, str]:
    import diffusers

    from instantid import __version__

    return {"instantid": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


__all__ = ["GenerationResult", "GenerationSettings", "Identity", "InstantID", "make_settings", "prepare_identity"]
