"""The monitor pulls a stream from a real WHEP endpoint on loopback (an aiortc server) and
reconnects with backoff when the server goes away and comes back."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.config import StreamConfig, load_settings
from monitor.metrics import Metrics
from monitor.pipeline.manager import build_source
from monitor.sources.webrtc import WhepSource, set_local_description
from monitor.types import StreamState
from tests.integration.test_whip_publish import FaceTrack
from tests.support.asgi import serving_app
from tests.support.service import running_service

pytestmark = pytest.mark.integration

TOKEN = "p" * 32


class WhepServer:
    """A minimal WHEP endpoint (RFC 9725 style, for egress): POST an offer, get 201 + answer."""

    def __init__(self, token: str | None = TOKEN) -> None:
        self.token = token  # None: no token needed
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.requests = 0
        self.deleted = 0
        self.authorization: list[str | None] = []  # the header of every request
        self.redirect_to: str | None = None  # where POST /lb/whep sends the client (307)
        self.extra_candidates: list[str] = []  # a=candidate lines added to each answer

    def _authorized(self, request: Request) -> bool:
        self.authorization.append(request.headers.get("authorization"))
        return self.token is None or request.headers.get("authorization") == f"Bearer {self.token}"

    async def redirect(self, request: Request) -> Response:
        self._authorized(request)
        assert self.redirect_to is not None
        return Response(status_code=307, headers={"Location": self.redirect_to})

    async def post(self, request: Request) -> Response:
        self.requests += 1
        if not self._authorized(request):
            return Response("unauthorized", status_code=401)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=(await request.body()).decode(), type="offer"))
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.direction = "sendonly"
                transceiver.sender.replaceTrack(FaceTrack((160, 120)))
        await set_local_description(pc, await pc.createAnswer(), ("127.0.0.1",))
        sid = secrets.token_hex(4)
        self.pcs[sid] = pc
        answer = pc.localDescription.sdp
        if self.extra_candidates:
            last = answer.rindex("a=candidate:")
            cut = answer.index("\r\n", last) + 2
            answer = answer[:cut] + "".join(line + "\r\n" for line in self.extra_candidates) + answer[cut:]
        return Response(
            answer, status_code=201, media_type="application/sdp",
            headers={"Location": f"/whep/cam/{sid}"},
        )

    async def delete(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response("unauthorized", status_code=401)
        pc = self.pcs.pop(request.path_params["sid"], None)
        if pc is None:
            return Response(status_code=404)
        self.deleted += 1
        await pc.close()
        return Response(status_code=200)

    async def drop_all(self) -> None:
        for pc in list(self.pcs.values()):
            await pc.close()
        self.pcs.clear()

    @asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[int]:
        app = Starlette(routes=[
            Route("/whep/cam", self.post, methods=["POST"]),
            Route("/lb/whep", self.redirect, methods=["POST"]),
            Route("/whep/cam/{sid}", self.delete, methods=["DELETE"]),
        ])
        async with serving_app(app, port) as bound:
            try:
                yield bound
            finally:
                await self.drop_all()


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_whep_pull_receives_video_and_reconnects(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    whep = WhepServer()
    async with running_service(settings) as svc, whep.serving() as port:
        rt = svc.runtime
        stream = StreamConfig(
            id="pulled", url=f"http://127.0.0.1:{port}/whep/cam", source="whep",
            options={"token": TOKEN, "read_timeout_s": 1.0, "open_timeout_s": 5.0},
        )
        pipeline = await rt.manager.add(stream, source=build_source(stream, settings, rt.metrics, rt.manager.clock))
        await until(lambda: pipeline.status().frames_received > 5, 15, "WHEP frames")
        status = pipeline.status()
        assert status.source == "whep" and status.state == StreamState.RUNNING and status.width == 160
        assert status.frames_analysed > 0

        # The media server drops the session: the source notices and reconnects with backoff.
        before = status.frames_received
        await whep.drop_all()
        await until(lambda: pipeline.status().reconnects >= 1, 15, "a reconnect")
        await until(lambda: pipeline.status().frames_received > before + 5, 15, "frames after reconnect")
        assert pipeline.status().state == StreamState.RUNNING
        assert whep.requests >= 2
        reg = rt.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_webrtc_connection_state_changes_total", {"role": "whep", "state": "connected"}) >= 2

        # Removing the stream ends the WHEP session on the server (DELETE on its resource).
        await rt.manager.remove("pulled")
        assert whep.deleted >= 1 and not whep.pcs


async def test_whep_source_retries_while_the_endpoint_is_down(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with running_service(settings) as svc:
        rt = svc.runtime
        whep = WhepServer()
        # Bound but not listening: connections are refused, and no other process can take the
        # port while the source retries (it is released just before the server binds it).
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        stream = StreamConfig(id="later", url=f"http://127.0.0.1:{port}/whep/cam", source="whep", options={"token": TOKEN})
        pipeline = await rt.manager.add(stream, source=build_source(stream, settings, rt.metrics, rt.manager.clock))
        await until(lambda: pipeline.status().state == StreamState.RECONNECTING, 10, "reconnecting state")
        holder.close()
        async with whep.serving(port):
            await until(lambda: pipeline.status().frames_received > 3, 20, "frames once the endpoint is up")
        await rt.manager.remove("later")


@pytest.mark.parametrize("target", ["same_origin", "listed_origin"])
async def test_whep_pull_follows_a_307_to_a_configured_origin_with_the_token(metrics: Metrics, target: str) -> None:
    balancer = WhepServer()
    media = WhepServer()
    async with balancer.serving() as port, media.serving() as media_port:
        media_origin = f"http://127.0.0.1:{media_port}"
        balancer.redirect_to = "/whep/cam" if target == "same_origin" else f"{media_origin}/whep/cam"
        serving = balancer if target == "same_origin" else media
        source = WhepSource(
            "lb", f"http://127.0.0.1:{port}/lb/whep", metrics=metrics,
            config=WhepSource.Config(token=TOKEN, open_timeout_s=5.0, redirect_origins=(media_origin,)),
        )
        await source.start()
        try:
            await asyncio.wait_for(source.recv(), 15)
        finally:
            await source.aclose()
        assert serving.requests == 1 and source.status.reconnects == 0
        # The session's Location is resolved against the URL that answered: it is deleted there.
        assert serving.deleted == 1 and not serving.pcs
        bearer = f"Bearer {TOKEN}"
        if target == "listed_origin":
            assert balancer.authorization == [bearer] and media.authorization == [bearer, bearer]  # POST, DELETE
        else:
            assert balancer.authorization == [bearer, bearer, bearer]  # redirect, POST, DELETE


async def test_whep_pull_refuses_a_redirect_to_an_origin_it_was_not_given(metrics: Metrics) -> None:
    # A media server must not send the service to hosts nobody configured (an internal address,
    # say), with or without the token.
    balancer = WhepServer()
    other = WhepServer(token=None)
    async with balancer.serving() as port, other.serving() as other_port:
        balancer.redirect_to = f"http://127.0.0.1:{other_port}/whep/cam"
        source = WhepSource(
            "lb", f"http://127.0.0.1:{port}/lb/whep", metrics=metrics,
            config=WhepSource.Config(token=TOKEN, open_timeout_s=5.0),
        )
        await source.start()
        try:
            await until(lambda: source.status.state == StreamState.RECONNECTING, 10, "the refusal")
            error = source.status.last_error or ""
            assert f"redirected to http://127.0.0.1:{other_port}" in error and "redirect_origins" in error, error
        finally:
            await source.aclose()
        assert other.authorization == [] and other.requests == 0
        assert balancer.authorization and set(balancer.authorization) == {f"Bearer {TOKEN}"}


def test_whep_redirect_origins_must_be_origins() -> None:
    assert WhepSource.Config(redirect_origins=("https://media-2.example:8443",)).redirect_origins
    for bad in ("media-2.example", "ftp://media-2.example", "https://media-2.example/whep", "https://"):
        with pytest.raises(ValueError, match="origin|URL"):
            WhepSource.Config(redirect_origins=(bad,))


async def test_stopping_a_whep_source_does_not_wait_for_a_hung_endpoint(metrics: Metrics) -> None:
    accepted = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # hold the connection open without answering

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        source = WhepSource(
            "hung", f"http://127.0.0.1:{port}/whep", metrics=metrics, config=WhepSource.Config(open_timeout_s=30.0)
        )
        await source.start()
        await asyncio.wait_for(accepted.wait(), 10)
        started = time.monotonic()
        await source.aclose()
        assert time.monotonic() - started < 5.0  # not open_timeout_s, not aclose's 10 s join
        assert source._thread is not None and not source._thread.is_alive()


async def test_whep_answer_mdns_candidates_are_not_resolved(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice would resolve them by multicast DNS (binding UDP 5353, querying 224.0.0.251),
    # 1 s each, before the connection could start.
    lookups: list[object] = []

    async def no_mdns(subscriber: object) -> object:
        lookups.append(subscriber)
        raise AssertionError("mDNS used")

    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", no_mdns)
    server = WhepServer()
    server.extra_candidates = [
        f"a=candidate:{9 + i} 1 udp 2122260223 {uuid.uuid4()}.local {41000 + i} typ host" for i in range(5)
    ]
    async with server.serving() as port:
        source = WhepSource(
            "mdns", f"http://127.0.0.1:{port}/whep/cam", metrics=metrics,
            config=WhepSource.Config(token=TOKEN, open_timeout_s=5.0),
        )
        await source.start()
        try:
            await asyncio.wait_for(source.recv(), 15)
        finally:
            await source.aclose()
    assert source.status.reconnects == 0 and lookups == []


async def test_what_a_failing_endpoint_answers_is_not_echoed(tmp_path: Path) -> None:
    # A WHEP URL (added through the API, say) pointed at an internal service: the first 200
    # characters of its answer reached last_error, the event log, websocket clients and sinks.
    app = Starlette(routes=[Route("/internal", lambda request: Response("aws_secret_access_key=INTERNALSECRET", status_code=500), methods=["POST"])])
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    async with serving_app(app) as port, running_service(settings) as svc:
        rt = svc.runtime
        stream = StreamConfig(id="probe", url=f"http://127.0.0.1:{port}/internal", source="whep")
        pipeline = await rt.manager.add(stream, source=build_source(stream, settings, rt.metrics, rt.manager.clock))
        await until(lambda: pipeline.status().last_error is not None, 10, "the endpoint's refusal")
        assert "500" in (pipeline.status().last_error or "")
        await rt.manager.remove("probe")
        events = [payload for _, payload in rt.log.read_since(0, 1000)]
    assert all("INTERNALSECRET" not in text for text in [*events, pipeline.status().last_error or ""])


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 500 aws_secret_access_key=INTERNALSECRET\r\nContent-Length: 0\r\n\r\n",  # its own reason phrase
        b"SSH-2.0-OpenSSH_9.6 INTERNALSECRET\r\n",  # not HTTP at all: h11 quoted the line
        b"HTTP/1.1 500 Oops\r\nINTERNALSECRET header without colon\r\n\r\n",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://h:INTERNALSECRET/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://INTERNALSECRET:pw@other.example/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nLocation: http://h:INTERNALSECRET/\r\nContent-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0",
        b"HTTP/1.1 201 Created\r\nLocation: /s/1\r\nContent-Type: text/html\r\nContent-Length: 31\r\n\r\n<html>INTERNALSECRET</html>    ",
        b"HTTP/1.1 201 Created\r\nLocation: /s/1\r\nContent-Length: 3\r\n\r\nv=0",  # no Content-Type: read as SDP, as before
    ],
)
async def test_what_an_endpoint_sends_never_reaches_the_stream_status(answer: bytes, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    # Before: the status line's own reason phrase, h11's quote of a line it could not parse, and
    # httpx's quote of an invalid Location (with a traceback at ERROR on every retry) reached
    # last_error, events and logs; an HTML page answering 201 read as mismatched media sections.
    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    details: list[str] = []
    source = WhepSource("leak", f"http://127.0.0.1:{port}/whep", metrics=metrics, config=WhepSource.Config(open_timeout_s=3.0))
    source.on_state(lambda state, detail: details.append(detail))
    await source.start()
    try:
        await until(lambda: source.status.last_error is not None, 10, "the endpoint's failure")
    finally:
        await source.aclose()
        server.close()
        await server.wait_closed()
    seen = [source.status.last_error or "", *details, caplog.text]
    assert all("INTERNALSECRET" not in text for text in seen), seen
    assert "failed unexpectedly" not in caplog.text
    if b"text/html" in answer:
        assert source.status.last_error == "WHEP endpoint answered 201 with a body that is not application/sdp"
    if answer.endswith(b"v=0"):
        assert (source.status.last_error or "").startswith("WHEP answer refused"), source.status.last_error


def test_an_escaped_quote_of_the_answer_is_withheld() -> None:
    # repr() escapes a control character, so the quoted word matched no word of the answer and
    # the filter let it through ("'active\\x01aws_secret=...' (KeyError)").
    from monitor.sources.webrtc import message_without_quotes_of

    text = "v=0\r\na=setup:active\x01aws_secret=INTERNALSECRET\r\n"
    assert message_without_quotes_of(KeyError("active\x01aws_secret=INTERNALSECRET"), text) == "KeyError"
    fixed = ValueError("Media sections in answer do not match offer")
    assert message_without_quotes_of(fixed, text) == "Media sections in answer do not match offer (ValueError)"


async def test_whep_answer_candidates_at_unroutable_addresses_are_never_contacted(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # WHIP offers were filtered but WHEP answers were not: the service sent connectivity checks
    # to 169.254.169.254 (cloud metadata) and multicast groups for whatever the SFU answered.
    added: list[str] = []
    real_add = aioice.ice.Connection.add_remote_candidate

    async def recording(self: aioice.ice.Connection, candidate: aioice.Candidate | None) -> None:
        if candidate is not None:
            added.append(candidate.host)
        await real_add(self, candidate)

    monkeypatch.setattr(aioice.ice.Connection, "add_remote_candidate", recording)
    server = WhepServer()
    bad = ("169.254.169.254", "224.0.0.1", "0.0.0.0")
    server.extra_candidates = [f"a=candidate:{20 + i} 1 udp 2122260223 {host} {42000 + i} typ host" for i, host in enumerate(bad)]
    async with server.serving() as port:
        source = WhepSource("meta", f"http://127.0.0.1:{port}/whep/cam", metrics=metrics, config=WhepSource.Config(token=TOKEN, open_timeout_s=5.0))
        await source.start()
        try:
            await asyncio.wait_for(source.recv(), 15)
        finally:
            await source.aclose()
    assert added and not set(added) & set(bad), added
