"""A tiny stand-in for the antelopev2 pack: two small ONNX files with the real files' signatures.

For tests and offline demos only: insightface's real loading and routing code reads them as it reads the
published pack, but what they compute is made up. The detector is deterministic so tests can predict its
answer: it reports a face wherever a 32x32 cell of its 640x640 input is white (one box per cell, 128 px
wide, centred on the cell's top-left corner where SCRFD puts stride-32 anchors) with fixed keypoints
around it. The recogniser is a random linear map of a 7x7 colour thumbnail of the aligned 112x112 crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from instantid.faces.antelopev2 import DETECTOR_FILE, RECOGNIZER_FILE

STRIDES = (8, 16, 32)
ANCHORS = 2  # SCRFD-10G bnkps has two anchors per location and stride
FACE_STRIDE = 32  # only this stride reports faces
BOX_HALF = 2.0  # box half-size, in stride units (64 px)
# Keypoint offsets from the anchor in stride units: eye, eye, nose, mouth corner, mouth corner.
KPS_OFFSETS = np.array([[-0.6, -0.5], [0.6, -0.5], [0.0, 0.0], [-0.5, 0.6], [0.5, 0.6]], dtype=np.float32)
_OPSET = [helper.make_opsetid("", 13)]


def _head(name: str, stride: int, channels: int, weight: float, bias: np.ndarray) -> tuple[list, list, str]:
    """Conv (kernel = stride = ``stride``) -> NHWC -> (candidates, channels // ANCHORS) rows."""
    w = np.full((channels, 3, stride, stride), weight, dtype=np.float32)
    inits = [
        numpy_helper.from_array(w, f"{name}_w"),
        numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
        numpy_helper.from_array(np.array([-1, channels // ANCHORS], dtype=np.int64), f"{name}_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_conv"],
                         kernel_shape=[stride, stride], strides=[stride, stride], name=f"{name}_conv"),
        helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1],
                         name=f"{name}_nhwc"),
        helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [f"{name}_rows"], name=f"{name}_rows"),
    ]
    return nodes, inits, f"{name}_rows"


def _detector() -> onnx.ModelProto:
    nodes: list = []
    inits: list = []
    outputs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride in STRIDES:
        live = stride == FACE_STRIDE
        # Mean of the normalised cell (-1 black .. +1 white) times 20, minus 10: a white cell scores ~1.
        gain = 20.0 / (3 * stride * stride) if live else 0.0
        score_bias = np.full(ANCHORS, -10.0 if live else -30.0)
        n, i, logits = _head(f"score{stride}", stride, ANCHORS, gain, score_bias)
        nodes += [*n, helper.make_node("Sigmoid", [logits], [f"score{stride}_out"], name=f"score{stride}_sig")]
        inits += i
        outputs["score"].append(f"score{stride}_out")
        n, i, rows = _head(f"bbox{stride}", stride, 4 * ANCHORS, 0.0, np.full(4 * ANCHORS, BOX_HALF))
        nodes, inits = nodes + n, inits + i
        outputs["bbox"].append(rows)
        n, i, rows = _head(f"kps{stride}", stride, 10 * ANCHORS, 0.0, np.tile(KPS_OFFSETS.reshape(-1), ANCHORS))
        nodes, inits = nodes + n, inits + i
        outputs["kps"].append(rows)
    widths = {"score": 1, "bbox": 4, "kps": 10}
    graph_outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name}", widths[kind]])
        for kind in ("score", "bbox", "kps")
        for name in outputs[kind]
    ]
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        graph_outputs, inits,
    )
    return helper.make_model(graph, opset_imports=_OPSET)


def _recognizer(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((147, 512)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(512).astype(np.float32), "fc_b"),
    ]
    # Node names must not start with "Sub"/"Mul": insightface would take it for an mxnet model and
    # change the input normalisation.
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16],
                         name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_glintr100",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])], inits,
    )
    return helper.make_model(graph, opset_imports=_OPSET)


def write_tiny_antelopev2(folder: str | Path, seed: int = 0) -> Path:
    """Write ``scrfd_10g_bnkps.onnx`` and ``glintr100.onnx`` stand-ins into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector(), str(folder / DETECTOR_FILE))
    onnx.save(_recognizer(seed), str(folder / RECOGNIZER_FILE))
    return folder
