"""The set of running streams: add and remove at run time, validated before anything starts."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from monitor.alerts.bus import EventBus
from monitor.alerts.evidence import EvidenceStore
from monitor.clock import Clock
from monitor.config import Settings, StreamConfig, too_slow_to_track
from monitor.errors import ConfigError, ShuttingDown, StreamExists, StreamNotFound, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import FaceStage, StreamAnalyzer
from monitor.pipeline.stream import StreamPipeline
from monitor.pipeline.worker import DaemonWorker
from monitor.plugins import SOURCE_GROUP, Detector, Source, load_plugin
from monitor.sources.av_source import limit_ffmpeg_allocations_for
from monitor.sources.base import ThreadedSource, failure_text

logger = logging.getLogger(__name__)

MAX_STREAMS = 64

T = TypeVar("T")


def build_source(stream: StreamConfig, settings: Settings, metrics: Metrics, clock: Clock) -> Source:
    """Instantiate the source plugin the stream names (or its URL implies); ConfigError if invalid.
    Every source plugin provides ``from_stream(stream, *, settings, metrics, clock)``."""
    cls = load_plugin(SOURCE_GROUP, stream.source_name)
    try:
        source: Source = cls.from_stream(stream, settings=settings, metrics=metrics, clock=clock)
    except ConfigError:
        raise
    except Exception as exc:  # a plugin's own failure: named, not a traceback
        raise ConfigError(f"source {stream.source_name!r} cannot be built: {failure_text(exc)}") from exc
    if isinstance(source, ThreadedSource):
        source.max_frame_pixels = settings.analysis.max_frame_pixels
    return source


class StreamManager:
    def __init__(
        self,
        settings: Settings,
        bus: EventBus,
        metrics: Metrics,
        clock: Clock,
        make_detector: Callable[[], Detector],
        make_faces: Callable[[str], FaceStage],
        max_streams: int = MAX_STREAMS,
        evidence: EvidenceStore | None = None,
    ) -> None:
        self.settings = settings
        self.evidence = evidence
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.make_detector = make_detector
        self.make_faces = make_faces
        self.max_streams = max_streams
        self._streams: dict[str, StreamPipeline] = {}
        # Teardowns under way, by stream id: the id stays taken until its teardown ends (a new
        # stream with the same id would otherwise have its metrics removed by the old one's),
        # and aclose() waits for every one, whoever started it.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._closed = False  # aclose() began: no new streams
        self._lock = asyncio.Lock()
        # Removed streams that left something behind (StreamPipeline.left_behind: a decoder thread
        # stuck in a blocking call, a source plugin's close that never returned, an analysis call
        # stuck in native code): they count against max_streams until they let go, or add/remove
        # cycles against a silent camera piled up threads and sockets without limit.
        self._left_behind: list[StreamPipeline] = []
        limit_ffmpeg_allocations_for(settings.analysis)

    async def add(self, stream: StreamConfig, source: Source | None = None) -> StreamPipeline:
        """Start watching ``stream``. A prebuilt ``source`` (e.g. a WebRTC track) may be given."""
        cleanup: asyncio.Task[None] | None = None
        try:
            async with self._lock:
                if self._closed:
                    raise ShuttingDown("the service is shutting down: no new streams")
                if stream.id in self._streams or stream.id in self._closing:
                    raise StreamExists(f"stream {stream.id!r} already exists" + (" (still closing)" if stream.id in self._closing else ""))
                if self.slots_taken() >= self.max_streams:
                    stuck = f" ({len(self._left_behind)} of them removed, their decoder, source or analysis still stuck)" if self._left_behind else ""
                    raise ConfigError(f"at most {self.max_streams} streams{stuck}")
                a = self.settings.analysis
                fps = stream.analysis_fps or a.fps
                slow = too_slow_to_track(f"streams[{stream.id}].analysis_fps", fps, a)
                if slow:  # a stream added through the API: the settings' own check never saw it
                    raise ConfigError(slow)
                if source is None:
                    source = build_source(stream, self.settings, self.metrics, self.clock)
                if isinstance(source, ThreadedSource):
                    # Handed in (a WHIP track) too: every source keeps to the limit.
                    source.max_frame_pixels = a.max_frame_pixels
                faces: FaceStage | None = None
                pipeline: StreamPipeline | None = None
                try:
                    # Model loading and MediaPipe graph setup take a moment: keep them off the loop.
                    detector = await self._off_loop(self.make_detector)
                    faces = await self._off_loop(functools.partial(self.make_faces, stream.id), _close_faces)
                    analyzer = StreamAnalyzer(
                        stream.id, a, self.settings.policy, detector, faces, self.metrics, self.clock, fps=fps, evidence=self.evidence
                    )
                    if getattr(source, "lossless", False):
                        # A file read as fast as analysis goes waits for analysis: no frame is
                        # late, so none skips its detector work, as in `monitor scan`.
                        analyzer.budget_s = float("inf")
                    pipeline = StreamPipeline(
                        stream, source, analyzer, self.bus, self.metrics, self.clock, fps, a.max_frame_age_s
                    )
                    await pipeline.start()
                except BaseException as exc:
                    # Nothing half-built may outlive a failed add: source thread, graph, executor.
                    # It is closed after the lock is released: closing a WHIP source ends its
                    # session, which removes the session's other streams through this manager.
                    cleanup = self._begin_teardown(stream.id, self._discard(stream.id, source, faces, pipeline))
                    if isinstance(exc, Exception) and not isinstance(exc, (ConfigError, StreamExists, ShuttingDown)):
                        # A detector, face stage or source plugin failing as it starts: named, not
                        # a bare 500 from the API (or a traceback and exit 1 from `monitor serve`).
                        logger.error("stream %s cannot start: %s", stream.id, failure_text(exc), exc_info=logger.isEnabledFor(logging.DEBUG))
                        raise StreamStartFailed(f"stream {stream.id!r} cannot start: {failure_text(exc)}") from exc
                    raise
                self._streams[stream.id] = pipeline
                logger.info("watching stream %s (%s)", stream.id, source.kind)
                return pipeline
        finally:
            if cleanup is not None:
                await self._wait_teardown(cleanup)

    async def _off_loop(self, build: Callable[[], T], dispose: Callable[[T], None] | None = None) -> T:
        """``build()`` in a thread. A cancelled add cannot stop the thread: what it returns
        later is handed to ``dispose``, or it would leak (a MediaPipe graph). A daemon thread of
        its own, not the default executor's: those are joined at exit, so a SIGTERM during a
        model load waited for the load (for ever, if it hung on a stalled mount)."""
        worker = DaemonWorker("stream-build")
        future = asyncio.get_running_loop().run_in_executor(worker, build)
        worker.shutdown(wait=False)  # the thread ends after this one call
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if dispose is not None:
                future.add_done_callback(functools.partial(_dispose_late, dispose=dispose))
            raise

    async def _discard(
        self, stream_id: str, source: Source, faces: FaceStage | None, pipeline: StreamPipeline | None
    ) -> None:
        """Close what a failed add built. Never raises: the add's own error is what its caller sees."""
        try:
            if pipeline is not None:
                await pipeline.aclose()
            else:
                try:
                    await source.aclose()
                finally:
                    if faces is not None:
                        faces.close()
        except Exception:
            logger.exception("stream %s: cleaning up after a failed start failed", stream_id)

    def _begin_teardown(self, stream_id: str, closing: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a stream's teardown in a task of its own, the id held until it ends: a caller that
        gives up (a client hanging up) must not leave it half done, and aclose() waits for it."""
        task = asyncio.ensure_future(closing)
        self._closing[stream_id] = task
        # Registered first, so it runs before whoever awaits the task resumes: the id is free
        # again when remove() returns.
        task.add_done_callback(functools.partial(self._teardown_done, stream_id))
        return task

    def _teardown_done(self, stream_id: str, task: asyncio.Task[None]) -> None:
        if self._closing.get(stream_id) is task:
            del self._closing[stream_id]

    @staticmethod
    async def _wait_teardown(task: asyncio.Task[None]) -> None:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller gave up; the teardown goes on, and nobody else will see its error.
            task.add_done_callback(_log_teardown_failure)
            raise

    async def remove(self, stream_id: str) -> None:
        async with self._lock:
            pipeline = self._streams.pop(stream_id, None)
            if pipeline is None:
                raise StreamNotFound(f"no stream {stream_id!r}")
            teardown = self._begin_teardown(stream_id, pipeline.aclose())
            # When the teardown ends, not after our wait: a caller cancelled meanwhile (a WHIP
            # session's task, a request at shutdown) skipped this, and a decoder thread left
            # behind then escaped the max_streams count.
            teardown.add_done_callback(lambda _: self._note_left_behind(pipeline))
        await self._wait_teardown(teardown)
        logger.info("stopped stream %s", stream_id)

    def _note_left_behind(self, pipeline: StreamPipeline) -> None:
        if pipeline.left_behind():
            self._left_behind.append(pipeline)

    def get(self, stream_id: str) -> StreamPipeline:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFound(f"no stream {stream_id!r}") from None

    def list(self) -> list[StreamPipeline]:
        return list(self._streams.values())

    def slots_taken(self) -> int:
        """Streams counted against ``max_streams``: the running ones, those being torn down (their
        decoder may be stuck for up to JOIN_S: removing N stuck cameras and adding N others at once
        ran twice max_streams decoders), and the removed ones whose decoder thread is still stuck."""
        self._left_behind = [s for s in self._left_behind if s.left_behind()]
        return len(self._streams) + len(self._closing) + len(self._left_behind)

    async def aclose(self) -> None:
        async with self._lock:
            # Under the lock: an add still starting (loading models) finishes first and is
            # closed below, and none starts after this.
            self._closed = True
        # All at once: each may wait on a stuck camera or analysis (up to ~25 s), and streams are
        # independent, so shutdown takes the slowest stream's time, not the sum.
        await asyncio.gather(*(self._remove_at_shutdown(stream_id) for stream_id in list(self._streams)))
        # Teardowns started elsewhere (a WHIP session ending in the background, a failed add
        # cleaning up) or by those above: the bus and event log close after this, and the
        # events they publish (alerts closed) must still reach them. Each is bounded by the
        # pipeline's own waits.
        while pending := {task for task in self._closing.values() if not task.done()}:
            await asyncio.wait(pending)

    async def _remove_at_shutdown(self, stream_id: str) -> None:
        try:
            await self.remove(stream_id)
        except StreamNotFound:
            pass  # removed meanwhile, e.g. with its WHIP session's sibling stream
        except Exception:
            logger.exception("error stopping stream %s", stream_id)


def _close_faces(faces: FaceStage) -> None:
    faces.close()


def _dispose_late(future: asyncio.Future[T], dispose: Callable[[T], None]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    try:
        dispose(future.result())
    except Exception:
        logger.exception("disposing of what a cancelled add built failed")


def _log_teardown_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("stream teardown failed", exc_info=task.exception())
