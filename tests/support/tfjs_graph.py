"""A small TF.js graph model written from scratch, for the TF.js loader's tests."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from monitor.training.tfjs_torch import MOVENET_FEED, MOVENET_STAGES


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _conv_attrs(stride: int, padding: str, fused: list[str] | None = None) -> dict:
    attrs = {
        "strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}},
        "padding": {"s": _b64(padding)},
        "data_format": {"s": _b64("NHWC")},
        "dilations": {"list": {"i": ["1", "1", "1", "1"]}},
    }
    if fused:
        attrs["fused_ops"] = {"list": {"s": [_b64(f) for f in fused]}}
    return attrs


def write_model(folder: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A small graph and its weights; returns the weights as the graph sees them (dequantised).

    Besides the nodes the loader test checks, it has MoveNet's feed node (an Identity after the
    input) and two stages under MoveNet's stage names, at strides 4 and 8, so that
    ``TFJSAppearanceNet`` and ``monitor sbi fit --arch movenet`` can run on it.
    """
    w = {
        "k1": rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32),
        "b1": rng.normal(0, 0.5, 4).astype(np.float32),
        "dk": rng.normal(0, 0.5, (3, 3, 4, 2)).astype(np.float32),  # channel multiplier 2: 8 channels out
        "db": rng.normal(0, 0.2, 8).astype(np.float32),
        "alpha": rng.uniform(0.05, 0.3, 8).astype(np.float32),
        "gain": rng.uniform(0.5, 1.5, (1, 1, 1, 8)).astype(np.float32),  # a 4-D NHWC constant
        "k2": rng.normal(0, 0.5, (1, 1, 8, 2)).astype(np.float32),
        "scale": np.array(0.5, np.float32),
        "axes": np.array([1, 2], np.int32),
        "axis_h": np.array([1], np.int32),
        "wc": rng.normal(0, 1, (6, 4)).astype(np.float32),  # a 2-D constant: broadcasts over NHWC's (W, C)
        "k3": rng.normal(0, 0.3, (3, 3, 8, 6)).astype(np.float32),
        "b3": rng.normal(0, 0.1, 6).astype(np.float32),
        "k4": rng.normal(0, 0.3, (3, 3, 6, 8)).astype(np.float32),
        # A classifier head on d1 (5x6x8 for a 10x11 input): 2x2 max-pool, flatten, two dense layers.
        "flat_shape": np.array([-1, 72], np.int32),
        "wf1": rng.normal(0, 0.3, (72, 5)).astype(np.float32),
        "bf1": rng.normal(0, 0.3, 5).astype(np.float32),
        "wf2": rng.normal(0, 0.5, (3, 5)).astype(np.float32),  # read transposed
    }
    blobs, specs, seen = [], [], {}
    for name, arr in w.items():
        spec = {"name": name, "shape": list(arr.shape), "dtype": "int32" if arr.dtype == np.int32 else "float32"}
        if name == "k1":  # float16, as TF.js stores most weights of the models on npm
            q = arr.astype(np.float16)
            seen[name] = q.astype(np.float32)
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(q.tobytes())
        elif name == "b1":  # uint8 affine
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255
            q = np.round((arr - lo) / scale).astype(np.uint8)
            seen[name] = (q.astype(np.float64) * scale + lo).astype(np.float32)
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
            blobs.append(q.tobytes())
        else:
            seen[name] = arr
            blobs.append(arr.tobytes())
        specs.append(spec)

    def node(name: str, op: str, inputs: list[str], attr: dict | None = None) -> dict:
        return {"name": name, "op": op, "input": inputs, "attr": attr or {}}

    nodes = [node(n, "Const", []) for n in w] + [
        node("x", "Placeholder", [], {"dtype": {"type": "DT_FLOAT"}}),
        node(MOVENET_FEED, "Identity", ["x"]),
        node("c1", "_FusedConv2D", [MOVENET_FEED, "k1", "b1"], _conv_attrs(2, "SAME", ["BiasAdd", "Relu6"])),
        node("d1", "FusedDepthwiseConv2dNative", ["c1", "dk", "db"], _conv_attrs(1, "SAME", ["BiasAdd"])),
        node("neg", "Sub", ["d1", "abs"]),  # listed before its input: the loader must order the graph itself
        node("abs", "Abs", ["d1"]),
        node("relu", "Relu", ["d1"]),
        node("prelu_neg", "Mul", ["neg", "alpha"]),
        node("prelu", "AddV2", ["relu", "prelu_neg"]),
        node("gained", "Mul", ["gain", "prelu"]),
        node("c2", "Conv2D", ["gained", "k2"], _conv_attrs(1, "VALID")),
        node("pooled", "Sum", ["c2", "axes"], {"keep_dims": {"b": False}}),
        node("out", "Mul", ["pooled", "scale"]),
        node("kept", "Sum", ["c2", "axes"], {"keep_dims": {"b": True}}),
        node("squeezed", "Squeeze", ["kept"], {"squeeze_dims": {"list": {"i": ["1", "2"]}}}),
        node("odd", "Erf", ["out"]),
        node("sum_h", "Sum", ["c2", "axis_h"], {"keep_dims": {"b": False}}),
        node("squeeze_c", "Squeeze", ["c2"], {"squeeze_dims": {"list": {"i": ["3"]}}}),
        node("times_wc", "Mul", ["c1", "wc"]),
        node("pool", "MaxPool", ["d1"], {**_conv_attrs(2, "SAME"), "ksize": {"list": {"i": ["1", "2", "2", "1"]}}}),
        node("flat", "Reshape", ["pool", "flat_shape"]),
        node("fc1", "_FusedMatMul", ["flat", "wf1", "bf1"], {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}}}),
        node("fc2", "MatMul", ["fc1", "wf2"], {"transpose_b": {"b": True}}),
        node("prob", "Softmax", ["fc2"]),
        node(MOVENET_STAGES[0], "_FusedConv2D", ["gained", "k3", "b3"], _conv_attrs(2, "SAME", ["BiasAdd", "Relu"])),
        node(MOVENET_STAGES[1], "Conv2D", [MOVENET_STAGES[0], "k4"], _conv_attrs(2, "SAME")),
    ]
    (folder / "model.json").write_text(json.dumps({
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": specs}],
    }))
    (folder / "group1-shard1of1.bin").write_bytes(b"".join(blobs))
    return seen
