"""InstantID as a cog predictor (``cog predict -i image=@me.jpg -i prompt="..."``), with the inputs of the popular
hosted InstantID deployments, on the project's public API (:class:`instantid.InstantID`, :class:`GenerationSettings`).

Every range comes from the settings declaration (``instantid.api.settings``), so the predictor accepts exactly what
the CLI, web UI and HTTP API accept. Without cog installed, ``instantid.apps.cog_shim`` stands in for
``BasePredictor`` / ``Input`` / ``Path`` with cog's semantics (tests run the predictor through it).

Environment: ``INSTANTID_COG_DEMO=1`` loads the tiny random demo weights (offline, noise) instead of the published
ones; ``INSTANTID_LCM_WEIGHTS`` names a local LCM-LoRA file (default: fetched from the Hub); the model folders of the
CLI (``INSTANTID_IDENTITYNET``, ``INSTANTID_POSE_CONTROLNET``, ...) apply as usual.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path as _Path
from typing import Any

sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))  # a cog build copies the repository, not a wheel

try:
    from cog import BasePredictor, Input, Path
except ImportError:  # no cog here: the shim with the same semantics
    from instantid.apps.cog_shim import BasePredictor, Input, Path

from instantid.api.settings import GenerationSettings, make_settings
from instantid.errors import InvalidInputError
from instantid.io.models import DEFAULT_BASE
from instantid.pipelines.schedulers import SCHEDULERS

# The base weights a request may pick, by the names the hosted deployments use, and their Hub repositories.
SDXL_WEIGHTS = {
    "stable-diffusion-xl-base-1.0": DEFAULT_BASE,
    "YamerMIX_v8": "wangqixun/YamerMIX_v8",  # the published InstantID demo's base
    "juggernaut-xl-v8": "RunDiffusion/Juggernaut-XL-v8",
    "realvisxl-v4.0": "SG161222/RealVisXL_V4.0",
    "dreamshaper-xl": "Lykon/dreamshaper-xl-1-0",
}
# Samplers by diffusers class name (-Karras: Karras sigmas), as the hosted deployments spell them, from our table.
SCHEDULER_CHOICES = {
    cls + ("-Karras" if extra.get("use_karras_sigmas") else ""): name
    for name, (cls, extra, _) in SCHEDULERS.items() if name != "lcm"
}
OUTPUT_FORMATS = ("webp", "jpg", "png")
LCM_PRESET = "lcm-lora"


def knob(field: str, default: Any = None, description: str | None = None) -> Any:
    """A cog input with the range and help of a settings field (``default``: the hosted deployments' value)."""
    info = GenerationSettings.model_fields[field]
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    return Input(default=info.default if default is None else default, description=description or info.description,
                 ge=low, le=high)


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the default weights (others load when a request picks them, one model at a time)."""
        self.demo = os.environ.get("INSTANTID_COG_DEMO", "").lower() in ("1", "true", "yes")
        self.loaded: tuple[str, bool] | None = None
        self.model: Any = None
        self._model_for("stable-diffusion-xl-base-1.0", lcm=False)

    def _model_for(self, weights: str, lcm: bool) -> Any:
        """The model for these base weights, with LCM-LoRA fused or not; loaded when the request differs."""
        from instantid.api.loader import load_model
        from instantid.api.model_settings import ModelSettings

        if self.loaded != (weights, lcm):
            self.model = None  # free the old one before loading the next
            self.model = load_model(ModelSettings(
                demo=self.demo, base=None if self.demo else SDXL_WEIGHTS[weights], preset=LCM_PRESET if lcm else None,
                preset_weights=os.environ.get("INSTANTID_LCM_WEIGHTS") if lcm else None))
            self.model.pipe.set_progress_bar_config(disable=True)
            self.loaded = (weights, lcm)
        return self.model

    def predict(
        self,
        image: Path = Input(description="Face photo of the person."),
        pose_image: Path = Input(default=None, description="Optional photo to take the pose (face keypoints, and "
                                 "the extra ControlNets' maps) from; without it, from the face photo."),
        prompt: str = Input(default="a person", description="What to make."),
        negative_prompt: str = Input(default="", description="What to avoid."),
        sdxl_weights: str = Input(default="stable-diffusion-xl-base-1.0", choices=list(SDXL_WEIGHTS),
                                  description="Which SDXL base weights to use."),
        scheduler: str = Input(default="EulerDiscreteScheduler", choices=list(SCHEDULER_CHOICES),
                               description="Sampler."),
        num_inference_steps: int = knob("steps"),
        guidance_scale: float = knob("guidance_scale", 7.5),
        ip_adapter_scale: float = knob("adapter_strength", description="Image adapter strength (identity detail)."),
        controlnet_conditioning_scale: float = knob("identitynet_strength",
                                                    description="IdentityNet strength (likeness and face pose)."),
        enable_pose_controlnet: bool = Input(default=True, description="Use the OpenPose ControlNet."),
        pose_strength: float = knob("pose_strength", 0.4, "OpenPose ControlNet strength."),
        enable_canny_controlnet: bool = Input(default=False, description="Use the Canny ControlNet."),
        canny_strength: float = knob("canny_strength", 0.3, "Canny ControlNet strength."),
        enable_depth_controlnet: bool = Input(default=False, description="Use the depth ControlNet."),
        depth_strength: float = knob("depth_strength", 0.5, "Depth ControlNet strength."),
        enable_lcm: bool = Input(default=False, description="LCM-LoRA: few steps, low guidance (loads it once)."),
        lcm_num_inference_steps: int = Input(default=5, ge=1, le=10, description="Steps with LCM."),
        lcm_guidance_scale: float = Input(default=1.5, ge=1, le=20, description="Guidance scale with LCM."),
        enhance_nonface_region: bool = knob("enhance_face_region", description="Let IdentityNet and the adapter act "
                                            "on the face only, leaving the rest to the prompt."),
        output_format: str = Input(default="webp", choices=list(OUTPUT_FORMATS), description="Image format."),
        output_quality: int = Input(default=80, ge=0, le=100, description="webp / jpg quality (png is lossless)."),
        seed: int = Input(default=None, description="Seed; empty or -1 = random."),
        num_outputs: int = knob("num_images", 1, "How many images (consecutive seeds)."),
    ) -> list[Path]:
        model = self._model_for(sdxl_weights, enable_lcm)
        strengths = {"pose_strength": pose_strength if enable_pose_controlnet else 0.0,
                     "canny_strength": canny_strength if enable_canny_controlnet else 0.0,
                     "depth_strength": depth_strength if enable_depth_controlnet else 0.0}
        steps, guidance = ((lcm_num_inference_steps, lcm_guidance_scale) if enable_lcm
                           else (num_inference_steps, guidance_scale))
        settings = make_settings({
            "prompt": prompt, "negative_prompt": negative_prompt, "steps": steps, "guidance_scale": guidance,
            "adapter_strength": ip_adapter_scale, "identitynet_strength": controlnet_conditioning_scale,
            "enhance_face_region": enhance_nonface_region, "num_images": num_outputs, **strengths,
            "seed": None if seed is None or seed < 0 else seed,
            "scheduler": "lcm" if enable_lcm else SCHEDULER_CHOICES[scheduler],
        })
        identity = model.prepare_identity(str(image), pose=str(pose_image) if pose_image is not None else None)
        result = model.generate(identity, settings)
        return [self._save(picture, result.image_metadata(i), output_format, output_quality)
                for i, picture in enumerate(result.images)]

    @staticmethod
    def _save(picture: Any, metadata: dict[str, Any], output_format: str, quality: int) -> Path:
        from instantid.io.outputs import png_bytes, shareable

        folder = _Path(tempfile.mkdtemp(prefix="instantid-cog-"))
        target = folder / f"out-{metadata['seed']}.{output_format}"
        if output_format == "png":  # with the settings inside, as every surface writes them
            target.write_bytes(png_bytes(picture, shareable(metadata)))
        elif output_format in ("jpg", "webp"):
            picture.save(target, format="JPEG" if output_format == "jpg" else "WEBP", quality=quality)
        else:
            raise InvalidInputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
        return Path(target)


def main(argv: list[str]) -> int:
    """``python predict.py image=me.jpg prompt="a watercolor portrait"``: cog's ``-i name=value`` spelling, without
    cog; prints the output files. Bad input is one line and exit code 2."""
    from instantid.apps.cog_shim import run_predict
    from instantid.errors import InstantIDError

    try:
        given = dict(_pair(arg) for arg in argv)
        predictor = Predictor()
        predictor.setup()
        for path in run_predict(predictor, **given):
            print(path)
    except InstantIDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _pair(arg: str) -> tuple[str, str]:
    name, sep, value = arg.partition("=")
    if not sep or not name:
        raise InvalidInputError(f"give inputs as name=value, got {arg!r}")
    return name, value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
