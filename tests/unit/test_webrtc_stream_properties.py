"""What the WebRTC sources and a stream's pipeline promise (monitor/sources/webrtc.py,
monitor/pipeline/stream.py, the stuck-decoder wait in sources/base.py): WHIP stream time and
states, ICE servers with credentials, WHEP failure, timeouts, reconnects and redirects, drop
reasons, status events, pacing after a slow analysis. Each test was written against a one-line
change of the code that the rest of the suite let through.

Fakes stand in for aiortc's track and peer connection and for the WHEP endpoint (httpx's
MockTransport): no network, no real ICE; tests/integration covers the real peers."""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import monitor.sources.webrtc as webrtc
from monitor.clock import FakeClock, SystemClock
from monitor.config import AnalysisConfig, IceServer, PolicyConfig, StreamConfig, WebRTCConfig
from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import StreamAnalyzer
from monitor.pipeline.stream import StreamPipeline
from monitor.sources.base import Backoff, ThreadedSource
from monitor.sources.webrtc import WhepSource, WhipTrackSource, rtc_configuration
from monitor.types import FaceFrame, Frame, Score, Severity, StreamState, StreamStatusData

ENDPOINT = "https://media.example/whep/cam"


def video_frame(pts: int = 0) -> av.VideoFrame:
    vf = av.VideoFrame(16, 16, "yuv420p")
    vf.pts = pts
    vf.time_base = fractions.Fraction(1, 90000)
    return vf


class ScriptedTrack:
    """An aiortc-like track: ``recv`` plays ``script`` (frames; exceptions are raised; a callable
    is called and skipped), then blocks for ever (a silent peer)."""

    kind = "video"

    def __init__(self, script: list[Any], before_each: Callable[[], None] | None = None) -> None:
        self.script = list(script)
        self.before_each = before_each

    async def recv(self) -> av.VideoFrame:
        while self.script:
            item = self.script.pop(0)
            if callable(item) and not isinstance(item, av.VideoFrame):
                item()
                continue
            if isinstance(item, BaseException):
                raise item
            if self.before_each is not None:
                self.before_each()
            return item
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class QueuedTrack:
    """A track whose frames the test hands over one at a time."""

    kind = "video"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        self.queue.put_nowait(item)

    async def recv(self) -> av.VideoFrame:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def states_of(source: Any) -> list[StreamState]:
    seen: list[StreamState] = []
    source.on_state(lambda state, detail: seen.append(state))
    return seen


# --- WHIP track source ----------------------------------------------------------------------


async def test_whip_stream_time_counts_from_the_first_frame_on_the_monitors_clock() -> None:
    # The publisher's RTP timestamps start anywhere (here 1000 s in): stream time starts at 0 at
    # the first frame and follows the monitor's clock, like RTSP.
    clock = FakeClock()
    track = QueuedTrack()
    source = WhipTrackSource("pub", track, metrics=Metrics(), clock=clock)  # type: ignore[arg-type]
    await source.start()
    try:
        track.put(video_frame(90_000 * 1000))
        first = await asyncio.wait_for(source.recv(), 2)
        assert first.pts_s == 0.0 and first.received_at == clock.monotonic()
        clock.advance(0.1)
        track.put(video_frame(90_000 * 1000 + 3000))
        second = await asyncio.wait_for(source.recv(), 2)
        assert second.pts_s == pytest.approx(0.1) and second.received_at == clock.monotonic()
    finally:
        await source.aclose()


async def test_whip_source_is_running_from_its_first_frame() -> None:
    track = ScriptedTrack([video_frame()])
    source = WhipTrackSource("pub", track, metrics=Metrics())  # type: ignore[arg-type]
    seen = states_of(source)
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 2)
        assert source.status.state == StreamState.RUNNING and seen[:1] == [StreamState.RUNNING]
    finally:
        await source.aclose()


async def test_whip_track_ended_by_the_peer_ends_the_stream_cleanly() -> None:
    track = ScriptedTrack([video_frame(), MediaStreamError()])
    source = WhipTrackSource("pub", track, metrics=Metrics())  # type: ignore[arg-type]
    seen = states_of(source)
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 2)
        with pytest.raises(SourceEnded):
            await asyncio.wait_for(source.recv(), 2)
        assert source.status.state == StreamState.ENDED and seen[-1] == StreamState.ENDED
    finally:
        await source.aclose()


async def test_a_removed_whip_stream_ends_stopped_and_tells_its_session_once() -> None:
    closed: list[WhipTrackSource] = []

    async def on_close(s: WhipTrackSource) -> None:
        closed.append(s)

    source = WhipTrackSource("pub", ScriptedTrack([video_frame()]), metrics=Metrics(), on_close=on_close)  # type: ignore[arg-type]
    seen = states_of(source)
    await source.start()
    await asyncio.wait_for(source.recv(), 2)
    await source.aclose()
    await source.aclose()  # a second close tells nobody again
    assert source.status.state == StreamState.STOPPED and seen[-1] == StreamState.STOPPED
    assert closed == [source]


async def test_a_bug_while_reading_a_whip_track_fails_the_stream_and_tells_its_session() -> None:
    told: list[str] = []
    track = ScriptedTrack([video_frame(), RuntimeError("decoder exploded")])
    source = WhipTrackSource("pub", track, metrics=Metrics(), on_failed=lambda s, why: told.append(why))  # type: ignore[arg-type]
    await source.start()
    try:
        await asyncio.wait_for(source.recv(), 2)
        with pytest.raises(SourceError) as info:
            await asyncio.wait_for(source.recv(), 2)
        assert not isinstance(info.value, SourceEnded)
        assert source.status.state == StreamState.FAILED
        assert len(told) == 1 and "decoder exploded" in told[0]
    finally:
        await source.aclose()


async def test_whip_last_frame_at_follows_the_newest_frame() -> None:
    # whip.py's no_video watchdog reads it: a stale value ends a session that still sends video.
    clock = FakeClock()
    track = QueuedTrack()
    source = WhipTrackSource("pub", track, metrics=Metrics(), clock=clock)  # type: ignore[arg-type]
    await source.start()
    try:
        track.put(video_frame())
        await asyncio.wait_for(source.recv(), 2)
        clock.advance(3.0)
        track.put(video_frame(3000))
        newest = await asyncio.wait_for(source.recv(), 2)
        assert source.last_frame_at == newest.received_at == clock.monotonic()
    finally:
        await source.aclose()


# --- ICE configuration ----------------------------------------------------------------------


async def test_configured_stun_and_turn_servers_both_reach_the_ice_agent_with_credentials() -> None:
    from aiortc import RTCPeerConnection

    cfg = WebRTCConfig(ice_servers=[
        IceServer(urls=("stun:stun.internal:3478",)),
        IceServer(urls=("turn:turn.internal:3478?transport=udp",), username="alice", credential="s3cret"),
    ])
    config = rtc_configuration(cfg)
    pc = RTCPeerConnection(config)
    try:
        pc.addTransceiver("video", direction="recvonly")
        agent = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection
        assert agent.stun_server == ("stun.internal", 3478)
        assert agent.turn_server == ("turn.internal", 3478)
        assert agent.turn_username == "alice" and agent.turn_password == "s3cret"
    finally:
        await pc.close()


# --- WHEP ----------------------------------------------------------------------------------


class FakePC:
    """What WhepSource uses of aiortc's RTCPeerConnection. After the answer, the connection
    goes through ``states`` (e.g. ``["connected"]``, ``["failed"]``, ``[]``: never connects)."""

    made: list[FakePC] = []
    plans: list[list[str]] = []

    def __init__(self, configuration: Any = None) -> None:
        self.handlers: dict[str, Callable[[], None]] = {}
        self.connectionState = "new"
        self.iceConnectionState = "new"
        self.states = FakePC.plans.pop(0) if FakePC.plans else ["connected"]
        self.track: Any = ScriptedTrack([])
        self.localDescription: RTCSessionDescription | None = None
        FakePC.made.append(self)

    def on(self, name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
        def register(fn: Callable[[], None]) -> Callable[[], None]:
            self.handlers[name] = fn
            return fn

        return register

    def emit(self, state: str) -> None:
        self.connectionState = state
        self.handlers["connectionstatechange"]()

    def addTransceiver(self, kind: str, direction: str) -> Any:
        return SimpleNamespace(receiver=SimpleNamespace(track=self))

    async def recv(self) -> av.VideoFrame:  # the receiver's track: delegates to ``self.track``
        return await self.track.recv()

    async def createOffer(self) -> RTCSessionDescription:
        return RTCSessionDescription(sdp="v=0\r\n", type="offer")

    async def setLocalDescription(self, description: RTCSessionDescription) -> None:
        self.localDescription = description

    async def setRemoteDescription(self, description: RTCSessionDescription) -> None:
        for state in self.states:
            self.emit(state)

    async def close(self) -> None:
        self.connectionState = "closed"


@pytest.fixture
def whep(monkeypatch: pytest.MonkeyPatch) -> Callable[..., WhepSource]:
    """A WhepSource talking to a fake endpoint (201 + answer unless ``answer`` says otherwise)
    through FakePC peer connections."""
    FakePC.made.clear()
    FakePC.plans.clear()
    monkeypatch.setattr(webrtc, "RTCPeerConnection", FakePC)
    real_client = httpx.AsyncClient

    def make(status: int = 201, clock: Any = None, **options: Any) -> WhepSource:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "DELETE":
                return httpx.Response(200)
            return httpx.Response(status, stream=httpx.ByteStream(b"v=0\r\n"), headers={"Location": "/whep/cam/s1", "Content-Type": "application/sdp"})

        monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
        return WhepSource("cam", ENDPOINT, metrics=Metrics(), clock=clock, config=WhepSource.Config(**options))

    return make


def test_whep_peer_connection_failing_while_connecting_fails_the_attempt_at_once(whep: Callable[..., WhepSource]) -> None:
    src = whep(open_timeout_s=5)
    FakePC.plans.append(["checking", "failed"])
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="WHEP connection failed") as info:
            src._open()
        assert info.value.retryable
        assert time.monotonic() - started < 2.5  # not open_timeout_s later
    finally:
        src._close()


def test_whep_connection_failing_while_reading_reconnects(whep: Callable[..., WhepSource]) -> None:
    src = whep()
    src._open()
    try:
        pc = FakePC.made[-1]
        # The state changes while a recv waits; frames already decoded still come out of it.
        pc.track = ScriptedTrack([video_frame(), lambda: pc.emit("failed"), video_frame(1), video_frame(2), video_frame(3)])
        frames = src._read()
        next(frames)
        next(frames)
        with pytest.raises(SourceError, match="WHEP connection failed") as info:
            next(frames)
        assert info.value.retryable
    finally:
        src._close()


def test_a_whep_reconnect_after_a_failed_connection_can_succeed(whep: Callable[..., WhepSource]) -> None:
    src = whep(open_timeout_s=5)
    FakePC.plans.extend([["failed"], ["connected"]])
    with pytest.raises(SourceError, match="failed"):
        src._open()
    src._close()
    src._open()  # the second connection connects: the first one's failure is forgotten
    src._close()


def test_whep_read_timeout_counts_from_the_newest_frame(whep: Callable[..., WhepSource]) -> None:
    clock = FakeClock()
    src = whep(clock=clock, read_timeout_s=3)
    src._open()
    try:
        pc = FakePC.made[-1]
        # Five frames a second apart (5 s of video, longer than read_timeout_s), then a pause.
        pc.track = ScriptedTrack([video_frame(i) for i in range(5)], before_each=lambda: clock.advance(1.0))
        frames = src._read()
        for _ in range(5):
            next(frames)
        threading.Timer(0.8, src._stop.set).start()  # the pause: a few 0.25 s polls, then stop
        assert list(frames) == []  # stopped, never "no video": the last frame was just now
    finally:
        src._stop.set()
        src._close()


def test_whep_silence_of_read_timeout_s_reconnects(whep: Callable[..., WhepSource]) -> None:
    src = whep(read_timeout_s=0.3)
    src._open()
    timer = threading.Timer(2.5, src._stop.set)  # the bound: a mutant would wait 10x longer
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="no video for 0.3s") as info:
            next(src._read())
        assert info.value.retryable and time.monotonic() - started < 2.5
    finally:
        timer.cancel()
        src._close()


def test_stopping_a_whep_source_cancels_its_connect_promptly(whep: Callable[..., WhepSource]) -> None:
    src = whep(open_timeout_s=5)
    FakePC.plans.append([])  # never connects
    threading.Timer(0.2, src._stop.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="stopped while connecting"):
            src._open()
        assert time.monotonic() - started < 2.0  # not open_timeout_s (5 s)
    finally:
        src._close()


def test_a_whep_connect_gives_up_after_open_timeout_s(whep: Callable[..., WhepSource]) -> None:
    src = whep(open_timeout_s=0.5)
    FakePC.plans.append([])  # never connects
    timer = threading.Timer(3.0, src._stop.set)  # the bound for a mutant that waits on
    timer.start()
    try:
        with pytest.raises(SourceError, match="timed out") as info:
            src._open()
        assert info.value.retryable
    finally:
        timer.cancel()
        src._close()


def test_a_whep_answer_other_than_201_is_a_failure(whep: Callable[..., WhepSource]) -> None:
    src = whep(status=200)
    try:
        with pytest.raises(SourceError, match="answered 200") as info:
            src._open()
        assert info.value.retryable
    finally:
        src._close()


async def test_a_whep_track_that_ends_reconnects_the_stream(whep: Callable[..., WhepSource]) -> None:
    src = whep()
    src.JOIN_S = 3.0  # type: ignore[misc]
    FakePC.plans.extend([["connected"]] * 10)
    seen = states_of(src)
    await src.start()
    try:
        # Each connection's track gives one frame and ends.
        async with asyncio.timeout(5):
            while True:
                for pc in FakePC.made:
                    if not getattr(pc, "scripted", False):
                        pc.scripted = True  # type: ignore[attr-defined]
                        pc.track = ScriptedTrack([video_frame(), MediaStreamError()])
                if StreamState.RECONNECTING in seen and src.status.reconnects >= 1:
                    break
                await asyncio.sleep(0.01)
        assert StreamState.FAILED not in seen and "track ended" in (src.status.last_error or "")
    finally:
        await src.aclose()


def test_whep_stream_time_goes_on_across_a_reconnect(whep: Callable[..., WhepSource]) -> None:
    clock = FakeClock()
    src = whep(clock=clock)
    pts: list[float] = []
    for _ in range(2):
        src._open()
        pc = FakePC.made[-1]
        pc.track = ScriptedTrack([video_frame(), video_frame(1)], before_each=lambda: clock.advance(1.0))
        frames = src._read()
        pts += [next(frames).pts_s, next(frames).pts_s]
        src._close()
        clock.advance(1.0)  # the reconnect's backoff
    assert pts == sorted(pts) and len(set(pts)) == 4, pts  # never back in time


# --- the stream pipeline ------------------------------------------------------------------


class ListBus:
    """An event bus that stores what it is given."""

    def __init__(self) -> None:
        self.stored: list[Any] = []

    async def publish(self, events: Any, started: asyncio.Event | None = None) -> list[Any]:
        if started is not None:
            started.set()
        self.stored.extend(events)
        return []


class Burst(ThreadedSource):
    """``n`` 4x4 frames ``every`` seconds apart, then the end of the stream. Each open first
    fails once per entry of ``failures`` (retryable, distinct causes)."""

    kind: ClassVar[str] = "burst"
    reconnect: ClassVar[bool] = True

    def __init__(self, stream_id: str, metrics: Metrics, n: int, every: float, failures: tuple[str, ...] = ()) -> None:
        super().__init__(stream_id, metrics=metrics)
        self.n, self.every, self.failures = n, every, list(failures)
        self._backoff = Backoff(initial=0.01, maximum=0.02)

    def _open(self) -> None:
        if self.failures:
            raise SourceError(self.failures.pop(0), retryable=True)

    def _read(self) -> Iterator[Frame]:
        for i in range(self.n):
            if self._stop.is_set():
                return
            yield Frame(self.stream_id, self.next_seq(), i * self.every, time.monotonic(), 4, 4, np.zeros((4, 4, 3), np.uint8))
            time.sleep(self.every)
        self.reconnect = False  # type: ignore[misc]  # then the end, not a retry


class NoFaceStage:
    def __init__(self, busy_s: float = 0.0) -> None:
        self.busy_s = busy_s

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        time.sleep(self.busy_s)
        return FaceFrame(frame.stream_id, frame.seq, frame.pts_s, frame.received_at, ())

    def close(self) -> None:
        pass


class NoDetector:
    name: ClassVar[str] = "none"
    window_s = 1.0

    def features(self, obs: Any) -> Any:
        return 0

    def score(self, window: Any) -> Score:
        return Score(None)


def pipeline(source: ThreadedSource, metrics: Metrics, fps: float, busy_s: float = 0.0, bus: Any = None) -> StreamPipeline:
    analyzer = StreamAnalyzer(source.stream_id, AnalysisConfig(fps=10), PolicyConfig(), NoDetector(), NoFaceStage(busy_s), metrics, SystemClock())  # type: ignore[arg-type]
    return StreamPipeline(
        StreamConfig(id=source.stream_id, url="x://y"), source, analyzer, bus or ListBus(), metrics, SystemClock(), fps, 5.0  # type: ignore[arg-type]
    )


def dropped(metrics: Metrics, stream: str, reason: str) -> float:
    return metrics.registry.get_sample_value("deepfake_monitor_frames_dropped_total", {"stream": stream, "reason": reason}) or 0.0


async def run_to_end(p: StreamPipeline, limit_s: float = 10.0) -> dict[str, float]:
    """Run the stream until its source ends; its frames dropped by reason, read before its
    removal forgets them."""
    await p.start()
    try:
        assert p._task is not None
        await asyncio.wait_for(asyncio.shield(p._task), limit_s)
        counts = {reason: dropped(p.metrics, p.id, reason) for reason in ("not_sampled", "superseded")}
        p.last_status = p.status()  # type: ignore[attr-defined]
        return counts
    finally:
        await p.aclose()


async def test_frames_replaced_while_the_stream_paces_itself_are_not_sampled() -> None:
    # analysis.fps 5 against 100 fps input, analysis instant: the replaced frames are the ones
    # skipped on purpose to hold the rate (not_sampled), not ones analysis was too busy for.
    metrics = Metrics()
    counts = await run_to_end(pipeline(Burst("paced", metrics, n=100, every=0.01), metrics, fps=5.0))
    not_sampled, superseded = counts["not_sampled"], counts["superseded"]
    assert not_sampled >= 20 and not_sampled > superseded, (not_sampled, superseded)


async def test_frames_replaced_while_analysis_is_busy_are_superseded() -> None:
    # Analysis takes 0.2 s a frame, far over the 1 ms the rate allows: the stream never waits
    # for a sampling time, and every replaced frame is one analysis was too busy for.
    metrics = Metrics()
    counts = await run_to_end(pipeline(Burst("busy", metrics, n=100, every=0.01), metrics, fps=1000.0, busy_s=0.2))
    not_sampled, superseded = counts["not_sampled"], counts["superseded"]
    assert superseded >= 20 and superseded > not_sampled, (not_sampled, superseded)


async def test_stream_status_events_carry_the_reconnect_count_and_warn_while_reconnecting() -> None:
    metrics = Metrics()
    bus = ListBus()
    source = Burst("flaky", metrics, n=3, every=0.01, failures=("refused", "reset by peer"))
    p = pipeline(source, metrics, fps=10.0, bus=bus)
    await run_to_end(p)
    assert p.last_status.reconnects == 2 and p.last_status.last_error == "reset by peer"  # type: ignore[attr-defined]
    statuses = [e for e in bus.stored if isinstance(e.data, StreamStatusData)]
    assert [e.data.state for e in statuses][:4] == [StreamState.RECONNECTING, StreamState.RECONNECTING, StreamState.RUNNING, StreamState.ENDED]
    assert [e.data.reconnects for e in statuses][:4] == [0, 1, 2, 2]
    assert [e.severity for e in statuses][:2] == [Severity.WARNING, Severity.WARNING]
    assert statuses[2].severity == Severity.INFO


class Timed(NoFaceStage):
    """Records when each analysis started; the first one takes ``first_s``."""

    def __init__(self, first_s: float) -> None:
        super().__init__()
        self.first_s = first_s
        self.starts: list[float] = []

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        self.starts.append(time.monotonic())
        if len(self.starts) == 1:
            time.sleep(self.first_s)
        return super().process(frame, rgb)


async def test_after_a_slow_analysis_the_stream_does_not_catch_up_in_a_burst() -> None:
    # analysis.fps 10: one analysis took 0.5 s; what follows is still analysed about 0.1 s
    # apart, not the missed samples back to back (a burst over the configured rate).
    metrics = Metrics()
    source = Burst("slow", metrics, n=150, every=0.01)
    faces = Timed(first_s=0.5)
    analyzer = StreamAnalyzer("slow", AnalysisConfig(fps=10), PolicyConfig(), NoDetector(), faces, metrics, SystemClock())  # type: ignore[arg-type]
    p = StreamPipeline(StreamConfig(id="slow", url="x://y"), source, analyzer, ListBus(), metrics, SystemClock(), 10.0, 5.0)  # type: ignore[arg-type]
    await run_to_end(p)
    gaps = [b - a for a, b in zip(faces.starts[1:], faces.starts[2:])]  # after the slow one
    # 0.1 s apart, less however late the worker thread started the one before: a burst has
    # gaps near 0.
    assert len(gaps) >= 5 and min(gaps) > 0.03, gaps


class Failing(Burst):
    def _open(self) -> None:
        raise SourceError("no such stream", retryable=False)


async def test_a_source_that_fails_ends_its_stream() -> None:
    metrics = Metrics()
    p = pipeline(Failing("bad", metrics, n=0, every=0.01), metrics, fps=10.0)
    await p.start()
    assert p._task is not None
    try:
        done, _ = await asyncio.wait({p._task}, timeout=5.0)
        assert done, "the stream's task went on after its source failed"
        status = p.status()
        assert status.state == StreamState.FAILED and status.last_error == "no such stream"
    finally:
        for _ in range(100):  # a task spinning on the failed source may swallow one cancel
            if p._task.done():
                break
            p._task.cancel()
            await asyncio.sleep(0.01)
        await p.aclose()


def test_a_stuck_decoder_is_left_behind_after_10_s_within_the_streams_close_wait() -> None:
    # README: "A removed stream whose decoder is stuck in a blocking call is left behind after
    # 10 s"; the stream's close waits longer than that, so the source's own "stopped" is said.
    assert ThreadedSource.JOIN_S == 10.0
    assert StreamPipeline.SOURCE_CLOSE_S > ThreadedSource.JOIN_S


class Stuck(NoFaceStage):
    """The first call blocks until ``release`` (a native call that ignores every stop request)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(20)
        return super().process(frame, rgb)


async def test_a_stuck_analysis_that_returns_after_the_removal_brings_back_no_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamPipeline, "STOP_WAIT_S", 0.3)
    monkeypatch.setattr(StreamPipeline, "STUCK_WAIT_S", 0.3)
    metrics = Metrics()
    faces = Stuck()
    source = Burst("cam", metrics, n=1000, every=0.01)
    analyzer = StreamAnalyzer("cam", AnalysisConfig(fps=10), PolicyConfig(), NoDetector(), faces, metrics, SystemClock())  # type: ignore[arg-type]
    p = StreamPipeline(StreamConfig(id="cam", url="x://y"), source, analyzer, ListBus(), metrics, SystemClock(), 10.0, 5.0)  # type: ignore[arg-type]
    await p.start()
    try:
        assert await asyncio.to_thread(faces.entered.wait, 5)
        await p.aclose()  # leaves the stuck call behind
    finally:
        faces.release.set()
    worker = p._executor._thread
    assert worker is not None
    await asyncio.to_thread(worker.join, 10)  # the call returns, the queued end runs
    assert not worker.is_alive()
    series = [s for m in metrics.registry.collect() for s in m.samples if s.labels.get("stream") == "cam"]
    assert series == []
