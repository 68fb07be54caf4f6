"""One stream's analysis, synchronous and thread-confined: faces -> detector -> policy.

The live pipeline runs it in the stream's worker thread; offline scans and evaluation call it
directly, so both see exactly the same stages. Stage costs are measured on every frame, and
when the previous frame ran over budget the detector's per-frame work is skipped rather than
queued.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from monitor.alerts.evidence import EvidenceStore, evidence_url
from monitor.alerts.policy import TrackPolicy
from monitor.clock import Clock, SystemClock
from monitor.config import AnalysisConfig, PolicyConfig
from monitor.metrics import Metrics
from monitor.plugins import Detector, TrackWindow
from monitor.types import (
    AlertData,
    Event,
    EventType,
    FaceFrame,
    FaceObservation,
    FaceQuality,
    Frame,
    Score,
    Signal,
    TrackState,
    Verdict,
)

logger = logging.getLogger(__name__)


class FaceStage:
    """What the analyzer needs from a face tracker (monitor.faces.FaceTracker)."""

    def process(self, frame: Frame, rgb: object) -> FaceFrame:  # pragma: no cover - protocol
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass(frozen=True)
class StageTimes:
    convert: float
    faces: float
    detect: float
    policy: float

    @property
    def total(self) -> float:
        return self.convert + self.faces + self.detect + self.policy


@dataclass(frozen=True, eq=False)
class Analysis:
    """What one analysed frame produced."""

    frame_seq: int
    t: float
    faces: FaceFrame
    verdicts: tuple[Verdict, ...]
    events: tuple[Event, ...]
    times: StageTimes
    latency_s: float  # frame left the decoder -> verdict ready


@dataclass(frozen=True)
class TrackSnapshot:
    """The current state of one face track, for status pages."""

    track_id: int
    state: TrackState
    score: float | None
    raw_score: float | None
    reasons: tuple[str, ...]
    since_t: float | None
    first_t: float | None


def quality_reasons(q: FaceQuality, c: AnalysisConfig) -> tuple[str, ...]:
    """Reason codes for a face too poor to judge; empty when it is usable."""
    reasons = []
    # Written so that NaN fails each test: every comparison with NaN is False, and a face stage
    # plugin's NaN quality passed them all before.
    if not q.face_px >= c.min_face_px:
        reasons.append("low_resolution")
    if not q.blur >= c.min_blur:
        reasons.append("blurred")
    if not q.out_of_frame <= 0.15:
        reasons.append("out_of_frame")
    if not q.occlusion <= 0.6:
        reasons.append("occluded")
    if reasons:
        reasons.insert(0, "low_quality")
    return tuple(reasons)


# Aligned face crops kept per track for an alert's evidence: the last few, this far apart.
EVIDENCE_CROPS = 4
EVIDENCE_CROP_STEP_S = 0.25


class _Track:
    def __init__(self, stream_id: str, track_id: int, horizon_s: float, policy: PolicyConfig, frame_interval_s: float) -> None:
        self.window = TrackWindow(stream_id, track_id, horizon_s)
        self.policy = TrackPolicy(stream_id, track_id, policy, frame_interval_s)
        self.counted: TrackState | None = None  # the state this track adds to the state gauge
        self.crops: deque[tuple[float, np.ndarray]] = deque(maxlen=EVIDENCE_CROPS)  # only with evidence on


class StreamAnalyzer:
    def __init__(
        self,
        stream_id: str,
        analysis: AnalysisConfig,
        policy: PolicyConfig,
        detector: Detector,
        faces: FaceStage,
        metrics: Metrics,
        clock: Clock | None = None,
        fps: float | None = None,
        evidence: EvidenceStore | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.evidence = evidence  # None: no evidence saved (offline scans, `alerts.evidence: false`)
        self.analysis = analysis
        self.policy_config = policy
        self.detector = detector
        self.faces = faces
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.fps = fps or analysis.fps
        self.budget_s = analysis.budget_s or 1.0 / self.fps
        self.tracks: dict[int, _Track] = {}
        # Tracks the face stage reported ended and not yet closed here. It reports each only
        # once, so they are kept until a frame's analysis succeeds: dropped with a failed frame,
        # a track (and its open alert) would stay until the stream stops.
        self._ended: set[int] = set()
        self._over_budget = False
        self._skipped_last = False
        self._detached = False  # its stream was removed while a call was stuck: count nothing
        self._gauge_lock = threading.Lock()  # detach() runs on the loop thread, the rest here
        # The tracks and their policies. The worker thread updates them; the loop thread may too
        # while a call is stuck in a native library (idle: analysis stalled; abandon: the stream
        # is gone). Held only around policy work, never around the face stage or the detector,
        # so the loop never waits for a stuck call.
        self._lock = threading.Lock()
        self._abandoned = False  # abandon() closed every track: nothing may reopen one
        self._warned_invalid_score = False  # a plugin returned a probability outside 0..1 (logged once)
        self._warned_detector_error = False  # the detector raised on a face (logged once with its traceback)
        self._detector_failures: list[tuple[int, Exception]] = []  # this frame's: (track id, error) per face it raised on
        self._detector_calls = 0  # this frame's faces that reached the detector (not gated by quality)
        self._warned_invalid_signal = False  # a plugin returned a signal whose value or weight is no number
        self._declared_stalled = False  # idle(analysis_stalled) ran while the current call ran
        self._timer: Callable[[], float] = time.perf_counter

    def analyse(self, frame: Frame) -> Analysis:
        with self._lock:
            # A stall declared during an earlier call (one that then raised) is not this one's.
            self._declared_stalled = False
        timer = self._timer
        t0 = timer()
        rgb = frame.rgb()
        t1 = timer()
        face_frame = self.faces.process(frame, rgb)
        t2 = timer()

        # Over budget last frame because of the detector: reuse the windows as they are instead
        # of adding this frame's features, but never twice in a row (skipping each time froze
        # every window: a new face never got a score, a swap switched on mid-call was never seen).
        skip_detect = self._over_budget and not self._skipped_last
        self._skipped_last = skip_detect
        multiple = len(face_frame.faces) > 1
        with self._lock:
            abandoned = self._abandoned
            if not abandoned:
                self._ended.update(face_frame.ended_tracks)
                tracks = [self._track(obs.track_id) for obs in face_frame.faces]
        if abandoned:  # the stream was closed while this call was stuck: it changes nothing
            return Analysis(frame.seq, frame.pts_s, face_frame, (), (), StageTimes(t1 - t0, t2 - t1, 0.0, 0.0), 0.0)
        # Windows and the detector are this thread's alone: no lock while scoring.
        self._detector_failures, self._detector_calls = [], 0
        scored = [(track, self._verdict(track, obs, multiple, skip_detect)) for track, obs in zip(tracks, face_frame.faces)]
        if self._detector_failures and len(self._detector_failures) == self._detector_calls:
            # Every face the detector was asked about failed: the frame failed, as before (the
            # stream counts it, and past inconclusive_after_s its tracks go inconclusive with
            # analysis_failed). Only when others were judged is the failure that face's alone.
            raise self._detector_failures[0][1]
        if self._detector_failures:
            self.metrics.detector_errors.labels(self.stream_id).inc(len(self._detector_failures))
            track_id, exc = self._detector_failures[0]
            if not self._warned_detector_error:
                self._warned_detector_error = True
                logger.error("stream %s: the detector failed on face %d; that face goes without a score (detector_error)",
                             self.stream_id, track_id, exc_info=exc)
            else:
                logger.debug("stream %s: the detector failed on face %d", self.stream_id, track_id, exc_info=exc)
        verdicts = [verdict for _, verdict in scored]
        if self.evidence is not None:
            for track, obs in zip(tracks, face_frame.faces):
                if obs.crop is not None and (not track.crops or obs.t - track.crops[-1][0] >= EVIDENCE_CROP_STEP_S):
                    track.crops.append((obs.t, obs.crop))
        if skip_detect:
            self.metrics.work_skipped.labels("detect").inc()
        t3 = timer()

        wall = self.clock.time()
        events: list[Event] = []
        with self._lock:
            if not self._abandoned:
                # A call the loop declared stalled (idle "analysis_stalled") returns verdicts on
                # a frame older than the inconclusive state it already produced: applied now,
                # they would move the track back in time. Its next frame is judged afresh.
                late, self._declared_stalled = self._declared_stalled, False
                for track, verdict in scored if not late else ():
                    events.extend(self._update(track, verdict, wall))
                    self._count_state(track)
                for track_id in sorted(self._ended):
                    ended = self.tracks.pop(track_id, None)
                    if ended is not None:
                        events.extend(ended.policy.end(frame.pts_s, wall))
                        self._forget_state(ended)
                self._ended.clear()
        if self.evidence is not None and events:
            # Part of the policy stage, against the budget: an alert's JPEGs and write are rare but not free.
            try:
                events = self._with_evidence(events, frame, rgb, {o.track_id: (tr, o) for tr, o in zip(tracks, face_frame.faces)})
            except Exception:
                # The policy has already moved on (an alert it opened stays open): losing these
                # events would publish a close for an alert nobody saw open. The alert goes out
                # without evidence instead.
                logger.exception("stream %s: saving alert evidence failed; the events go out without it", self.stream_id)
        t4 = timer()

        times = StageTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        # The next frame skips its detector work only if that brings it back within the budget.
        # When the rest (finding faces, above all) takes longer by itself, skipping saved little
        # and halved every window's row rate, which moves temporal-v1's scores (it is calibrated
        # at 10 rows a second) and delays a new face's first score.
        self._over_budget = times.total > self.budget_s and times.total - times.detect <= self.budget_s
        latency = self.clock.monotonic() - frame.received_at
        if not self._detached:
            self._observe(times, latency, scored, len(face_frame.faces))
        return Analysis(frame.seq, frame.pts_s, face_frame, tuple(verdicts), tuple(events), times, latency)

    def _with_evidence(
        self, events: list[Event], frame: Frame, rgb: np.ndarray, seen: dict[int, tuple[_Track, FaceObservation]]
    ) -> list[Event]:
        """``events`` with each alert that opened on this frame queued as evidence, and its
        ``evidence`` path set when it was queued (the alert is raised either way). ``seen``:
        this frame's tracks and faces by track id."""
        assert self.evidence is not None
        out = []
        for event in events:
            data = event.data
            if event.type == EventType.ALERT_OPENED and isinstance(data, AlertData):
                track, obs = seen.get(data.track_id, (None, None))
                crops = list(track.crops) if track is not None else []
                if obs is not None and obs.crop is not None and (not crops or crops[-1][0] != obs.t):
                    crops = [*crops, (obs.t, obs.crop)][-EVIDENCE_CROPS:]  # always the alert's own frame
                # Queued for the store's writer thread: a slow disk must not hold this one.
                if self.evidence.submit(self.stream_id, data, frame.pts_s, rgb, obs.bbox if obs else None, crops):
                    url = evidence_url(data.alert_id)
                    event = dataclasses.replace(event, data=dataclasses.replace(data, evidence=url))
                    if track is not None:
                        with self._lock:
                            track.policy.set_evidence(data.alert_id, url)  # its close names it too
            out.append(event)
        return out

    def _track(self, track_id: int) -> _Track:
        track = self.tracks.get(track_id)
        if track is None:
            track = self.tracks[track_id] = _Track(
                self.stream_id, track_id, self.detector.window_s, self.policy_config, 1.0 / self.fps
            )
        return track

    def _verdict(self, track: _Track, obs: FaceObservation, multiple: bool, skip_detect: bool) -> Verdict:
        reasons = quality_reasons(obs.quality, self.analysis)
        if reasons:
            score = Score(None, (), reasons)
        else:
            self._detector_calls += 1
            try:
                if skip_detect and len(track.window) and obs.t - track.window.observations[-1].t <= 2.5 / self.fps:
                    # Over budget: reuse the window as it is instead of adding this frame's features;
                    # only a recent one: after a gap (a face unreadable for seconds) its score
                    # would be from before the gap, published as fresh evidence.
                    features = track.window.features[-1]
                else:
                    features = self.detector.features(obs)
                    track.window.push(obs, features)
                # None: the detector can read nothing in this frame (no crop, a degenerate mesh, a
                # face the detector's own gate rejects), or, when this frame is skipped, in the last
                # one. Scoring the window again would repeat the last probability as fresh evidence:
                # held for seconds, it counted towards min_alert_s and kept the track from ever
                # turning inconclusive.
                score = self.detector.score(track.window) if features is not None else Score(None, (), ("unusable_frame",))
            except Exception as exc:
                # This face only (analyse decides): the whole frame failing left every other face
                # in the stream unjudged for as long as this one stayed in view.
                self._detector_failures.append((obs.track_id, exc))
                score = Score(None, (), ("detector_error",))
            score = self._checked_signals(score)
            p = score.probability
            if isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 <= float(p) <= 1.0:  # NaN fails
                if type(p) is not float:  # numpy's float32, say: the event log stores plain floats
                    score = dataclasses.replace(score, probability=float(p))
            elif p is not None:
                # A plugin's bug: one NaN would make the track's smoothed score NaN for good,
                # and a NaN compares below every threshold, so the face could never alert.
                if not self._warned_invalid_score:
                    self._warned_invalid_score = True
                    logger.error("stream %s: detector %s returned probability %r; treated as no score (invalid_score)",
                                 self.stream_id, getattr(self.detector, "name", type(self.detector).__name__), p)
                score = Score(None, (), ("invalid_score",))
        all_reasons = tuple(dict.fromkeys(reasons + score.reasons + (("multiple_faces",) if multiple else ())))
        return Verdict(self.stream_id, obs.track_id, obs.t, obs.received_at, score, obs.quality, all_reasons)

    def _checked_signals(self, score: Score) -> Score:
        """``score`` with only the signals whose value and weight are finite numbers, as plain
        floats: one with a None weight raised inside the policy, after it had moved to "alert"
        and before the alert existed, losing the frame's events for every face."""
        good = tuple(
            s if isinstance(s, Signal) and type(s.value) is float and type(s.weight) is float
            else Signal(str(s.name), float(s.value), float(s.weight))  # a plugin's own signal type (a namedtuple), or numpy numbers
            for s in score.signals
            if all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (getattr(s, "value", None), getattr(s, "weight", None)))
        )
        if len(good) == len(score.signals) and all(a is b for a, b in zip(good, score.signals)):
            return score
        if len(good) != len(score.signals) and not self._warned_invalid_signal:
            self._warned_invalid_signal = True
            logger.error("stream %s: detector %s returned signals that are not numbers %r; dropped from explanations",
                         self.stream_id, getattr(self.detector, "name", type(self.detector).__name__), score.signals)
        return dataclasses.replace(score, signals=good)

    def _update(self, track: _Track, verdict: Verdict, wall: float) -> list[Event]:
        """The track's policy update; a failure is that track's alone, logged, and the other
        tracks' events of the frame still go out (one raising used to drop them all, an
        alert.opened among them, and its close was published for an alert nobody saw open)."""
        try:
            return track.policy.update(verdict, wall)
        except Exception:
            logger.exception("stream %s: the alert policy failed on face %d; its verdict is skipped", self.stream_id, verdict.track_id)
            return []

    def _observe(self, times: StageTimes, latency: float, scored: list[tuple[_Track, Verdict]], n_faces: int) -> None:
        m = self.metrics
        m.frames_analysed.labels(self.stream_id).inc()
        m.stage_seconds.labels("convert").observe(times.convert)
        m.stage_seconds.labels("faces").observe(times.faces)
        m.stage_seconds.labels("detect").observe(times.detect)
        m.stage_seconds.labels("policy").observe(times.policy)
        if scored:
            m.frame_to_verdict_seconds.observe(latency)
        m.faces_tracked.labels(self.stream_id).set(len(self.tracks))
        for track, _ in scored:
            m.verdicts.labels(track.policy.state.value).inc()

    def _count_state(self, track: _Track) -> None:
        """Keep the state gauge at what each track is now. A track counts once it has been
        announced (its first state event); one created on a frame whose analysis failed never
        was, so it never counts."""
        with self._gauge_lock:
            now = track.policy.state if track.policy.announced and not self._detached else None
            if track.counted != now:
                if track.counted is not None:
                    self.metrics.track_states.labels(track.counted.value).dec()
                if now is not None:
                    self.metrics.track_states.labels(now.value).inc()
                track.counted = now

    def _forget_state(self, track: _Track) -> None:
        with self._gauge_lock:
            if track.counted is not None:
                self.metrics.track_states.labels(track.counted.value).dec()
                track.counted = None

    def detach(self) -> None:
        """The stream is gone while a call is still running: whatever it finishes, it must not
        bring back the stream's metrics (its per-stream series were removed). Its tracks leave
        the state gauge now, since ``end`` will not run."""
        with self._gauge_lock:
            self._detached = True
        for track in list(self.tracks.values()):
            self._forget_state(track)

    def idle(self, t: float, reason: str = "no_frames") -> list[Event]:
        """No verdict has come for a while (stream time ``t`` now): every track gets an
        unreadable verdict, so one without a readable score for ``policy.inconclusive_after_s``
        goes inconclusive and closes its alert, ending it at its last readable score. The tracks
        stay: a face seen again when verdicts return is judged afresh on the same track.

        ``reason`` says why: ``no_frames`` (the source sends none), ``analysis_failed`` (every
        analysis raises), ``analysis_stalled`` (a call has not returned). Safe to call from
        another thread while ``analyse`` is stuck."""
        wall = self.clock.time()
        events: list[Event] = []
        with self._lock:
            if self._abandoned:
                return events
            if reason == "analysis_stalled":
                self._declared_stalled = True
            for track_id, track in sorted(self.tracks.items()):
                score = Score(None, (), (reason,))
                verdict = Verdict(self.stream_id, track_id, t, self.clock.monotonic(), score, None, (reason,))
                events.extend(self._update(track, verdict, wall))
                self._count_state(track)
        return events

    def abandon(self, t: float) -> list[Event] | None:
        """The stream is gone while a call is stuck (from another thread): close every track's
        open alert now, ending it at its last readable score, as ``end`` would. ``end`` still
        closes the face stage when the call returns, and closes no alert twice. None when
        ``end`` (or ``abandon``) already closed them."""
        with self._lock:
            if self._abandoned:
                return None
            self._abandoned = True
            wall = self.clock.time()
            events: list[Event] = []
            for track in self.tracks.values():
                events.extend(track.policy.end(t, wall))
                self._forget_state(track)
            self.tracks.clear()
            self._ended.clear()
        return events

    def end(self, t: float) -> list[Event]:
        """The stream is over: close every track (and its open alert) and the face stage."""
        events = self.abandon(t) or []
        try:
            self.faces.close()
        except Exception:  # the events above already closed the tracks in memory: never lose them
            logger.exception("stream %s: closing the face stage failed", self.stream_id)
        if not self._detached:
            self.metrics.faces_tracked.labels(self.stream_id).set(0)  # not the last frame's count
        return events

    def snapshot(self) -> list[TrackSnapshot]:
        # Under the lock the analysis thread updates policies under: read between its writes,
        # a track showed states that never existed ("alert" with no score). The lock is never
        # held across a native call, so a status request does not wait on a stuck analysis.
        with self._lock:
            return [
                TrackSnapshot(
                    tid,
                    tr.policy.state,
                    tr.policy.smoothed,
                    tr.policy.raw,
                    tr.policy.reasons,
                    tr.policy.since_t,
                    tr.window.first_t,
                )
                for tid, tr in sorted(self.tracks.items())
            ]
