"""What a WHEP endpoint answers is bounded: the body it sends (an answer, an error, a DELETE's
reply) is read no further than webrtc.max_sdp_bytes, and its answer may list at most
MAX_REMOTE_CANDIDATES ICE candidates, as a WHIP offer."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from monitor.config import WebRTCConfig
from monitor.errors import ConfigError, SourceError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.webrtc import MAX_REMOTE_CANDIDATES, WhepSource, count_candidates

LIMIT = 32 * 1024  # webrtc.max_sdp_bytes' default
BIG = 8 * 1024 * 1024  # what an endpoint streams: far past the limit, small enough for a test
CHUNK = b"a=x:" + b"y" * (64 * 1024 - 6) + b"\r\n"

ANSWER_HEAD = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "c=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:active\r\n"
)


def answer_with(candidates: int) -> str:
    # Loopback: were they ever used, the checks would go nowhere but this machine.
    lines = [f"a=candidate:{i} 1 udp 2122260223 127.0.0.1 {40000 + i} typ host\r\n" for i in range(candidates)]
    return ANSWER_HEAD + "".join(lines) + "a=end-of-candidates\r\n"


@dataclass
class FakeEndpoint:
    """A raw HTTP/1.1 server on 127.0.0.1: ``answer`` writes the reply to a POST; a DELETE gets
    ``delete`` (by default 200, no body). Records each request line."""

    answer: Callable[[asyncio.StreamWriter], Awaitable[None]]
    delete: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None
    requests: list[str] = field(default_factory=list)
    sent: int = 0  # body bytes written (to kernel buffers, at least) by the streaming replies
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            self.requests.append(lines[0])
            length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
            await reader.readexactly(length)
            if lines[0].startswith("DELETE"):
                await (self.delete or ok)(writer)
            else:
                await self.answer(writer)
            await reader.read()  # until the client hangs up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter, head: bytes) -> None:
        """``head``, then BIG bytes of chunked body, then the connection held open: an
        endless answer, for a client that reads it all."""
        writer.write(head)
        while self.sent < BIG:
            writer.write(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            self.sent += len(CHUNK)
            await writer.drain()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with server:
                yield f"http://127.0.0.1:{port}/whep"
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def ok(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


def created(body: bytes, extra: bytes = b"") -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /whep/s1\r\n"
            + extra + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    return reply


async def attempt_fails(source: WhepSource) -> tuple[SourceError, float]:
    """Run one connection attempt of ``source`` (its own thread and loop, as the source does),
    then its teardown; the attempt's error and how long the attempt took."""
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as err:
            await asyncio.to_thread(source._open)
        took = time.monotonic() - started
        assert err.value.retryable  # as any other answer it cannot use
    finally:
        await asyncio.to_thread(source._close)
    return err.value, took


async def open_fails(metrics: Metrics, url: str) -> tuple[str, float]:
    """The error of one attempt at ``url`` and how long it took."""
    err, took = await attempt_fails(WhepSource("w", url, metrics=metrics, config=WhepSource.Config(open_timeout_s=8.0)))
    return str(err), took


async def test_an_endless_whep_answer_is_read_no_further_than_the_limit(metrics: Metrics) -> None:
    # Before: httpx read the whole body (600 MiB took the service from 250 to 898 MB), then
    # decoded it again, for as long as open_timeout_s (unbounded) allowed.
    endpoint = FakeEndpoint(answer=lambda w: endpoint.stream(
        w, b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /whep/s1\r\nTransfer-Encoding: chunked\r\n\r\n"
    ))
    async with endpoint.serving() as url:
        error, took = await open_fails(metrics, url)
    assert error == f"WHEP answer larger than {LIMIT} bytes (webrtc.max_sdp_bytes)"
    assert took < 6.0  # not the open timeout: reading stopped at the limit
    # The session the endpoint created (its Location came with the headers) is deleted.
    assert endpoint.requests == ["POST /whep HTTP/1.1", "DELETE /whep/s1 HTTP/1.1"]


async def test_a_whep_answer_declared_too_long_is_not_read(metrics: Metrics) -> None:
    endpoint = FakeEndpoint(answer=created(b"v=0\r\n" + b"a=x:y\r\n" * (LIMIT // 7 + 1)))
    async with endpoint.serving() as url:
        error, _ = await open_fails(metrics, url)
    assert error == f"WHEP answer larger than {LIMIT} bytes (webrtc.max_sdp_bytes)"


async def test_an_answer_declared_too_long_is_refused_before_its_body_arrives(metrics: Metrics) -> None:
    # Its Content-Length says enough: the body (which never comes here) is not waited for.
    async def declared_only(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /whep/s1\r\n"
                     b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
        await writer.drain()

    endpoint = FakeEndpoint(answer=declared_only)
    async with endpoint.serving() as url:
        error, took = await open_fails(metrics, url)
    assert error == f"WHEP answer larger than {LIMIT} bytes (webrtc.max_sdp_bytes)"
    assert took < 4.0  # the open timeout is 8 s


async def test_an_endless_error_body_is_read_no_further_than_the_limit(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a 4xx/5xx body was read in full too, for a debug log of its first 200 characters.
    endpoint = FakeEndpoint(answer=lambda w: endpoint.stream(
        w, b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
    ))
    async with endpoint.serving() as url:
        with caplog.at_level("DEBUG", logger="monitor.sources.webrtc"):
            error, took = await open_fails(metrics, url)
    assert error == "WHEP endpoint answered 500 Internal Server Error"
    assert took < 6.0
    assert f"(body larger than {LIMIT} bytes, not read)" in caplog.text


async def test_a_compressed_whep_answer_is_refused_not_inflated(metrics: Metrics) -> None:
    # 4 MiB that gzip to a few KB: a limit on what travels would not limit what it inflates to.
    bomb = gzip.compress(b"a=x:" + b"y" * (4 * 1024 * 1024) + b"\r\n")
    assert len(bomb) < LIMIT
    endpoint = FakeEndpoint(answer=created(bomb, b"Content-Encoding: gzip\r\n"))
    async with endpoint.serving() as url:
        error, _ = await open_fails(metrics, url)
    assert error == "WHEP answer is compressed (Content-Encoding): only an uncompressed answer is read"


async def test_the_limit_is_webrtc_max_sdp_bytes(metrics: Metrics) -> None:
    body = answer_with(20).encode()
    small = WebRTCConfig(max_sdp_bytes=1024)
    assert len(body) > 1024
    endpoint = FakeEndpoint(answer=created(body))
    async with endpoint.serving() as url:
        source = WhepSource("w", url, metrics=metrics, config=WhepSource.Config(open_timeout_s=8.0), webrtc=small)
        try:
            with pytest.raises(SourceError, match="WHEP answer larger than 1024 bytes"):
                await asyncio.to_thread(source._open)
        finally:
            await asyncio.to_thread(source._close)


async def test_a_whep_answer_with_too_many_candidates_is_refused(metrics: Metrics) -> None:
    # Before: every candidate of the answer (but unroutable and mDNS ones) went to aiortc, and
    # the service sent STUN checks to each address the endpoint listed, on every reconnect.
    endpoint = FakeEndpoint(answer=created(answer_with(MAX_REMOTE_CANDIDATES + 1).encode()))
    async with endpoint.serving() as url:
        error, _ = await open_fails(metrics, url)
    assert error == f"WHEP answer has {MAX_REMOTE_CANDIDATES + 1} ICE candidates; at most {MAX_REMOTE_CANDIDATES} are accepted"
    assert endpoint.requests == ["POST /whep HTTP/1.1", "DELETE /whep/s1 HTTP/1.1"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF db-password-hunter2\r\n", "ValueError"),  # int() quoted it
        (b"db-password-hunter2", "Media sections in answer do not match offer (ValueError)"),  # aiortc's own words
    ],
)
async def test_an_answer_aiortc_cannot_parse_is_retried_without_its_text(
    metrics: Metrics, body: bytes, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: aiortc's ValueError quoted the body (an internal service the URL points at) into
    # the stream's last_error, its events and an ERROR log with a traceback.
    endpoint = FakeEndpoint(answer=created(body))
    async with endpoint.serving() as url:
        error, _ = await open_fails(metrics, url)
    assert error == f"WHEP answer refused: {said}"
    assert "hunter2" not in caplog.text


async def test_an_answer_refused_for_what_it_lacks_says_why(metrics: Metrics) -> None:
    # aiortc's own messages quote nothing of the answer: they are kept, with the error's class
    # (also the source_errors_total kind).
    lacking = ANSWER_HEAD.replace("a=ice-ufrag:abcd\r\n", "")
    endpoint = FakeEndpoint(answer=created(lacking.encode()))
    async with endpoint.serving() as url:
        refused, _ = await attempt_fails(WhepSource("w", url, metrics=metrics, config=WhepSource.Config(open_timeout_s=8.0)))
    assert str(refused) == "WHEP answer refused: ICE username fragment or password is missing (ValueError)"
    assert refused.kind == "ValueError"


def test_the_candidate_cap_counts_every_candidate_as_for_whip(metrics: Metrics) -> None:
    assert MAX_REMOTE_CANDIDATES == 64
    source = WhepSource("w", "http://127.0.0.1:1/whep", metrics=metrics)
    assert count_candidates(answer_with(64)) == 64
    assert source._answer_sdp(answer_with(64)) == answer_with(64)  # up to the cap: untouched
    # Counted before unroutable or mDNS ones are dropped, as a WHIP offer's are.
    unroutable = answer_with(64).replace("a=end-of-candidates", "a=candidate:99 1 udp 1 169.254.169.254 1 typ host")
    with pytest.raises(SourceError, match="65 ICE candidates"):
        source._answer_sdp(unroutable)


async def test_a_whep_sessions_delete_reply_is_not_read(metrics: Metrics) -> None:
    # Before: client.delete() read the reply's body in full, 2 s per read at most: an endless
    # one grew memory and held the source's thread while it stopped.
    endpoint = FakeEndpoint(
        answer=created(b""),
        delete=lambda w: endpoint.stream(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    )
    assert await delete_takes(endpoint, metrics) < 1.5  # without reading: a read waiting for more times out after 2 s


async def delete_takes(endpoint: FakeEndpoint, metrics: Metrics) -> float:
    """Seconds a WHEP source's teardown takes to DELETE its session at ``endpoint``."""
    async with endpoint.serving() as url:
        source = WhepSource("w", url, metrics=metrics)
        source._resource = f"{url}/s1"
        started = time.monotonic()
        await source._teardown()
        took = time.monotonic() - started
    assert endpoint.requests == ["DELETE /whep/s1 HTTP/1.1"]
    return took


async def test_a_whep_delete_answered_a_byte_at_a_time_is_bounded_as_a_whole(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx's timeout is per read: a reply head dripped a byte every 0.5 s would hold the
    # stopping source for as long as the endpoint likes, but for DELETE_TIMEOUT_S.
    monkeypatch.setattr(WhepSource, "DELETE_TIMEOUT_S", 1.0)

    async def drip(writer: asyncio.StreamWriter) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Pad: abcdefghijklmnop\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)

    assert await delete_takes(FakeEndpoint(answer=created(b""), delete=drip), metrics) < 3.0  # the whole head: 20 s


async def test_a_whep_source_sends_nothing_to_a_proxy_from_the_environment(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    # HTTP(S)_PROXY would get the offer and the bearer token: the service contacts only the
    # endpoint it was configured with, the session's DELETE included.
    async def bad_gateway(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    proxy = FakeEndpoint(answer=bad_gateway)
    endpoint = FakeEndpoint(answer=created(answer_with(MAX_REMOTE_CANDIDATES + 1).encode()))  # refused, then deleted
    async with proxy.serving() as proxy_url, endpoint.serving() as url:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy_url.rsplit("/", 1)[0])
        source = WhepSource("w", url, metrics=metrics, config=WhepSource.Config(token="t" * 32, open_timeout_s=8.0))
        refused, _ = await attempt_fails(source)
    assert "ICE candidates" in str(refused)
    assert proxy.requests == []
    assert endpoint.requests == ["POST /whep HTTP/1.1", "DELETE /whep/s1 HTTP/1.1"]


async def test_a_failed_whep_attempt_closes_its_peer_connection(metrics: Metrics) -> None:
    # Its UDP sockets and ICE agent go with it, not one left behind per reconnect.
    endpoint = FakeEndpoint(answer=created(answer_with(MAX_REMOTE_CANDIDATES + 1).encode()))
    async with endpoint.serving() as url:
        source = WhepSource("w", url, metrics=metrics, config=WhepSource.Config(open_timeout_s=8.0))
        try:
            with pytest.raises(SourceError):
                await asyncio.to_thread(source._open)
            pc = source._pc
            assert pc is not None
        finally:
            await asyncio.to_thread(source._close)
    assert pc.connectionState == "closed" and source._pc is None


@pytest.mark.parametrize("option", ["open_timeout_s", "read_timeout_s"])
def test_whep_timeouts_are_at_most_300_s(option: str) -> None:
    assert getattr(plugin_config(WhepSource, {option: 300}), option) == 300
    with pytest.raises(ConfigError, match="300"):
        plugin_config(WhepSource, {option: 100000})
