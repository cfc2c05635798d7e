"""Face layers prepared once per call (tiny published checkpoints, CPU).

The prepared path (keys/values projected once, adapter scale folded into the values, region weights per grid)
must give the numbers of the per-layer path, and under ``torch.compile`` a transformer block with a face
layer must trace in one graph that every block of its shape shares and that a new face, mask or scale reuses.
"""

from __future__ import annotations

import pytest
import torch

from instantid.core.attention import FaceAttnProcessor, FaceCall, FaceRegion, prepare_faces
from instantid.core.denoise import face_tokens

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
LATENT = (8, 8)  # a 64 px picture: token grids of 64, 16 and 4


@pytest.fixture
def pipe(fresh_fixture_pipe):
    return fresh_fixture_pipe


def _tokens(unet, seed: int) -> torch.Tensor:
    """Face tokens for a guided batch of one: the zero embedding's first, as the pipeline makes them."""
    emb = torch.randn(1, 512, generator=torch.Generator().manual_seed(seed)) * 22 / 512**0.5
    return face_tokens(unet, torch.cat([torch.zeros_like(emb), emb]))


def _mask(top: int, left: int, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(LATENT[0] * 8, LATENT[1] * 8)
    mask[top : top + size, left : left + size] = 1.0
    return mask


def _unet_noise(unet, call: FaceCall, seed: int = 0) -> torch.Tensor:
    """One guided-batch UNet prediction with the face call as the pipeline hands it over."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled, generator=g),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2), "image_embeds": call}
    return unet(
        torch.randn(2, cfg.in_channels, *LATENT, generator=g), torch.tensor(500),
        encoder_hidden_states=torch.randn(2, 77, cfg.cross_attention_dim, generator=g), added_cond_kwargs=added,
        return_dict=False,
    )[0]


@pytest.mark.parametrize("case", ["one face", "masked", "two people", "per-layer scales"])
@torch.no_grad()
def test_prepared_faces_give_the_per_layer_numbers(pipe, case):
    unet = pipe.unet
    regions = (FaceRegion(_tokens(unet, 1)),)
    scale = 0.8
    if case == "masked":
        regions = (FaceRegion(_tokens(unet, 1), _mask(8, 16)),)
    elif case == "two people":
        regions = (FaceRegion(_tokens(unet, 1), _mask(0, 0)), FaceRegion(_tokens(unet, 2), _mask(32, 32)))
    elif case == "per-layer scales":  # set_ip_adapter_scale per block (InstantStyle-like); call.scale None
        scale = None
        for i, processor in enumerate(p for p in unet.attn_processors.values() if isinstance(p, FaceAttnProcessor)):
            processor.scale = [0.3 + 0.25 * (i % 4)]
    call = FaceCall(regions, scale=scale)
    prepared = prepare_faces(unet, call, LATENT)
    assert prepared.prepared is not None and call.prepared is None
    reference = _unet_noise(unet, call)
    fast = _unet_noise(unet, prepared)
    # Another face moves the prediction by far more than the prepared path may.
    other = _unet_noise(unet, FaceCall((FaceRegion(_tokens(unet, 3), regions[0].mask), *regions[1:]), scale=scale))
    difference = (fast - reference).abs().max().item()
    assert difference < 1e-5 * reference.abs().max().item()
    assert (other - reference).abs().max().item() > 1e3 * max(difference, 1e-7)


@torch.no_grad()
def test_scale_zero_skips_the_face_branch_exactly(pipe):
    unet = pipe.unet
    call = FaceCall((FaceRegion(_tokens(unet, 1), _mask(8, 8)),), scale=0.0)
    prepared = prepare_faces(unet, call, LATENT)
    assert prepared.prepared.keys == {}
    assert torch.equal(_unet_noise(unet, prepared), _unet_noise(unet, call))


def _face_blocks(unet) -> list[torch.nn.Module]:
    """Transformer blocks whose cross-attention is a face layer, of the most common (heads, width)."""
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"
              and isinstance(m.attn2.processor, FaceAttnProcessor)]
    groups: dict[tuple[int, int], list[torch.nn.Module]] = {}
    for block in blocks:
        groups.setdefault(block.attn2.processor.group(block.attn2), []).append(block)
    return max(groups.values(), key=len)


def _block_inputs(block, call: FaceCall, seed: int) -> tuple[torch.Tensor, tuple]:
    g = torch.Generator().manual_seed(seed)
    width = block.attn2.processor.hidden_size
    text = torch.randn(2, 77, block.attn2.processor.cross_attention_dim, generator=g)
    return torch.randn(2, 16, width, generator=g), (text, [call])  # 16 tokens: the 4x4 grid of LATENT


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@torch.no_grad()
def test_a_face_block_compiles_in_one_graph_shared_by_its_shape_and_kept_across_calls(pipe):
    unet = pipe.unet
    blocks = _face_blocks(unet)
    assert len(blocks) >= 2 and len({b.attn2.processor.face_index for b in blocks}) == len(blocks)

    def call(seed: int, scale: float, mask: torch.Tensor | None) -> FaceCall:
        return prepare_faces(unet, FaceCall((FaceRegion(_tokens(unet, seed), mask),), scale=scale), LATENT)

    first = call(1, 0.8, _mask(8, 16))
    hidden, states = _block_inputs(blocks[0], first, 0)
    explained = torch._dynamo.explain(blocks[0])(hidden, encoder_hidden_states=states)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons

    torch._dynamo.reset()
    eager = [blocks[i](*_block_inputs(blocks[i], first, i)[:1], encoder_hidden_states=(states[0], [first]))
             for i in (0, 1)]
    compiled = [torch.compile(b, backend="eager", fullgraph=True, dynamic=False) for b in blocks[:2]]
    start = _graphs()  # dynamo's counters survive reset()
    outputs = [compiled[0](hidden, encoder_hidden_states=states)]
    graphs = _graphs()
    assert graphs == start + 1
    # Another block of the shape (another layer, another slot in the stacks) reuses the graph, with its own
    # keys and values: its output is its eager output, not the first block's.
    outputs.append(compiled[1](*_block_inputs(blocks[1], first, 1)[:1], encoder_hidden_states=(states[0], [first])))
    assert _graphs() == graphs
    for out, ref in zip(outputs, eager, strict=True):
        assert torch.allclose(out, ref, atol=1e-5)
    # A new face, adapter scale and mask position: new tensor values, the same graph.
    second = call(2, 0.35, _mask(24, 0))
    changed = compiled[0](hidden, encoder_hidden_states=(states[0], [second]))
    assert _graphs() == graphs
    assert torch.allclose(changed, blocks[0](hidden, encoder_hidden_states=(states[0], [second])), atol=1e-5)
    assert not torch.allclose(changed, outputs[0], atol=1e-3)
