"""The face processor keeps diffusers' IP-Adapter math on every kind of attention layer (no tiny UNet needed).

:class:`FaceAttnProcessor` says it "keeps that layout and math": for one unmasked identity it must give what
diffusers' ``IPAdapterAttnProcessor2_0`` gives with the same weights, on every :class:`Attention` option that
processor handles (4-D input, spatial and group norm, a text attention mask, cross-attention norm, residual,
output rescale), whether the tokens arrive as a :class:`FaceCall` (prepared or not) or raw; and every call that
is not InstantID's own (several images, ``ip_adapter_masks``, the legacy concatenated tensor) must reach
diffusers unchanged. SDXL's UNet only takes a few of these paths, so the tiny-stack tests cannot see the rest.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection

from instantid.core.attention import (
    FaceAttnProcessor,
    FaceCall,
    FaceRegion,
    FaceTokenProjection,
    _project,
    grid_shape,
    mask_weights,
    prepare_faces,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
WIDTH, TEXT_DIM, QUERIES, TOKENS, GRID = 32, 12, 7, 4, (3, 5)  # a 3x5 grid: rows and columns differ
ADAPTER_SCALE = 0.7


def _layer(option: str) -> Attention:
    """A cross-attention layer with one of diffusers' options switched on."""
    kwargs = {"query_dim": WIDTH, "cross_attention_dim": TEXT_DIM, "heads": 2, "dim_head": WIDTH // 2}
    if option == "group norm":
        kwargs["norm_num_groups"] = 4
    elif option == "spatial norm":
        kwargs["spatial_norm_dim"] = 3
    elif option == "cross norm":
        kwargs["cross_attention_norm"] = "layer_norm"
    elif option == "residual, rescaled":
        kwargs.update(residual_connection=True, rescale_output_factor=2.0)
    torch.manual_seed(0)
    attn = Attention(**kwargs)
    for parameter in attn.parameters():  # norms start as identities: draw them so a skipped norm shows
        torch.nn.init.normal_(parameter, std=0.5)
    return attn


def _diffusers_processor(scale: float = ADAPTER_SCALE, images: int = 1) -> IPAdapterAttnProcessor2_0:
    torch.manual_seed(1)
    processor = IPAdapterAttnProcessor2_0(WIDTH, TEXT_DIM, num_tokens=(TOKENS * images,), scale=scale)
    for parameter in processor.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    return processor


def _inputs(option: str, batch: int = 2) -> dict:
    """hidden states (4-D for the options that need a picture), text, face tokens and the extra arguments."""
    g = torch.Generator().manual_seed(2)
    four_d = option in ("4-D input", "spatial norm", "group norm")
    hidden = torch.randn(batch, WIDTH, *GRID, generator=g) if four_d else torch.randn(batch, 15, WIDTH, generator=g)
    extra = {}
    if option == "spatial norm":
        extra["temb"] = torch.randn(batch, 3, *GRID, generator=g)
    if option == "attention mask":  # additive, per query: a mask that ignores its query axis would be wrong
        extra["attention_mask"] = torch.randn(batch, 15, QUERIES, generator=g)
    return {"hidden": hidden, "text": torch.randn(batch, QUERIES, TEXT_DIM, generator=g),
            "tokens": torch.randn(batch, TOKENS, TEXT_DIM, generator=g), "extra": extra}


def _run(attn: Attention, processor, hidden, encoder_hidden_states, extra: dict) -> torch.Tensor:
    attn.set_processor(processor)
    with torch.no_grad():
        return attn(hidden, encoder_hidden_states=encoder_hidden_states, **extra)


def _prepared(attn: Attention, call: FaceCall, latent: tuple[int, int]) -> FaceCall:
    """prepare_faces over a one-layer "UNet" (one grid level)."""
    holder = torch.nn.Module()
    holder.attn = attn
    holder.config = SimpleNamespace()
    return prepare_faces(holder, call, latent)


OPTIONS = ["plain", "4-D input", "group norm", "spatial norm", "cross norm", "attention mask", "residual, rescaled"]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("route", ["face call", "prepared", "raw tokens"])
def test_one_identity_is_diffusers_ip_adapter_on_every_layer_option(option, route):
    attn, data = _layer(option), _inputs(option)
    diffusers = _diffusers_processor()
    reference = _run(attn, diffusers, data["hidden"], (data["text"], [data["tokens"]]), data["extra"])
    face = FaceAttnProcessor.adopt(diffusers)  # scale None in the call: the processor's own (0.7)
    call = FaceCall((FaceRegion(data["tokens"]),))
    if route == "prepared":
        attn.set_processor(face)
        call = _prepared(attn, call, GRID)
    face_states = data["tokens"][:, None] if route == "raw tokens" else call
    out = _run(attn, face, data["hidden"], (data["text"], [face_states]), data["extra"])
    assert out.shape == reference.shape == data["hidden"].shape
    assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
    # The face tokens matter: without them the output moves by far more than the tolerance.
    text_only = _run(attn, _diffusers_processor(scale=0.0), data["hidden"], (data["text"], [data["tokens"]]),
                     data["extra"])
    assert (text_only - reference).abs().max() > 1e-2


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_a_call_scale_replaces_the_processors_own(scale):
    attn, data = _layer("plain"), _inputs("plain")
    reference = _run(attn, _diffusers_processor(scale), data["hidden"], (data["text"], [data["tokens"]]), {})
    face = FaceAttnProcessor.adopt(_diffusers_processor())
    out = _run(attn, face, data["hidden"], (data["text"], [FaceCall((FaceRegion(data["tokens"]),), scale=scale)]), {})
    assert torch.allclose(out, reference, atol=1e-5)


@pytest.mark.parametrize("case", ["two images", "ip_adapter_masks", "concatenated tensor", "masked, normed"])
def test_calls_that_are_not_instantids_go_to_diffusers_unchanged(case):
    """Two images per prompt (also with a text mask and a spatial norm's input), diffusers' own masks and the
    legacy text+image tensor: diffusers' numbers."""
    option = "spatial norm" if case == "masked, normed" else "plain"
    attn, data = _layer(option), _inputs(option)
    g = torch.Generator().manual_seed(3)
    images = 1 if case in ("ip_adapter_masks", "concatenated tensor") else 2
    tokens = torch.randn(2, images, TOKENS, TEXT_DIM, generator=g)
    states, extra = (data["text"], [tokens]), dict(data["extra"])
    if case == "masked, normed":
        extra["attention_mask"] = torch.randn(2, 15, QUERIES, generator=g)
    if case == "ip_adapter_masks":  # the left half of the 3x5 grid's picture only
        masks = torch.zeros(2, 1, 24, 40)
        masks[..., :20] = 1
        extra["ip_adapter_masks"] = [masks]
    elif case == "concatenated tensor":
        states = torch.cat([data["text"], tokens[:, 0]], dim=1)
    reference = _run(attn, _diffusers_processor(images=images), data["hidden"], states, extra)
    out = _run(attn, FaceAttnProcessor.adopt(_diffusers_processor(images=images)), data["hidden"], states, extra)
    assert torch.allclose(out, reference, atol=1e-6)
    if case != "concatenated tensor":  # and the extra images / masks changed diffusers' answer
        plain = _run(attn, _diffusers_processor(), data["hidden"], (data["text"], [tokens[:, :1]]), data["extra"])
        assert (plain - reference).abs().max() > 1e-3
    if case == "masked, normed":  # and so did the text mask and the norm's input
        for dropped in ("attention_mask", "temb"):
            changed = {**extra, dropped: None if dropped == "attention_mask" else torch.randn(2, 3, *GRID)}
            other = _run(attn, _diffusers_processor(images=images), data["hidden"], states, changed)
            assert (other - reference).abs().max() > 1e-3


def test_a_mask_at_a_grid_the_preparation_did_not_foresee_is_resized_in_the_layer():
    """Prepared for one latent size, run at the grid below it: the layer resizes the mask itself."""
    attn, data = _layer("plain"), _inputs("plain")
    mask = torch.zeros(48, 80)
    mask[:, :40] = 1  # 48x80 picture: latent 6x10, its 3x5 grid one level down
    face = FaceAttnProcessor.adopt(_diffusers_processor())
    attn.set_processor(face)
    call = FaceCall((FaceRegion(data["tokens"], mask),))
    prepared = _prepared(attn, call, (6, 10))
    assert set(prepared.prepared.weights[0]) == {60}  # every grid of the (one-level) latent, and only those
    out = _run(attn, face, data["hidden"], (data["text"], [prepared]), {})
    assert torch.allclose(out, _run(attn, face, data["hidden"], (data["text"], [call]), {}), atol=1e-6)
    unmasked = _run(attn, face, data["hidden"], (data["text"], [FaceCall((FaceRegion(data["tokens"]),))]), {})
    assert (unmasked - out).abs().max() > 1e-3


@pytest.mark.parametrize(("size", "grid"), [((16, 24), (2, 3)), ((200, 136), (13, 9))])  # published rule; grid's own
def test_mask_weights_take_the_dtype_asked_for(size, grid):
    weights = mask_weights(torch.ones(size), grid[0] * grid[1], torch.empty((), dtype=torch.float64))
    assert weights.dtype == torch.float64 and weights.shape == (1, 1, grid[0] * grid[1], 1)


@pytest.mark.parametrize(("size", "tokens", "grid"), [((16, 1), 1, (1, 1)), ((1, 16), 1, (1, 1)),
                                                       ((40, 3), 10, (10, 1)), ((3, 40), 10, (1, 10))])
def test_grids_of_very_thin_pictures_halve_down_to_one_row_or_column(size, tokens, grid):
    assert grid_shape(size, tokens) == grid


def test_no_grid_is_an_error_naming_the_picture_width_by_height():
    with pytest.raises(ValueError, match="no attention grid of 0 tokens lies below a 24x16 picture; the mask must "
                                         "have the output image's size"):
        grid_shape((16, 24), 0)


def test_adopted_processors_add_no_state_dict_keys():
    """The face layer number is no weight: the UNet's state dict stays diffusers'."""
    attn = _layer("plain")
    attn.set_processor(_diffusers_processor())
    keys = set(attn.state_dict())
    attn.set_processor(FaceAttnProcessor.adopt(attn.processor))
    assert set(attn.state_dict()) == keys


def test_projection_puts_the_product_on_the_tokens_device():
    linear = torch.nn.Linear(TEXT_DIM, WIDTH, bias=False)
    tokens = torch.randn(2, TOKENS, TEXT_DIM)
    assert torch.equal(_project(linear, tokens), linear(tokens))
    assert _project(linear, tokens.to("meta")).device.type == "meta"


def test_the_compiled_branch_reads_each_layers_own_keys_and_values(monkeypatch):
    """Under torch.compile a layer finds its keys/values by its slot tensor: the same ones eager reads."""
    layers = [_layer("plain"), _layer("plain")]
    data = _inputs("plain")
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList(layers)
    holder.config = SimpleNamespace()
    for seed, attn in enumerate(layers):
        diffusers = _diffusers_processor()
        torch.manual_seed(10 + seed)
        for parameter in diffusers.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
        attn.set_processor(FaceAttnProcessor.adopt(diffusers))
    mask = torch.zeros(24, 40)
    mask[:12] = 1
    call = prepare_faces(holder, FaceCall((FaceRegion(data["tokens"], mask),)), GRID)
    eager = [_run(attn, attn.processor, data["hidden"], (data["text"], [call]), {}) for attn in layers]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for attn, expected in zip(layers, eager, strict=True):
        assert torch.equal(_run(attn, attn.processor, data["hidden"], (data["text"], [call]), {}), expected)
    assert (eager[0] - eager[1]).abs().max() > 1e-3


def test_the_image_projection_lets_a_face_call_through_and_projects_raw_embeddings():
    torch.manual_seed(4)
    layer = torch.nn.Linear(5, TEXT_DIM)
    projection = FaceTokenProjection([layer])
    call = FaceCall((FaceRegion(torch.zeros(1, TOKENS, TEXT_DIM)),))
    assert projection(call) == [call]
    raw = [torch.randn(2, 1, 5)]
    expected = MultiIPAdapterImageProjection([layer])(raw)
    assert torch.equal(projection(raw)[0], expected[0])


def test_a_projection_without_a_weight_is_called_as_it_is():
    """A wrapped projection (no ``weight`` of its own) runs itself."""

    class Doubled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    tokens = torch.randn(2, TOKENS, TEXT_DIM)
    assert torch.equal(_project(Doubled(), tokens), 2 * tokens)


@pytest.mark.parametrize("first_masked", [False, True])
def test_prepared_regions_in_any_order_and_dtype_give_the_per_layer_numbers(first_masked):
    """One person everywhere and one in a region, either first, in float64: prepared == per layer, and the
    prepared weights have the tokens' dtype."""
    attn, data = _layer("plain").double(), _inputs("plain")
    face = FaceAttnProcessor.adopt(_diffusers_processor().double())
    attn.set_processor(face)
    mask = torch.zeros(24, 40)  # float32, as masks come: the weights follow the tokens
    mask[:, 20:] = 1
    tokens = data["tokens"].double()
    regions = [FaceRegion(tokens), FaceRegion(tokens.flip(0), mask)]
    call = FaceCall(tuple(reversed(regions)) if first_masked else tuple(regions))
    prepared = _prepared(attn, call, GRID)
    assert [w is None for w in prepared.prepared.weights] == [r.mask is None for r in call.regions]
    assert all(w[15].dtype == torch.float64 for w in prepared.prepared.weights if w is not None)
    hidden, text = data["hidden"].double(), data["text"].double()
    out = _run(attn, face, hidden, (text, [prepared]), {})
    assert torch.allclose(out, _run(attn, face, hidden, (text, [call]), {}), atol=1e-10)
    one = _run(attn, face, hidden, (text, [FaceCall((regions[0],))]), {})
    assert (one - out).abs().max() > 1e-3
