"""Ground truth from the published implementation: keypoint pictures and pipeline outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instantid import draw_kps

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


CASE_KEYS = (
    "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "controlnet_conditioning_scale",
    "ip_adapter_scale", "control_guidance_start", "control_guidance_end", "num_images_per_prompt",
)


def _run_case(pipe, root, case, output_type):
    kwargs = {k: case[k] for k in CASE_KEYS if k in case}
    generator = torch.Generator("cpu").manual_seed(case["seed"])
    return pipe(
        image_embeds=np.load(root / "face_embedding.npy"), image=Image.open(root / case["kps_image"]),
        generator=generator, output_type=output_type, **kwargs,
    ).images


@pytest.mark.parametrize("case_name", ["square", "no_cfg"])
def test_pipeline_reproduces_published_latents_and_images(fixture_pipe, tiny_fixture_dir, case_name):
    cases = json.loads((tiny_fixture_dir / "cases.json").read_text())["cases"]
    case = cases[case_name]
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
    kwargs = {k: case[k] for k in CASE_KEYS if k in case}
    latents = fixture_pipe(
        image_embeds=other, image=Image.open(tiny_fixture_dir / case["kps_image"]),
        generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="latent", **kwargs,
    ).images.numpy()
    assert np.abs(latents - expected).max() > 0.1
