"""Face analysis with insightface's antelopev2 pack, exactly as the published InstantID pipeline uses it.

Only two of the pack's five files are needed: the SCRFD-10G detector with keypoints and the glintr100
ArcFace recogniser. The published code loads the whole pack through ``FaceAnalysis`` and, when
``glintr100.onnx`` is missing, fails later with ``KeyError: 'embedding'``; here the two files are found
up front and a missing one is a :class:`MissingWeightsError` that says where to get it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from instantid.errors import IncompatibleWeightsError, MissingWeightsError
from instantid.faces.arcface import ArcFaceRecognizer, cosine_distance, load_insightface_model
from instantid.faces.base import SPACE_ANTELOPEV2, Face, FaceAnalyzer, pad_image

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
ENV_VAR = "INSTANTID_ANTELOPEV2"
DEFAULT_ROOT = Path("~/.insightface/models/antelopev2")
DET_SIZE = (640, 640)  # the published pipeline's detector input
PAD_FRACTION = 0.25


# The Hub copy of insightface's antelopev2 pack that PuLID, the Kolors face adapters and many InstantID
# installers download (`instantid download` fetches it); its files at the repository root, unzipped.
DEFAULT_ANTELOPEV2_REPO = "DIAMONIK7777/antelopev2"
ANTELOPEV2_REPO_ENV = "INSTANTID_ANTELOPEV2_REPO"


def antelopev2_repo(override: str | None = None) -> str:
    """The repository antelopev2 comes from: ``override``, else ``$INSTANTID_ANTELOPEV2_REPO``, else the default."""
    return override or os.environ.get(ANTELOPEV2_REPO_ENV) or DEFAULT_ANTELOPEV2_REPO


def cached_antelopev2() -> Path | None:
    """The Hugging Face cache folder holding both antelopev2 files from the configured repository (its ``main``
    snapshot, as ``instantid download`` leaves it), or ``None``. Reads the cache only; never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(antelopev2_repo(), name) for name in (DETECTOR_FILE, RECOGNIZER_FILE)]
    if not all(isinstance(path, str) for path in found):
        return None
    folders = {Path(str(path)).parent for path in found}
    return folders.pop() if len(folders) == 1 else None


def candidate_folders(root: str | Path | None = None) -> list[Path]:
    """Folders searched, in order: ``root`` (or ``$INSTANTID_ANTELOPEV2`` and ``~/.insightface``), each
    also as ``<dir>/antelopev2`` and ``<dir>/antelopev2/antelopev2`` (the zip sometimes unpacks nested); without
    ``root``, last, the Hugging Face cache's copy that ``instantid download`` leaves."""
    if root is not None:
        bases = [Path(root)]
    else:
        bases = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
        bases.append(DEFAULT_ROOT)
    folders: list[Path] = []
    for base in bases:
        base = base.expanduser()
        for folder in (base, base / "antelopev2", base / "antelopev2" / "antelopev2"):
            if folder not in folders:
                folders.append(folder)
    if root is None:
        cached = cached_antelopev2()
        if cached is not None:
            folders.append(cached)
    return folders


def find_antelopev2(root: str | Path | None = None) -> Path | None:
    """The first searched folder that holds both needed files, or ``None``."""
    for folder in candidate_folders(root):
        if (folder / DETECTOR_FILE).is_file() and (folder / RECOGNIZER_FILE).is_file():
            return folder
    return None


def require_antelopev2(root: str | Path | None = None) -> Path:
    folder = find_antelopev2(root)
    if folder is None:
        searched = ", ".join(str(f) for f in candidate_folders(root))
        raise MissingWeightsError(
            f"antelopev2 face model not found: need {DETECTOR_FILE} and {RECOGNIZER_FILE} in one folder "
            f"(searched {searched}). They come from insightface's antelopev2 pack: run `instantid download`, or "
            f"unzip antelopev2.zip by hand and pass its folder with --antelopev2-root or ${ENV_VAR}"
        )
    return folder


class AntelopeV2Analyzer(FaceAnalyzer):
    """SCRFD-10G detection at 640x640 and glintr100 ArcFace embeddings (raw, not normalised)."""

    space = SPACE_ANTELOPEV2
    embedding_dim = 512
    metric = "cosine distance (1 - cosine similarity)"
    # ArcFace models separate people at a cosine similarity of about 0.28-0.4; 0.35 similarity (distance
    # 0.65) favours rejecting look-alikes.
    same_person_threshold = 0.65

    def __init__(
        self,
        root: str | Path | None = None,
        det_size: tuple[int, int] = DET_SIZE,
        det_thresh: float = 0.5,
        providers: Sequence[str] | None = None,
    ):
        from insightface.model_zoo.scrfd import SCRFD

        self.folder = require_antelopev2(root)
        self.detector = load_insightface_model(self.folder / DETECTOR_FILE, providers, SCRFD)
        self.recognizer = ArcFaceRecognizer(self.folder / RECOGNIZER_FILE, providers)
        if not self.detector.use_kps:
            raise IncompatibleWeightsError(f"{self.folder / DETECTOR_FILE} predicts no keypoints")
        if self.recognizer.embedding_dim != self.embedding_dim:
            raise IncompatibleWeightsError(
                f"{self.folder / RECOGNIZER_FILE} gives {self.recognizer.embedding_dim}-d embeddings, "
                "antelopev2's glintr100 gives 512"
            )
        # A single detector size: without it insightface 2.x also runs a 128x128 pass and merges boxes.
        self.detector.prepare(0, input_size=det_size, det_thresh=det_thresh)
        self._settings = (tuple(det_size), float(det_thresh))

    def _memo_key(self) -> tuple:
        return ("antelopev2", str(self.folder.resolve()), *self._settings)

    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine_distance(a, b)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface models take OpenCV's BGR order
        boxes, kpss = self.detector.detect(bgr)
        if len(boxes) == 0:
            # Tight crops: the detector needs context around the face.
            padded, dx, dy = pad_image(bgr, PAD_FRACTION)
            boxes, kpss = self.detector.detect(padded)
            offset = np.array([dx, dy], dtype=np.float32)
            boxes = boxes.copy()
            boxes[:, 0:4] -= np.tile(offset, 2)
            kpss = kpss - offset
        return [self._describe(bgr, box, kps) for box, kps in zip(boxes, kpss, strict=True)]

    def _describe(self, bgr: np.ndarray, box: np.ndarray, kps: np.ndarray) -> Face:
        # The published pipeline's alignment and embedding: norm_crop onto ArcFace's template, get_feat.
        embedding = self.recognizer.embed(bgr, kps)
        h, w = bgr.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        bbox = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
        return Face(bbox=bbox, score=float(box[4]), kps=np.asarray(kps, dtype=np.float32),
                    embedding=embedding, space=self.space)
