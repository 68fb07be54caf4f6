"""Verdict policy, pure: smooth scores per face track and move between clear / suspicious /
alert / inconclusive with hysteresis and minimum durations, so states never flap.

All times are stream seconds (``Verdict.t``); nothing here reads a clock.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections import deque
from dataclasses import dataclass

from monitor.config import PolicyConfig
from monitor.types import (
    AlertData,
    Event,
    EventType,
    Severity,
    Signal,
    TrackState,
    TrackStateData,
    Verdict,
)

SEVERITY = {
    TrackState.CLEAR: Severity.INFO,
    TrackState.INCONCLUSIVE: Severity.INFO,
    TrackState.SUSPICIOUS: Severity.WARNING,
    TrackState.ALERT: Severity.CRITICAL,
}


@dataclass
class _OpenAlert:
    alert_id: str
    start_t: float
    start_time: float
    peak: float
    reasons: tuple[str, ...]
    signals: tuple[Signal, ...]
    evidence: str | None = None  # the API path of its evidence, once queued


# Reasons of the verdicts the analyzer makes up while no frame, or no analysis, comes (idle).
IDLE_REASONS = frozenset({"no_frames", "analysis_failed", "analysis_stalled"})


class TrackPolicy:
    """The state machine of one face track. ``update`` returns the events it caused."""

    def __init__(self, stream_id: str, track_id: int, config: PolicyConfig, frame_interval_s: float = 0.1) -> None:
        self.stream_id = stream_id
        self.track_id = track_id
        self.config = config
        # Evidence time above the alert threshold is counted between readable scores, each step
        # at most three of the track's usual verdict intervals: one or two rejected frames still
        # count in full, a longer stretch without a readable score does not, whether it held
        # unreadable verdicts or none at all (face missed, frames dropped): two short spikes
        # with a gap never make an alert. The usual interval is the median of the recent ones,
        # starting from the analysis interval: a source slower than configured loses nothing.
        self._intervals: deque[float] = deque([frame_interval_s], maxlen=9)
        self._last_frame_t: float | None = None  # the last verdict on a frame (not an idle one)
        self._above_s = 0.0
        self._step_s: float | None = None  # this update's readable step, not yet counted
        self.state = TrackState.INCONCLUSIVE
        self.since_t: float | None = None
        self.smoothed: float | None = None
        self.raw: float | None = None
        self.reasons: tuple[str, ...] = ("warming_up",)
        self.signals: tuple[Signal, ...] = ()
        self._last_usable_t: float | None = None
        self._above_alert_since: float | None = None
        self._above_alert_wall = 0.0  # the wall-clock time of _above_alert_since
        self._last_usable_wall = 0.0
        self._alert: _OpenAlert | None = None
        self._announced = False

    @property
    def announced(self) -> bool:
        """Whether the track's first state event has been emitted (it counts in the state gauge)."""
        return self._announced

    # ----------------------------------------------------------------------------------
    def update(self, verdict: Verdict, wall_time: float) -> list[Event]:
        c = self.config
        t = verdict.t
        if self.since_t is None:
            self.since_t = t
        p = verdict.score.probability
        self.raw = p
        if not IDLE_REASONS.intersection(verdict.reasons):
            # The frame interval, from verdicts on frames only: the ones the stream makes up while
            # no frame or no analysis comes (every second or so) had raised the median until a
            # gap between frames 3 times as long counted towards min_alert_s.
            if self._last_frame_t is not None and t > self._last_frame_t:
                self._intervals.append(t - self._last_frame_t)
            self._last_frame_t = t
        if p is not None:
            if self.smoothed is None or self._last_usable_t is None:
                self.smoothed = p
            else:
                # Decay by the time since the last *usable* score, so evidence is weighed by age.
                alpha = 1.0 - math.pow(0.5, max(t - self._last_usable_t, 0.0) / c.ema_halflife_s)
                self.smoothed += alpha * (p - self.smoothed)
            if self._last_usable_t is None:
                self._step_s = 0.0
            else:
                self._step_s = min(max(t - self._last_usable_t, 0.0), 3.0 * statistics.median_low(self._intervals))
            self._last_usable_t = t
            self._last_usable_wall = wall_time
            self.signals = verdict.score.signals
        self.reasons = verdict.reasons

        target = self._target(t)
        events: list[Event] = []
        if not self._announced:
            # The first verdict announces the track (previous=None), whatever its state, so
            # subscribers learn it exists. An alert is opened only by a transition.
            self._announced = True
            self.state = TrackState.SUSPICIOUS if target == TrackState.ALERT else target
            events.append(self._state_event(None, t, wall_time))
        if target != self.state:
            events.extend(self._transition(target, t, wall_time))
        elif self._alert is not None and self.smoothed is not None:
            self._alert.peak = max(self._alert.peak, self.smoothed)
        return events

    def end(self, t: float, wall_time: float) -> list[Event]:
        """The track is gone (the face left, the stream stopped): close an open alert, ending it
        at its last readable evidence, then announce the end in a last track.state event
        (``inconclusive``, reason ``track_ended``). Without it a subscriber saw a track that left
        while ``suspicious`` stay suspicious for ever. A ``t`` before the track's last frame (a
        source whose time went back) ends it at that frame instead: the close came out before
        the alert's own start."""
        if self._last_frame_t is not None and t < self._last_frame_t:
            t = self._last_frame_t
        events = self._close_alert(self._evidence_end(t), wall_time, ("track_ended",))
        if self._announced:
            previous, self.state, self.since_t = self.state, TrackState.INCONCLUSIVE, t
            self.reasons = ("track_ended",)
            events.append(self._state_event(previous, t, wall_time))
            self._announced = False  # ended once: a second end() announces nothing
        return events

    def _evidence_end(self, t: float) -> float:
        """When the evidence for an alert closed for want of evidence stopped: the last readable
        score, not the moment the track was declared inconclusive or lost (up to
        ``inconclusive_after_s`` or the tracker's timeout later)."""
        return t if self._last_usable_t is None else min(t, self._last_usable_t)

    # ----------------------------------------------------------------------------------
    def _target(self, t: float) -> TrackState:
        c = self.config
        s = self.smoothed
        usable_recently = self._last_usable_t is not None and t - self._last_usable_t < c.inconclusive_after_s
        if s is None or not usable_recently:
            # A brief gap in usable scores keeps the last state (the smoothed score holds);
            # a gap longer than inconclusive_after_s makes the track inconclusive and forgets
            # the old evidence, so a returning face is judged afresh (no instant re-alert).
            self.smoothed = None
            self._above_alert_since = None
            return TrackState.INCONCLUSIVE

        last_usable = self._last_usable_t
        assert last_usable is not None
        step, self._step_s = self._step_s, None
        # Only time the detector itself scored above the threshold counts, and an alert begins
        # at such a score: the smoothed score starts at a track's first score, so one outlier
        # there (0.95, then a second of 0.45) held it above alert_enter for a half-life and
        # opened an alert, and it still marked when later evidence had begun.
        raw_above = self.raw is not None and self.raw >= c.alert_enter
        if s >= c.alert_enter:
            if self._above_alert_since is None:
                if raw_above and step is not None:
                    self._above_alert_since = last_usable
                    self._above_alert_wall = self._last_usable_wall
                    self._above_s = 0.0
            elif step is not None and raw_above:
                self._above_s += step
        else:
            self._above_alert_since = None
        # Only readable evidence counts towards min_alert_s: a gap does not extend a spike.
        alert_ready = self._above_alert_since is not None and self._above_s >= c.min_alert_s - 1e-9

        dwell = t - (self.since_t if self.since_t is not None else t)
        can_downgrade = dwell >= c.min_state_s
        state = self.state
        if state == TrackState.ALERT:
            if s >= c.alert_enter - c.hysteresis or not can_downgrade:
                return TrackState.ALERT
            return TrackState.SUSPICIOUS if s >= c.suspicious_enter - c.hysteresis else TrackState.CLEAR
        if alert_ready:
            return TrackState.ALERT
        if state == TrackState.SUSPICIOUS:
            if s >= c.suspicious_enter - c.hysteresis or not can_downgrade:
                return TrackState.SUSPICIOUS
            return TrackState.CLEAR
        # CLEAR or INCONCLUSIVE
        return TrackState.SUSPICIOUS if s >= c.suspicious_enter else TrackState.CLEAR

    def _transition(self, target: TrackState, t: float, wall_time: float) -> list[Event]:
        previous = self.state
        events: list[Event] = []
        if previous == TrackState.ALERT:
            # Ended at the last readable score: the one below the threshold, or, for want of
            # readable scores, the last one there was. A downgrade can land on an unreadable
            # frame once min_state_s has passed; that frame's time is no evidence.
            why = self.reasons if target == TrackState.INCONCLUSIVE else ("score_below_threshold", *self.reasons)
            events.extend(self._close_alert(self._evidence_end(t), wall_time, why))
        self.state = target
        self.since_t = t
        events.append(self._state_event(previous, t, wall_time))
        if target == TrackState.ALERT:
            start_t = self._above_alert_since if self._above_alert_since is not None else t
            peak = self.smoothed if self.smoothed is not None else 0.0
            # start_time: when it began, on the wall clock (it opens min_alert_s or more later).
            began = self._above_alert_wall if self._above_alert_since is not None else wall_time
            self._alert = _OpenAlert(uuid.uuid4().hex, start_t, began, peak, self._alert_reasons(), self.signals)
            events.append(self._alert_event(EventType.ALERT_OPENED, None, wall_time))
        return events

    def set_evidence(self, alert_id: str, path: str) -> None:
        """Name the evidence of the open alert ``alert_id``: its close will carry it too."""
        if self._alert is not None and self._alert.alert_id == alert_id:
            self._alert.evidence = path

    def _alert_reasons(self) -> tuple[str, ...]:
        reasons = ["score_above_threshold"]
        # The branches that said "manipulated" (their own score at least 0.5), strongest first:
        # temporal-v1 always gives three signals, so the top three named every branch, those
        # that pulled the score down among them.
        towards = [s for s in self.signals if s.value >= 0.5]
        reasons.extend(s.name for s in sorted(towards, key=lambda s: -s.weight * s.value)[:3])
        reasons.extend(r for r in self.reasons if r not in reasons)
        return tuple(reasons)

    def _close_alert(self, t: float, wall_time: float, reasons: tuple[str, ...]) -> list[Event]:
        if self._alert is None:
            return []
        event = self._alert_event(EventType.ALERT_CLOSED, t, wall_time, extra_reasons=reasons)
        self._alert = None
        return [event]

    def _alert_event(
        self, kind: EventType, end_t: float | None, wall_time: float, extra_reasons: tuple[str, ...] = ()
    ) -> Event:
        a = self._alert
        assert a is not None
        reasons = a.reasons + tuple(r for r in extra_reasons if r not in a.reasons)
        data = AlertData(
            alert_id=a.alert_id,
            track_id=self.track_id,
            score=round(a.peak, 4),
            reasons=reasons,
            signals=a.signals,
            start_t=round(a.start_t, 3),
            end_t=None if end_t is None else round(end_t, 3),
            start_time=a.start_time,
            evidence=a.evidence,
        )
        severity = Severity.CRITICAL if kind == EventType.ALERT_OPENED else Severity.INFO
        return Event(kind, self.stream_id, severity, wall_time, data)

    def _state_event(self, previous: TrackState | None, t: float, wall_time: float) -> Event:
        data = TrackStateData(
            track_id=self.track_id,
            state=self.state,
            previous=previous,
            score=None if self.smoothed is None else round(self.smoothed, 4),
            raw_score=None if self.raw is None else round(self.raw, 4),
            reasons=self.reasons,
            signals=self.signals,
            since_t=round(self.since_t if self.since_t is not None else t, 3),
            t=round(t, 3),
        )
        return Event(EventType.TRACK_STATE, self.stream_id, SEVERITY[self.state], wall_time, data)
