"""Which models to load and how: one declaration shared by every command, the web UI and the server.

Each field carries its help, its command-line flag and (for the model references) the environment variable a
deployment can set once; the CLI derives its model options from these fields. Importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from instantid.errors import InvalidInputError
from instantid.faces import BACKENDS
from instantid.io.devices import DTYPE_NAMES
from instantid.speed.quantize import SCHEMES as QUANTIZE_SCHEMES

if TYPE_CHECKING:

    from instantid.api.generator import InstantID
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

    def load(self, analyzer: FaceAnalyzer | None = None) -> InstantID:
        """Load everything, without the libraries' loading bars and warnings unless ``verbose``."""
        from instantid.io.loading import library_chatter

        with library_chatter(self.verbose):
            return self._load(analyzer)

    def _load(self, analyzer: FaceAnalyzer | None) -> InstantID:
        from instantid.api.generator import InstantID

        if self.quantize is not None:  # before minutes of loading: torchao missing or no fp8 GPU is one line
            from instantid.io.loading import pick_device
            from instantid.speed.quantize import check_scheme, require_torchao

            check_scheme(self.quantize, pick_device(self.device))
            require_torchao(self.quantize)

        options = {"device": self.device, "lora": self.lora, "analyzer": analyzer}
        options = {k: v for k, v in options.items() if v is not None}
        common = {"lora_scale": self.lora_scale, "compile": self.compile, "quantize": self.quantize,
                  "preset": self.preset,
                  "preset_weights": self.preset_weights, **options}
        if self.demo:
            given = [name for name in ("base", "identitynet", "adapter") if getattr(self, name)]
            if given:
                raise InvalidInputError(f"--demo uses its own tiny weights; drop --{', --'.join(given)}")
            return InstantID.demo(self.demo_cache_dir, **common, **({"dtype": self.dtype} if self.dtype else {}))
        return InstantID.from_pretrained(
            self.base, self.identitynet, self.adapter, face_backend=self.face_backend,
            antelopev2_root=self.antelopev2_root, dtype=self.dtype, cpu_offload=self.cpu_offload, **common,
        )
