"""The first-party Redis Streams sink against a real redis-server on loopback: every event in
order, once, through Redis being down at start-up and deliveries retried; a key of the wrong
type is retried, not skipped; the stream is capped as configured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from monitor_redis import DeliveryError, RedisStreamSink

from monitor.config import load_settings
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, port_open, wait_until
from tests.support.service import running_service

pytestmark = pytest.mark.integration
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """Debian's redis-server on a loopback port, no persistence (DESIGN.md's recipe)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc = ManagedProcess(
            [REDIS_SERVER, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"], name="redis"
        )

    def start(self) -> None:
        self.proc.start()
        wait_until(lambda: port_open(self.port), 20, "redis-server", alive=lambda: self.proc.running, detail=self.proc.log)

    def stop(self) -> None:
        self.proc.stop()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, decode_responses=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    s.start()
    yield s
    s.stop()


@contextlib.asynccontextmanager
async def started(config: RedisStreamSink.Config) -> AsyncIterator[RedisStreamSink]:
    sink = RedisStreamSink(config)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.aclose()


def status_event(i: int) -> Event:
    return Event(EventType.STREAM_STATUS, "cam", Severity.INFO, 1_700_000_000.0 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))


def test_redis_server_is_installed() -> None:
    # scripts/setup.sh --test installs it; without it the tests below would not run at all.
    assert Path(REDIS_SERVER).is_file(), "redis-server is missing: run scripts/setup.sh --test"


async def test_every_event_reaches_the_stream_once_in_order_though_redis_starts_late(tmp_path: Path) -> None:
    redis_server = RedisServer()  # not running yet: the service must start anyway
    sink = {"name": "redis", "options": {"url": redis_server.url, "stream": "dm:events", "timeout_s": 1}}
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, sinks=[sink])
    try:
        async with running_service(settings) as svc:
            await svc.runtime.bus.publish([status_event(i) for i in range(5)])
            await asyncio.sleep(1.0)  # deliveries fail meanwhile, and are retried
            await asyncio.to_thread(redis_server.start)
            client = redis_server.client()
            async with asyncio.timeout(30):
                while client.xlen("dm:events") < 5:
                    await asyncio.sleep(0.05)
            await svc.runtime.bus.publish([status_event(i) for i in range(5, 8)])
            async with asyncio.timeout(30):
                while client.xlen("dm:events") < 8:
                    await asyncio.sleep(0.05)
        entries = client.xrange("dm:events")
        details = [json.loads(fields["event"])["data"]["detail"] for _, fields in entries]
        # The shutdown's own events may follow; the first eight are ours, in order, once each.
        assert details[:8] == [str(i) for i in range(8)]
        ids = [int(fields["id"]) for _, fields in entries]
        assert ids == sorted(set(ids))
        first = entries[0][1]
        assert first["type"] == EventType.STREAM_STATUS.value and first["subject"] == "streams/cam"
        assert first["source"] == json.loads(first["event"])["source"]
    finally:
        redis_server.stop()


async def test_a_retried_delivery_adds_no_duplicate(server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    config = RedisStreamSink.Config(url=server.url, stream="dm:once")
    event = {"specversion": "1.0", "id": "7", "source": "/monitor/logs/abc", "type": "t", "data": {}}
    async with started(config) as sink:
        for event_id in (7, 7, 3):  # the same event again (a timeout that landed), an older one
            await sink.send(event_id, json.dumps({**event, "id": str(event_id)}))
        await sink.send(7, json.dumps({**event, "source": "/monitor/logs/new-epoch"}))  # another log: its own ids
    entries = server.client().xrange("dm:once")
    assert [(f["source"], f["id"]) for _, f in entries] == [("/monitor/logs/abc", "7"), ("/monitor/logs/new-epoch", "7")]
    # One mark per event log, whatever its streams: it had one per stream id, kept for good.
    async with started(config) as sink:
        await sink.send(8, json.dumps({**event, "id": "8", "source": "/monitor/logs/abc/streams/cam-1"}))
        await sink.send(8, json.dumps({**event, "id": "8", "source": "/monitor/logs/abc/streams/cam-2"}))  # the same id
        await sink.send(9, json.dumps({**event, "id": "9", "source": "/monitor/logs/abc/streams/cam-2"}))
    assert server.client().hgetall("dm:once:delivered") == {"/monitor/logs/abc": "9", "/monitor/logs/new-epoch": "7"}
    from monitor_redis import log_of

    assert log_of("/streams/logs/e1/streams/cam") == "/streams/logs/e1"  # an instance named "streams"
    assert [f["id"] for _, f in server.client().xrange("dm:once")] == ["7", "7", "8", "9"]
    # Each one not appended is said: after a data_dir restored with its mark, they are new events.
    assert caplog.text.count("is already recorded in dm:once:delivered, so it was not appended again") == 3


async def test_a_key_of_the_wrong_type_is_a_delivery_error_not_a_skip(server: RedisServer) -> None:
    server.client().set("dm:taken", "a string, not a stream")
    config = RedisStreamSink.Config(url=server.url, stream="dm:taken")
    async with started(config) as sink:
        with pytest.raises(DeliveryError, match="WRONGTYPE"):
            await sink.send(1, json.dumps({"id": "1", "source": "/m", "type": "t"}))


async def test_the_stream_is_capped_about_maxlen(server: RedisServer) -> None:
    config = RedisStreamSink.Config(url=server.url, stream="dm:capped", maxlen=100)
    async with started(config) as sink:
        for i in range(1, 351):
            await sink.send(i, json.dumps({"id": str(i), "source": "/m", "type": "t"}))
    client = server.client()
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): about, never below.
    assert 100 <= client.xlen("dm:capped") < 350
    assert client.xrevrange("dm:capped", count=1)[0][1]["id"] == "350"


async def test_maxlen_0_keeps_every_entry(server: RedisServer) -> None:
    async with started(RedisStreamSink.Config(url=server.url, stream="dm:all", maxlen=0)) as sink:
        for i in range(1, 251):
            await sink.send(i, json.dumps({"id": str(i), "source": "/m", "type": "t"}))
    assert server.client().xlen("dm:all") == 250


async def test_an_entry_has_the_fields_the_readme_lists_and_the_event_as_sent(server: RedisServer) -> None:
    event = {"specversion": "1.0", "id": "5", "source": "/m/logs/e/streams/cam", "type": "t", "subject": "streams/cam",
             "time": "2026-11-27T07:15:02.113Z", "data": {"x": 1}}
    text = json.dumps(event, separators=(",", ":"))  # not json.dumps's default spacing: kept byte for byte
    async with started(RedisStreamSink.Config(url=server.url, stream="dm:f")) as sink:
        await sink.send(5, text)
    [(_, fields)] = server.client().xrange("dm:f")
    assert fields == {"id": "5", "source": event["source"], "type": "t", "subject": "streams/cam", "time": event["time"], "event": text}


async def test_aclose_closes_the_connection(server: RedisServer) -> None:
    checker = server.client()
    async with started(RedisStreamSink.Config(url=server.url, stream="dm:c")) as sink:
        await sink.send(1, json.dumps({"id": "1", "source": "/m", "type": "t"}))
        assert int(checker.info("clients")["connected_clients"]) == 2  # the sink's and the checker's
    async with asyncio.timeout(10):
        while int(checker.info("clients")["connected_clients"]) != 1:
            await asyncio.sleep(0.05)


async def test_plain_redis_to_another_host_is_warned_loopback_and_tls_are_not(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="monitor_redis"):
        async with started(RedisStreamSink.Config(url="redis://10.255.255.1:6379/0")):  # start() sends nothing
            pass
        assert "unencrypted" in caplog.text
        caplog.clear()
        for url in (f"redis://{LOOPBACK}:6379/0", "rediss://10.255.255.1:6380/0"):
            async with started(RedisStreamSink.Config(url=url)):
                pass
        assert "unencrypted" not in caplog.text


async def test_a_slow_redis_fails_a_delivery_at_timeout_s_in_total(server: RedisServer) -> None:
    # timeout_s bounds the whole delivery, not each read: a Redis answering every command in
    # 0.6 s stays under the 1 s socket timeout each time, but a delivery takes several round
    # trips (connection set-up, EVALSHA, SCRIPT LOAD after NOSCRIPT, EVALSHA again).
    import time

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    tasks: list[asyncio.Task[None]] = []

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(LOOPBACK, server.port)
        tasks.append(asyncio.create_task(pipe(client_reader, server_writer, 0.6)))
        tasks.append(asyncio.create_task(pipe(server_reader, client_writer, 0.0)))

    proxy = await asyncio.start_server(relay, LOOPBACK, 0)
    try:
        config = RedisStreamSink.Config(url=f"redis://{LOOPBACK}:{proxy.sockets[0].getsockname()[1]}/0", stream="dm:slow", timeout_s=1.0)
        async with started(config) as sink:
            started_at = time.monotonic()
            with pytest.raises(DeliveryError, match="did not answer within 1s"):
                await sink.send(1, json.dumps({"id": "1", "source": "/m", "type": "t"}))
            assert time.monotonic() - started_at < 1.6  # without the total bound: 1.8 s or more
    finally:
        proxy.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_redis_down_is_a_delivery_error_within_the_timeout() -> None:
    config = RedisStreamSink.Config(url=f"redis://{LOOPBACK}:{free_port()}/0", timeout_s=1)
    async with started(config) as sink:
        with pytest.raises(DeliveryError):
            await sink.send(1, json.dumps({"id": "1", "source": "/m", "type": "t"}))


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://", "redis://h:99999", "127.0.0.1:6379"])
def test_a_url_that_is_not_redis_is_refused_at_start_up(url: str) -> None:
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisStreamSink.Config(url=url)


@pytest.mark.parametrize("password", ["", ":Sup3rSecretPw@"])
async def test_a_peer_that_is_not_redis_is_never_counted_as_delivered(password: str) -> None:
    # Before: a peer that echoes (a misrouted port-forward) "accepted" every event and the cursor
    # moved past events Redis never had; with a password, a bare AttributeError was all it said.
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = RedisStreamSink.Config(url=f"redis://{password}{LOOPBACK}:{port}/0", timeout_s=2)
        async with started(config) as sink:
            with pytest.raises(DeliveryError, match=r"^event 1: not a Redis server\?") as failed:
                await sink.send(1, json.dumps({"id": "1", "source": "/m/logs/e/streams/cam", "type": "t"}))
        assert "Sup3rSecretPw" not in str(failed.value)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis://127.0.0.1:6379/1O", "the database (the path after the host) must be a number"),
        ("redis://127.0.0.1:6379/deepfake-monitor:events", "the database (the path after the host) must be a number"),
        ("unix:///run/redis.sock?db=x", "db must be a number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=0", "socket_timeout must be a number of seconds above 0"),
        ("redis://127.0.0.1:6379/0?socket_connect_timeout=-1", "socket_connect_timeout must be a number of seconds above 0"),
        ("redis://127.0.0.1:6379/0?health_check_interval=-1", "health_check_interval must be a whole number"),
        ("redis://127.0.0.1:6379/0?client_name=a%20b", "client_name may hold only printable ASCII"),
        ("rediss://127.0.0.1:6379/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs names no file"),
    ],
)
def test_url_options_that_would_fail_every_delivery_are_refused_at_start_up(url: str, problem: str) -> None:
    # Before: each passed the start-up check and then failed every delivery for ever (or, for
    # a database that is not a number, silently used db 0).
    with pytest.raises(ValueError, match=re.escape(f"not a Redis URL: {problem}")):
        RedisStreamSink.Config(url=url)
    with pytest.raises(ValueError, match="less than or equal to 9223372036854775807"):
        RedisStreamSink.Config(url="redis://127.0.0.1:6379/0", maxlen=2**64)
    for ok in ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/3?socket_timeout=0.5&health_check_interval=0&client_name=monitor-1"):
        RedisStreamSink.Config(url=ok)


def test_a_bad_url_never_quotes_the_password_and_its_query_is_checked() -> None:
    # A raw / in the password made Python's "Port could not be cast" message quote what came
    # before it; ?foo=bar loaded and then failed every delivery; ?ssl_cert_reqs=none silently
    # turned the certificate check off.
    from monitor.errors import ConfigError
    from monitor.plugins import plugin_config

    with pytest.raises(ConfigError, match="percent-encoded") as bad:  # as `serve` and `config show` say it
        plugin_config(RedisStreamSink, {"url": "rediss://alerts:q8/Zk3pass@redis.internal:6380/0"})
    assert "q8" not in str(bad.value)
    for query, message in (("foo=bar", "not accepted"), ("ssl_cert_reqs=none", "always checked"), ("ssl_check_hostname=false", "always checked")):
        with pytest.raises(ValueError, match=message):
            RedisStreamSink.Config(url=f"rediss://redis.internal:6380/0?{query}")
    assert RedisStreamSink.Config(url="redis://127.0.0.1:6379/0?socket_timeout=2").url.endswith("socket_timeout=2")
    assert RedisStreamSink.Config(url="unix:///run/redis.sock?db=2")


def test_the_password_in_the_url_is_hidden_in_config_show(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from monitor.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text("sinks:\n  - name: redis\n    options: {url: 'rediss://alerts:S3CRETpw@redis.internal:6380/2'}\n")
    r = CliRunner().invoke(app, ["config", "show", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "S3CRETpw" not in r.output and "redis.internal" in r.output
