"""One live stream: pace analysis to the stream's fps, take the newest frame, analyse it in
the stream's own worker thread, publish what it caused. Ingest never waits for inference."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from dataclasses import dataclass

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import is_corrupt
from monitor.clock import Clock, RateMeter
from monitor.config import StreamConfig, redact_url
from monitor.errors import MonitorError, SourceEnded
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import Analysis, StreamAnalyzer, TrackSnapshot
from monitor.pipeline.worker import DaemonWorker
from monitor.plugins import Source
from monitor.types import Event, EventType, Frame, Severity, StreamState, StreamStatusData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamStatus:
    """Everything the API shows about one stream."""

    id: str
    url: str
    source: str
    state: StreamState
    analysis_fps: float
    fps_in: float
    fps_analysed: float
    frames_received: int
    frames_analysed: int
    frames_dropped: int
    frames_stale: int
    decode_errors: int
    reconnects: int
    last_error: str | None
    width: int
    height: int
    latency_ms_p50: float | None
    latency_ms_last: float | None
    verdict: str  # worst state over live tracks, or no_face / waiting
    tracks: tuple[TrackSnapshot, ...]


class StreamPipeline:
    STOP_WAIT_S = 10.0  # for the stream's task to finish (and close its alerts) on removal
    PUBLISH_BACKOFF_MAX_S = 5.0  # longest wait between tries to write events to a failing log
    PUBLISH_TRIES = 6  # tries (about 6 s) to write events that fail for another reason than the log
    STATUS_BACKLOG = 100  # status events kept, newest first, while the log refuses writes
    # For the source's close: a built-in one leaves a blocked decoder thread behind after
    # ThreadedSource.JOIN_S (10 s).
    SOURCE_CLOSE_S = 15.0
    STUCK_WAIT_S = 5.0  # after cancelling it, before leaving a stuck analysis thread behind
    LATENCY_WINDOW_S = 30.0  # status() reports the latency of verdicts this recent only

    def __init__(
        self,
        config: StreamConfig,
        source: Source,
        analyzer: StreamAnalyzer,
        bus: EventBus,
        metrics: Metrics,
        clock: Clock,
        fps: float,
        max_frame_age_s: float,
    ) -> None:
        self.config = config
        self.source = source
        self.analyzer = analyzer
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.fps = fps
        self.max_frame_age_s = max_frame_age_s
        # One thread: frames are analysed one after another, and the stream's end (analyzer.end)
        # must not run beside a frame still in analysis.
        self._executor = DaemonWorker(f"analyse-{config.id}")
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.frames_analysed = 0
        self.frames_stale = 0
        self._analysed_rate = RateMeter()
        # (monotonic time, seconds) of recent verdicts, newest last; status() reads the last
        # LATENCY_WINDOW_S of them, so a stream that stopped producing verdicts shows none.
        self.recent_latencies: deque[tuple[float, float]] = deque(maxlen=1000)
        self._last_latency: float | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # Status events wait here for the one task that writes them, in order and with the
        # retries analysis events get: a log locked for a moment must not lose "failed".
        self._status_queue: deque[Event] = deque()
        self._status_writer: asyncio.Task[None] | None = None
        self._statuses_dropped = 0  # for want of room in _status_queue, since the log last took writes
        self._started = False
        self.frames_skipped_for_fresher = 0
        self.frames_not_sampled = 0  # a file with realtime: false, between its sampling grid's points
        self.analysis_errors = 0
        self._last_t = 0.0  # stream time of the last frame analysed
        # Why no verdict comes although frames do (analysis_failed / analysis_stalled), as last
        # announced in a stream.status event; None while analysis works.
        self._analysis_problem: str | None = None
        self._closing = False  # aclose has begun: writes to a failing log give up by _closing_deadline
        self._source_closing: asyncio.Future[None] | None = None  # the source's close, once aclose began it
        self._closing_deadline = 0.0

    @property
    def id(self) -> str:
        return self.config.id

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.source.on_state(self._on_source_state)
        await self.source.start()
        self.metrics.streams_active.labels(self.source.kind).inc()
        self._started = True
        self._task = asyncio.create_task(self._run(), name=f"stream-{self.id}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream %s analysis task died", self.id, exc_info=task.exception())

    def _on_source_state(self, state: StreamState, detail: str) -> None:
        """Called from the source thread: publish a stream status event on the loop."""
        assert self._loop is not None
        severity = Severity.WARNING if state in (StreamState.RECONNECTING, StreamState.FAILED) else Severity.INFO
        event = Event(
            EventType.STREAM_STATUS,
            self.id,
            severity,
            self.clock.time(),
            StreamStatusData(state, detail, self.source.status.reconnects),
        )
        try:
            self._loop.call_soon_threadsafe(self._publish_soon, [event])
        except RuntimeError:  # loop closed at shutdown
            pass

    def _publish_soon(self, events: list[Event]) -> None:
        self._status_queue.extend(events)
        excess = len(self._status_queue) - self.STATUS_BACKLOG
        if excess > 0:
            # Only while the log refuses writes: a camera that flaps meanwhile (connected, one
            # frame, lost) announced two states every few seconds, each kept until the disk came
            # back. The newest states are what the log should end with.
            for _ in range(excess):
                self._status_queue.popleft()
            if not self._statuses_dropped:
                logger.error(
                    "stream %s: the event log is not taking writes and at most %d status events wait: older ones are dropped "
                    "(counted until the log takes writes again)", self.id, self.STATUS_BACKLOG,
                )
            self._statuses_dropped += excess
        if self._status_writer is None or self._status_writer.done():
            # One writer at a time: a retry must not let a later transition overtake it.
            task = self._status_writer = asyncio.create_task(self._write_statuses(), name=f"status-{self.id}")
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _write_statuses(self) -> None:
        while self._status_queue:
            events = list(self._status_queue)
            self._status_queue.clear()
            await self._publish(events)
        if self._statuses_dropped:
            logger.error("stream %s: %d status events were dropped while the event log refused writes", self.id, self._statuses_dropped)
            self._statuses_dropped = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.fps
        next_due = self.clock.monotonic()
        # When an analysis last succeeded. No verdict for inconclusive_after_s (a source
        # reconnecting, a publisher gone quiet, an analysis that fails on every frame or does not
        # return): the tracks are told, so one in alert goes inconclusive and its alert closes,
        # instead of showing "alert" until verdicts come back.
        last_ok_at = self.clock.monotonic()
        last_idle_at = last_ok_at
        idle_after = self.analyzer.policy_config.inconclusive_after_s
        # A file read as fast as analysis goes (`realtime: false`): sampled by its own timestamps
        # on the grid `monitor scan` uses, never by the wall clock, which would pick frames
        # seconds of video apart and never judge a face.
        by_stream_time = bool(getattr(self.source, "lossless", False))
        next_t = 0.0
        ending = False  # the source ended while a fresher frame was awaited
        try:
            while not ending:
                wait = next_due - self.clock.monotonic()
                if wait > 0 and not by_stream_time:
                    self.source.set_drop_reason("not_sampled")
                    await asyncio.sleep(wait)
                try:
                    if idle_after > 0:
                        frame = await asyncio.wait_for(self.source.recv(), idle_after)
                    else:
                        frame = await self.source.recv()
                except asyncio.TimeoutError:
                    await self._no_verdicts("no_frames", last_ok_at)
                    continue
                except SourceEnded:
                    break
                except MonitorError as exc:
                    logger.warning("stream %s stopped: %s", self.id, exc)
                    break
                arrived = self.clock.monotonic()  # before any wait for a fresher frame
                if by_stream_time:
                    if frame.pts_s + 1e-6 < next_t:
                        # Counted in the status too: it showed 0 dropped while two frames in
                        # three of a 30 fps file analysed at 10 fps were never analysed.
                        self.frames_not_sampled += 1
                        self.metrics.frames_dropped.labels(self.id, "not_sampled").inc()
                        continue
                    while next_t <= frame.pts_s + 1e-6:
                        next_t += interval
                fresh_within = 0.5 / self.source.status.fps_in if self.source.status.fps_in > self.fps and not by_stream_time else 0.0
                if fresh_within and self.clock.monotonic() - frame.received_at > fresh_within:
                    # The waiting frame is most of a frame interval old and a new one is due
                    # soon: analysing the next one instead cuts frame->verdict latency.
                    try:
                        frame = await asyncio.wait_for(self.source.recv(), 2 * fresh_within)
                        self.frames_skipped_for_fresher += 1
                        self.metrics.frames_dropped.labels(self.id, "not_sampled").inc()
                    except asyncio.TimeoutError:
                        pass  # none came: analyse the one we have
                    except SourceEnded:
                        ending = True  # the frame in hand is the last: analysed, then the end
                    except MonitorError as exc:
                        logger.warning("stream %s stopped: %s", self.id, exc)
                        ending = True
                self.source.set_drop_reason("superseded")
                now = self.clock.monotonic()
                # One interval after this frame was due or came, whichever was later: after a
                # delay (start-up, a reconnect, a slow analysis) the next frame is not taken at
                # once, one input frame later, but an interval on.
                next_due = max(next_due + interval, arrived + 0.75 * interval)
                age = now - frame.received_at
                self.metrics.frame_age_seconds.labels(self.source.kind).observe(age)
                if age > self.max_frame_age_s and not by_stream_time:  # a file's frames wait their turn
                    self.frames_stale += 1
                    self.metrics.frames_dropped.labels(self.id, "stale").inc()
                    continue
                try:
                    analysis = await self._analyse(loop, frame, last_ok_at, idle_after)
                except Exception as exc:  # one bad frame must not end the stream
                    logger.exception("analysis failed on stream %s frame %d", self.id, frame.seq)
                    self.analysis_errors += 1
                    self.metrics.frames_dropped.labels(self.id, "analysis_error").inc()
                    now = self.clock.monotonic()
                    if idle_after > 0 and now - max(last_ok_at, last_idle_at) >= idle_after:
                        # Failing on every frame: the frames keep coming, so the receive timeout
                        # above never fires; without this the tracks stayed "alert" for ever.
                        last_idle_at = now
                        self._report_analysis("analysis_failed", f"{type(exc).__name__}: {exc}")
                        await self._no_verdicts("analysis_failed", last_ok_at)
                    continue
                self._last_t = frame.pts_s
                last_ok_at = self.clock.monotonic()
                self._report_analysis(None)
                self._record(analysis)
                if analysis.events:
                    await self._publish(analysis.events)
        finally:
            events = await loop.run_in_executor(self._executor, self.analyzer.end, self._last_t)
            if events:
                await self._publish(events)

    async def _analyse(self, loop: asyncio.AbstractEventLoop, frame: Frame, last_ok_at: float, idle_after: float) -> Analysis:
        """``analyzer.analyse(frame)`` in the worker. A call that runs for inconclusive_after_s
        (stuck in a native library) cannot tell the tracks itself: they are told from here,
        under the analyzer's lock, every inconclusive_after_s until it returns. Timed from the
        call's start, not the last success: the first call after a wait for frames is not stuck."""
        future = loop.run_in_executor(self._executor, self.analyzer.analyse, frame)
        if idle_after <= 0:
            return await future
        deadline = self.clock.monotonic() + idle_after
        while True:
            done, _ = await asyncio.wait({future}, timeout=max(deadline - self.clock.monotonic(), 0.0))
            if done:
                return future.result()
            stalled_s = self.clock.monotonic() - last_ok_at
            self._report_analysis("analysis_stalled", f"no analysis has returned for {stalled_s:.0f} s")
            events = self.analyzer.idle(self._last_t + stalled_s, "analysis_stalled")
            if events:
                await self._publish(events)
            deadline = self.clock.monotonic() + idle_after

    async def _no_verdicts(self, reason: str, last_ok_at: float) -> None:
        """No verdict since ``last_ok_at``: give every track an unreadable one (``reason``)."""
        loop = asyncio.get_running_loop()
        idle_t = self._last_t + (self.clock.monotonic() - last_ok_at)
        events = await loop.run_in_executor(self._executor, self.analyzer.idle, idle_t, reason)
        if events:
            await self._publish(events)

    def _report_analysis(self, problem: str | None, detail: str = "") -> None:
        """Announce in a stream.status event (its detail) that analysis stopped producing
        verdicts (``problem``, a reason code the tracks get too) or works again (None): the
        source's state alone still says "running". Once per change, not per frame."""
        if problem == self._analysis_problem:
            return
        if problem is None:
            text, severity = f"analysis recovered after {self._analysis_problem}", Severity.INFO
        else:
            text, severity = f"{problem}: {detail}" if detail else problem, Severity.WARNING
        self._analysis_problem = problem
        state = self.source.status.state
        data = StreamStatusData(state, text, self.source.status.reconnects)
        self._publish_soon([Event(EventType.STREAM_STATUS, self.id, severity, self.clock.time(), data)])

    async def _publish(self, events: tuple[Event, ...] | list[Event]) -> None:
        """Write events to the log, retrying until it takes them: a log briefly unavailable (a
        backup holding the SQLite lock) or unwritable (a full disk) must not lose an alert, nor
        store a close without its open. Meanwhile the stream's analysis waits (its frames are
        dropped as superseded, and counted); ``event_log_errors_total`` and its alert rule say why.
        Only such errors of the log (sqlite3.OperationalError, OSError, and a damaged log, which
        the bus replaces) are waited out: any other
        error (events that cannot be serialised, say) gets a few tries, as does everything once
        the stream is closing, within what is left of its stop wait. Then the events are dropped
        with an error naming them, so neither can stop the stream or hold a removal."""
        delay = 0.2
        failures = 0
        waiting = False  # in the backoff sleep between two tries
        started = asyncio.Event()  # set by the bus once a try's write is under way
        try:
            while True:
                started.clear()
                try:
                    await self.bus.publish(events, started)
                    if failures:
                        logger.warning("stream %s: event log writable again after %d failed attempts", self.id, failures)
                    return
                except Exception as exc:
                    failures += 1
                    transient = isinstance(exc, (sqlite3.OperationalError, OSError)) or (
                        isinstance(exc, sqlite3.DatabaseError) and is_corrupt(exc)  # the bus replaces the log
                    )
                    left = self._closing_deadline - self.clock.monotonic() if self._closing else None
                    if (left is not None and left < delay) or (not transient and failures >= self.PUBLISH_TRIES):
                        self._log_dropped(events, "could not write them to the log")
                        return
                    # The first failure and every 20th at WARNING with the error, the rest at DEBUG.
                    level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
                    logger.log(
                        level, "stream %s: event log write failed (%d times); retrying in %.1fs", self.id, failures,
                        delay, exc_info=True,
                    )
                    waiting = True
                    await asyncio.sleep(delay)
                    waiting = False
                    delay = min(delay * 2, self.PUBLISH_BACKOFF_MAX_S)
        except asyncio.CancelledError:
            # Cancelled between tries (a removal past its stop wait), or during a try still
            # waiting for the bus (another write held up by a busy log): not written. Cancelled
            # once a try's write was under way, the bus finishes it first: stored.
            if waiting or not started.is_set():
                self._log_dropped(events, "the stream was stopped before the log took them")
            raise

    def _log_dropped(self, events: tuple[Event, ...] | list[Event], why: str) -> None:
        logger.error(
            "stream %s: dropped %d events, %s: %s", self.id, len(events), why,
            ", ".join(f"{e.type.value} (track {getattr(e.data, 'track_id', '-')})" for e in events),
        )

    def _record(self, analysis: Analysis) -> None:
        self._analysed_rate.tick(self.clock.monotonic())
        self.frames_analysed += 1
        if analysis.verdicts:
            self._last_latency = analysis.latency_s
            self.recent_latencies.append((self.clock.monotonic(), analysis.latency_s))

    def status(self) -> StreamStatus:
        s = self.source.status
        tracks = tuple(self.analyzer.snapshot())
        if tracks:
            order = ("alert", "suspicious", "inconclusive", "clear")
            verdict = min((t.state.value for t in tracks), key=order.index)
        else:
            verdict = "no_face" if self.frames_analysed else "waiting"
        since = self.clock.monotonic() - self.LATENCY_WINDOW_S
        lat = sorted(latency for at, latency in list(self.recent_latencies) if at >= since)
        return StreamStatus(
            id=self.id,
            url=redact_url(self.config.url),
            source=self.source.kind,
            state=s.state,
            analysis_fps=self.fps,
            fps_in=round(s.fps_in if s.state == StreamState.RUNNING else 0.0, 2),
            fps_analysed=round(self._analysed_rate.rate(self.clock.monotonic()), 2),
            frames_received=s.frames_received,
            frames_analysed=self.frames_analysed,
            frames_dropped=s.frames_dropped + self.frames_stale + s.decode_errors + self.frames_skipped_for_fresher
            + self.frames_not_sampled + self.analysis_errors,
            frames_stale=self.frames_stale,
            decode_errors=s.decode_errors,
            reconnects=s.reconnects,
            last_error=s.last_error,
            width=s.width,
            height=s.height,
            latency_ms_p50=round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            latency_ms_last=round(lat_last * 1000, 2) if lat and (lat_last := self._last_latency) is not None else None,
            verdict=verdict,
            tracks=tracks,
        )

    def left_behind(self) -> bool:
        """Whether this stream, removed, still holds what its teardown could not stop: a decoder
        thread stuck in a blocking call, a source plugin's close that has not returned, or an
        analysis call stuck in a native library. Each holds threads, sockets or a graph; the
        manager counts such a stream against ``max_streams`` until it lets go."""
        source = getattr(self.source, "left_behind", None)
        return (
            (callable(source) and bool(source()))
            or (self._source_closing is not None and not self._source_closing.done())
            or (self._closing and self._executor.alive())
        )

    async def aclose(self) -> None:
        self._closing = True
        # Writes to a failing log give up in time for the task's own end (closing alerts) to
        # try too, and to be logged if dropped, before the stop wait runs out and cancels it.
        self._closing_deadline = self.clock.monotonic() + self.STOP_WAIT_S - 2.0
        wait_s = self.STOP_WAIT_S
        # Bounded, and left behind past it: a source plugin's close that never returned held the
        # removal (and SIGTERM) for ever, and the stream's alerts were never closed.
        closing = self._source_closing = asyncio.ensure_future(self.source.aclose())
        done, _ = await asyncio.wait({closing}, timeout=self.SOURCE_CLOSE_S)
        failure = None if not done else (closing.exception() if not closing.cancelled() else None)
        if not done or failure is not None:
            # A source plugin's bug must not leave a removed stream running: its frames would
            # keep coming, its alerts stay open and its series stay. Its task, which ends only
            # when the source does, is cancelled at once; its teardown still runs.
            if failure is not None:
                logger.error("stream %s: closing its source failed; stopping the stream anyway", self.id, exc_info=failure)
            else:
                logger.warning("stream %s: its source did not close within %g s; stopping the stream anyway", self.id, self.SOURCE_CLOSE_S)
                closing.add_done_callback(lambda t: t.cancelled() or t.exception())
            wait_s = 0.0
        stuck = False
        if self._task is not None:
            try:
                # shield: a timeout must not cancel the task's own teardown (closing alerts).
                await asyncio.wait_for(asyncio.shield(self._task), wait_s)
            except asyncio.TimeoutError:
                if wait_s:
                    logger.warning("stream %s did not stop within %g s; cancelling", self.id, wait_s)
                self._task.cancel()
                # Its teardown (analyzer.end) queues behind the analysis call that is running:
                # a call stuck in a native library must not hold the removal, or shutdown, for
                # ever. Past the wait, the thread is left behind.
                done, _ = await asyncio.wait({self._task}, timeout=self.STUCK_WAIT_S)
                if not done:
                    stuck = True
                    # When (if) the call returns, it must not touch this stream's metrics again.
                    self.analyzer.detach()
                    # Its open alerts are closed now, from here: the queued analyzer.end runs
                    # only when the call returns, perhaps never, perhaps after the event log has
                    # closed. It still closes the face stage then, and no alert twice.
                    events = self.analyzer.abandon(self._last_t)
                    if events is None:
                        # end() got there first, just now: the task is publishing what it closed.
                        await asyncio.wait({self._task}, timeout=self.STUCK_WAIT_S)
                    elif events:
                        await self._publish(events)
                    logger.error("stream %s: analysis is stuck; leaving its thread behind", self.id)
            except Exception:
                logger.exception("stream %s task failed", self.id)
        else:
            self.analyzer.faces.close()  # never started: its task would have closed it
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        # A stuck analysis call must not block the event loop while we wait for it. Its queued
        # analyzer.end is kept: it closes the face stage (a MediaPipe graph) once the call returns.
        await asyncio.to_thread(self._executor.shutdown, wait=not stuck)
        if self._started:
            self.metrics.streams_active.labels(self.source.kind).dec()
        self.metrics.forget_stream(self.id)
