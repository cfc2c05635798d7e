"""The drop-in pipeline's smaller promises, each pinned where a one-line bug would break it: nearest-face regions,
the identities=[...] argument checks (one line each), the adapter loader's own checks and defaults, and
``callback_on_step_end`` (diffusers' contract: the named tensors, and what the callback returns replaces them for
the following steps). Tiny published checkpoints, 64 px, two steps."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from instantid import StableDiffusionXLInstantIDPipeline, draw_kps
from instantid.api.regions import nearest_face_regions
from instantid.core.attention import face_processors
from instantid.errors import IncompatibleWeightsError, InvalidInputError
from instantid.pipelines.call import CallRequest, Person
from instantid.pipelines.sdxl import InstantIDMixin

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
KPS = [[22, 20], [42, 21], [32, 31], [24, 42], [40, 42]]


# ---- nearest_face_regions --------------------------------------------------------------------------------------
def test_nearest_face_regions_give_each_pixel_to_its_nearest_centre() -> None:
    width, height, centres = 13, 7, [(2.2, 1.0), (9.0, 5.5), (11.5, 0.4)]
    masks = nearest_face_regions(centres, (width, height))
    assert [(m.mode, m.size) for m in masks] == [("RGB", (width, height))] * 3
    pixels = np.stack([np.asarray(m) for m in masks])
    assert pixels.dtype == np.uint8 and set(np.unique(pixels)) == {0, 255}
    for y in range(height):
        for x in range(width):
            nearest = min(range(3), key=lambda i: math.dist((x, y), centres[i]))
            assert [int(pixels[i, y, x, 0]) for i in range(3)] == [255 * (i == nearest) for i in range(3)]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    flat = nearest_face_regions([2.2, 1.0, 9.0, 5.5, 11.5, 0.4], (width, height))  # x, y pairs in one list
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(flat, masks, strict=True))
    with pytest.raises(InvalidInputError, match=r"^nearest_face_regions needs at least one face centre$"):
        nearest_face_regions([], (width, height))


# ---- identities=[...] checks -------------------------------------------------------------------------------------
def _request(**given) -> CallRequest:
    arguments = {f.name: None for f in dataclasses.fields(CallRequest)}
    return CallRequest(**{**arguments, **given})


KP = Image.new("RGB", (64, 64))
MASK = Image.new("RGB", (64, 64), "white")
ONE = Person(np.zeros(512, np.float32), KP)
MISPLACED = ("with identities=[...] give each person's embedding and mask in its Person, not image_embeds / "
             "image_embeds_weights / control_mask")


@pytest.mark.parametrize(("given", "nets", "message"), [
    ({"image_embeds": np.zeros(512)}, 1, MISPLACED),
    ({"control_mask": MASK}, 1, MISPLACED),
    ({"image_embeds_weights": [1.0]}, 1, MISPLACED),
    ({"identities": []}, 1, "identities must be a non-empty list of instantid.pipelines.sdxl.Person"),
    ({"identities": [ONE, "someone"]}, 1, "identities must be a non-empty list of instantid.pipelines.sdxl.Person"),
    ({"identities": [Person(np.zeros(512), None)]}, 1, "every Person needs its keypoint picture (keypoints)"),
    ({"identities": [Person(np.zeros(512), KP, MASK), ONE]}, 1, "with several people give each Person a region mask"),
    ({"identities": [ONE], "keypoints": KP}, 1,
     "with identities=[...] the keypoint pictures go in each Person, not in image / control_image"),
    ({"identities": [ONE]}, 2, "with identities=[...] give one control image per extra ControlNet (1) as image"),
    ({"identities": [ONE], "keypoints": KP}, 2,
     "with identities=[...] give one control image per extra ControlNet (1) as image"),
    ({"identities": [ONE], "keypoints": [KP, KP]}, 2,
     "with identities=[...] give one control image per extra ControlNet (1) as image"),
    ({"identities": [ONE], "keypoints": [KP]}, 3,
     "with identities=[...] give one control image per extra ControlNet (2) as image"),
])
def test_identities_arguments_are_checked_in_one_line(given: dict, nets: int, message: str) -> None:
    given.setdefault("identities", [ONE])
    with pytest.raises(InvalidInputError, match=f"^{re.escape(message)}$"):
        InstantIDMixin._check_identities(_request(**given), nets)


@pytest.mark.parametrize(("given", "nets"), [
    ({"identities": [ONE]}, 1),
    ({"identities": [Person(np.zeros(512), KP, MASK), Person(np.zeros(512), KP, MASK)]}, 1),
    ({"identities": [ONE], "keypoints": [KP]}, 2),
])
def test_identities_arguments_that_are_right_pass(given: dict, nets: int) -> None:
    InstantIDMixin._check_identities(_request(**given), nets)


# ---- the adapter loader ----------------------------------------------------------------------------------------
@pytest.fixture
def bare_pipe(tiny_fixture_dir):
    """The tiny base and IdentityNet, no face adapter yet."""
    controlnet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(tiny_fixture_dir / "base", controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_loader_checks_sizes_against_the_file_and_defaults_to_the_published_scale(bare_pipe, tiny_fixture_dir):
    path = tiny_fixture_dir / "ip-adapter.bin"
    had_extractor = bare_pipe.feature_extractor is not None
    with pytest.raises(InvalidInputError, match=f"^num_tokens=3 was asked for but {re.escape(str(path))} has 16$"):
        bare_pipe.load_ip_adapter_instantid(path, num_tokens=3)
    with pytest.raises(InvalidInputError, match=f"^image_emb_dim=7 was asked for but {re.escape(str(path))} has "):
        bare_pipe.load_ip_adapter_instantid(path, image_emb_dim=7)
    spec = bare_pipe.load_ip_adapter_instantid(path, num_tokens=16, image_emb_dim=512)  # what the file has: fine
    assert (spec.num_queries, spec.embedding_dim) == (16, 512) and bare_pipe.adapter_spec == spec
    processors = face_processors(bare_pipe.unet)
    assert processors and all(p.scale == [0.5] for p in processors)  # the published default
    assert (bare_pipe.feature_extractor is not None) == had_extractor  # no CLIP extractor registered for us


def test_the_loader_keeps_a_users_feature_extractor(bare_pipe, tiny_fixture_dir):
    from transformers import CLIPImageProcessor

    mine = CLIPImageProcessor()
    bare_pipe.register_modules(feature_extractor=mine)
    bare_pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    assert bare_pipe.feature_extractor is mine


def test_adapter_errors_name_the_file(bare_pipe, tiny_fixture_dir, tmp_path):
    published = torch.load(tiny_fixture_dir / "ip-adapter.bin", map_location="cpu", weights_only=True)
    no_latents = tmp_path / "no-latents.bin"  # not a Resampler: found while reading the file
    torch.save({"image_proj": {k: v for k, v in published["image_proj"].items() if k != "latents"},
                "ip_adapter": published["ip_adapter"]}, no_latents)
    with pytest.raises(IncompatibleWeightsError,
                       match=f"^face adapter {re.escape(str(no_latents))}: 'image_proj' lacks"):
        bare_pipe.load_ip_adapter_instantid(no_latents)
    short = tmp_path / "short.bin"  # a layer missing: found against this UNet
    torch.save({"image_proj": published["image_proj"],
                "ip_adapter": {k: v for k, v in published["ip_adapter"].items() if not k.startswith("1.")}}, short)
    with pytest.raises(IncompatibleWeightsError, match=f"^face adapter {re.escape(str(short))} has no '1.to_k_ip"):
        bare_pipe.load_ip_adapter_instantid(short)


def test_attention_slicing_slices_every_other_layer_and_keeps_the_face_layers(bare_pipe, tiny_fixture_dir):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    bare_pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    faces = {name for name, p in bare_pipe.unet.attn_processors.items() if p in face_processors(bare_pipe.unet)}
    bare_pipe.enable_attention_slicing()  # "auto": half of each layer's heads at a time, as diffusers does
    processors = bare_pipe.unet.attn_processors
    others = [p for name, p in processors.items() if name not in faces]
    assert {name for name, p in processors.items() if p in face_processors(bare_pipe.unet)} == faces
    assert others and all(isinstance(p, SlicedAttnProcessor) for p in others)
    heads = {m.processor: m.sliceable_head_dim for m in bare_pipe.unet.modules() if hasattr(m, "sliceable_head_dim")}
    assert all(p.slice_size == heads[p] // 2 for p in others)


def test_xformers_is_diffusers_own_switch(bare_pipe, tiny_fixture_dir):
    """Without xformers installed, diffusers' own refusal comes through (the face layers need no xformers)."""
    try:
        import xformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("xformers is installed here")
    bare_pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    with pytest.raises((ModuleNotFoundError, ValueError, ImportError), match="xformers"):
        bare_pipe.enable_xformers_memory_efficient_attention()


# ---- callback_on_step_end ------------------------------------------------------------------------------------
ALL = ["latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
       "negative_pooled_prompt_embeds", "negative_add_time_ids", "image"]  # text-to-image's, as diffusers names them


@pytest.fixture(scope="module")
def embedding(tiny_fixture_dir):
    return np.load(tiny_fixture_dir / "face_embedding.npy")


def _run(pipe, embedding, callback, guidance: float = 5.0, image=None, names=ALL, steps: int = 2, **more):
    return pipe(prompt="a portrait", image_embeds=embedding, image=image or draw_kps(Image.new("RGB", (64, 64)), KPS),
                num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(0), callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=names, **more).images


def test_the_callback_gets_every_named_tensor_halved_by_guidance(fixture_pipe, embedding) -> None:
    seen: list[dict] = []
    calls: list[tuple] = []
    _run(fixture_pipe, embedding, lambda pipe, i, t, tensors: calls.append((pipe, i, t)) or seen.append(tensors))
    assert [(pipe, i) for pipe, i, _ in calls] == [(fixture_pipe, 0), (fixture_pipe, 1)]
    assert [float(t) for *_, t in calls] == [float(t) for t in fixture_pipe.scheduler.timesteps]
    tensors = seen[0]
    assert fixture_pipe._callback_tensor_inputs == ALL and list(tensors) == ALL and len(seen) == 2
    assert tensors["latents"].shape[0] == 1 and tensors["prompt_embeds"].shape[0] == 2
    for full, negative in (("prompt_embeds", "negative_prompt_embeds"),
                           ("add_text_embeds", "negative_pooled_prompt_embeds"),
                           ("add_time_ids", "negative_add_time_ids")):
        assert torch.equal(tensors[negative], tensors[full][:1]), negative
    assert tensors["add_time_ids"].shape == (2, 6) and tensors["image"].shape == (2, 3, 64, 64)
    seen.clear()
    # Three images and a negative size of their own: the negative halves are the first half, exactly.
    _run(fixture_pipe, embedding, lambda pipe, i, t, tensors: seen.append(tensors), num_images_per_prompt=3,
         negative_original_size=(32, 48), negative_target_size=(48, 32))
    tensors = seen[0]
    assert tensors["prompt_embeds"].shape[0] == 6
    for full, negative in (("prompt_embeds", "negative_prompt_embeds"),
                           ("add_text_embeds", "negative_pooled_prompt_embeds"),
                           ("add_time_ids", "negative_add_time_ids")):
        assert torch.equal(tensors[negative], tensors[full][:3]), negative
    assert not torch.equal(tensors["add_time_ids"][:3], tensors["add_time_ids"][3:])
    seen.clear()
    _run(fixture_pipe, embedding, lambda pipe, i, t, tensors: seen.append(tensors), guidance=1.0)
    assert seen[0]["prompt_embeds"].shape[0] == 1
    assert all(seen[0][name] is None for name in ALL if name.startswith("negative"))


@pytest.mark.parametrize("image_key", ["image", "control_image"])  # img2img's name for it is accepted too
def test_what_the_callback_returns_is_what_the_next_steps_use(fixture_pipe, embedding, image_key) -> None:
    seen: list[dict] = []
    returned: dict = {}

    def callback(pipe, i, t, tensors):
        seen.append(tensors)
        if i == 0:
            returned.update(prompt_embeds=tensors["prompt_embeds"] * 0.5,
                            add_text_embeds=tensors["add_text_embeds"] + 1, add_time_ids=tensors["add_time_ids"] + 8,
                            **{image_key: tensors["image"].flip(-1)})
            return dict(returned)
        return None  # nothing returned: nothing replaced

    changed = _run(fixture_pipe, embedding, callback, steps=3)
    for name in ("prompt_embeds", "add_text_embeds", "add_time_ids"):
        assert seen[1][name] is returned[name] and seen[2][name] is returned[name], name
    assert seen[1]["image"] is returned[image_key] and seen[2]["image"] is returned[image_key]
    unchanged = _run(fixture_pipe, embedding, lambda pipe, i, t, tensors: {}, steps=3)
    assert (changed - unchanged).abs().max() > 1e-3
    for name in ("prompt_embeds", "add_text_embeds", "add_time_ids", image_key):  # each one matters on its own
        seen.clear()
        one = _run(fixture_pipe, embedding,
                   lambda pipe, i, t, tensors, name=name: {name: returned[name]} if i == 0 else {}, steps=3)
        assert (one - unchanged).abs().max() > 1e-4, name


@pytest.fixture(scope="module")
def two_nets(tiny_fixture_dir):
    identitynet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pose = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
        tiny_fixture_dir / "base", controlnet=MultiControlNetModel([identitynet, pose]))
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_with_two_controlnets_the_images_are_a_list_identitynet_first(two_nets, embedding) -> None:
    seen: list = []
    kps = draw_kps(Image.new("RGB", (64, 64)), KPS)
    pose = Image.new("RGB", (64, 64), "gray")

    def callback(pipe, i, t, tensors):
        seen.append(tensors["image"])
        return {"image": [tensors["image"][1], tensors["image"][0]]} if i == 0 else {}

    _run(two_nets, embedding, callback, image=[kps, pose], names=["image"])
    first, second = seen
    assert isinstance(first, list) and len(first) == 2 and not torch.equal(first[0], first[1])
    assert second[0] is first[1] and second[1] is first[0]  # swapped by the callback, in that order


def test_img2img_names_its_callback_tensors_as_diffusers_does(fixture_pipe, embedding) -> None:
    from instantid import StableDiffusionXLInstantIDImg2ImgPipeline

    pipe = StableDiffusionXLInstantIDImg2ImgPipeline.from_pipe(fixture_pipe)
    names = pipe._callback_tensor_inputs
    assert "add_neg_time_ids" in names and "control_image" in names
    seen: list[dict] = []
    kps = draw_kps(Image.new("RGB", (64, 64)), KPS)
    pipe(prompt="a portrait", image_embeds=embedding, image=Image.new("RGB", (64, 64), "gray"), control_image=kps,
         strength=1.0, num_inference_steps=2, guidance_scale=5.0, output_type="latent",
         negative_original_size=(32, 48), negative_target_size=(48, 32), generator=torch.Generator().manual_seed(0),
         callback_on_step_end=lambda p, i, t, tensors: seen.append(tensors), callback_on_step_end_tensor_inputs=names)
    tensors = seen[0]
    assert list(tensors) == names
    assert torch.equal(tensors["add_neg_time_ids"], tensors["add_time_ids"][:1])
    assert not torch.equal(tensors["add_time_ids"][:1], tensors["add_time_ids"][1:])
    assert tensors["control_image"].shape == (2, 3, 64, 64)
    for guidance, images in ((5.0, 3), (1.0, 1)):  # three images: the first half of six rows; no guidance: none
        seen.clear()
        pipe(prompt="a portrait", image_embeds=embedding, image=Image.new("RGB", (64, 64), "gray"),
             control_image=kps, strength=1.0, num_inference_steps=1, guidance_scale=guidance, output_type="latent",
             num_images_per_prompt=images, negative_original_size=(32, 48), negative_target_size=(48, 32),
             callback_on_step_end=lambda p, i, t, tensors: seen.append(tensors),
             callback_on_step_end_tensor_inputs=["add_time_ids", "add_neg_time_ids"])
        time_ids = seen[0]["add_time_ids"]
        if guidance > 1:
            assert time_ids.shape[0] == 6 and torch.equal(seen[0]["add_neg_time_ids"], time_ids[:3])
        else:
            assert time_ids.shape[0] == 1 and seen[0]["add_neg_time_ids"] is None


# ---- region masks as the pipeline reads them -----------------------------------------------------------------
def test_a_control_mask_is_read_from_its_first_channel_whatever_its_type() -> None:
    read = InstantIDMixin._face_mask_tensor
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (6, 10, 3)).astype(np.uint8)
    expected = torch.from_numpy(pixels[..., 0].astype(np.float32)) / 255
    for mask in (pixels, Image.fromarray(pixels)):
        out = read(mask, 6, 10, torch.device("cpu"), torch.float64)
        assert out.dtype == torch.float64 and torch.equal(out, expected.double())
    channels = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255  # (C, H, W): the first channel
    assert torch.equal(read(channels, 6, 10, torch.device("cpu"), torch.float32), channels[0])
    assert torch.equal(read(channels[1], 6, 10, torch.device("cpu"), torch.float32), channels[1])  # (H, W)
    small = Image.fromarray(pixels).resize((5, 3), Image.NEAREST)  # another size: resized nearest, as published
    again = np.asarray(small.resize((10, 6), Image.NEAREST))[..., 0].astype(np.float32) / 255
    assert torch.equal(read(small, 6, 10, torch.device("cpu"), torch.float32), torch.from_numpy(again))
    with pytest.raises(InvalidInputError, match=r"^control_mask is \(6, 9\), expected \(6, 10\)$"):
        read(channels[0, :, :9], 6, 10, torch.device("cpu"), torch.float32)
    assert read(None, 6, 10, torch.device("cpu"), torch.float32) is None
