"""What `monitor evaluate`'s report and the dataset readers promise (monitor/training/evaluate.py,
datasets.py): EER at the true crossing, false alarms counted per alert, bootstrap intervals from
5 clips per class and inside [0, 1], groups by first path component, method and source, every
clip in the JSON with its alerts, FF++'s five methods and originals, TSV pairing and groups.
Each test was written against a one-line change of the code that the rest of the suite let
through."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from monitor.training.evaluate import ClipResult, auc_interval, equal_error_rate, group_metrics, summarise


def _clip(path: str, label: str, score: float | None, alerts: int = 0, ttd: float | None = None,
          method: str = "", duration: float = 36.0) -> ClipResult:
    return ClipResult(path, label, path.split("/")[0], method, score, "alert" if alerts else "clear",
                      ttd, alerts, duration, 0.0 if score is not None else None, () if score is not None else ("no_face",))


def _eer_brute(y: list[bool], s: list[float]) -> float:
    """Where FAR = FRR on the ROC polyline through every distinct threshold (ties move both rates)."""
    ya, sa = np.asarray(y), np.asarray(s, float)
    pts = [(0.0, 1.0)]
    for t in sorted(set(sa), reverse=True):
        flagged = sa >= t
        pts.append(((flagged & ~ya).sum() / (~ya).sum(), 1 - (flagged & ya).sum() / ya.sum()))
    for (f0, r0), (f1, r1) in zip(pts, pts[1:]):
        g0, g1 = f0 - r0, f1 - r1
        if g0 <= 0 <= g1 and g1 != g0:
            t = -g0 / (g1 - g0)
            return f0 + t * (f1 - f0)
    raise AssertionError("no crossing")


def test_eer_is_the_crossing_of_an_asymmetric_tied_segment() -> None:
    # genuine 0.1, 0.5; fakes 0.5 x3, 0.9: the segment (FAR 0, FRR .75) -> (FAR .5, FRR 0) crosses at 0.3
    y = [False, False, True, True, True, True]
    s = [0.1, 0.5, 0.5, 0.5, 0.5, 0.9]
    assert equal_error_rate(y, s) == pytest.approx(0.3)
    rng = np.random.default_rng(7)
    for _ in range(30):
        yy = list(rng.random(12) < 0.5)
        if all(yy) or not any(yy):
            continue
        ss = list(rng.integers(0, 4, 12).astype(float))  # many ties
        assert equal_error_rate(yy, ss) == pytest.approx(_eer_brute(yy, ss))


def test_false_alarms_per_hour_count_alerts_not_clips() -> None:
    clips = [_clip("a/1.mp4", "real", 0.9, alerts=3), _clip("a/2.mp4", "real", 0.1), _clip("b/1.mp4", "fake", 0.9, alerts=1, ttd=1.0)]
    r = summarise("m.tsv", None, 0.7, clips)
    assert r.false_alarms_per_hour == pytest.approx(3 / (72 / 3600))


def test_auc_interval_is_given_from_exactly_five_clips_per_class() -> None:
    y = [True] * 5 + [False] * 5
    s = [0.9, 0.8, 0.3, 0.7, 0.6, 0.1, 0.2, 0.4, 0.5, 0.35]
    assert auc_interval(y, s) is not None
    assert auc_interval(y[1:], s[1:]) is None  # 4 fakes


def test_auc_interval_stays_within_zero_and_one() -> None:
    # A nearly separated set: a percentile interval of the AUC cannot leave [0, 1].
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = [True] * 6 + [False] * 6
        s = list(rng.normal(2.0, 1, 6)) + list(rng.normal(0, 1, 6))
        ci = auc_interval(y, s)
        assert ci is not None and 0.0 <= ci[0] <= ci[1] <= 1.0


def test_a_mixed_group_is_scored_on_its_own_clips_only() -> None:
    clips = [_clip("a/1.mp4", "real", 0.1), _clip("a/2.mp4", "fake", 0.9),
             _clip("b/1.mp4", "real", 0.95), _clip("b/2.mp4", "real", 0.97), _clip("c/1.mp4", "fake", 0.5)]
    by = {m.name: m for m in group_metrics(clips, 0.7)}
    assert by["folder:a"].n_genuine == 1 and by["folder:a"].n_fake == 1 and by["folder:a"].auc == 1.0


def test_time_to_detect_and_fakes_alerted_count_only_fakes() -> None:
    clips = [_clip("a/1.mp4", "real", 0.9, alerts=1, ttd=10.0), _clip("b/1.mp4", "fake", 0.9, alerts=1, ttd=1.0),
             _clip("b/2.mp4", "attack", 0.9, alerts=1, ttd=3.0)]
    r = summarise("m.tsv", None, 0.7, clips)
    assert r.fakes_detected == 2 and r.time_to_detect_median_s == pytest.approx(2.0)


def test_the_fakes_alerted_line_says_how_many_fakes_were_not_judged() -> None:
    # Every fake counts in "N/M fakes alerted" (an unreadable one is a fake not caught), which
    # read as if all M had been judged; the groups count only judged clips.
    from monitor.training.evaluate import format_report

    clips = [_clip("a/1.mp4", "real", 0.1), _clip("b/1.mp4", "fake", 0.9, alerts=1, ttd=1.0), _clip("b/2.mp4", "fake", None)]
    text = format_report(summarise("m.tsv", None, 0.7, clips))
    assert "1/2 fakes alerted (1 of them not judged)" in text, text
    judged = format_report(summarise("m.tsv", None, 0.7, clips[:2]))
    assert "1/1 fakes alerted\n" in judged, judged


def test_a_clip_at_the_top_of_the_manifest_has_a_folder_group_too() -> None:
    # manifest_folder gave "" for `x.mp4`, and group_metrics skips an empty key: such clips
    # counted overall and by method, in no folder group.
    from monitor.training.evaluate import manifest_folder

    assert manifest_folder("x.mp4") == "." and manifest_folder("real/x.mp4") == "real"
    clips = [ClipResult(p, lab, manifest_folder(p), "", sc, "clear", None, 0, 36.0, 0.0, ())
             for p, lab, sc in (("x.mp4", "real", 0.1), ("y.mp4", "fake", 0.8), ("real/z.mp4", "real", 0.2))]
    by = {m.name: m for m in group_metrics(clips, 0.7)}
    assert by["folder:."].n_genuine == 1 and by["folder:."].n_fake == 1


def _fake_scan(*a: object, **k: object) -> object:
    return SimpleNamespace(first_alert_t=1.0, first_face_t=0.0, reasons=(), score=0.9, verdict="alert", alerts_opened=2, duration_s=8.0)


def test_evaluate_groups_by_first_component_and_method_and_json_lists_every_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.pipeline.offline as offline
    from monitor.config import Settings
    from monitor.training.evaluate import evaluate

    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\tmethod\nsetA/sub/1.mp4\treal\t\nsetA/sub/2.mp4\tfake\tswapX\nsetB/x/3.mp4\tfake\tswapX\n")
    monkeypatch.setattr(offline, "scan", _fake_scan)
    out = tmp_path / "r.json"
    report = evaluate(manifest, None, Settings(), json_out=out, detector_factory=lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    names = {m.name for m in report.groups}
    assert {"folder:setA", "folder:setB", "method:swapX"} <= names
    assert [c.method for c in report.clips] == ["", "swapX", "swapX"]
    data = json.loads(out.read_text())
    assert [c["path"] for c in data["clips"]] == ["setA/sub/1.mp4", "setA/sub/2.mp4", "setB/x/3.mp4"]
    for c in data["clips"]:
        assert {"path", "label", "score", "verdict", "time_to_detect_s"} <= set(c)
        assert any(k.startswith("alert") and v == 2 for k, v in c.items())  # the clip's alerts


def test_each_source_is_a_group_named_by_kind_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.pipeline.offline as offline
    from monitor.config import Settings
    from monitor.training.evaluate import evaluate

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["001", "002"]]))
    for rel in ("original_sequences/youtube/c23/videos/001.mp4", "manipulated_sequences/Deepfakes/c23/videos/001_002.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.setattr(offline, "scan", _fake_scan)
    report = evaluate(None, None, Settings(), sources=[f"ffpp:{tmp_path}:test"], detector_factory=lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    assert {c.group for c in report.clips} == {"ffpp:test"}
    assert "folder:ffpp:test" in {m.name for m in report.groups}


def test_ffpp_reads_all_five_methods(tmp_path: Path) -> None:
    from monitor.training.datasets import read_ffpp

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["001", "002"]]))
    methods = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
    for rel in ["original_sequences/youtube/c23/videos/001.mp4"] + [f"manipulated_sequences/{m}/c23/videos/001_002.mp4" for m in methods]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert {r.method for r in read_ffpp(tmp_path, "test") if r.is_fake} == set(methods)


def test_tsv_pairs_only_fakes_and_uses_a_group_column(tmp_path: Path) -> None:
    from monitor.training.datasets import read_tsv

    (tmp_path / "m.tsv").write_text("path\tlabel\tgroup\nx/orig.webm\treal\tperson1\nx/real.mp4\treal\t\nx/fake.mp4\tfake\t\n")
    by = {r.rel: r for r in read_tsv(tmp_path / "m.tsv")}
    assert by["x/orig.webm"].pair is None and by["x/real.mp4"].pair is None  # genuine clips are no fake's copy
    assert by["x/fake.mp4"].pair == tmp_path / "x/real.mp4"
    assert by["x/orig.webm"].group == "person1" and by["x/real.mp4"].group == "x"


def test_ffpp_originals_are_method_original(tmp_path: Path) -> None:
    from monitor.training.datasets import read_ffpp

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["001", "002"]]))
    (tmp_path / "original_sequences/youtube/c23/videos").mkdir(parents=True)
    (tmp_path / "original_sequences/youtube/c23/videos/001.mp4").write_bytes(b"")
    assert [r.method for r in read_ffpp(tmp_path, "test")] == ["original"]


def test_the_auc_bootstrap_resamples_each_class_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stratified, as the interval's docstring and the report say: every resample keeps 6 fakes
    drawn from the fakes and 40 genuine clips drawn from the genuine ones (a pooled bootstrap
    would mix them and vary the class sizes)."""
    from monitor.training import evaluate

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = evaluate._auc_statistic

    def spy(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
        seen.append((np.asarray(pos), np.asarray(neg)))
        return real(pos, neg, axis=axis)

    monkeypatch.setattr(evaluate, "_auc_statistic", spy)
    fakes = np.arange(6) + 100.0  # disjoint values, so a draw's class can be read off it
    genuine = np.arange(40) * 0.5
    y = [True] * 6 + [False] * 40
    assert evaluate.auc_interval(y, np.concatenate([fakes, genuine]).tolist(), resamples=200) is not None
    resampled = [(p, n) for p, n in seen if p.ndim == 2]  # the vectorised resamples
    assert sum(len(p) for p, _ in resampled) >= 200
    for p, n in resampled:
        assert p.shape[-1] == 6 and n.shape[-1] == 40
        assert np.isin(p, fakes).all() and np.isin(n, genuine).all()
