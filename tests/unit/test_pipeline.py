"""Pipeline seams with fakes: latest-frame hand-off, backoff, the analyzer's budget and reasons."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from monitor.clock import FakeClock, RateMeter
from monitor.config import AnalysisConfig, PolicyConfig, redact_url
from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import StreamAnalyzer, quality_reasons
from monitor.plugins import TrackWindow
from monitor.sources.base import Backoff, LatestSlot, ThreadedSource
from monitor.types import (
    EventType,
    FaceFrame,
    FaceObservation,
    FaceQuality,
    Frame,
    Score,
    Signal,
    StreamState,
    TrackState,
)

GOOD = FaceQuality(face_px=120, blur=100, out_of_frame=0, occlusion=0.1, confidence=0.9)


def frame(seq: int, t: float, received_at: float = 0.0) -> Frame:
    return Frame("s", seq, t, received_at, 4, 4, np.zeros((4, 4, 3), np.uint8))


async def test_latest_slot_keeps_newest_and_counts_replacements() -> None:
    drops: list[str] = []
    slot = LatestSlot(asyncio.get_running_loop(), drops.append)
    slot.put_threadsafe(frame(1, 0))
    slot.drop_reason = "not_sampled"
    slot.put_threadsafe(frame(2, 0.1))
    slot.put_threadsafe(frame(3, 0.2))
    assert (await slot.get()).seq == 3
    assert drops == ["not_sampled", "not_sampled"]
    slot.put_threadsafe(frame(4, 0.3))
    slot.close_threadsafe(SourceEnded("done"))
    assert (await slot.get()).seq == 4  # a frame delivered before the end is not lost
    with pytest.raises(SourceEnded):
        await slot.get()


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(0.25, 5.0, random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert 0.125 <= delays[0] <= 0.25
    assert all(d <= 5.0 for d in delays) and delays[-1] >= 2.5
    assert len(set(delays)) == len(delays)  # jitter: no two clients retry in lockstep
    b.reset()
    assert b.next_delay() <= 0.25


def test_rate_meter() -> None:
    m = RateMeter(2.0)
    for i in range(21):
        m.tick(i * 0.1)
    assert m.rate() == pytest.approx(10.0)
    assert m.rate(now=10.0) == 0.0


class FakeFaces:
    """One face per frame, a fixed track id, scripted quality."""

    def __init__(self, quality: FaceQuality = GOOD, faces: int = 1) -> None:
        self.quality = quality
        self.faces = faces

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        obs = tuple(
            FaceObservation("s", i + 1, frame.seq, frame.pts_s, frame.received_at, np.zeros((478, 3), np.float32),
                            (0, 0, 1, 1), None, self.quality)
            for i in range(self.faces)
        )
        return FaceFrame("s", frame.seq, frame.pts_s, frame.received_at, obs)

    def close(self) -> None:
        pass


class CountingDetector:
    name: ClassVar[str] = "counting"
    window_s = 2.0

    def __init__(self, p: float = 0.9, slow_s: float = 0.0) -> None:
        self.p = p
        self.features_calls = 0
        self.slow_s = slow_s

    def features(self, obs: FaceObservation) -> Any:
        self.features_calls += 1
        return obs.t

    def score(self, window: TrackWindow) -> Score:
        if len(window) < 3:
            return Score(None, (), ("window_too_short",))
        return Score(self.p, (Signal("const", self.p, 1.0),))


def analyzer(detector: CountingDetector, faces: FakeFaces, metrics: Metrics, clock: FakeClock) -> StreamAnalyzer:
    return StreamAnalyzer("s", AnalysisConfig(fps=10), PolicyConfig(min_alert_s=0.5), detector, faces, metrics, clock)


def test_analyzer_reaches_alert_and_records_stages(metrics: Metrics) -> None:
    clock = FakeClock()
    det = CountingDetector(0.95)
    a = analyzer(det, FakeFaces(), metrics, clock)
    events = []
    for i in range(30):
        events.extend(a.analyse(frame(i, i / 10, clock.monotonic())).events)
        clock.advance(0.1)
    types = [e.type.value for e in events]
    assert "io.deepfake-monitor.alert.opened.v1" in types
    assert a.snapshot()[0].state == TrackState.ALERT
    assert metrics.registry.get_sample_value("deepfake_monitor_stage_duration_seconds_count", {"stage": "faces"}) == 30
    assert metrics.registry.get_sample_value("deepfake_monitor_frames_analysed_total", {"stream": "s"}) == 30
    assert metrics.registry.get_sample_value("deepfake_monitor_tracks", {"state": "alert"}) == 1
    closing = a.end(3.0)
    assert [e.type.value for e in closing] == ["io.deepfake-monitor.alert.closed.v1", "io.deepfake-monitor.track.state.v1"]
    assert metrics.registry.get_sample_value("deepfake_monitor_tracks", {"state": "alert"}) == 0


class Gated(CountingDetector):
    """Once ``gate`` is set, the next features call blocks until it is released (a call stuck in
    a native library), then raises ``then`` if given."""

    def __init__(self, p: float, then: Exception | None = None) -> None:
        super().__init__(p)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.then = then

    def features(self, obs: FaceObservation) -> Any:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.entered.set()
            gate.wait(30)
            if self.then is not None:
                raise self.then
        return super().features(obs)


def alerting(det: CountingDetector, metrics: Metrics) -> tuple[StreamAnalyzer, FakeClock]:
    """An analyzer whose one face ``det`` has scored for 3 s at 10 fps, now in alert."""
    clock = FakeClock()
    a = analyzer(det, FakeFaces(), metrics, clock)
    for i in range(30):
        a.analyse(frame(i, i / 10, clock.monotonic()))
        clock.advance(0.1)
    assert a.snapshot()[0].state == TrackState.ALERT
    return a, clock


class ScriptedFaces:
    """Scripted track ids per frame; a track missing from the next frame is reported ended once."""

    def __init__(self, script: list[tuple[int, ...]]) -> None:
        self.script = script
        self.previous: tuple[int, ...] = ()

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        ids = self.script[frame.seq]
        obs = tuple(
            FaceObservation("s", tid, frame.seq, frame.pts_s, frame.received_at, np.zeros((478, 3), np.float32),
                            (0, 0, 1, 1), None, GOOD)
            for tid in ids
        )
        ended = tuple(t for t in self.previous if t not in ids)
        self.previous = ids
        return FaceFrame("s", frame.seq, frame.pts_s, frame.received_at, obs, ended)

    def close(self) -> None:
        pass


class FailingOnce(CountingDetector):
    def __init__(self, fail_at_t: float) -> None:
        super().__init__(0.95)
        self.fail_at_t = fail_at_t

    def features(self, obs: FaceObservation) -> Any:
        if abs(obs.t - self.fail_at_t) < 1e-6:
            raise RuntimeError("detector failed on this frame")
        return super().features(obs)


class FailsOnFaceTwo(CountingDetector):
    def features(self, obs: FaceObservation) -> Any:
        if obs.track_id == 2:
            raise RuntimeError("this face breaks the plugin")
        return super().features(obs)


def test_a_detector_error_on_one_face_leaves_the_other_faces_judged(metrics: Metrics) -> None:
    # Before: the exception failed the whole frame, so while face 2 was in view no face of the
    # stream was judged, and an alert on face 1 closed (analysis_failed).
    clock = FakeClock()
    a = analyzer(FailsOnFaceTwo(0.95), FakeFaces(faces=2), metrics, clock)
    events = []
    for i in range(30):
        result = a.analyse(frame(i, i / 10, clock.monotonic()))
        events.extend(result.events)
        clock.advance(0.1)
    by_track = {v.track_id: v for v in result.verdicts}
    assert by_track[1].score.probability == 0.95
    assert by_track[2].score.probability is None and "detector_error" in by_track[2].reasons
    assert [e.data.track_id for e in events if e.type == EventType.ALERT_OPENED] == [1]
    assert metrics.registry.get_sample_value("deepfake_monitor_detector_errors_total", {"stream": "s"}) == 30
    # Failing on every face of a frame is that frame failing, as before.
    alone = analyzer(FailsOnFaceTwo(0.95), ScriptedFaces([(2,)]), Metrics(), FakeClock())
    with pytest.raises(RuntimeError, match="breaks the plugin"):
        alone.analyse(frame(0, 0.0))


def test_a_detector_failing_on_the_only_face_it_was_asked_about_fails_the_frame(metrics: Metrics) -> None:
    # Faces gated by quality never reach the detector: with them beside it, a detector failing on
    # every face it sees is a failed frame (analysis_error), not one face's detector_error.
    class OneBlurred(FakeFaces):
        def process(self, frame: Frame, rgb: Any) -> FaceFrame:
            got = super().process(frame, rgb)
            blurred = dataclasses.replace(got.faces[0], quality=dataclasses.replace(GOOD, blur=0.0))
            return dataclasses.replace(got, faces=(blurred, got.faces[1]))

    a = analyzer(FailsOnFaceTwo(0.95), OneBlurred(faces=2), metrics, FakeClock())
    with pytest.raises(RuntimeError, match="breaks the plugin"):
        a.analyse(frame(0, 0.0))
    assert metrics.registry.get_sample_value("deepfake_monitor_detector_errors_total", {"stream": "s"}) is None


def test_an_over_budget_frame_after_a_gap_is_not_scored_on_the_window_from_before_it(metrics: Metrics) -> None:
    # The budget skip reused the window's last features however old: the first good frame after
    # seconds of an unreadable face published the score from before the gap as fresh.
    class Switchable(FakeFaces):
        def process(self, frame: Frame, rgb: Any) -> FaceFrame:
            self.quality = dataclasses.replace(GOOD, blur=0.0) if 1.0 <= frame.pts_s < 4.0 else GOOD
            return super().process(frame, rgb)

    det = CountingDetector(0.95)
    a = analyzer(det, Switchable(), metrics, FakeClock())
    for i in range(40):
        a.analyse(frame(i, i / 10))
    calls = det.features_calls
    a._over_budget = True  # the first good frame back comes over budget
    a._skipped_last = False
    back = a.analyse(frame(40, 4.0)).verdicts[0]
    assert det.features_calls == calls + 1  # read afresh, not the window from before t = 1.0
    assert back.score.probability is None and "window_too_short" in back.reasons  # as a fresh read says


class BadSignals(CountingDetector):
    def score(self, window: TrackWindow) -> Score:
        good = super().score(window)
        if good.probability is None:
            return good
        return Score(good.probability, (Signal("appearance", 0.95, None), Signal("nan", float("nan"), 1.0), Signal("ok", 0.9, 0.5)))  # type: ignore[arg-type]


def test_signals_that_are_not_numbers_are_dropped_not_fatal(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    # Before: a signal with a None weight raised in the policy after it had moved to "alert"
    # and before the alert existed: the frame's events for every face were lost, and a close was
    # later published for an alert never opened.
    clock = FakeClock()
    a = analyzer(BadSignals(0.95), FakeFaces(faces=2), metrics, clock)
    events = []
    for i in range(30):
        events.extend(a.analyse(frame(i, i / 10, clock.monotonic())).events)
        clock.advance(0.1)
    opened = [e.data for e in events if e.type == EventType.ALERT_OPENED]
    assert sorted(d.track_id for d in opened) == [1, 2]
    assert all(d.reasons[:2] == ("score_above_threshold", "ok") for d in opened)
    assert caplog.text.count("returned signals that are not numbers") == 1


def test_a_plugins_own_signal_type_keeps_its_explanations(metrics: Metrics) -> None:
    from collections import namedtuple

    Named = namedtuple("Named", "name value weight")

    class OwnSignals(CountingDetector):
        def score(self, window: TrackWindow) -> Score:
            good = super().score(window)
            return good if good.probability is None else Score(good.probability, (Named("appearance", 0.9, 0.8),))  # type: ignore[arg-type]

    a = analyzer(OwnSignals(0.95), FakeFaces(), metrics, FakeClock())
    verdicts = [a.analyse(frame(i, i / 10)).verdicts[0] for i in range(5)]
    assert verdicts[-1].score.signals == (Signal("appearance", 0.9, 0.8),)


def test_a_failed_frame_does_not_lose_the_tracks_that_ended_on_it(metrics: Metrics) -> None:
    # Track 1 alerts, then leaves on frame 20, the frame on which analysis fails (and on which
    # track 2 appears). Its alert must still close, on the next frame that succeeds.
    clock = FakeClock()
    script = [(1,)] * 20 + [(2,)] * 10
    a = analyzer(FailingOnce(fail_at_t=2.0), ScriptedFaces(script), metrics, clock)  # type: ignore[arg-type]
    events, failed = [], []
    for i in range(30):
        try:
            events.extend(a.analyse(frame(i, i / 10, clock.monotonic())).events)
        except RuntimeError:
            failed.append(i)
        clock.advance(0.1)
    assert failed == [20]  # the scenario happened: analysis failed on the frame track 1 left
    types = [(e.type.value, e.data.track_id) for e in events]
    assert ("io.deepfake-monitor.alert.closed.v1", 1) in types
    assert [s.track_id for s in a.snapshot()] == [2]
    gauge = metrics.registry.get_sample_value
    assert all((gauge("deepfake_monitor_tracks", {"state": s.value}) or 0) >= 0 for s in TrackState)
    a.end(3.0)
    assert all((gauge("deepfake_monitor_tracks", {"state": s.value}) or 0) == 0 for s in TrackState)


class UnreadableFromOneSecond(CountingDetector):
    """Reads faces until t = 1.0 s, then none (features None: a degenerate mesh, say)."""

    def features(self, obs: FaceObservation) -> Any:
        return None if obs.t >= 1.0 else super().features(obs)


@pytest.mark.parametrize("over_budget", [False, True])
def test_a_frame_the_detector_cannot_read_is_no_fresh_evidence(metrics: Metrics, over_budget: bool) -> None:
    # Before: features() None (a degenerate mesh; for the baseline a face 10-15% out of frame)
    # still rescored the window, repeating the last probability as new for seconds. It counted
    # towards min_alert_s and the track never turned inconclusive. Over budget, the frames that
    # skip the detector rescored the window too, so under load that went on.
    clock = FakeClock()
    a = analyzer(UnreadableFromOneSecond(0.95), FakeFaces(), metrics, clock)
    verdicts = []
    for i in range(40):
        if over_budget and i == 10:
            a._timer = detector_heavy_timer()  # from t = 1.0 on, every analysis runs over budget
        verdicts.extend(a.analyse(frame(i, i / 10, clock.monotonic())).verdicts)
        clock.advance(0.1)
    if over_budget:
        assert metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) >= 10
    assert any(v.score.probability == 0.95 for v in verdicts if v.t < 1.0)  # readable until then
    later = [v for v in verdicts if v.t >= 1.0]
    assert all(v.score.probability is None and "unusable_frame" in v.reasons for v in later)
    assert all(t.state == TrackState.INCONCLUSIVE for t in a.snapshot())  # no readable score for 2 s and more


def test_a_track_window_keeps_no_crops() -> None:
    # Nothing reads a crop after features(); kept, a window held seconds of images per face.
    from monitor.plugins import TrackWindow

    window = TrackWindow("s", 1, 2.0)
    crop = np.zeros((112, 112, 3), np.uint8)
    obs = FaceObservation("s", 1, 0, 0.0, 0.0, np.zeros((478, 3), np.float32), (0, 0, 1, 1), crop, GOOD)
    window.push(obs, "features")
    assert window.observations[0].crop is None and window.observations[0].t == 0.0
    assert obs.crop is crop  # the caller's observation is untouched


def detector_heavy_timer() -> Callable[[], float]:
    """The analyzer's timer (five reads a frame: before and after each stage) with each frame's
    detector stage taking 300 ms and the rest 1 ms: over the 100 ms budget because of the detector."""
    ticks = iter(base + step for base in itertools.count(0.0, 1.0) for step in (0.0, 0.0005, 0.001, 0.301, 0.3015))
    return lambda: float(next(ticks))


def test_over_budget_skips_detector_work_instead_of_queueing(metrics: Metrics) -> None:
    clock = FakeClock()
    det = CountingDetector()
    a = analyzer(det, FakeFaces(), metrics, clock)
    a._timer = detector_heavy_timer()
    for i in range(10):
        a.analyse(frame(i, i / 10))
    assert det.features_calls < 10
    assert metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) >= 4
    # Never twice in a row: skipping every frame would freeze every window (no face scored).
    assert det.features_calls >= 5


def test_no_skip_when_finding_faces_alone_is_over_budget(metrics: Metrics) -> None:
    # Skipping the detector cannot bring such a frame within the budget: it only halved every
    # window's row rate (scores shift, a new face's first score came twice as late).
    clock = FakeClock()
    det = CountingDetector()
    a = analyzer(det, FakeFaces(), metrics, clock)
    ticks = iter(np.arange(0, 1000, 0.25))  # every stage 250 ms: faces alone over the budget
    a._timer = lambda: float(next(ticks))
    for i in range(10):
        a.analyse(frame(i, i / 10))
    assert det.features_calls == 10
    assert metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) == 0


def test_always_over_budget_still_feeds_every_window(metrics: Metrics) -> None:
    # Face finding alone over the budget on every frame: the detector must still see frames,
    # or no face would ever get a score and a swap switched on later would never be seen.
    clock = FakeClock()
    det = CountingDetector(0.95)
    a = analyzer(det, FakeFaces(), metrics, clock)
    ticks = iter(np.arange(0, 1000, 0.25))
    a._timer = lambda: float(next(ticks))
    scored = []
    for i in range(20):
        scored.append(a.analyse(frame(i, i / 10)).verdicts[0].score.probability)
    assert det.features_calls >= 10  # at least every other frame
    assert scored[-1] is not None  # the window filled and the face is judged


@pytest.mark.parametrize(
    "quality, codes",
    [
        (GOOD, ()),
        (FaceQuality(20, 100, 0, 0, 1), ("low_quality", "low_resolution")),
        (FaceQuality(120, 1, 0, 0, 1), ("low_quality", "blurred")),
        (FaceQuality(120, 100, 0.5, 0, 1), ("low_quality", "out_of_frame")),
        (FaceQuality(120, 100, 0, 0.9, 1), ("low_quality", "occluded")),
        # The documented gates: more than 15% of the landmarks outside the image, or more than
        # 0.6 occlusion (a head turned more than 44 degrees sideways or 38 up or down, see
        # monitor/faces/quality.py).
        (FaceQuality(120, 100, 0.15, 0.6, 1), ()),
        (FaceQuality(120, 100, 0.16, 0.6, 1), ("low_quality", "out_of_frame")),
        (FaceQuality(120, 100, 0.15, 0.61, 1), ("low_quality", "occluded")),
    ],
)
def test_quality_reasons(quality: FaceQuality, codes: tuple[str, ...]) -> None:
    assert quality_reasons(quality, AnalysisConfig()) == codes


def test_low_quality_faces_are_inconclusive_with_reasons(metrics: Metrics) -> None:
    clock = FakeClock()
    det = CountingDetector(0.99)
    a = analyzer(det, FakeFaces(FaceQuality(10, 1, 0, 0, 1), faces=2), metrics, clock)
    events = []
    for i in range(40):
        events.extend(a.analyse(frame(i, i / 10, clock.monotonic())).events)
    assert det.features_calls == 0
    assert {s.state for s in a.snapshot()} == {TrackState.INCONCLUSIVE}
    reasons = events[0].data.reasons
    assert "low_resolution" in reasons and "multiple_faces" in reasons


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:hunter2@cam.local:554/s") == "rtsp://***@cam.local:554/s"
    assert redact_url("rtsp://cam.local/s") == "rtsp://cam.local/s"
    assert redact_url("https://sfu/whep?access_token=zzz&room=a") == "https://sfu/whep?access_token=***&room=a"
    assert redact_url("https://u:p@sfu/whep?room=a&token=t#x") == "https://***@sfu/whep?room=a&token=***#x"
    assert redact_url("https://sfu/whep?tokenizer=bpe") == "https://sfu/whep?tokenizer=***"  # by name: errs on the safe side
    # Mistyped URLs, which the error refusing them quotes: the password stays hidden.
    assert redact_url("rtsp:/admin:hunter2@cam.internal/s") == "rtsp:/***@cam.internal/s"
    assert redact_url("rtsp:admin:hunter2@cam/s") == "rtsp:***@cam/s"
    assert redact_url("recording@2.mp4") == "recording@2.mp4"


def test_a_refused_rtsp_url_is_quoted_without_its_password() -> None:
    from monitor.errors import ConfigError
    from monitor.sources.av_source import RtspSource

    for url in ("rtsp:/admin:hunter2@cam.internal/stream1", "rtps://admin:hunter2@cam.internal/s"):
        with pytest.raises(ConfigError, match="not an rtsp:// URL") as err:
            RtspSource.validate_url(url)
        assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("codes", "reason"),
    [
        # quality_reasons puts low_quality before every specific code: it must not win the tie.
        (["low_quality", "low_resolution"] * 5, "low_resolution"),
        (["low_quality", "blurred", "low_quality", "blurred", "low_quality", "low_resolution"], "blurred"),
        (["low_quality"], "low_quality"),
        (["window_too_short", "occluded", "window_too_short"], "window_too_short"),
        (["blurred", "occluded"], "blurred"),  # a tie goes to the reason seen first
        ([], "too_short"),
    ],
)
def test_dominant_reason_is_specific_and_deterministic(codes: list[str], reason: str) -> None:
    from monitor.pipeline.offline import dominant_reason

    assert dominant_reason(codes) == reason


class StallingSource(ThreadedSource):
    """Opens, then its read blocks like a silent camera until its timeout raises."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("stalled", metrics=metrics)
        self.reading = threading.Event()

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        self.reading.set()
        time.sleep(0.3)  # the read timeout, which the stop request cannot interrupt
        raise SourceError("read failed: timed out", retryable=True)
        yield  # pragma: no cover


async def test_a_camera_that_connects_but_sends_nothing_is_never_up(metrics: Metrics) -> None:
    source = StallingSource(metrics)
    states: list[StreamState] = []
    up: list[float | None] = []

    def seen(state: StreamState, detail: str) -> None:
        states.append(state)
        up.append(metrics.registry.get_sample_value("deepfake_monitor_stream_up", {"stream": "stalled"}))

    source.on_state(seen)
    await source.start()
    deadline = time.monotonic() + 15
    while source.status.reconnects < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await source.aclose()
    assert source.status.reconnects >= 2
    # Before, each successful open reported "running" (stream_up 1) until the read timed out.
    assert StreamState.RUNNING not in states and StreamState.RECONNECTING in states
    assert 1.0 not in up


async def test_removing_a_stalled_stream_stops_it_without_a_failure(metrics: Metrics) -> None:
    source = StallingSource(metrics)
    states: list[StreamState] = []
    source.on_state(lambda state, detail: states.append(state))
    await source.start()
    assert await asyncio.to_thread(source.reading.wait, 5)  # the read really stalled
    await source.aclose()
    assert states == [StreamState.STOPPED]  # never running: it never sent a frame
    assert source.status.last_error in (None, "")
    assert metrics.registry.get_sample_value("deepfake_monitor_source_errors_total", {"stream": "stalled", "kind": "SourceError"}) is None


def test_a_stream_that_stops_producing_verdicts_reports_no_latency_or_faces() -> None:
    from types import SimpleNamespace

    from monitor.config import StreamConfig
    from monitor.pipeline.stream import StreamPipeline
    from monitor.sources.base import SourceStatus

    metrics, clock = Metrics(), FakeClock()
    a = analyzer(CountingDetector(0.2), FakeFaces(faces=2), metrics, clock)
    source = SimpleNamespace(kind="rtsp", status=SourceStatus())
    p = StreamPipeline(StreamConfig(id="s", url="rtsp://cam/x"), source, a, None, metrics, clock, 10.0, 0.5)  # type: ignore[arg-type]
    for i in range(20):
        p._record(a.analyse(frame(i, i / 10, clock.monotonic() - 0.08)))
        clock.advance(0.1)
    status = p.status()
    assert status.latency_ms_p50 == pytest.approx(80, abs=1) and status.latency_ms_last == pytest.approx(80, abs=1)
    clock.advance(600)  # ten minutes without a frame: before, still "80 ms"
    status = p.status()
    assert status.latency_ms_p50 is None and status.latency_ms_last is None
    faces = {"stream": "s"}
    assert metrics.registry.get_sample_value("deepfake_monitor_faces_tracked", faces) == 2
    a.end(2.0)
    assert metrics.registry.get_sample_value("deepfake_monitor_faces_tracked", faces) == 0  # before, 2 for good


def test_a_call_declared_stalled_does_not_move_its_tracks_back_in_time(metrics: Metrics) -> None:
    # The loop declares a call stalled (idle "analysis_stalled": the track goes inconclusive at
    # t=5.0); when the call returns, its verdict on the older frame (t=3.0) must not be applied
    # on top, or the track went back to suspicious at t=3.0, earlier than the event before it.
    det = Gated(0.95)
    a, clock = alerting(det, metrics)
    gate = det.gate = threading.Event()
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.setdefault("late", a.analyse(frame(30, 3.0, clock.monotonic()))))
    worker.start()
    assert det.entered.wait(30)  # the call is under way (and stuck) before it is declared stalled
    stalled = a.idle(5.0, "analysis_stalled")
    gate.set()
    worker.join(30)
    assert [e.type for e in stalled] == [EventType.ALERT_CLOSED, EventType.TRACK_STATE]
    assert out["late"].events == ()  # nothing applied from the late call
    assert a.snapshot()[0].state == TrackState.INCONCLUSIVE
    # The frames after it are judged afresh, later in stream time: the track leaves inconclusive
    # (a stall must not make every later verdict "late" and freeze the track for good).
    after = []
    for i in range(31, 61):
        clock.advance(0.1)
        after.extend(a.analyse(frame(i, 5.1 + (i - 31) / 10, clock.monotonic())).events)
    states = [(e.data.state, e.data.t) for e in after if e.type == EventType.TRACK_STATE]
    assert [state for state, _ in states] == [TrackState.SUSPICIOUS, TrackState.ALERT]
    assert all(t >= 5.0 for _, t in states)
    opened = [e.data.start_t for e in after if e.type == EventType.ALERT_OPENED]
    assert len(opened) == 1 and opened[0] >= 5.0
    assert a.snapshot()[0].state == TrackState.ALERT


class AgedFrames:
    """A source that hands out frames already ``ages[i]`` seconds old (on ``clock``) when the
    stream takes them, one frame interval apart, then ends."""

    kind = "scripted"

    def __init__(self, clock: FakeClock, ages: list[float]) -> None:
        from monitor.types import SourceStatus

        self.clock = clock
        self.ages = list(ages)
        self.status = SourceStatus()
        self.seq = 0

    def on_state(self, listener: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    def set_drop_reason(self, reason: str) -> None:
        pass

    async def recv(self) -> Frame:
        if not self.ages:
            raise SourceEnded("end of script")
        self.clock.advance(0.1)  # the next frame is due: the stream never waits on the fake clock
        self.seq += 1
        return frame(self.seq, self.seq / 10, self.clock.monotonic() - self.ages.pop(0))

    async def aclose(self) -> None:
        pass


class RecordingFaces(FakeFaces):
    """No faces; records which frames reached the face stage, i.e. were analysed."""

    def __init__(self) -> None:
        super().__init__(faces=0)
        self.seen: list[int] = []

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        self.seen.append(frame.seq)
        return super().process(frame, rgb)


async def test_frames_older_than_max_frame_age_are_skipped_and_counted_as_stale(metrics: Metrics) -> None:
    # analysis.max_frame_age_s (0.5 s here): a frame that waited longer than that before its
    # analysis could start (a backlog, a stalled loop) is skipped, not analysed late.
    from monitor.config import StreamConfig
    from monitor.pipeline.stream import StreamPipeline

    clock = FakeClock()
    faces = RecordingFaces()
    a = analyzer(CountingDetector(0.2), faces, metrics, clock)
    source = AgedFrames(clock, [0.0, 2.0, 0.6, 0.1, 5.0, 0.4])
    p = StreamPipeline(StreamConfig(id="s", url="x://y"), source, a, None, metrics, clock, 10.0, 0.5)  # type: ignore[arg-type]
    await p.start()
    try:
        assert p._task is not None
        await asyncio.wait_for(asyncio.shield(p._task), 20)  # the script ends, so does the stream
        assert faces.seen == [1, 4, 6]  # the fresh ones only
        assert p.frames_stale == 3 and p.status().frames_stale == 3
        dropped = metrics.registry.get_sample_value
        assert dropped("deepfake_monitor_frames_dropped_total", {"stream": "s", "reason": "stale"}) == 3
        assert p.frames_analysed == 3
    finally:
        await p.aclose()


def test_stage_times_of_microseconds_are_resolved() -> None:
    # Converting a frame takes microseconds and the policy tens of them: with buckets from 1 ms,
    # both sat in the first one and their p95 always read about 0.95 ms.
    from monitor.metrics import Metrics

    metrics = Metrics()
    metrics.stage_seconds.labels("convert").observe(3e-6)
    metrics.stage_seconds.labels("policy").observe(30e-6)
    sample = metrics.registry.get_sample_value
    assert sample("deepfake_monitor_stage_duration_seconds_bucket", {"stage": "convert", "le": "1e-05"}) == 1
    assert sample("deepfake_monitor_stage_duration_seconds_bucket", {"stage": "policy", "le": "2.5e-05"}) == 0
    assert sample("deepfake_monitor_stage_duration_seconds_bucket", {"stage": "policy", "le": "5e-05"}) == 1


def test_a_source_plugins_array_frames_are_rgb_or_a_clear_error() -> None:
    # Grey, RGBA, 16-bit or float arrays failed deep in MediaPipe (IndexError, TypeError).
    import numpy as np

    from monitor.types import Frame

    def frame(image: np.ndarray) -> Frame:
        return Frame("s", 0, 0.0, 0.0, image.shape[1], image.shape[0], image)

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (frame(grey).rgb() == np.repeat(grey[:, :, None], 3, axis=2)).all()
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert frame(rgba).rgb().shape == (3, 4, 3) and not frame(rgba).rgb().any()
    rgb = np.zeros((3, 4, 3), np.uint8)
    assert frame(rgb).rgb() is rgb
    for bad, message in [(np.zeros((3, 4, 3), np.uint16), "not uint16"), (np.zeros((3, 4, 2), np.uint8), "shape"),
                         (np.zeros((3, 4, 3), np.float32), "not float32")]:
        with pytest.raises(ValueError, match=message):
            frame(bad).rgb()


# --- found by a mutation audit -------------------------------------------------------------


def _pipeline(metrics: Metrics, clock: FakeClock, state: StreamState, fps_in: float) -> Any:
    """A stream pipeline around a stand-in source whose status is given (never started)."""
    from types import SimpleNamespace

    from monitor.config import StreamConfig
    from monitor.pipeline.stream import StreamPipeline
    from monitor.sources.base import SourceStatus

    a = analyzer(CountingDetector(0.2), FakeFaces(), metrics, clock)
    source = SimpleNamespace(kind="rtsp", status=SourceStatus(state=state, fps_in=fps_in))
    return StreamPipeline(StreamConfig(id="s", url="rtsp://cam/x"), source, a, None, metrics, clock, 10.0, 0.5)  # type: ignore[arg-type]


def test_fps_in_reads_0_while_the_source_is_not_running() -> None:
    clock = FakeClock()
    assert _pipeline(Metrics(), clock, StreamState.RUNNING, 25.0).status().fps_in == 25.0
    for state in (StreamState.RECONNECTING, StreamState.FAILED, StreamState.ENDED):
        assert _pipeline(Metrics(), clock, state, 25.0).status().fps_in == 0.0, state  # not the last connection's rate


def test_latency_p50_is_the_median_of_recent_verdicts() -> None:
    metrics, clock = Metrics(), FakeClock()
    p = _pipeline(metrics, clock, StreamState.RUNNING, 10.0)
    a = p.analyzer
    latencies = [0.01 * (k + 1) for k in range(9)]  # 10..90 ms, median 50 ms
    for i, lat in enumerate(latencies):
        p._record(a.analyse(frame(i, i / 10, clock.monotonic() - lat)))  # noqa: SLF001
        clock.advance(0.1)
    status = p.status()
    assert status.latency_ms_p50 == pytest.approx(50, abs=1)
    assert status.latency_ms_last == pytest.approx(90, abs=1)


def test_frames_dropped_is_the_sum_of_every_reason() -> None:
    # operations.md: `frames_dropped` (all reasons), i.e. what frames_dropped_total sums to.
    metrics, clock = Metrics(), FakeClock()
    p = _pipeline(metrics, clock, StreamState.RUNNING, 10.0)
    src = p.source.status
    src.frames_dropped, src.decode_errors = 1, 2
    p.frames_stale, p.frames_skipped_for_fresher, p.frames_not_sampled, p.analysis_errors = 3, 4, 5, 6
    assert p.status().frames_dropped == 1 + 2 + 3 + 4 + 5 + 6


# --- Promises a mutation audit found unheld (analyzer.py) ---


def test_a_face_that_appears_on_a_skipped_frame_is_read_not_a_crash(metrics: Metrics) -> None:
    # on a frame that skips the detector, a new track has an empty window; reusing
    # "the window as it is" must not index it (IndexError) - the new face's features are read.
    clock = FakeClock()
    det = CountingDetector(0.95)
    script = [(1,)] + [(1, 2)] * 9  # track 2 first seen on frame 1, the frame that skips
    a = analyzer(det, ScriptedFaces(script), metrics, clock)  # type: ignore[arg-type]
    a._timer = detector_heavy_timer()
    for i in range(10):
        a.analyse(frame(i, i / 10, clock.monotonic()))
        clock.advance(0.1)
    assert metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) >= 4
    assert len(a.tracks[2].window) >= 1


class Returning(CountingDetector):
    def __init__(self, p: Any) -> None:
        super().__init__()
        self.raw = p

    def score(self, window: TrackWindow) -> Score:
        return Score(self.raw, (Signal("const", 0.5, 1.0),))


@pytest.mark.parametrize("p", [1.5, -0.1, float("inf")])
def test_a_probability_outside_0_1_is_invalid_score(metrics: Metrics, p: float) -> None:
    # README "invalid_score (a detector plugin returned no probability in 0..1; logged)".
    a = analyzer(Returning(p), FakeFaces(), metrics, FakeClock())
    v = a.analyse(frame(0, 0.0)).verdicts[0]
    assert v.score.probability is None and "invalid_score" in v.reasons


def test_a_numpy_probability_becomes_a_plain_float(metrics: Metrics) -> None:
    # "numpy's float32, say: the event log stores plain floats".
    a = analyzer(Returning(np.float32(0.75)), FakeFaces(), metrics, FakeClock())
    v = a.analyse(frame(0, 0.0)).verdicts[0]
    assert type(v.score.probability) is float and v.score.probability == pytest.approx(0.75)


def test_one_good_face_has_no_reasons(metrics: Metrics) -> None:
    # multiple_faces only when more than one face is in the frame.
    a = analyzer(CountingDetector(0.9), FakeFaces(faces=1), metrics, FakeClock())
    verdicts = [a.analyse(frame(i, i / 10)).verdicts[0] for i in range(5)]
    assert verdicts[-1].score.probability == 0.9
    assert all("multiple_faces" not in v.reasons for v in verdicts)
    two = analyzer(CountingDetector(0.9), FakeFaces(faces=2), Metrics(), FakeClock())
    assert all("multiple_faces" in v.reasons for v in two.analyse(frame(0, 0.0)).verdicts)


def test_a_stall_declared_on_a_call_that_then_raised_does_not_drop_the_next_frame(metrics: Metrics) -> None:
    # "A stall declared during an earlier call (one that then raised) is not this one's."
    det = Gated(0.95, then=RuntimeError("native call failed after the stall"))
    a, clock = alerting(det, metrics)
    gate = det.gate = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            a.analyse(frame(30, 3.0, clock.monotonic()))
        except RuntimeError as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    assert det.entered.wait(30)
    a.idle(5.0, "analysis_stalled")
    gate.set()
    worker.join(30)
    assert errors  # the stalled call raised
    assert a.snapshot()[0].state == TrackState.INCONCLUSIVE
    clock.advance(0.1)
    first = a.analyse(frame(31, 5.1, clock.monotonic()))
    # The next call is judged afresh: its verdict reaches the policy (the track's reasons are
    # this frame's, no longer the stall's).
    assert a.snapshot()[0].reasons == first.verdicts[0].reasons != ("analysis_stalled",)
    events = list(first.events)
    for i in range(32, 62):
        clock.advance(0.1)
        events.extend(a.analyse(frame(i, 5.1 + (i - 31) / 10, clock.monotonic())).events)
    assert a.snapshot()[0].state == TrackState.ALERT


def test_after_abandon_nothing_reopens_and_nothing_closes_twice(metrics: Metrics) -> None:
    # "abandon() closed every track: nothing may reopen one"; "None when end (or
    # abandon) already closed them".
    a, clock = alerting(CountingDetector(0.95), metrics)
    closed = a.abandon(3.0)
    assert closed  # the open alert closed
    late = a.analyse(frame(30, 3.0, clock.monotonic()))  # the stuck call returning
    assert late.verdicts == () and late.events == ()
    assert a.snapshot() == []
    assert a.abandon(3.1) is None
    assert a.end(3.2) == []


def test_frames_without_faces_observe_no_frame_to_verdict_latency(metrics: Metrics) -> None:
    # frame_to_verdict is "time from a frame leaving the decoder to its verdict"; a
    # frame with no face has no verdict.
    clock = FakeClock()
    a = analyzer(CountingDetector(0.5), FakeFaces(faces=0), metrics, clock)
    for i in range(5):
        a.analyse(frame(i, i / 10, clock.monotonic()))
    assert (metrics.registry.get_sample_value("deepfake_monitor_frame_to_verdict_seconds_count") or 0) == 0
    b = analyzer(CountingDetector(0.5), FakeFaces(faces=1), Metrics(), clock)
    b.analyse(frame(0, 0.0, clock.monotonic()))
    assert b.metrics.registry.get_sample_value("deepfake_monitor_frame_to_verdict_seconds_count") == 1


@pytest.mark.parametrize("budget_s, skips", [(1.0, False), (0.2, True)])
def test_analysis_budget_s_sets_the_budget(metrics: Metrics, budget_s: float, skips: bool) -> None:
    # config `budget_s`: "Per-frame analysis budget; default 1/fps". A 301 ms frame
    # (300 ms of it the detector) is within a 1 s budget: nothing skipped at fps 10.
    det = CountingDetector()
    a = StreamAnalyzer("s", AnalysisConfig(fps=10, budget_s=budget_s), PolicyConfig(min_alert_s=0.5), det, FakeFaces(), metrics, FakeClock())
    a._timer = detector_heavy_timer()
    for i in range(10):
        a.analyse(frame(i, i / 10))
    skipped = metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) or 0
    assert (skipped > 0) == skips and (det.features_calls == 10) == (not skips)


def test_a_detached_analyzer_records_no_metrics(metrics: Metrics) -> None:
    # detach(): "whatever it finishes, it must not bring back the stream's metrics".
    clock = FakeClock()
    a = analyzer(CountingDetector(0.5), FakeFaces(), metrics, clock)
    a.detach()
    a.analyse(frame(0, 0.0, clock.monotonic()))
    value = metrics.registry.get_sample_value
    assert value("deepfake_monitor_frames_analysed_total", {"stream": "s"}) is None
    assert value("deepfake_monitor_faces_tracked", {"stream": "s"}) is None
