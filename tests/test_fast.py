"""The fast path keeps the pictures, keeps the face layers, and compiles once per shape (tiny stack, CPU)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from instantid.core.attention import FaceAttnProcessor
from instantid.errors import InvalidInputError
from instantid.speed.fast import enable_fast_inference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
SIZE = 64


@pytest.fixture
def pipe(fresh_fixture_pipe):
    return fresh_fixture_pipe


def _kps() -> Image.Image:
    from instantid import draw_kps

    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * SIZE
    return draw_kps(Image.new("RGB", (SIZE, SIZE)), face)


def _embedding(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=512).astype(np.float32)


def _latents(pipe, *, prompt="a portrait", seed=0, ip_scale=0.8, cn_scale=0.8, emb_seed=0, mask=None) -> torch.Tensor:
    return pipe(
        prompt=prompt, image=_kps(), image_embeds=_embedding(emb_seed), num_inference_steps=3, guidance_scale=5.0,
        ip_adapter_scale=ip_scale, controlnet_conditioning_scale=cn_scale, control_mask=mask,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    ).images


def _face_attn2(pipe) -> list[str]:
    return [n for n, p in pipe.unet.attn_processors.items() if isinstance(p, FaceAttnProcessor)]


@pytest.mark.parametrize("lever", ["fuse_qkv", "channels_last"])
def test_exact_levers_keep_the_latents_and_the_identity(pipe, lever):
    eager = _latents(pipe)
    identity_effect = (_latents(pipe, emb_seed=1) - eager).abs().max().item()
    face_layers = _face_attn2(pipe)
    flags = {"fuse_qkv": False, "channels_last": False, lever: True}
    report = enable_fast_inference(pipe, **flags)
    fast = _latents(pipe)
    difference = (fast - eager).abs().max().item()
    # fp32 rounding only, far below what changing the face does.
    assert difference < 1e-4 and identity_effect > 1e3 * max(difference, 1e-7)
    assert _face_attn2(pipe) == face_layers and report.face_layers == len(face_layers) > 0
    assert (_latents(pipe, emb_seed=1) - fast).abs().max().item() > 0.5 * identity_effect
    if lever == "fuse_qkv":
        fused = [n for n, p in pipe.unet.attn_processors.items() if type(p).__name__ == "FusedAttnProcessor2_0"]
        assert report.fused_qkv_layers > 0 and fused and all(n.endswith("attn1.processor") for n in fused)
    else:
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def test_compiled_blocks_do_not_recompile_when_prompt_seed_scales_or_face_change(pipe):
    """dynamo's guards are the same for every backend; "eager" checks them without a C compiler run. The face
    layers are traced into the blocks: no graph break, and a new scale, face or mask is no new graph."""
    torch._dynamo.reset()
    eager = _latents(pipe)
    report = enable_fast_inference(pipe, compile="eager", fuse_qkv=False, channels_last=False)
    assert report.compiled_blocks["unet"] > 0 and report.compiled_blocks["identitynet"] > 0
    assert report.face_layers_compiled
    breaks = _graph_breaks()
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[16:48, 16:48] = 255
    first = _latents(pipe)
    _latents(pipe, mask=Image.fromarray(mask))
    graphs = _graphs()
    assert graphs > 0  # the blocks really went through dynamo
    assert _graph_breaks() == breaks  # the face layers (and everything else in a block) in one graph
    mask[8:40, 20:60] = 255
    changed = _latents(
        pipe, prompt="an oil painting of a person", seed=7, ip_scale=0.35, cn_scale=0.5, emb_seed=3,
        mask=Image.fromarray(mask),
    )
    _latents(pipe, ip_scale=1.3, emb_seed=5)
    assert _graphs() == graphs
    assert torch.allclose(first, eager, atol=1e-5) and not torch.allclose(changed, first, atol=1e-2)
    assert len(_face_attn2(pipe)) == report.face_layers > 0


def test_eager_face_layers_break_the_block_graphs_and_keep_the_latents(pipe):
    """compile_face_layers=False: each face cross-attention runs outside the graph (what the break costs is
    measured by benchmarks/pipeline_vs_stock.py --compile); the pictures are the same."""
    torch._dynamo.reset()
    eager = _latents(pipe)
    breaks = _graph_breaks()
    report = enable_fast_inference(pipe, compile="eager", compile_face_layers=False, fuse_qkv=False,
                                   channels_last=False)
    compiled = _latents(pipe)
    assert not report.face_layers_compiled and _graph_breaks() > breaks
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_fp16_vae_decodes_without_upcast(pipe, tmp_path):
    safe = tmp_path / "vae-fp16-safe"
    pipe.vae.register_to_config(force_upcast=False)
    pipe.vae.save_pretrained(safe)
    pipe.vae.register_to_config(force_upcast=True)
    with pytest.raises(InvalidInputError, match="force_upcast"):
        enable_fast_inference(pipe, vae_fp16=True, fuse_qkv=False, channels_last=False)
    seen: list[torch.dtype] = []
    report = enable_fast_inference(pipe, vae_fp16=safe, vae_tiling=True, fuse_qkv=False, channels_last=False)
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    image = pipe(prompt="a portrait", image=_kps(), image_embeds=_embedding(0), num_inference_steps=2,
                 output_type="np").images
    assert report.vae_fp16 and report.vae_tiling and pipe.vae.use_tiling
    assert seen == [torch.float16] and pipe.vae.dtype == torch.float16
    assert np.isfinite(image).all() and image.shape == (1, SIZE, SIZE, 3)


@pytest.mark.slow
def test_inductor_compile_matches_eager_and_writes_the_disk_cache(pipe, tmp_path, monkeypatch):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on CPU needs a C compiler (cc)")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # What importing inductor leaves in the environment: torch's default, which must not hide cache_dir.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    torch._dynamo.reset()
    eager = _latents(pipe)
    report = enable_fast_inference(pipe, compile=True, cache_dir=tmp_path / "cache")
    compiled = _latents(pipe)
    assert report.backend == "inductor" and report.cache_dir == str((tmp_path / "cache").resolve())
    assert (compiled - eager).abs().max().item() < 1e-3
    assert any((tmp_path / "cache" / "fxgraph").rglob("*")), "no FX graph was written to the disk cache"


_COMPILE_ONCE = """
import json, sys
import torch
import torch._inductor.config  # noqa: F401  (writes torch's default cache folder into the environment)
from torch._dynamo.utils import counters
from instantid.speed.compile_cache import use_compile_cache

use_compile_cache(sys.argv[1])
block = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
with torch.no_grad():  # inference, as the pipelines run (a training graph is cached after its backward)
    torch.compile(block, backend="inductor", dynamic=False)(torch.randn(2, 8))
print(json.dumps({**dict(counters["inductor"]), **dict(counters["aot_autograd"])}))
"""


@pytest.mark.slow
def test_a_second_process_loads_compiled_graphs_from_the_disk_cache(tmp_path):
    """Warm start: a fresh process with the same cache_dir hits the FX-graph and AOTAutograd caches written by
    the first one (compiles nothing), even though importing inductor set torch's default folder."""
    import json
    import os
    import subprocess
    import sys

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor on CPU needs a C compiler (cc)")
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    cache = tmp_path / "compile-cache"

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", _COMPILE_ONCE, str(cache)], env=env, capture_output=True,
                              text=True, timeout=300, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and any((cache / "fxgraph").rglob("*"))
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and warm.get("fxgraph_cache_miss", 0) == 0
    assert warm.get("autograd_cache_hit", 0) >= 1 and warm.get("autograd_cache_miss", 0) == 0
