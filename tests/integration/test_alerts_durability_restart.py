"""`monitor serve` after a crash that left an alert open: the restart closes it, through the
webhook sink too, and a further restart adds nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.alerts.eventlog import EventLog
from monitor.types import AlertData, Event, EventType, Severity, Signal
from tests.support.asgi import serving_app
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.integration
CLOSED = EventType.ALERT_CLOSED.value


def opened(alert_id: str) -> Event:
    data = AlertData(alert_id, 3, 0.93, ("score_above_threshold",), (Signal("blending", 0.9, 1.0),),
                     41.2, None, time.time())
    return Event(EventType.ALERT_OPENED, "cam", Severity.CRITICAL, time.time(), data)


async def test_an_alert_open_at_a_crash_is_closed_by_the_next_start_once(tmp_path: Path) -> None:
    received: list[dict] = []

    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return Response(status_code=204)

    async with serving_app(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), start_timeout=120) as port:
        config = {"demo": False, "data_dir": str(tmp_path / "data"),
                  "sinks": [{"name": "webhook", "options": {"url": f"http://127.0.0.1:{port}/hook"}}]}
        svc = ServiceProcess(tmp_path, config)
        await asyncio.to_thread(svc.start, 0, 180)  # the sink's cursor is set at the log's end
        assert await asyncio.to_thread(svc.stop, signal.SIGKILL) != 0
        # What the SIGKILL of a service with an alert open leaves behind: the open, committed.
        log = EventLog(tmp_path / "data" / "events.sqlite3")
        log.append([opened("crashed")])
        log.close()

        await asyncio.to_thread(svc.start, 0, 180)
        try:
            async with asyncio.timeout(120):  # delivered by the sink, not only logged
                while not any(e["type"] == CLOSED for e in received):
                    await asyncio.sleep(0.1)
            events = (await asyncio.to_thread(svc.get, "/api/events?since=0")).json()
        finally:
            assert await asyncio.to_thread(svc.stop) == 0
        closes = [e for e in events if e["type"] == CLOSED]
        assert len(closes) == 1 and closes[0]["data"]["alert_id"] == "crashed"
        assert closes[0]["data"]["reasons"] == ["score_above_threshold", "service_restarted"]
        assert closes[0]["data"]["end_t"] == 41.2

        await asyncio.to_thread(svc.start, 0, 180)  # and again: already closed, nothing added
        try:
            again = (await asyncio.to_thread(svc.get, "/api/events?since=0")).json()
        finally:
            await asyncio.to_thread(svc.stop)
        assert [e["id"] for e in again] == [e["id"] for e in events]
        assert {e["id"] for e in received if e["type"] == CLOSED} == {closes[0]["id"]}
