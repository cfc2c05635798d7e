"""Loading checkpoints and model references: what works, and the one-line errors for what does not."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image
from safetensors.torch import save_file

from instantid import StableDiffusionXLInstantIDPipeline, draw_kps
from instantid.core.adapter import load_adapter_state_dict
from instantid.core.attention import face_processors
from instantid.errors import IncompatibleWeightsError, MissingWeightsError
from instantid.io.models import ModelRefs, describe, resolve_adapter, resolve_base, resolve_identitynet
from instantid.io.tiny import TinyConfig, build_tiny_instantid

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def fresh_pipe(tiny_fixture_dir):
    """A pipeline without adapter, for loading experiments."""
    controlnet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(tiny_fixture_dir / "base", controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def published_state(tiny_fixture_dir):
    return torch.load(tiny_fixture_dir / "ip-adapter.bin", weights_only=True)


def _latents(pipe, emb, seed=0):
    kps = draw_kps(Image.new("RGB", (128, 128)), [[44, 40], [84, 42], [64, 62], [48, 84], [80, 84]])
    return pipe(prompt="a portrait", image_embeds=emb, image=kps, num_inference_steps=2, ip_adapter_scale=0.8,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images


def test_sizes_come_from_the_checkpoint(fixture_pipe):
    spec = fixture_pipe.adapter_spec
    assert (spec.width, spec.heads, spec.depth, spec.num_queries, spec.embedding_dim) == (128, 2, 4, 16, 512)
    assert spec.output_dim == fixture_pipe.unet.config.cross_attention_dim
    assert spec.num_layers == len(face_processors(fixture_pipe.unet))


def test_safetensors_adapter_gives_the_same_images(
    fixture_pipe, fresh_pipe, published_state, tmp_path, tiny_fixture_dir
):
    flat = {
        f"{group}.{key}": value.contiguous()
        for group in ("image_proj", "ip_adapter")
        for key, value in published_state[group].items()
    }
    path = tmp_path / "ip-adapter.safetensors"
    save_file(flat, path, metadata={"embedding_space": "antelopev2-512"})
    fresh_pipe.load_ip_adapter_instantid(path)
    assert fresh_pipe.adapter_spec.embedding_space == "antelopev2-512"
    emb = np.load(tiny_fixture_dir / "face_embedding.npy")
    assert (_latents(fresh_pipe, emb) - _latents(fixture_pipe, emb)).abs().max() < 1e-6


def test_missing_file(fresh_pipe, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"face adapter file not found: .*nope\.bin.*InstantX/InstantID"):
        fresh_pipe.load_ip_adapter_instantid(tmp_path / "nope.bin")


def test_missing_keys(fresh_pipe, published_state, tmp_path):
    path = tmp_path / "half.bin"
    torch.save({"image_proj": published_state["image_proj"]}, path)
    with pytest.raises(IncompatibleWeightsError, match=r"half\.bin lacks 'ip_adapter'"):
        fresh_pipe.load_ip_adapter_instantid(path)
    proj = dict(published_state["image_proj"])
    del proj["latents"]
    torch.save({"image_proj": proj, "ip_adapter": published_state["ip_adapter"]}, path)
    with pytest.raises(IncompatibleWeightsError, match="lacks latents"):
        fresh_pipe.load_ip_adapter_instantid(path)


def test_adapter_for_another_base_is_refused(fresh_pipe, published_state, tmp_path):
    """An SD1.5-style adapter (768-d tokens) on this UNet: refused before anything is changed."""
    proj = dict(published_state["image_proj"])
    proj["proj_out.weight"] = torch.zeros(768, proj["proj_out.weight"].shape[1])
    proj["proj_out.bias"] = torch.zeros(768)
    path = tmp_path / "sd15.bin"
    torch.save({"image_proj": proj, "ip_adapter": published_state["ip_adapter"]}, path)
    with pytest.raises(IncompatibleWeightsError, match="768-d face tokens but this UNet's cross-attention is 64-d"):
        fresh_pipe.load_ip_adapter_instantid(path)
    ip = dict(published_state["ip_adapter"])
    ip["1.to_k_ip.weight"] = torch.zeros(3, 3)
    torch.save({"image_proj": published_state["image_proj"], "ip_adapter": ip}, path)
    with pytest.raises(IncompatibleWeightsError, match=r"'1\.to_k_ip\.weight' has shape \(3, 3\)"):
        fresh_pipe.load_ip_adapter_instantid(path)
    ip = {k: v for k, v in published_state["ip_adapter"].items() if not k.startswith("33.")}
    torch.save({"image_proj": published_state["image_proj"], "ip_adapter": ip}, path)
    with pytest.raises(IncompatibleWeightsError, match="has no '33.to_k_ip.weight'"):
        fresh_pipe.load_ip_adapter_instantid(path)


def test_wrong_embedding_size_checked_against_the_file(fresh_pipe, tiny_fixture_dir):
    with pytest.raises(ValueError, match="image_emb_dim=128 was asked for"):
        fresh_pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin", image_emb_dim=128)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_are_never_executed(tmp_path):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": Exploit(), "ip_adapter": {}}, f)
    with pytest.raises(IncompatibleWeightsError, match=r"cannot load face adapter .*evil\.bin"):
        load_adapter_state_dict(path)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(IncompatibleWeightsError, match="cannot load face adapter"):
        load_adapter_state_dict(garbage)


def test_model_references_offline_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MissingWeightsError, match=r"adapter 'InstantX/InstantID' not found .*ip-adapter\.bin"):
        resolve_adapter("InstantX/InstantID")
    with pytest.raises(MissingWeightsError, match=r"identitynet 'InstantX/InstantID' not found .*ControlNetModel/"):
        resolve_identitynet("InstantX/InstantID")
    with pytest.raises(MissingWeightsError, match="base 'stabilityai/stable-diffusion-xl-base-1.0' not found"):
        resolve_base("stabilityai/stable-diffusion-xl-base-1.0")
    with pytest.raises(MissingWeightsError, match="no such file"):
        resolve_adapter(str(tmp_path / "missing" / "ip-adapter.bin"))
    rows = describe(ModelRefs())
    assert [r[0] for r in rows] == ["base", "identitynet", "adapter"]
    assert all(path is None and "not found" in problem for _, _, path, problem in rows)


def test_local_paths_resolve(tiny_fixture_dir):
    assert resolve_base(str(tiny_fixture_dir / "base")) == tiny_fixture_dir / "base"
    assert resolve_identitynet(str(tiny_fixture_dir)) == tiny_fixture_dir / "ControlNetModel"
    assert resolve_adapter(str(tiny_fixture_dir)) == tiny_fixture_dir / "ip-adapter.bin"


def test_tiny_factory_builds_a_loadable_release(tmp_path):
    folder = build_tiny_instantid(tmp_path / "tiny", TinyConfig(embedding_dim=128, embedding_space="dlib-128"))
    assert {p.name for p in folder.iterdir()} >= {"base", "ControlNetModel", "ip-adapter.bin"}
    raw = torch.load(folder / "ip-adapter.bin", weights_only=True)
    assert raw["meta"] == {"embedding_space": "dlib-128"}
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(
        folder / "base", controlnet=ControlNetModel.from_pretrained(folder / "ControlNetModel")
    )
    spec = pipe.load_ip_adapter_instantid(folder / "ip-adapter.bin")
    assert (spec.embedding_dim, spec.embedding_space) == (128, "dlib-128")
    pipe.set_progress_bar_config(disable=True)
    emb = np.random.default_rng(0).normal(size=128).astype(np.float32)
    a, b = _latents(pipe, emb), _latents(pipe, -emb)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-4  # identity reaches the output
    mtime = (folder / "ip-adapter.bin").stat().st_mtime_ns
    build_tiny_instantid(tmp_path / "tiny", TinyConfig(embedding_dim=128, embedding_space="dlib-128"))
    assert (folder / "ip-adapter.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_lora_loads_and_keeps_the_identity_branch(tiny_fixture_dir, tmp_path):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    controlnet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(tiny_fixture_dir / "base", controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    emb = np.load(tiny_fixture_dir / "face_embedding.npy")
    # A random LoRA on the UNet's attention projections, saved in diffusers' LoRA format.
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLInstantIDPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora)
    pipe.unet.delete_adapters("default")
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    before = _latents(pipe, emb)
    pipe.load_lora_weights(tmp_path, adapter_name="style")
    after = _latents(pipe, emb)
    assert (after - before).abs().max() > 1e-3
    assert len(face_processors(pipe.unet)) == pipe.adapter_spec.num_layers
    assert (_latents(pipe, -emb) - after).abs().max() > 1e-3  # identity still steers with the LoRA on


def test_adapter_goes_through_diffusers_public_loader(tiny_fixture_dir, monkeypatch):
    """load_ip_adapter_instantid uses the pipeline's public ``load_ip_adapter`` and leaves no CLIP feature
    extractor behind (InstantID has no image encoder)."""
    controlnet = ControlNetModel.from_pretrained(tiny_fixture_dir / "ControlNetModel")
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(tiny_fixture_dir / "base", controlnet=controlnet)
    calls = []
    public = StableDiffusionXLInstantIDPipeline.load_ip_adapter

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("image_encoder_folder", "given"))
        return public(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLInstantIDPipeline, "load_ip_adapter", spy)
    pipe.load_ip_adapter_instantid(tiny_fixture_dir / "ip-adapter.bin")
    assert calls == [None]
    assert pipe.feature_extractor is None and pipe.config.feature_extractor == (None, None)
    assert len(face_processors(pipe.unet)) == pipe.adapter_spec.num_layers


def test_bare_unet_loader_names_the_diffusers_it_needs():
    """Training installs into a bare UNet through diffusers' private loader; without it, one clear line."""
    from instantid.core.adapter import install_face_adapter

    with pytest.raises(IncompatibleWeightsError, match="install a diffusers release from 0.32 to 0.42"):
        install_face_adapter(torch.nn.Module(), {}, scale=1.0)


class _Code:
    """Pickled as a reference to this class: loading it would run code."""


def test_adapter_that_asks_to_run_code_is_refused_without_unsafe_advice(tmp_path):
    import torch

    from instantid.core.adapter import load_adapter_state_dict
    from instantid.errors import IncompatibleWeightsError

    path = tmp_path / "ip-adapter.bin"
    torch.save({"image_proj": _Code(), "ip_adapter": {}}, path)
    with pytest.raises(IncompatibleWeightsError) as err:
        load_adapter_state_dict(path)
    message = str(err.value)
    assert "not a plain weights file" in message and "weights_only" not in message and "\n" not in message
