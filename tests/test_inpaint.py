"""The InstantID inpainting pipeline on the tiny stack: mask locality (plain SDXL base), the inpainting UNet's
extra channels (SDXL inpainting base), reduction to image-to-image, and its variants sharing a loaded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _demo import FACE, demo_model
from PIL import Image

from instantid.core.keypoints import draw_kps
from instantid.errors import InvalidInputError
from instantid.pipelines.inpaint import StableDiffusionXLInstantIDInpaintPipeline, img2img_pipeline, inpaint_pipeline

SIZE = 64
KPS = np.array([[22, 24], [42, 24], [32, 34], [24, 46], [40, 46]], dtype=np.float64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.getbasetemp() / "demo-apps"
    demo_model(path)
    return path


@pytest.fixture(scope="module")
def app(folder):
    model = demo_model(folder)
    model.pipe.set_progress_bar_config(disable=True)
    return model


def _inputs(seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    picture = Image.fromarray(rng.randint(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255  # latent cells 2..5 of 8
    return {
        "prompt": "a portrait", "image": picture, "mask_image": Image.fromarray(mask),
        "control_image": draw_kps(Image.new("RGB", (SIZE, SIZE)), KPS), "num_inference_steps": 4,
    }


def _embedding(seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randn(128).astype(np.float32)


def _run(pipe, seed: int = 0, **changes) -> torch.Tensor:
    arguments = {**_inputs(), "image_embeds": _embedding(1), "strength": 0.9, "output_type": "latent", **changes}
    return pipe(generator=torch.Generator().manual_seed(seed), **arguments).images


def test_plain_base_repaints_only_the_mask(app) -> None:
    pipe = inpaint_pipeline(app.pipe)
    assert pipe.unet is app.pipe.unet and pipe.adapter_spec is not None  # shares the loaded model
    a = _run(pipe, image_embeds=_embedding(1))
    b = _run(pipe, image_embeds=_embedding(2))
    inside = torch.zeros(a.shape[-2:], dtype=torch.bool)
    inside[2:6, 2:6] = True
    # Another identity changes the masked latents and leaves every other latent exactly as it was.
    assert torch.equal(a[..., ~inside], b[..., ~inside])
    assert (a[..., inside] - b[..., inside]).abs().max() > 1e-3
    # At full strength too (the start is pure noise, the original comes back through the blend).
    c = _run(pipe, strength=1.0, image_embeds=_embedding(1))
    d = _run(pipe, strength=1.0, image_embeds=_embedding(2))
    assert torch.equal(c[..., ~inside], d[..., ~inside]) and not torch.equal(c, d)


def test_a_full_mask_is_exactly_image_to_image(app) -> None:
    inputs = _inputs()
    full = Image.new("L", (SIZE, SIZE), 255)
    inpainted = _run(inpaint_pipeline(app.pipe), mask_image=full, strength=0.75)
    other = {k: v for k, v in inputs.items() if k != "mask_image"}
    img2img = img2img_pipeline(app.pipe)(
        **other, image_embeds=_embedding(1), strength=0.75, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert torch.allclose(inpainted, img2img, atol=1e-5, rtol=0)


def test_inpainting_base_reads_mask_and_masked_image_identitynet_the_latents(app, folder) -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**app.pipe.unet.config, "in_channels": 9, "encoder_hid_dim_type": None,
                                             "encoder_hid_dim": None})
    components = {**app.pipe.components, "unet": unet}
    pipe = StableDiffusionXLInstantIDInpaintPipeline(**{k: v for k, v in components.items() if v is not None})
    pipe.load_ip_adapter_instantid(folder / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    seen: dict[str, list[int]] = {"unet": [], "identitynet": []}
    hooks = [
        pipe.unet.conv_in.register_forward_hook(lambda m, a, o: seen["unet"].append(a[0].shape[1])),
        pipe.controlnet.conv_in.register_forward_hook(lambda m, a, o: seen["identitynet"].append(a[0].shape[1])),
    ]
    try:
        a = _run(pipe)
        other_mask = np.zeros((SIZE, SIZE), np.uint8)
        other_mask[8:24, 8:56] = 255
        b = _run(pipe, mask_image=Image.fromarray(other_mask))
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen["unet"]) == {9} and set(seen["identitynet"]) == {4}
    assert not torch.allclose(a, b)  # the UNet reads the mask
    # The extra channels are gone after the call: the UNet is left as it was.
    assert not pipe.unet._forward_pre_hooks


def test_inpainting_errors_are_one_line(app) -> None:
    pipe = inpaint_pipeline(app.pipe)
    with pytest.raises(InvalidInputError, match="mask_image"):
        _run(pipe, mask_image=None)
    with pytest.raises(InvalidInputError, match="strength must be in"):
        _run(pipe, strength=0.0)
    with pytest.raises(InvalidInputError, match="leaves no denoising step"):
        _run(pipe, strength=0.1, num_inference_steps=2)


def test_an_inpainting_base_refuses_text_to_image_in_one_line(app, folder) -> None:
    """A 9-channel base used for generate or face detail: one typed line naming swap, before any denoising;
    the same model still inpaints."""
    from diffusers import UNet2DConditionModel

    from instantid import GenerationSettings, InstantID
    from instantid.api.face_detail import refine_faces
    from instantid.errors import IncompatibleWeightsError
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**app.pipe.unet.config, "in_channels": 9, "encoder_hid_dim_type": None,
                                             "encoder_hid_dim": None})
    components = {**app.pipe.components, "unet": unet}
    pipe = StableDiffusionXLInstantIDPipeline(**{k: v for k, v in components.items() if v is not None})
    pipe.load_ip_adapter_instantid(folder / "ip-adapter.bin")
    pipe.set_progress_bar_config(disable=True)
    model = InstantID(pipe, app.analyzer, app.refs, demo=True, max_side=64, min_side=64)
    identity = app.prepare_identity(FACE)
    steps: list[int] = []
    for net in (unet, pipe.controlnet):  # IdentityNet runs first in a step
        net.register_forward_pre_hook(lambda *a: steps.append(1))
    settings = GenerationSettings(steps=2, seed=1, width=SIZE, height=SIZE)
    with pytest.raises(IncompatibleWeightsError, match=r"inpainting model .*cannot make a picture from text.*swap"):
        model.generate(identity, settings)
    with pytest.raises(IncompatibleWeightsError, match=r"cannot redraw a whole picture \(face detail\)"):
        refine_faces(model, identity, [Image.open(FACE).convert("RGB")], settings, [1])
    kps = draw_kps(Image.new("RGB", (SIZE, SIZE)), KPS)
    with pytest.raises(IncompatibleWeightsError, match=r"^the UNet is an SDXL inpainting model .*Inpaint"):
        pipe("a portrait", image=kps, image_embeds=_embedding(1), num_inference_steps=2)  # the drop-in, directly
    assert steps == []  # refused before the first step
    inputs = _inputs()
    images, _, _ = model.run_pipeline(inpaint_pipeline(pipe), settings, image=inputs["image"],
                                      mask_image=inputs["mask_image"], control_image=inputs["control_image"],
                                      image_embeds=_embedding(1), strength=0.9)
    assert images[0].size == (SIZE, SIZE) and steps  # the inpainting pipeline runs it


def test_padding_mask_crop_repaints_a_box_at_model_size_and_keeps_the_rest(app) -> None:
    """diffusers' padding_mask_crop: a box around the mask is cut, run at the asked size, pasted back."""
    pipe = inpaint_pipeline(app.pipe)
    big = 2 * SIZE
    picture = np.random.RandomState(3).randint(0, 255, (big, big, 3), dtype=np.uint8)
    mask = np.zeros((big, big), np.uint8)
    mask[72:88, 80:104] = 255  # box with 8 px padding, widened to square: x 72..112, y 60..100
    latent_sizes: list[tuple[int, ...]] = []

    def run(image: np.ndarray, **changes) -> Image.Image:
        arguments = {
            "prompt": "a portrait", "image": Image.fromarray(image), "mask_image": Image.fromarray(mask),
            "control_image": draw_kps(Image.new("RGB", (big, big)), KPS * 2), "image_embeds": _embedding(1),
            "strength": 0.9, "num_inference_steps": 3, "height": SIZE, "width": SIZE, "padding_mask_crop": 8,
            "generator": torch.Generator().manual_seed(0),
            "callback_on_step_end": lambda p, i, t, d: latent_sizes.append(tuple(d["latents"].shape)) or {},
            **changes,
        }
        return pipe(**arguments).images[0]

    out = run(picture)
    keep = mask == 0
    assert out.size == (big, big)
    assert np.array_equal(np.asarray(out)[keep], picture[keep])  # outside the mask: exactly the input
    assert np.abs(np.asarray(out, float)[~keep] - picture[~keep]).mean() > 1  # inside: repainted
    assert set(latent_sizes) == {(1, 4, SIZE // 8, SIZE // 8)}  # the crop ran at the asked size
    # Only the box is read: a different picture outside it leaves the repainted pixels exactly as they were.
    elsewhere = picture.copy()
    elsewhere[:50] = 0
    elsewhere[:, :60] = 255
    assert np.array_equal(np.asarray(run(elsewhere))[~keep], np.asarray(out)[~keep])
    # Without the crop the whole picture is read (the check above can fail).
    whole = {"padding_mask_crop": None, "height": None, "width": None}  # at the keypoint picture's size
    assert not np.array_equal(np.asarray(run(elsewhere, **whole))[~keep], np.asarray(run(picture, **whole))[~keep])


def test_padding_mask_crop_errors_are_one_line(app) -> None:
    pipe = inpaint_pipeline(app.pipe)
    base = {**_inputs(), "image_embeds": _embedding(1), "padding_mask_crop": 4}
    with pytest.raises(InvalidInputError, match="whole number of pixels"):
        pipe(**{**base, "padding_mask_crop": -1})
    with pytest.raises(InvalidInputError, match="image and mask_image as PIL pictures"):
        pipe(**{**base, "image": torch.zeros(1, 3, SIZE, SIZE)})
    with pytest.raises(InvalidInputError, match="output_type 'latent' cannot be pasted back"):
        pipe(**{**base, "output_type": "latent"})
    with pytest.raises(InvalidInputError, match="control_image must be a PIL picture the size of image"):
        pipe(**{**base, "control_image": Image.new("RGB", (2 * SIZE, 2 * SIZE))})


def test_identitynet_cache_interval_reaches_the_inpainting_pipeline(app) -> None:
    """The lossy lever of instantid.core.denoise works for swaps too: IdentityNet runs every N-th step only."""
    pipe = inpaint_pipeline(app.pipe)
    calls: list[int] = []
    hook = pipe.controlnet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        _run(pipe, num_inference_steps=4, strength=1.0)
        every_step = len(calls)
        calls.clear()
        _run(pipe, num_inference_steps=4, strength=1.0, controlnet_cache_interval=2)
    finally:
        hook.remove()
    assert every_step == 4 and len(calls) == 2


@pytest.mark.parametrize("make", [img2img_pipeline, inpaint_pipeline])
def test_a_variant_is_made_without_diffusers_dtype_notes(fresh_fixture_pipe, make) -> None:
    """from_pipe casts the shared modules with .to(dtype), and diffusers then warns that modules 'should be kept
    in float32: []' (an empty list): noise for a Python API user, who sees no such line from the CLI."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    library = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root (caplog)
    library.addHandler(handler)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # as a Python API user has it
    try:
        make(fresh_fixture_pipe)
    finally:
        diffusers_logging.set_verbosity(level)
        library.removeHandler(handler)
    assert not [r for r in records if r.levelno >= logging.WARNING], records
