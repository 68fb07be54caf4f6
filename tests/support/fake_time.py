"""A FileSource on a FakeClock: its realtime pacing is recorded instead of slept."""

from __future__ import annotations

from typing import Any

from monitor.clock import FakeClock
from monitor.sources.av_source import FileSource
from monitor.types import Frame


class FakeTimeFile(FileSource):
    """Each pacing sleep is recorded in ``slept`` and passes at once in fake time; every frame
    the source delivers is recorded in ``delivered``, whether or not a reader keeps up (the
    latest-frame slot replaces frames a slow reader has not taken). With no real waits a looped
    file plays at full speed: ``stop_after`` frames stop it."""

    def __init__(self, *args: Any, clock: FakeClock, stop_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, clock=clock, **kwargs)
        self.fake_clock = clock
        self.stop_after = stop_after
        self.slept: list[float] = []
        self.delivered: list[Frame] = []

    def _sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.fake_clock.advance(seconds)
        return not self._stop.is_set()

    def _deliver(self, frame: Frame) -> None:
        self.delivered.append(frame)
        super()._deliver(frame)
        if self.stop_after is not None and len(self.delivered) >= self.stop_after:
            self._stop.set()
