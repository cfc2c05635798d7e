"""The cog predictor (predict.py), run directly on the demo weights through the cog stand-in's runner, which
fills defaults and checks ranges and choices as cog's does. What only a real `cog build` on a GPU could check:
the container, cog's own HTTP server, and the published weights."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _demo import FACE, FACES, REPO
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.apps.cog_shim import Path as CogPath
from instantid.apps.cog_shim import run_predict
from instantid.errors import InvalidInputError
from instantid.io.outputs import METADATA_KEY

# The inputs of the popular hosted InstantID deployments (issue 21).
HOSTED_INPUTS = {
    "image", "pose_image", "prompt", "negative_prompt", "sdxl_weights", "scheduler", "num_inference_steps",
    "guidance_scale", "ip_adapter_scale", "controlnet_conditioning_scale", "enable_pose_controlnet", "pose_strength",
    "enable_canny_controlnet", "canny_strength", "enable_depth_controlnet", "depth_strength", "enable_lcm",
    "lcm_num_inference_steps", "lcm_guidance_scale", "enhance_nonface_region", "output_format", "output_quality",
    "seed", "num_outputs",
}
FAST = {"num_inference_steps": 2, "seed": 3, "output_format": "png"}


@pytest.fixture(scope="module")
def predict_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    saved = {k: os.environ.get(k) for k in ("INSTANTID_COG_DEMO", "INSTANTID_DEMO_DIR")}
    os.environ["INSTANTID_COG_DEMO"] = "1"
    os.environ["INSTANTID_DEMO_DIR"] = str(tmp_path_factory.getbasetemp() / "cog-demo")
    spec = importlib.util.spec_from_file_location("predict", REPO / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def predictor(predict_module: Any) -> Any:
    predictor = predict_module.Predictor()
    predictor.setup()
    return predictor


def _metadata(path: Path) -> dict:
    import json

    with Image.open(path) as png:
        return json.loads(png.text[METADATA_KEY])


def test_inputs_are_the_hosted_deployments_with_our_ranges(predict_module: Any) -> None:
    parameters = inspect.signature(predict_module.Predictor.predict).parameters
    assert set(parameters) - {"self"} == HOSTED_INPUTS
    for name, field in (("num_inference_steps", "steps"), ("guidance_scale", "guidance_scale"),
                        ("ip_adapter_scale", "adapter_strength"), ("pose_strength", "pose_strength"),
                        ("controlnet_conditioning_scale", "identitynet_strength"), ("num_outputs", "num_images")):
        declared = GenerationSettings.model_fields[field].metadata
        ours = parameters[name].default.metadata
        assert [(getattr(m, "ge", None), getattr(m, "le", None)) for m in ours if hasattr(m, "ge") or hasattr(m, "le")
                ] == [(getattr(m, "ge", None), getattr(m, "le", None)) for m in declared
                      if hasattr(m, "ge") or hasattr(m, "le")], name


def test_predict_is_instantid_generate_with_the_inputs_mapped(predictor: Any) -> None:
    outputs = run_predict(predictor, image=CogPath(FACE), prompt="a portrait", controlnet_conditioning_scale=0.6,
                          ip_adapter_scale=0.7, enable_canny_controlnet=True, canny_strength=0.5, num_outputs=2,
                          **FAST)
    assert len(outputs) == 2 and all(isinstance(p, Path) and p.suffix == ".png" for p in outputs)
    settings = _metadata(outputs[0])["settings"]
    assert settings["identitynet_strength"] == 0.6 and settings["adapter_strength"] == 0.7
    assert settings["pose_strength"] == 0.4 and settings["canny_strength"] == 0.5 and settings["depth_strength"] == 0
    assert settings["scheduler"] == "euler" and settings["guidance_scale"] == 7.5
    model = predictor.model
    direct = model.generate(model.prepare_identity(str(FACE)), prompt="a portrait", steps=2, seed=3, num_images=2,
                            guidance_scale=7.5, identitynet_strength=0.6, adapter_strength=0.7, pose_strength=0.4,
                            canny_strength=0.5, scheduler="euler")
    for path, image in zip(outputs, direct.images, strict=True):
        assert (np.asarray(Image.open(path)) == np.asarray(image)).all()


def test_pose_image_seed_and_formats(predictor: Any) -> None:
    posed = run_predict(predictor, image=CogPath(FACE), pose_image=CogPath(FACES / "obama_1.jpg"),
                        enable_pose_controlnet=False, enable_depth_controlnet=True, **FAST)
    metadata = _metadata(posed[0])
    assert metadata["pose_from"] == "obama_1.jpg" and metadata["settings"]["depth_strength"] == 0.5
    assert metadata["settings"]["pose_strength"] == 0
    random = _metadata(run_predict(predictor, image=CogPath(FACE), **{**FAST, "seed": -1})[0])
    assert random["seed"] >= 0
    small = run_predict(predictor, image=CogPath(FACE), **{**FAST, "output_format": "webp", "output_quality": 5})[0]
    large = run_predict(predictor, image=CogPath(FACE), **{**FAST, "output_format": "webp", "output_quality": 100})[0]
    assert small.suffix == ".webp" and small.stat().st_size < large.stat().st_size
    with Image.open(run_predict(predictor, image=CogPath(FACE), **{**FAST, "output_format": "jpg"})[0]) as jpg:
        assert jpg.format == "JPEG"


def test_lcm_runs_its_own_steps_guidance_and_sampler(predictor: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from instantid.speed.presets import get_preset, write_stand_in

    weights = write_stand_in(get_preset("lcm-lora"), predictor.model.pipe.unet, tmp_path)
    monkeypatch.setenv("INSTANTID_LCM_WEIGHTS", str(weights))
    out = run_predict(predictor, image=CogPath(FACE), enable_lcm=True, lcm_num_inference_steps=3,
                      lcm_guidance_scale=1.5, **FAST)
    settings = _metadata(out[0])["settings"]
    assert (settings["steps"], settings["guidance_scale"], settings["scheduler"]) == (3, 1.5, "lcm")
    assert _metadata(out[0])["preset"] == "lcm-lora"
    run_predict(predictor, image=CogPath(FACE), **FAST)
    assert predictor.loaded == ("stable-diffusion-xl-base-1.0", False), "LCM off again: the plain model"


@pytest.mark.parametrize(("inputs", "message"), [
    ({"guidance_scale": 31}, "guidance_scale: input should be less than or equal to 30"),
    ({"scheduler": "HeunDiscreteScheduler"}, "scheduler: must be one of EulerDiscreteScheduler"),
    ({"output_format": "gif"}, "output_format: must be one of webp, jpg, png"),
    ({"steps": 3}, "steps: is not an input of this predictor"),
    ({"pose_strength": -1}, "pose_strength: input should be greater than or equal to 0"),
])
def test_bad_input_is_one_line_naming_the_input(predictor: Any, inputs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        run_predict(predictor, image=CogPath(FACE), **inputs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_python_predict_py_takes_cog_spelling_and_bad_input_is_exit_2(predict_module: Any, capsys) -> None:
    assert predict_module.main([f"image={FACE}", "num_inference_steps=1", "seed=2", "output_format=png"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("out-2.png") and Path(out).is_file()
    assert predict_module.main(["oops"]) == 2
    assert predict_module.main([f"image={FACE}", "guidance_scale=99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: give inputs as name=value, got 'oops'",
                   "error: guidance_scale: input should be less than or equal to 30, got '99'"]
