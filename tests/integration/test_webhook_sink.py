"""The first-party webhook sink: signed, in order, retried until delivered, resumed after restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import uvicorn
from monitor_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.alerts.eventlog import EventLog
from monitor.config import load_settings
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.service import running_service

pytestmark = pytest.mark.integration
SECRET = "s" * 24


class Receiver:
    """A real HTTP endpoint on loopback that fails the first ``fail_first`` requests."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.calls += 1
        body = await request.body()
        if not verify(SECRET, request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER]):
            self.bad_signatures += 1
            return Response(status_code=401)
        if self.calls <= self.fail_first:
            return Response(status_code=503)
        assert request.headers["content-type"] == "application/cloudevents+json"
        self.accepted.append(json.loads(body))
        return Response(status_code=204)


def status_event(i: int) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1_700_000_000.0 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))


async def test_webhook_delivers_every_event_in_order_with_retries(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)
    server = uvicorn.Server(uvicorn.Config(receiver.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    sink = {"name": "webhook", "options": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}}
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, sinks=[sink])
    try:
        async with running_service(settings) as svc:
            await svc.runtime.bus.publish([status_event(i) for i in range(5)])
            async with asyncio.timeout(20):
                while len(receiver.accepted) < 5:
                    await asyncio.sleep(0.05)
        # Events logged while the service (and its sink) was down are delivered after restart,
        # from the sink's cursor in the log.
        log = EventLog(settings.data_dir / "events.sqlite3", settings.instance)
        log.append([status_event(i) for i in range(5, 8)])
        log.close()
        async with running_service(settings) as svc:
            async with asyncio.timeout(20):
                while len(receiver.accepted) < 8:
                    await asyncio.sleep(0.05)
            failures = svc.runtime.metrics.registry.get_sample_value("deepfake_monitor_sink_failures_total", {"sink": "webhook"})
    finally:
        server.should_exit = True
        await task
    assert [int(e["id"]) for e in receiver.accepted] == list(range(1, 9))
    assert receiver.bad_signatures == 0
    assert receiver.calls == 8 + 2
    assert failures is None or failures == 0  # the failures happened in the first run


def test_signature_rejects_tampering_and_stale_timestamps() -> None:
    from monitor_webhook import sign

    body = b'{"id":"1"}'
    sig = sign(SECRET, "1000", body)
    assert verify(SECRET, "1000", body, sig, now=1000)
    assert not verify(SECRET, "1000", body + b" ", sig, now=1000)
    assert not verify("x" * 24, "1000", body, sig, now=1000)
    assert not verify(SECRET, "1000", body, sig, now=2000)
    assert not verify(SECRET, "soon", body, sig, now=1000)
