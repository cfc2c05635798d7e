"""Ground truth from the published implementation: keypoint pictures and pipeline outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantid import StableDiffusionXLInstantIDImg2ImgPipeline, draw_kps
from instantid.core.attention import face_processors

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _kps_cases(shared_dir):
    root = shared_dir / "fixtures" / "keypoints"
    return root, json.loads((root / "cases.json").read_text())


def test_draw_kps_reproduces_published_pictures_pixel_for_pixel(shared_dir):
    root, cases = _kps_cases(shared_dir)
    assert cases, "no keypoint cases"
    for name, case in cases.items():
        expected = np.array(Image.open(root / name).convert("RGB"))
        drawn = np.array(draw_kps(Image.new("RGB", (case["width"], case["height"])), case["kps"]))
        assert drawn.shape == expected.shape, name
        assert np.array_equal(drawn, expected), f"{name}: {(drawn != expected).any(-1).sum()} pixels differ"


def test_fixture_keypoint_images_match_draw_kps(tiny_fixture_dir):
    cases = json.loads((tiny_fixture_dir / "cases.json").read_text())["cases"]
    for case in cases.values():
        expected = np.array(Image.open(tiny_fixture_dir / case["kps_image"]).convert("RGB"))
        drawn = np.array(draw_kps(Image.new("RGB", tuple(case["size"])), case["kps"]))
        assert np.array_equal(drawn, expected)


def test_draw_kps_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        draw_kps(Image.new("RGB", (64, 64)), [[1, 2], [3, 4]])


# The shared file of published outputs: every case in it is run, so a case added there is tested here.
CASES_FILE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "instantid-tiny" / "cases.json"
CASE_NAMES = sorted(json.loads(CASES_FILE.read_text())["cases"]) if CASES_FILE.is_file() else []
# Fields passed to the pipeline as they are; the others are read below or describe the case.
CALL_FIELDS = (
    "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "controlnet_conditioning_scale",
    "control_guidance_start", "control_guidance_end", "num_images_per_prompt", "strength",
)
HANDLED_FIELDS = {
    "seed", "kps_image", "expected", "expected_latents", "ip_adapter_scale", "ip_scale_via", "control_mask",
    "pipeline", "init_image",
}
DESCRIPTIVE_FIELDS = {"size", "kps", "mask_ellipse", "published_pipeline", "note"}
DESCRIPTIVE_PREFIXES = ("latent_change_", "published_")


def _unknown_fields(case: dict) -> list[str]:
    known = set(CALL_FIELDS) | HANDLED_FIELDS | DESCRIPTIVE_FIELDS
    return [k for k in case if k not in known and not k.startswith(DESCRIPTIVE_PREFIXES)]


def _run_case(pipe, root, case, output_type, image_embeds=None):
    """One case exactly as the published code was called: pipeline kind, init image, mask, and how the
    adapter scale was set (per call, or once on the pipe with ``set_ip_adapter_scale``)."""
    kwargs = {k: case[k] for k in CALL_FIELDS if k in case}
    keypoints = Image.open(root / case["kps_image"])
    kind = case.get("pipeline", "txt2img")
    if kind == "img2img":
        pipe = StableDiffusionXLInstantIDImg2ImgPipeline.from_pipe(pipe)  # shares the UNet and its adapter
        pipe.set_progress_bar_config(disable=True)
        kwargs.update(image=Image.open(root / case["init_image"]), control_image=keypoints)
    elif kind == "txt2img":
        kwargs["image"] = keypoints
    else:
        raise AssertionError(f"cases.json names a pipeline this test does not know: {kind!r}")
    if "control_mask" in case:
        kwargs["control_mask"] = Image.open(root / case["control_mask"])
    via = case.get("ip_scale_via", "call")
    if via == "call":
        kwargs["ip_adapter_scale"] = case["ip_adapter_scale"]
    elif via != "set_ip_adapter_scale":
        raise AssertionError(f"cases.json sets the adapter scale in a way this test does not know: {via!r}")
    # Copies: diffusers' set_ip_adapter_scale writes into each processor's scale list in place, so keeping the
    # lists themselves would restore nothing and leave the shared pipe at this case's scale for later tests.
    previous = [list(p.scale) for p in face_processors(pipe.unet)]
    if via == "set_ip_adapter_scale":
        pipe.set_ip_adapter_scale(case["ip_adapter_scale"])
    try:
        return pipe(
            image_embeds=np.load(root / "face_embedding.npy") if image_embeds is None else image_embeds,
            generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type=output_type, **kwargs,
        ).images
    finally:
        for processor, scale in zip(face_processors(pipe.unet), previous, strict=True):
            processor.scale = scale


@pytest.mark.parametrize("case_name", CASE_NAMES or [pytest.param("none", marks=pytest.mark.skip("no cases.json"))])
def test_pipeline_reproduces_published_latents_and_images(fixture_pipe, tiny_fixture_dir, case_name):
    case = json.loads((tiny_fixture_dir / "cases.json").read_text())["cases"][case_name]
    assert not _unknown_fields(case), f"{case_name}: teach this test the fields {_unknown_fields(case)}"
    latents = _run_case(fixture_pipe, tiny_fixture_dir, case, "latent").numpy()
    expected = np.load(tiny_fixture_dir / case["expected_latents"])
    assert latents.shape == expected.shape
    assert np.abs(latents - expected).max() < 1e-4
    images = _run_case(fixture_pipe, tiny_fixture_dir, case, "np")
    expected_images = np.load(tiny_fixture_dir / case["expected"])
    assert images.shape == expected_images.shape
    assert np.abs(images - expected_images).max() < 1e-3


def test_identity_matters_at_fixture_scale(fixture_pipe, tiny_fixture_dir):
    """Another identity moves the latents by far more than the tolerance (cases.json says ~1.8)."""
    case = json.loads((tiny_fixture_dir / "cases.json").read_text())["cases"]["square"]
    expected = np.load(tiny_fixture_dir / case["expected_latents"])
    other = np.random.default_rng(0).normal(size=512).astype(np.float32) * 22 / np.sqrt(512)
    latents = _run_case(fixture_pipe, tiny_fixture_dir, case, "latent", image_embeds=other).numpy()
    assert np.abs(latents - expected).max() > 0.1
