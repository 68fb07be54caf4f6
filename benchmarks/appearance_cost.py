"""Cost of one appearance network call in ONNX Runtime (one 112 px crop, one thread).

Run: nice -n 10 .venv/bin/python benchmarks/appearance_cost.py
Compares the shipped architecture (`nets.AppearanceNet`, width 24) with the fine-tunable trunk of
MediaPipe's pretrained face network (`tflite_torch.FaceMeshAppearanceNet`), both exported from
torch with their initial weights (the cost does not depend on the weights). Both are timed in the
same process, interleaved; compare the ratio, because these machines are shared and noisy.
Writes benchmarks/results/appearance_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.detect.nets import AppearanceNet
from monitor.training.tflite_torch import FaceMeshAppearanceNet


def session(net: torch.nn.Module) -> ort.InferenceSession:
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, 112, 112),), buf, input_names=["x"], output_names=["logit", "boundary"], dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="timed calls per net")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/appearance_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets = {"cnn_w24": AppearanceNet(24), "facemesh_trunk": FaceMeshAppearanceNet()}
    x = (np.random.default_rng(0).random((1, 3, 112, 112)) * 255).astype(np.float32)
    sessions, agree = {}, {}
    for name, net in nets.items():
        sessions[name] = session(net)
        with torch.no_grad():
            ref = net(torch.from_numpy(x))[0].numpy()
        agree[name] = float(np.abs(sessions[name].run(None, {"x": x})[0] - ref).max())
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(50):  # warm-up
        for s in sessions.values():
            s.run(None, {"x": x})
    for _ in range(args.runs):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[name].append((time.perf_counter() - t) * 1000)
    report = {
        "what": __doc__.splitlines()[0], "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__, "torch": torch.__version__,
        "ms": {k: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))} for k, v in times.items()},
        "max_abs_onnx_minus_torch": agree,
        "params": {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()},
    }
    report["ratio_facemesh_to_cnn_median"] = report["ms"]["facemesh_trunk"]["median"] / report["ms"]["cnn_w24"]["median"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
