"""The WHEP source's session URL: resolved against the endpoint; the token only goes to its origin."""

from __future__ import annotations

import logging

import httpx
import pytest

from monitor.metrics import Metrics
from monitor.sources.webrtc import WhepSource, same_origin, session_url

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


def test_token_only_for_the_endpoint_origin(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    src = whep(metrics)
    assert src._session_headers("https://media.example/whep/cam/s1") == {"Authorization": f"Bearer {TOKEN}"}
    with caplog.at_level(logging.WARNING, logger="monitor.sources.webrtc"):
        assert src._session_headers("https://evil.example/whep/cam/s1") == {}
    assert "not on the endpoint's origin" in caplog.text
    caplog.clear()
    assert whep(metrics, token=None)._session_headers("https://evil.example/s1") == {}
    assert not caplog.records  # nothing withheld, nothing to warn about


@pytest.mark.parametrize(
    "resource, authorized",
    [("https://media.example/whep/cam/s1", True), ("https://evil.example/whep/cam/s1", False)],
)
async def test_teardown_deletes_the_session_without_leaking_the_token(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch, resource: str, authorized: bool
) -> None:
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
    await src._teardown()
    assert [(r.method, str(r.url)) for r in seen] == [("DELETE", resource)]
    assert ("authorization" in seen[0].headers) is authorized
