"""Prompt alignment: CLIP score (Hessel et al., 2021), 100 x cosine(image, text), with open_clip.

open_clip is optional and its weights are never downloaded here: the score runs only when the package is
installed and a local checkpoint is given (``--clip-weights`` or ``$INSTANTID_CLIP_WEIGHTS``); otherwise
the evaluation says why it was skipped instead of failing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from PIL import Image

from instantid.errors import IncompatibleWeightsError, MissingWeightsError

DEFAULT_CLIP_MODEL = "ViT-B-32"
NO_WEIGHTS = "skipped: no CLIP weights (give --clip-weights PATH to a local open_clip checkpoint)"
NO_OPEN_CLIP = "skipped: open_clip is not installed (pip install open_clip_torch)"


class ClipScorer:
    """Scores image/prompt pairs with a local open_clip model."""

    def __init__(self, weights: Path, model_name: str = DEFAULT_CLIP_MODEL) -> None:
        import open_clip
        import torch

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
        except Exception as exc:  # open_clip raises plain RuntimeError/KeyError for mismatched checkpoints
            raise IncompatibleWeightsError(f"cannot load CLIP weights {weights} as {model_name}: {exc}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.name = f"open_clip:{model_name}:{weights.name}"
        self._torch = torch

    def score(self, image: Image.Image, text: str) -> float:
        torch = self._torch
        with torch.no_grad():
            image_features = self.model.encode_image(self.preprocess(image.convert("RGB"))[None])
            text_features = self.model.encode_text(self.tokenizer([text]))
            cosine = torch.nn.functional.cosine_similarity(image_features, text_features).item()
        return 100.0 * max(cosine, 0.0)


def load_clip_scorer(
    weights: str | Path | None = None, model_name: str = DEFAULT_CLIP_MODEL
) -> tuple[ClipScorer | None, str]:
    """``(scorer, "ok")`` or ``(None, reason it is skipped)``; a named weights file that is missing is an error."""
    weights = weights or os.environ.get("INSTANTID_CLIP_WEIGHTS") or None
    if weights is None:
        return None, NO_WEIGHTS
    path = Path(weights)
    if not path.is_file():
        raise MissingWeightsError(f"CLIP weights not found: {path}")
    if importlib.util.find_spec("open_clip") is None:
        return None, NO_OPEN_CLIP
    return ClipScorer(path, model_name), "ok"
