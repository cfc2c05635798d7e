"""Any photo, any size: region masks land on every token grid the UNet makes, and every application gives a
picture of the right size (swap and face detail: the input's pixels outside their mask, bit for bit) or one
InvalidInputError line, over the whole range the settings allow.

Property-based (hypothesis, derandomised so CI is reproducible): sizes are multiples of 8 from 64 to 2048 on
each side with aspect ratios up to 1:10 and beyond, faces touching every edge, tiny and frame-filling, option
values at and between their bounds. The geometry checks run over the full range; end-to-end runs on the tiny
demo stack bound the pixel count (attention is quadratic in it) and cover the large sizes explicitly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid.api.face_detail import FaceDetailOptions, refine_faces
from instantid.api.identity import Identity
from instantid.api.regions import head_region, region_mask
from instantid.api.settings import GenerationSettings
from instantid.apps.swap import SwapOptions, swap_face
from instantid.core.attention import FaceAttnProcessor, grid_shape, mask_weights, region_weights, token_grids
from instantid.errors import InvalidInputError
from instantid.faces import Face
from instantid.pipelines.schedulers import steps_for_strength

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy/torch numeric warnings are defects here

GEOMETRY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
END_TO_END = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
sides = st.integers(8, 256).map(lambda n: n * 8)  # 64..2048, every multiple of 8
work_sides = st.integers(1, 256).map(lambda n: n * 8)  # swap / face-detail crops of thin photos go down to 8


def unet_grids(unet: torch.nn.Module, latent: tuple[int, int]) -> list[tuple[int, int]]:
    """The grids the UNet itself makes from a latent: its own down-samplers run on zeros."""
    h, w = latent
    grids = []
    for block in unet.down_blocks:
        grids.append((h, w))
        if block.downsamplers:
            conv = block.downsamplers[0].conv
            with torch.no_grad():
                h, w = conv(torch.zeros(1, conv.in_channels, h, w)).shape[-2:]
    return grids


def published_weights(mask: torch.Tensor, num_queries: int) -> torch.Tensor | None:
    """The published `_full` pipeline's resize: nearest, by the area ratio of picture and grid (None where it
    fails outright: a side scaled below one cell)."""
    h, w = mask.shape
    ratio = (h * w / num_queries) ** 0.5
    try:
        return F.interpolate(mask[None, None], scale_factor=1 / ratio, mode="nearest")
    except RuntimeError:
        return None


def box_mask(width: int, height: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    mask = torch.zeros(height, width)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1
    return mask


@st.composite
def boxes(draw, width: int, height: int) -> tuple[float, float, float, float]:
    """A face box anywhere in (and touching every edge of) a width x height picture, 2% to 100% of its side."""
    side = draw(st.floats(0.02, 1.0)) * min(width, height)
    bw, bh = max(side, 2.0), max(side * draw(st.floats(0.8, 1.3)), 2.0)
    x = draw(st.one_of(st.just(0.0), st.just(width - bw), st.floats(0, max(width - bw, 0))))
    y = draw(st.one_of(st.just(0.0), st.just(height - bh), st.floats(0, max(height - bh, 0))))
    return x, y, min(x + bw, width), min(y + bh, height)


def face_in(box: tuple[float, float, float, float], like: Identity) -> Face:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    kps = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]]) * (w, h) + (x1, y1)
    return Face(bbox=box, score=1.0, kps=kps.astype(np.float32), embedding=like.embedding, space=like.space)


# ---- the rule, over the whole range -----------------------------------------------------------------
@GEOMETRY
@given(width=work_sides, height=work_sides)
@example(width=24, height=256)  # a thin photo's face-detail crop: the area ratio rounds a side to 0
@example(width=1000, height=1024)  # the sizes the issue names
@example(width=200, height=136)
@example(width=264, height=1000)
@example(width=1280, height=136)
@example(width=2048, height=64)
def test_every_grid_the_unet_makes_takes_the_mask(demo_app, width: int, height: int) -> None:
    unet, factor = demo_app.pipe.unet, demo_app.pipe.vae_scale_factor
    latent = (height // factor, width // factor)
    grids = token_grids(latent, len(unet.config.block_out_channels))
    assert grids == unet_grids(unet, latent)
    mask = box_mask(width, height, (width * 0.3, height * 0.2, width * 0.7, height * 0.6))
    for rows, columns in grids:
        assert grid_shape((height, width), rows * columns) == (rows, columns)
        weights = region_weights(mask, (rows, columns), mask)
        assert weights.shape == (1, 1, rows * columns, 1)
        assert torch.equal(mask_weights(mask, rows * columns, mask), weights)
        published = published_weights(mask, rows * columns)
        # Where the published rule lands on the grid, its result is kept bit for bit.
        if published is not None and published.shape[-2:] == (rows, columns):
            assert torch.equal(weights, published.reshape(1, 1, -1, 1))


@GEOMETRY
@given(data=st.data(), width=work_sides, height=work_sides)
def test_the_weights_sit_where_the_mask_is(data, width: int, height: int) -> None:
    """Cells well inside the face box are 1 and cells well outside it are 0, at every grid: a transposed,
    shifted or wrongly sized grid fails this."""
    box = data.draw(boxes(width, height))
    mask = box_mask(width, height, box)
    for rows, columns in token_grids((height // 8, width // 8), 3):
        grid = region_weights(mask, (rows, columns), mask).reshape(rows, columns)
        cell_w, cell_h = width / columns, height / rows
        xs, ys = (np.arange(columns) + 0.5) * cell_w, (np.arange(rows) + 0.5) * cell_h
        x1, y1, x2, y2 = box
        inside = ((ys[:, None] > y1 + 1.5 * cell_h) & (ys[:, None] < y2 - 1.5 * cell_h)
                  & (xs > x1 + 1.5 * cell_w) & (xs < x2 - 1.5 * cell_w))
        outside = ((ys[:, None] < y1 - 1.5 * cell_h) | (ys[:, None] > y2 + 1.5 * cell_h)
                   | (xs < x1 - 1.5 * cell_w) | (xs > x2 + 1.5 * cell_w))
        assert bool((grid.numpy()[inside] == 1).all()) and bool((grid.numpy()[outside] == 0).all())


def test_a_mask_of_another_size_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="no attention grid of 100 tokens lies below a 64x64 picture"):
        grid_shape((64, 64), 100)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(steps=st.integers(1, 200), strength=st.floats(0.05, 1.0))
@example(steps=1, strength=0.85)
@example(steps=1, strength=0.05)
def test_strength_always_leaves_a_denoising_step(steps: int, strength: float) -> None:
    count = steps_for_strength(steps, strength)
    assert count >= steps and int(count * strength) >= 1
    assert count == steps or int((count - 1) * strength) < 1  # the smallest count that runs one


# ---- end to end on the tiny demo stack ---------------------------------------------------------------
@pytest.fixture
def grids_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every masked face layer call: its token count and whether the call's prepared weights covered it."""
    seen: list[tuple[int, bool]] = []
    original = FaceAttnProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if isinstance(encoder_hidden_states, tuple) and hasattr(encoder_hidden_states[1][0], "prepared"):
            prepared = encoder_hidden_states[1][0].prepared
            for weights in prepared.weights if prepared else ():
                if weights is not None:
                    seen.append((hidden_states.shape[1], hidden_states.shape[1] in weights))
        return original(self, attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(FaceAttnProcessor, "__call__", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1000, 1024), (200, 136), (520, 776), (264, 1000), (1280, 136), (1016, 64)])
def test_generate_at_the_sizes_users_type(demo_app, obama, grids_seen, size: tuple[int, int]) -> None:
    result = demo_app.generate(obama, GenerationSettings(prompt="a portrait", steps=1, seed=3, width=size[0],
                                                         height=size[1]))
    assert result.images[0].size == size and result.metadata["width"] == size[0]
    assert grids_seen and all(prepared for _, prepared in grids_seen)  # the loop never resized a mask itself


@pytest.mark.slow
@END_TO_END
@given(data=st.data(), width=sides, height=sides, pose=st.tuples(st.integers(16, 1500), st.integers(16, 1500)))
def test_generate_any_size_any_face_position(demo_app, obama, data, width: int, height: int, pose) -> None:
    if width * height > 200_000:  # attention is quadratic in pixels: keep the run short, the rule is tested above
        height = max(64, 200_000 // width // 8 * 8)
    face = face_in(data.draw(boxes(*pose)), obama)
    identity = Identity(embedding=obama.embedding, space=obama.space, pose_face=face, pose_size=pose,
                        references=obama.references, fusion=obama.fusion)
    sized = data.draw(st.booleans())
    options = GenerationSettings(prompt="x", steps=1, seed=1, width=width if sized else None,
                                 height=height if sized else None)
    result = demo_app.generate(identity, options)
    expected = (width, height) if sized else demo_app.output_size(identity, options)
    assert result.images[0].size == expected and expected[0] % 8 == 0 and expected[1] % 8 == 0


@st.composite
def photos(draw) -> Image.Image:
    """Noise photos from 16 px to 1200 px a side, aspect ratios up to 1:20."""
    width, height = draw(st.integers(16, 1200)), draw(st.integers(16, 1200))
    seed = draw(st.integers(0, 2**16))
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


resolutions = st.one_of(st.none(), st.integers(8, 40).map(lambda n: n * 8))  # the tiny model's 256 default too


@pytest.mark.slow
@END_TO_END
@given(data=st.data(), photo=photos(), margin=st.floats(0, 2), feather=st.floats(0, 1),
       strength=st.floats(0.05, 1), resolution=resolutions, steps=st.integers(1, 3))
@example(data=None, photo=Image.new("RGB", (256, 200)), margin=1.0, feather=0.5, strength=0.85, resolution=200,
         steps=2).via("the issue's tight headshot")
def test_swap_any_photo(demo_app, obama, data, photo, margin, feather, strength, resolution, steps) -> None:
    box = (0.0, 0.0, float(photo.width), float(photo.height)) if data is None else data.draw(boxes(*photo.size))
    options = SwapOptions(head_margin=margin, feather=feather, strength=strength, resolution=resolution)
    result = swap_face(demo_app, obama, photo, GenerationSettings(prompt="x", steps=steps, seed=2), options,
                       target=face_in(box, obama))
    info = result.metadata["swap"]
    assert result.images[0].size == photo.size and info["denoising_steps"] >= 1
    region = head_region(face_in(box, obama), photo.size, margin=margin, feather=feather,
                         resolution=resolution or demo_app.min_side)
    assert list(region.crop) == info["crop_box"] and [w % 8 for w in region.work_size] == [0, 0]
    covered = np.zeros((photo.height, photo.width), bool)
    x1, y1, x2, y2 = region.crop
    covered[y1:y2, x1:x2] = region_mask(region) > 0
    out, original = np.asarray(result.images[0]), np.asarray(photo)
    assert np.array_equal(out[~covered], original[~covered])


@pytest.mark.slow
@END_TO_END
@given(data=st.data(), photo=photos(), faces=st.integers(1, 3), margin=st.floats(0, 2), feather=st.floats(0, 1),
       context=st.floats(1, 3), strength=st.floats(0.05, 1), resolution=resolutions)
def test_face_detail_any_photo(demo_app, obama, data, photo, faces, margin, feather, context, strength,
                               resolution) -> None:
    found = [face_in(data.draw(boxes(*photo.size)), obama) for _ in range(faces)]
    options = FaceDetailOptions(margin=margin, feather=feather, context=context, strength=strength,
                                resolution=resolution, max_faces=faces)
    refined, info = refine_faces(demo_app, obama, [photo], GenerationSettings(prompt="x", steps=1), [4], options,
                                 faces=[found])
    assert refined[0].size == photo.size and info["denoising_steps"] >= 1
    covered = np.zeros((photo.height, photo.width), bool)
    for face in found:
        region = head_region(face, photo.size, margin=margin, feather=feather,
                             resolution=resolution or demo_app.min_side, head=False, context=context)
        x1, y1, x2, y2 = region.crop
        covered[y1:y2, x1:x2] |= region_mask(region) > 0
    out, original = np.asarray(refined[0]), np.asarray(photo)
    assert np.array_equal(out[~covered], original[~covered])


@pytest.mark.slow
@END_TO_END
@given(data=st.data(), count=st.integers(1, 4), width=sides, height=sides,
       pose=st.tuples(st.integers(64, 1500), st.integers(64, 1500)))
def test_group_any_size_any_placement(demo_app, obama, data, count: int, width: int, height: int, pose) -> None:
    if width * height > 200_000:
        height = max(64, 200_000 // width // 8 * 8)
    faces = sorted((face_in(data.draw(boxes(*pose)), obama) for _ in range(count)),
                   key=lambda f: f.bbox[0] + f.bbox[2])
    people = [obama] * count
    options = GenerationSettings(prompt="x", steps=1, seed=5, width=width, height=height)
    try:
        result = demo_app.generate_group(people, options, pose_faces=(faces, pose))
    except InvalidInputError as exc:  # allowed, but only as one line
        assert "\n" not in str(exc)
        return
    assert result.images[0].size == (width, height)
