"""The high-level API: photos -> Identity (analysed once) -> generation with one settings declaration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _demo import FACE, FACES, demo_model

from instantid.api import generator
from instantid.api.settings import GenerationSettings, field_label, make_settings
from instantid.errors import InvalidInputError
from instantid.pipelines.prompts import prompt_arguments


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return demo_model(tmp_path_factory.getbasetemp() / "demo-generator")


def test_identity_is_analysed_once_and_generation_reuses_it(app, monkeypatch):
    identity = app.prepare_identity([FACE, FACE])
    calls = []
    original = app.analyzer.analyze
    monkeypatch.setattr(app.analyzer, "analyze", lambda *a, **k: calls.append(1) or original(*a, **k))
    a = app.generate(identity, GenerationSettings(steps=2, seed=3))
    b = app.generate(identity, steps=2, seed=3, prompt="another prompt")
    assert calls == []  # generation never re-opens or re-analyses a photo
    assert a.metadata["references"] == ["face.jpg", "face.jpg"]  # file names, not the user's full paths
    assert not any("/" in name for name in a.metadata["references"])
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_generate_from_identity_equals_generate_from_photos(app):
    identity = app.prepare_identity(FACE)
    from_identity = app.generate(identity, steps=2, seed=5)
    from_photos = app.generate(FACE, steps=2, seed=5)
    assert np.array_equal(np.asarray(from_identity.images[0]), np.asarray(from_photos.images[0]))


def test_identity_changes_the_picture_and_mixing_interpolates(app):
    obama = app.prepare_identity(FACES / "obama_1.jpg")
    lecun = app.prepare_identity(FACES / "lecun_1.jpg")
    pose = app.prepare_identity(FACES / "lecun_1.jpg", pose=FACES / "obama_1.jpg")
    assert pose.pose_size == obama.pose_size and np.allclose(pose.pose_face.kps, obama.pose_face.kps)
    mixed = obama.mix(lecun, 0.25, "lecun")
    assert np.allclose(mixed.embedding, 0.75 * obama.embedding + 0.25 * lecun.embedding, atol=1e-6)
    assert mixed.metadata()["mixed_with"] == [{"name": "lecun", "weight": 0.25}]
    images = [np.asarray(app.generate(i, steps=2, seed=1, enhance_face_region=False).images[0], dtype=float)
              for i in (obama, pose)]
    assert np.abs(images[0] - images[1]).mean() > 0.1  # another identity, same pose and size (tiny random stack)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        obama.mix(lecun, 1.5)


def test_per_call_sampler_is_recorded_and_restored(app):
    default = type(app.pipe.scheduler).__name__
    result = app.generate(FACE, steps=2, seed=1, scheduler="dpm++_karras")
    assert result.metadata["sampler"] == "DPM++ 2M Karras" and result.metadata["scheduler"] == "dpm++_karras"
    assert type(app.pipe.scheduler).__name__ == default


def test_empty_prompt_stays_empty(app):
    result = app.generate(FACE, steps=1, seed=1, prompt="")
    assert result.metadata["prompt"] == ""
    styled = app.generate(FACE, steps=1, seed=1, prompt="", style="watercolor")
    assert styled.metadata["prompt"].startswith("watercolor painting of a person")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"guidance_scale": 31}, "--guidance must be between 0 and 30, got 31"),
        ({"steps": 0}, "--steps must be between 1 and 200, got 0"),
        ({"width": 100, "height": 64}, "--width must be a multiple of 8 between 64 and 2048"),
        ({"width": 512}, "give both --width and --height"),
        ({"control_guidance_start": 0.5, "control_guidance_end": 0.5}, "--control-guidance-start must be below"),
        ({"style": "nope"}, "unknown style 'nope'"),
        ({"scheduler": "nope"}, "--scheduler must be one of euler"),
        ({"bogus": 1}, "unknown setting '--bogus'"),
    ],
)
def test_settings_errors_name_what_the_user_typed(values, message):
    with pytest.raises(InvalidInputError) as err:
        make_settings(values, field_label)
    assert message in str(err.value)
    with pytest.raises(InvalidInputError):  # the same rule, named by field on other surfaces
        make_settings(values)


def test_style_names_are_normalised():
    assert make_settings({"style": "film noir"}).style == "Film Noir"
    assert make_settings({"style": "(No style)"}).style is None


def test_long_and_weighted_prompts_are_not_truncated(app):
    """A style template plus a long prompt passes CLIP's 77 tokens: the tail must still steer the picture."""
    identity = app.prepare_identity(FACE)
    head = "a portrait, " + ", ".join(f"detail number {i}" for i in range(40))
    images = [
        np.asarray(app.generate(identity, steps=2, seed=1, prompt=p, style="Watercolor").images[0], dtype=float)
        for p in (head, head + ", wearing a red hat", head + ", (wearing a red hat:1.5)")
    ]
    assert np.abs(images[0] - images[1]).mean() > 0  # text past token 77 changes the result
    assert np.abs(images[1] - images[2]).mean() > 0  # and so does its weight


def test_comma_padding_setting_reaches_the_prompt_encoding(app):
    """The comma_padding knob moves a long prompt's words across the 75-token boundary (so the picture changes);
    a prompt within one chunk is untouched by it."""
    identity = app.prepare_identity(FACE)
    long = ", ".join(f"detail {i} of the scene" for i in range(20))  # commas near every chunk boundary
    short = "a portrait, soft light"

    def image(prompt: str, padding: int) -> np.ndarray:
        result = app.generate(identity, steps=2, seed=1, prompt=prompt, comma_padding=padding)
        assert result.metadata["settings"]["comma_padding"] == padding
        return np.asarray(result.images[0], dtype=float)

    assert np.abs(image(long, 0) - image(long, 20)).mean() > 0
    assert np.array_equal(image(short, 0), image(short, 20))


# ---- one prompt path: encode_prompt_weighted for every prompt, bit-exact with diffusers' text path ----------

_PROMPT_CASES = [  # (prompt, negative, guidance, images per prompt, force_zeros_for_empty_prompt)
    ("a portrait, soft light", "blurry, lowres", 5.0, 1, True),
    ("", "", 5.0, 1, True),  # both empty: zeroed negative
    ("", "", 5.0, 1, False),  # both empty, the empty negative encoded
    ("a portrait", "", 5.0, 2, False),
    ("", "blurry", 5.0, 2, True),
    ("a portrait", "blurry", 1.0, 3, True),  # no classifier-free guidance: no negatives
]


def _text_path(pipe, prompt: str, negative: str, guidance_scale: float, comma_padding: int = 0) -> dict:
    """The texts as the pipeline's own encode_prompt would take them (the path plain prompts used to take)."""
    return {"prompt": prompt, "negative_prompt": negative or None}


def _as_the_pipeline_sees_it(pipe, arguments: dict, n: int, cfg: bool) -> tuple:
    """Step 2 of every InstantID pipeline: its (diffusers') encode_prompt on the call's prompt arguments."""
    return pipe.encode_prompt(
        arguments.get("prompt"), None, torch.device("cpu"), n, cfg, arguments.get("negative_prompt"), None,
        prompt_embeds=arguments.get("prompt_embeds"), negative_prompt_embeds=arguments.get("negative_prompt_embeds"),
        pooled_prompt_embeds=arguments.get("pooled_prompt_embeds"),
        negative_pooled_prompt_embeds=arguments.get("negative_pooled_prompt_embeds"),
    )


def _assert_same_encoding(pipe, prompt: str, negative: str, guidance: float, n: int) -> None:
    cfg = guidance > 1
    ours = _as_the_pipeline_sees_it(pipe, prompt_arguments(pipe, prompt, negative, guidance), n, cfg)
    theirs = _as_the_pipeline_sees_it(pipe, _text_path(pipe, prompt, negative, guidance), n, cfg)
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None and b is None) or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


@pytest.mark.parametrize("variant", ["text-to-image", "img2img", "inpaint"])
@pytest.mark.parametrize(("prompt", "negative", "guidance", "n", "zeros"), _PROMPT_CASES)
def test_plain_prompts_encode_exactly_as_diffusers(app, variant, prompt, negative, guidance, n, zeros):
    from instantid.pipelines.inpaint import img2img_pipeline, inpaint_pipeline

    pipe = {"text-to-image": app.pipe, "img2img": img2img_pipeline(app.pipe),
            "inpaint": inpaint_pipeline(app.pipe)}[variant]
    before = pipe.config.force_zeros_for_empty_prompt
    pipe.register_to_config(force_zeros_for_empty_prompt=zeros)  # read from the variant's own config
    try:
        _assert_same_encoding(pipe, prompt, negative, guidance, n)
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=before)


def test_text_encoder_lora_encodes_exactly_as_diffusers(app, tmp_path):
    """A LoRA on both text encoders, loaded at scale 0.5: the embeddings see it exactly as diffusers' path does,
    also with a per-call lora_scale."""
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from instantid import InstantID
    from instantid.io.loading import library_chatter
    from instantid.pipelines.prompts import encode_prompt_weighted
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    torch.manual_seed(0)
    layers = {}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = copy.deepcopy(getattr(app.pipe, name))
        encoder = inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                                                     init_lora_weights=False), encoder)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    StableDiffusionXLInstantIDPipeline.save_lora_weights(tmp_path, **layers)
    with library_chatter():
        model = InstantID.demo(_demo_folder(app))
    pipe = model.pipe
    plain = _as_the_pipeline_sees_it(pipe, prompt_arguments(pipe, "a portrait", "blurry", 5.0), 1, True)
    model.load_lora(str(tmp_path), 0.5)
    with_lora = _as_the_pipeline_sees_it(pipe, prompt_arguments(pipe, "a portrait", "blurry", 5.0), 1, True)
    assert (with_lora[0] - plain[0]).abs().max() > 1e-4  # the LoRA reaches the text embeddings
    for case in _PROMPT_CASES:
        _assert_same_encoding(pipe, *case[:4])
    ours = encode_prompt_weighted(pipe, "a portrait", "blurry", lora_scale=0.3)
    theirs = pipe.encode_prompt("a portrait", None, torch.device("cpu"), 1, True, "blurry", lora_scale=0.3)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], with_lora[0])  # and the per-call scale does change them


def _demo_folder(app):
    """The folder the module's demo model was built in (the LoRA test loads a second copy from it)."""
    return Path(app.refs.base).parent


@pytest.mark.parametrize(
    "changes", [{}, {"prompt": "", "negative_prompt": ""}, {"guidance_scale": 1.0}, {"num_images": 2}],
)
def test_generate_is_unchanged_by_the_single_prompt_path(app, monkeypatch, changes):
    """End to end: generate's images equal those of diffusers' text path, bit for bit."""
    settings = GenerationSettings(steps=2, seed=4, width=64, height=64, prompt="a portrait",
                                  negative_prompt="blurry").updated(**changes)
    identity = app.prepare_identity(FACE)
    ours = app.generate(identity, settings).images
    monkeypatch.setattr(generator, "prompt_arguments", _text_path)
    theirs = app.generate(identity, settings).images
    assert len(ours) == len(theirs) == settings.num_images
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_settings_may_be_a_dict_of_their_fields(app):
    """``generate(person, {"steps": 2, ...})`` is ``generate(person, GenerationSettings(steps=2, ...))``; a wrong
    value names its field, another type is one line."""
    from instantid.api.settings import GenerationSettings

    obama = app.prepare_identity(FACE)
    values = {"prompt": "a portrait", "steps": 2, "seed": 5, "width": 64, "height": 64}
    as_dict = app.generate(obama, values, guidance_scale=3.0)
    as_model = app.generate(obama, GenerationSettings(**values), guidance_scale=3.0)
    assert np.array_equal(np.asarray(as_dict.images[0]), np.asarray(as_model.images[0]))
    assert as_dict.settings == as_model.settings
    with pytest.raises(InvalidInputError, match="steps"):
        app.generate(obama, {"steps": 0})
    with pytest.raises(InvalidInputError, match="^settings must be GenerationSettings or a dict of its fields, got "
                                                "list$"):
        app.generate(obama, [("steps", 2)])
