"""`monitor alerts` (monitor.alerts.client.tail) against the real service behind a path prefix."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import Mount

from monitor.alerts.client import last_event_url, tail
from monitor.app import Runtime, runtime, uvicorn_config
from monitor.config import load_settings
from monitor.errors import MonitorError
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.service import MONITOR

TOKEN = "t" * 32


def status_event(i: int, detail: str | None = None) -> Event:
    data = StreamStatusData(StreamState.RUNNING, detail if detail is not None else f"n{i}", 0)
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


class FailingOut(io.StringIO):
    """An output whose write of the event with id ``fail_on`` fails with ``exc``, once."""

    def __init__(self, fail_on: str, exc: OSError) -> None:
        super().__init__()
        self.fail_on, self.exc = fail_on, exc

    def write(self, s: str) -> int:
        if self.exc is not None and json.loads(s)["id"] == self.fail_on:
            exc, self.exc = self.exc, None  # type: ignore[assignment]
            raise exc
        return super().write(s)


async def test_tail_stops_with_an_error_when_its_output_cannot_be_written(tmp_path: Path) -> None:
    # Before: the failed write counted as a disconnect, and the reconnect resumed after the
    # event that was never written: ids 1, 3, 4 came out, 2 was lost without a word.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        await rt.bus.publish([status_event(i) for i in range(1, 5)])
        out = FailingOut("2", OSError(errno.ENOSPC, "No space left on device"))
        # The hint names the log too: --since alone would skip a reset log's first events.
        with pytest.raises(MonitorError, match=rf"No space left on device; resume with --since 1 --epoch {rt.log.epoch}$"):
            async with asyncio.timeout(30):
                await tail(f"{base}/ws/alerts", since=0, out=out)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1"]


async def test_a_failed_output_during_a_long_replay_ends_the_tail_at_once(tmp_path: Path) -> None:
    # The graceful close waited for the server's answer, which a server in the middle of a
    # replay gave only after websockets' 10 s close timeout: `monitor alerts > /dev/full` hung.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        for _ in range(10):
            await rt.bus.publish([status_event(i) for i in range(1, 501)])
        out = FailingOut("50", OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(MonitorError, match="resume with --since 49"):
            async with asyncio.timeout(5):  # a hang bound, not a speed target: it took 10 s
                await tail(f"{base}/ws/alerts", since=0, out=out)


async def tail_until(running: Awaitable[None], out: io.StringIO, lines: int, timeout: float = 20) -> io.StringIO:
    """Run a ``tail`` until ``out`` holds ``lines`` lines (or ``timeout``), then stop it."""
    task = asyncio.ensure_future(running)
    deadline = time.monotonic() + timeout
    while out.getvalue().count("\n") < lines and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return out


async def test_tail_resumed_with_the_epoch_of_another_log_starts_that_log_from_its_start(tmp_path: Path) -> None:
    # `monitor alerts --since 3 --epoch <old>` after a reset that has grown past id 3: without
    # the epoch, ids 1-3 of the new log were taken as seen.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        await rt.bus.publish([status_event(i) for i in range(1, 6)])
        out = await tail_until(tail(f"{base}/ws/alerts", since=3, epoch="0123456789abcdef", out=(out := io.StringIO())), out, 5)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1", "2", "3", "4", "5"]


async def test_tail_takes_an_event_larger_than_a_mebibyte(tmp_path: Path) -> None:
    # websockets' default limit closed the connection on it, and each reconnect met it again.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        await rt.bus.publish([status_event(1), status_event(2, detail="x" * (2 << 20)), status_event(3)])
        out = await tail_until(tail(f"{base}/ws/alerts", since=0, out=(out := io.StringIO())), out, 3)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1", "2", "3"]


async def test_monitor_alerts_into_head_ends_cleanly(tmp_path: Path) -> None:
    # Before: EPIPE counted as a disconnect, so `monitor alerts | head -1` never ended: it
    # reconnected for ever, writing each new event into the closed pipe.
    stderr = tmp_path / "stderr"
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        await rt.bus.publish([status_event(1)])
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", 'set -o pipefail; "$0" alerts --url "$1" --since 0 2>"$2" | head -n 1',
            MONITOR, f"{base}/ws/alerts", str(stderr), stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # so a timeout can kill monitor and head too, not only bash
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(180):
                first = await proc.stdout.readline()  # head printed it and exits
                i = 2
                while proc.returncode is None:  # the next write after head is gone fails
                    await rt.bus.publish([status_event(i)])
                    i += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 0.5)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    assert json.loads(first)["id"] == "1"
    assert proc.returncode == 0, stderr.read_text()  # with pipefail: monitor's own exit status
    assert "Traceback" not in stderr.read_text() and "BrokenPipe" not in stderr.read_text()


@contextlib.asynccontextmanager
async def restarting_front(backend: str, refusals: list[bytes | None]) -> AsyncIterator[str]:
    """A TCP front for ``backend`` (``ws://host:port``), as a reverse proxy is while the service
    behind it restarts: its first connections each get the next of ``refusals`` (a raw HTTP
    response, or None to close without a word), later ones are relayed byte for byte."""
    host, port = urlsplit(backend).hostname, urlsplit(backend).port
    pending = list(refusals)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if pending:
            refusal = pending.pop(0)
            await reader.read(65536)  # the request
            if refusal is not None:
                writer.write(refusal)
                await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("since", [1, None])
async def test_tail_waits_out_a_restart_behind_a_proxy(tmp_path: Path, since: int | None) -> None:
    # Before: a 502 from the proxy (on the websocket handshake, or on the "from now" probe when
    # no --since was given) ended `monitor alerts` with "refused: HTTP 502" and no id to resume
    # from, and a connection closed before the handshake ended it with a traceback
    # (InvalidMessage). Rerunning it without --since skipped whatever happened meanwhile.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        await rt.bus.publish([status_event(1), status_event(2)])
        async with restarting_front(base, [BAD_GATEWAY, None]) as front:
            out = io.StringIO()
            task = asyncio.create_task(tail(f"{front}/ws/alerts", since=since, out=out))
            try:
                async with asyncio.timeout(20):
                    while len(rt.bus._subs) == 0:  # noqa: SLF001 - subscribed through the front
                        assert not task.done(), task.result()
                        await asyncio.sleep(0.02)
                    await rt.bus.publish([status_event(3)])
                    while out.getvalue().count("\n") < (2 if since == 1 else 1):
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    want = ["2", "3"] if since == 1 else ["3"]
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == want


async def test_tail_gives_up_on_a_lasting_refusal_and_names_the_id_to_resume_from(tmp_path: Path) -> None:
    async with behind_prefix(tmp_path, "") as (rt, base):  # a token is required, and we have none
        with pytest.raises(MonitorError, match=r"websocket refused: HTTP 403; resume with --since 7$"):
            async with asyncio.timeout(20):
                await tail(f"{base}/ws/alerts", since=7, out=io.StringIO())
        with pytest.raises(MonitorError, match=r"alert API refused: HTTP 401$"):  # no id known yet
            async with asyncio.timeout(20):
                await tail(f"{base}/ws/alerts", out=io.StringIO())


async def test_tail_stops_on_a_request_the_server_refuses_as_wrong(tmp_path: Path) -> None:
    # The server accepts, then closes with 1008 and the reason. Before: reconnected for ever.
    async with behind_prefix(tmp_path, "", server={}) as (rt, base):
        with pytest.raises(MonitorError, match=r"refused the request: since must be an event id from 0 to"):
            async with asyncio.timeout(20):
                await tail(f"{base}/ws/alerts", since=-1, out=io.StringIO())


def test_timeouts_and_rate_limits_are_retried_refusals_are_not() -> None:
    # A 429 or 503 from a proxy in front of the service is a reason to wait, not to give up.
    from monitor.alerts.client import transient_status

    assert all(transient_status(s) for s in (408, 425, 429, 500, 502, 503, 504))
    assert not any(transient_status(s) for s in (400, 401, 403, 404))


def test_monitor_alerts_reads_its_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # MONITOR_TOKEN, as the service reads it: a token on the command line shows in `ps`.
    from typer.testing import CliRunner

    import monitor.alerts.client as client
    from monitor.cli import app

    got: dict[str, object] = {}

    async def fake_tail(url: str, **kwargs: object) -> None:
        got.update(kwargs)

    monkeypatch.setattr(client, "tail", fake_tail)
    result = CliRunner().invoke(app, ["alerts"], env={"MONITOR_TOKEN": "t0ken"})
    assert result.exit_code == 0, result.output
    assert got["token"] == "t0ken"


@contextlib.asynccontextmanager
async def scripted_alert_socket(ending: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A websocket that sends events 1 and 2, then ends the connection: ``close`` (a normal
    close, 1001 going away, as a proxy may), ``restart`` (1012, what the service sends when it
    shuts down) or ``abort`` (the connection just drops). Yields its URL and the query strings
    of the connections it got."""
    queries: list[str] = []

    async def handler(ws: websockets.ServerConnection) -> None:
        queries.append(urlsplit(ws.request.path).query)
        for i in (1, 2):
            await ws.send(json.dumps({"id": str(i), "logepoch": "e1", "type": "x"}))
        if ending in ("close", "restart"):
            await ws.close(1001 if ending == "close" else 1012, "going away" if ending == "close" else "service restart")
        else:
            await asyncio.sleep(0.1)  # let the events out first
            ws.transport.abort()

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=["cloudevents.json"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/alerts", queries


async def test_no_follow_ends_without_an_error_when_the_connection_is_closed_normally(caplog: pytest.LogCaptureFixture) -> None:
    async with scripted_alert_socket("close") as (url, queries):
        out = io.StringIO()
        async with asyncio.timeout(10):
            await tail(url, since=0, out=out, follow=False)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1", "2"] and len(queries) == 1
    # Where to resume is said all the same, on the log (stderr), not in the events' output.
    assert "alert websocket closed by the server; resume with --since 2 --epoch e1" in caplog.text


@pytest.mark.parametrize("ending", ["abort", "restart"])
async def test_no_follow_names_where_to_resume_when_the_connection_drops_or_the_service_stops(ending: str) -> None:
    async with scripted_alert_socket(ending) as (url, queries):
        out = io.StringIO()
        with pytest.raises(MonitorError, match=r"^alert websocket closed: .*; resume with --since 2 --epoch e1$"):
            async with asyncio.timeout(10):
                await tail(url, since=0, out=out, follow=False)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1", "2"] and len(queries) == 1


async def test_follow_reconnects_after_a_normal_close_and_resumes_after_the_last_event() -> None:
    async with scripted_alert_socket("close") as (url, queries):
        task = asyncio.create_task(tail(url, since=0, out=io.StringIO()))
        deadline = time.monotonic() + 10
        while len(queries) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(queries) >= 2 and "since=2" in queries[1] and "epoch=e1" in queries[1], queries
