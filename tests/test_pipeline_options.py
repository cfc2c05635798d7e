"""Published options the fixtures do not cover, checked through properties that fail if they are wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from instantid import StableDiffusionXLInstantIDImg2ImgPipeline, StableDiffusionXLInstantIDPipeline, draw_kps
from instantid.core.attention import face_processors
from instantid.errors import EmbeddingSpaceError, InvalidInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
KPS = [[44, 40], [84, 42], [64, 62], [48, 84], [80, 84]]


@pytest.fixture(scope="module")
def embedding(tiny_fixture_dir):
    return np.load(tiny_fixture_dir / "face_embedding.npy")


def kps_image(width=128, height=128, kps=KPS):
    return draw_kps(Image.new("RGB", (width, height)), kps)


def run(pipe, emb, seed=0, **kwargs):
    defaults = dict(
        prompt="a portrait", num_inference_steps=3, guidance_scale=5.0, controlnet_conditioning_scale=0.8,
        ip_adapter_scale=0.8, output_type="latent",
    )
    defaults.update(kwargs)
    defaults.setdefault("image", kps_image())
    if "generator" not in defaults:
        defaults["generator"] = torch.Generator("cpu").manual_seed(seed)
    return pipe(image_embeds=emb, **defaults).images


def gens(*seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def test_non_square_output_takes_keypoint_image_size(fixture_pipe, embedding):
    latents = run(fixture_pipe, embedding, image=kps_image(192, 128))
    assert latents.shape == (1, 4, 16, 24)
    tall = kps_image(96, 160, [[30, 60], [66, 60], [48, 80], [34, 100], [62, 100]])
    images = run(fixture_pipe, embedding, image=tall, output_type="pil")
    assert images[0].size == (96, 160)


def test_num_images_per_prompt_matches_single_runs(fixture_pipe, embedding):
    """Each image of a batch equals the run made alone with its own generator: the face tokens and the
    guidance halves line up with the latents for every batch element."""
    batch = run(fixture_pipe, embedding, num_images_per_prompt=2, generator=gens(1, 2))
    assert batch.shape[0] == 2
    for i, seed in enumerate((1, 2)):
        alone = run(fixture_pipe, embedding, generator=gens(seed))
        assert (batch[i] - alone[0]).abs().max() < 1e-4


def test_several_prompts_in_one_call(fixture_pipe, embedding):
    prompts = ["a portrait", "a person on the moon"]
    both = run(fixture_pipe, embedding, prompt=prompts, negative_prompt="blurry", num_images_per_prompt=2,
               generator=gens(1, 2, 3, 4))
    assert both.shape[0] == 4
    second_alone = run(fixture_pipe, embedding, prompt=prompts[1], negative_prompt="blurry", generator=gens(3))
    assert (both[2] - second_alone[0]).abs().max() < 1e-4
    assert (both[0] - both[2]).abs().max() > 1e-3  # the prompt still steers


def test_guidance_window_switches_identitynet_per_step(fixture_pipe, embedding):
    calls = []
    hook = fixture_pipe.controlnet.register_forward_hook(lambda *_: calls.append(1))
    try:
        run(fixture_pipe, embedding, num_inference_steps=4, control_guidance_end=0.5)
        assert len(calls) == 2  # steps 0 and 1 of 4
        calls.clear()
        run(fixture_pipe, embedding, num_inference_steps=4, control_guidance_start=0.5)
        assert len(calls) == 2  # steps 2 and 3
    finally:
        hook.remove()
    full = run(fixture_pipe, embedding, num_inference_steps=4)
    windowed = run(fixture_pipe, embedding, num_inference_steps=4, control_guidance_end=0.5)
    assert (full - windowed).abs().max() > 1e-3


def test_zero_strengths_reduce_to_plain_sdxl(fixture_pipe, embedding, tiny_fixture_dir):
    """IdentityNet at 0 and adapter at 0: exactly diffusers' SDXL text-to-image on the same base."""
    ours = run(fixture_pipe, embedding, controlnet_conditioning_scale=0.0, ip_adapter_scale=0.0)
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_fixture_dir / "base")
    plain.set_progress_bar_config(disable=True)
    reference = plain(
        prompt="a portrait", num_inference_steps=3, guidance_scale=5.0, height=128, width=128,
        generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
    ).images
    assert (ours - reference).abs().max() < 1e-5


def test_white_mask_is_no_mask_and_black_mask_removes_identity(fixture_pipe, embedding):
    unmasked = run(fixture_pipe, embedding)
    white = run(fixture_pipe, embedding, control_mask=Image.new("RGB", (128, 128), "white"))
    assert (white - unmasked).abs().max() < 1e-5
    black = run(fixture_pipe, embedding, control_mask=Image.new("RGB", (128, 128), "black"))
    no_identity = run(fixture_pipe, embedding, controlnet_conditioning_scale=0.0, ip_adapter_scale=0.0)
    assert (black - no_identity).abs().max() < 1e-5


def test_face_mask_is_local_and_never_leaks_into_later_calls(fixture_pipe, embedding):
    mask = np.zeros((128, 192, 3), np.uint8)
    mask[30:100, 50:140] = 255
    image = kps_image(192, 128)
    projection = fixture_pipe.unet.encoder_hid_proj
    state = [dict(vars(p)) for p in face_processors(fixture_pipe.unet)]
    unmasked = run(fixture_pipe, embedding, image=image)
    masked = run(fixture_pipe, embedding, image=image, control_mask=Image.fromarray(mask))
    assert (masked - unmasked).abs().max() > 1e-3
    # The call's mask and tokens travelled with the call: no processor attribute and no UNet module changed.
    assert fixture_pipe.unet.encoder_hid_proj is projection
    for before, processor in zip(state, face_processors(fixture_pipe.unet), strict=True):
        assert before.keys() == vars(processor).keys()
        assert all(vars(processor)[k] is v for k, v in before.items())
    again = run(fixture_pipe, embedding, image=image)
    assert (again - unmasked).abs().max() == 0
    # A later call of another size after a masked call still works (the published global mask crashed).
    assert run(fixture_pipe, embedding, image=kps_image(128, 64, [[44, 20], [84, 20], [64, 32], [48, 48], [80, 48]])
               ).shape == (1, 4, 8, 16)


def test_resampler_and_face_projections_run_once_per_call(fixture_pipe, embedding):
    """Face tokens and each layer's face keys/values are computed once per call, not once per step."""
    resampler = fixture_pipe.unet.encoder_hid_proj.image_projection_layers[0]
    processors = face_processors(fixture_pipe.unet)
    counts = {"resampler": 0, "k": 0}

    def count(name):
        def hook(*_):
            counts[name] += 1

        return hook

    hooks = [resampler.register_forward_hook(count("resampler"))]
    hooks += [p.to_k_ip[0].register_forward_hook(count("k")) for p in processors]
    try:
        run(fixture_pipe, embedding, num_inference_steps=3)
    finally:
        for h in hooks:
            h.remove()
    assert counts == {"resampler": 1, "k": len(processors)}


def test_several_references_are_averaged_not_stacked(fixture_pipe, embedding):
    single = run(fixture_pipe, embedding)
    twice = run(fixture_pipe, np.stack([embedding, embedding]))
    assert (single - twice).abs().max() < 1e-5
    other = -embedding
    weighted = run(fixture_pipe, np.stack([embedding, other]), image_embeds_weights=[1.0, 0.0])
    assert (single - weighted).abs().max() < 1e-5
    mean = run(fixture_pipe, np.stack([embedding, embedding * 0.5]))
    assert (run(fixture_pipe, embedding * 0.75) - mean).abs().max() < 1e-5


def test_per_call_adapter_scale_is_honoured_for_that_call_only(fixture_pipe, embedding):
    low = run(fixture_pipe, embedding, ip_adapter_scale=0.2)
    high = run(fixture_pipe, embedding, ip_adapter_scale=1.0)
    assert (low - high).abs().max() > 1e-3
    assert (run(fixture_pipe, embedding, ip_adapter_scale=0.2) - low).abs().max() == 0
    # Without a per-call value the pipe's own scale applies (set_ip_adapter_scale), untouched by earlier calls.
    fixture_pipe.set_ip_adapter_scale(1.0)
    try:
        assert (run(fixture_pipe, embedding, ip_adapter_scale=None) - high).abs().max() == 0
    finally:
        fixture_pipe.set_ip_adapter_scale(0.5)


def test_guess_mode_is_honoured(fixture_pipe, embedding):
    """Guess mode under guidance: IdentityNet sees only the conditional half, and the result changes."""
    batches = []
    hook = fixture_pipe.controlnet.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    try:
        guessed = run(fixture_pipe, embedding, guess_mode=True, num_images_per_prompt=2, generator=gens(1, 2))
        assert batches and set(batches) == {2}  # two images, conditional half only
        batches.clear()
        plain = run(fixture_pipe, embedding, num_images_per_prompt=2, generator=gens(1, 2))
        assert set(batches) == {4}
    finally:
        hook.remove()
    assert guessed.shape == (2, 4, 16, 16) and torch.isfinite(guessed).all()
    assert (guessed - plain).abs().max() > 1e-3
    # Without guidance guess mode still reaches IdentityNet (its residuals are scaled per block).
    assert (run(fixture_pipe, embedding, guidance_scale=1.0, guess_mode=True)
            - run(fixture_pipe, embedding, guidance_scale=1.0)).abs().max() > 1e-3


def test_precomputed_prompt_embeddings_equal_the_prompt_text(fixture_pipe, embedding):
    """compel / long-prompt users pass embeddings from encode_prompt: the same latents as the text."""
    text = run(fixture_pipe, embedding, prompt="a portrait", negative_prompt="blurry")
    pe, npe, ppe, nppe = fixture_pipe.encode_prompt(
        "a portrait", device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    given = run(fixture_pipe, embedding, prompt=None, prompt_embeds=pe, negative_prompt_embeds=npe,
                pooled_prompt_embeds=ppe, negative_pooled_prompt_embeds=nppe)
    assert (given - text).abs().max() == 0
    other = fixture_pipe.encode_prompt("a dog", device=torch.device("cpu"), do_classifier_free_guidance=True,
                                       negative_prompt="blurry")
    assert (run(fixture_pipe, embedding, prompt=None, prompt_embeds=other[0], negative_prompt_embeds=other[1],
                pooled_prompt_embeds=other[2], negative_pooled_prompt_embeds=other[3]) - text).abs().max() > 1e-3
    with pytest.raises(InvalidInputError, match="pooled_prompt_embeds"):
        run(fixture_pipe, embedding, prompt=None, prompt_embeds=pe)
    with pytest.raises(InvalidInputError, match="not both"):
        run(fixture_pipe, embedding, prompt="a portrait", prompt_embeds=pe, pooled_prompt_embeds=ppe)


SIZES = dict(original_size=(64, 96), crops_coords_top_left=(8, 16), target_size=(128, 128),
             negative_original_size=(32, 32), negative_crops_coords_top_left=(0, 8), negative_target_size=(96, 96))


def test_size_micro_conditioning_follows_diffusers(fixture_pipe, embedding, tiny_fixture_dir):
    """original/crop/target sizes (and their negatives) mean what they mean in diffusers' SDXL pipeline."""
    default = run(fixture_pipe, embedding)
    sized = run(fixture_pipe, embedding, **SIZES)
    assert (sized - default).abs().max() > 1e-3
    explicit = run(fixture_pipe, embedding, original_size=(128, 128), crops_coords_top_left=(0, 0),
                   target_size=(128, 128))
    assert (explicit - default).abs().max() == 0
    # With IdentityNet and the adapter at zero this is diffusers' SDXL, which must agree argument by argument.
    ours = run(fixture_pipe, embedding, controlnet_conditioning_scale=0.0, ip_adapter_scale=0.0, **SIZES)
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_fixture_dir / "base")
    plain.set_progress_bar_config(disable=True)
    reference = plain(prompt="a portrait", num_inference_steps=3, guidance_scale=5.0, height=128, width=128,
                      generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **SIZES).images
    assert (ours - reference).abs().max() < 1e-5


def test_callbacks_get_the_named_tensors_and_can_replace_them(fixture_pipe, embedding):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append({k: None if v is None else tuple(v.shape) for k, v in tensors.items()})
        return {"latents": tensors["latents"] * 0} if i == 2 else {}

    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "negative_prompt_embeds", "image"]
    latents = run(fixture_pipe, embedding, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names)
    assert len(seen) == 3 and list(seen[0]) == names
    assert seen[0]["prompt_embeds"][0] == 2 and seen[0]["negative_prompt_embeds"][0] == 1  # guidance halves
    assert seen[0]["add_time_ids"] == (2, 6) and seen[0]["image"] == (2, 3, 128, 128)
    assert (latents == 0).all()  # what the callback returned is what the pipeline kept
    with pytest.raises(InvalidInputError, match="not available"):
        run(fixture_pipe, embedding, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["nope"])


def test_legacy_callback_and_unknown_keyword_arguments(fixture_pipe, embedding):
    steps = []
    with pytest.warns(FutureWarning, match="callback_on_step_end"):
        run(fixture_pipe, embedding, callback=lambda i, t, latents: steps.append(i), callback_steps=2)
    assert steps == [0, 2]
    with pytest.warns(UserWarning, match=r"ignores the arguments \['denoising_end'\]"):
        run(fixture_pipe, embedding, denoising_end=0.5)


def test_bad_arguments_raise_precise_errors(fixture_pipe, embedding):
    with pytest.raises(EmbeddingSpaceError, match="128 values but the face adapter expects 512"):
        run(fixture_pipe, np.zeros(128, np.float32))
    with pytest.raises(InvalidInputError, match="image_embeds must have shape"):
        run(fixture_pipe, np.zeros((2, 2, 512), np.float32))
    with pytest.raises(InvalidInputError, match="control_guidance_start/end"):
        run(fixture_pipe, embedding, control_guidance_start=0.8, control_guidance_end=0.2)
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        run(fixture_pipe, embedding, height=100)
    with pytest.raises(InvalidInputError, match="NaN"):
        run(fixture_pipe, np.full(512, np.nan, np.float32))
    with pytest.raises(InvalidInputError, match="keypoint picture"):
        fixture_pipe(prompt="x", image_embeds=embedding, image=None)


@pytest.fixture(scope="module")
def multi_pipe(tiny_fixture_dir):
    identitynet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    torch.manual_seed(1)
    pose = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    with torch.no_grad():
        for p in pose.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
        tiny_fixture_dir / "base", controlnet=MultiControlNetModel([identitynet, pose])
    )
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_extra_controlnets_get_text_and_identitynet_gets_face_tokens(multi_pipe, fixture_pipe, embedding):
    seen: dict[int, int] = {}

    def record(index):
        def hook(module, args, kwargs, output):
            seen.setdefault(index, kwargs["encoder_hidden_states"].shape[1])

        return hook

    hooks = [
        net.register_forward_hook(record(i), with_kwargs=True) for i, net in enumerate(multi_pipe.controlnet.nets)
    ]
    try:
        pose_image = kps_image()
        both = run(multi_pipe, embedding, image=[kps_image(), pose_image], controlnet_conditioning_scale=[0.8, 0.5])
    finally:
        for h in hooks:
            h.remove()
    assert seen[0] == 16  # face tokens
    assert seen[1] == 77  # text tokens
    only_identitynet = run(multi_pipe, embedding, image=[kps_image(), pose_image],
                           controlnet_conditioning_scale=[0.8, 0.0])
    single = run(fixture_pipe, embedding)
    assert (only_identitynet - single).abs().max() < 1e-5
    assert (both - single).abs().max() > 1e-3
    with pytest.raises(InvalidInputError, match="one control image per ControlNet"):
        run(multi_pipe, embedding, image=kps_image())


def test_scalar_guidance_start_broadcasts_to_every_controlnet(multi_pipe, embedding):
    """start=0.0 with end=[1.0, 0.75] means [0.0, 0.0], as in diffusers (issue 10 item 23)."""
    images = [kps_image(), kps_image()]
    kwargs = dict(image=images, controlnet_conditioning_scale=[0.8, 0.5], num_inference_steps=4)
    calls = []
    hook = multi_pipe.controlnet.nets[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        broadcast = run(multi_pipe, embedding, control_guidance_start=0.0, control_guidance_end=[1.0, 0.75], **kwargs)
    finally:
        hook.remove()
    assert len(calls) == 3  # the second net stops after 3 of 4 steps
    listed = run(multi_pipe, embedding, control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 0.75], **kwargs)
    assert (broadcast - listed).abs().max() == 0
    assert (run(multi_pipe, embedding, control_guidance_end=[0.5, 1.0], control_guidance_start=0.0, **kwargs)
            - broadcast).abs().max() > 1e-3
    with pytest.raises(InvalidInputError, match="one control_guidance_start/end per ControlNet"):
        run(multi_pipe, embedding, control_guidance_start=0.0, control_guidance_end=[1.0, 0.5, 0.5], **kwargs)
    with pytest.raises(InvalidInputError, match="one controlnet_conditioning_scale per ControlNet"):
        run(multi_pipe, embedding, image=images, controlnet_conditioning_scale=[0.8])


def test_img2img_honours_strength_and_adapter_scale(tiny_fixture_dir, embedding):
    pipe = StableDiffusionXLInstantIDImg2ImgPipeline.from_pretrained(
        tiny_fixture_dir / "base", controlnet=ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    )
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))

    def img2img(**kw):
        args = dict(prompt="a portrait", image=init, control_image=kps_image(), image_embeds=embedding, strength=0.5,
                    num_inference_steps=4, output_type="latent", ip_adapter_scale=0.8)
        args.update(kw)
        return pipe(generator=torch.Generator("cpu").manual_seed(0), **args).images

    base = img2img()
    assert base.shape == (1, 4, 16, 16)
    assert (img2img(ip_adapter_scale=0.1) - base).abs().max() > 1e-3  # the published img2img ignored it
    assert (img2img(strength=0.9) - base).abs().max() > 1e-3
    pe, npe, ppe, nppe = pipe.encode_prompt("a portrait", device=torch.device("cpu"), do_classifier_free_guidance=True)
    embedded = img2img(prompt=None, prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                       negative_pooled_prompt_embeds=nppe)
    assert (embedded - base).abs().max() == 0
    assert (img2img(original_size=(64, 64), negative_original_size=(32, 32)) - base).abs().max() > 1e-3
    with pytest.raises(InvalidInputError, match="strength"):
        img2img(strength=0.0)


def test_attention_switches_keep_the_identity_branch(tiny_fixture_dir, embedding):
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
        tiny_fixture_dir / "base", controlnet=ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    )
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    before = run(pipe, embedding)
    count = len(face_processors(pipe.unet))
    pipe.enable_attention_slicing(1)
    assert len(face_processors(pipe.unet)) == count
    assert (run(pipe, embedding) - before).abs().max() < 1e-4
    pipe.disable_attention_slicing()
    assert len(face_processors(pipe.unet)) == count


def test_resampler_is_part_of_the_unet_for_offload_and_to(fixture_pipe):
    """CPU offload and .to() move the UNet's submodules; the published code kept the Resampler outside."""
    resampler = fixture_pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert any(m is resampler for m in fixture_pipe.unet.modules())


def test_each_pipeline_takes_diffusers_arguments_in_diffusers_order():
    """The arguments are declared once (CallRequest); each pipeline's signature is derived from it and keeps the
    order of the diffusers pipeline it is a drop-in for, so positional calls mean the same; its own come last."""
    import inspect

    import diffusers

    from instantid.pipelines.inpaint import StableDiffusionXLInstantIDInpaintPipeline
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDImg2ImgPipeline, StableDiffusionXLInstantIDPipeline

    pairs = ((StableDiffusionXLInstantIDPipeline, diffusers.StableDiffusionXLControlNetPipeline),
             (StableDiffusionXLInstantIDImg2ImgPipeline, diffusers.StableDiffusionXLControlNetImg2ImgPipeline),
             (StableDiffusionXLInstantIDInpaintPipeline, diffusers.StableDiffusionXLControlNetInpaintPipeline))
    for ours, theirs in pairs:
        our = inspect.signature(ours.__call__).parameters
        their = inspect.signature(theirs.__call__).parameters
        shared = [name for name in their if name in our and name != "kwargs"]
        assert [name for name in our if name in their and name != "kwargs"] == shared, ours.__name__
        # what diffusers takes and these do not: CLIP-image IP-Adapters (the face adapter takes embeddings),
        # custom schedules and refiner hand-over (denoising_start/end)
        assert set(their) - set(our) <= {"ip_adapter_image", "ip_adapter_image_embeds", "denoising_start",
                                         "denoising_end", "guidance_rescale", "timesteps", "sigmas"}, ours.__name__
        for name in shared:
            if name in ("controlnet_conditioning_scale", "strength", "guidance_scale", "image", "control_image"):
                continue  # the published InstantID demo's defaults, not diffusers'
            ours_default, theirs_default = our[name].default, their[name].default
            if isinstance(theirs_default, list):  # a tuple here: a default is never a shared mutable list
                ours_default = list(ours_default)
            assert ours_default == theirs_default, (ours.__name__, name)
    text_to_image = list(inspect.signature(StableDiffusionXLInstantIDPipeline.__call__).parameters)
    assert text_to_image[-8:] == ["image_embeds_weights", "ip_adapter_scale", "control_mask", "identities",
                                  "controlnet_cache_interval", "style_image", "style_scale", "kwargs"]
    image_to_image = inspect.signature(StableDiffusionXLInstantIDImg2ImgPipeline.__call__).parameters
    assert image_to_image["controlnet_conditioning_scale"].default == 0.8
    assert inspect.signature(StableDiffusionXLInstantIDPipeline.__call__).parameters[
        "controlnet_conditioning_scale"].default == 1.0


def test_positional_arguments_bind_as_in_the_published_pipeline(fixture_pipe, embedding):
    """``pipe(prompt, prompt_2, image, height, width, steps, guidance, ...)`` positionally: each value lands where
    the published pipeline puts it (a wrong order would run with the steps as the height, or fail)."""
    by_name = run(fixture_pipe, embedding, num_inference_steps=2, guidance_scale=3.0, height=64, width=96,
                  negative_prompt="blurry")
    positional = fixture_pipe("a portrait", None, kps_image(), 64, 96, 2, 3.0, "blurry", None, 1, 0.0,
                              torch.Generator("cpu").manual_seed(0), image_embeds=embedding, output_type="latent",
                              controlnet_conditioning_scale=0.8, ip_adapter_scale=0.8).images
    assert positional.shape == (1, 4, 8, 12)
    assert torch.equal(by_name, positional)


def test_cross_attention_kwargs_scale_a_loaded_lora(fresh_fixture_pipe, embedding):
    """``cross_attention_kwargs={"scale": s}`` reaches the UNet as in diffusers: at 0 a loaded LoRA is off (the
    run equals the one before it was loaded), at 1 it is on."""
    from instantid.speed.presets import random_lora_state_dict

    pipe = fresh_fixture_pipe
    before = run(pipe, embedding, num_inference_steps=2)
    pipe.load_lora_weights(random_lora_state_dict(pipe.unet, std=0.2), adapter_name="style")
    off = run(pipe, embedding, num_inference_steps=2, cross_attention_kwargs={"scale": 0.0})
    on = run(pipe, embedding, num_inference_steps=2, cross_attention_kwargs={"scale": 1.0})
    assert torch.allclose(off, before, atol=1e-5)
    assert (on - before).abs().max() > 1e-3


def test_a_guidance_embedding_unet_gets_its_timestep_cond(fresh_fixture_pipe, embedding):
    """A UNet with a guidance embedding (``time_cond_proj_dim``, LCM-distilled models) gets the embedding of the
    guidance scale every step, as in diffusers: zeroing its projection changes the latents."""
    unet = fresh_fixture_pipe.unet  # what from_config(time_cond_proj_dim=8) builds, on the loaded UNet
    # register_to_config rebuilds the config from its keys, and the face adapter's "ip_image_proj" is no key.
    unet.register_to_config(time_cond_proj_dim=8, encoder_hid_dim_type=unet.config.encoder_hid_dim_type)
    torch.manual_seed(0)
    unet.time_embedding.cond_proj = torch.nn.Linear(8, unet.time_embedding.linear_1.in_features, bias=False)
    pipe = fresh_fixture_pipe
    guided = run(pipe, embedding, num_inference_steps=2, guidance_scale=1.0)
    torch.nn.init.zeros_(unet.time_embedding.cond_proj.weight)
    unguided = run(pipe, embedding, num_inference_steps=2, guidance_scale=1.0)
    assert (guided - unguided).abs().max() > 1e-4
