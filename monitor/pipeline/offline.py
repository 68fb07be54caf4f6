"""Offline scans: run a file or a stream through the same analyzer the live service uses and
summarise it per track and per video (``monitor scan``, ``monitor evaluate``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from monitor.clock import Clock
from monitor.components import detector_factory, faces_factory
from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import FaceStage, StreamAnalyzer
from monitor.plugins import Detector
from monitor.sources.av_source import limit_ffmpeg_allocations_for, sample_video
from monitor.types import AlertData, Event, EventType, TrackState, TrackStateData

# Video-level score = max over tracks of this percentile of the track's smoothed scores:
# robust to one noisy frame, yet a swap visible for a fraction of the clip still counts.
TRACK_PERCENTILE = 90
MIN_TRACK_POINTS = 5


@dataclass(frozen=True)
class TrackPoint:
    t: float
    state: TrackState
    score: float | None
    raw_score: float | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TrackSummary:
    track_id: int
    first_t: float
    last_t: float
    points: int
    usable_points: int
    score: float | None  # TRACK_PERCENTILE of smoothed scores
    max_score: float | None
    final_state: TrackState
    alerts: int
    timeline: tuple[TrackPoint, ...]


@dataclass(frozen=True)
class ScanResult:
    path: str
    duration_s: float
    frames_analysed: int
    frames_with_face: int
    first_face_t: float | None
    first_alert_t: float | None  # stream time the first alert opened (the service raised it)
    alerts_opened: int
    score: float | None  # video level, higher = more likely manipulated
    verdict: str  # alert | suspicious | clear | inconclusive
    reasons: tuple[str, ...]
    tracks: tuple[TrackSummary, ...]
    events: tuple[Event, ...] = field(repr=False)
    wall_s: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    stage_ms_mean: dict[str, float] = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float | None:
        return self.duration_s / self.wall_s if self.wall_s > 0 else None


class _ScanClock:
    """Events carry wall time; monotonic is real so latency is measured."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def dominant_reason(codes: Sequence[str]) -> str:
    """The most frequent reason a clip's faces were not judged. ``low_quality`` only heads
    the specific ones (``low_resolution``, ``blurred`` ...), so it counts only when alone; ties
    go to the reason seen first, so the answer never depends on hashing."""
    specific = [c for c in codes if c != "low_quality"] or list(codes)
    return Counter(specific).most_common(1)[0][0] if specific else "too_short"


def scan(
    url_or_path: str,
    settings: Settings,
    detector: Detector | None = None,
    faces: FaceStage | None = None,
    *,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    progress: Callable[[float], None] | None = None,
    max_duration_s: float | None = None,
    tls_verify: bool = True,
    ca_file: str | None = None,
) -> ScanResult:
    """Analyse ``url_or_path`` at the configured analysis fps, as fast as decoding allows.
    An rtsps:// or https:// server's certificate is checked (``ca_file``, else the system's
    CAs) unless ``tls_verify`` is false."""
    metrics = metrics or Metrics()
    limit_ffmpeg_allocations_for(settings.analysis)  # `monitor scan rtsp://…` meets the same servers
    if detector is None:
        detector = detector_factory(settings)()
    if faces is None:
        faces = faces_factory(settings)("scan")
    analyzer = StreamAnalyzer(
        "scan", settings.analysis, settings.policy, detector, faces, metrics, clock or _ScanClock()
    )
    # Offline, nothing is late: never skip detector work, so results do not depend on how
    # fast this machine happens to be.
    analyzer.budget_s = float("inf")
    timelines: dict[int, list[TrackPoint]] = {}
    first_seen: dict[int, float] = {}
    events: list[Event] = []
    latencies: list[float] = []
    stage_totals = np.zeros(4)
    frames = with_face = 0
    first_face_t: float | None = None
    first_t: float | None = None
    last_t = 0.0
    started = time.perf_counter()
    decode_errors: list[BaseException] = []
    try:
        for frame in sample_video(
            url_or_path,
            settings.analysis.fps,
            max_duration_s=max_duration_s,
            on_decode_error=decode_errors.append,
            tls_verify=tls_verify,
            ca_file=ca_file,
        ):
            analysis = analyzer.analyse(frame)
            frames += 1
            if first_t is None:
                first_t = frame.pts_s
            last_t = frame.pts_s
            t = analysis.times
            stage_totals += (t.convert, t.faces, t.detect, t.policy)
            if analysis.faces.faces:
                with_face += 1
                if first_face_t is None:
                    first_face_t = frame.pts_s
            if analysis.verdicts:
                latencies.append(analysis.latency_s)
            snapshots = {s.track_id: s for s in analyzer.snapshot()}
            for verdict in analysis.verdicts:
                snap = snapshots.get(verdict.track_id)
                if snap is None:
                    continue
                first_seen.setdefault(verdict.track_id, verdict.t)
                timelines.setdefault(verdict.track_id, []).append(
                    TrackPoint(round(verdict.t, 3), snap.state, snap.score, snap.raw_score, verdict.reasons)
                )
            events.extend(analysis.events)
            if progress is not None:
                progress(frame.pts_s)
    finally:
        events.extend(analyzer.end(last_t))
    wall = time.perf_counter() - started
    # Footage covered: from the first sampled frame to the end of the last one's interval (the
    # mean sampling interval: 1/fps, or longer where the source is slower than the analysis).
    if first_t is None:
        duration = 0.0
    else:
        duration = (last_t - first_t) * frames / (frames - 1) if frames > 1 else 1.0 / settings.analysis.fps
    return summarise(
        url_or_path, settings, timelines, events, frames, with_face, first_face_t, duration, wall, latencies,
        stage_totals, decode_errors,
    )


def summarise(
    path: str,
    settings: Settings,
    timelines: dict[int, list[TrackPoint]],
    events: list[Event],
    frames: int,
    with_face: int,
    first_face_t: float | None,
    duration: float,
    wall: float,
    latencies: list[float],
    stage_totals: np.ndarray,
    decode_errors: list[BaseException],
) -> ScanResult:
    alerts_by_track: dict[int, int] = {}
    first_alert_t: float | None = None
    for e in events:
        if e.type == EventType.ALERT_OPENED and isinstance(e.data, AlertData):
            alerts_by_track[e.data.track_id] = alerts_by_track.get(e.data.track_id, 0) + 1
        # When the alert opened (the state change that opens it), not AlertData.start_t: that is
        # when the score first crossed the threshold, at least policy.min_alert_s earlier.
        if isinstance(e.data, TrackStateData) and e.data.state == TrackState.ALERT and e.data.previous != TrackState.ALERT:
            first_alert_t = e.data.t if first_alert_t is None else min(first_alert_t, e.data.t)
    final_states: dict[int, TrackState] = {}
    for e in events:
        # A track's state when the footage ended, not the end-of-track announcement that follows.
        if isinstance(e.data, TrackStateData) and "track_ended" not in e.data.reasons:
            final_states[e.data.track_id] = e.data.state
    tracks = []
    for tid, points in sorted(timelines.items()):
        scores = [p.score for p in points if p.score is not None and p.raw_score is not None]
        usable = len(scores)
        tracks.append(
            TrackSummary(
                track_id=tid,
                first_t=points[0].t,
                last_t=points[-1].t,
                points=len(points),
                usable_points=usable,
                score=float(np.percentile(scores, TRACK_PERCENTILE)) if usable >= MIN_TRACK_POINTS else None,
                max_score=max(scores) if scores else None,
                final_state=final_states.get(tid, points[-1].state),
                alerts=alerts_by_track.get(tid, 0),
                timeline=tuple(points),
            )
        )
    judged = [t.score for t in tracks if t.score is not None]
    score = max(judged) if judged else None
    reasons: list[str] = []
    n_alerts = sum(alerts_by_track.values())
    p = settings.policy
    if n_alerts:  # an alert raised is the verdict, even on a track too short for a score
        verdict = "alert"
    elif score is None:
        verdict = "inconclusive"
        if frames == 0:
            reasons.append("no_frames")
        elif with_face == 0:
            reasons.append("no_face")
        else:
            reasons.append(dominant_reason([r for t in tracks for pt in t.timeline for r in pt.reasons]))
    elif score >= p.suspicious_enter:
        verdict = "suspicious"
    else:
        verdict = "clear"
    if decode_errors:
        reasons.append(f"decode_errors:{len(decode_errors)}")
    lat = np.array(latencies) * 1000
    return ScanResult(
        path=path,
        duration_s=round(duration, 3),
        frames_analysed=frames,
        frames_with_face=with_face,
        first_face_t=first_face_t,
        first_alert_t=first_alert_t,
        alerts_opened=n_alerts,
        score=None if score is None else round(score, 4),
        verdict=verdict,
        reasons=tuple(reasons),
        tracks=tuple(tracks),
        events=tuple(events),
        wall_s=round(wall, 3),
        latency_ms_p50=round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        latency_ms_p99=round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        stage_ms_mean={
            name: round(float(v) * 1000 / max(frames, 1), 3)
            for name, v in zip(("convert", "faces", "detect", "policy"), stage_totals)
        },
    )
