"""Threaded sources: decode in the source's own thread, hand over only the newest frame,
reconnect with jittered exponential backoff. Subclasses implement ``_open`` and ``_read``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from monitor.clock import Clock, RateMeter, SystemClock
from monitor.config import REDACTED, URL_USERINFO, redact_url
from monitor.errors import SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.types import Frame, SourceStatus, StreamState

logger = logging.getLogger(__name__)

# A URL quoted inside an error message (FFmpeg repeats the one it failed to open, in quotes).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Numbers in an error ("no video for 2.3 s", "51 corrupt packets"): not part of its cause.
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def failure_text(exc: BaseException) -> str:
    """A plugin's unexpected error for a message a user reads: its class and its text, with
    the credentials of any URL in it hidden."""
    return f"{type(exc).__name__}: {redact_text(str(exc))}"


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a state detail) with the credentials of every URL in it
    hidden; with ``url`` (the source's own), also every copy of that URL and of its
    user:password, raw or percent-decoded or -encoded, wherever the library put them."""
    if url:
        text = text.replace(url, redact_url(url))
        m = URL_USERINFO.match(url)
        if m:
            userinfo = m[0][len(m[1]) : -1]
            for form in sorted({userinfo, unquote(userinfo), quote(unquote(userinfo), safe=":")}, key=len, reverse=True):
                if form:
                    if ":" in form:  # user:password: hidden wherever it appears
                        text = text.replace(form, REDACTED)
                    else:
                        # A bare user name, as a word and not in a host name: "cam" must not
                        # turn "camera offline" into "***era offline", nor "@cam.local" into
                        # "@***.local".
                        text = re.sub(rf"(?<![\w.@/-]){re.escape(form)}(?![\w-])", REDACTED, text)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)


def error_kind(err: BaseException) -> str:
    """The metric's ``kind``: the error's own ``kind`` if it names one, else the class of the
    error underneath a SourceError (PyAV's ``ConnectionRefusedError``, ``InvalidDataError``,
    ``HTTPError``...), or ``SourceError`` for the source's own findings (a timeout, no video)."""
    kind = getattr(err, "kind", None)
    if kind:
        return str(kind)
    # As Python shows it: the context of an error raised "from None" was set aside on purpose.
    inner = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return type(inner if isinstance(err, SourceError) and inner is not None else err).__name__


class LatestSlot:
    """Thread-to-asyncio hand-off holding at most one frame: a newer frame replaces an
    unread one (counted as dropped), so a slow consumer always gets the newest frame."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_superseded: Any) -> None:
        # The consumer says why an unread frame would be replaced: it is either pacing
        # itself to the analysis rate ("not_sampled") or busy analysing ("superseded").
        self.drop_reason = "superseded"
        self._loop = loop
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._closed: BaseException | None = None
        self._ready = asyncio.Event()
        self._on_superseded = on_superseded
        self._empty = threading.Event()  # no unread frame: a lossless source may put the next
        self._empty.set()

    def put_threadsafe(self, frame: Frame) -> None:
        with self._lock:
            replaced = self._frame is not None
            self._frame = frame
            self._empty.clear()
        if replaced:
            self._on_superseded(self.drop_reason)
        self._loop.call_soon_threadsafe(self._ready.set)

    def close_threadsafe(self, reason: BaseException) -> None:
        with self._lock:
            self._closed = reason
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # loop already closed during shutdown
            pass

    def wait_empty(self, stop: threading.Event) -> bool:
        """Block (a source's thread) until the unread frame is taken; False when ``stop`` is set
        or the slot closed first. How a lossless source hands over every frame."""
        while not self._empty.wait(0.05):
            if stop.is_set() or self._closed is not None:
                return False
        return not stop.is_set()

    async def get(self) -> Frame:
        while True:
            with self._lock:
                frame, self._frame = self._frame, None
                closed = self._closed
                if frame is None:
                    self._ready.clear()
                self._empty.set()
            if frame is not None:
                return frame
            if closed is not None:
                raise closed
            await self._ready.wait()


class Backoff:
    """Jittered exponential backoff (full jitter around the nominal delay)."""

    def __init__(self, initial: float = 0.25, maximum: float = 5.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        nominal = min(self.maximum, self.initial * (2**self._attempt))
        if nominal < self.maximum:
            # Not past the cap: 0.25 * 2**1024 overflows a float, which a camera down for an
            # hour (1024 tries at the 5 s cap) reached, and the source thread died of it.
            self._attempt += 1
        return nominal * (0.5 + self._rng.random() * 0.5)

    def reset(self) -> None:
        self._attempt = 0


class ThreadedSource:
    """Base for sources that block while decoding. One thread per source owns the decoder;
    the event loop only awaits the newest frame. Retryable errors reconnect with backoff;
    fatal ones end the stream with ``SourceError``."""

    kind: ClassVar[str] = "threaded"
    reconnect: ClassVar[bool] = True
    # Every frame is handed over, each once the previous one was taken (backpressure), instead of
    # the newest replacing an unread one: a file read as fast as analysis goes, not a live feed.
    # The pipeline then samples it by stream time (analysis.fps over the file's timestamps).
    lossless: bool = False
    JOIN_S: ClassVar[float] = 10.0  # how long aclose waits for a blocked decoder thread
    # A connection counts as healthy, and the reconnect backoff starts again from its shortest
    # delay, only after this long with frames: reset on the first frame, a camera that sends one
    # frame and then fails (a decodable keyframe, then corrupt data) was retried about 5 times a
    # second for ever.
    HEALTHY_S: ClassVar[float] = 10.0
    # The URL the source reads, if it has one: its credentials never reach an error or a state
    # detail (the event log, websocket clients, webhooks, logs and /api/streams all show those).
    url: str | None = None
    # Frames with more pixels fail the stream (analysis.max_frame_pixels, set by the manager): one
    # 8000x8000 file took the service from 0.5 to 3.3 GB of memory while showing "running".
    max_frame_pixels: int | None = None

    def __init__(self, stream_id: str, *, metrics: Metrics, clock: Clock | None = None) -> None:
        self.stream_id = stream_id
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.status = SourceStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slot: LatestSlot | None = None
        self._seq = 0
        self._backoff = Backoff()
        self._rate = RateMeter()
        self._state_listeners: list[Any] = []
        self._published: tuple[StreamState, str] | None = None  # state and cause last announced
        self._detached = False  # closed while its thread was still blocked: ignore what it does

    # --- the subclass interface -------------------------------------------------------
    def _open(self) -> None:
        """Connect or open; raise SourceError (retryable or not) on failure."""
        raise NotImplementedError

    def _read(self) -> Iterator[Frame]:
        """Yield frames until the stream ends (return) or fails (raise SourceError)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release what ``_open`` acquired; must not raise."""

    # --- shared machinery ---------------------------------------------------------------
    def on_state(self, listener: Any) -> None:
        """``listener(state, detail)`` is called from the source thread on state changes."""
        self._state_listeners.append(listener)

    def _redact(self, text: str) -> str:
        return redact_text(text, self.url)

    def _set_state(self, state: StreamState, detail: str = "", cause: str | None = None) -> None:
        """Announce a state change to the listeners (the stream.status event). ``cause`` (by
        default ``detail``) tells what must change for the same state to be announced again:
        a dead camera's retries differ only in "retrying in X s", and each one was a new event
        in the durable log, one every 5 s per dead stream."""
        if self._detached:
            return
        self._announce(state, detail, cause)

    def _announce(self, state: StreamState, detail: str, cause: str | None = None) -> None:
        if state == self.status.state and not detail:
            return
        detail = self._redact(detail)
        key = (state, self._redact(cause) if cause is not None else detail)
        if state == self.status.state and key == self._published:
            return
        self._published = key
        self.status.state = state
        if state in (StreamState.ENDED, StreamState.STOPPED):
            # Finished on purpose (a file ended, the stream was removed): not "down".
            try:
                self.metrics.stream_up.remove(self.stream_id)
            except KeyError:
                pass
        else:
            self.metrics.stream_up.labels(self.stream_id).set(1 if state == StreamState.RUNNING else 0)
        for listener in self._state_listeners:
            try:
                listener(state, detail)
            except Exception:  # a listener bug must not kill the decoder thread
                logger.exception("state listener failed for stream %s", self.stream_id)

    def check_frame_size(self, width: int, height: int) -> None:
        """SourceError (not retryable) when a decoded frame has more than max_frame_pixels."""
        if self.max_frame_pixels and width * height > self.max_frame_pixels:
            raise SourceError(
                f"frames of {width}x{height} exceed analysis.max_frame_pixels "
                f"({self.max_frame_pixels:,} pixels): scale the video down, or raise the limit",
                retryable=False,
            )

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _superseded(self, reason: str) -> None:
        self.status.frames_dropped += 1
        self.metrics.frames_dropped.labels(self.stream_id, reason).inc()

    def count_decode_error(self, exc: BaseException) -> None:
        if self._detached:
            return
        self.status.decode_errors += 1
        self.status.last_error = self._redact(f"decode error: {exc}")
        self.metrics.frames_dropped.labels(self.stream_id, "decode_error").inc()

    def _deliver(self, frame: Frame) -> None:
        if self._detached:
            return
        now = frame.received_at
        st = self.status
        self._rate.tick(now)
        st.fps_in = self._rate.rate()
        st.frames_received += 1
        st.width, st.height = frame.width, frame.height
        self.metrics.frames_received.labels(self.stream_id).inc()
        assert self._slot is not None
        if self.lossless and not self._slot.wait_empty(self._stop):
            return
        self._slot.put_threadsafe(frame)

    async def start(self) -> None:
        self._slot = LatestSlot(asyncio.get_running_loop(), self._superseded)
        self._thread = threading.Thread(target=self._run, name=f"source-{self.stream_id}", daemon=True)
        self._thread.start()

    async def recv(self) -> Frame:
        assert self._slot is not None, "start() first"
        return await self._slot.get()

    def set_drop_reason(self, reason: str) -> None:
        """Label frames replaced from now on (see LatestSlot.drop_reason)."""
        if self._slot is not None:
            self._slot.drop_reason = reason

    async def aclose(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Polled, not joined in the default executor: its few workers (cores + 4) would
            # wait on stuck threads a handful at a time, stretching a shutdown of many dead
            # cameras to ceil(n / workers) * JOIN_S, and starving model loads meanwhile.
            deadline = time.monotonic() + self.JOIN_S
            while self._thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self._thread.is_alive():
                logger.warning("source thread for %s did not stop within %g s; leaving it behind", self.stream_id, self.JOIN_S)
                # Whatever it does when it wakes (a frame, a state change) belongs to a stream
                # that is gone, perhaps replaced by a new one with the same id: it must not
                # publish events or bring back the removed stream's metrics.
                self._detached = True  # first: from here on, the thread announces nothing
                # The stream is gone all the same: say so, or its last event ("running",
                # "reconnecting") would show it watched for ever on dashboards and sinks.
                self._announce(StreamState.STOPPED, f"removed; its source thread did not stop within {self.JOIN_S:g} s and was left behind")
                self._state_listeners.clear()
                assert self._slot is not None
                self._slot.close_threadsafe(SourceEnded(f"stream {self.stream_id} closed"))

    def left_behind(self) -> bool:
        """Whether ``aclose`` gave up on the decoder thread and it is still running."""
        return self._detached and self._thread is not None and self._thread.is_alive()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; returns False when asked to stop."""
        return not self._stop.wait(seconds)

    def _run(self) -> None:
        assert self._slot is not None
        end: BaseException = SourceEnded(f"stream {self.stream_id} ended")
        try:
            while not self._stop.is_set():
                try:
                    self._open()
                    first_frame_at: float | None = None
                    healthy = False
                    for frame in self._read():
                        self.check_frame_size(frame.width, frame.height)
                        if first_frame_at is None:
                            # Running (and stream_up 1) from the first frame, not from the open:
                            # a camera that accepts the connection but sends nothing would
                            # otherwise flap between running and reconnecting, and an alert on
                            # stream_up == 0 for a minute would never fire.
                            first_frame_at = self.clock.monotonic()
                            self._set_state(StreamState.RUNNING)
                        elif not healthy and self.clock.monotonic() - first_frame_at >= self.HEALTHY_S:
                            healthy = True
                            self._backoff.reset()
                        self._deliver(frame)
                        if self._stop.is_set():
                            break
                    if self._stop.is_set():
                        break
                    if not self.reconnect:
                        self._set_state(StreamState.ENDED, "end of stream")
                        break
                    err: SourceError = SourceError("end of stream", retryable=True)
                except SourceError as exc:
                    err = exc
                except Exception as exc:  # an unexpected decoder error must not kill the service
                    # Not logger.exception: the traceback quotes the message, URL and all.
                    trace = "".join(traceback.format_exception(exc))
                    logger.error("source %s failed unexpectedly: %s", self.stream_id, self._redact(trace))
                    err = SourceError(f"{type(exc).__name__}: {exc}", retryable=self.reconnect)
                    err.__cause__ = exc  # its kind, for the metric
                finally:
                    self._close()
                if self._stop.is_set():
                    # Asked to stop: an error from the read or open it interrupted (a stalled
                    # camera's timeout) is not a failure of the stream.
                    break
                self.metrics.source_errors.labels(self.stream_id, error_kind(err)).inc()
                # Whatever built the message, it reaches the API, the event log and the logs
                # without the URL's credentials; the pipeline logs the error that ends it too.
                message = self._redact(str(err))
                if message != str(err):
                    err = SourceError(message, retryable=err.retryable)
                self.status.last_error = message
                if not (err.retryable and self.reconnect):
                    self._set_state(StreamState.FAILED, message)
                    end = err
                    break
                delay = self._backoff.next_delay()
                # The detail says when the next try is; a new event only for a new cause.
                cause = f"{type(err).__name__}: {_NUMBER.sub('#', message)}"
                self._set_state(StreamState.RECONNECTING, f"{message}; retrying in {delay:.2f}s", cause=cause)
                logger.warning("stream %s: %s; reconnecting in %.2fs", self.stream_id, message, delay)
                if not self._sleep(delay):
                    break
                self.status.reconnects += 1
                self.metrics.reconnects.labels(self.stream_id).inc()
        except Exception as exc:
            # A bug in the retry bookkeeping itself: end the stream as failed, with the error,
            # never as a clean end (which closes its alerts quietly while its status still
            # says "reconnecting" and nothing retries any more).
            message = self._redact(f"{type(exc).__name__}: {exc}")
            end = SourceError(message, retryable=False)
            logger.error("source %s: its reconnect loop failed: %s", self.stream_id, self._redact("".join(traceback.format_exception(exc))))
            self.status.last_error = message
            with contextlib.suppress(Exception):  # best effort: the stream ends with the error regardless
                self._set_state(StreamState.FAILED, message)
        finally:
            if self._stop.is_set() and self.status.state not in (StreamState.FAILED, StreamState.ENDED):
                self._set_state(StreamState.STOPPED)
            self._slot.close_threadsafe(end)
