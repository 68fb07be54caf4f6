"""The TF.js graph loader against a plain numpy reference of TensorFlow's NHWC semantics.

The graph is generated here (no npm package needed): convolutions with SAME and VALID padding,
stride 2, a depthwise convolution, fused bias and activations, a PReLU written out the way
converted Keras models write it (per-channel constant), reductions and a squeeze over NHWC axes,
a classifier head (SAME max-pool, flatten in NHWC order, dense layers, softmax), and weights
stored as float32, float16 and uint8-affine, as TF.js quantises them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.training.tfjs_torch import MOVENET_STAGES, TFJSAppearanceNet, TFJSNet, load_weights
from tests.support.tfjs_graph import write_model


def _same(n: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _conv_nhwc(x: np.ndarray, k: np.ndarray, stride: int, padding: str, depthwise: bool = False) -> np.ndarray:
    kh, kw = k.shape[:2]
    if padding == "SAME":
        x = np.pad(x, ((0, 0), _same(x.shape[1], kh, stride), _same(x.shape[2], kw, stride), (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3] * k.shape[3] if depthwise else k.shape[3]), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            if depthwise:  # output channel c * M + m
                out[:, i, j, :] = np.einsum("nhwc,hwcm->ncm", patch, k).reshape(x.shape[0], -1)
            else:
                out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, k)
    return out


def _max_pool_same(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """TensorFlow's SAME max-pool: padded cells never win."""
    x = np.pad(x, ((0, 0), _same(x.shape[1], k, stride), _same(x.shape[2], k, stride), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    return np.stack([np.stack([x[:, i * stride : i * stride + k, j * stride : j * stride + k].max(axis=(1, 2)) for j in range(ow)], 1) for i in range(oh)], 1)


def _reference(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    c1 = np.clip(_conv_nhwc(x, w["k1"], 2, "SAME") + w["b1"], 0, 6)
    d1 = _conv_nhwc(c1, w["dk"], 1, "SAME", depthwise=True) + w["db"]
    prelu = np.maximum(d1, 0) + (d1 - np.abs(d1)) * w["alpha"]
    c2 = _conv_nhwc(prelu * w["gain"], w["k2"], 1, "VALID")
    kept = c2.sum(axis=(1, 2), keepdims=True)
    pool = _max_pool_same(d1, 2, 2)
    flat = pool.reshape(len(pool), -1)  # NHWC element order
    fc1 = np.maximum(flat @ w["wf1"] + w["bf1"], 0)
    fc2 = fc1 @ w["wf2"].T
    prob = np.exp(fc2 - fc2.max(1, keepdims=True))
    return {
        "c1": c1, "d1": d1, "prelu": prelu, "c2": c2, "out": c2.sum(axis=(1, 2)) * 0.5, "kept": kept, "squeezed": kept[:, 0, 0, :],
        "pool": pool, "flat": flat, "fc1": fc1, "fc2": fc2, "prob": prob / prob.sum(1, keepdims=True),
    }


def test_matches_tensorflow_semantics_on_a_generated_graph(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = write_model(tmp_path, rng)
    net = TFJSNet(tmp_path / "model.json").eval()
    _, loaded = load_weights(tmp_path / "model.json")
    for name in ("k1", "b1"):  # float16, and uint8 decoded in double as tfjs-core does: bit for bit
        np.testing.assert_array_equal(loaded[name], weights[name], err_msg=name)
    x = rng.normal(0, 1, (2, 10, 11, 3)).astype(np.float32)  # SAME at stride 2 pads H (0, 1) and W (1, 1)
    ref = _reference(x.astype(np.float64), weights)
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2), list(ref))
    assert got["c1"].shape == (2, 4, 5, 6) and got["d1"].shape == (2, 8, 5, 6) and got["out"].shape == (2, 2)
    assert (ref["d1"] < 0).any()  # the PReLU's negative side is exercised
    # SAME pooling pads d1's 5 rows at the bottom; some window there is all negative, so padding
    # with zeros instead of -inf would show, and the dense layer's ReLU is active on both sides.
    assert (ref["d1"][:, 4, :, :].reshape(2, 3, 2, 8).max(axis=2) < 0).any()
    assert got["pool"].shape == (2, 8, 3, 3) and got["prob"].shape == (2, 3)
    assert (ref["fc1"] == 0).any() and (ref["fc1"] > 0).any()
    for name, want in ref.items():
        have = got[name].numpy()
        if have.ndim == 4:
            have = have.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()), err_msg=name)


def test_feed_skips_earlier_nodes_and_gradients_reach_the_weights(tmp_path: Path) -> None:
    write_model(tmp_path, np.random.default_rng(1))
    net = TFJSNet(tmp_path / "model.json")
    full = net(torch.rand(1, 3, 9, 9), ["c1", "out"])
    fed = net(full["c1"].detach(), ["out"], feed="c1")
    assert torch.allclose(full["out"], fed["out"])
    fed["out"].sum().backward()
    kernel = net.const("k2")
    assert kernel.shape == (2, 8, 1, 1) and kernel.grad is not None and kernel.grad.abs().sum() > 0
    assert net.const("k1").grad is None  # before the fed node: not part of that graph


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    write_model(tmp_path, np.random.default_rng(2))
    net = TFJSNet(tmp_path / "model.json")
    with pytest.raises(NotImplementedError, match="Erf"):
        net(torch.rand(1, 3, 9, 9), ["odd"])
    # What NCHW cannot express the NHWC way is refused, never silently transposed.
    with pytest.raises(NotImplementedError, match="one of H and W"):
        net(torch.rand(1, 3, 10, 11), ["sum_h"])
    with pytest.raises(ValueError, match="not 1"):
        net(torch.rand(1, 3, 10, 11), ["squeeze_c"])
    with pytest.raises(NotImplementedError, match="2-D constant"):
        net(torch.rand(1, 3, 10, 11), ["times_wc"])
    with pytest.raises(KeyError, match="nope"):
        net(torch.rand(1, 3, 9, 9), ["nope"])
    with pytest.raises(KeyError, match="nope"):
        net(torch.rand(1, 3, 9, 9), ["out"], feed="nope")
    shard = tmp_path / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes() + b"\0\0\0\0")
    with pytest.raises(ValueError, match="manifest describes"):
        load_weights(tmp_path / "model.json")


def test_appearance_net_reads_two_stages_and_fine_tunes_the_trunk(tmp_path: Path) -> None:
    write_model(tmp_path, np.random.default_rng(3))
    torch.manual_seed(0)
    model = TFJSAppearanceNet(tmp_path / "model.json")
    x = torch.rand(3, 3, 112, 112) * 255
    logit, boundary = model(x)
    assert logit.shape == (3,) and boundary.shape == (3, 28, 28)
    # The head reads mean- and max-pooled stages: 6 channels at 28x28, 8 at 14x14.
    assert model.head.in_features == 2 * (6 + 8)
    (logit.sum() + boundary.mean()).backward()
    first = model.trunk.const("k1")
    assert first.grad is not None and first.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs 28x28"):
        TFJSAppearanceNet(tmp_path / "model.json", stages=("c1", MOVENET_STAGES[1]))
    with pytest.raises(ValueError, match="one RGB frame"):
        TFJSAppearanceNet(tmp_path / "model.json", in_ch=6)


@pytest.mark.parametrize("size", [160, 224])
def test_appearance_net_pools_its_boundary_map_to_28_at_other_sizes(tmp_path: Path, size: int) -> None:
    write_model(tmp_path, np.random.default_rng(3))
    torch.manual_seed(0)
    model = TFJSAppearanceNet(tmp_path / "model.json")
    x = torch.rand(2, 3, size, size) * 255
    logit, boundary = model(x)
    assert logit.shape == (2,) and boundary.shape == (2, 28, 28)
    # The map is the mean of the full-size one over each cell (a 224 input gives 56x56 -> 2x2 cells).
    full = model.boundary(model.trunk(x / 127.5 - 1.0, model.stages, model.feed)[model.stages[0]]).squeeze(1)
    if size == 224:
        assert torch.allclose(boundary, full.reshape(2, 28, 2, 28, 2).mean(dim=(2, 4)), atol=1e-5)
