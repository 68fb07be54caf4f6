"""Unit tests for the evaluation metrics and report (monitor.training.evaluate), without scanning video."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from monitor.training.degrade import Degradation, parse_degradation
from monitor.training.evaluate import ClipResult, auc_interval, equal_error_rate, format_report, roc_auc, summarise


@pytest.mark.parametrize(
    ("y", "s", "auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.8, 0.2, 0.9], 0.75),
    ],
)
def test_auc(y: list[int], s: list[float], auc: float) -> None:
    assert roc_auc([bool(v) for v in y], s) == pytest.approx(auc)


def test_auc_and_eer_need_both_classes() -> None:
    assert roc_auc([True, True], [0.1, 0.2]) is None
    assert equal_error_rate([False], [0.3]) is None


def test_eer() -> None:
    assert equal_error_rate([False, False, True, True], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert equal_error_rate([False, False, True, True], [0.1, 0.8, 0.2, 0.9]) == pytest.approx(0.5)
    assert equal_error_rate([False, True], [0.9, 0.1]) == 1.0


def test_eer_with_tied_scores_is_read_on_the_roc_curve() -> None:
    # Ties move both error rates at once: the crossing lies on the straight segment between.
    assert equal_error_rate([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert equal_error_rate([False] * 3 + [True] * 3, [0.2, 0.5, 0.5, 0.5, 0.5, 0.8]) == pytest.approx(1 / 3)


def clip(path: str, label: str, score: float | None, alerts: int = 0, ttd: float | None = None, method: str = "") -> ClipResult:
    return ClipResult(path, label, path.split("/")[0], method, score, "clear" if score is not None else "inconclusive",
                      ttd, alerts, 36.0, 0.0 if score is not None else None, () if score is not None else ("no_face",))


def test_summary_counts_attacks_as_not_genuine_and_reports_rates() -> None:
    clips = [
        clip("a/1.mp4", "real", 0.1, alerts=1),
        clip("a/2.mp4", "real", 0.2),
        clip("b/1.mp4", "fake", 0.9, alerts=2, ttd=1.5, method="swap"),
        clip("c/1.mp4", "attack", 0.8, alerts=1, ttd=2.5, method="replay"),
        clip("d/1.mp4", "real", None),
        clip("e/1.mp4", "fake", None, alerts=1),  # alerted on too few scored points for a video score
    ]
    r = summarise("m.tsv", None, 0.7, clips)
    assert r.overall.n_genuine == 2 and r.overall.n_fake == 2
    assert r.overall.auc == 1.0 and r.overall.accuracy == 1.0
    assert r.time_to_detect_median_s == pytest.approx(2.0)
    assert r.false_alarms_per_hour == pytest.approx(1 / (72 / 3600))  # one alert in 72 s of genuine footage
    assert r.unjudged == (("d/1.mp4", ("no_face",)),)
    # Before, e/1.mp4 was in neither the metrics nor a list: the counts did not add up.
    assert r.alerted_without_score == ("e/1.mp4",)
    names = {m.name: m for m in r.groups}
    assert names["folder:b"].note == "fakes vs all genuine" and names["folder:b"].auc == 1.0
    assert names["method:replay"].n_fake == 1
    assert r.overall.auc_ci95 is None  # two clips per class: too few for an interval
    # A fake-only group's accuracy is its own clips caught, not the pooled set's: e/1.mp4 was
    # never judged (None, not the 1.0 of the genuine clips it was pooled with).
    assert names["folder:b"].accuracy == 1.0 and names["folder:e"].accuracy is None
    missed = summarise("m.tsv", None, 0.7, [*clips[:2], clip("f/1.mp4", "fake", 0.3), clip("f/2.mp4", "fake", 0.8)])
    assert {m.name: m for m in missed.groups}["folder:f"].accuracy == 0.5  # pooled with 2 genuine: 0.75
    text = format_report(r)
    assert "could not judge 1 clips" in text and "d/1.mp4: no_face" in text
    assert "1 clips alerted before a video score" in text and "  e/1.mp4" in text


def test_auc_interval_brackets_the_auc_and_narrows_with_more_clips() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (8, 80, 800):
        y = [True] * n + [False] * (2 * n)
        s = list(rng.normal(0.8, 1, n)) + list(rng.normal(0, 1, 2 * n))
        auc = roc_auc(y, s)
        ci = auc_interval(y, s)
        assert ci is not None and auc is not None
        assert 0.0 <= ci[0] <= auc <= ci[1] <= 1.0
        assert auc_interval(y, s) == ci  # seeded: the same report twice
        widths.append(ci[1] - ci[0])
    assert widths[0] > 2 * widths[1] > 4 * widths[2] > 0
    # With 8 fakes the true AUC (0.71 for these two normals) must not be excluded by chance alone.
    assert widths[0] > 0.2


def test_auc_interval_matches_the_mann_whitney_auc_with_ties() -> None:
    y = [True] * 5 + [False] * 6
    s = [0.5, 0.5, 0.7, 0.2, 0.9, 0.5, 0.1, 0.3, 0.5, 0.6, 0.2]
    from monitor.training.evaluate import _auc_statistic

    pos = np.array([v for v, t in zip(s, y) if t])
    neg = np.array([v for v, t in zip(s, y) if not t])
    assert _auc_statistic(pos, neg) == pytest.approx(roc_auc(y, s))
    assert _auc_statistic(np.stack([pos, pos]), np.stack([neg, neg]))[1] == pytest.approx(roc_auc(y, s))
    assert auc_interval(y[:4] + y[5:], s[:4] + s[5:]) is None  # 4 fakes: below the minimum


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("300k", Degradation(300_000, None, 0.0)),
        ("360p", Degradation(2_000_000, 360, 0.0)),
        ("noise", Degradation(2_000_000, None, 8.0)),
        ("all", Degradation(300_000, 360, 8.0)),
    ],
)
def test_parse_degradation(spec: str, expected: Degradation) -> None:
    assert parse_degradation(spec) == expected


@pytest.mark.parametrize("spec", ["300k+noise8x", "noise-5", "0k", "8p", "noise0", "5x", "²k", "³⁶⁰p", "noisenan"])
def test_parse_degradation_rejects_bad_values_as_input_errors(spec: str) -> None:
    from monitor.errors import InputError

    with pytest.raises(InputError, match="unknown degradation"):
        parse_degradation(spec)


def test_parse_degradation_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown degradation"):
        parse_degradation("blur")


def test_a_bad_detector_configuration_fails_before_any_worker_starts(tmp_path: Path) -> None:
    from monitor.config import Settings
    from monitor.errors import ConfigError
    from monitor.training.evaluate import evaluate

    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\tfake\n")
    settings = Settings.model_validate({"detector": {"name": "no-such-detector"}})
    with pytest.raises(ConfigError, match="no-such-detector"):
        evaluate(tmp_path / "m.tsv", tmp_path, settings, None, None, progress=False, workers=2)


@pytest.mark.parametrize(("size", "expected"), [((800, 480), (600, 360)), ((480, 800), (360, 600)), ((320, 240), (320, 240))])
def test_360p_means_the_shorter_side_in_portrait_too(tmp_path: Path, size: tuple[int, int], expected: tuple[int, int]) -> None:
    import av

    from monitor.sources.demo_media import write_clip
    from monitor.training.degrade import degrade_clip

    clip = write_clip(tmp_path / "in.mp4", 0.5, fps=10, width=size[0], height=size[1])
    out = degrade_clip(clip, tmp_path / "out.mp4", parse_degradation("360p"))
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
    assert (frame.width, frame.height) == expected


@pytest.mark.parametrize("scan_fails", [False, True])
def test_each_degraded_copy_is_deleted_once_its_clip_is_scanned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan_fails: bool) -> None:
    # Before: every copy stayed in the temporary folder until the whole run ended.
    from types import SimpleNamespace

    import monitor.pipeline.offline as offline
    from monitor.config import Settings
    from monitor.sources.demo_media import write_clip
    from monitor.training.evaluate import _Job, _scan_job

    seen: list[bool] = []

    def scan(path: str, *args: object, **kwargs: object) -> object:
        seen.append(Path(path).exists())
        if scan_fails:
            raise RuntimeError("broken clip")
        return SimpleNamespace(first_alert_t=None, first_face_t=None, reasons=(), score=0.1, verdict="clear", alerts_opened=0, duration_s=0.5)

    monkeypatch.setattr(offline, "scan", scan)
    clip = write_clip(tmp_path / "in.mp4", 0.5, fps=10, width=160, height=120)
    job = _Job(0, "in.mp4", clip, "real", "", tmp_path / "copy.mp4")
    result = _scan_job(job, Settings(), lambda: None, parse_degradation("noise"))  # type: ignore[arg-type,return-value]
    assert seen == [True] and not (tmp_path / "copy.mp4").exists()
    assert (result.verdict == "error") is scan_fails


@pytest.mark.parametrize("kind", ["raw_h264", "frozen_timestamps"])
def test_a_degraded_copy_keeps_the_pace_of_a_clip_without_timestamps(tmp_path: Path, kind: str) -> None:
    # Before: frames with no timestamp (a raw .h264) or a repeated one were placed 1 ms apart,
    # so a 3 s clip lasted 30 ms degraded and was too short to judge. Now one frame interval
    # apart, as the scan's Timeline counts them.
    import av

    from monitor.training.degrade import degrade_clip
    from tests.support.media import frozen_timestamps_mkv, raw_h264

    clip = raw_h264(tmp_path / "in.h264", 3.0, 10) if kind == "raw_h264" else frozen_timestamps_mkv(tmp_path / "in.mkv", frames=30)
    out = degrade_clip(clip, tmp_path / "out.mp4", parse_degradation("noise"))
    with av.open(str(out)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert len(times) == 30
    assert times[-1] - times[0] > 1.5  # 29 intervals of a 10-30 fps clip; 0.029 s before


def test_a_fakes_only_group_is_scored_against_the_genuine_clips_of_its_own_source() -> None:
    # FF++ and Celeb-DF evaluated together: FF++'s Deepfakes separate perfectly from FF++'s
    # originals, but Celeb-DF's genuine clips score high. Before: the method's AUC took every
    # genuine clip (0.5 here), so it measured the datasets, not the method.
    from monitor.training.evaluate import group_metrics

    def clip(path: str, label: str, method: str, score: float, source: str) -> ClipResult:
        return ClipResult(path, label, source, method, score, "clear", None, 0, 10.0, 0.0, (), source)

    results = [
        clip("o/1.mp4", "real", "original", 0.1, "ffpp:test"), clip("o/2.mp4", "real", "original", 0.2, "ffpp:test"),
        clip("d/1.mp4", "fake", "Deepfakes", 0.5, "ffpp:test"), clip("d/2.mp4", "fake", "Deepfakes", 0.6, "ffpp:test"),
        clip("c/1.mp4", "real", "Celeb-real", 0.7, "celebdf:test"), clip("c/2.mp4", "real", "Celeb-real", 0.8, "celebdf:test"),
    ]
    by_name = {m.name: m for m in group_metrics(results, 0.7)}
    deepfakes = by_name["method:Deepfakes"]
    assert deepfakes.auc == 1.0 and deepfakes.n_genuine == 2 and deepfakes.note == "fakes vs genuine of the same source"
    report = format_report(summarise("two sources", None, 0.7, results))
    assert "method:Deepfakes **" in report and "** the same, against the genuine clips of the group's own sources" in report
    # One source (a manifest): every genuine clip, as before.
    single = [dataclasses.replace(c, source="") for c in results]
    pooled = {m.name: m for m in group_metrics(single, 0.7)}["method:Deepfakes"]
    assert pooled.auc == 0.5 and pooled.n_genuine == 4 and pooled.note == "fakes vs all genuine"


def test_a_degraded_copy_of_a_clip_without_video_says_why_as_the_clean_scan_does(tmp_path: Path) -> None:
    # Before: IndexError for a file with no video stream, and "no such file: <temporary copy>"
    # for one whose every packet is corrupt.
    import wave

    from monitor.errors import SourceError
    from monitor.training.degrade import degrade_clip
    from tests.support.media import garbage_video_ts

    with wave.open(str(tmp_path / "a.wav"), "wb") as w:  # sound, and no video stream at all
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    with pytest.raises(SourceError, match="has no video stream"):
        degrade_clip(tmp_path / "a.wav", tmp_path / "a.mp4", parse_degradation("300k"))
    with pytest.raises(SourceError, match=r"no decodable video frame in .*g\.ts \(\d+ corrupt packets\)"):
        degrade_clip(garbage_video_ts(tmp_path / "g.ts"), tmp_path / "g.mp4", parse_degradation("300k"))
    assert not (tmp_path / "g.mp4").exists()


def test_degraded_noise_depends_on_the_clip_not_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seeded by the row's position, a clip's degraded score moved when rows were added or
    # reordered: two identical clips scored 0.045 and 0.052.
    import monitor.training.degrade as degrade
    from monitor.config import Settings
    from monitor.training.evaluate import _Job, _scan_job

    seeds: list[int] = []
    monkeypatch.setattr(degrade, "degrade_clip", lambda src, dst, d, seed=0, on_decode_error=None: seeds.append(seed) or (_ for _ in ()).throw(RuntimeError("stop")))
    for index in (0, 7):
        _scan_job(_Job(index, "grp/a.mp4", tmp_path / "a.mp4", "real", "", tmp_path / f"{index}.mp4"), Settings(), lambda: None, parse_degradation("noise"))  # type: ignore[arg-type,return-value]
    _scan_job(_Job(0, "grp/b.mp4", tmp_path / "b.mp4", "real", "", tmp_path / "b.mp4"), Settings(), lambda: None, parse_degradation("noise"))  # type: ignore[arg-type,return-value]
    assert seeds[0] == seeds[1] != seeds[2]


def test_auc_from_ranks_agrees_with_counting_pairs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        y = rng.random(40) < 0.4
        s = rng.integers(0, 6, 40).astype(float)  # many ties
        if y.all() or not y.any():
            continue
        pos, neg = s[y], s[~y]
        pairs = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
        assert roc_auc(list(y), list(s)) == pytest.approx(pairs, abs=1e-12)


def test_summary_percentiles_and_the_threshold_are_the_policys() -> None:
    clips = [clip("a/1.mp4", "real", 0.1), clip("b/1.mp4", "fake", 0.9, ttd=1.5), clip("b/2.mp4", "fake", 0.8, ttd=2.5)]
    r = summarise("m.tsv", None, 0.7, clips)
    assert r.time_to_detect_median_s == pytest.approx(2.0) and r.time_to_detect_p90_s == pytest.approx(2.4)
    # The policy alerts at a score equal to alert_enter: so does the accuracy.
    at = summarise("m.tsv", None, 0.7, [clip("a/1.mp4", "real", 0.1), clip("b/1.mp4", "fake", 0.7)])
    assert at.overall.accuracy == 1.0


def _fake_scan(first_face_t: float | None, first_alert_t: float | None) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(first_alert_t=first_alert_t, first_face_t=first_face_t, reasons=(), score=0.9,
                           verdict="alert" if first_alert_t is not None else "clear", alerts_opened=int(first_alert_t is not None), duration_s=8.0)


def test_time_to_detect_counts_from_the_first_face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clip whose face appears 4 s in: the faceless lead-in is no part of the time to detect.
    import monitor.pipeline.offline as offline
    from monitor.config import Settings
    from monitor.training.evaluate import _Job, _scan_job

    monkeypatch.setattr(offline, "scan", lambda *a, **k: _fake_scan(4.0, 5.5))
    job = _Job(0, "late.mp4", tmp_path / "late.mp4", "fake", "", None)
    assert _scan_job(job, Settings(), lambda: None, None).time_to_detect_s == pytest.approx(1.5)  # type: ignore[arg-type,return-value]


def test_labels_in_any_case_are_read_as_their_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A spreadsheet's "REAL" and "Fake": read as fake, every genuine clip would have inverted the report.
    import monitor.pipeline.offline as offline
    from monitor.config import Settings
    from monitor.training.evaluate import evaluate

    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlabel\na/1.mp4\tREAL\na/2.mp4\t Real \nb/1.mp4\tFake\nc/1.mp4\tATTACK\n")
    monkeypatch.setattr(offline, "scan", lambda *a, **k: _fake_scan(0.0, None))
    report = evaluate(manifest, None, Settings(), detector_factory=lambda: None, progress=False)  # type: ignore[arg-type,return-value]
    assert [c.label for c in report.clips] == ["real", "real", "fake", "attack"]
    assert report.overall.n_genuine == 2 and report.overall.n_fake == 2


def test_a_dataset_source_must_name_the_split_it_evaluates() -> None:
    # Training's default split is train: evaluated without a split, the training videos were the result.
    from monitor.errors import InputError
    from monitor.training.evaluate import source_rows

    for spec in ("ffpp:/nonexistent", "celebdf:/nonexistent:", "ffpp:/nonexistent:"):
        with pytest.raises(InputError, match="name the split to evaluate"):
            source_rows([spec])
