"""The lossy speed levers: off by default and exact when off; when on, they do less work and stay near the exact
pipeline (tiny published checkpoints, CPU). Speed itself is measured in benchmarks/gpu_speed.py."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from instantid import draw_kps
from instantid.api.loader import load_model
from instantid.api.settings import GenerationSettings, field_label, make_settings
from instantid.cli import main
from instantid.core.attention import FaceAttnProcessor
from instantid.errors import InvalidInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
SIZE, STEPS = 64, 6
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao not installed (pip install 'instantid[quantize]')")


def _kps() -> Image.Image:
    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * SIZE
    return draw_kps(Image.new("RGB", (SIZE, SIZE)), face)


def _latents(pipe, *, face: int = 0, **options) -> torch.Tensor:
    call = dict(prompt="a portrait", image=_kps(), num_inference_steps=STEPS, guidance_scale=5.0,
                controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(0), output_type="latent",
                image_embeds=np.random.default_rng(face).normal(size=512).astype(np.float32))
    return pipe(**{**call, **options}).images


class Calls:
    """Counts IdentityNet's forward passes (a forward hook, removed after the test)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.count = 0
        self.handle = net.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


@pytest.fixture
def counted(fixture_pipe):
    calls = Calls(fixture_pipe.identitynet)
    yield fixture_pipe, calls
    calls.handle.remove()


def _mean(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


# ---- IdentityNet residual cache ------------------------------------------------------------------------------
def test_the_cache_is_off_by_default_declared_once_and_labelled_lossy():
    info = GenerationSettings.model_fields["identitynet_cache_interval"]
    assert GenerationSettings().identitynet_cache_interval == 1
    assert "lossy" in info.description.lower() and info.json_schema_extra["advanced"] is True


def test_off_is_the_exact_pipeline_with_identitynet_at_every_step(counted):
    pipe, calls = counted
    default = _latents(pipe)
    assert calls.take() == STEPS  # one IdentityNet pass per step (both guidance halves in one batch)
    explicit = _latents(pipe, controlnet_cache_interval=1)
    assert calls.take() == STEPS
    assert torch.equal(default, explicit)


@pytest.mark.parametrize("interval", [2, 3])
def test_on_runs_identitynet_every_nth_step_and_stays_near_the_exact_latents(counted, interval):
    pipe, calls = counted
    exact = _latents(pipe)
    calls.take()
    cached = _latents(pipe, controlnet_cache_interval=interval)
    assert calls.take() == -(-STEPS // interval)  # steps 0, N, 2N, ...
    identity_effect = _mean(_latents(pipe, face=1), exact)
    without_identitynet = _mean(_latents(pipe, controlnet_conditioning_scale=0.0), exact)
    moved = _mean(cached, exact)
    # Lossy but near: it moves the latents (it does reuse), less than another face does, and far less than
    # leaving IdentityNet out of the skipped steps would (measured: interval 2 moves 0.19, 3 moves 0.31;
    # another face 0.53, IdentityNet off 1.51, mean absolute latent difference, 8 steps).
    assert 0 < moved < identity_effect
    assert moved < 0.35 * without_identitynet


@pytest.mark.parametrize(("window", "runs"), [
    ({"control_guidance_end": 0.5}, 2),  # acts on steps 0-2: runs on 0 and 2, nothing reused after it closes
    ({"control_guidance_start": 0.5}, 2),  # acts on steps 3-5: runs as it opens (3), reuses on 4, runs on 5
])
def test_a_guidance_window_opening_or_closing_recomputes_instead_of_reusing(counted, window, runs):
    pipe, calls = counted
    exact_window = _latents(pipe, **window)
    assert calls.take() == 3
    cached = _latents(pipe, controlnet_cache_interval=2, **window)
    assert calls.take() == runs
    assert 0 < _mean(cached, exact_window)


def test_the_cache_lives_and_dies_with_its_call(counted):
    pipe, calls = counted
    first = _latents(pipe, controlnet_cache_interval=3)
    _latents(pipe, face=1, controlnet_cache_interval=3)  # would leave its residuals behind if kept on a module
    again = _latents(pipe, controlnet_cache_interval=3)
    assert torch.equal(first, again)
    assert not any("control-residuals" in str(vars(m)) for m in (pipe.identitynet, pipe.unet))


def test_training_steps_never_reuse(fixture_pipe):
    """Without a per-call cache (the trainer's FaceCall), every step runs IdentityNet whatever the interval."""
    from instantid.core.attention import FaceCall, FaceRegion
    from instantid.core.denoise import StepInputs, denoise_step, face_tokens

    calls = Calls(fixture_pipe.identitynet)
    try:
        unet = fixture_pipe.unet
        tokens = face_tokens(unet, torch.randn(1, 512))
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        inputs = StepInputs(
            prompt_embeds=torch.randn(1, 77, unet.config.cross_attention_dim),
            added_cond={"text_embeds": torch.randn(1, pooled),
                        "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)},
            faces=FaceCall(regions=(FaceRegion(tokens),), cache=None), identity_images=(torch.rand(1, 3, SIZE, SIZE),),
            control_cache_interval=4,
        )
        latents = torch.randn(1, 4, SIZE // 8, SIZE // 8)
        with torch.no_grad():
            for t in (900, 600, 300):
                denoise_step(unet, [fixture_pipe.identitynet], latents, torch.tensor(t), inputs, [1.0])
        assert calls.take() == 3
    finally:
        calls.handle.remove()


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "2"])
def test_the_pipeline_rejects_a_bad_interval_naming_it(fixture_pipe, value):
    with pytest.raises(InvalidInputError, match=r"^controlnet_cache_interval must be an integer >= 1") as info:
        _latents(fixture_pipe, controlnet_cache_interval=value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, 9, 1.5])
def test_settings_reject_a_bad_interval_naming_the_flag(value):
    with pytest.raises(InvalidInputError, match=r"^--identitynet-cache-interval ") as info:
        make_settings({"identitynet_cache_interval": value}, field_label)
    assert "\n" not in str(info.value)


def test_the_cli_rejects_a_bad_interval_in_one_line(capsys):
    assert main(["generate", "--demo", "--identitynet-cache-interval", "0", "face.jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--identitynet-cache-interval" in err and "Traceback" not in err


# ---- torchao quantization --------------------------------------------------------------------------------------
def _face_weights(pipe) -> list[torch.Tensor]:
    return [w for p in pipe.unet.attn_processors.values() if isinstance(p, FaceAttnProcessor)
            for layer in (*p.to_k_ip, *p.to_v_ip) for w in (layer.weight,)]


@needs_torchao
@pytest.mark.parametrize("scheme", ["int8-weights", "fp8-weights", "int8"])
def test_quantization_keeps_the_identity_branch_exact_and_the_latents_near(fresh_fixture_pipe, scheme):
    from instantid.speed.quantize import quantize_pipeline

    pipe = fresh_fixture_pipe
    exact, other = _latents(pipe), _latents(pipe, face=1)
    face_before = [w.clone() for w in _face_weights(pipe)]
    report = quantize_pipeline(pipe, scheme)
    assert report.layers["unet"] > 0 and report.layers["identitynet"] > 0
    assert report.face_layers == len(face_before) // 2  # to_k_ip and to_v_ip per face layer
    linear = [m for n, m in pipe.unet.named_modules() if n.endswith("attn1.to_q")][0]
    assert type(linear.weight) is not torch.nn.Parameter  # a torchao tensor: the lever is really on
    face_after = _face_weights(pipe)
    assert all(type(w) is torch.nn.Parameter and torch.equal(w, b)
               for w, b in zip(face_after, face_before, strict=True))
    quantized = _latents(pipe)
    identity_effect = _mean(other, exact)
    # Measured mean latent difference: int8-weights 0.005, int8 0.013, fp8-weights 0.025; another face 0.35.
    assert 0 < _mean(quantized, exact) < 0.1 * identity_effect
    assert _mean(_latents(pipe, face=1), quantized) > 0.8 * identity_effect  # the face still steers


@needs_torchao
def test_fp8_compute_is_refused_without_an_fp8_gpu_in_one_line(fresh_fixture_pipe):
    from instantid.speed.quantize import quantize_pipeline

    with pytest.raises(InvalidInputError, match=r"^quantize fp8 needs a CUDA GPU of compute capability 8\.9\+"):
        quantize_pipeline(fresh_fixture_pipe, "fp8")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9)
                    or importlib.util.find_spec("torchao") is None,
                    reason="fp8 matmuls need torchao and a CUDA GPU of compute capability 8.9+ (Ada, Hopper)")
def test_fp8_on_an_fp8_gpu_keeps_the_identity(fresh_fixture_pipe):
    from instantid.speed.quantize import quantize_pipeline

    pipe = fresh_fixture_pipe.to("cuda", torch.bfloat16)
    exact, other = _latents(pipe).float(), _latents(pipe, face=1).float()
    quantize_pipeline(pipe, "fp8")
    quantized = _latents(pipe).float()
    assert _mean(quantized, exact) < 0.2 * _mean(other, exact)


def test_quantization_rejects_an_unknown_scheme_naming_the_choices(fresh_fixture_pipe):
    from instantid.speed.quantize import quantize_pipeline

    with pytest.raises(InvalidInputError, match=r"^quantize must be one of fp8, fp8-weights, int8, int8-weights, got"):
        quantize_pipeline(fresh_fixture_pipe, "fp4")


def test_quantization_without_torchao_says_how_to_install_it(fresh_fixture_pipe, monkeypatch):
    from instantid.speed.quantize import quantize_pipeline

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(InvalidInputError, match=r"^quantize int8 needs torchao: pip install"):
        quantize_pipeline(fresh_fixture_pipe, "int8")


def test_the_knob_reaches_the_pipeline_through_generate_and_is_recorded(demo_app, obama):
    calls = Calls(demo_app.pipe.identitynet)
    try:
        exact = demo_app.generate(obama, GenerationSettings(seed=3, steps=4, width=128, height=128))
        assert calls.take() == 4
        cached = demo_app.generate(obama, GenerationSettings(seed=3, steps=4, width=128, height=128,
                                                             identitynet_cache_interval=2))
        assert calls.take() == 2
    finally:
        calls.handle.remove()
    assert cached.metadata["settings"]["identitynet_cache_interval"] == 2
    assert exact.metadata["settings"]["identitynet_cache_interval"] == 1


@needs_torchao
def test_quantize_model_option_loads_quantized_and_records_it(tmp_path):
    from instantid.api.model_settings import ModelSettings

    app = load_model(ModelSettings(demo=True, demo_cache_dir=tmp_path, quantize="int8-weights"))
    linear = [m for n, m in app.pipe.unet.named_modules() if n.endswith("attn1.to_q")][0]
    assert type(linear.weight) is not torch.nn.Parameter and app.quantize == "int8-weights"


@pytest.mark.parametrize(("scheme", "hide_torchao", "message"), [
    ("int8", True, r"^quantize int8 needs torchao: pip install"),
    ("fp8", False, r"^quantize fp8 needs a CUDA GPU of compute capability 8\.9\+"),
])
def test_the_quantize_option_is_refused_before_any_weights_load(tmp_path, monkeypatch, scheme, hide_torchao,
                                                                  message):
    import instantid.api.generator
    from instantid.api.model_settings import ModelSettings

    if hide_torchao:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the quantize option was checked")

    monkeypatch.setattr(instantid.api.generator.InstantID, "demo", no_loading)
    with pytest.raises(InvalidInputError, match=message):
        load_model(ModelSettings(demo=True, demo_cache_dir=tmp_path, quantize=scheme, device="cpu"))
