"""The high-level API: one object that loads everything and makes images from face photos.

    from instantid import InstantID
    app = InstantID.from_pretrained()            # published weights (GPU); or InstantID.demo() offline
    result = app.generate("me.jpg", prompt="an astronaut", style="Watercolor", seed=7)
    result.images[0].save("astronaut.png")

The CLI, the web UI and the HTTP server all call :meth:`InstantID.generate` with a
:class:`GenerationSettings`; none of them re-implements generation.
"""

from __future__ import annotations

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

from instantid.errors import EmbeddingSpaceError, InvalidInputError
from instantid.faces import SPACE_ANTELOPEV2, SPACE_DLIB, Face, FaceAnalyzer, create_face_analyzer, load_image
from instantid.keypoints import demo_resize_size, draw_kps
from instantid.models import ModelRefs, resolve_adapter, resolve_base, resolve_identitynet
from instantid.styles import get_style

ImageInput = str | Path | bytes | Image.Image
Progress = Callable[[int, int], None]
MAX_SEED = 2**32 - 1

SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class GenerationSettings:
    """Everything one generation needs besides the photos. Defaults are the published demo's."""

    prompt: str = ""  # empty prompt = image-only generation, as in the paper
    negative_prompt: str = ""
    style: str | None = None  # one of instantid.styles.STYLES; None = no style
    num_images: int = 1
    seed: int | None = None  # None = a random seed, recorded in the result
    steps: int = 30
    guidance_scale: float = 5.0
    identitynet_strength: float = 0.8  # controlnet_conditioning_scale
    adapter_strength: float = 0.8  # ip_adapter_scale
    width: int | None = None  # None = the published demo's resize of the face (or pose) photo
    height: int | None = None
    enhance_face_region: bool = True  # the face-region mask of the demo
    face_index: int | None = None  # which face in the photo(s); None = the largest
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0

    def validate(self) -> GenerationSettings:
        """Raise :class:`InvalidInputError` naming the first out-of-range field."""
        checks = (
            ("num_images", 1 <= self.num_images <= 16, "between 1 and 16"),
            ("steps", 1 <= self.steps <= 200, "between 1 and 200"),
            ("guidance_scale", 0 <= self.guidance_scale <= 30, "between 0 and 30"),
            ("identitynet_strength", 0 <= self.identitynet_strength <= 2, "between 0 and 2"),
            ("adapter_strength", 0 <= self.adapter_strength <= 2, "between 0 and 2"),
            ("seed", self.seed is None or 0 <= self.seed <= MAX_SEED, f"between 0 and {MAX_SEED}"),
            ("face_index", self.face_index is None or self.face_index >= 0, ">= 0"),
            (
                "control_guidance_start/end",
                0 <= self.control_guidance_start < self.control_guidance_end <= 1,
                "0 <= start < end <= 1",
            ),
        )
        for name, ok, rule in checks:
            if not ok:
                raise InvalidInputError(f"{name} must be {rule}, got {getattr(self, name, None)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (64 <= value <= 2048 and value % 8 == 0):
                raise InvalidInputError(f"{name} must be a multiple of 8 between 64 and 2048, got {value}")
        if (self.width is None) != (self.height is None):
            raise InvalidInputError("give both width and height, or neither")
        get_style(self.style)
        return self


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


def pick_device(device: str | None) -> str:
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str | None, device: str) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device in ("cuda", "mps") else torch.float32
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler, keeping the base model's noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)


def face_region_mask(face: Face, size: tuple[int, int], scale: tuple[float, float]) -> Image.Image:
    """White rectangle over the (rescaled) face box on black: the demo's 'enhance non-face region' mask."""
    w, h = size
    mask = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v * s) for v, s in zip(face.bbox, scale * 2, strict=True))
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 255
    return Image.fromarray(mask)


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
        demo: bool = False, max_side: int = 1280, min_side: int = 1024,
    ) -> InstantID:
        """Load base + IdentityNet + adapter (paths or Hub ids) and a face analyzer."""
        from diffusers import ControlNetModel

        from instantid.pipeline import StableDiffusionXLInstantIDPipeline

        refs = ModelRefs(**{k: v for k, v in (("base", base), ("identitynet", identitynet), ("adapter", adapter)) if v})
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        base_path = resolve_base(refs.base)
        identitynet_path = resolve_identitynet(refs.identitynet)
        adapter_path = resolve_adapter(refs.adapter)
        analyzer = create_face_analyzer(face_backend, root=antelopev2_root)
        controlnet = ControlNetModel.from_pretrained(identitynet_path, torch_dtype=torch_dtype)
        if base_path.is_file():
            pipe = StableDiffusionXLInstantIDPipeline.from_single_file(
                base_path, controlnet=controlnet, torch_dtype=torch_dtype
            )
        else:
            pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
                base_path, controlnet=controlnet, torch_dtype=torch_dtype
            )
        pipe.load_ip_adapter_instantid(adapter_path)
        if scheduler:
            set_scheduler(pipe, scheduler)
        app = cls(
            pipe, analyzer, refs, demo=demo, max_side=max_side, min_side=min_side,
            allow_embedding_mismatch=allow_embedding_mismatch,
        )
        if lora:
            app.load_lora(lora, lora_scale)
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
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

    def load_lora(self, ref: str, scale: float = 1.0) -> None:
        """Load a LoRA (file, folder or Hub id), e.g. LCM-LoRA; a name containing 'lcm' also selects the
        LCM scheduler, which few-step LCM generation needs."""
        self.pipe.load_lora_weights(ref, adapter_name="user")
        self.pipe.set_adapters(["user"], adapter_weights=[scale])
        self.lora = ref
        if "lcm" in str(ref).lower():
            set_scheduler(self.pipe, "lcm")

    def _check_space(self) -> None:
        space = self.analyzer.space
        if self.embedding_space and space != self.embedding_space and not self.allow_embedding_mismatch:
            raise EmbeddingSpaceError(
                f"the face model gives {space} embeddings but the face adapter was trained on "
                f"{self.embedding_space}: use the matching face backend"
            )

    # ---- generation ----------------------------------------------------------------------------
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

    def _faces(self, images: Sequence[ImageInput], index: int | None) -> list[tuple[Image.Image, Face]]:
        return [
            self.find_face(source, str(source) if isinstance(source, (str, Path)) else f"face image {i + 1}", index)
            for i, source in enumerate(images)
        ]

    def generate(
        self, face_images: ImageInput | Sequence[ImageInput], settings: GenerationSettings | None = None, *,
        pose_image: ImageInput | None = None, progress: Progress | None = None, **overrides: Any,
    ) -> GenerationResult:
        """Images of the person in ``face_images`` (several photos of one person are averaged)."""
        settings = replace(settings or GenerationSettings(), **overrides).validate()
        photos = [face_images] if isinstance(face_images, (str, Path, bytes, Image.Image)) else list(face_images)
        if not photos:
            raise InvalidInputError("give at least one face photo")

        # 1. Faces: identity from every photo, pose (keypoints, box, size) from the pose photo or the first.
        faces = self._faces(photos, settings.face_index)
        embeds = np.stack([face.embedding for _, face in faces])
        pose_picture, pose_face = self._faces([pose_image], None)[0] if pose_image is not None else faces[0]

        # 2. Output size and the keypoint picture at that size.
        if settings.width is not None:
            width, height = settings.width, settings.height
        else:
            width, height = demo_resize_size(pose_picture.width, pose_picture.height, self.max_side, self.min_side)
        scale = (width / pose_picture.width, height / pose_picture.height)
        kps_image = draw_kps(Image.new("RGB", (width, height)), pose_face.kps * np.array(scale))
        mask = face_region_mask(pose_face, (width, height), scale) if settings.enhance_face_region else None

        # 3. Prompt, seeds, progress.
        prompt, negative = get_style(settings.style).apply(settings.prompt, settings.negative_prompt)
        seed = settings.seed if settings.seed is not None else random.randint(0, MAX_SEED)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(settings.num_images)]
        gen_device = "cpu" if self.pipe.device.type == "mps" else self.pipe.device
        generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if progress is not None:
                progress(step + 1, pipe.num_timesteps)
            return tensors

        # 4. Generate, one call at a time per model.
        with self._lock:
            images = self.pipe(
                prompt=prompt, negative_prompt=negative or None, image_embeds=embeds, image=kps_image,
                control_mask=mask, controlnet_conditioning_scale=settings.identitynet_strength,
                ip_adapter_scale=settings.adapter_strength, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale, num_images_per_prompt=settings.num_images,
                control_guidance_start=settings.control_guidance_start,
                control_guidance_end=settings.control_guidance_end,
                generator=generators, callback_on_step_end=on_step,
            ).images
        metadata = {
            "prompt": prompt, "negative_prompt": negative, "user_prompt": settings.prompt,
            "settings": asdict(replace(settings, seed=seed)), "width": width, "height": height,
            "models": asdict(self.refs), "lora": self.lora, "scheduler": type(self.pipe.scheduler).__name__,
            "embedding_space": self.analyzer.space, "reference_faces": len(faces),
            # Where the identity came from, so `instantid evaluate` can score the outputs without --refs.
            "references": [str(Path(p).resolve()) for p in photos if isinstance(p, (str, Path))],
            "pose_from": "pose image" if pose_image is not None else "face image",
            "demo_weights": self.demo,
        }
        return GenerationResult(images=images, seeds=seeds, settings=replace(settings, seed=seed), metadata=metadata)
