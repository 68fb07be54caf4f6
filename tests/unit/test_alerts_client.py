"""`monitor alerts` (monitor.alerts.client.tail) against the real service behind a path prefix."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import Mount

from monitor.alerts.client import last_event_url, tail
from monitor.app import Runtime, runtime, uvicorn_config
from monitor.config import load_settings
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

TOKEN = "t" * 32


def status_event(i: int) -> Event:
    data = StreamStatusData(StreamState.RUNNING, f"n{i}", 0)
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, time.time(), data)


def test_last_event_url_keeps_tls_prefix_and_token() -> None:
    assert last_event_url("ws://h:8080/ws/alerts") == "http://h:8080/api/events?last=1"
    assert (
        last_event_url("wss://example.org/monitor/ws/alerts?access_token=abc&since=7")
        == "https://example.org/monitor/api/events?access_token=abc&last=1"
    )


@contextlib.asynccontextmanager
async def behind_prefix(
    tmp_path: Path, prefix: str, queries: list[bytes] | None = None, server: dict[str, object] | None = None
) -> AsyncIterator[tuple[Runtime, str]]:
    """The service (token required unless ``server`` settings say otherwise) mounted under
    ``prefix``, as a reverse proxy would serve it; the query string of every request it gets is
    added to ``queries``."""
    server = {"token": TOKEN} if server is None else server
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server=server)
    async with runtime(settings) as rt:
        app = Starlette(routes=[Mount(prefix, app=rt.app)])

        async def recording(scope, receive, send):  # type: ignore[no-untyped-def]
            if queries is not None and scope["type"] in ("http", "websocket"):
                queries.append(scope["query_string"])
            await app(scope, receive, send)

        config = uvicorn_config(recording, settings)  # type: ignore[arg-type]
        config.port, config.log_level = 0, "warning"
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "server did not start"
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield rt, f"ws://127.0.0.1:{port}{prefix}"
        finally:
            server.should_exit = True
            await task


@pytest.mark.parametrize(("prefix", "header"), [("", False), ("/monitor", False), ("/monitor", True)])
async def test_tail_without_since_keeps_prefix_and_token(tmp_path: Path, prefix: str, header: bool) -> None:
    # Before: the "from now" probe went to /api/events without the prefix or the token, and
    # tail gave up with "alert API refused" (401, 404) although the websocket accepts that URL.
    queries: list[bytes] = []
    async with behind_prefix(tmp_path, prefix, queries) as (rt, base):
        await rt.bus.publish([status_event(1), status_event(2)])  # history: not printed
        out = io.StringIO()
        url, token = (f"{base}/ws/alerts", TOKEN) if header else (f"{base}/ws/alerts?access_token={TOKEN}", None)
        task = asyncio.create_task(tail(url, token=token, out=out))
        try:
            async with asyncio.timeout(10):
                while len(rt.bus._subs) == 0:  # noqa: SLF001 - wait until the websocket subscribed
                    assert not task.done(), task.result()
                    await asyncio.sleep(0.02)
                await rt.bus.publish([status_event(3)])
                while not out.getvalue():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["3"]
    # A token given in the URL travels as a header: servers and proxies log URLs.
    assert len(queries) >= 2 and not any(b"access_token" in q for q in queries), queries


async def test_tail_backs_off_when_the_server_turns_it_away_after_the_handshake(tmp_path: Path) -> None:
    # Over server.max_ws_clients the socket opens, then closes with 1013. The backoff reset on
    # every handshake, so a refused client came back twice a second for ever.
    async with behind_prefix(tmp_path, "", server={"max_ws_clients": 1}) as (rt, base):
        url = f"{base}/ws/alerts"
        async with websockets.connect(url):  # holds the only place
            refused = asyncio.create_task(tail(url, since=0, out=io.StringIO()))
            await asyncio.sleep(4.0)  # attempts at 0, 0.5, 1.5 and 3.5 s; with no backoff, 8
            refused.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refused
        tries = rt.metrics.registry.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "too_many_clients"})
    assert tries is not None and 2 <= tries <= 5
