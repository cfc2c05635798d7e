"""Encoding a call: the prompt (diffusers' ``encode_prompt``) and the faces (embedding -> Resampler tokens,
once)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from instantid.core.denoise import face_tokens
from instantid.errors import EmbeddingSpaceError, InvalidInputError
from instantid.pipelines.call import CallRequest, EmbeddingInput, Encoded, Person


def average_embeddings(image_embeds: EmbeddingInput, weights: Sequence[float] | None = None) -> torch.Tensor:
    """One identity from one or several reference embeddings: (E,) or (N, E) -> (1, E), weighted mean."""
    emb = torch.as_tensor(np.asarray(image_embeds) if not torch.is_tensor(image_embeds) else image_embeds)
    emb = emb.detach().to(torch.float32)
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise InvalidInputError(f"image_embeds must have shape (E,) or (N, E), got {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise InvalidInputError("image_embeds contains NaN or infinite values")
    if weights is None:
        return emb.mean(dim=0, keepdim=True)
    w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if w.shape[0] != emb.shape[0] or (w < 0).any() or w.sum() <= 0:
        raise InvalidInputError(
            f"need one non-negative weight per reference embedding ({emb.shape[0]}), with a positive sum"
        )
    return (w[:, None] * emb).sum(dim=0, keepdim=True) / w.sum()


class EncodeMixin:
    """Text and face encodings of one call."""

    def _people(self, req: CallRequest) -> list[Person]:
        """The identities of the call: the given list, or the single one of the published arguments."""
        if req.identities is not None:
            return list(req.identities)
        keypoints = req.keypoints[0] if isinstance(self.controlnet, MultiControlNetModel) else req.keypoints
        return [Person(req.image_embeds, keypoints, req.control_mask, req.image_embeds_weights)]

    def _face_tokens(self, person: Person, total: int, cfg: bool, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
        """One person's face tokens (B', Q, D); under guidance the negative half is the Resampler applied to a
        zero embedding, as published."""
        spec = self._require_adapter()
        emb = average_embeddings(person.image_embeds, person.weights)
        if emb.shape[1] != spec.embedding_dim:
            space = f" ({spec.embedding_space})" if spec.embedding_space else ""
            raise EmbeddingSpaceError(
                f"face embedding has {emb.shape[1]} values but the face adapter expects {spec.embedding_dim}"
                f"{space}: use the face model the adapter was trained with"
            )
        emb = emb.to(device=device, dtype=dtype).repeat(total, 1)
        if cfg:
            emb = torch.cat([torch.zeros_like(emb), emb])
        return face_tokens(self.unet, emb).to(device=device, dtype=dtype)

    def _encode(self, req: CallRequest) -> Encoded:
        """The text embeddings (from the prompt or as given) and every person's face tokens."""
        self._guidance_scale = req.guidance_scale
        self._clip_skip = req.clip_skip
        self._cross_attention_kwargs = req.cross_attention_kwargs
        self._interrupt = False
        if isinstance(req.prompt, str):
            batch = 1
        elif isinstance(req.prompt, list):
            batch = len(req.prompt)
        else:
            batch = req.prompt_embeds.shape[0]
        device = self._execution_device
        cfg = self.do_classifier_free_guidance
        text, negative, pooled, negative_pooled = self.encode_prompt(
            req.prompt, req.prompt_2, device, req.num_images_per_prompt, cfg, req.negative_prompt,
            req.negative_prompt_2, prompt_embeds=req.prompt_embeds, negative_prompt_embeds=req.negative_prompt_embeds,
            pooled_prompt_embeds=req.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=req.negative_pooled_prompt_embeds,
            lora_scale=(req.cross_attention_kwargs or {}).get("scale"), clip_skip=req.clip_skip,
        )
        total = batch * req.num_images_per_prompt
        tokens = tuple(self._face_tokens(p, total, cfg, device, text.dtype) for p in self._people(req))
        if cfg:
            text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        return Encoded(
            batch=batch, total=total, device=device, dtype=text.dtype,
            guess_mode=req.guess_mode or self.identitynet.config.global_pool_conditions,
            prompt_embeds=text.to(device), pooled=pooled.to(device), tokens=tokens,
            projection_dim=self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None else int(pooled.shape[-1]),
        )
