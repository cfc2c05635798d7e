"""A tiny random-weight InstantID stack, written in the published on-disk layout.

For tests, offline demos and benchmarks: the real loading code reads it exactly as it reads the published
release (``base/`` diffusers SDXL folder, ``ControlNetModel/``, ``ip-adapter.bin``). It generates noise, and
says so wherever it is used. Building it takes about a second on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from instantid.core.adapter import random_adapter_state_dict
from instantid.io.loading import library_chatter
from instantid.io.models import ControlRefs

TINY_MARKER = "instantid-tiny.json"


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny stack (shaped like SDXL: 3 UNet levels, cross-attention in levels 2-3)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention_dim: int = 64  # width of text and face tokens
    text_width: int = 32  # each CLIP encoder's width; the two are concatenated to cross_attention_dim
    projection_dim: int = 32  # pooled text width (text_encoder_2)
    resampler_width: int = 128  # 2 heads of 64
    resampler_depth: int = 4
    num_tokens: int = 16
    embedding_dim: int = 512  # 512 = antelopev2 space; 128 = dlib space
    embedding_space: str = "antelopev2-512"
    sample_size: int = 16


def _byte_vocab() -> tuple[dict[str, int], str]:
    """A byte-level CLIP vocabulary with no merges (514 ids), built without any download."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, "#version: 0.2\n"


def draw_identitynet_weights(controlnet: ControlNetModel, seed: int = 0) -> None:
    """Random values, in place (seeded, its own generator), for the parts of IdentityNet that would otherwise
    make it inert on a random-weight stack.

    ``from_unet`` leaves the zero convolutions at zero, where training starts: IdentityNet then adds nothing.
    They are drawn as the shared fixture's builder drew them (weights N(0, 0.2), biases N(0, 0.05), the
    conditioning embedding's output bias 0). The conditioning embedding's seven hidden convolutions keep
    PyTorch's default init otherwise, which shrinks a keypoint picture about 2000-fold before it reaches the
    latents (the residuals then differ by 0.1% between a pose and a black picture): they are drawn
    variance-preserving (He, N(0, 2 / fan_in), biases 0) so that keypoints, poses, layouts and group placement
    change the demo's picture.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks]:
            conv.weight.normal_(0.0, (2.0 / conv.weight[0].numel()) ** 0.5, generator=gen)
            conv.bias.zero_()
        embedding.conv_out.weight.normal_(0.0, 0.2, generator=gen)
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.2, generator=gen)
            conv.bias.normal_(0.0, 0.05, generator=gen)


def tiny_unet(config: TinyConfig = TinyConfig()) -> UNet2DConditionModel:
    """The tiny stack's UNet (weights from torch's global generator)."""
    return UNet2DConditionModel(
        block_out_channels=config.block_out_channels,
        layers_per_block=2,
        sample_size=config.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=config.cross_attention_dim,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + config.projection_dim,
    )


def build_tiny_components(config: TinyConfig = TinyConfig(), seed: int = 0) -> dict:
    """Random tiny components in memory: unet, controlnet, vae, text encoders, tokenizers, scheduler."""
    torch.manual_seed(seed)
    unet = tiny_unet(config)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    draw_identitynet_weights(controlnet, seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
    )
    text = dict(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=config.text_width,
        intermediate_size=config.text_width * 2,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=514,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=config.projection_dim,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2, "scheduler": scheduler,
    }


def _save_tokenizer(folder: Path) -> CLIPTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_instantid(out_dir: str | Path, config: TinyConfig = TinyConfig(), seed: int = 0) -> Path:
    """Write a tiny InstantID release to ``out_dir`` (``base/``, ``ControlNetModel/``, ``ip-adapter.bin``).

    Returns ``out_dir``. An existing complete build with the same config and seed is reused.
    """
    from diffusers import StableDiffusionXLPipeline

    out = Path(out_dir)
    marker = out / TINY_MARKER
    # "identitynet" marks builds whose IdentityNet weights are drawn (draw_identitynet_weights): older caches rebuild.
    wanted = {
        "config": config.__dict__ | {"block_out_channels": list(config.block_out_channels)}, "seed": seed,
        "identitynet": "drawn",
    }
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out
    parts = build_tiny_components(config, seed)
    base = out / "base"
    # Our own throwaway files: the libraries' "Writing model shards" bars would only be noise.
    with library_chatter():
        tokenizer = _save_tokenizer(base / "tokenizer")
        tokenizer_2 = _save_tokenizer(base / "tokenizer_2")
        StableDiffusionXLPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=parts["unet"], scheduler=parts["scheduler"],
        ).save_pretrained(base)
        parts["controlnet"].save_pretrained(out / "ControlNetModel")
    state = random_adapter_state_dict(
        parts["unet"], width=config.resampler_width, depth=config.resampler_depth,
        num_queries=config.num_tokens, embedding_dim=config.embedding_dim, seed=seed,
    )
    state["meta"] = {"embedding_space": config.embedding_space}
    torch.save(state, out / "ip-adapter.bin")
    marker.write_text(json.dumps(wanted))
    return out


CONTROLS_MARKER = "instantid-tiny-controls.json"
CONTROLS_VERSION = 2


def build_tiny_controls(out_dir: str | Path, seed: int = 0) -> ControlRefs:
    """Tiny random stand-ins for the extra ControlNets (pose, canny, depth) and their map models, beside a tiny
    stack built by :func:`build_tiny_instantid` in ``out_dir``: the real classes (diffusers ``ControlNetModel``,
    transformers ViTPose and Depth-Anything) in their published layouts, so the real loading code reads them.
    Returns where they are. Reused when already built."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    out = Path(out_dir)
    refs = ControlRefs(**{f"{kind}_controlnet": str(out / f"controlnet-{kind}") for kind in ("pose", "canny", "depth")},
                       pose_map_model=str(out / "vitpose"), depth_map_model=str(out / "depth-anything"))
    marker = out / CONTROLS_MARKER
    wanted = {"version": CONTROLS_VERSION, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return refs
    with library_chatter():
        unet = UNet2DConditionModel.from_pretrained(out / "base" / "unet")
        for offset, kind in enumerate(("pose", "canny", "depth"), start=1):
            net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
            draw_identitynet_weights(net, seed + 100 * offset)  # drawn, so each net changes the picture
            net.save_pretrained(refs.controlnet(kind))
        torch.manual_seed(seed)
        backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=[64, 48], patch_size=[16, 16],
                                         out_indices=[2])
        pose = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
        pose.save_pretrained(refs.pose_map_model)
        VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(refs.pose_map_model)
        dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              image_size=56, patch_size=14, out_features=["stage1", "stage2"],
                              reshape_hidden_states=False)
        depth = DepthAnythingConfig(backbone_config=dinov2, neck_hidden_sizes=[16, 32], reassemble_factors=[2, 1],
                                    reassemble_hidden_size=32, fusion_hidden_size=16, head_hidden_size=8)
        DepthAnythingForDepthEstimation(depth).save_pretrained(refs.depth_map_model)
        DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                          do_pad=False).save_pretrained(refs.depth_map_model)
    marker.write_text(json.dumps(wanted))
    return refs
STYLE_MARKER = "instantid-tiny-style.json"


def build_tiny_style_adapter(out_dir: str | Path, config: TinyConfig = TinyConfig(), seed: int = 0) -> Path:
    """Write a tiny standard SDXL IP-Adapter for the tiny stack in the h94/IP-Adapter layout: ``sdxl_models/``
    with ``ip-adapter_sdxl.safetensors`` and ``.bin`` (``image_proj``: proj + norm, 4 tokens; ``ip_adapter``: every
    cross-attention layer) and ``image_encoder/`` (a CLIPVisionModelWithProjection). Returns ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from instantid.core.adapter import _cross_attention_layers
    from instantid.io.models import IMAGE_ENCODER_FOLDER, STYLE_FILENAMES, STYLE_SUBFOLDER

    out = Path(out_dir)
    marker = out / STYLE_MARKER
    wanted = {"config": config.__dict__ | {"block_out_channels": list(config.block_out_channels)}, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return out
    folder = out / STYLE_SUBFOLDER
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=48,
    ))
    with library_chatter():
        encoder.save_pretrained(folder / IMAGE_ENCODER_FOLDER)
    gen = torch.Generator().manual_seed(seed + 2)
    width, embed_dim, tokens = config.cross_attention_dim, encoder.config.projection_dim, 4
    state = {"image_proj": {
        "proj.weight": torch.randn(tokens * width, embed_dim, generator=gen) * embed_dim**-0.5,
        "proj.bias": torch.randn(tokens * width, generator=gen) * 0.1,
        "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width),
    }, "ip_adapter": {}}
    for n, _, hidden in _cross_attention_layers(tiny_unet(config)):
        for kind in ("k", "v"):
            state["ip_adapter"][f"{n}.to_{kind}_ip.weight"] = torch.randn(hidden, width, generator=gen) * width**-0.5
    save_file({f"{group}.{k}": v.contiguous() for group, part in state.items() for k, v in part.items()},
              str(folder / STYLE_FILENAMES[0]))
    torch.save(state, folder / STYLE_FILENAMES[1])
    marker.write_text(json.dumps(wanted))
    return out
