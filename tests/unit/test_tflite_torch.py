"""The tflite->torch loader against Google's TFLite interpreter, on MediaPipe's face network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from monitor.training.tflite_torch import FaceMeshAppearanceNet, TFLiteNet, face_landmark_path


@pytest.fixture(scope="module")
def net() -> TFLiteNet:
    return TFLiteNet(face_landmark_path()).eval()


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors:UserWarning")
def test_every_tensor_matches_the_tflite_interpreter(net: TFLiteNet) -> None:
    path = face_landmark_path()
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    x = np.random.default_rng(0).random((1, 192, 192, 3)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    names = [out for _kind, _ins, out, _opts in net.ops]
    assert len(names) > 90 and set(net.outputs) <= set(names)
    with torch.no_grad():
        outs = net(torch.from_numpy(x).permute(0, 3, 1, 2), names)
    for name, out in zip(names, outs, strict=True):
        ref = interp.get_tensor(index[name]).transpose(0, 3, 1, 2)
        assert out.shape == ref.shape, name
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()), err_msg=name)


def test_stops_at_the_requested_tensor_and_rejects_unknown_names(net: TFLiteNet) -> None:
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        (mid,) = net(x, ["p_re_lu_12"])
        early, again = net(x, ["p_re_lu_6", "p_re_lu_12"])
    assert mid.shape == (2, 128, 7, 7) and early.shape == (2, 32, 28, 28)
    assert torch.equal(mid, again)  # stopping early computes the same tensor
    with pytest.raises(KeyError, match="nope"):
        net(torch.rand(1, 3, 192, 192), ["nope"])


def test_appearance_net_on_the_pretrained_trunk_fine_tunes_end_to_end() -> None:
    torch.manual_seed(0)
    model = FaceMeshAppearanceNet()
    x = torch.rand(4, 3, 112, 112) * 255
    logit, boundary = model(x)
    assert logit.shape == (4,) and boundary.shape == (4, 28, 28)
    first = model.trunk.params["conv2d_1_Kernel_dequantize"]
    before = first.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    (logit.sum() + boundary.mean()).backward()
    assert first.grad is not None and first.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, first.detach())
