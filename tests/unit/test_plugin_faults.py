"""A plugin's bug (source, face stage, detector, sink) costs its own work, never the service's
guarantees: a removed stream stops, open alerts close, a face stays judgeable, start-up errors
are named."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from monitor.alerts.bus import EventBus
from monitor.alerts.eventlog import EventLog
from monitor.clock import SystemClock
from monitor.config import StreamConfig, load_settings
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.plugins import TrackWindow
from monitor.types import EventType, Score
from tests.unit.test_stream_teardown import Fake, OneFace, Ticking

DEADLINE_S = 20.0  # generous for a busy machine


@pytest.fixture
def parts(tmp_path: Path) -> Any:
    settings = load_settings(None, data_dir=tmp_path, demo=False, policy={"min_alert_s": 0.3})
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    yield settings, log, EventBus(log, metrics), metrics
    log.close()


def event_types(log: EventLog) -> list[str]:
    return [payload for _, payload in log.read_since(0, 10_000)]


async def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


class CloseRaises(Ticking):
    async def aclose(self) -> None:
        await super().aclose()
        raise RuntimeError("plugin bug in aclose")


class FaceStageCloseRaises(OneFace):
    def close(self) -> None:
        raise RuntimeError("Graph has errors")


@pytest.mark.parametrize("fault", ["source", "faces"])
async def test_a_failing_close_still_stops_the_stream_and_closes_its_alert(parts: Any, fault: str) -> None:
    settings, log, bus, metrics = parts
    faces = FaceStageCloseRaises if fault == "faces" else OneFace
    m = StreamManager(settings, bus, metrics, SystemClock(), Fake, lambda stream_id: faces())
    source = CloseRaises("cam", metrics) if fault == "source" else Ticking("cam", metrics)
    await m.add(StreamConfig(id="cam", url="x://y"), source=source)
    await wait_for(lambda: any(EventType.ALERT_OPENED.value in p for p in event_types(log)), "no alert opened")
    await asyncio.wait_for(m.remove("cam"), DEADLINE_S)
    # Before: the alert stayed open in the log (faces), or the "removed" stream kept analysing
    # with its series and streams_active left behind (source).
    assert any(EventType.ALERT_CLOSED.value in p for p in event_types(log)), "the open alert was never closed"
    value = metrics.registry.get_sample_value
    assert value("deepfake_monitor_stream_up", {"stream": "cam"}) is None
    assert value("deepfake_monitor_streams_active", {"source": "ticking"}) == 0
    await asyncio.sleep(0.3)
    assert value("deepfake_monitor_frames_analysed_total", {"stream": "cam"}) is None  # nothing analysed since
    await asyncio.wait_for(m.aclose(), DEADLINE_S)


class Scripted(Fake):
    """Returns NaN once, early, then scores every face as manipulated."""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, window: TrackWindow) -> Score:
        self.calls += 1
        return Score(math.nan if self.calls == 2 else 0.95)


async def test_a_nan_from_a_detector_plugin_is_no_score_not_a_blind_track(parts: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings, log, bus, metrics = parts
    m = StreamManager(settings, bus, metrics, SystemClock(), Scripted, lambda stream_id: OneFace())
    await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    # Before: the smoothed score became NaN for good, below every threshold: never an alert.
    await wait_for(lambda: any(EventType.ALERT_OPENED.value in p for p in event_types(log)), "the face never alerted after one NaN")
    await asyncio.wait_for(m.aclose(), DEADLINE_S)
    assert [r for r in caplog.records if "invalid_score" in r.getMessage()], "the plugin's bug was not logged"


def test_a_plugin_without_options_loads() -> None:
    from monitor.plugins import plugin_config

    class NoConfig:
        pass

    assert plugin_config(NoConfig, {}).model_dump() == {}  # was a PydanticUserError
    with pytest.raises(ConfigError, match="takes no options"):
        plugin_config(NoConfig, {"retries": 3})


class SinkThatCannotStart:
    name: ClassVar[str] = "unreachable"
    closed: ClassVar[list[bool]] = []

    def __init__(self, config: Any) -> None:
        pass

    async def start(self) -> None:
        raise ConnectionError("SIEM not reachable yet")

    async def send(self, event_id: int, payload: str) -> None:
        pass

    async def aclose(self) -> None:
        SinkThatCannotStart.closed.append(True)


async def test_a_sink_that_cannot_start_is_a_named_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.app
    from monitor.app import runtime

    real = monitor.app.load_plugin
    monkeypatch.setattr(monitor.app, "load_plugin", lambda group, name: SinkThatCannotStart if name == "unreachable" else real(group, name))
    settings = load_settings(None, data_dir=tmp_path, demo=False, sinks=[{"name": "unreachable"}])
    # Before: a ConnectionError traceback (exit 1), and the sink was never closed.
    with pytest.raises(ConfigError, match=r"sink 'unreachable' .*ConnectionError: SIEM not reachable yet"):
        async with runtime(settings):
            pass
    assert SinkThatCannotStart.closed == [True]


def test_a_source_plugin_that_raises_while_built_is_a_named_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.pipeline.manager
    from monitor.clock import SystemClock as Clock
    from monitor.pipeline.manager import build_source

    class Broken:
        @classmethod
        def from_stream(cls, stream: Any, **kwargs: Any) -> Any:
            raise KeyError("camera model table")

    monkeypatch.setattr(monitor.pipeline.manager, "load_plugin", lambda group, name: Broken)
    settings = load_settings(None, data_dir=tmp_path, demo=False)
    with pytest.raises(ConfigError, match=r"source 'rtsp' cannot be built: KeyError"):
        build_source(StreamConfig(id="cam", url="rtsp://10.0.0.5/live"), settings, Metrics(), Clock())


class NumpyProbability(Fake):
    """A plugin returning numpy's float32, in range."""

    name: ClassVar[str] = "numpy-probability"

    def score(self, window: TrackWindow) -> Score:
        import numpy as np

        return Score(np.float32(0.95))  # type: ignore[arg-type]


async def test_a_probability_as_a_numpy_float_is_a_probability(parts: Any) -> None:
    settings, log, bus, metrics = parts
    m = StreamManager(settings, bus, metrics, SystemClock(), NumpyProbability, lambda stream_id: OneFace())
    await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))
    await wait_for(lambda: any(EventType.ALERT_OPENED.value in p for p in event_types(log)), "a valid float32 was refused")
    await asyncio.wait_for(m.aclose(), DEADLINE_S)
