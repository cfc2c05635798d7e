"""Style reference images (InstantStyle) on tiny stand-ins with the real key layouts.

The stand-in is h94/IP-Adapter's ``sdxl_models`` folder for the tiny stack (io/tiny.build_tiny_style_adapter):
``ip-adapter_sdxl.safetensors`` / ``.bin`` with ``image_proj`` (proj + norm) and ``ip_adapter`` keys for every
cross-attention layer, and ``image_encoder/`` (CLIPVisionModelWithProjection). What only the real download can
show: that ViT-bigG's 1280-d embeddings and the published weights load (the shapes are checked by the same code).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import load_fixture_pipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid import draw_kps
from instantid.core.style_blocks import STYLE_BLOCKS, block_scales
from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError
from instantid.io.tiny import build_tiny_style_adapter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
KPS = [[22, 25], [42, 25], [32, 36], [24, 47], [40, 47]]
SIZE = 64


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory):
    return build_tiny_style_adapter(tmp_path_factory.mktemp("style")) / "sdxl_models"


@pytest.fixture(scope="module")
def styled(tiny_fixture_dir, style_dir):
    pipe = load_fixture_pipe(tiny_fixture_dir)
    pipe.load_style_adapter(style_dir / "ip-adapter_sdxl.safetensors")
    return pipe


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40 + 8 * i, 56, 3)) * 255).astype(np.uint8)) for i in range(2)]


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_fixture_dir, style_dir):
    """diffusers' own SDXL pipeline with the same IP-Adapter, loaded its way."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_fixture_dir / "base")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(style_dir.parent), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")
    return pipe


def _run(pipe, tiny_fixture_dir, steps=2, **kwargs):
    emb = np.load(tiny_fixture_dir / "face_embedding.npy")
    kps = draw_kps(Image.new("RGB", (SIZE, SIZE)), KPS)
    return pipe("a photo", image_embeds=emb, image=kps, num_inference_steps=steps, output_type="np",
                generator=torch.Generator().manual_seed(3), **kwargs).images


def test_strength_zero_and_no_style_image_are_plain_instantid_bit_for_bit(fixture_pipe, styled, reference,
                                                                         tiny_fixture_dir):
    plain = _run(fixture_pipe, tiny_fixture_dir)
    assert np.array_equal(_run(styled, tiny_fixture_dir), plain)
    assert np.array_equal(_run(styled, tiny_fixture_dir, style_image=reference[0], style_scale=0.0), plain)
    zero_blocks = block_scales("style+layout", 0.0)
    assert np.array_equal(_run(styled, tiny_fixture_dir, style_image=reference, style_scale=zero_blocks), plain)
    # ...and a style image at strength 1 does change the picture (the branch is not inert).
    assert np.abs(_run(styled, tiny_fixture_dir, style_image=reference[0]) - plain).max() > 1e-3


def _diffusers(pipe, image, scale, guidance=5.0):
    pipe.set_ip_adapter_scale(scale)
    return pipe("a photo", ip_adapter_image=image, height=SIZE, width=SIZE, num_inference_steps=2, output_type="np",
                guidance_scale=guidance, generator=torch.Generator().manual_seed(3)).images


@pytest.mark.parametrize("blocks", sorted(STYLE_BLOCKS))
def test_without_face_and_identitynet_it_is_diffusers_instantstyle_exactly(styled, diffusers_pipe, reference,
                                                                            tiny_fixture_dir, blocks):
    scale = block_scales(blocks, 0.9)
    ours = _run(styled, tiny_fixture_dir, style_image=reference[0], style_scale=scale, ip_adapter_scale=0.0,
                controlnet_conditioning_scale=0.0)
    assert np.array_equal(ours, _diffusers(diffusers_pipe, reference[0], scale))


def test_several_style_images_and_no_guidance_match_diffusers(styled, diffusers_pipe, reference, tiny_fixture_dir):
    scale = STYLE_BLOCKS["style"]
    ours = _run(styled, tiny_fixture_dir, style_image=reference, style_scale=scale, ip_adapter_scale=0.0,
                controlnet_conditioning_scale=0.0, guidance_scale=1.0)
    # diffusers takes several images of one adapter as a nested list: their tokens side by side.
    assert np.array_equal(ours, _diffusers(diffusers_pipe, [reference], scale, guidance=1.0))


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(style=st.floats(0, 2, allow_nan=False), layout=st.floats(0, 2, allow_nan=False))
def test_any_block_scales_match_diffusers(styled, diffusers_pipe, reference, tiny_fixture_dir, style, layout):
    scale = {"down": {"block_2": [0.0, layout]}, "up": {"block_0": [0.0, style, 0.0]}}
    ours = _run(styled, tiny_fixture_dir, style_image=reference[1], style_scale=scale, ip_adapter_scale=0.0,
                controlnet_conditioning_scale=0.0)
    assert np.array_equal(ours, _diffusers(diffusers_pipe, reference[1], scale))


def test_style_acts_only_in_its_blocks_beside_the_face(styled):
    spec = styled.style_spec
    assert all(".attentions.1." in name and name.startswith(("up_blocks.0", "down_blocks.2")) for name in spec.layers)
    for name, proc in styled.unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            assert len(proc.to_k_ip) == (2 if name in spec.layers else 1), name
    assert len(styled.unet.encoder_hid_proj.image_projection_layers) == 2


def test_face_and_style_together_and_loading_twice(tiny_fixture_dir, style_dir, styled, reference):
    both = _run(styled, tiny_fixture_dir, style_image=reference[0], ip_adapter_scale=0.6)
    pipe = load_fixture_pipe(tiny_fixture_dir)
    pipe.load_style_adapter(style_dir / "ip-adapter_sdxl.bin", style_dir / "image_encoder")
    pipe.load_style_adapter(style_dir / "ip-adapter_sdxl.bin")  # replaces, never stacks
    assert sum(len(p.to_k_ip) for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")) == sum(
        len(p.to_k_ip) for p in styled.unet.attn_processors.values() if hasattr(p, "to_k_ip"))
    assert np.array_equal(_run(pipe, tiny_fixture_dir, style_image=reference[0], ip_adapter_scale=0.6), both)
    assert not np.array_equal(_run(pipe, tiny_fixture_dir, style_image=reference[0], ip_adapter_scale=0.0), both)


REF = "<the reference picture>"


@pytest.mark.parametrize(("arguments", "message"), [
    ({"style_scale": 0.5}, "style_scale needs style_image"),
    ({"style_image": "ref.jpg"}, "style_image must be a PIL image"),
    ({"style_image": []}, "style_image must be a PIL image"),
    ({"style_image": REF, "style_scale": {"up": {"block_1": [1.0, 0.0, 0.0]}}}, "not loaded into"),
    ({"style_image": REF, "style_scale": {"up": {"block_7": 1.0}}}, "style scale"),
    ({"style_image": REF, "style_scale": {"up": {"block_0": [0.0, -1.0, 0.0]}}}, ">= 0"),
    ({"style_image": REF, "style_scale": "strong"}, "a style scale is a number or a block dict"),
])
def test_bad_style_arguments_are_one_line_before_any_step(styled, reference, tiny_fixture_dir, arguments, message):
    arguments = {k: reference[0] if v is REF else v for k, v in arguments.items()}
    calls = []
    handle = styled.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match=message):
            _run(styled, tiny_fixture_dir, **arguments)
    finally:
        handle.remove()
    assert calls == []


def test_an_image_to_image_variant_made_before_the_style_adapter_takes_style_images(
        fresh_fixture_pipe, style_dir, reference, tiny_fixture_dir):
    from instantid.pipelines.inpaint import img2img_pipeline
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDImg2ImgPipeline

    early = img2img_pipeline(fresh_fixture_pipe)  # e.g. an image-to-image call before any style picture
    fresh_fixture_pipe.load_style_adapter(style_dir / "ip-adapter_sdxl.safetensors")
    assert img2img_pipeline(fresh_fixture_pipe) is early
    late = StableDiffusionXLInstantIDImg2ImgPipeline.from_pipe(fresh_fixture_pipe)
    emb = np.load(tiny_fixture_dir / "face_embedding.npy")
    kps = draw_kps(Image.new("RGB", (SIZE, SIZE)), KPS)
    init = Image.fromarray((np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    made = [pipe("a photo", image_embeds=emb, image=init, control_image=kps, strength=0.6, num_inference_steps=2,
                 output_type="np", generator=torch.Generator().manual_seed(3), style_image=reference[0]).images
            for pipe in (early, late)]
    assert np.array_equal(*made)


def test_style_image_without_a_style_adapter(fixture_pipe, reference, tiny_fixture_dir):
    with pytest.raises(InvalidInputError, match="load_style_adapter"):
        _run(fixture_pipe, tiny_fixture_dir, style_image=reference[0])


def _write(path, state):
    torch.save(state, path)
    return path


def test_mismatched_style_weights_are_refused_before_installing(tiny_fixture_dir, style_dir, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    pipe = load_fixture_pipe(tiny_fixture_dir)
    good = torch.load(style_dir / "ip-adapter_sdxl.bin", weights_only=True)
    with pytest.raises(MissingWeightsError, match="style adapter file not found"):
        pipe.load_style_adapter(tmp_path / "nope.bin")
    with pytest.raises(MissingWeightsError, match="style image encoder not found"):
        pipe.load_style_adapter(_write(tmp_path / "alone.bin", good))
    plus = {"image_proj": {"latents": torch.zeros(1, 16, 64), "proj_in.weight": torch.zeros(64, 48)},
            "ip_adapter": good["ip_adapter"]}
    with pytest.raises(IncompatibleWeightsError, match="Resampler"):
        pipe.load_style_adapter(_write(tmp_path / "plus.bin", plus), style_dir / "image_encoder")
    wide = {"image_proj": {**good["image_proj"], "norm.weight": torch.ones(32), "norm.bias": torch.zeros(32)},
            "ip_adapter": good["ip_adapter"]}
    with pytest.raises(IncompatibleWeightsError, match="32-d tokens but this UNet's cross-attention is 64-d"):
        pipe.load_style_adapter(_write(tmp_path / "wide.bin", wide), style_dir / "image_encoder")
    short = {"image_proj": good["image_proj"],
             "ip_adapter": {k: v for k, v in good["ip_adapter"].items() if not k.startswith(("1.", "3."))}}
    with pytest.raises(IncompatibleWeightsError, match="missing"):
        pipe.load_style_adapter(_write(tmp_path / "short.bin", short), style_dir / "image_encoder",
                                blocks={"down": 1.0, "up": 1.0, "mid": 1.0})
    other = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                                           num_hidden_layers=1, image_size=32, patch_size=8,
                                                           projection_dim=24))
    with pytest.raises(IncompatibleWeightsError, match="reads 48-d image embeddings but the image encoder makes 24-d"):
        pipe.load_style_adapter(style_dir / "ip-adapter_sdxl.safetensors", other)
    assert pipe.style_spec is None  # nothing was installed by any refused load
    assert all(len(p.to_k_ip) == 1 for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip"))


# ---- surfaces ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def style_picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.fromarray((np.random.default_rng(5).random((48, 40, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from _demo import demo_model

    folder = tmp_path_factory.mktemp("style-demo")
    demo_model(folder)
    return folder


FAST = ["-p", "a portrait", "--steps", "2", "--width", "64", "--height", "64", "--seed", "4"]


def test_cli_style_image_is_used_and_recorded(demo_dir, style_picture, tmp_path, monkeypatch, capsys):
    import hashlib
    import json

    from _demo import FACE

    from instantid.cli import main

    monkeypatch.setenv("INSTANTID_DEMO_DIR", str(demo_dir))
    assert main(["generate", str(FACE), "--demo", *FAST, "-o", str(tmp_path / "plain")]) == 0
    code = main(["generate", str(FACE), "--demo", *FAST, "--style-image", str(style_picture), "--style-strength",
                 "0.7", "--style-blocks", "style+layout", "-o", str(tmp_path / "styled")])
    assert code == 0, capsys.readouterr().err
    (plain,), (styled,) = (sorted((tmp_path / d).glob("*.png")) for d in ("plain", "styled"))
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(styled)))
    recorded = json.loads(styled.with_suffix(".json").read_text())["style_reference"]
    assert recorded["images"] == [{"name": "ref.png", "sha256": hashlib.sha256(style_picture.read_bytes()).hexdigest()}]
    assert (recorded["strength"], recorded["blocks"], recorded["adapter"]) == (0.7, "style+layout", "sdxl_models")
    assert recorded["block_scales"] == {"down": {"block_2": [0.0, 0.7]}, "up": {"block_0": [0.0, 0.7, 0.0]}}
    assert "style_reference" not in json.loads(plain.with_suffix(".json").read_text())


@pytest.mark.parametrize(("arguments", "message"), [
    (["--demo", "--style-strength", "0.5"], "--style-strength needs --style-image"),
    (["--style-image", "{ref}"], "--style-adapter: style adapter 'h94/IP-Adapter' not found"),
    (["--demo", "--style-image", "{ref}", "--style-adapter", "{tmp}/nope"], "style adapter '.*nope' not found"),
    (["--demo", "--style-image", "{tmp}/missing.png"], "cannot read image .*missing.png: no such file"),
])
def test_cli_style_errors_are_one_line_before_the_model_loads(style_picture, tmp_path, monkeypatch, capsys,
                                                              arguments, message):
    from _demo import FACE

    from instantid.api.model_settings import ModelSettings
    from instantid.cli import main

    monkeypatch.setattr("instantid.api.loader.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(ModelSettings, "face_analyzer", lambda self: pytest.fail("the face model was loaded"))
    arguments = [a.format(ref=style_picture, tmp=tmp_path) for a in arguments]
    assert main(["generate", str(FACE), *FAST, "-o", str(tmp_path / "out"), *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


@pytest.fixture(scope="module")
def client(demo_dir, tmp_path_factory):
    from _demo import demo_model
    from _service import serving

    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("jobs"), max_upload_mb=2)
    with serving(create_app(settings, model=demo_model(demo_dir))) as http:
        yield http


def test_http_style_image_fields_multipart_and_json(client, style_picture):
    import base64
    import hashlib

    from _demo import FACE
    from _service import wait_for

    fast = {"steps": "2", "width": "64", "height": "64", "seed": "4"}
    files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg")),
             *[("style_image", (f"s{i}.png", style_picture.read_bytes(), "image/png")) for i in range(2)]]
    response = client.post("/v1/generate", files=files, data={**fast, "style_strength": "0.6"})
    assert response.status_code == 202, response.text
    status = wait_for(client, response.json()["job_id"])
    assert status["status"] == "done", status
    recorded = status["metadata"]["style_reference"]
    digest = hashlib.sha256(style_picture.read_bytes()).hexdigest()
    assert recorded["images"] == [{"name": "s0.png", "sha256": digest}, {"name": "s1.png", "sha256": digest}]
    assert recorded["strength"] == 0.6 and recorded["blocks"] == "style"
    body = {"face": [base64.b64encode(FACE.read_bytes()).decode()], "steps": 2, "width": 64, "height": 64,
            "style_image": base64.b64encode(style_picture.read_bytes()).decode(), "style_blocks": "style+layout"}
    response = client.post("/v1/generate?wait=true", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["info"]["style_reference"]["blocks"] == "style+layout"


@pytest.mark.parametrize(("path", "fields", "message"), [
    ("/v1/generate", {"style_image": ["bm90IGFuIGltYWdl"]}, "cannot read image style_image[0]"),
    ("/v1/generate", {"style_image": ["eA=="] * 5}, "at most 4"),
    ("/v1/generate", {"style_image": 3}, "style_image must be"),
    ("/v1/swap", {"scene": "eA==", "style_image": "eA=="}, "'style_image' is not used by /v1/swap"),
    ("/v1/swap", {"scene": "eA==", "style_strength": 0.5}, "style_strength is not used by /v1/swap"),
])
def test_http_style_errors_are_422_naming_the_field(client, path, fields, message):
    import base64

    from _demo import FACE

    body = {"face": [base64.b64encode(FACE.read_bytes()).decode()], "steps": 2, **fields}
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_ui_portrait_tab_takes_a_style_image(demo_dir, style_picture, tmp_path):
    from _demo import FACE, demo_model

    from instantid.io.outputs import read_metadata
    from instantid.webui import UIContext, create_ui
    from instantid.webui.portrait import PortraitTab
    from instantid.webui.who import WhoPanel

    model = demo_model(demo_dir)
    ctx = UIContext(get_model=lambda: model, out_dir=tmp_path)
    tab = PortraitTab(ctx, WhoPanel(ctx))
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    values = {"steps": 2, "width": "64", "height": "64", "seed": "4", "style_strength": "0.5"}
    plain, _ = tab.generate(photos, None, values)
    styled, _ = tab.generate(photos, None, values, style_image=str(style_picture))
    recorded = read_metadata(styled[0][0])["style_reference"]
    assert recorded["images"][0]["name"] == "ref.png" and recorded["strength"] == 0.5
    assert "style_reference" not in read_metadata(plain[0][0])
    ids = {getattr(b, "elem_id", None) for b in create_ui(lambda: model).blocks.values()}
    for tab in ("", "group-"):  # the tabs that make new pictures; swap and detail have no style knobs
        assert {f"{tab}style-image", f"{tab}style_strength", f"{tab}style_blocks"} <= ids, tab
    assert not {"swap-style_strength", "detail-style_strength"} & ids


def test_style_adapter_references_resolve_in_every_published_shape(style_dir, tmp_path):
    import shutil

    from instantid.io.models import resolve_style_adapter

    encoder = style_dir / "image_encoder"
    for ref in (style_dir, style_dir.parent, style_dir / "ip-adapter_sdxl.bin"):
        weights, found = resolve_style_adapter(str(ref))
        assert found == encoder and weights.parent == style_dir and weights.name.startswith("ip-adapter_sdxl")
    alone = tmp_path / "ip-adapter_sdxl.bin"
    shutil.copy(style_dir / "ip-adapter_sdxl.bin", alone)
    with pytest.raises(MissingWeightsError, match="no image_encoder/config.json beside ip-adapter_sdxl.bin"):
        resolve_style_adapter(str(alone))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="no ip-adapter_sdxl.safetensors or ip-adapter_sdxl.bin in it"):
        resolve_style_adapter(str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="'someone/not-cached' not found .*Hugging Face cache"):
        resolve_style_adapter("someone/not-cached")


def test_group_pictures_take_a_style_image_too(demo_dir, style_picture, faces_dir):
    from _demo import demo_model

    model = demo_model(demo_dir)
    people = [model.prepare_identity(faces_dir / "obama_1.jpg"), model.prepare_identity(faces_dir / "obama_1.jpg")]
    fast = {"steps": 2, "width": 96, "height": 64, "seed": 2}
    plain = model.generate_group(people, **fast)
    picture = Image.open(style_picture)
    styled = model.generate_group(people, style_images=picture, **fast)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(styled.images[0]))
    (recorded,) = styled.metadata["style_reference"]["images"]
    # An in-memory picture is named by its place and hashed by its decoded pixels.
    assert recorded["name"] == "style image 1" and len(recorded["sha256"]) == 64
    assert model.generate_group(people, style_images=picture.copy(), **fast).metadata["style_reference"]["images"] == [
        recorded]
