"""The ComfyUI node pack against the pinned ComfyUI in ../shared/vendor/comfyui (read-only), offline, on CPU.

The diffusion weights are a tiny SDXL-layout stack that ComfyUI and diffusers both hold exactly (tests/_comfyui.py),
written in the published layout (``ip-adapter.bin``, a diffusers ``ControlNetModel`` folder) into the test's own
ComfyUI model folders.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _comfyui import (
    CONTEXT,
    SIZE,
    UNET_CONFIG,
    agree,
    check_ui_layout,
    check_ui_slots_and_links,
    comfyui,
    ksampler,
    make_conditioning,
    make_identity,
    one_evaluation,
    pipeline_denoised,
    tiny_unet,
    ui_to_api,
)
from PIL import Image

VENDOR = Path(__file__).resolve().parents[1].parent / "shared" / "vendor" / "comfyui"
FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "instantid-tiny"
missing = [m for m in ("torchsde", "einops", "av", "aiohttp", "sqlalchemy") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(not (VENDOR / "comfy").is_dir(), reason=f"pinned ComfyUI not found at {VENDOR}"),
    pytest.mark.skipif(bool(missing), reason=f"ComfyUI's dependencies missing ({missing}): pip install -e .[comfyui]"),
]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory):
    """ComfyUI imported in CPU mode from the read-only copy, every folder it writes or searches in tmp."""
    with comfyui(VENDOR, tmp_path_factory.mktemp("comfyui")) as namespace:
        yield namespace


@pytest.fixture(scope="module")
def stack(comfy):
    """The tiny stack in diffusers (for our pipeline) and in ComfyUI (for the nodes), the same weights."""
    from diffusers import ControlNetModel

    from instantid.core.adapter import random_adapter_state_dict
    from instantid.io.tiny import draw_identitynet_weights

    c = comfy.comfy
    unet = tiny_unet()
    identitynet = ControlNetModel.from_unet(unet).eval()
    draw_identitynet_weights(identitynet, seed=0)
    identitynet.save_pretrained(comfy.models / "controlnet" / "instantid-tiny")
    adapter = random_adapter_state_dict(unet, width=128, depth=4, num_queries=16, embedding_dim=512, std=0.1)
    adapter["meta"] = {"embedding_space": "antelopev2-512"}
    torch.save(adapter, comfy.models / "instantid" / "ip-adapter.bin")

    config = c.supported_models.SDXL(UNET_CONFIG)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    names = c.utils.unet_to_diffusers(UNET_CONFIG)
    weights = {f"diffusion_model.{names[k]}": v for k, v in unet.state_dict().items()}
    missing, unexpected = base.load_state_dict(weights, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("diffusion_model.")]
    model = c.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    ours = comfy.ours
    loaded = SimpleNamespace(
        adapter=ours.InstantIDAdapterLoader().load("ip-adapter.bin")[0],
        identitynet=ours.InstantIDIdentityNetLoader().load("instantid-tiny/diffusion_pytorch_model.safetensors")[0],
    )
    return SimpleNamespace(unet=unet, identitynet=identitynet, model=model, loaded=loaded)


def _apply(comfy, stack, identity, ip_weight=0.8, cn_strength=0.8, mask=None, window=(0.0, 1.0)):
    positive, negative, _ = make_conditioning(1)
    kps = comfy.ours.InstantIDKeypoints().draw(SIZE, SIZE, "none", identity=identity)[0]
    return comfy.ours.InstantIDApply().apply(
        stack.loaded.adapter, stack.loaded.identitynet, identity, stack.model, positive, negative, ip_weight,
        cn_strength, *window, image_kps=kps, mask=mask,
    )


def test_node_contracts(comfy, stack) -> None:
    ours = comfy.ours
    assert set(ours.NODE_CLASS_MAPPINGS) == set(ours.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in ours.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional"} and inputs["required"]
        assert callable(getattr(cls(), cls.FUNCTION)) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    apply = ours.InstantIDApply.INPUT_TYPES()
    assert ours.InstantIDApply.RETURN_TYPES == ("MODEL", "CONDITIONING", "CONDITIONING")
    assert {k: apply["required"][k][1]["default"] for k in ("ip_weight", "cn_strength", "start_at", "end_at")} == {
        "ip_weight": 0.8, "cn_strength": 0.8, "start_at": 0.0, "end_at": 1.0}
    assert set(apply["optional"]) == {"image_kps", "mask"}
    assert "ip-adapter.bin" in ours.InstantIDAdapterLoader.INPUT_TYPES()["required"]["instantid_file"][0]


def test_loads_the_tiny_published_files(comfy, stack) -> None:
    from instantid.comfyui.adapter import load_face_adapter

    spec = stack.loaded.adapter.spec
    assert (spec.width, spec.num_queries, spec.output_dim, spec.num_layers) == (128, 16, CONTEXT, 17)
    net = stack.loaded.identitynet
    assert isinstance(net, comfy.comfy.controlnet.ControlNet)
    assert len(net.control_model.zero_convs) == len(stack.identitynet.controlnet_down_blocks)
    shared = load_face_adapter(FIXTURE / "ip-adapter.bin")  # the shared fixture's sizes, read from its tensors
    assert (shared.spec.width, shared.spec.num_queries, shared.spec.embedding_dim) == (128, 16, 512)


def test_published_sdxl_layers_pair_with_the_published_numbering(comfy) -> None:
    """At SDXL's real size (built on the meta device): the adapter's checkpoint numbers (diffusers' processor
    order, 1, 3, ..., 139) and ComfyUI's attn2 keys pair up as ComfyUI's own diffusers key map says."""
    from diffusers import UNet2DConditionModel

    from instantid.comfyui.adapter import cross_attention_layers

    c = comfy.comfy
    config = {**UNET_CONFIG, "model_channels": 320, "channel_mult": [1, 2, 4], "context_dim": 2048,
              "adm_in_channels": 2816, "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}  # ComfyUI's SDXL
    model = c.supported_models.SDXL(config)
    model.set_inference_dtype(torch.float16, None)
    ours = [layer.key for layer in cross_attention_layers(model.get_model({}, device="meta").diffusion_model)]
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )
    ldm = c.utils.unet_to_diffusers(config)
    published = {}
    for n, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            parts = ldm[name.replace(".processor", ".to_q.weight")].split(".")
            if parts[0] == "middle_block":  # middle_block.1.transformer_blocks.<index>...
                published[n] = ("middle", 0, int(parts[3]))
            else:  # input_blocks.<id>.1.transformer_blocks.<index>...
                published[n] = (parts[0].removesuffix("_blocks"), int(parts[1]), int(parts[4]))
    assert sorted(published) == list(range(1, 140, 2))
    assert [published[n] for n in sorted(published)] == ours


def test_identitynet_conversion_equals_comfyuis_own(comfy, stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A published-size IdentityNet goes through ComfyUI's own diffusers loader; ours, for sizes ComfyUI does not
    list, must give the same network: made to list the tiny size, ComfyUI loads it itself, tensor for tensor."""
    from instantid.comfyui.identitynet import load_identitynet

    path = comfy.models / "controlnet" / "instantid-tiny" / "diffusion_pytorch_model.safetensors"
    detection = comfy.comfy.model_detection
    known = []
    monkeypatch.setattr(detection, "unet_config_from_diffusers_unet",
                        lambda sd, dtype=None: known.append(1) or {**UNET_CONFIG, "dtype": dtype})
    native = load_identitynet(path)
    assert known, "ComfyUI's own diffusers path was taken"
    ours = stack.loaded.identitynet.control_model.state_dict()
    theirs = native.control_model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_apply_clones_and_patches_exactly_the_adapter_layers(comfy, stack) -> None:
    from instantid.comfyui.adapter import cross_attention_layers

    before = stack.model.model_options["transformer_options"].copy()
    patched, positive, negative = _apply(comfy, stack, make_identity(0))
    assert patched is not stack.model and patched.model is stack.model.model
    assert stack.model.model_options["transformer_options"] == before and "patches_replace" not in before
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    layers = {layer.key for layer in cross_attention_layers(stack.model.model.diffusion_model)}
    assert set(replace) == layers and len(layers) == 17
    assert {("middle", 0, 0), ("middle", 0, 1)} <= layers
    calls: dict = {}

    def counted(key, patch):
        def run(q, k, v, extra):
            calls[key] = calls.get(key, 0) + 1
            return patch(q, k, v, extra)
        return run

    for key, patch in list(replace.items()):
        replace[key] = counted(key, patch)
    one_evaluation(comfy, patched, positive, negative, sigma=float(stack.model.model.model_sampling.sigmas[500]))
    assert calls == {key: 1 for key in layers}, "every adapter layer once per evaluation (cond and uncond batched)"


def test_identitynet_reads_the_face_tokens_and_other_controlnets_the_text(comfy, stack) -> None:
    identity = make_identity(0)
    (kps,) = comfy.ours.InstantIDKeypoints().draw(SIZE, SIZE, "none", identity=identity)
    positive, negative, _ = make_conditioning(1)
    other = stack.loaded.identitynet.copy().set_cond_hint(kps.movedim(-1, 1), 0.5)  # a ControlNet applied before
    for conditioning in (positive, negative):
        conditioning[0][1]["control"] = other
    patched, positive, negative = comfy.ours.InstantIDApply().apply(
        stack.loaded.adapter, stack.loaded.identitynet, identity, stack.model, positive, negative, 0.8, 0.8, 0.0,
        1.0, image_kps=kps)
    contexts = []
    hook = stack.loaded.identitynet.control_model.register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["context"].clone()), with_kwargs=True)
    try:
        one_evaluation(comfy, patched, positive, negative, sigma=float(stack.model.model.model_sampling.sigmas[500]))
    finally:
        hook.remove()
    text, faces = sorted(contexts, key=lambda context: -context.shape[1])
    assert text.shape == (2, 77, CONTEXT) and faces.shape == (2, 16, CONTEXT)
    cond, uncond = stack.loaded.adapter.face_tokens(torch.from_numpy(identity.embedding)[None])
    rows = {tuple(c.flatten()[:4].tolist()) for c in faces}
    assert rows == {tuple(cond.flatten()[:4].tolist()), tuple(uncond.flatten()[:4].tolist())}


def test_ksampler_runs_changes_with_identity_and_strength_zero_is_plain(comfy, stack) -> None:
    positive, negative, _ = make_conditioning(1)
    plain = ksampler(comfy, stack.model, positive, negative)
    runs = [ksampler(comfy, *_apply(comfy, stack, make_identity(seed))) for seed in (0, 1)]
    assert all(torch.isfinite(r).all() for r in runs)
    assert not torch.allclose(runs[0], runs[1], atol=1e-4), "the identity changes the latents"
    off = ksampler(comfy, *_apply(comfy, stack, make_identity(0), ip_weight=0.0, cn_strength=0.0))
    assert torch.equal(off, plain)
    # a window after the last step, then one over the second step only
    closed = ksampler(comfy, *_apply(comfy, stack, make_identity(0), window=(1.0, 1.0)))
    assert torch.equal(closed, plain)
    late = ksampler(comfy, *_apply(comfy, stack, make_identity(0), window=(0.5, 1.0)))
    assert not torch.equal(late, plain) and not torch.allclose(late, runs[0], atol=1e-4)


@pytest.fixture(scope="module")
def pipe(comfy, stack):
    """Our diffusers pipeline on the same weights, its face adapter loaded by its own loader."""
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    pipe = StableDiffusionXLInstantIDPipeline(
        vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=tiny_unet(),
        controlnet=stack.identitynet, scheduler=None,
    )
    pipe.load_ip_adapter_instantid(comfy.models / "instantid" / "ip-adapter.bin", scale=1.0)
    return pipe


def test_one_step_agrees_with_our_diffusers_pipeline(comfy, stack, pipe) -> None:
    """Same latents, timestep, text and identity, with a face-region mask: ComfyUI + our nodes == our pipeline."""
    identity = make_identity(4)
    mask = torch.zeros(SIZE, SIZE)
    mask[24:104, 32:96] = 1.0
    patched, positive, negative = _apply(comfy, stack, identity, ip_weight=0.7, cn_strength=0.9, mask=mask[None])
    t = 600
    sigma = float(stack.model.model.model_sampling.sigmas[t])
    x, denoised = one_evaluation(comfy, patched, positive, negative, sigma)
    (kps,) = comfy.ours.InstantIDKeypoints().draw(SIZE, SIZE, "none", identity=identity)
    expected = pipeline_denoised(pipe, x, t, sigma, [(torch.from_numpy(identity.embedding), kps, mask)], 0.7, 0.9)
    agree(denoised, expected, one_evaluation(comfy, stack.model, *make_conditioning(1)[:2], sigma)[1])


def test_several_people_agree_with_our_pipeline(comfy, stack, pipe) -> None:
    """Two people posed by a group photo (800 x 640, fitted to the 128 px picture as ComfyUI fits ControlNet
    pictures): each one's tokens and IdentityNet inside the region nearest their face, as our pipeline does."""
    from instantid.api.face_side import group_poses
    from instantid.api.regions import nearest_face_regions
    from instantid.core.keypoints import draw_kps

    c, ours = comfy.comfy, comfy.ours
    (analyzer,) = ours.InstantIDFaceAnalyzerLoader().load("antelopev2", "CPU")
    photo = np.zeros((640, 800, 3), np.float32)  # wider than the picture: ComfyUI crops its centre
    photo[288:384, 96:192] = photo[288:384, 416:512] = 1.0
    pose = torch.from_numpy(photo)[None]
    people = [make_identity(5), make_identity(6)]
    positive, negative, _ = make_conditioning(1)
    patched, positive, negative, preview = ours.InstantIDApplyGroup().apply(
        stack.loaded.adapter, stack.loaded.identitynet, analyzer, pose, stack.model, positive, negative, 0.6, 0.8,
        0.0, 1.0, identity_1=people[0], identity_2=people[1],
    )
    assert preview.shape == (1, 640, 800, 3)
    t = 400
    sigma = float(stack.model.model.model_sampling.sigmas[t])
    x, denoised = one_evaluation(comfy, patched, positive, negative, sigma)

    faces, size = group_poses(analyzer, Image.fromarray((photo * 255).astype(np.uint8)), 2)
    regions = nearest_face_regions([f.kps.mean(axis=0) for f in faces], size)
    assert [f.bbox[0] for f in faces] == sorted(f.bbox[0] for f in faces), "person 1 is the leftmost face"

    def fitted(picture: Image.Image, mode: str) -> torch.Tensor:  # ComfyUI's centre-crop resize to the picture
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).movedim(-1, 0)[None]
        return c.utils.common_upscale(pixels, SIZE, SIZE, mode, "center")[0].movedim(0, -1)

    inputs = [(torch.from_numpy(p.embedding), fitted(draw_kps(Image.new("RGB", size), f.kps), "nearest-exact")[None],
               fitted(r, "bilinear")[..., 0]) for p, f, r in zip(people, faces, regions, strict=True)]
    expected = pipeline_denoised(pipe, x, t, sigma, inputs, 0.6, 0.8)
    agree(denoised, expected, one_evaluation(comfy, stack.model, *make_conditioning(1)[:2], sigma)[1])

    # Two Apply InstantID nodes in a row, each with its person's keypoints and region, stack into the same step.
    model, positive, negative = stack.model, *make_conditioning(1)[:2]
    for person, face, region in zip(people, faces, regions, strict=True):
        kps = torch.from_numpy(np.asarray(draw_kps(Image.new("RGB", size), face.kps), dtype=np.float32) / 255)[None]
        mask = torch.from_numpy(np.asarray(region.convert("L"), dtype=np.float32) / 255)[None]
        model, positive, negative = ours.InstantIDApply().apply(
            stack.loaded.adapter, stack.loaded.identitynet, person, model, positive, negative, 0.6, 0.8, 0.0, 1.0,
            image_kps=kps, mask=mask)
    chained = one_evaluation(comfy, model, positive, negative, sigma)[1]
    assert torch.allclose(chained, denoised, atol=1e-4, rtol=1e-4), (chained - denoised).abs().max()


def test_face_identity_fuses_photos_and_reports_the_outlier(comfy) -> None:
    ours = comfy.ours
    (analyzer,) = ours.InstantIDFaceAnalyzerLoader().load("auto", "CPU")
    assert analyzer.space == "antelopev2-512", "auto picks antelopev2 found in models/insightface"
    pixels = np.zeros((640, 640, 3), np.float32)
    pixels[320:352, 320:352] = 1.0
    other = np.zeros_like(pixels)
    other[:, :] = (200 / 255, 200 / 255, 0.0)  # the tiny recogniser embeds the colours around the face
    other[320:352, 320:352] = 1.0
    photos = torch.from_numpy(np.stack([pixels, pixels, other, pixels]))
    identity, report = ours.InstantIDFaceIdentity().analyse(analyzer, photos, "robust", -1)
    assert [r.name for r in identity.rejected] == ["photo 3"] and len(identity.kept) == 3
    assert "photo 3: left out" in report
    (kps,) = ours.InstantIDKeypoints().draw(256, 256, "none", identity=identity)
    assert kps.shape == (1, 256, 256, 3) and kps.amax() == 1.0
    (layout,) = ours.InstantIDKeypoints().draw(256, 128, "frontal")
    assert layout.shape == (1, 128, 256, 3) and not torch.equal(layout[:, :, :128], layout[:, :, 128:])
    pose = np.zeros_like(pixels)
    pose[320:352, 448:480] = 1.0
    pose = torch.from_numpy(pose)[None]
    posed, _ = ours.InstantIDFaceIdentity().analyse(analyzer, photos[:1], "auto", -1, pose_image=pose)
    assert posed.pose_face.bbox[0] > identity.pose_face.bbox[0], "the pose comes from the pose image"
    assert np.array_equal(posed.embedding, identity.references[0].face.embedding), "the face from the photo"
    (from_pose,) = ours.InstantIDKeypoints().draw(256, 256, "none", pose_image=pose, face_analyzer=analyzer)
    assert torch.equal(from_pose, ours.InstantIDKeypoints().draw(256, 256, "none", identity=posed)[0])
    assert not torch.equal(from_pose, kps)
    from instantid.errors import InvalidInputError

    for inputs in ({}, {"pose_image": pose}):
        with pytest.raises(InvalidInputError):
            ours.InstantIDKeypoints().draw(256, 256, "none", **inputs)


def test_errors_are_one_line(comfy, stack) -> None:
    from dataclasses import replace

    from safetensors.torch import save_file

    from instantid.errors import EmbeddingSpaceError, IncompatibleWeightsError, MissingWeightsError, NoFaceError

    ours = comfy.ours
    (analyzer,) = ours.InstantIDFaceAnalyzerLoader().load("antelopev2", "CPU")
    with pytest.raises(NoFaceError) as no_face:
        ours.InstantIDFaceIdentity().analyse(analyzer, torch.zeros(1, 640, 640, 3), "auto", -1)
    (comfy.models / "instantid" / "not-an-adapter.bin").write_bytes(b"not a pickle at all")
    torch.save({"image_proj": {}}, comfy.models / "instantid" / "half.bin")
    errors = [no_face.value]
    for name in ("not-an-adapter.bin", "half.bin"):
        with pytest.raises(IncompatibleWeightsError) as wrong:
            ours.InstantIDAdapterLoader().load(name)
        errors.append(wrong.value)
    from instantid.comfyui.adapter import load_face_adapter
    from instantid.comfyui.identitynet import load_identitynet

    save_file({"weight": torch.zeros(2)}, comfy.models / "controlnet" / "not-a-controlnet.safetensors")
    with pytest.raises(IncompatibleWeightsError, match="not an IdentityNet") as not_identitynet:
        load_identitynet(comfy.models / "controlnet" / "not-a-controlnet.safetensors")
    errors.append(not_identitynet.value)
    other = load_face_adapter(FIXTURE / "ip-adapter.bin")  # made for another UNet
    with pytest.raises(IncompatibleWeightsError, match="needs") as misfit:
        ours.InstantIDApply().apply(other, stack.loaded.identitynet, make_identity(0), stack.model,
                                    *make_conditioning(1)[:2], 0.8, 0.8, 0.0, 1.0)
    errors.append(misfit.value)
    dlib = replace(make_identity(0), embedding=np.zeros(128, np.float32), space="dlib-128")
    with pytest.raises(EmbeddingSpaceError, match="antelopev2-512") as space:
        ours.InstantIDApply().apply(stack.loaded.adapter, stack.loaded.identitynet, dlib, stack.model,
                                    *make_conditioning(1)[:2], 0.8, 0.8, 0.0, 1.0)
    errors.append(space.value)
    insightface = comfy.folder_paths.folder_names_and_paths["insightface"]
    saved = list(insightface[0])
    insightface[0][:] = [str(comfy.models / "empty")]
    try:
        with pytest.raises(MissingWeightsError, match="antelopev2 face model not found") as no_model:
            ours.InstantIDFaceAnalyzerLoader().load("antelopev2", "CPU")
    finally:
        insightface[0][:] = saved
    errors.append(no_model.value)
    assert all("\n" not in str(e) and str(e) for e in errors), [str(e) for e in errors]


def test_comfyui_loads_the_custom_node_folder_and_validates_the_readme_workflow(comfy, stack) -> None:
    """ComfyUI's own custom-node loader takes ``comfyui_instantid/``, and ComfyUI's own prompt validation accepts
    the README's workflow (node names, input names, link types, file choices) with the files in its folders."""
    import asyncio
    import json
    import shutil

    import execution

    repo = Path(__file__).resolve().parents[1]
    assert asyncio.run(comfy.nodes.load_custom_node(str(repo / "comfyui_instantid")))
    # The registry's way: the whole repository cloned into custom_nodes, loaded through its root __init__.py.
    assert asyncio.run(comfy.nodes.load_custom_node(str(repo)))
    import sys

    loaded = sys.modules[str(repo).replace(".", "_x_")]  # the name ComfyUI gives a custom-node folder
    assert set(loaded.NODE_CLASS_MAPPINGS) == set(comfy.ours.NODE_CLASS_MAPPINGS) != set()
    assert set(comfy.ours.NODE_CLASS_MAPPINGS) <= set(comfy.nodes.NODE_CLASS_MAPPINGS)
    identitynet = comfy.models / "controlnet" / "instantid"
    identitynet.mkdir()
    shutil.copy(comfy.models / "controlnet" / "instantid-tiny" / "diffusion_pytorch_model.safetensors", identitynet)
    checkpoints = comfy.models / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "sd_xl_base_1.0.safetensors").write_bytes(b"")  # validation reads names, not weights
    comfy.folder_paths.add_model_folder_path("checkpoints", str(checkpoints), is_default=True)
    Image.new("RGB", (64, 64)).save(Path(comfy.folder_paths.get_input_directory()) / "face.png")
    workflow = json.loads((repo / "comfyui_instantid" / "api_workflows" / "instantid_basic_api.json").read_text())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("readme", workflow, None))
    assert valid, (error, node_errors)
    assert outputs == ["14"]
    workflow["10"]["inputs"]["identity"] = ["9", 0]  # an IMAGE where an identity belongs
    assert not asyncio.run(execution.validate_prompt("broken", workflow, None))[0]


def test_ui_workflow_queues_the_api_workflow(comfy) -> None:
    """The workflow users drop on the canvas (UI format) queues exactly the API workflow the previous test validates
    (the frontend's conversion: tests/_comfyui.py), its sockets and link types are the pinned ComfyUI's classes'
    with our nodes, and it reads left to right without overlapping nodes."""
    import json

    from comfy_execution.validation import validate_node_input

    pack = Path(__file__).resolve().parents[1] / "comfyui_instantid"
    ui = json.loads((pack / "workflows" / "instantid_basic.json").read_text())
    api = json.loads((pack / "api_workflows" / "instantid_basic_api.json").read_text())
    classes = {**comfy.nodes.NODE_CLASS_MAPPINGS, **comfy.ours.NODE_CLASS_MAPPINGS}
    assert ui["version"] == 0.4 and not ui["groups"]
    assert ui_to_api(ui, classes) == api
    check_ui_slots_and_links(ui, classes, validate_node_input)
    check_ui_layout(ui)


def test_templates_browser_lists_only_ui_workflows(comfy, tmp_path: Path) -> None:
    """ComfyUI's Templates browser lists the JSON files in a custom node's ``workflows/`` (and similar) folders and
    loads each as a UI workflow (an API-format file there fails with "nodes is not iterable"): ComfyUI's own routes
    list our pack's UI workflow and nothing else."""
    import asyncio
    import json

    from aiohttp import web
    from app.custom_node_manager import CustomNodeManager

    pack = Path(__file__).resolve().parents[1] / "comfyui_instantid"
    (tmp_path / pack.name).symlink_to(pack)
    custom_nodes = comfy.folder_paths.folder_names_and_paths["custom_nodes"][0]
    custom_nodes.append(str(tmp_path))
    try:
        routes, webapp = web.RouteTableDef(), web.Application()
        CustomNodeManager().add_routes(routes, webapp, [(pack.name, str(pack))])
        listing = next(route.handler for route in routes if route.path == "/workflow_templates")
        listed = json.loads(asyncio.run(listing(None)).text)
    finally:
        custom_nodes.remove(str(tmp_path))
    assert listed == {pack.name: ["instantid_basic"]}
    (served,) = [Path(r.get_info()["directory"]) for r in webapp.router.resources()
                 if r.canonical == f"/api/workflow_templates/{pack.name}"]
    assert "nodes" in json.loads((served / "instantid_basic.json").read_text())
