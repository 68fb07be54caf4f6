"""Tests (from a mutation audit) of monitor.sources.base: the frame slot, and what ThreadedSource promises about
its states and metrics when a stream is closed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from monitor.clock import FakeClock
from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.sources.base import LatestSlot, ThreadedSource
from monitor.types import Frame, StreamState

DEADLINE_S = 20.0  # generous for a busy machine; a missing fix never meets the condition


async def until(condition: Any, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def frame(seq: int) -> Frame:
    return Frame("cam", seq, seq / 10, float(seq), 4, 4, np.zeros((4, 4, 3), np.uint8))


class Frames(ThreadedSource):
    """Yields a frame every 10 ms until stopped."""

    kind: ClassVar[str] = "frames"

    def __init__(self, stream_id: str = "cam", metrics: Metrics | None = None) -> None:
        super().__init__(stream_id, metrics=metrics or Metrics(), clock=FakeClock())
        self.states: list[tuple[StreamState, str]] = []
        self.on_state(lambda state, detail: self.states.append((state, detail)))

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            yield frame(self.next_seq())
            self._stop.wait(0.01)


# --- LatestSlot --------------------------------------------------------------------------


async def test_wait_empty_is_false_once_stop_is_set_even_if_the_slot_is_empty() -> None:
    slot = LatestSlot(asyncio.get_running_loop(), lambda reason: None)
    stop = threading.Event()
    assert await asyncio.to_thread(slot.wait_empty, stop)  # empty, not stopped: hand over the next
    stop.set()
    assert not await asyncio.to_thread(slot.wait_empty, stop)  # stopped: hand over nothing more


async def test_the_drop_reason_set_by_the_consumer_labels_replaced_frames() -> None:
    reasons: list[str] = []
    slot = LatestSlot(asyncio.get_running_loop(), reasons.append)
    slot.put_threadsafe(frame(1))
    slot.put_threadsafe(frame(2))
    slot.drop_reason = "not_sampled"
    slot.put_threadsafe(frame(3))
    assert reasons == ["superseded", "not_sampled"]
    assert (await slot.get()).seq == 3  # the newest frame


async def test_set_drop_reason_reaches_the_metric() -> None:
    metrics = Metrics()
    source = Frames(metrics=metrics)
    await source.start()
    try:
        source.set_drop_reason("not_sampled")
        count = metrics.registry.get_sample_value
        await until(lambda: (count("deepfake_monitor_frames_dropped_total", {"stream": "cam", "reason": "not_sampled"}) or 0) >= 2, "frames dropped as not_sampled")
        assert count("deepfake_monitor_frames_dropped_total", {"stream": "cam", "reason": "superseded"}) is None
        assert source.status.frames_dropped >= 2
    finally:
        await source.aclose()


# --- a stream closed on purpose --------------------------------------------------------------


async def test_a_stream_closed_on_purpose_is_stopped_and_not_shown_down() -> None:
    metrics = Metrics()
    source = Frames(metrics=metrics)
    await source.start()
    try:
        await until(lambda: source.status.state == StreamState.RUNNING, "running")
        assert metrics.registry.get_sample_value("deepfake_monitor_stream_up", {"stream": "cam"}) == 1
    finally:
        await source.aclose()
    assert source._thread is not None  # noqa: SLF001
    await asyncio.to_thread(source._thread.join, DEADLINE_S)  # noqa: SLF001
    assert source.status.state == StreamState.STOPPED
    # Finished on purpose: not "down" (stream_up 0 would fire a "stream down" alert for ever).
    assert metrics.registry.get_sample_value("deepfake_monitor_stream_up", {"stream": "cam"}) is None


def test_frames_of_exactly_max_frame_pixels_are_admitted() -> None:
    source = Frames()
    source.max_frame_pixels = 640 * 480
    source.check_frame_size(640, 480)  # not more than the limit
    with pytest.raises(Exception, match="exceed analysis.max_frame_pixels"):
        source.check_frame_size(641, 480)


class Stuck(ThreadedSource):
    """Delivers one frame, then blocks (not on ``_stop``: a decoder stuck in native code); when
    released it reports a decode error, yields a frame and fails."""

    kind: ClassVar[str] = "stuck"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("cam", metrics=metrics, clock=FakeClock())
        self.states: list[tuple[StreamState, str]] = []
        self.on_state(lambda state, detail: self.states.append((state, detail)))
        self.blocking, self.release = threading.Event(), threading.Event()

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        yield frame(self.next_seq())
        self.blocking.set()
        self.release.wait(3 * DEADLINE_S)  # released by the test, long after the recv below gives up
        self.count_decode_error(ValueError("corrupt packet"))
        yield frame(self.next_seq())
        raise SourceError("camera gone", retryable=False)


async def test_a_thread_left_behind_changes_nothing_when_it_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ThreadedSource, "JOIN_S", 0.3)
    metrics = Metrics()
    source = Stuck(metrics)
    await source.start()
    assert (await asyncio.wait_for(source.recv(), DEADLINE_S)).seq == 1
    await until(source.blocking.is_set, "the decoder to block")
    await source.aclose()
    assert source.left_behind()
    assert source.states[-1][0] == StreamState.STOPPED and "left behind" in source.states[-1][1]
    # Its consumer is not left waiting on a slot nothing will fill.
    with pytest.raises(SourceEnded):
        await asyncio.wait_for(source.recv(), DEADLINE_S)
    states_then = list(source.states)
    source.release.set()
    assert source._thread is not None  # noqa: SLF001
    await asyncio.to_thread(source._thread.join, DEADLINE_S)  # noqa: SLF001
    assert not source.left_behind()  # it ended: no longer counted as left behind
    count = metrics.registry.get_sample_value
    assert source.status.decode_errors == 0 and source.status.frames_received == 1
    assert count("deepfake_monitor_frames_dropped_total", {"stream": "cam", "reason": "decode_error"}) is None
    assert count("deepfake_monitor_stream_up", {"stream": "cam"}) is None
    assert source.states == states_then  # no late event for a stream that is gone
    assert source.status.state == StreamState.STOPPED


class StallsUntilStopped(ThreadedSource):
    """A camera that stalls; asked to stop, its blocked read ends with a timeout error."""

    kind: ClassVar[str] = "stalls"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("cam", metrics=metrics, clock=FakeClock())
        self.states: list[StreamState] = []
        self.on_state(lambda state, detail: self.states.append(state))
        self.reading = threading.Event()

    def _open(self) -> None:
        pass

    def _read(self) -> Iterator[Frame]:
        yield frame(self.next_seq())
        self.reading.set()
        self._stop.wait(DEADLINE_S)
        raise SourceError("read timed out after 5 s", retryable=True)


async def test_an_error_from_a_read_interrupted_by_stop_is_not_a_failure() -> None:
    metrics = Metrics()
    source = StallsUntilStopped(metrics)
    await source.start()
    await until(source.reading.is_set, "the read to stall")
    await source.aclose()
    assert source.status.state == StreamState.STOPPED
    assert StreamState.RECONNECTING not in source.states and StreamState.FAILED not in source.states
    assert source.status.reconnects == 0 and source.status.last_error is None
    count = metrics.registry.get_sample_value
    assert count("deepfake_monitor_source_errors_total", {"stream": "cam", "kind": "SourceError"}) is None


class FailsAtOnce(ThreadedSource):
    kind: ClassVar[str] = "fails"

    def __init__(self) -> None:
        super().__init__("cam", metrics=Metrics(), clock=FakeClock())
        self.states: list[StreamState] = []
        self.on_state(lambda state, detail: self.states.append(state))

    def _open(self) -> None:
        raise SourceError("unsupported codec", retryable=False)

    def _read(self) -> Iterator[Frame]:
        yield from ()


async def test_a_failed_stream_stays_failed_when_it_is_closed() -> None:
    source = FailsAtOnce()
    await source.start()
    with pytest.raises(SourceError, match="unsupported codec"):
        await asyncio.wait_for(source.recv(), DEADLINE_S)
    await source.aclose()
    assert source.status.state == StreamState.FAILED
    assert source.states == [StreamState.FAILED]


def test_the_kind_of_an_error_raised_from_none_is_the_sources_own() -> None:
    from monitor.sources.base import error_kind

    def raise_from_none() -> None:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            raise SourceError("no video for 5 s", retryable=True) from None

    with pytest.raises(SourceError) as info:
        raise_from_none()
    assert error_kind(info.value) == "SourceError"

    def raise_during() -> None:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            raise SourceError("cannot open", retryable=True)  # noqa: B904 - its context is the cause

    with pytest.raises(SourceError) as info:
        raise_during()
    assert error_kind(info.value) == "ConnectionRefusedError"


async def test_frames_over_max_frame_pixels_fail_a_live_stream_without_retrying() -> None:
    source = Frames()  # a live source: it reconnects after retryable errors
    source.max_frame_pixels = 4 * 4 - 1
    await source.start()
    try:
        with pytest.raises(SourceError, match="exceed analysis.max_frame_pixels"):
            await asyncio.wait_for(source.recv(), DEADLINE_S)
        assert source.status.state == StreamState.FAILED and source.status.reconnects == 0
        assert [s for s, _ in source.states] == [StreamState.FAILED]
    finally:
        await source.aclose()
