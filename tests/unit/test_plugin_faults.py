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
from pydantic import BaseModel, field_validator

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


# --- found by a mutation audit -------------------------------------------------------------


def test_an_unknown_plugin_name_is_refused_with_the_names_that_are_known() -> None:
    from monitor.plugins import SOURCE_GROUP, load_plugin

    # "Bad input gets a clear error": a typo in `source:` must say what the choices are.
    with pytest.raises(ConfigError, match=r"unknown plugin 'rtps' .*known: .*\brtsp\b") as info:
        load_plugin(SOURCE_GROUP, "rtps")
    assert "whep" in str(info.value) and "file" in str(info.value)


class _OptionsBlowUp:
    """A plugin whose own options validator fails with something pydantic does not wrap."""

    class Config(BaseModel):
        url: str

        @field_validator("url")
        @classmethod
        def _lookup(cls, url: str) -> str:
            raise KeyError("scheme table")  # not a ValueError: pydantic lets it through


def test_a_plugins_options_validator_that_raises_anything_is_a_named_config_error() -> None:
    from monitor.plugins import plugin_config

    with pytest.raises(ConfigError, match=r"invalid options for plugin _OptionsBlowUp: .*scheme table"):
        plugin_config(_OptionsBlowUp, {"url": "x"})


class _FeaturesRaise:
    """A detector plugin whose per-frame work fails on every frame."""

    name: ClassVar[str] = "features-raise"
    window_s = 1.0

    def features(self, obs: Any) -> Any:
        raise RuntimeError("plugin bug in features")

    def score(self, window: Any) -> Any:
        raise AssertionError("never reached")


async def test_a_detector_failing_on_every_frame_is_counted_and_the_stream_keeps_going(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, demo=False)
    log = EventLog(tmp_path / "events.sqlite3")
    metrics = Metrics()
    bus = EventBus(log, metrics)
    m = StreamManager(settings, bus, metrics, SystemClock(), _FeaturesRaise, lambda stream_id: OneFace())
    try:
        await m.add(StreamConfig(id="cam", url="x://y"), source=Ticking("cam", metrics))

        def dropped() -> float:
            value = metrics.registry.get_sample_value(
                "deepfake_monitor_frames_dropped_total", {"stream": "cam", "reason": "analysis_error"}
            )
            return value or 0.0

        deadline = time.monotonic() + 20
        while dropped() < 3 or m.get("cam").status().frames_received < 3:
            assert time.monotonic() < deadline, "analysis errors were not counted"
            await asyncio.sleep(0.05)
        assert m.get("cam").status().state.value == "running"
    finally:
        await asyncio.wait_for(m.aclose(), 20)
        await bus.aclose()
        log.close()
