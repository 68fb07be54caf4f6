"""The verdict policy: hysteresis, minimum durations, alerts open and close, never flap."""

from __future__ import annotations

import pytest

from monitor.alerts.policy import TrackPolicy
from monitor.config import PolicyConfig
from monitor.types import AlertData, EventType, Score, TrackState, TrackStateData, Verdict


def verdict(t: float, p: float | None, reasons: tuple[str, ...] = ()) -> Verdict:
    return Verdict("s", 1, t, 0.0, Score(p, (), reasons), None, reasons)


def run(policy: TrackPolicy, series: list[tuple[float, float | None]]) -> list:
    events = []
    for t, p in series:
        events.extend(policy.update(verdict(t, p), 1000.0 + t))
    return events


def states(events: list) -> list[TrackState]:
    return [e.data.state for e in events if isinstance(e.data, TrackStateData)]


CFG = PolicyConfig(ema_halflife_s=0.2, min_alert_s=1.0, min_state_s=1.0)


def steady(p: float, start: float, end: float, fps: float = 10) -> list[tuple[float, float]]:
    n = int(round((end - start) * fps))
    return [(start + i / fps, p) for i in range(n)]


@pytest.mark.parametrize(
    "series, expected",
    [
        (steady(0.1, 0, 3), [TrackState.CLEAR]),
        (steady(None, 0, 3), [TrackState.INCONCLUSIVE]),  # type: ignore[arg-type]
        (steady(0.6, 0, 3), [TrackState.SUSPICIOUS]),
        (steady(0.1, 0, 2) + steady(0.95, 2, 5), [TrackState.CLEAR, TrackState.SUSPICIOUS, TrackState.ALERT]),
        (steady(None, 0, 1) + steady(0.1, 1, 3), [TrackState.INCONCLUSIVE, TrackState.CLEAR]),  # type: ignore[operator]
    ],
)
def test_states(series: list, expected: list[TrackState]) -> None:
    assert states(run(TrackPolicy("s", 1, CFG), series)) == expected


def test_no_flapping_around_threshold() -> None:
    # Scores oscillating across the suspicious threshold every frame must not flap.
    series = [(i / 10, 0.55 if i % 2 else 0.45) for i in range(100)]
    got = states(run(TrackPolicy("s", 1, CFG), series))
    assert len(got) <= 2, got


def test_alert_needs_min_duration() -> None:
    # A 0.5 s spike is shorter than min_alert_s: suspicious at most, never an alert.
    series = steady(0.1, 0, 2) + steady(0.99, 2, 2.5) + steady(0.1, 2.5, 6)
    events = run(TrackPolicy("s", 1, CFG), series)
    assert not [e for e in events if e.type == EventType.ALERT_OPENED]


def test_alert_opens_and_closes_with_span() -> None:
    series = steady(0.1, 0, 2) + steady(0.95, 2, 6) + steady(0.05, 6, 10)
    events = run(TrackPolicy("s", 1, CFG), series)
    opened = [e for e in events if e.type == EventType.ALERT_OPENED]
    closed = [e for e in events if e.type == EventType.ALERT_CLOSED]
    assert len(opened) == 1 and len(closed) == 1
    o, c = opened[0].data, closed[0].data
    assert isinstance(o, AlertData) and isinstance(c, AlertData)
    assert o.alert_id == c.alert_id
    assert 2.0 <= o.start_t <= 2.5  # when the smoothed score crossed, not when the alert opened
    assert c.end_t is not None and 6.0 <= c.end_t <= 8.0
    assert c.score >= 0.9
    assert "score_above_threshold" in o.reasons
    assert "score_below_threshold" in c.reasons and "score_below_threshold" not in o.reasons  # why it closed
    # start_time is when it began on the wall clock (run() sets wall = 1000 + t), not when it opened.
    assert o.start_time == pytest.approx(1000.0 + o.start_t) and opened[0].time >= o.start_time + CFG.min_alert_s
    # Hysteresis: after the alert it goes down through the states, then stays clear.
    assert states(events)[-1] == TrackState.CLEAR


def test_alert_holds_through_brief_unusable_gap() -> None:
    series = steady(0.95, 0, 4) + [(4.0 + i / 10, None) for i in range(10)] + steady(0.95, 5, 6)
    events = run(TrackPolicy("s", 1, CFG), series)  # type: ignore[arg-type]
    assert [e.type for e in events].count(EventType.ALERT_OPENED) == 1
    assert not [e for e in events if e.type == EventType.ALERT_CLOSED]


def test_long_gap_becomes_inconclusive_and_closes_alert() -> None:
    series = steady(0.95, 0, 4) + [(4.0 + i / 10, None) for i in range(40)]
    events = run(TrackPolicy("s", 1, CFG), series)  # type: ignore[arg-type]
    assert states(events)[-1] == TrackState.INCONCLUSIVE
    closed = [e.data for e in events if e.type == EventType.ALERT_CLOSED]
    assert len(closed) == 1
    # It ends at the last readable score, not when the track was declared inconclusive.
    last_readable = max(t for t, p in series if p is not None)
    assert closed[0].end_t == pytest.approx(last_readable)


def test_track_end_closes_alert() -> None:
    policy = TrackPolicy("s", 1, CFG)
    run(policy, steady(0.95, 0, 4) + [(4.0 + i / 10, None) for i in range(1, 6)])
    before = policy.state
    closing = policy.end(5.5, 2000.0)
    assert [e.type for e in closing] == [EventType.ALERT_CLOSED, EventType.TRACK_STATE]
    assert "track_ended" in closing[0].data.reasons
    last_readable = max(t for t, _ in steady(0.95, 0, 4))
    assert closing[0].data.end_t == pytest.approx(last_readable)
    ended = closing[1].data
    assert isinstance(ended, TrackStateData)
    assert (ended.state, ended.previous, ended.reasons) == (TrackState.INCONCLUSIVE, before, ("track_ended",))
    assert policy.end(6.0, 2001.0) == []  # ended once


def test_a_track_that_ends_without_an_alert_announces_its_end() -> None:
    # Before, only an open alert produced an event: a subscriber saw a face that left while
    # suspicious stay suspicious for ever.
    policy = TrackPolicy("s", 3, CFG)
    run(policy, steady(0.6, 0, 3))
    assert policy.state == TrackState.SUSPICIOUS
    [event] = policy.end(3.5, 2000.0)
    assert event.type == EventType.TRACK_STATE
    assert (event.data.state, event.data.previous, event.data.reasons) == (TrackState.INCONCLUSIVE, TrackState.SUSPICIOUS, ("track_ended",))
    assert event.data.t == 3.5 and event.data.track_id == 3
    assert TrackPolicy("s", 4, CFG).end(1.0, 2000.0) == []  # never announced: nothing to end


def test_first_event_announces_track_with_reasons() -> None:
    events = TrackPolicy("s", 7, CFG).update(verdict(0.0, None, ("low_quality", "blurred")), 1.0)
    assert len(events) == 1
    data = events[0].data
    assert isinstance(data, TrackStateData)
    assert data.previous is None and data.track_id == 7 and data.reasons == ("low_quality", "blurred")


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(suspicious_enter=0.8, alert_enter=0.5)


@pytest.mark.parametrize("kw", [{"suspicious_enter": 0.3, "alert_enter": 0.4, "hysteresis": 0.3}, {"suspicious_enter": 0.0}])
def test_thresholds_that_no_score_could_leave_are_refused(kw: dict[str, float]) -> None:
    # Before: hysteresis 0.3 with alert_enter 0.4 put the exit at 0.1 below suspicious_enter's,
    # 0.0: an alert stayed open through 60 s of scores of 0.
    with pytest.raises(ValueError, match="suspicious_enter"):
        PolicyConfig(**kw)


def test_one_outlier_at_a_tracks_start_does_not_open_an_alert() -> None:
    # The smoothed score starts at the first score. Before: a first 0.95 then a second of 0.45
    # held it above alert_enter for a half-life, which counted towards min_alert_s: an alert.
    cfg = PolicyConfig(ema_halflife_s=1.0, min_alert_s=1.0, min_state_s=1.0)
    events = run(TrackPolicy("s", 1, cfg), [(0.0, 0.95)] + steady(0.45, 0.1, 3))
    assert not [e for e in events if e.type == EventType.ALERT_OPENED]
    # Scores that are themselves above the threshold still alert after min_alert_s.
    events = run(TrackPolicy("s", 1, cfg), steady(0.95, 0, 3))
    opened = [e for e in events if e.type == EventType.ALERT_OPENED]
    assert len(opened) == 1 and 1.0 <= opened[0].time - 1000.0 <= 1.3


def test_face_returning_after_a_long_gap_is_judged_afresh() -> None:
    # High score, a gap long enough to become inconclusive, then a low score: the old
    # evidence must not re-open an alert on the first usable frame.
    series = steady(0.95, 0, 4) + [(4.0 + i / 10, None) for i in range(30)] + steady(0.05, 7, 10)
    events = run(TrackPolicy("s", 1, CFG), series)  # type: ignore[arg-type]
    assert [e.type for e in events].count(EventType.ALERT_OPENED) == 1
    assert states(events)[-2:] == [TrackState.INCONCLUSIVE, TrackState.CLEAR]


def test_short_spike_then_gap_does_not_alert() -> None:
    series = steady(0.95, 0, 0.5) + [(0.5 + i / 10, None) for i in range(30)] + steady(0.1, 3.5, 6)
    events = run(TrackPolicy("s", 1, CFG), series)  # type: ignore[arg-type]
    assert not [e for e in events if e.type == EventType.ALERT_OPENED]


def test_offline_scan_times_an_alert_from_when_it_opened(settings) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from monitor.pipeline.offline import summarise

    events = run(TrackPolicy("s", 1, CFG), steady(0.99, 0, 3))
    opened = [e for e in events if e.type == EventType.ALERT_OPENED]
    assert len(opened) == 1 and opened[0].data.start_t < 0.5  # the condition began at once...
    result = summarise("clip", settings, {}, events, 30, 30, 0.0, 3.0, 1.0, [], np.zeros(4), [])
    # ...but the alert opened only after min_alert_s: evaluate's time-to-detect counts from then.
    assert CFG.min_alert_s <= result.first_alert_t < CFG.min_alert_s + 0.5
    assert result.alerts_opened == 1


def test_two_short_spikes_with_an_unreadable_gap_do_not_make_an_alert() -> None:
    # The smoothed score crosses the threshold late in the first spike; then no readable score
    # for 1.9 s (shorter than inconclusive_after_s, so the smoothed score holds); then one more
    # high frame. Counting the gap as evidence opened an alert on about 0.5 s above threshold.
    cfg = PolicyConfig()
    series = steady(0.1, 0, 2) + steady(0.99, 2, 4) + steady(None, 4.0, 5.9) + [(5.9, 0.99)]  # type: ignore[arg-type,operator]
    events = run(TrackPolicy("s", 1, cfg), series)
    assert [e for e in events if e.type == EventType.ALERT_OPENED] == []


def first_alert_t(series: list) -> float | None:
    """Stream time at which the first alert opened (the track's state became alert)."""
    events = run(TrackPolicy("s", 1, PolicyConfig()), series)
    return next((e.data.t for e in events if isinstance(e.data, TrackStateData) and e.data.state == TrackState.ALERT), None)


def test_a_rejected_frame_or_two_does_not_delay_the_alert() -> None:
    # Unreadable frames (a blur spike) inside a run above threshold count in full, one or two
    # in a row: the alert opens when it would have with every frame readable.
    steady_run = steady(0.99, 0, 4)
    baseline = first_alert_t(steady_run)
    for every, gap in ((5, 1), (5, 2)):
        series = [(t, None if i % every >= every - gap else p) for i, (t, p) in enumerate(steady_run)]
        assert first_alert_t(series) == pytest.approx(baseline, abs=0.11)


@pytest.mark.parametrize("fps", [1, 2, 4, 30])
def test_min_alert_s_means_seconds_at_any_frame_rate(fps: float) -> None:
    # The step cap follows the track's own rhythm: a slow source is not penalised.
    t_alert = first_alert_t(steady(0.99, 0, 8, fps=fps))
    assert t_alert is not None and t_alert <= PolicyConfig().min_alert_s + 2.0 / fps + 1e-6


@pytest.mark.parametrize(
    "series",
    [
        [(0.0, 0.99), (1.0, 0.99)],  # two frames a second apart: no verdict between (face missed)
        [(0.0, 0.99), (0.1, None), (1.0, 0.99)],  # one rejected frame, then nothing
    ],
)
def test_a_gap_without_verdicts_is_not_evidence(series: list) -> None:
    assert first_alert_t(series) is None


def test_offline_scan_reports_the_state_a_track_ended_in(settings) -> None:  # type: ignore[no-untyped-def]
    # The end-of-track announcement (inconclusive, track_ended) follows every track's last state:
    # `monitor scan` must report the state the footage ended in, not that announcement.
    import numpy as np

    from monitor.pipeline.offline import TrackPoint, summarise

    policy = TrackPolicy("s", 1, CFG)
    events = run(policy, steady(0.99, 0, 3))
    assert policy.state == TrackState.ALERT
    events += policy.end(3.0, 1003.0)
    timeline = {1: [TrackPoint(3.0, TrackState.ALERT, 0.99, 0.99, ())]}
    result = summarise("clip", settings, timeline, events, 30, 30, 0.0, 3.0, 1.0, [], np.zeros(4), [])
    assert result.tracks[0].final_state == TrackState.ALERT


def test_verdicts_made_up_while_analysis_fails_do_not_stretch_the_frame_interval() -> None:
    # The stream sends a verdict with no score about every second while no frame or no
    # analysis comes. Before: those intervals made the median 1 s, so afterwards a 0.9 s gap
    # between two frames counted in full towards min_alert_s: three frames of 0.95 alerted.
    policy = TrackPolicy("s", 1, CFG)
    events: list = []
    for t in range(10):
        events += policy.update(verdict(float(t), None, ("analysis_failed",)), 1000.0 + t)
    events += run(policy, [(10.0, 0.95), (10.1, 0.95), (11.0, 0.95), (11.1, 0.95)])
    assert not [e for e in events if e.type == EventType.ALERT_OPENED]
    # Frames keep coming: min_alert_s of them does alert.
    events += run(policy, steady(0.95, 11.2, 12.5))
    assert [e for e in events if e.type == EventType.ALERT_OPENED]


def test_an_alert_downgraded_on_an_unreadable_frame_ends_at_the_last_readable_score() -> None:
    # min_state_s holds the alert after the score fell; the downgrade then came on a frame the
    # detector could not read, and took that frame's time as the alert's end.
    cfg = PolicyConfig(ema_halflife_s=0.2, min_alert_s=0.5, min_state_s=3.0)
    policy = TrackPolicy("s", 1, cfg)
    events = run(policy, steady(0.95, 0, 2) + steady(0.05, 2, 3))  # alert at ~0.5 s; score low by 2.3 s
    events += policy.update(verdict(3.5, None, ("low_quality",)), 1003.5)  # min_state_s passes here
    closed = [e.data for e in events if e.type == EventType.ALERT_CLOSED]
    assert len(closed) == 1 and closed[0].end_t == pytest.approx(2.9), closed
    assert closed[0].reasons[-2:] == ("score_below_threshold", "low_quality")


def test_an_alerts_start_time_is_the_wall_clock_time_of_its_start_t() -> None:
    # Before: wall time at opening minus the stream time since start_t, wrong for a file read
    # faster than real time (realtime: false): here 5 times, and start_time came out 1.3 s early.
    policy = TrackPolicy("s", 1, CFG)
    events = []
    for t, p in steady(0.1, 0, 1) + steady(0.95, 1, 3):
        events += policy.update(verdict(t, p), 1000.0 + t / 5)
    opened = [e.data for e in events if e.type == EventType.ALERT_OPENED]
    assert len(opened) == 1 and opened[0].start_t >= 1.0
    assert opened[0].start_time == pytest.approx(1000.0 + opened[0].start_t / 5)


# --- what an alert says (a third mutation audit found these unchecked) --------------------------


def test_an_open_alert_holds_between_the_exit_and_entry_thresholds() -> None:
    # Hysteresis on the way out too: a score that falls to 0.65 (under alert_enter, over
    # alert_exit) keeps the alert open instead of closing it and reopening at the next rise.
    events = run(TrackPolicy("s", 1, CFG), steady(0.95, 0, 3) + steady(0.65, 3, 8))
    assert [e.type for e in events].count(EventType.ALERT_OPENED) == 1
    assert EventType.ALERT_CLOSED not in [e.type for e in events]


def test_severities_of_alerts_and_track_states() -> None:
    from monitor.types import Severity

    events = run(TrackPolicy("s", 1, CFG), steady(0.1, 0, 2) + steady(0.95, 2, 5) + steady(0.05, 5, 9))
    opened = [e for e in events if e.type == EventType.ALERT_OPENED]
    closed = [e for e in events if e.type == EventType.ALERT_CLOSED]
    assert opened[0].severity == Severity.CRITICAL and closed[0].severity == Severity.INFO
    by_state = {e.data.state: e.severity for e in events if isinstance(e.data, TrackStateData)}
    assert by_state == {TrackState.CLEAR: Severity.INFO, TrackState.SUSPICIOUS: Severity.WARNING, TrackState.ALERT: Severity.CRITICAL}


def test_an_alerts_score_is_its_peak_while_open() -> None:
    events = run(TrackPolicy("s", 1, CFG), steady(0.75, 0, 2) + steady(0.99, 2, 4) + steady(0.05, 4, 8))
    closed = [e.data for e in events if e.type == EventType.ALERT_CLOSED]
    assert closed and closed[0].score >= 0.98


def test_an_alerts_reasons_name_its_strongest_signals_first() -> None:
    from monitor.types import Signal

    # Only the branches that said "manipulated" (value >= 0.5): temporal-v1 gives three signals
    # every time, and "top three" named branches that had pulled the score down too.
    signals = (Signal("weak", 0.1, 1.0), Signal("strong", 0.9, 1.0), Signal("mid", 0.5, 1.0), Signal("tiny", 0.01, 1.0),
               Signal("firm", 0.6, 0.9), Signal("against", 0.2, 3.0))
    policy, events = TrackPolicy("s", 1, CFG), []
    for t, p in steady(0.95, 0, 3):
        events.extend(policy.update(Verdict("s", 1, t, 0.0, Score(p, signals), None, ()), 1000.0 + t))
    opened = [e.data for e in events if e.type == EventType.ALERT_OPENED]
    assert opened[0].reasons[:4] == ("score_above_threshold", "strong", "firm", "mid")
    assert "against" not in opened[0].reasons and "weak" not in opened[0].reasons


def test_an_alert_closed_for_lost_evidence_does_not_claim_a_low_score() -> None:
    events = run(TrackPolicy("s", 1, CFG), steady(0.95, 0, 4) + [(4.0 + i / 10, None) for i in range(40)])
    closed = [e.data for e in events if e.type == EventType.ALERT_CLOSED]
    assert closed and "score_below_threshold" not in closed[0].reasons


def test_a_track_ended_at_an_earlier_time_ends_at_its_last_frame() -> None:
    # A source whose time went back (a third-party plugin restarting its clock) ended its tracks
    # at the new, earlier time: the alert's close came out before its own start.
    policy = TrackPolicy("s", 1, CFG)
    events = run(policy, steady(0.95, 10.0, 13.0))
    events += policy.end(0.0, 2000.0)
    opened = [e.data for e in events if e.type == EventType.ALERT_OPENED]
    closed = [e.data for e in events if e.type == EventType.ALERT_CLOSED]
    assert opened and closed and closed[0].end_t >= opened[0].start_t
    assert events[-1].data.t == pytest.approx(12.9)
