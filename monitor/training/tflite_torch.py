"""Load a float TFLite convolutional network as a trainable torch module.

MediaPipe's ``face_landmark.tflite`` is a face CNN trained on far more faces than any data we
can ship, and the only pretrained face network on disk (DETECTOR.md). ``tflite2onnx`` fails on
it, so this module reads the flatbuffer with the ``tflite`` schema package and rebuilds the
graph from the few operators such networks use: CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD,
MAX_POOL_2D, PAD and DEQUANTIZE (float16 weights). The torch module computes in NCHW, keeps the
weights as parameters (so the network can be fine-tuned), and can stop at any named tensor.

Training only: ``tflite`` is pinned with the project (docs/dependencies.md), and the service
never imports this module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def face_landmark_path() -> Path:
    """The face_landmark model MediaPipe bundles (192x192 RGB in [0, 1])."""
    import mediapipe

    path = Path(mediapipe.__file__).parent / "modules" / "face_landmark" / "face_landmark.tflite"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this mediapipe install (0.10.21 bundles it)")
    return path


def _same_pad(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: (before, after), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TFLiteNet(nn.Module):
    """A float TFLite graph of the supported operators, executed in torch (NCHW).

    ``forward(x, outputs)`` takes ``x`` as (N, C, H, W) float, the scale the model expects,
    and returns the tensors named in ``outputs`` (the graph outputs by default), NCHW. SAME
    padding is recomputed per call, so other input sizes work as far as the branches of each
    residual block still agree in size (for face_landmark: up to ``p_re_lu_12`` at 112 px, all
    of it at 192 px). Checked against the TFLite interpreter on face_landmark only: operator
    options that model does not use (fused RELU, SAME pooling, constant ADD operands) follow
    the TFLite reference semantics but are untested here.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        import tflite  # the schema bindings only; training-time dependency

        model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        if model.SubgraphsLength() != 1:
            raise ValueError(f"{path}: {model.SubgraphsLength()} subgraphs; one is supported")
        g = model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.INT32: np.int32}

        def const(i: int) -> np.ndarray | None:
            t = g.Tensors(i)
            buf = model.Buffers(t.Buffer())
            if buf is None or buf.DataLength() == 0:
                return None
            return np.frombuffer(buf.DataAsNumpy().tobytes(), dtypes[t.Type()]).reshape(t.ShapeAsNumpy())

        self.tensor_names = [g.Tensors(i).Name().decode() for i in range(g.TensorsLength())]
        self.inputs = [self.tensor_names[i] for i in g.InputsAsNumpy()]
        self.outputs = [self.tensor_names[i] for i in g.OutputsAsNumpy()]
        self.params = nn.ParameterDict()
        self.ops: list[tuple[str, list[str], str, dict]] = []
        consts: dict[str, np.ndarray] = {}
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            ins = [self.tensor_names[i] for i in op.InputsAsNumpy() if i >= 0]
            out = self.tensor_names[int(op.OutputsAsNumpy()[0])]
            for i in op.InputsAsNumpy():
                if i >= 0 and (c := const(int(i))) is not None:
                    consts[self.tensor_names[i]] = c
            if kind == "DEQUANTIZE":  # float16 constant -> float32 parameter under the output's name
                consts[out] = consts.pop(ins[0]).astype(np.float32)
                continue
            opts: dict = {}
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                o = (tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)()
                o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                opts = {"stride": (o.StrideH(), o.StrideW()), "dilation": (o.DilationHFactor(), o.DilationWFactor()),
                        "same": o.Padding() == tflite.Padding.SAME, "act": o.FusedActivationFunction()}
            elif kind == "MAX_POOL_2D":
                o = tflite.Pool2DOptions()
                o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                opts = {"stride": (o.StrideH(), o.StrideW()), "k": (o.FilterHeight(), o.FilterWidth()),
                        "same": o.Padding() == tflite.Padding.SAME, "act": o.FusedActivationFunction()}
            elif kind == "ADD":
                o = tflite.AddOptions()
                o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                opts = {"act": o.FusedActivationFunction()}
            elif kind == "PAD":
                opts = {"pads": consts[ins[1]].astype(int).tolist()}
                ins = ins[:1]
            elif kind != "PRELU":
                raise NotImplementedError(f"{path}: operator {kind} is not supported")
            if opts.get("act", 0) not in (0, 1):  # NONE, RELU
                raise NotImplementedError(f"{path}: fused activation {opts['act']} in {kind}")
            self.ops.append((kind, ins, out, opts))
        # Weights to torch layout, as parameters keyed by a sanitised tensor name.
        self._key: dict[str, str] = {}
        for kind, ins, _out, _opts in self.ops:
            for j, name in enumerate(ins):
                if name not in consts or name in self._key:
                    continue
                w = consts[name]
                if kind == "CONV_2D" and j == 1:
                    w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
                elif kind == "DEPTHWISE_CONV_2D" and j == 1:
                    w = w.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
                elif kind == "PRELU" or kind == "ADD":
                    # A per-channel (..., C) or scalar constant broadcasts over NHWC's last axis.
                    if w.size not in (1, w.shape[-1] if w.ndim else 1):
                        raise NotImplementedError(f"{path}: {kind} constant {name} of shape {w.shape} (only per-channel)")
                    w = w.reshape(-1)[None, :, None, None] if w.ndim > 0 else w
                key = re.sub(r"\W", "_", name)
                if key in self.params:
                    raise ValueError(f"{path}: tensor names {name!r} and another both map to parameter {key!r}")
                self._key[name] = key
                self.params[key] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, np.float32)))

    def _get(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        return env[name] if name in env else self.params[self._key[name]]

    def forward(self, x: torch.Tensor, outputs: Sequence[str] | None = None) -> list[torch.Tensor]:
        wanted = list(outputs or self.outputs)
        missing = set(wanted) - set(self.tensor_names)
        if missing:
            raise KeyError(f"no tensors named {sorted(missing)}")
        env: dict[str, torch.Tensor] = {self.inputs[0]: x}
        left = set(wanted) - set(env)
        for kind, ins, out, o in self.ops:
            if not left:
                break
            a = self._get(env, ins[0])
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = self._get(env, ins[1])
                b = self._get(env, ins[2]) if len(ins) > 2 else None
                pad: tuple[int, int] | int = 0
                if o["same"]:
                    ph = _same_pad(a.shape[2], w.shape[2], o["stride"][0], o["dilation"][0])
                    pw = _same_pad(a.shape[3], w.shape[3], o["stride"][1], o["dilation"][1])
                    if ph[0] == ph[1] and pw[0] == pw[1]:
                        pad = (ph[0], pw[0])  # symmetric: let the convolution pad (no copy)
                    else:
                        a = F.pad(a, (*pw, *ph))
                groups = a.shape[1] if kind == "DEPTHWISE_CONV_2D" else 1
                y = F.conv2d(a, w, b, o["stride"], pad, o["dilation"], groups)
            elif kind == "PRELU":
                alpha = self._get(env, ins[1])
                y = F.prelu(a, alpha.reshape(-1))  # one ONNX PRelu, not a Where
            elif kind == "ADD":
                y = a + self._get(env, ins[1])
            elif kind == "MAX_POOL_2D":
                if o["same"]:
                    ph = _same_pad(a.shape[2], o["k"][0], o["stride"][0], 1)
                    pw = _same_pad(a.shape[3], o["k"][1], o["stride"][1], 1)
                    a = F.pad(a, (*pw, *ph), value=float("-inf"))
                y = F.max_pool2d(a, o["k"], o["stride"])
            else:  # PAD, NHWC paddings -> F.pad's last-dimension-first order in NCHW
                (n0, n1), (h0, h1), (w0, w1), (c0, c1) = o["pads"]
                y = F.pad(a, (w0, w1, h0, h1, c0, c1, n0, n1))
            if o.get("act") == 1:
                y = torch.relu(y)
            env[out] = y
            left.discard(out)
        return [env[n] for n in wanted]


class FaceMeshAppearanceNet(nn.Module):
    """The appearance branch on MediaPipe's pretrained face_landmark trunk, for fine-tuning.

    Reads the same 112 px crop as ``nets.AppearanceNet`` ([0, 255] RGB, NCHW) and returns the
    same pair: a fake logit and a 28x28 blend-boundary map. The trunk runs up to the 7x7x128
    stage (the 12x12 stage of the native 192 px input); the logit reads that stage and the
    28x28x32 one, mean- and max-pooled; the boundary map is read from the 28x28 stage.
    """

    TRUNK_OUT = ("p_re_lu_6", "p_re_lu_12")  # 28x28x32 and 7x7x128 at 112 px

    def __init__(self, in_ch: int = 3, path: Path | None = None) -> None:
        super().__init__()
        if in_ch != 3:
            raise ValueError("the face_landmark trunk reads one RGB frame")
        self.trunk = TFLiteNet(path or face_landmark_path())
        self.head = nn.Linear(2 * (32 + 128), 1)
        self.boundary = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid, deep = self.trunk(x / 255.0, self.TRUNK_OUT)
        return two_stage_heads(self.head, self.boundary, mid, deep)


def two_stage_heads(head: nn.Module, boundary: nn.Module, mid: torch.Tensor, deep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The appearance outputs of a pretrained trunk: a fake logit from the mean- and max-pooled
    shallow (``mid``, 28x28) and deep stages, and the blend-boundary map from the shallow one."""
    pooled = torch.cat([mid.mean(dim=(2, 3)), deep.mean(dim=(2, 3)), mid.amax(dim=(2, 3)), deep.amax(dim=(2, 3))], dim=1)
    return head(pooled).squeeze(1), boundary(mid).squeeze(1)
