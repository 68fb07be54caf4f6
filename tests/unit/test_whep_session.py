"""The WHEP source's session URL: resolved against the endpoint; the token only goes to its origin."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from monitor.config import WebRTCConfig
from monitor.errors import ConfigError, SourceError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.webrtc import WhepSource, drop_mdns_candidates, same_origin, session_url

ENDPOINT = "https://media.example/whep/cam"
TOKEN = "w" * 32


@pytest.mark.parametrize(
    "location, expected",
    [
        ("/whep/cam/s1", "https://media.example/whep/cam/s1"),
        ("cam/s1", "https://media.example/whep/cam/s1"),
        ("https://media.example:443/s1", "https://media.example/s1"),
        ("//evil.example/s1", "https://evil.example/s1"),
        ("http://media.example/s1", "http://media.example/s1"),
    ],
)
def test_session_url_resolves_location_against_the_endpoint(location: str, expected: str) -> None:
    assert session_url(ENDPOINT, location) == expected


@pytest.mark.parametrize(
    "other, same",
    [
        ("https://media.example/whep/cam/s1", True),
        ("https://MEDIA.example:443/x", True),
        ("http://media.example/x", False),  # scheme
        ("https://media.example:8443/x", False),  # port
        ("https://evil.example/x", False),  # host
        ("https://media.example.evil.example/x", False),
    ],
)
def test_same_origin(other: str, same: bool) -> None:
    assert same_origin(ENDPOINT, other) is same


def whep(metrics: Metrics, token: str | None = TOKEN) -> WhepSource:
    return WhepSource("cam", ENDPOINT, metrics=metrics, config=WhepSource.Config(token=token))


@pytest.mark.parametrize("bad", ["SFU-SECRET-abc123\n", "SFU-SECRET\x00abc", "SFU SECRET", "SFU-SÉCRET-abc"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_without_echoing_it(bad: str) -> None:
    # Before: accepted; every request then failed, for ever, and httpx's "Illegal header value
    # b'Bearer SFU-SECRET-abc123\n'" reached the stream's status, the event log and the logs.
    with pytest.raises(ConfigError, match="printable ASCII") as err:
        plugin_config(WhepSource, {"token": bad})  # as a stream's options are read
    assert "SECRET" not in str(err.value) and "SÉCRET" not in str(err.value)


def test_only_configured_origins_are_trusted(metrics: Metrics) -> None:
    src = whep(metrics)
    assert src._trusted("https://media.example/whep/cam/s1")
    assert not src._trusted("https://evil.example/whep/cam/s1")
    config = WhepSource.Config(token=TOKEN, redirect_origins=("https://media-2.example",))
    listed = WhepSource("cam", ENDPOINT, metrics=metrics, config=config)
    assert listed._trusted("https://media-2.example/s1")
    assert not listed._trusted("http://media-2.example/s1")  # another scheme is another origin


@pytest.mark.parametrize(
    "resource, deleted",
    [("https://media.example/whep/cam/s1", True), ("https://evil.example/whep/cam/s1", False)],
)
async def test_teardown_deletes_the_session_only_on_a_configured_origin(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, resource: str, deleted: bool
) -> None:
    # Before: a session Location on another origin was still sent a DELETE (without the token):
    # a media server could make the service contact any host it named.
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    real_client = httpx.AsyncClient
    monkeypatch.setattr(
        httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw)
    )
    src = whep(metrics)
    src._resource = resource
    with caplog.at_level(logging.WARNING, logger="monitor.sources.webrtc"):
        await src._teardown()
    if deleted:
        assert [(r.method, str(r.url), r.headers["authorization"]) for r in seen] == [("DELETE", resource, f"Bearer {TOKEN}")]
    else:
        assert seen == [] and "not on a configured origin" in caplog.text


MDNS_SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
    "a=candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host\r\n"
    "a=candidate:2 1 udp 2122260223 0b6f7c1e-2f9e-4c79-9d51-3a9c2a7f0d11.local 5001 typ host\r\n"
    "a=candidate:3 1 udp 1686052607 203.0.113.9 5002 typ srflx raddr Host-1.LOCAL rport 5001\r\n"
    "a=candidate:4 1 udp 2122260223 printer.office.local. 5003 typ host\r\n"
    "a=end-of-candidates\r\n"
)


def test_drop_mdns_candidates() -> None:
    kept, dropped = drop_mdns_candidates(MDNS_SDP)
    assert dropped == 2
    assert ".local 5001" not in kept and "printer.office" not in kept
    # Only the candidate's own address counts (not raddr); the end goes with the dropped ones.
    assert "192.0.2.1 5000" in kept and "203.0.113.9 5002" in kept and "a=end-of-candidates" not in kept
    assert kept.endswith("\r\n") and "\r\n\r\n" not in kept
    plain = MDNS_SDP.replace("a=candidate:2", "a=x-2").replace("a=candidate:4", "a=x-4")
    assert drop_mdns_candidates(plain) == (plain, 0)  # untouched, its end-of-candidates kept


def test_whep_answer_loses_its_mdns_candidates_unless_configured(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    src = whep(metrics)
    with caplog.at_level(logging.DEBUG, logger="monitor.sources.webrtc"):
        assert src._answer_sdp(MDNS_SDP) == drop_mdns_candidates(MDNS_SDP)[0]
        src._answer_sdp(MDNS_SDP)  # a reconnect: logged again only at debug
    levels = [r.levelno for r in caplog.records if "mDNS" in r.getMessage()]
    assert levels == [logging.INFO, logging.DEBUG]
    resolving = WhepSource("cam", ENDPOINT, metrics=metrics, webrtc=WebRTCConfig(resolve_mdns=True))
    assert resolving._answer_sdp(MDNS_SDP) == MDNS_SDP


# --- found by a mutation audit -------------------------------------------------------------


def _whep_with(monkeypatch: pytest.MonkeyPatch, handler: Callable[[httpx.Request], httpx.Response]) -> WhepSource:
    real_client = httpx.AsyncClient
    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    return WhepSource("cam", ENDPOINT, metrics=Metrics(), config=WhepSource.Config(token=TOKEN))


async def test_a_whep_redirect_loop_stops_after_max_redirects(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(307, headers={"Location": "/whep/cam"})  # to itself, for ever

    src = _whep_with(monkeypatch, handler)
    with pytest.raises(SourceError, match=f"more than {WhepSource.MAX_REDIRECTS} redirects"):
        async with src._post_offer("v=0\r\n"):
            pass
    assert len(seen) == WhepSource.MAX_REDIRECTS + 1


async def test_a_whep_308_is_followed_like_a_307(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path == "/whep/cam":
            return httpx.Response(308, headers={"Location": "/whep/cam-2"})
        return httpx.Response(201, content=b"v=0\r\n", headers={"Location": "/whep/cam-2/s1"})

    src = _whep_with(monkeypatch, handler)
    async with src._post_offer("v=0\r\n") as (url, response):
        assert response.status_code == 201 and url == "https://media.example/whep/cam-2"
    assert seen == [ENDPOINT, "https://media.example/whep/cam-2"]


async def test_a_whep_redirect_to_another_origin_is_refused_and_never_contacted(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "media.example":
            return httpx.Response(307, headers={"Location": "https://evil.example/whep/cam"})
        return httpx.Response(201, stream=httpx.ByteStream(b"v=0\r\n"), headers={"Location": "/s1"})

    src = _whep_with(monkeypatch, handler)
    with pytest.raises(SourceError, match="redirect_origins") as info:
        async with src._post_offer("v=0\r\n"):
            pass
    assert info.value.retryable and seen == [ENDPOINT]


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_only_307_and_308_redirects_are_followed(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path == "/whep/cam":
            return httpx.Response(status, headers={"Location": "/whep/cam-2"})
        return httpx.Response(201, stream=httpx.ByteStream(b"v=0\r\n"), headers={"Location": "/whep/cam-2/s1"})

    src = _whep_with(monkeypatch, handler)
    async with src._post_offer("v=0\r\n") as (url, response):
        assert response.status_code == status and url == ENDPOINT  # a failure for _negotiate, not followed
    assert seen == [ENDPOINT]
