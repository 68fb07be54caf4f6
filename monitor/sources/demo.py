"""The built-in demo stream: a public-domain portrait moved, scaled and turned over time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from monitor.clock import Clock
from monitor.config import Settings, StreamConfig, redact_url, too_slow_to_track
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.base import ThreadedSource
from monitor.types import Frame, readonly


class DemoSource(ThreadedSource):
    """Renders frames live at ``fps``, so a new user sees the whole pipeline with no camera."""

    kind: ClassVar[str] = "demo"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        width: int = Field(640, ge=64, le=3840, description="Frame width in pixels.")
        height: int = Field(480, ge=64, le=2160, description="Frame height in pixels.")
        fps: float = Field(15.0, gt=0, le=60, description="Frames rendered per second.")
        faces: int = Field(1, ge=1, le=2, description="Copies of the face in the frame.")

    def __init__(
        self, stream_id: str, url: str, *, metrics: Metrics, clock: Clock | None = None, config: Config | None = None
    ) -> None:
        super().__init__(stream_id, metrics=metrics, clock=clock)
        self.validate_url(url)
        self.config = config or self.Config()
        self.reconnect = False

    @classmethod
    def from_stream(
        cls, stream: StreamConfig, *, settings: Settings, metrics: Metrics, clock: Clock | None = None
    ) -> DemoSource:
        config = plugin_config(cls, stream.options)
        assert isinstance(config, cls.Config)
        # As for analysis_fps: frames rendered this rarely end every face's track before the next.
        slow = too_slow_to_track(f"streams[{stream.id}].options.fps", config.fps, settings.analysis)
        if slow:
            raise ConfigError(slow)
        return cls(stream.id, stream.url, metrics=metrics, clock=clock, config=config)

    @classmethod
    def validate_url(cls, url: str) -> None:
        if url != "demo://astronaut":
            raise ConfigError(f"unknown demo stream {redact_url(url)!r}; the built-in one is demo://astronaut")

    def _open(self) -> None:
        # Import here so the module stays cheap for users who never run the demo.
        from monitor.sources import demo_media

        self._render = demo_media.render_frame

    def _read(self) -> Iterator[Frame]:
        c = self.config
        started = self.clock.monotonic()
        n = 0
        while not self._stop.is_set():
            t = n / c.fps
            wait = started + t - self.clock.monotonic()
            if wait > 0 and not self._sleep(wait):
                return
            image = readonly(self._render(t, c.width, c.height, faces=c.faces))
            yield Frame(self.stream_id, self.next_seq(), t, self.clock.monotonic(), c.width, c.height, image)
            n += 1
