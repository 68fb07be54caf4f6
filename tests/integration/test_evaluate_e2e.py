"""End to end: `run_training` on generated clips, then `evaluate` through the service's offline scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.config import Settings
from monitor.detect.temporal import TemporalDetector
from monitor.sources.demo_media import write_clip
from monitor.training.evaluate import evaluate, format_report
from monitor.training.train import TrainConfig, run_training

pytestmark = pytest.mark.slow  # trains a tiny bundle and scans six clips: ~30 s


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    # Two faces need the larger frame to stay above the service's minimum face size.
    for name, faces, w, h in (("genuine/a.mp4", 1, 320, 240), ("genuine/b.mp4", 2, 640, 480), ("swapped/c.mp4", 1, 320, 240)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(root / name, 3.0, fps=10, width=w, height=h, faces=faces)
    (root / "nothing").mkdir()
    (root / "nothing/missing.mp4").write_bytes(b"not a video")
    (root / "m.tsv").write_text(
        "path\tlabel\tmethod\n"
        "genuine/a.mp4\treal\tcamera\n"
        "genuine/b.mp4\treal\tcamera\n"
        "swapped/c.mp4\tfake\tsynthetic swap\n"
    )
    (root / "eval.tsv").write_text((root / "m.tsv").read_text() + "nothing/missing.mp4\tattack\treplay\n")
    return root


@pytest.fixture(scope="module")
def bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    cfg = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=out, cache_dir=tmp_path_factory.mktemp("cache"),
        appearance_steps=3, geometry_steps=3, pairs_per_batch=2, folds=2, threads=1,
    )
    assert run_training(cfg, progress=False) == out
    return out


@pytest.mark.parametrize("degrade", [None, "300k+noise"])
def test_evaluate_reports_every_clip(dataset: Path, bundle: Path, settings: Settings, tmp_path: Path, degrade: str | None) -> None:
    config = TemporalDetector.Config(model_dir=bundle)
    out = tmp_path / "out.json"
    report = evaluate(
        dataset / "eval.tsv", dataset, settings, out, degrade,
        detector_factory=lambda: TemporalDetector(config), progress=False,
    )
    data = json.loads(out.read_text())
    assert [c["path"] for c in data["clips"]] == ["genuine/a.mp4", "genuine/b.mp4", "swapped/c.mp4", "nothing/missing.mp4"]
    for clip in data["clips"]:
        assert {"path", "label", "score", "verdict", "time_to_detect_s", "alerts_opened"} <= set(clip)
    judged = [c for c in data["clips"] if c["score"] is not None]
    assert len(judged) == 3
    assert all(0.0 <= c["score"] <= 1.0 for c in judged)
    broken = data["clips"][3]
    assert broken["score"] is None and broken["verdict"] == "error" and broken["reasons"]
    assert report.unjudged and report.unjudged[0][0] == "nothing/missing.mp4"
    assert report.overall.n_genuine == 2 and report.overall.n_fake == 1
    assert report.overall.auc is not None
    assert {m.name for m in report.groups} >= {"folder:genuine", "folder:swapped", "method:synthetic swap"}
    text = format_report(report)
    assert "overall" in text and "false alarms" in text and "could not judge 1 clips" in text
