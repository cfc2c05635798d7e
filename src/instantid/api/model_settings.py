"""Which models to load and how: one declaration shared by every command, the web UI and the server.

Each field carries its help, its command-line flag and (for the model references) the environment variable a
deployment can set once; the CLI derives its model options from these fields. Importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from instantid.faces import BACKENDS
from instantid.io.devices import DTYPE_NAMES
from instantid.io.models import DEFAULT_CONTROLNETS, DEFAULT_MAPPERS, ControlRefs
from instantid.speed.quantize import SCHEMES as QUANTIZE_SCHEMES

if TYPE_CHECKING:

    from instantid.faces import FaceAnalyzer

FaceBackend = Literal[BACKENDS]  # type: ignore[valid-type]


def option(default: Any, help: str, *, env: str | None = None, flag: str | None = None, **kwargs: Any) -> Any:
    extra: dict[str, Any] = {}
    if env:
        extra["env"] = env
    if flag:
        extra["flag"] = flag
    return Field(default, description=help, json_schema_extra=extra, **kwargs)


class ModelSettings(BaseModel):
    """Which model to load and how; shared by the CLI commands, the web UI and the server."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = option(None, "SDXL base: folder, .safetensors file or Hub id "
                              "(default: stabilityai/stable-diffusion-xl-base-1.0).", env="INSTANTID_BASE")
    identitynet: str | None = option(None, "IdentityNet (ControlNet) folder or Hub id (default: InstantX/InstantID).",
                                     env="INSTANTID_IDENTITYNET")
    adapter: str | None = option(None, "Face adapter ip-adapter.bin / .safetensors or Hub id "
                                 "(default: InstantX/InstantID).", env="INSTANTID_ADAPTER")
    pose_controlnet: str | None = option(None, f"OpenPose ControlNet for --pose-strength (default: "
                                         f"{DEFAULT_CONTROLNETS['pose']}).", env="INSTANTID_POSE_CONTROLNET")
    canny_controlnet: str | None = option(None, f"Canny ControlNet for --canny-strength (default: "
                                          f"{DEFAULT_CONTROLNETS['canny']}).", env="INSTANTID_CANNY_CONTROLNET")
    depth_controlnet: str | None = option(None, f"Depth ControlNet for --depth-strength (default: "
                                          f"{DEFAULT_CONTROLNETS['depth']}).", env="INSTANTID_DEPTH_CONTROLNET")
    pose_map_model: str | None = option(None, f"ViTPose model that finds the body pose for --pose-strength "
                                        f"(default: {DEFAULT_MAPPERS['pose']}).", env="INSTANTID_POSE_MAP_MODEL")
    depth_map_model: str | None = option(None, f"Depth model (Depth-Anything or DPT) for --depth-strength "
                                         f"(default: {DEFAULT_MAPPERS['depth']}).", env="INSTANTID_DEPTH_MAP_MODEL")
    style_adapter: str | None = option(
        None, "Style adapter for --style-image (InstantStyle): h94/IP-Adapter's sdxl_models folder, an "
        "ip-adapter_sdxl file with image_encoder/ beside it, or a Hub id (default: h94/IP-Adapter, loaded with the "
        "first style image).", env="INSTANTID_STYLE_ADAPTER")
    face_backend: FaceBackend = option("auto", "Face model: auto, antelopev2 (published) or dlib.")
    antelopev2_root: Path | None = option(None, "Folder with scrfd_10g_bnkps.onnx and glintr100.onnx.",
                                          env="INSTANTID_ANTELOPEV2")
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: the best available).")
    dtype: Literal[DTYPE_NAMES] | None = option(  # type: ignore[valid-type]
        None, "fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU).")
    cpu_offload: bool = option(False, "Keep idle sub-models in RAM (low VRAM).")
    lora: str | None = option(None, "LoRA file, folder or Hub id (a name with 'lcm' selects the LCM sampler).")
    lora_scale: float = option(1.0, "LoRA weight.", ge=0, le=4)
    preset: str | None = option(None, "Few-step preset: lcm-lora, lightning-4step, lightning-8step, hyper-sd-4step, "
                                "hyper-sd-8step, hyper-sd-8step-cfg, tcd (and -unet variants of lightning); sets the "
                                "sampler, steps and guidance its authors specify.")
    preset_weights: str | None = option(None, "The preset's weights file or folder (default: from the Hub).")
    compile: bool = option(False, "Fast path: compile UNet and IdentityNet (first call slow, cached on disk).")
    quantize: Literal[tuple(QUANTIZE_SCHEMES)] | None = option(  # type: ignore[valid-type]
        None, "Lossy speed/memory lever: torchao quantization of the UNet's and IdentityNet's linear layers: fp8 "
        "(GPU sm89+), fp8-weights, int8, int8-weights (pip install 'instantid[quantize]').")
    demo: bool = option(False, "Tiny random weights, offline, seconds: images are noise.")
    demo_cache_dir: Path | None = option(None, "Where the demo weights are built (default ~/.cache/instantid).",
                                         flag="hidden")
    verbose: bool = option(False, "Show the libraries' own warnings and loading bars.")

    def control_refs(self) -> ControlRefs | None:
        """The extra ControlNets' references given, or None (the published demo's; --demo: its tiny ones)."""
        given = {name: getattr(self, name) for name in ControlRefs.__dataclass_fields__ if getattr(self, name)}
        return ControlRefs(**given) if given else None

    def face_analyzer(self) -> FaceAnalyzer:
        """The face model alone, seconds to load next to minutes for the diffusion model: surfaces check photos
        with it first and pass it on to :meth:`load`."""
        from instantid.errors import EmbeddingSpaceError
        from instantid.faces import DEMO_BACKEND, SPACE_ANTELOPEV2, create_face_analyzer
        from instantid.io.models import DEFAULT_ADAPTER

        if self.demo:
            return create_face_analyzer(DEMO_BACKEND)
        analyzer = create_face_analyzer(self.face_backend, root=self.antelopev2_root)
        # The published adapter is known to take antelopev2 embeddings: say so now, not after minutes of loading
        # (another adapter's space is only known once it is read; InstantID checks it then).
        if (self.adapter or DEFAULT_ADAPTER) == DEFAULT_ADAPTER and analyzer.space != SPACE_ANTELOPEV2:
            raise EmbeddingSpaceError(
                f"the published face adapter needs {SPACE_ANTELOPEV2} face embeddings but the face model is "
                f"{analyzer.space}: unpack antelopev2 (`instantid doctor` says where) or pass --antelopev2-root"
            )
        return analyzer
