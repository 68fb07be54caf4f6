"""Alert sinks: durable cursor across restarts, and start-up pruning that spares their backlog."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from monitor.alerts.bus import EventBus, SinkRunner
from monitor.alerts.eventlog import EventLog
from monitor.app import prune_event_log
from monitor.config import Settings, load_settings
from monitor.metrics import Metrics
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

DAY = 86400.0
NOW = 1_700_000_000.0


def status_event(t: float) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, t, StreamStatusData(StreamState.RUNNING, "", 0))


class RecordingSink:
    """Records delivered ids; while ``down``, every send fails as an unreachable receiver would."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.got: list[int] = []

    async def start(self) -> None:
        pass

    async def send(self, event_id: int, payload: str) -> None:
        if self.down:
            raise ConnectionError("receiver down")
        self.got.append(event_id)

    async def aclose(self) -> None:
        pass


async def run_sink(path: Path, sink: RecordingSink, publish: int = 0, expect: int = 0, settle: float = 0.3) -> None:
    """One process lifetime: start the sink, publish ``publish`` events, let it work until it
    has delivered ``expect`` events (or for ``settle`` s when none are expected), stop."""
    log = EventLog(path)
    metrics = Metrics()
    bus = EventBus(log, metrics)
    runner = SinkRunner(bus, sink, "hook", metrics)
    await runner.start()
    await bus.publish([status_event(NOW + i) for i in range(publish)])
    deadline = asyncio.get_running_loop().time() + 10.0
    while len(sink.got) < expect and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(settle)  # room for anything delivered that should not have been
    await runner.aclose()
    await bus.aclose()
    log.close()


async def test_new_sink_starts_at_end_of_log(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    log = EventLog(path)
    log.append([status_event(NOW), status_event(NOW)])
    log.close()
    sink = RecordingSink()
    await run_sink(path, sink, publish=1, expect=1)
    # No history flood, but everything after start() returned (before: the cursor was read
    # in the runner's task, after this publish, so event 3 was skipped too).
    assert sink.got == [3]


async def test_event_owed_before_first_delivery_survives_restart(tmp_path: Path) -> None:
    # Before: the first cursor was saved only after a successful send, so a restart while the
    # receiver was down started "from now" again and event 1 was never delivered.
    path = tmp_path / "e.sqlite3"
    await run_sink(path, RecordingSink(down=True), publish=1)
    sink = RecordingSink()
    await run_sink(path, sink, expect=1)
    assert sink.got == [1]


def settings_with_hook(tmp_path: Path, retention_days: float = 30.0) -> Settings:
    return load_settings(
        None, data_dir=tmp_path / "data", demo=False, alerts={"retention_days": retention_days},
        sinks=[{"name": "webhook", "id": "hook"}],
    )


def test_pruning_keeps_what_a_configured_sink_has_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY + i) for i in range(4)])  # ids 1-4, past retention
    log.append([status_event(NOW)])  # id 5, recent
    log.set_cursor("hook", 2)  # delivered 1-2; its receiver has been down since
    log.set_cursor("removed", 0)  # a sink no longer configured holds nothing back
    with caplog.at_level(logging.WARNING, logger="monitor.app"):
        assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 2
    assert [r[0] for r in log.read_since(0)] == [3, 4, 5]
    assert "sink hook has 2 undelivered events older than alerts.retention_days=30" in caplog.text

    # Once the sink has caught up, its backlog goes at the next start-up, without a warning.
    log.set_cursor("hook", 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor.app"):
        assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 2
    assert [r[0] for r in log.read_since(0)] == [5]
    assert caplog.text == ""
    log.close()


def test_pruning_without_sinks_or_before_a_sink_started(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    log.append([status_event(NOW - 40 * DAY), status_event(NOW)])
    # "hook" is configured but has no cursor yet: it will start at the end of the log anyway.
    assert prune_event_log(log, settings_with_hook(tmp_path), NOW) == 1
    assert [r[0] for r in log.read_since(0)] == [2]
    log.close()
