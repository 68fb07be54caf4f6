"""The set of running streams: add and remove at run time, validated before anything starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from monitor.alerts.bus import EventBus
from monitor.clock import Clock
from monitor.config import Settings, StreamConfig
from monitor.errors import ConfigError, ShuttingDown, StreamExists, StreamNotFound
from monitor.metrics import Metrics
from monitor.pipeline.analyzer import FaceStage, StreamAnalyzer
from monitor.pipeline.stream import StreamPipeline
from monitor.plugins import SOURCE_GROUP, Detector, Source, load_plugin

logger = logging.getLogger(__name__)

MAX_STREAMS = 64


def build_source(stream: StreamConfig, settings: Settings, metrics: Metrics, clock: Clock) -> Source:
    """Instantiate the source plugin the stream names (or its URL implies); ConfigError if invalid.
    Every source plugin provides ``from_stream(stream, *, settings, metrics, clock)``."""
    cls = load_plugin(SOURCE_GROUP, stream.source_name)
    source: Source = cls.from_stream(stream, settings=settings, metrics=metrics, clock=clock)
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
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.make_detector = make_detector
        self.make_faces = make_faces
        self.max_streams = max_streams
        self._streams: dict[str, StreamPipeline] = {}
        self._closing: set[str] = set()
        self._closed = False  # aclose() began: no new streams
        self._lock = asyncio.Lock()

    async def add(self, stream: StreamConfig, source: Source | None = None) -> StreamPipeline:
        """Start watching ``stream``. A prebuilt ``source`` (e.g. a WebRTC track) may be given."""
        async with self._lock:
            if self._closed:
                raise ShuttingDown("the service is shutting down: no new streams")
            if stream.id in self._streams or stream.id in self._closing:
                raise StreamExists(f"stream {stream.id!r} already exists" + (" (still closing)" if stream.id in self._closing else ""))
            if len(self._streams) >= self.max_streams:
                raise ConfigError(f"at most {self.max_streams} streams")
            if source is None:
                source = build_source(stream, self.settings, self.metrics, self.clock)
            a = self.settings.analysis
            fps = stream.analysis_fps or a.fps
            loop = asyncio.get_running_loop()
            faces: FaceStage | None = None
            pipeline: StreamPipeline | None = None
            try:
                # Model loading and MediaPipe graph setup take a moment: keep them off the loop.
                detector = await loop.run_in_executor(None, self.make_detector)
                faces = await loop.run_in_executor(None, self.make_faces, stream.id)
                analyzer = StreamAnalyzer(
                    stream.id, a, self.settings.policy, detector, faces, self.metrics, self.clock, fps=fps
                )
                pipeline = StreamPipeline(
                    stream, source, analyzer, self.bus, self.metrics, self.clock, fps, a.max_frame_age_s
                )
                await pipeline.start()
            except BaseException:
                # Nothing half-built may outlive a failed add: source thread, graph, executor.
                if pipeline is not None:
                    await pipeline.aclose()
                else:
                    await source.aclose()
                    if faces is not None:
                        faces.close()
                raise
            self._streams[stream.id] = pipeline
            logger.info("watching stream %s (%s)", stream.id, source.kind)
            return pipeline

    async def remove(self, stream_id: str) -> None:
        async with self._lock:
            pipeline = self._streams.pop(stream_id, None)
            if pipeline is None:
                raise StreamNotFound(f"no stream {stream_id!r}")
            # Until it is closed the id stays taken: a new stream with the same id would
            # otherwise have its metrics removed by the old one's teardown.
            self._closing.add(stream_id)
        try:
            await pipeline.aclose()
        finally:
            self._closing.discard(stream_id)
        logger.info("stopped stream %s", stream_id)

    def get(self, stream_id: str) -> StreamPipeline:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFound(f"no stream {stream_id!r}") from None

    def list(self) -> list[StreamPipeline]:
        return list(self._streams.values())

    async def aclose(self) -> None:
        async with self._lock:
            # Under the lock: an add still starting (loading models) finishes first and is
            # closed below, and none starts after this.
            self._closed = True
        # All at once: each may wait on a stuck camera or analysis (up to ~25 s), and streams are
        # independent, so shutdown takes the slowest stream's time, not the sum.
        await asyncio.gather(*(self._remove_at_shutdown(stream_id) for stream_id in list(self._streams)))

    async def _remove_at_shutdown(self, stream_id: str) -> None:
        try:
            await self.remove(stream_id)
        except StreamNotFound:
            pass  # removed meanwhile, e.g. with its WHIP session's sibling stream
        except Exception:
            logger.exception("error stopping stream %s", stream_id)
