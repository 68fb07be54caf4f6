"""The offline scan's video-level score and verdict (monitor.pipeline.offline.summarise, scan):
what `monitor scan` and `monitor evaluate` report for a clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.alerts.policy import TrackPolicy
from monitor.config import PolicyConfig, load_settings
from monitor.pipeline.offline import ScanResult, TrackPoint, scan, summarise
from monitor.types import Event, Score, TrackState, Verdict

CFG = PolicyConfig(ema_halflife_s=0.2, min_alert_s=1.0, min_state_s=1.0)


def summary(timelines: dict[int, list[TrackPoint]], events: list[Event] = ()) -> ScanResult:  # type: ignore[assignment]
    return summarise("clip.mp4", load_settings(None, demo=False), timelines, list(events), frames=30, with_face=30,
                     first_face_t=0.0, duration=3.0, wall=1.0, latencies=[], stage_totals=np.zeros(4), decode_errors=[])


def points(scores: list[float], start: float = 0.0) -> list[TrackPoint]:
    return [TrackPoint(start + i / 10, TrackState.CLEAR, s, s, ()) for i, s in enumerate(scores)]


def alerts(track: int, start: float, end: float) -> list[Event]:
    policy, events = TrackPolicy("s", track, CFG), []
    for i in range(int(round((end - start) * 10))):
        t = start + i / 10
        events.extend(policy.update(Verdict("s", track, t, 0.0, Score(0.99, ()), None, ()), 1000.0 + t))
    return events


def test_the_video_score_is_the_90th_percentile_of_the_worst_track() -> None:
    # A swap visible for a fifth of the clip still counts; one noisy frame does not.
    assert summary({1: points([0.1] * 8 + [0.9] * 2)}).score == pytest.approx(0.9)
    assert summary({1: points([0.1] * 9 + [0.9])}).score < 0.5
    # Two faces: the clip is as suspect as its most suspect face.
    assert summary({1: points([0.1] * 10), 2: points([0.9] * 10)}).score == pytest.approx(0.9)


def test_verdicts_follow_the_policys_thresholds() -> None:
    policy = PolicyConfig()
    between = (policy.suspicious_enter + policy.alert_enter) / 2  # suspicious, not alert
    assert summary({1: points([between] * 10)}).verdict == "suspicious"
    assert summary({1: points([policy.suspicious_enter - 0.05] * 10)}).verdict == "clear"


def test_scores_held_on_unreadable_frames_are_not_evidence() -> None:
    held = [TrackPoint(1 + i / 10, TrackState.CLEAR, 0.9, None, ("low_quality",)) for i in range(10)]
    result = summary({1: points([0.1] * 5) + held})
    assert result.tracks[0].usable_points == 5 and result.score == pytest.approx(0.1)


def test_the_first_alert_is_the_earliest_of_several_tracks() -> None:
    result = summary({}, alerts(1, 0.0, 3.0) + alerts(2, 2.0, 6.0))
    assert result.alerts_opened == 2 and result.first_alert_t is not None and result.first_alert_t < 1.5


def test_the_first_face_is_when_a_face_first_appeared(tmp_path: Path) -> None:
    from monitor.sources.demo_media import write_clip
    from tests.unit.test_pipeline import CountingDetector, FakeFaces

    clip = write_clip(tmp_path / "a.mp4", 2.0, fps=10, width=160, height=120)
    result = scan(str(clip), load_settings(None, demo=False), CountingDetector(), FakeFaces())
    assert result.first_face_t == 0.0 and result.frames_with_face > 1
