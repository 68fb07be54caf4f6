"""Unit tests for the evaluation metrics and report (monitor.training.evaluate), without scanning video."""

from __future__ import annotations

import pytest

from monitor.training.degrade import Degradation, parse_degradation
from monitor.training.evaluate import ClipResult, equal_error_rate, format_report, roc_auc, summarise


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
    ]
    r = summarise("m.tsv", None, 0.7, clips)
    assert r.overall.n_genuine == 2 and r.overall.n_fake == 2
    assert r.overall.auc == 1.0 and r.overall.accuracy == 1.0
    assert r.time_to_detect_median_s == pytest.approx(2.0)
    assert r.false_alarms_per_hour == pytest.approx(1 / (72 / 3600))  # one alert in 72 s of genuine footage
    assert r.unjudged == (("d/1.mp4", ("no_face",)),)
    names = {m.name: m for m in r.groups}
    assert names["folder:b"].note == "fakes vs all genuine" and names["folder:b"].auc == 1.0
    assert names["method:replay"].n_fake == 1
    text = format_report(r)
    assert "could not judge 1 clips" in text and "d/1.mp4: no_face" in text


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


def test_parse_degradation_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown degradation"):
        parse_degradation("blur")
