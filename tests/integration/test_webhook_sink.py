"""The first-party webhook sink: signed, in order, retried until delivered, resumed after restart;
an event the receiver refuses for good is skipped after retries; one delivery has a total deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from monitor_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, DeliveryError, WebhookSink, verify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.alerts.eventlog import EventLog
from monitor.config import load_settings
from monitor.errors import RejectedEvent
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.asgi import serving_app
from tests.support.service import running_service

pytestmark = pytest.mark.integration
SECRET = "s" * 24


class Receiver:
    """A real HTTP endpoint on loopback that fails the first ``fail_first`` requests and
    answers 422 to every event whose id is in ``refuse``."""

    def __init__(self, fail_first: int, refuse: frozenset[int] = frozenset()) -> None:
        self.fail_first = fail_first
        self.refuse = refuse
        self.calls = 0
        self.refused: Counter[int] = Counter()
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
        event = json.loads(body)
        if int(event["id"]) in self.refuse:
            self.refused[int(event["id"])] += 1
            return Response("data.reasons: not a list", status_code=422)
        self.accepted.append(event)
        return Response(status_code=204)


def serving(receiver: Receiver) -> contextlib.AbstractAsyncContextManager[int]:
    """Run the receiver on a free loopback port; yields the port."""
    return serving_app(receiver.app)


def status_event(i: int) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1_700_000_000.0 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))


async def test_webhook_delivers_every_event_in_order_with_retries(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)
    async with serving(receiver) as port:
        sink = {"name": "webhook", "options": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}}
        settings = load_settings(None, data_dir=tmp_path / "data", demo=False, sinks=[sink])
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
    assert [int(e["id"]) for e in receiver.accepted] == list(range(1, 9))
    assert receiver.bad_signatures == 0
    assert receiver.calls == 8 + 2
    assert failures is None or failures == 0  # the failures happened in the first run


async def test_event_refused_for_good_is_skipped_and_later_events_delivered(tmp_path: Path) -> None:
    # Before: the sink raised DeliveryError for the 422 and the runner retried event 2 for
    # ever, so no later alert reached the receiver.
    receiver = Receiver(fail_first=0, refuse=frozenset({2}))
    async with serving(receiver) as port:
        sink = {"name": "webhook", "options": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}}
        settings = load_settings(None, data_dir=tmp_path / "data", demo=False, sinks=[sink])
        async with running_service(settings) as svc:
            await svc.runtime.bus.publish([status_event(i) for i in range(4)])
            async with asyncio.timeout(15):  # two backoffs of 0.5 s and 1 s before the skip
                while len(receiver.accepted) < 3:
                    await asyncio.sleep(0.05)
            rejected = svc.runtime.metrics.registry.get_sample_value(
                "deepfake_monitor_sink_rejected_total", {"sink": "webhook"}
            )
            # The skipped event is still served by the API for whoever follows up.
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{svc.base}/api/events", params={"since": 1, "limit": 1})
            logged = [int(e["id"]) for e in response.json()]
    assert [int(e["id"]) for e in receiver.accepted] == [1, 3, 4]
    assert receiver.refused == {2: 3}
    assert rejected == 1
    assert logged == [2]


async def test_the_events_of_the_shutdown_itself_are_delivered_before_exit(tmp_path: Path) -> None:
    # Before: the sinks were stopped before the streams, so the "stopped" status (and any
    # alert closed by the shutdown) reached the receiver only after the next start.
    from monitor.sources.demo_media import write_clip

    clip = write_clip(tmp_path / "face.mp4", 4.0, fps=15, width=320, height=240)
    receiver = Receiver(fail_first=0)
    async with serving(receiver) as port:
        sink = {"name": "webhook", "options": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}}
        stream = {"id": "cam", "url": str(clip), "loop": True}
        settings = load_settings(None, data_dir=tmp_path / "data", demo=False, sinks=[sink], streams=[stream])
        async with running_service(settings):
            async with asyncio.timeout(20):
                while not any(e["data"].get("state") == "running" for e in receiver.accepted):
                    await asyncio.sleep(0.05)
        states = [e["data"]["state"] for e in receiver.accepted if e["type"].endswith("stream.status.v1")]
    assert states[-1] == "stopped"


async def test_delivery_has_a_total_deadline_against_a_trickling_receiver() -> None:
    # A raw server, to control the bytes: headers at once, then one body byte every 0.1 s for
    # 3 s. Each read is well inside httpx's 0.5 s timeout, so only a total deadline ends it.
    # Before: the send took the full 3 s and succeeded.
    trickling: list[asyncio.Task[None]] = []
    status = b""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        trickling.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # request line and headers; the body is not needed
            writer.write(status + b"\r\nContent-Length: 30\r\n\r\n")
            for _ in range(30):
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"x")
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = WebhookSink(WebhookSink.Config(url=f"http://127.0.0.1:{port}/hook", timeout_s=0.5))
    await sink.start()
    loop = asyncio.get_running_loop()
    try:
        # A refusal's reason is read (a little of it): trickled, only the deadline ends it.
        status = b"HTTP/1.1 422 Unprocessable Content"
        started = loop.time()
        with pytest.raises(DeliveryError, match="within 0.5s"):
            await sink.send(1, '{"id": "1"}')
        elapsed = loop.time() - started
        # An acceptance is taken from its status: its body, slow or broken, is never waited for
        # (before, the same event was posted again for ever).
        status = b"HTTP/1.1 200 OK"
        started = loop.time()
        await sink.send(2, '{"id": "2"}')
        assert loop.time() - started < 0.4
    finally:
        await sink.aclose()
        for task in trickling:
            task.cancel()
        server.close()
        await server.wait_closed()
    # The DeliveryError is the deadline firing (without one, the send succeeds after 3 s); it
    # did not fire before its time.
    assert elapsed >= 0.4


def test_signature_rejects_tampering_and_stale_timestamps() -> None:
    from monitor_webhook import sign

    body = b'{"id":"1"}'
    sig = sign(SECRET, "1000", body)
    assert verify(SECRET, "1000", body, sig, now=1000)
    assert not verify(SECRET, "1000", body + b" ", sig, now=1000)
    assert not verify("x" * 24, "1000", body, sig, now=1000)
    assert not verify(SECRET, "1000", body, sig, now=2000)
    assert not verify(SECRET, "soon", body, sig, now=1000)


async def test_a_receivers_answer_is_never_read_whole_nor_unpacked() -> None:
    # Before: the whole body was read, and unpacked: a 1,830-byte double-gzipped reply took the
    # service to 2 GiB. Now an acceptance's body is not read at all, and a refusal's only up to
    # 4 KiB, as sent.
    import gzip

    bomb = gzip.compress(gzip.compress(b"\0" * (64 << 20)))
    gzipped = b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb
    answers = [b"HTTP/1.1 200 OK\r\n" + gzipped, b"HTTP/1.1 422 Unprocessable Content\r\n" + gzipped,
               b"HTTP/1.1 422 Unprocessable Content\r\nContent-Length: %d\r\n\r\n" % (64 << 20)]
    sent = [0]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            reply = answers.pop(0)
            writer.write(reply)
            await writer.drain()
            if reply.endswith(b"\r\n\r\n"):  # then 64 MiB of reasons, counted as they go out
                for _ in range(64):
                    writer.write(b"no " * 349525 + b"n")
                    await writer.drain()
                    sent[0] += 1 << 20
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = WebhookSink(WebhookSink.Config(url=f"http://127.0.0.1:{port}/hook", timeout_s=5))
    await sink.start()
    try:
        await sink.send(1, '{"id": "1"}')  # accepted: the bomb is never opened
        with pytest.raises(RejectedEvent, match=r"HTTP 422 \(a compressed body, not shown\)$"):
            await sink.send(2, '{"id": "2"}')
        with pytest.raises(RejectedEvent) as refused:
            await sink.send(3, '{"id": "3"}')
        assert "HTTP 422 'no no no" in str(refused.value) and len(str(refused.value)) < 300
        await asyncio.sleep(0.5)
    finally:
        await sink.aclose()
        server.close()
        await server.wait_closed()
    assert sent[0] < 32 << 20  # the connection was closed after the first 4 KiB, not read to its end


async def test_an_internal_ca_is_trusted_by_ca_file_and_proxies_from_the_environment_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: no way to trust an internal CA but SSL_CERT_FILE for the whole process, and
    # HTTPS_PROXY/ALL_PROXY took every event and header to a proxy nobody configured here.
    import ssl

    from tests.unit.test_rtsps_tls import self_signed

    cert, key = self_signed(tmp_path, "localhost")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    got: list[bytes] = []

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            got.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(receiver, "127.0.0.1", 0, ssl=tls)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/hook"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: used, every send fails
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:9")
    try:
        public = WebhookSink(WebhookSink.Config(url=url, timeout_s=5))
        await public.start()
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|ConnectError"):
            await public.send(1, '{"id": "1"}')
        await public.aclose()
        internal = WebhookSink(WebhookSink.Config(url=url, timeout_s=5, ca_file=cert))
        await internal.start()
        await internal.send(2, '{"id": "2"}')
        await internal.aclose()
    finally:
        server.close()
        await server.wait_closed()
    assert len(got) == 1 and got[0].startswith(b"POST /hook ")
