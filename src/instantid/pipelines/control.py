"""Control images and masks: the keypoint pictures (IdentityNet first, then any extra ControlNets) and the
face-region masks at the output size."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

from instantid.errors import InvalidInputError
from instantid.pipelines.call import CallRequest, Encoded, MaskInput


class ControlMixin:
    """Control images and region masks of one call."""

    def _prepare_control_images(
        self, req: CallRequest, enc: Encoded
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Keypoint pictures (one per person, for IdentityNet) and the extra ControlNets' images, batched
        for the call; the output size defaults to the keypoint pictures' size."""
        # diffusers names the same helper differently in its text-to-image and image-to-image pipelines.
        prepare = self.prepare_control_image if hasattr(self, "prepare_control_image") else self.prepare_image

        def one(image: Any, net: torch.nn.Module) -> torch.Tensor:
            return prepare(
                image=image, width=req.width, height=req.height, batch_size=enc.total,
                num_images_per_prompt=req.num_images_per_prompt, device=enc.device, dtype=net.dtype,
                do_classifier_free_guidance=self.do_classifier_free_guidance, guess_mode=enc.guess_mode,
            )

        nets = self._nets()
        identity = tuple(one(p.keypoints, nets[0]) for p in self._people(req))
        if req.identities is None:
            extra_images = req.keypoints[1:] if len(nets) > 1 else []
        else:
            extra_images = req.keypoints or []
        extra = tuple(one(image, net) for image, net in zip(extra_images, nets[1:], strict=True))
        sizes = {tuple(image.shape[-2:]) for image in identity + extra}
        if len(sizes) != 1:
            raise InvalidInputError(
                f"the keypoint and control pictures have different sizes {sorted(sizes)}: give them one size"
            )
        return identity, extra

    @staticmethod
    def _face_mask_tensor(
        control_mask: MaskInput | None, height: int, width: int, device: torch.device, dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """A region mask as an (H, W) tensor in [0, 1] (first channel / 255, as published)."""
        if control_mask is None:
            return None
        if isinstance(control_mask, torch.Tensor):
            mask = control_mask.detach().float()
            mask = mask[0] if mask.ndim == 3 else mask
        else:
            image = control_mask if isinstance(control_mask, PIL.Image.Image) else PIL.Image.fromarray(
                np.asarray(control_mask).astype(np.uint8)
            )
            if image.size != (width, height):
                image = image.resize((width, height), PIL.Image.NEAREST)
            mask = torch.from_numpy(np.array(image.convert("RGB"))[:, :, 0].astype(np.float32)) / 255.0
        if tuple(mask.shape) != (height, width):
            raise InvalidInputError(f"control_mask is {tuple(mask.shape)}, expected ({height}, {width})")
        return mask.to(device=device, dtype=dtype)
