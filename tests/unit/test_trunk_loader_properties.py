"""The pretrained trunks' loaders, monitor.training.tfjs_torch and monitor.training.tflite_torch:
promises of their docstrings that a mutation audit found unchecked (operators and weight formats
the bundled models do not use)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.training.tfjs_torch import TFJSNet, load_weights


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _graph(folder: Path, nodes: list[dict], weights: dict[str, tuple[np.ndarray, dict | None, str]]) -> Path:
    """A TF.js graph model: ``weights`` maps a Const name to (stored array, quantization, dtype)."""
    specs, blobs = [], []
    for name, (arr, q, dtype) in weights.items():
        spec = {"name": name, "shape": list(arr.shape), "dtype": dtype}
        if q:
            spec["quantization"] = q
        specs.append(spec)
        blobs.append(arr.tobytes())
    consts = [{"name": n, "op": "Const", "input": [], "attr": {}} for n in weights]
    x = {"name": "x", "op": "Placeholder", "input": [], "attr": {"dtype": {"type": "DT_FLOAT"}}}
    (folder / "model.json").write_text(json.dumps({
        "format": "graph-model", "modelTopology": {"node": [x, *consts, *nodes]},
        "weightsManifest": [{"paths": ["w.bin"], "weights": specs}],
    }))
    (folder / "w.bin").write_bytes(b"".join(blobs))
    return folder / "model.json"


def _node(name: str, op: str, inputs: list[str], attr: dict | None = None) -> dict:
    return {"name": name, "op": op, "input": inputs, "attr": attr or {}}


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1) if t.dim() == 4 else t.detach().numpy()


# --- weights --------------------------------------------------------------------------------


def test_quantised_integer_weights_are_rounded_back_as_tfjs_does(tmp_path: Path) -> None:
    q = np.array([0, 1, 3, 5, 7], np.uint8)  # * 0.5 + 0.2: 0.2, 0.7, 1.7, 2.7, 3.7
    path = _graph(tmp_path, [], {"ints": (q, {"dtype": "uint8", "scale": 0.5, "min": 0.2}, "int32")})
    _, w = load_weights(path)
    assert w["ints"].dtype == np.int32 and w["ints"].tolist() == [0, 1, 2, 3, 4]


def test_uint16_quantised_weights_are_unsigned(tmp_path: Path) -> None:
    q = np.array([0, 1000, 40000, 65535], np.uint16)
    path = _graph(tmp_path, [], {"w": (q, {"dtype": "uint16", "scale": 0.001, "min": -1.0}, "float32")})
    _, w = load_weights(path)
    np.testing.assert_allclose(w["w"], q.astype(np.float64) * 0.001 - 1.0, rtol=1e-6)


def test_a_shard_shorter_than_its_manifest_is_refused(tmp_path: Path) -> None:
    path = _graph(tmp_path, [], {"w": (np.arange(6, dtype=np.float32), None, "float32")})
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:-4])
    with pytest.raises(ValueError):
        load_weights(path)


def test_a_graph_with_two_inputs_is_refused(tmp_path: Path) -> None:
    path = _graph(tmp_path, [_node("y", "Placeholder", [], {"dtype": {"type": "DT_FLOAT"}})], {})
    with pytest.raises(ValueError, match="expected one input"):
        TFJSNet(path)


# --- operators ------------------------------------------------------------------------------


def test_a_4d_constant_broadcasts_over_height_and_width_as_in_nhwc(tmp_path: Path) -> None:
    g = np.random.default_rng(0).normal(size=(1, 2, 3, 4)).astype(np.float32)  # NHWC, H != W
    path = _graph(tmp_path, [_node("y", "Mul", ["x", "g"])], {"g": (g, None, "float32")})
    x = np.random.default_rng(1).normal(size=(2, 2, 3, 4)).astype(np.float32)
    got = TFJSNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["y"])["y"]
    np.testing.assert_allclose(_nhwc(got), x * g, rtol=1e-6)


def test_softmax_of_a_4d_tensor_is_over_channels(tmp_path: Path) -> None:
    path = _graph(tmp_path, [_node("y", "Softmax", ["x"])], {})
    x = np.random.default_rng(2).normal(size=(1, 3, 3, 4)).astype(np.float32)
    got = _nhwc(TFJSNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["y"])["y"])
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=-1, keepdims=True), rtol=1e-5)


def test_maximum_and_minimum(tmp_path: Path) -> None:
    c = np.array(0.25, np.float32)
    path = _graph(tmp_path, [_node("hi", "Maximum", ["x", "c"]), _node("lo", "Minimum", ["x", "c"])], {"c": (c, None, "float32")})
    x = np.random.default_rng(3).normal(size=(1, 2, 2, 3)).astype(np.float32)
    out = TFJSNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["hi", "lo"])
    np.testing.assert_allclose(_nhwc(out["hi"]), np.maximum(x, 0.25))
    np.testing.assert_allclose(_nhwc(out["lo"]), np.minimum(x, 0.25))


def test_a_cast_to_anything_but_float_is_refused(tmp_path: Path) -> None:
    path = _graph(tmp_path, [_node("y", "Cast", ["x"], {"DstT": {"type": "DT_INT32"}})], {})
    with pytest.raises(NotImplementedError, match="DT_INT32"):
        TFJSNet(path)(torch.rand(1, 3, 2, 2), ["y"])


def test_reducing_height_and_channels_leaves_width(tmp_path: Path) -> None:
    axes = np.array([1, 3], np.int32)
    path = _graph(tmp_path, [_node("y", "Sum", ["x", "axes"], {"keep_dims": {"b": False}})], {"axes": (axes, None, "int32")})
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 4)).astype(np.float32)
    got = TFJSNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["y"])["y"]
    np.testing.assert_allclose(got.numpy(), x.sum(axis=(1, 3)), rtol=1e-5, atol=1e-5)


def test_matmul_reads_its_first_operand_transposed_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 2)).astype(np.float32)
    path = _graph(tmp_path, [_node("flat", "Reshape", ["x", "shape"]), _node("y", "MatMul", ["a", "flat"], {"transpose_a": {"b": True}})],
                  {"a": (a, None, "float32"), "shape": (np.array([3, 4], np.int32), None, "int32")})
    x = rng.normal(size=(1, 1, 3, 4)).astype(np.float32)  # NHWC, flattened to (3, 4)
    got = TFJSNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["y"])["y"]
    np.testing.assert_allclose(got.detach().numpy(), a.T @ x.reshape(3, 4), rtol=1e-5, atol=1e-6)


# --- the appearance heads on pretrained trunks ----------------------------------------------


def test_two_stage_heads_pool_both_stages_by_mean_and_max() -> None:
    from monitor.training.tflite_torch import two_stage_heads

    torch.manual_seed(0)
    mid, deep = torch.randn(2, 3, 28, 28), torch.randn(2, 5, 7, 7)
    head, boundary = torch.nn.Linear(16, 1), torch.nn.Conv2d(3, 1, 1)
    logit, bmap = two_stage_heads(head, boundary, mid, deep)
    pooled = torch.cat([mid.mean((2, 3)), deep.mean((2, 3)), mid.amax((2, 3)), deep.amax((2, 3))], 1)
    assert torch.allclose(logit, head(pooled).squeeze(1))
    assert torch.allclose(bmap, boundary(mid).squeeze(1))
    # The boundary map is trained through the shallow stage.
    mid.requires_grad_(True)
    _, bmap = two_stage_heads(head, boundary, mid, deep)
    bmap.sum().backward()
    assert mid.grad is not None and mid.grad.abs().sum() > 0


def test_face_landmark_trunk_reads_the_crop_scaled_to_0_1() -> None:
    from monitor.training.tflite_torch import FaceMeshAppearanceNet, two_stage_heads

    torch.manual_seed(0)
    model = FaceMeshAppearanceNet().eval()
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        logit, bmap = model(x)
        mid, deep = model.trunk(x / 255.0, model.TRUNK_OUT)
        want_logit, want_map = two_stage_heads(model.head, model.boundary, mid, deep)
    assert torch.allclose(logit, want_logit) and torch.allclose(bmap, want_map)


# --- tflite: a hand-built model of the operator options face_landmark does not use -------------

def _build_tflite(conv_w: np.ndarray, conv_b: np.ndarray, pads: list[list[int]], act: int = 1) -> bytes:
    """A float TFLite model: input (1, 5, 6, 2) -> CONV_2D 3x3 SAME (fused ``act``) -> MAX_POOL_2D 2x2/2 SAME -> PAD."""
    import flatbuffers
    import tflite
    from tflite import BuiltinOperator as BO  # noqa: N814
    from tflite import BuiltinOptions as BOpt  # noqa: N814
    from tflite import TensorType as TT  # noqa: N814

    b = flatbuffers.Builder(1024)
    datas = [None, conv_w.astype(np.float32), conv_b.astype(np.float32), np.array(pads, np.int32)]
    buf_offs = []
    for d in datas:
        if d is None:
            tflite.BufferStart(b); buf_offs.append(tflite.BufferEnd(b)); continue
        raw = d.tobytes()
        vec = b.CreateByteVector(raw)
        tflite.BufferStart(b); tflite.BufferAddData(b, vec); buf_offs.append(tflite.BufferEnd(b))
    # tensors: 0 input, 1 w, 2 b, 3 conv out, 4 pool out, 5 pads, 6 pad out
    specs = [("input", (1, 5, 6, 2), TT.FLOAT32, 0), ("w", conv_w.shape, TT.FLOAT32, 1), ("b", conv_b.shape, TT.FLOAT32, 2),
             ("conv", (1, 5, 6, 3), TT.FLOAT32, 0), ("pool", (1, 3, 3, 3), TT.FLOAT32, 0), ("pads", (4, 2), TT.INT32, 3),
             ("padded", (1, 4, 5, 3), TT.FLOAT32, 0)]
    t_offs = []
    for name, shape, tt, bi in specs:
        n = b.CreateString(name)
        tflite.TensorStartShapeVector(b, len(shape))
        for s in reversed(shape): b.PrependInt32(int(s))
        sh = b.EndVector()
        tflite.TensorStart(b); tflite.TensorAddShape(b, sh); tflite.TensorAddType(b, tt); tflite.TensorAddBuffer(b, bi); tflite.TensorAddName(b, n)
        t_offs.append(tflite.TensorEnd(b))
    def ivec(start, xs):
        start(b, len(xs))
        for x in reversed(xs): b.PrependInt32(x)
        return b.EndVector()
    # options
    tflite.Conv2DOptionsStart(b); tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME); tflite.Conv2DOptionsAddStrideW(b, 1); tflite.Conv2DOptionsAddStrideH(b, 1)
    tflite.Conv2DOptionsAddDilationWFactor(b, 1); tflite.Conv2DOptionsAddDilationHFactor(b, 1); tflite.Conv2DOptionsAddFusedActivationFunction(b, act)
    conv_opt = tflite.Conv2DOptionsEnd(b)
    tflite.Pool2DOptionsStart(b); tflite.Pool2DOptionsAddPadding(b, tflite.Padding.SAME); tflite.Pool2DOptionsAddStrideW(b, 2); tflite.Pool2DOptionsAddStrideH(b, 2)
    tflite.Pool2DOptionsAddFilterWidth(b, 2); tflite.Pool2DOptionsAddFilterHeight(b, 2); tflite.Pool2DOptionsAddFusedActivationFunction(b, 0)
    pool_opt = tflite.Pool2DOptionsEnd(b)
    tflite.PadOptionsStart(b); pad_opt = tflite.PadOptionsEnd(b)
    ops = []
    for opcode, ins, outs, otype, oo in ((0, [0, 1, 2], [3], BOpt.Conv2DOptions, conv_opt), (1, [3], [4], BOpt.Pool2DOptions, pool_opt), (2, [4, 5], [6], BOpt.PadOptions, pad_opt)):
        iv = ivec(tflite.OperatorStartInputsVector, ins); ov = ivec(tflite.OperatorStartOutputsVector, outs)
        tflite.OperatorStart(b); tflite.OperatorAddOpcodeIndex(b, opcode); tflite.OperatorAddInputs(b, iv); tflite.OperatorAddOutputs(b, ov)
        tflite.OperatorAddBuiltinOptionsType(b, otype); tflite.OperatorAddBuiltinOptions(b, oo)
        ops.append(tflite.OperatorEnd(b))
    tflite.SubGraphStartTensorsVector(b, len(t_offs))
    for t in reversed(t_offs): b.PrependUOffsetTRelative(t)
    tv = b.EndVector()
    tflite.SubGraphStartOperatorsVector(b, len(ops))
    for o in reversed(ops): b.PrependUOffsetTRelative(o)
    opv = b.EndVector()
    iv = ivec(tflite.SubGraphStartInputsVector, [0]); ov = ivec(tflite.SubGraphStartOutputsVector, [6])
    tflite.SubGraphStart(b); tflite.SubGraphAddTensors(b, tv); tflite.SubGraphAddOperators(b, opv); tflite.SubGraphAddInputs(b, iv); tflite.SubGraphAddOutputs(b, ov)
    sg = tflite.SubGraphEnd(b)
    codes = []
    for code in (BO.CONV_2D, BO.MAX_POOL_2D, BO.PAD):
        tflite.OperatorCodeStart(b); tflite.OperatorCodeAddBuiltinCode(b, code); tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127)); tflite.OperatorCodeAddVersion(b, 1)
        codes.append(tflite.OperatorCodeEnd(b))
    tflite.ModelStartOperatorCodesVector(b, len(codes))
    for c in reversed(codes): b.PrependUOffsetTRelative(c)
    cv = b.EndVector()
    tflite.ModelStartSubgraphsVector(b, 1); b.PrependUOffsetTRelative(sg); sv = b.EndVector()
    tflite.ModelStartBuffersVector(b, len(buf_offs))
    for o in reversed(buf_offs): b.PrependUOffsetTRelative(o)
    bv = b.EndVector()
    tflite.ModelStart(b); tflite.ModelAddVersion(b, 3); tflite.ModelAddOperatorCodes(b, cv); tflite.ModelAddSubgraphs(b, sv); tflite.ModelAddBuffers(b, bv)
    m = tflite.ModelEnd(b)
    b.Finish(m, file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("act", [0, 1])
def test_fused_relu_same_pooling_and_pad_match_the_tflite_interpreter(tmp_path: Path, act: int) -> None:
    """CONV_2D (SAME, fused RELU or none) -> MAX_POOL_2D (SAME, pads the bottom row) -> PAD
    (unequal H and W paddings), against Google's interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    from monitor.training.tflite_torch import TFLiteNet

    rng = np.random.default_rng(0)
    path = tmp_path / "m.tflite"
    path.write_bytes(_build_tflite(rng.normal(size=(3, 3, 3, 2)), rng.normal(size=3), [[0, 0], [1, 0], [0, 2], [0, 0]], act))
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    conv = interp.get_tensor(index["conv"])
    if act == 1:
        assert (conv == 0).any() and (conv > 0).any()  # the RELU is active
    else:
        assert (conv[0, 4].reshape(3, 2, 3).max(axis=1) < 0).any()  # a padded pooling window is all negative
    with torch.no_grad():
        outs = TFLiteNet(path)(torch.from_numpy(x).permute(0, 3, 1, 2), ["conv", "pool", "padded"])
    for name, out in zip(["conv", "pool", "padded"], outs, strict=True):
        np.testing.assert_allclose(_nhwc(out), interp.get_tensor(index[name]), rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_fused_activation_other_than_relu_is_refused(tmp_path: Path) -> None:
    from monitor.training.tflite_torch import TFLiteNet

    rng = np.random.default_rng(0)
    path = tmp_path / "m.tflite"
    path.write_bytes(_build_tflite(rng.normal(size=(3, 3, 3, 2)), rng.normal(size=3), [[0, 0], [1, 0], [0, 2], [0, 0]], act=3))  # RELU6
    with pytest.raises(NotImplementedError, match="fused activation 3"):
        TFLiteNet(path)
