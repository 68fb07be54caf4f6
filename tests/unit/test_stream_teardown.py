"""Removing streams and shutting down stay bounded, whatever a stuck thread is doing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.clock import SystemClock
from monitor.config import Settings, StreamConfig
from monitor.errors import ConfigError, ShuttingDown
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.pipeline.stream import StreamPipeline
from monitor.plugins import TrackWindow
from monitor.sources.base import ThreadedSource
from monitor.types import (
    AlertData,
    Event,
    EventType,
    FaceFrame,
    FaceObservation,
    Frame,
    Score,
    Severity,
    StreamState,
    StreamStatusData,
)

ALERT_CLOSED = EventType.ALERT_CLOSED.value


class Ticking(ThreadedSource):
    """A frame every 50 ms; ``block`` makes the next read hang like a dead camera."""

    kind: ClassVar[str] = "ticking"

    def __init__(self, stream_id: str, metrics: Metrics, block_s: float = 0.0) -> None:
        super().__init__(stream_id, metrics=metrics)
        self.block_s = block_s
        self.blocking = threading.Event()

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        n = 0
        while not self._stop.is_set():
            n += 1
            yield Frame(self.stream_id, self.next_seq(), n * 0.05, time.monotonic(), 4, 4, np.zeros((4, 4, 3), np.uint8))
            if self.block_s and n == 3:
                self.blocking.set()
                time.sleep(self.block_s)  # ignores the stop request, as a stuck native call does
                yield Frame(self.stream_id, self.next_seq(), n * 0.05, time.monotonic(), 4, 4, np.zeros((4, 4, 3), np.uint8))
            time.sleep(0.05)


class NoFaces:
    """No face in any frame. With ``stall``, its first call blocks until ``release`` is set
    (a call stuck in a native library that ignores every stop request)."""

    def __init__(self, stall: bool = False) -> None:
        self.stall = stall
        self.stalled = threading.Event()
        self.release = threading.Event()

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        if self.stall and not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(60)
        return FaceFrame(frame.stream_id, frame.seq, frame.pts_s, frame.received_at, ())

    def close(self) -> None:
        pass


class Constant:
    name: ClassVar[str] = "constant"
    window_s = 2.0

    def features(self, obs: FaceObservation) -> Any:
        return 0

    def score(self, window: TrackWindow) -> Score:
        return Score(0.1)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Settings, EventLog, EventBus, Metrics]]:
    from monitor.config import load_settings

    settings = load_settings(None, data_dir=tmp_path, demo=False)
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    yield settings, log, EventBus(log, metrics), metrics
    log.close()


def manager(parts: tuple[Settings, EventLog, EventBus, Metrics], faces: NoFaces, slow_detector_s: float = 0.0) -> StreamManager:
    settings, _, bus, metrics = parts

    def make_detector() -> Constant:
        time.sleep(slow_detector_s)  # model loading
        return Constant()

    return StreamManager(settings, bus, metrics, SystemClock(), make_detector, lambda stream_id: faces)


async def test_a_stuck_analysis_does_not_hold_the_removal_for_ever(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StreamPipeline, "STOP_WAIT_S", 0.5)
    monkeypatch.setattr(StreamPipeline, "STUCK_WAIT_S", 0.5)
    faces = NoFaces(stall=True)
    m = manager(parts, faces)
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", parts[3]))
    try:
        assert await asyncio.to_thread(faces.stalled.wait, 20)
        started = time.monotonic()
        await m.remove("cam")
        # About STOP_WAIT_S + STUCK_WAIT_S (1 s); the call stays stuck until released (60 s).
        assert time.monotonic() - started < 20, "the removal waited for the stuck call"
        assert not faces.release.is_set()  # removed while the call was still stuck
        assert m.list() == []
        assert m.slots_taken() == 1  # its stuck thread (and graph) counts against max_streams
    finally:
        faces.release.set()
    # The stuck call returns, then the worker runs the queued end and exits: what it finished
    # must not count for "cam" again.
    worker = pipeline._executor._thread
    await asyncio.to_thread(worker.join, 20)
    assert not worker.is_alive()
    assert m.slots_taken() == 0
    assert parts[3].registry.get_sample_value("deepfake_monitor_frames_analysed_total", {"stream": "cam"}) is None


def test_a_stuck_analysis_call_does_not_hold_the_process_exit() -> None:
    # ThreadPoolExecutor's workers are joined at exit: a call stuck in native code kept
    # `monitor serve` alive after SIGTERM. The analysis worker's thread is a daemon.
    import subprocess
    import sys

    script = (
        "import time\n"
        "from monitor.pipeline.worker import DaemonWorker\n"
        "w = DaemonWorker('stuck')\n"
        "w.submit(time.sleep, 60)\n"
        "time.sleep(0.2)\n"
        "w.shutdown(wait=False, cancel_futures=True)\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - started < 20


def test_the_analysis_worker_runs_calls_in_order_and_reports_failures() -> None:
    from monitor.pipeline.worker import DaemonWorker

    worker = DaemonWorker("w")
    done: list[int] = []
    futures = [worker.submit(done.append, i) for i in range(5)]
    failing = worker.submit(lambda: 1 / 0)
    worker.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4] and all(f.done() for f in futures)
    with pytest.raises(ZeroDivisionError):
        failing.result()
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(done.append, 5)


async def test_a_source_thread_that_outlives_its_stream_changes_nothing_after(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ThreadedSource, "JOIN_S", 0.3)
    _, log, _, metrics = parts
    m = manager(parts, NoFaces())
    source = Ticking("cam", metrics, block_s=2.0)
    await m.add(StreamConfig(id="cam", url="x://y"), source=source)
    assert await asyncio.to_thread(source.blocking.wait, 5)
    await m.remove("cam")
    events_then = log.last_id()
    # Left behind, the stream still ends with "stopped": its last event said "running" before.
    statuses = [json.loads(e[1])["data"] for e in log.read_since(0) if ".stream.status." in json.loads(e[1])["type"]]
    assert statuses[-1]["state"] == "stopped" and "left behind" in statuses[-1]["detail"], statuses
    assert source._thread is not None
    await asyncio.to_thread(source._thread.join, 10)  # it wakes, delivers a frame and stops
    assert not source._thread.is_alive()
    assert metrics.registry.get_sample_value("deepfake_monitor_frames_received_total", {"stream": "cam"}) is None
    assert log.last_id() == events_then  # no late "stopped" event for a stream that is gone


async def test_streams_whose_decoder_thread_was_left_behind_count_against_the_limit(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Add/remove cycles against a silent camera piled up stuck threads and sockets without
    # limit: each removal left one behind, and the stream limit counted none of them.
    monkeypatch.setattr(ThreadedSource, "JOIN_S", 0.3)
    _, _, _, metrics = parts
    m = manager(parts, NoFaces())
    m.max_streams = 2
    stuck = Ticking("cam", metrics, block_s=2.0)
    await m.add(StreamConfig(id="cam", url="x://y"), source=stuck)
    assert await asyncio.to_thread(stuck.blocking.wait, 5)
    # Its remover gives up while the teardown waits on the thread (a WHIP session's task, a
    # request cancelled at shutdown): before, the thread left behind then was never counted.
    removing = asyncio.create_task(m.remove("cam"))
    await asyncio.sleep(0.05)
    removing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await removing
    async with asyncio.timeout(20):
        while "cam" in m._closing:
            await asyncio.sleep(0.02)
    assert stuck.left_behind()
    await m.add(StreamConfig(id="one", url="x://y"), source=Ticking("one", metrics))
    # What a WHIP offer's capacity check reads too, so an offer is refused before any track is
    # built (it counted only the listed streams).
    assert len(m.list()) == 1 and m.slots_taken() == 2
    with pytest.raises(ConfigError, match=r"at most 2 streams \(1 of them removed, their decoder, source or analysis still stuck\)"):
        await m.add(StreamConfig(id="two", url="x://y"), source=Ticking("two", metrics))
    assert stuck._thread is not None
    await asyncio.to_thread(stuck._thread.join, 10)  # it wakes and ends: its place is free again
    assert m.slots_taken() == 1
    await m.add(StreamConfig(id="two", url="x://y"), source=Ticking("two", metrics))
    await m.aclose()


async def test_streams_still_being_torn_down_count_against_the_limit(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a stream counted from its removal's start on no more, while its stuck decoder ran on
    # for JOIN_S; removing stuck cameras and adding others at once ran over max_streams.
    monkeypatch.setattr(ThreadedSource, "JOIN_S", 2.0)
    _, _, _, metrics = parts
    m = manager(parts, NoFaces())
    m.max_streams = 1
    stuck = Ticking("cam", metrics, block_s=4.0)
    await m.add(StreamConfig(id="cam", url="x://y"), source=stuck)
    assert await asyncio.to_thread(stuck.blocking.wait, 5)
    removing = asyncio.create_task(m.remove("cam"))
    async with asyncio.timeout(10):
        while "cam" not in m._closing:
            await asyncio.sleep(0.01)
    assert m.slots_taken() == 1
    with pytest.raises(ConfigError, match=r"at most 1 streams"):
        await m.add(StreamConfig(id="other", url="x://y"), source=Ticking("other", metrics))
    await removing
    await asyncio.to_thread(stuck._thread.join, 10)  # type: ignore[union-attr]
    await m.add(StreamConfig(id="other", url="x://y"), source=Ticking("other", metrics))
    await m.aclose()


async def test_stuck_source_threads_are_waited_for_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: each close joined its thread in the default executor, whose few workers (6 on
    # this machine) waited on stuck threads a batch at a time: shutting down 13 dead cameras
    # took 30 s, not 10. Here that executor has one worker and it is busy: a close that needs it
    # cannot finish at all.
    monkeypatch.setattr(ThreadedSource, "JOIN_S", 0.3)
    loop = asyncio.get_running_loop()
    busy, release = concurrent.futures.ThreadPoolExecutor(1), threading.Event()
    loop.set_default_executor(busy)
    blocker = loop.run_in_executor(None, release.wait)
    sources = [Ticking(f"cam{i}", Metrics(), block_s=3.0) for i in range(4)]
    try:
        for source in sources:
            await source.start()
        for source in sources:
            while not source.blocking.is_set():
                await asyncio.sleep(0.02)
        async with asyncio.timeout(2.5):  # JOIN_S each, at once; never the threads' 3 s
            await asyncio.gather(*(source.aclose() for source in sources))
        assert all(source._detached for source in sources)  # noqa: SLF001 - left behind, detached
    finally:
        release.set()
        await blocker


async def test_shutdown_waits_for_a_stream_still_starting_and_refuses_new_ones(parts: Any) -> None:
    _, _, _, metrics = parts
    m = manager(parts, NoFaces(), slow_detector_s=1.0)
    adding = asyncio.create_task(m.add(StreamConfig(id="late", url="x://y"), source=Ticking("late", metrics)))
    await asyncio.sleep(0.2)  # the add holds the lock while its detector loads
    await m.aclose()
    await adding
    assert m.list() == []  # it was added, then closed with the rest
    with pytest.raises(ShuttingDown):
        await m.add(StreamConfig(id="later", url="x://y"), source=Ticking("later", metrics))


async def test_shutdown_waits_for_a_removal_already_under_way(parts: Any) -> None:
    # A WHIP session ending in the background removes its streams on its own: shutdown must
    # not close the bus and the log under that removal, or the alerts it closes are lost.
    _, log, bus, metrics = parts
    m = manager(parts, NoFaces())
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    now = time.time()
    alert = AlertData("a1", 1, 0.9, ("track_ended",), (), 0.0, 1.0, now)
    closed = Event(EventType.ALERT_CLOSED, "cam", Severity.CRITICAL, now, alert)
    real_end = pipeline.analyzer.end

    def slow_end(t: float) -> list[Event]:
        time.sleep(1.0)  # the stream's end waits behind a slow analysis call
        return [*real_end(t), closed]

    pipeline.analyzer.end = slow_end  # type: ignore[method-assign]
    removing = asyncio.create_task(m.remove("cam"))
    deadline = time.monotonic() + 5
    while m.list() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert m.list() == [] and not removing.done()  # under way, not finished
    await asyncio.wait_for(m.aclose(), 20)
    assert removing.done()  # before, aclose returned at once and the removal ran on
    await bus.aclose()  # what shutdown closes next
    assert any(ALERT_CLOSED in text for _, text in log.read_last(10))
    await removing


class FlakyBus:
    """An event log locked (by a backup, say) for its first write."""

    def __init__(self) -> None:
        self.calls = 0
        self.stored: list[Event] = []

    async def publish(self, events: list[Event], started: asyncio.Event | None = None) -> list[Any]:
        if started is not None:
            started.set()  # no lock to wait for
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database is locked")
        self.stored.extend(events)
        return []


async def test_stream_status_events_are_retried_in_order(parts: Any) -> None:
    settings, _, _, metrics = parts
    bus = FlakyBus()
    m = StreamManager(
        settings, bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces()  # type: ignore[arg-type]
    )
    await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    deadline = time.monotonic() + 5
    while bus.calls < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert bus.calls >= 1  # "running" met the locked log
    await m.remove("cam")  # "stopped" comes while "running" still waits for its retry
    states = [e.data.state for e in bus.stored if isinstance(e.data, StreamStatusData)]
    assert states == [StreamState.RUNNING, StreamState.STOPPED]  # before, "running" was lost


class FullDiskBus:
    """An event log that refuses every write (a full disk) for its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.stored: list[Event] = []

    async def publish(self, events: list[Event], started: asyncio.Event | None = None) -> list[Any]:
        if started is not None:
            started.set()  # no lock to wait for
        self.calls += 1
        if self.calls <= self.failures:
            raise sqlite3.OperationalError("database or disk is full")
        self.stored.extend(events)
        return []


async def test_events_wait_for_a_failing_event_log_instead_of_being_dropped(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: after 6 tries (about 6 s) a stream dropped the events it could not write, so an
    # alert.opened could be lost while its alert.closed was stored later, or the reverse.
    from monitor.config import load_settings

    monkeypatch.setattr(StreamPipeline, "PUBLISH_BACKOFF_MAX_S", 0.05)
    _, log, _, metrics = parts
    settings = load_settings(None, data_dir=log.path.parent, demo=False, policy={"min_alert_s": 0.3})
    bus = FullDiskBus(failures=15)
    m = StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: OneFace())  # type: ignore[arg-type]
    await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    deadline = time.monotonic() + 30
    while not any(e.type == EventType.ALERT_OPENED for e in bus.stored):
        assert time.monotonic() < deadline, "no alert stored once the log took writes again"
        await asyncio.sleep(0.05)
    await m.remove("cam")
    assert bus.calls > bus.failures
    statuses = [e.data.state for e in bus.stored if isinstance(e.data, StreamStatusData)]
    assert statuses[0] == StreamState.RUNNING and statuses[-1] == StreamState.STOPPED, statuses
    opened = [e.data.alert_id for e in bus.stored if e.type == EventType.ALERT_OPENED]
    closed = [e.data.alert_id for e in bus.stored if e.type == EventType.ALERT_CLOSED]
    assert opened and opened == closed
    first_track_event = next(e for e in bus.stored if e.type == EventType.TRACK_STATE)
    assert first_track_event.data.previous is None  # the track's announcement was not lost


class PoisonBus(FullDiskBus):
    """Every write fails with ``error``: a log that never recovers, or events it cannot take."""

    def __init__(self, error: Exception) -> None:
        super().__init__(failures=10**9)
        self.error = error

    async def publish(self, events: list[Event], started: asyncio.Event | None = None) -> list[Any]:
        if started is not None:
            started.set()  # no lock to wait for
        self.calls += 1
        raise self.error


async def test_events_that_can_never_be_written_do_not_stop_the_stream(
    parts: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waiting out every error would stop the analysis for good on one unserialisable signal.
    monkeypatch.setattr(StreamPipeline, "PUBLISH_BACKOFF_MAX_S", 0.2)
    _, log, _, metrics = parts
    bus = PoisonBus(TypeError("Object of type float32 is not JSON serializable"))
    m = StreamManager(parts[0], bus, metrics, SystemClock(), Fake, lambda stream_id: OneFace())  # type: ignore[arg-type]
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    deadline = time.monotonic() + 60
    while "dropped" not in caplog.text or pipeline.frames_analysed < 10:
        assert time.monotonic() < deadline, f"analysis stopped: {pipeline.frames_analysed} frames analysed"
        await asyncio.sleep(0.05)
    await m.remove("cam")
    assert "could not write them to the log" in caplog.text


async def test_a_log_that_never_recovers_does_not_hold_a_removal_and_says_what_was_lost(
    parts: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.config import load_settings

    monkeypatch.setattr(StreamPipeline, "STOP_WAIT_S", 4.0)
    _, log, _, metrics = parts
    settings = load_settings(None, data_dir=log.path.parent, demo=False, policy={"min_alert_s": 0.3})
    bus = FullDiskBus(failures=10**9)
    m = StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: OneFace())  # type: ignore[arg-type]
    await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    deadline = time.monotonic() + 30
    while bus.calls < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await m.remove("cam")
    # The task ended on its own within the stop wait: never cancelled for overrunning it.
    assert "did not stop within" not in caplog.text
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and "io.deepfake-monitor.stream.status.v1" in " ".join(dropped), dropped


async def test_status_events_waiting_for_a_failing_log_are_bounded(parts: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Before: every state change of a flapping camera waited in memory for as long as the disk
    # stayed full, without limit; now the newest STATUS_BACKLOG wait, and the log ends with them.
    monkeypatch.setattr(StreamPipeline, "PUBLISH_BACKOFF_MAX_S", 0.05)
    _, log, _, metrics = parts
    bus = FullDiskBus(failures=10**9)
    m = StreamManager(parts[0], bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces())  # type: ignore[arg-type]
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    flaps = 3 * StreamPipeline.STATUS_BACKLOG
    for i in range(flaps):
        state = StreamState.RUNNING if i % 2 else StreamState.RECONNECTING
        pipeline._publish_soon([Event(EventType.STREAM_STATUS, "cam", Severity.INFO, float(i), StreamStatusData(state, f"flap {i}", i))])
    assert len(pipeline._status_queue) == StreamPipeline.STATUS_BACKLOG
    assert caplog.text.count("status events wait") == 1  # once, not once per event
    bus.failures = 0  # the disk has room again
    deadline = time.monotonic() + 10
    while not any(isinstance(e.data, StreamStatusData) and e.data.detail == f"flap {flaps - 1}" for e in bus.stored):
        assert time.monotonic() < deadline, "the newest status never reached the log"
        await asyncio.sleep(0.02)
    await m.remove("cam")
    details = [e.data.detail for e in bus.stored if isinstance(e.data, StreamStatusData) and e.data.detail.startswith("flap")]
    # The newest, in order (the stream's own first status may take one of the places).
    assert StreamPipeline.STATUS_BACKLOG - 2 <= len(details) <= StreamPipeline.STATUS_BACKLOG
    assert details == [f"flap {i}" for i in range(flaps - len(details), flaps)]
    assert re.search(r"stream cam: \d+ status events were dropped while the event log refused writes", caplog.text)


class SlowAfterAFailureBus(FullDiskBus):
    """Once armed: one write fails, the next takes a second and succeeds."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.armed = False
        self.writing = asyncio.Event()

    async def publish(self, events: list[Event], started: asyncio.Event | None = None) -> list[Any]:
        if started is not None:
            started.set()  # no lock to wait for
        if self.armed:
            self.calls += 1
            if self.calls == 1:
                raise sqlite3.OperationalError("database is locked")
            self.writing.set()
            await asyncio.sleep(1.0)
        self.stored.extend(events)
        return []


async def test_a_publish_cancelled_during_a_write_is_not_reported_as_dropped(
    parts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The bus finishes a write that was under way when its caller is cancelled: saying those
    # events were dropped sent operators looking for events that were in the log.
    _, log, _, metrics = parts
    bus = SlowAfterAFailureBus()
    m = StreamManager(parts[0], bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces())  # type: ignore[arg-type]
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    event = Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 0.0, StreamStatusData(StreamState.RUNNING, "probe", 0))
    deadline = time.monotonic() + 10
    while not any(isinstance(e.data, StreamStatusData) and e.data.state == StreamState.RUNNING for e in bus.stored):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)  # the stream's own "running" is written before the bus is armed
    bus.armed = True
    publishing = asyncio.create_task(pipeline._publish([event]))
    await asyncio.wait_for(bus.writing.wait(), 10)
    publishing.cancel()
    await asyncio.gather(publishing, return_exceptions=True)
    bus.armed = False
    await m.remove("cam")
    assert "dropped" not in caplog.text


async def test_a_publish_cancelled_while_it_waits_for_the_log_is_reported_as_dropped(
    parts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Another write held the bus, stuck on a busy log (a backup's lock): a stream removed past
    # its stop wait meanwhile lost its events with no line saying so.
    settings, log, _, metrics = parts
    bus = EventBus(log, metrics)
    m = StreamManager(settings, bus, metrics, SystemClock(), Constant, lambda stream_id: NoFaces())
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    event = Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 0.0, StreamStatusData(StreamState.RUNNING, "probe", 0))
    release = threading.Event()
    append = log.append

    def stuck(events: Any) -> Any:
        release.wait(10)
        return append(events)

    log.append = stuck  # type: ignore[method-assign]
    other = asyncio.create_task(bus.publish([event]))
    await asyncio.sleep(0.1)  # it holds the bus, its write stuck
    log.append = append  # type: ignore[method-assign]
    publishing = asyncio.create_task(pipeline._publish([event]))
    await asyncio.sleep(0.1)
    publishing.cancel()
    await asyncio.gather(publishing, return_exceptions=True)
    release.set()
    await other
    await m.remove("cam")
    await bus.aclose()
    assert "stream cam: dropped 1 events, the stream was stopped before the log took them" in caplog.text


class GoesQuiet(ThreadedSource):
    """Frames at 20 fps for ``for_s``, then none (a camera reconnecting for a long time)."""

    kind: ClassVar[str] = "quiet"

    def __init__(self, stream_id: str, metrics: Metrics, for_s: float) -> None:
        super().__init__(stream_id, metrics=metrics)
        self.for_s = for_s

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.for_s:
            now = time.monotonic()
            yield Frame(self.stream_id, self.next_seq(), now - start, now, 4, 4, np.zeros((4, 4, 3), np.uint8))
            time.sleep(0.05)
        self._stop.wait()  # silent, not ended


class OneFace:
    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        from monitor.types import FaceQuality

        quality = FaceQuality(face_px=120, blur=100, out_of_frame=0, occlusion=0.1, confidence=0.9)
        obs = FaceObservation(frame.stream_id, 1, frame.seq, frame.pts_s, frame.received_at,
                              np.zeros((478, 3), np.float32), (0, 0, 1, 1), None, quality)
        return FaceFrame(frame.stream_id, frame.seq, frame.pts_s, frame.received_at, (obs,))

    def close(self) -> None:
        pass


class Fake(Constant):
    """Scores every face as manipulated: tracks reach alert."""

    name: ClassVar[str] = "fake"
    window_s = 1.0

    def score(self, window: TrackWindow) -> Score:
        return Score(0.95)


async def test_an_alert_closes_when_frames_stop_coming(parts: Any) -> None:
    # Before: a source that stopped delivering (reconnecting for hours, say) left its tracks
    # "alert" and the alert open until frames came back or the stream was removed.
    from monitor.config import load_settings

    _, log, bus, metrics = parts
    settings = load_settings(None, data_dir=log.path.parent, demo=False, policy={"min_alert_s": 0.3, "inconclusive_after_s": 1.0})
    m = StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: OneFace())
    source = GoesQuiet("cam", metrics, for_s=2.0)
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=source)

    def kinds() -> list[str]:
        return [payload for _, payload in log.read_since(0, 1000)]

    deadline = time.monotonic() + 20
    while not any(EventType.ALERT_CLOSED.value in p for p in kinds()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    payloads = kinds()
    assert any(EventType.ALERT_OPENED.value in p for p in payloads)
    assert any(EventType.ALERT_CLOSED.value in p for p in payloads), "the alert stayed open while no frame came"
    assert source.status.state == StreamState.RUNNING  # not removed, not ended: only quiet
    assert [t.state.value for t in pipeline.status().tracks] == ["inconclusive"]
    assert pipeline.status().latency_ms_p50 is not None  # verdicts within the last 30 s
    await m.aclose()


class StallsWhenTold(OneFace):
    """A face stage whose next call, once ``stall`` is set, blocks until ``release`` (a call
    stuck in a native library); ``closed`` is set when the stage is closed."""

    def __init__(self) -> None:
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        if self.stall.is_set() and not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(60)
        return super().process(frame, rgb)

    def close(self) -> None:
        self.closed.set()


class FailsWhenTold(OneFace):
    """A face stage that raises on every frame while ``broken`` (a frame MediaPipe rejects)."""

    broken = False

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        if self.broken:
            raise RuntimeError("face graph error")
        return super().process(frame, rgb)


def events_of(log: EventLog) -> list[dict[str, Any]]:
    import json

    return [json.loads(payload) for _, payload in log.read_since(0, 10_000)]


async def wait_until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def alert_manager(parts: Any, faces: OneFace, **policy: float) -> StreamManager:
    from monitor.config import load_settings

    _, log, bus, metrics = parts
    settings = load_settings(None, data_dir=log.path.parent, demo=False, policy={"min_alert_s": 0.3, **policy})
    return StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: faces)


def has(log: EventLog, kind: EventType) -> int:
    return sum(kind.value in payload for _, payload in log.read_since(0, 10_000))


@pytest.mark.parametrize("how", ["remove", "shutdown"])
async def test_a_stream_closed_while_its_analysis_is_stuck_still_closes_its_alerts(
    parts: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Before, past STOP_WAIT_S + STUCK_WAIT_S the queued analyzer.end was cancelled: the open
    # alert never got its alert.closed, not even once the call returned, and the MediaPipe
    # graph was never closed.
    monkeypatch.setattr(StreamPipeline, "STOP_WAIT_S", 0.5)
    monkeypatch.setattr(StreamPipeline, "STUCK_WAIT_S", 0.5)
    _, log, bus, metrics = parts
    faces = StallsWhenTold()
    m = alert_manager(parts, faces, inconclusive_after_s=600.0)  # no stall watchdog before the removal
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    try:
        await wait_until(lambda: has(log, EventType.ALERT_OPENED), "an alert")
        faces.stall.set()
        assert await asyncio.to_thread(faces.stalled.wait, 10)
        await (m.remove("cam") if how == "remove" else m.aclose())
        assert has(log, EventType.ALERT_CLOSED) == 1  # at once, the call still stuck
        assert not faces.closed.is_set()  # not closed under the stuck call
        closed = next(e for e in events_of(log) if EventType.ALERT_CLOSED.value in e["type"])
        assert "track_ended" in closed["data"]["reasons"]
    finally:
        faces.release.set()
        await m.aclose()  # (already closed: a no-op, or the cleanup of a failed check)
    # When the call returns, the queued end closes the face stage, and no alert twice.
    assert await asyncio.to_thread(faces.closed.wait, 10)
    assert pipeline._task is not None
    done, _ = await asyncio.wait({pipeline._task}, timeout=10)  # it publishes what end() returned
    assert done
    assert has(log, EventType.ALERT_CLOSED) == 1
    await bus.aclose()


def stream_details(log: EventLog) -> list[str]:
    return [e["data"]["detail"] for e in events_of(log) if EventType.STREAM_STATUS.value in e["type"]]


def unreadable_after_s(log: EventLog, reason: str) -> float:
    """Stream seconds from the alert's last readable score (its ``end_t``) to the verdict that
    made the track unreadable for ``reason``: how long the watchdog took to tell the track."""
    events = events_of(log)
    closed = next(e for e in events if e["type"] == ALERT_CLOSED)
    told = next(e for e in events if e["type"] == EventType.TRACK_STATE.value and reason in e["data"]["reasons"])
    return told["data"]["t"] - closed["data"]["end_t"]


async def test_an_analysis_failing_on_every_frame_closes_the_alert(parts: Any) -> None:
    # Frames keep coming, so the no-frames watchdog never fired: the track stayed "alert" and
    # the alert open for as long as the analysis failed.
    _, log, _, metrics = parts
    faces = FailsWhenTold()
    m = alert_manager(parts, faces, inconclusive_after_s=1.0)
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    try:
        await wait_until(lambda: has(log, EventType.ALERT_OPENED), "an alert")
        faces.broken = True
        await wait_until(lambda: has(log, EventType.ALERT_CLOSED), "the alert to close")
        tracks = pipeline.status().tracks
        assert [(t.state.value, t.reasons) for t in tracks] == [("inconclusive", ("analysis_failed",))]
        assert any(d.startswith("analysis_failed: RuntimeError: face graph error") for d in stream_details(log))
        # after inconclusive_after_s (1 s) of failures, not before; 4 s leaves room for a slow machine
        assert 0.9 <= unreadable_after_s(log, "analysis_failed") < 4.0
        faces.broken = False
        await wait_until(lambda: "analysis recovered after analysis_failed" in stream_details(log), "recovery")
        assert sum(d.startswith("analysis_failed") for d in stream_details(log)) == 1  # once, not per frame
    finally:
        await m.aclose()


async def test_an_analysis_call_that_hangs_closes_the_alert(parts: Any) -> None:
    # The worker is blocked, so only the loop can tell the tracks; it does, under the
    # analyzer's lock, while the call is still stuck.
    _, log, _, metrics = parts
    faces = StallsWhenTold()
    m = alert_manager(parts, faces, inconclusive_after_s=1.0)
    pipeline = await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    try:
        await wait_until(lambda: has(log, EventType.ALERT_OPENED), "an alert")
        faces.stall.set()
        await wait_until(lambda: has(log, EventType.ALERT_CLOSED), "the alert to close")
        assert not faces.release.is_set() and faces.stalled.is_set()  # closed while still stuck
        tracks = pipeline.status().tracks
        assert [(t.state.value, t.reasons) for t in tracks] == [("inconclusive", ("analysis_stalled",))]
        assert any(d.startswith("analysis_stalled") for d in stream_details(log))
        assert 0.9 <= unreadable_after_s(log, "analysis_stalled") < 4.0  # as above
        faces.release.set()
        await wait_until(lambda: "analysis recovered after analysis_stalled" in stream_details(log), "recovery")
    finally:
        faces.release.set()
        await m.aclose()


class RecordsTimes(OneFace):
    def __init__(self) -> None:
        self.times: list[float] = []

    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        self.times.append(frame.pts_s)
        return super().process(frame, rgb)


async def scan_recording(parts: Any, faces: RecordsTimes, seconds: float) -> StreamManager:
    """A generated 30 fps recording of ``seconds`` watched with `realtime: false`, to its end."""
    from monitor.sources.av_source import FileSource
    from monitor.sources.demo_media import write_clip

    settings, log, bus, metrics = parts
    clip = write_clip(log.path.parent / "rec.mp4", seconds, fps=30, width=160, height=120)
    m = StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: faces)
    source = FileSource("rec", str(clip), metrics=metrics, realtime=False)
    pipeline = await m.add(StreamConfig(id="rec", url=str(clip), realtime=False), source=source)
    async with asyncio.timeout(60):
        # The source says ENDED once it has handed over its last frame; the analysis may still
        # be taking it (under load, the last frame was not counted yet when this returned).
        while pipeline.status().state != StreamState.ENDED or not pipeline._task.done():
            await asyncio.sleep(0.05)
    return m


async def test_a_file_read_as_fast_as_analysis_goes_is_sampled_by_its_own_time(parts: Any) -> None:
    # `realtime: false` (a recording sent to be scanned): before, the pipeline took one frame per
    # 0.1 s of wall clock from a decoder racing ahead, frames seconds of video apart, and no
    # face was ever judged (each frame a new track, "window_too_short").
    _, log, _, metrics = parts
    faces = RecordsTimes()
    m = await scan_recording(parts, faces, 3.0)
    # The grid `monitor scan` uses: every 0.1 s of video, all 3 s of it, whatever the wall clock did.
    assert faces.times == pytest.approx([round(0.1 * k, 4) for k in range(30)], abs=0.02)
    value = metrics.registry.get_sample_value
    assert value("deepfake_monitor_frames_dropped_total", {"stream": "rec", "reason": "not_sampled"}) == 60
    # /api/streams says so too (it said 0 dropped): every frame is analysed or counted there.
    (status,) = [p.status() for p in m.list()]
    assert status.frames_received == 90 and status.frames_analysed == 30 and status.frames_dropped == 60
    for reason in ("superseded", "stale"):
        assert value("deepfake_monitor_frames_dropped_total", {"stream": "rec", "reason": reason}) in (None, 0)
    payloads = [payload for _, payload in log.read_since(0, 1000)]
    assert sum(EventType.ALERT_OPENED.value in p for p in payloads) == 1  # one face, one track, judged
    await m.aclose()


class ThreeFramesThenEnds(ThreadedSource):
    kind: ClassVar[str] = "three"
    reconnect: ClassVar[bool] = False

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        for n in range(3):
            yield Frame(self.stream_id, self.next_seq(), n / 30, time.monotonic(), 4, 4, np.zeros((4, 4, 3), np.uint8))
            time.sleep(1 / 30)


async def test_every_frame_of_a_stream_that_ends_is_analysed_or_counted(parts: Any) -> None:
    # The source ended while the loop waited for a fresher frame: the frame in hand was neither
    # analysed nor counted, against "every frame not analysed is counted by reason".
    _, _, _, metrics = parts
    m = manager(parts, NoFaces())
    pipeline = await m.add(StreamConfig(id="three", url="x://y"), source=ThreeFramesThenEnds("three", metrics=metrics))
    async with asyncio.timeout(20):
        while pipeline.status().state != StreamState.ENDED:
            await asyncio.sleep(0.02)
        while pipeline._task is not None and not pipeline._task.done():
            await asyncio.sleep(0.02)
    status = pipeline.status()
    assert status.frames_received == 3
    assert status.frames_analysed + status.frames_dropped == 3, status
    await m.aclose()


class SlowFaces(RecordsTimes):
    def process(self, frame: Frame, rgb: Any) -> FaceFrame:
        time.sleep(0.12)  # over the 0.1 s budget of 10 fps
        return super().process(frame, rgb)


async def test_a_file_read_as_fast_as_analysis_goes_never_skips_detector_work(parts: Any) -> None:
    # Over budget, the live pipeline skips the detector on the next frame: right for a live feed,
    # but a file that waits for analysis is never late, and `monitor scan` never skips.
    metrics = parts[3]
    faces = SlowFaces()
    m = await scan_recording(parts, faces, 1.0)
    assert len(faces.times) == 10
    assert metrics.registry.get_sample_value("deepfake_monitor_work_skipped_total", {"stage": "detect"}) == 0
    await m.aclose()
