"""IdentityNet as a ComfyUI ControlNet: loading any size, and the InstantID specifics at sampling time.

The published IdentityNet (diffusers layout, SDXL size) loads through ComfyUI's own ControlNet loader. A
diffusers-layout ControlNet of a size ComfyUI does not list (our trained exports, the tiny test weights) is
converted here with ComfyUI's own key map, its configuration read from the tensor shapes, then handed to the
same loader. What InstantID adds at sampling time (:class:`IdentityNetControl`):

* its cross-attention context is the identity's face tokens, never the text: positive chunks get the tokens,
  negative chunks the Resampler's answer to a zero embedding (ComfyUI's ``crossattn_controlnet``, set for this
  net's own call only, so other ControlNets chained on the same conditioning keep reading the text);
* an optional region mask multiplies its residuals (resized bilinear to each residual, as published), so
  that it acts only on one face region (the "enhance non-face region" option, or one region per person).
"""

from __future__ import annotations

from pathlib import Path

import comfy.controlnet
import comfy.model_detection
import comfy.utils
import torch
import torch.nn.functional as F

from instantid.comfyui.patch import FaceRegionTokens, picture_mask
from instantid.errors import IncompatibleWeightsError, MissingWeightsError


def _diffusers_unet_config(sd: dict[str, torch.Tensor]) -> dict:
    """The ComfyUI ``unet_config`` of a diffusers-layout ControlNet, read from its tensor shapes."""
    count = comfy.model_detection.count_blocks
    keys = list(sd)
    model_channels = sd["conv_in.weight"].shape[0]
    num_res_blocks, channel_mult, depth = [], [], []
    for level in range(count(keys, "down_blocks.{}.")):
        resnets = count(keys, f"down_blocks.{level}.resnets.{{}}.")
        num_res_blocks.append(resnets)
        channel_mult.append(sd[f"down_blocks.{level}.resnets.0.conv2.weight"].shape[0] // model_channels)
        depth += [count(keys, f"down_blocks.{level}.attentions.{i}.transformer_blocks.{{}}.") for i in range(resnets)]
    return {
        "num_res_blocks": num_res_blocks, "channel_mult": channel_mult, "transformer_depth": depth,
        "transformer_depth_middle": count(keys, "mid_block.attentions.0.transformer_blocks.{}."),
        # A ControlNet has no output blocks; the key map still walks them.
        "transformer_depth_output": [0] * sum(n + 1 for n in num_res_blocks),
    }


def diffusers_to_ldm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-layout ControlNet state dict in ComfyUI's (ldm) names, every key accounted for."""
    names = comfy.utils.unet_to_diffusers(_diffusers_unet_config(sd))
    names["controlnet_mid_block.weight"] = "middle_block_out.0.weight"
    names["controlnet_mid_block.bias"] = "middle_block_out.0.bias"
    keys = list(sd)
    for i in range(comfy.model_detection.count_blocks(keys, "controlnet_down_blocks.{}.")):
        for kind in ("weight", "bias"):
            names[f"controlnet_down_blocks.{i}.{kind}"] = f"zero_convs.{i}.0.{kind}"
    hidden = comfy.model_detection.count_blocks(keys, "controlnet_cond_embedding.blocks.{}.")
    for kind in ("weight", "bias"):
        names[f"controlnet_cond_embedding.conv_in.{kind}"] = f"input_hint_block.0.{kind}"
        for i in range(hidden):
            names[f"controlnet_cond_embedding.blocks.{i}.{kind}"] = f"input_hint_block.{2 * (i + 1)}.{kind}"
        names[f"controlnet_cond_embedding.conv_out.{kind}"] = f"input_hint_block.{2 * (hidden + 1)}.{kind}"
    unknown = [k for k in sd if k not in names]
    if unknown:
        raise IncompatibleWeightsError(f"IdentityNet tensor {unknown[0]!r} has no place in a ComfyUI ControlNet")
    return {names[k]: v for k, v in sd.items()}


def load_identitynet(path: str | Path) -> comfy.controlnet.ControlNet:
    """An IdentityNet (or any SDXL-type ControlNet) file as a ComfyUI ControlNet, whatever its size."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"IdentityNet file not found: {path}")
    try:
        sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    except Exception as exc:  # safetensors and torch raise several types for a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IncompatibleWeightsError(f"cannot read IdentityNet {path.name}: {reason}") from exc
    diffusers = "controlnet_cond_embedding.conv_in.weight" in sd
    if diffusers and comfy.model_detection.unet_config_from_diffusers_unet(sd) is None:
        sd, diffusers = diffusers_to_ldm(sd), False  # a size missing from ComfyUI's list of diffusers configurations
    ldm = any(k in sd for k in ("zero_convs.0.0.weight", "control_model.zero_convs.0.0.weight"))
    net = comfy.controlnet.load_controlnet_state_dict(sd) if diffusers or ldm else None
    if not isinstance(net, comfy.controlnet.ControlNet) or not hasattr(net.control_model, "input_hint_block"):
        raise IncompatibleWeightsError(
            f"{path.name} is not an IdentityNet: expected an SDXL ControlNet (the published "
            "ControlNetModel/diffusion_pytorch_model.safetensors)"
        )
    return net


class IdentityNetControl(comfy.controlnet.ControlNet):
    """A ComfyUI ControlNet that reads one identity's face tokens as its context and acts inside its region."""

    faces: FaceRegionTokens  # its context, and its region (``faces.mask``; None = everywhere)

    @classmethod
    def adopt(cls, net: comfy.controlnet.ControlBase, faces: FaceRegionTokens) -> IdentityNetControl:
        """This class sharing ``net``'s model and settings (ComfyUI's own ``copy`` pattern)."""
        model = getattr(net, "control_model", None)
        if not isinstance(net, comfy.controlnet.ControlNet) or not hasattr(model, "input_hint_block"):
            raise IncompatibleWeightsError(
                f"the control_net input is a {type(net).__name__}, not an IdentityNet: load the IdentityNet "
                "(ControlNetModel/diffusion_pytorch_model.safetensors) with Load ControlNet Model or Load IdentityNet"
            )
        control = cls(None, global_average_pooling=net.global_average_pooling, load_device=net.load_device,
                      manual_cast_dtype=net.manual_cast_dtype)
        control.control_model = net.control_model
        control.control_model_wrapped = net.control_model_wrapped
        net.copy_to(control)
        control.faces = faces
        return control

    def copy(self) -> IdentityNetControl:
        return IdentityNetControl.adopt(self, self.faces)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        """This net's residuals with the face tokens as context, merged with those of the ControlNets chained
        before it, which read the conditioning unchanged."""
        previous = self.previous_controlnet
        before = None if previous is None else previous.get_control(x_noisy, t, cond, batched_number,
                                                                     transformer_options)
        tokens = self.faces.batch(transformer_options.get("cond_or_uncond", [0]), x_noisy.shape[0])
        # ComfyUI's own call merges with the previous net's answer: hand it the one computed above.
        self.previous_controlnet = None if before is None else _Computed(before)
        try:
            return super().get_control(x_noisy, t, {**cond, "crossattn_controlnet": tokens}, batched_number,
                                       transformer_options)
        finally:
            self.previous_controlnet = previous

    def control_merge(self, control, control_prev, output_dtype):
        if self.faces.mask is not None:
            # The largest residual has the latent's size; the mask goes to the picture first, as the keypoints do.
            latent = max(tuple(x.shape[-2:]) for xs in control.values() for x in xs if x is not None)
            mask = picture_mask(self.faces.mask, latent)
            control = {
                key: [None if x is None else x * F.interpolate(mask[None, None], x.shape[-2:], mode="bilinear").to(x)
                      for x in outputs]
                for key, outputs in control.items()
            }
        return super().control_merge(control, control_prev, output_dtype)


class _Computed(comfy.controlnet.ControlBase):
    """Stands in for the chained ControlNets during one IdentityNet call: their residuals, already computed."""

    def __init__(self, control: dict) -> None:
        super().__init__()
        self.control = control

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options) -> dict:
        return self.control


def with_identitynet(positive: list, negative: list, net: comfy.controlnet.ControlBase,
                     people: list[tuple[FaceRegionTokens, torch.Tensor]], strength: float,
                     window: tuple[float, float]) -> tuple[list, list]:
    """Copies of both CONDITIONING lists with IdentityNet chained after their ControlNets: one
    :class:`IdentityNetControl` per person (face tokens, region, keypoint IMAGE (1, H, W, 3)). Positive and
    negative share each chain, so ComfyUI batches them in one IdentityNet pass."""
    chains: dict[int, comfy.controlnet.ControlBase] = {}

    def chain(previous: comfy.controlnet.ControlBase | None) -> comfy.controlnet.ControlBase:
        for faces, picture in people:
            control = IdentityNetControl.adopt(net, faces).set_cond_hint(picture.movedim(-1, 1), strength, window)
            previous = control.set_previous_controlnet(previous)
        return previous

    out = []
    for conditioning in (positive, negative):
        entries = []
        for embeds, options in conditioning:
            options = options.copy()
            previous = options.get("control")
            if id(previous) not in chains:
                chains[id(previous)] = chain(previous)
            options["control"] = chains[id(previous)]
            options["control_apply_to_uncond"] = False
            entries.append([embeds, options])
        out.append(entries)
    return out[0], out[1]
