"""The webhook sink's options and its receiver-side helper refuse what would fail later or
leak: header values with line breaks, headers the sink sets itself, non-ASCII signatures; and
credentials in URLs never reach an error message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from monitor_webhook import WebhookSink, sign, verify

from monitor.config import load_settings, redact_url
from monitor.errors import ConfigError
from monitor.plugins import plugin_config

SECRET_TOKEN = "Bearer S3CRET-TOKEN-0123"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Authorization": SECRET_TOKEN + "\n"}, "printable ASCII"),  # a token read from a file
        ({"Authorization": "Bearer tøken-0123456789"}, "printable ASCII"),
        ({"X-Evil": "a\r\nX-Injected: 1"}, "printable ASCII"),
        ({"Bad Name": "x"}, "not a valid HTTP field name"),
        ({"content-type": "text/plain"}, "set by the sink itself"),
        ({"x-monitor-signature": "sha256=forged"}, "set by the sink itself"),
    ],
)
def test_webhook_headers_are_checked_at_start_up(headers: dict[str, str], message: str) -> None:
    # Before: accepted, then every delivery failed in h11 (retried for ever, the token quoted in
    # the log each time), or a second Content-Type / signature header went out.
    with pytest.raises(ConfigError, match=message) as err:
        plugin_config(WebhookSink, {"url": "https://hooks.example/in", "headers": headers})
    assert "S3CRET" not in str(err.value)


def test_good_webhook_headers_pass() -> None:
    config = plugin_config(WebhookSink, {"url": "https://hooks.example/in", "headers": {"Authorization": SECRET_TOKEN, "X-Team": "soc"}})
    assert config.headers["X-Team"] == "soc"  # type: ignore[attr-defined]


def test_a_non_ascii_signature_is_refused_not_a_crash() -> None:
    # hmac.compare_digest raised TypeError on it: any client turned the receiver's 401 into a 500.
    assert verify("s" * 16, "1700000000", b"{}", "sha256=ü", now=1700000000.0) is False


async def test_plain_http_to_another_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for url, warned in (("http://hooks.example/in", True), ("http://127.0.0.1:9/in", False), ("https://hooks.example/in", False)):
        caplog.clear()
        sink = WebhookSink(plugin_config(WebhookSink, {"url": url}))  # type: ignore[arg-type]
        await sink.start()
        await sink.aclose()
        assert ("unencrypted" in caplog.text) is warned, url


@pytest.mark.parametrize(
    "plugin, url",
    [
        ("redis", "redis//:hunter2@cache.internal:6379/0"),  # the scheme's colon missing
        ("redis", "redis;//:hunter2@cache.internal:6379/0"),
        ("redis", "//:hunter2@cache.internal:6379/0"),
        ("webhook", "https//bob:hunter2@hook.example/x"),
        ("webhook", "htps://hooks.slack.com/services/T000/B000/hunter2"),  # a token in the path
        ("webhook", "https://hooks.slack.com:99999/services/T000/B000/hunter2"),
    ],
)
def test_a_mistyped_sink_url_never_shows_its_secret_in_the_error(plugin: str, url: str, tmp_path: Path) -> None:
    # Before: only a URL starting "scheme:" had its password hidden, and a sink URL's path (where
    # Slack and Discord keep the token) was quoted whole, by `monitor config show` and `serve`.
    from monitor.components import check_plugins

    settings = load_settings(None, data_dir=tmp_path, demo=False, sinks=[{"name": plugin, "options": {"url": url}}])
    with pytest.raises(ConfigError) as refused:
        check_plugins(settings)
    assert "sinks[0]" in str(refused.value) and "hunter2" not in str(refused.value), refused.value


def test_a_third_party_plugins_unknown_key_is_refused_whatever_its_model_says() -> None:
    # pydantic's default drops unknown keys: a misspelt `secret` sent every event unsigned.
    from pydantic import BaseModel, Field

    class ThirdPartySink:
        class Config(BaseModel):
            url: str
            secret: str | None = None

    class Aliased:
        class Config(BaseModel):
            url: str = Field("u", alias="endpoint")  # the name itself is read only with populate_by_name

    with pytest.raises(ConfigError, match=r"Aliased: url: unknown key"):
        plugin_config(Aliased, {"url": "https://e.example/x"})
    assert plugin_config(Aliased, {"endpoint": "https://e.example/x"}).url == "https://e.example/x"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"ThirdPartySink: secert: unknown key"):
        plugin_config(ThirdPartySink, {"url": "https://e.example/x", "secert": "typo-so-never-signed"})
    assert plugin_config(ThirdPartySink, {"url": "https://e.example/x", "secret": "s" * 16}).secret == "s" * 16  # type: ignore[attr-defined]


def test_credentials_in_urls_never_reach_an_error_or_the_config_output() -> None:
    # A password with a raw "@": redaction stopped at the first one and showed the rest.
    assert redact_url("rtsp://admin:p@ssw0rd@cam.local/s") == "rtsp://***@cam.local/s"
    with pytest.raises(ConfigError) as err:  # an invalid port: the URL was quoted whole
        plugin_config(WebhookSink, {"url": "http://user:hunter2secret@hook.example:99999/x?token=SUPERSECRET"})
    assert "hunter2secret" not in str(err.value) and "SUPERSECRET" not in str(err.value)
    from monitor.config import infer_source

    with pytest.raises(ConfigError) as err:
        infer_source("rtps://admin:SECRETPW@cam/x")  # a mistyped scheme
    assert "SECRETPW" not in str(err.value) and "rtps://***@cam/x" in str(err.value)


@pytest.mark.parametrize("instance", ["my monitor?x#y", "", "a/../b", "-lead"])
def test_the_instance_name_must_make_a_valid_cloudevents_source(instance: str) -> None:
    with pytest.raises(ConfigError, match="instance"):
        load_settings(None, instance=instance)
    assert load_settings(None, instance="monitor-eu.1").instance == "monitor-eu.1"


async def test_http_client_request_lines_never_carry_credentials(caplog: pytest.LogCaptureFixture) -> None:
    # httpx logs each request's full URL at INFO: a WHEP URL's password and token, or a webhook's
    # ?code=, went to the service's log on every request.
    import logging

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from monitor.app import install_log_redaction
    from tests.support.asgi import serving_app

    install_log_redaction()
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING  # not logged at all by default
    app = Starlette(routes=[Route("/whep", lambda request: Response("ok"), methods=["POST"])])
    async with serving_app(app) as port:
        with caplog.at_level(logging.INFO, logger="httpx"):  # an operator who turned it up
            async with httpx.AsyncClient() as client:
                await client.post(f"http://whepuser:WhepPw888@127.0.0.1:{port}/whep?token=WhepQueryTok666&code=AzureCode777")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all("WhepPw888" not in line and "WhepQueryTok666" not in line and "AzureCode777" not in line for line in lines), lines


def test_the_signature_is_the_one_the_readme_tells_receivers_to_check() -> None:
    # Known answer, spelled out as a receiver would compute it: HMAC-SHA256 of "{timestamp}.{body}".
    import hashlib
    import hmac

    secret, body = "s" * 16, b'{"id":"1"}'
    expected = hmac.new(secret.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(secret, "1700000000", body) == f"sha256={expected}"
    # The timestamp is signed: a captured request re-dated to look fresh is refused.
    captured = sign(secret, "1700000000", body)
    assert verify(secret, "1700000000", body, captured, now=1_700_000_100)
    assert not verify(secret, "1700000600", body, captured, now=1_700_000_600)
