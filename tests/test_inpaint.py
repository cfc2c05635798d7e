"""The InstantID inpainting pipeline on the tiny stack: mask locality (plain SDXL base), the inpainting UNet's
extra channels (SDXL inpainting base), reduction to image-to-image, and its variants sharing a loaded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _demo import FACE, demo_model
from PIL import Image

from instantid.errors import InvalidInputError
from instantid.inpaint import StableDiffusionXLInstantIDInpaintPipeline, img2img_pipeline, inpaint_pipeline
from instantid.keypoints import draw_kps

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
    from instantid.errors import IncompatibleWeightsError
    from instantid.face_detail import refine_faces
    from instantid.pipeline import StableDiffusionXLInstantIDPipeline

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
    assert steps == []  # refused before the first step
    inputs = _inputs()
    images, _, _ = model.run_pipeline(inpaint_pipeline(pipe), settings, image=inputs["image"],
                                      mask_image=inputs["mask_image"], control_image=inputs["control_image"],
                                      image_embeds=_embedding(1), strength=0.9)
    assert images[0].size == (SIZE, SIZE) and steps  # the inpainting pipeline runs it
