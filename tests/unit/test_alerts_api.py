"""Event log, fan-out and the alert websocket over a real server on loopback (no streams)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from monitor.alerts.eventlog import EventLog
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError
from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData
from tests.support.service import running_service

TOKEN = "t" * 32


def status_event(i: int) -> Event:
    return Event(EventType.STREAM_STATUS, f"cam{i % 3}", Severity.INFO, 1_700_000_000.0 + i,
                 StreamStatusData(StreamState.RUNNING, f"n{i}", 0))


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", demo=False, **kw)


def test_event_log_ids_increase_and_survive_reopen(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3", "inst")
    stored = log.append([status_event(i) for i in range(5)])
    assert [s.id for s in stored] == [1, 2, 3, 4, 5]
    log.close()
    log = EventLog(tmp_path / "e.sqlite3", "inst")
    assert log.last_id() == 5
    rows = log.read_since(2)
    assert [r[0] for r in rows] == [3, 4, 5]
    ce = json.loads(rows[0][1])
    assert ce["specversion"] == "1.0" and ce["id"] == "3" and ce["source"] == f"/inst/logs/{log.epoch}/streams/cam2"
    assert ce["logepoch"] == log.epoch
    assert ce["type"] == "io.deepfake-monitor.stream.status.v1" and ce["data"]["detail"] == "n2"
    # Pruned ids are never reused.
    assert log.prune(1_700_000_000.0 + 10) == 5
    assert [s.id for s in log.append([status_event(9)])] == [6]


def test_numpy_values_in_an_event_are_stored_as_json_numbers(tmp_path: Path) -> None:
    # A plugin's signal as numpy float32: before, json.dumps raised and the whole batch (an
    # alert.opened with it) was dropped after its retries.
    import numpy as np

    from monitor.alerts.eventlog import jsonable
    from monitor.types import Signal, TrackState, TrackStateData

    log = EventLog(tmp_path / "e.sqlite3", "inst")
    signals = [Signal("cnn", np.float32(0.25), np.float64(0.5)), Signal("blinks", np.int64(3), np.float32("nan"))]
    data = TrackStateData(7, TrackState.ALERT, TrackState.SUSPICIOUS, np.float32(0.75), 0.8, (), tuple(signals), np.int32(1), 2.0)
    [stored] = log.append([Event(EventType.TRACK_STATE, "cam", Severity.WARNING, 1.7e9, data)])
    back = json.loads(log.read_since(0)[0][1])["data"]
    assert back["score"] == 0.75 and back["since_t"] == 1
    assert jsonable({"ok": np.bool_(True)}) == {"ok": True}
    assert back["signals"] == [{"name": "cnn", "value": 0.25, "weight": 0.5}, {"name": "blinks", "value": 3, "weight": None}]
    log.close()


def test_a_replaced_log_file_and_a_mark_that_cannot_be_written_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.append([status_event(i) for i in range(3)])
    old_epoch = log.epoch
    log.close()
    for leftover in tmp_path.glob("events.sqlite3*"):
        if leftover.suffix != ".mark":
            leftover.unlink()  # the log deleted, its mark left: before, a new log with not a word
    log = EventLog(path)
    assert log.last_id() == 0 and log.epoch != old_epoch
    assert f"is not the log its mark names (epoch {old_epoch}, which reached id 3)" in caplog.text
    # The mark cannot be written (its folder gone or read-only): said once, not on every append.
    caplog.clear()
    mark = tmp_path / "events.sqlite3.mark"
    mark.unlink()
    mark.mkdir()
    log.append([status_event(4)])
    log.append([status_event(5)])
    assert caplog.text.count("cannot write the event log's mark") == 1
    log.close()


async def recv_all(ws: websockets.ClientConnection, n: int, timeout: float = 10) -> list[dict]:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(json.loads(await ws.recv()))
    return out


async def test_websocket_replays_since_and_streams_live(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(3)])
        async with websockets.connect(svc.ws + "/ws/alerts?since=0", subprotocols=["cloudevents.json"]) as ws:
            assert ws.subprotocol == "cloudevents.json"
            first = await recv_all(ws, 3)
            await bus.publish([status_event(i) for i in range(3, 6)])
            live = await recv_all(ws, 3)
        assert [int(e["id"]) for e in first + live] == [1, 2, 3, 4, 5, 6]
        # Disconnected while more events happened: resume with the last id, miss nothing.
        await bus.publish([status_event(i) for i in range(6, 10)])
        async with websockets.connect(svc.ws + "/ws/alerts?since=6", subprotocols=["cloudevents.json"]) as ws:
            resumed = await recv_all(ws, 4)
        assert [int(e["id"]) for e in resumed] == [7, 8, 9, 10]
        async with httpx.AsyncClient(base_url=svc.base) as http:
            assert [int(e["id"]) for e in (await http.get("/api/events?last=3")).json()] == [8, 9, 10]
            assert [int(e["id"]) for e in (await http.get("/api/events?since=8")).json()] == [9, 10]


async def test_stream_list_names_the_newest_event_sent_to_live_clients(tmp_path: Path) -> None:
    """The dashboard compares these headers with what its websocket delivered, to notice a
    connection that died without a close."""
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.get("/api/streams")
            assert "x-last-event-id" not in r.headers and "x-last-event-epoch" not in r.headers
            await svc.runtime.bus.publish([status_event(i) for i in range(3)])
            r = await http.get("/api/streams")
            assert r.headers["x-last-event-id"] == "3"
            assert r.headers["x-last-event-epoch"] == svc.runtime.bus.log.epoch
            spec = (await http.get("/openapi.json")).json()
            assert set(spec["paths"]["/api/streams"]["get"]["responses"]["200"]["headers"]) == {"X-Last-Event-Id", "X-Last-Event-Epoch"}


async def test_slow_client_is_evicted_with_1013_and_loses_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, alerts={"queue_size": 5})
    async with running_service(settings) as svc:
        async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=["cloudevents.json"]) as ws:
            async with asyncio.timeout(10):  # until the server has registered the subscription
                while not svc.runtime.bus._subs:  # noqa: SLF001
                    await asyncio.sleep(0.02)
            await svc.runtime.bus.publish([status_event(i) for i in range(50)])
            got: list[dict] = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    while True:
                        got.append(json.loads(await ws.recv()))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        last = int(got[-1]["id"]) if got else 0
        assert f"since={last}" in closed.value.rcvd.reason
        async with websockets.connect(svc.ws + f"/ws/alerts?since={last}") as ws:
            rest = await recv_all(ws, 50 - len(got))
        assert [int(e["id"]) for e in got + rest] == list(range(1, 51))
        assert svc.runtime.metrics.registry.get_sample_value("deepfake_monitor_websocket_evictions_total") == 1


async def test_token_auth(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, server={"token": TOKEN})
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            assert (await http.get("/api/streams")).status_code == 401
            assert (await http.get("/api/streams", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await http.get("/api/streams", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
            assert (await http.get(f"/api/streams?access_token={TOKEN}")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200  # public by default for probes
        with pytest.raises(InvalidStatus):
            async with websockets.connect(svc.ws + "/ws/alerts"):
                pass
        async with websockets.connect(svc.ws + f"/ws/alerts?since=0&access_token={TOKEN}") as ws:
            await svc.runtime.bus.publish([status_event(1)])
            assert (await recv_all(ws, 1))[0]["id"] == "1"
        async with websockets.connect(svc.ws + "/ws/alerts", additional_headers={"Authorization": f"Bearer {TOKEN}"}):
            pass


def bearer_subprotocol(token: str) -> str:
    """What the dashboard offers: ``bearer.<base64url(token)>`` without padding."""
    return "bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def protocols(*names: str) -> list[Subprotocol]:
    return [Subprotocol(name) for name in names]


async def test_token_in_a_bearer_subprotocol(tmp_path: Path) -> None:
    # Browsers cannot set an Authorization header on a websocket, and a token in the URL lands
    # in uvicorn's and proxies' logs: the dashboard offers it as a subprotocol instead.
    async with running_service(make_settings(tmp_path, server={"token": TOKEN})) as svc:
        offered = protocols("cloudevents.json", bearer_subprotocol(TOKEN))
        async with websockets.connect(svc.ws + "/ws/alerts?since=0", subprotocols=offered) as ws:
            # Only the plain protocol is echoed: the bearer one would repeat the token.
            assert ws.subprotocol == "cloudevents.json"
            assert ws.response is not None
            assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["cloudevents.json"]
            await svc.runtime.bus.publish([status_event(1)])
            assert (await recv_all(ws, 1))[0]["id"] == "1"
        # Offered first works too; order does not matter.
        async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=offered[::-1]) as ws:
            assert ws.subprotocol == "cloudevents.json"


@pytest.mark.parametrize(
    "offered",
    [
        pytest.param(["cloudevents.json", bearer_subprotocol("w" * 32)], id="wrong-token"),
        pytest.param(["cloudevents.json", "bearer.dHR0!!"], id="not-base64url"),
        pytest.param(["cloudevents.json", "bearer.dHR0d"], id="bad-length"),
        pytest.param(["cloudevents.json", "bearer.__8"], id="not-utf8"),
        pytest.param(["cloudevents.json", "bearer."], id="empty"),
        pytest.param(["cloudevents.json"], id="no-token"),
        pytest.param([], id="no-subprotocol"),
    ],
)
async def test_bearer_subprotocol_refusals(tmp_path: Path, offered: list[str]) -> None:
    async with running_service(make_settings(tmp_path, server={"token": TOKEN})) as svc:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=protocols(*offered) or None):
                pass
        assert refused.value.response.status_code == 403  # refused, not a 500 from a crash
        rejected = svc.runtime.metrics.registry.get_sample_value(
            "deepfake_monitor_http_rejected_total", {"reason": "unauthorized"}
        )
        assert rejected == 1
        good = protocols("cloudevents.json", bearer_subprotocol(TOKEN))
        async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=good) as ws:
            assert ws.subprotocol == "cloudevents.json"


async def test_other_websocket_token_carriers_still_work(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path, server={"token": TOKEN})) as svc:
        plain = protocols("cloudevents.json")
        # The query parameter, for clients made before the subprotocol (it does get logged).
        async with websockets.connect(svc.ws + f"/ws/alerts?access_token={TOKEN}", subprotocols=plain) as ws:
            assert ws.subprotocol == "cloudevents.json"
        # A bearer header (non-browser clients), with or without a subprotocol.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with websockets.connect(svc.ws + "/ws/alerts", additional_headers=headers, subprotocols=plain) as ws:
            assert ws.subprotocol == "cloudevents.json"
        async with websockets.connect(svc.ws + "/ws/alerts", additional_headers=headers) as ws:
            assert ws.subprotocol is None
        # A subprotocol token still needs the cloudevents.json protocol offered with it.
        with pytest.raises(InvalidStatus):
            async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=protocols(bearer_subprotocol(TOKEN))):
                pass


async def test_wrong_subprotocol_refused(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            async with websockets.connect(svc.ws + "/ws/alerts", subprotocols=["mqtt"]) as ws:  # type: ignore[list-item]
                await ws.recv()


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"id": "a", "url": "rtsp://127.0.0.1:1/x", "colour": "red"}, 422, "colour"),
        ({"id": "bad id!", "url": "rtsp://127.0.0.1:1/x"}, 422, "id"),
        ({"id": "a", "url": "gopher://x"}, 400, "cannot infer a source"),
        ({"id": "a", "url": "/nonexistent/clip.mp4"}, 403, "server.api_file_roots (none configured)"),
        ({"id": "a", "url": "rtsp://127.0.0.1:1/x", "source": "nope"}, 400, "unknown plugin"),
        ({"id": "a", "url": "rtsp://127.0.0.1:1/x", "options": {"transport": "carrier-pigeon"}}, 400, "transport"),
    ],
)
async def test_add_stream_validation(tmp_path: Path, body: dict, status: int, needle: str) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", json=body)
            assert r.status_code == status, r.text
            assert needle in r.text
            assert (await http.get("/api/streams")).json() == []
            assert (await http.get("/healthz")).status_code == 200


async def test_stream_crud_and_errors(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            body = {"id": "cam1", "url": "rtsp://127.0.0.1:9/none", "options": {"open_timeout_s": 0.5}}
            r = await http.post("/api/streams", json=body)
            assert r.status_code == 201, r.text
            assert r.json()["id"] == "cam1" and r.json()["source"] == "rtsp"
            assert (await http.post("/api/streams", json=body)).status_code == 409
            assert (await http.get("/api/streams/cam1")).status_code == 200
            assert (await http.get("/api/streams/nope")).status_code == 404
            assert (await http.post("/api/streams", content=b"{not json", headers={"content-type": "application/json"})).status_code == 400
            # Nested deeper than the parser recurses (still under the body limit): 400, not 500.
            deep = await http.post("/api/streams", content=b"[" * 50_000, headers={"content-type": "application/json"})
            assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"], deep.text
            assert (await http.post("/api/streams", content=b"x" * 200_000)).status_code == 413
            assert (await http.delete("/api/streams/cam1")).status_code == 204
            assert (await http.delete("/api/streams/cam1")).status_code == 404
            assert (await http.get("/openapi.json")).json()["info"]["title"] == "deepfake-monitor"


async def test_an_api_stream_reads_a_ca_file_only_under_the_file_roots(tmp_path: Path) -> None:
    root = tmp_path / "certs"
    root.mkdir()
    (root / "ca.pem").write_text("not a certificate")
    async with running_service(make_settings(tmp_path, server={"api_file_roots": [str(root)]})) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            # Before: 400 "no such file" for a missing file and 201 for one that exists, anywhere.
            for path in ["/etc/passwd", "/nonexistent/ca.pem", str(root / ".." / "elsewhere.pem")]:
                body = {"id": "a", "url": "rtsps://127.0.0.1:9/x", "options": {"ca_file": path}}
                r = await http.post("/api/streams", json=body)
                assert r.status_code == 403 and "server.api_file_roots" in r.text, (path, r.text)
            body = {"id": "a", "url": "rtsps://127.0.0.1:9/x", "options": {"ca_file": str(root / "missing.pem")}}
            assert (await http.post("/api/streams", json=body)).status_code == 400
            body["options"] = {"ca_file": str(root / "ca.pem"), "open_timeout_s": 0.5}
            assert (await http.post("/api/streams", json=body)).status_code == 201


async def test_api_streams_connect_only_to_the_allowed_hosts(tmp_path: Path) -> None:
    hosts = ["cam1.LAN.", "127.0.0.0/30", "[::1]"]
    async with running_service(make_settings(tmp_path, server={"api_stream_hosts": hosts})) as svc:
        assert svc.runtime.settings.server.api_stream_hosts == ("cam1.lan", "127.0.0.0/30", "::1/128")
        async with httpx.AsyncClient(base_url=svc.base) as http:
            refused = {
                "rtsp://10.0.0.1/x": "10.0.0.1",
                "rtsps://cam2.lan/x": "cam2.lan",
                "rtsp://user:pw@127.0.0.4:554/x": "127.0.0.4",
                "rtsp://127.1/x": "127.1",  # what getaddrinfo reads as 127.0.0.1: names are not resolved
                "rtsp://[::2]/x": "::2",
                "http://169.254.169.254/whep": "169.254.169.254",
            }
            for url, host in refused.items():
                body = {"id": "a", "url": url} | ({"source": "whep"} if url.startswith("http") else {})
                r = await http.post("/api/streams", json=body)
                assert r.status_code == 403 and f"not to {host}" in r.text and "pw" not in r.text, (url, r.text)
            # URLs FFmpeg may still read a host from, where the allow-list sees none.
            for url in ("rtsp://:554/x", "rtsp://[127.0.0.1]/x", "rtsp://user@:8554/x"):
                r = await http.post("/api/streams", json={"id": "a", "url": url})
                assert r.status_code == 403 and "a URL without a host" in r.text, (url, r.text)
            # A WHEP endpoint that is allowed may not redirect to a host that is not.
            body = {"id": "a", "url": "http://127.0.0.1:9/whep", "source": "whep",
                    "options": {"redirect_origins": ["http://127.0.0.1:10", "http://evil.example"]}}
            r = await http.post("/api/streams", json=body)
            assert r.status_code == 403 and "not to evil.example" in r.text
            assert (await http.get("/api/streams")).json() == []

            for i, url in enumerate(["rtsp://CAM1.lan./x", "rtsp://127.0.0.3:9/x", "rtsp://[::1]:9/x", "demo://astronaut",
                                     "rtsp://admin:pa[ss@127.0.0.2:9/x"]):  # a raw "[" in a password is legal
                r = await http.post("/api/streams", json={"id": f"ok{i}", "url": url, "options": {"open_timeout_s": 0.5} if "rtsp" in url else {}})
                assert r.status_code == 201, (url, r.text)


async def test_an_api_stream_too_slow_to_keep_its_tracks_is_refused(tmp_path: Path) -> None:
    # Before: accepted (201) and "running", while every face started a new track on every frame.
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", json={"id": "slow", "url": "demo://astronaut", "analysis_fps": 0.5})
            assert r.status_code == 400 and "streams[slow].analysis_fps=0.5" in r.text and "track_lost_s" in r.text
            assert (await http.get("/api/streams")).json() == []
            assert (await http.post("/api/streams", json={"id": "ok", "url": "demo://astronaut", "analysis_fps": 2})).status_code == 201


@pytest.mark.parametrize("entry", ["", "cam 1", "10.0.0.0/33", "http://cam1", "*.lan", "a..b"])
def test_api_stream_hosts_entries_are_checked_at_load(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigError, match="api_stream_hosts"):
        make_settings(tmp_path, server={"api_stream_hosts": [entry]})


def test_config_rejects_unknown_keys_and_exposed_without_token(tmp_path: Path) -> None:
    from monitor.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis:\n  fps: 5\n  colour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="token"):
        load_settings(None, server={"host": "0.0.0.0"})
    assert load_settings(None, server={"host": "0.0.0.0", "token": TOKEN}).server.token == TOKEN


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("analysis:\n  fps: 5\nserver:\n  port: 9000\n")
    monkeypatch.setenv("MONITOR_ANALYSIS__FPS", "7")
    s = load_settings(cfg)
    assert s.analysis.fps == 7 and s.server.port == 9000


async def test_cross_site_requests_are_refused(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path, server={"cors_origins": ["https://dash.example"]})) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            # A no-cors fetch from another site sends text/plain: never accepted.
            r = await http.post("/api/streams", content=b'{"id":"x","url":"rtsp://127.0.0.1:9/x"}', headers={"content-type": "text/plain"})
            assert r.status_code == 415
            # DNS rebinding: a foreign Host header is refused while bound to loopback.
            assert (await http.get("/api/streams", headers={"host": "evil.example"})).status_code == 400
        port = svc.base.rsplit(":", 1)[1]
        for origin, ok in [("https://evil.example", False), ("https://dash.example", True), (f"http://127.0.0.1:{port}", True)]:
            if ok:
                async with websockets.connect(svc.ws + "/ws/alerts", origin=origin):  # type: ignore[arg-type]
                    pass
            else:
                with pytest.raises(InvalidStatus):
                    async with websockets.connect(svc.ws + "/ws/alerts", origin=origin):  # type: ignore[arg-type]
                        pass


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_loopback_host_is_trusted_and_rebinding_still_refused(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path, server={"host": "::1"})) as svc:
        port = svc.base.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://[::1]:{port}") as http:
            assert (await http.get("/api/streams")).status_code == 200  # Host: [::1]:PORT
            for host in ("evil.example", "127.0.0.2", f"evil.example:{port}"):
                assert (await http.get("/api/streams", headers={"host": host})).status_code == 400, host
        async with websockets.connect(f"ws://[::1]:{port}/ws/alerts?since=0") as ws:
            await svc.runtime.bus.publish([status_event(1)])
            assert (await recv_all(ws, 1))[0]["id"] == "1"


async def test_event_published_during_replay_is_neither_lost_nor_duplicated(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(3)])
        original = bus.replay_since
        injected = False

        async def read_and_publish(after_id: int, limit: int = 500) -> list[tuple[int, str]]:
            nonlocal injected
            rows = await original(after_id, limit)
            if not injected:  # a live event lands while the replay is being sent
                injected = True
                await bus.publish([status_event(99)])
            return rows

        bus.replay_since = read_and_publish  # type: ignore[method-assign]
        async with websockets.connect(svc.ws + "/ws/alerts?since=0") as ws:
            got = await recv_all(ws, 4)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await ws.recv()
        assert [int(e["id"]) for e in got] == [1, 2, 3, 4]


async def test_replay_ends_when_the_events_before_the_subscription_were_pruned(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        # ids 1-2 are recent, ids 3-4 old; pruning leaves a gap just below the subscription's start.
        await bus.publish([status_event(10), status_event(11), status_event(0), status_event(1)])
        assert await bus.on_log(bus.log.prune, 1_700_000_000.0 + 5) == 2
        original = bus.replay_since
        calls = 0

        async def publish_then_read(after_id: int, limit: int = 500) -> list[tuple[int, str]]:
            nonlocal calls
            calls += 1
            if calls == 1:  # id 5 lands after subscribe() but before the first replay read
                await bus.publish([status_event(12)])
            return await original(after_id, limit)

        bus.replay_since = publish_then_read  # type: ignore[method-assign]
        async with websockets.connect(svc.ws + "/ws/alerts?since=0") as ws:
            got = await recv_all(ws, 3, timeout=5)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await ws.recv()
        assert [int(e["id"]) for e in got] == [1, 2, 5]
        assert calls <= 2  # the replay stopped instead of re-reading the log forever


async def test_a_client_reading_the_log_never_holds_up_a_write(tmp_path: Path) -> None:
    # Clients' reads queued with the writes on one thread: clients replaying a long log made
    # every publish wait (p50 66 ms with 8 of them, 254 ms with 32), and the streams with it.
    import threading

    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(3)])
        release, reading = threading.Event(), threading.Event()
        original = bus.log.read_since

        def slow_read(*args: object) -> list[tuple[int, str]]:
            reading.set()
            release.wait(10)  # a long replay
            return original(*args)  # type: ignore[arg-type]

        bus.log.read_since = slow_read  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=svc.base) as http:
            pending = asyncio.create_task(http.get("/api/events?since=0"))
            await asyncio.to_thread(reading.wait, 10)
            try:
                async with asyncio.timeout(2):
                    stored = await bus.publish([status_event(3)])
            finally:
                release.set()
            assert [s.id for s in stored] == [4]
            assert [int(e["id"]) for e in (await pending).json()] == [1, 2, 3, 4]


def test_sinks_need_distinct_ids(tmp_path: Path) -> None:
    from monitor.errors import ConfigError

    hook = {"name": "webhook", "options": {"url": "http://127.0.0.1:9/h"}}
    with pytest.raises(ConfigError, match="duplicate sink ids"):
        load_settings(None, sinks=[hook, hook])
    s = load_settings(None, sinks=[{**hook, "id": "siem"}, {**hook, "id": "chat"}])
    assert [k.key for k in s.sinks] == ["siem", "chat"]


def test_cli_flags_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_SERVER__PORT", "7000")
    monkeypatch.setenv("MONITOR_ANALYSIS__MAX_FACES", "2")
    s = load_settings(None, server={"port": 7100})
    assert s.server.port == 7100 and s.analysis.max_faces == 2


def test_last_id_is_the_high_water_mark_not_lowered_by_pruning(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.sqlite3")
    assert log.last_id() == 0
    log.append([status_event(i) for i in range(4)])
    log.prune(1_700_000_000.0 + 100)  # every event pruned: ids 1..4 were still issued
    assert log.last_id() == 4 and log.read_since(0) == []


async def test_since_past_the_log_is_refused_not_awaited(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(3)])
        async with httpx.AsyncClient(base_url=svc.base) as http:
            assert (await http.get("/api/events?since=3")).json() == []
            r = await http.get("/api/events?since=10")
            assert r.status_code == 409
            assert r.json()["last_id"] == 3 and "reset" in r.json()["error"] and "since=0" in r.json()["error"]
            assert (await http.get("/api/events?since=10&last=2")).status_code == 200  # `last` ignores since
        with pytest.raises(ConnectionClosed) as closed:
            async with websockets.connect(svc.ws + "/ws/alerts?since=10", subprotocols=["cloudevents.json"]) as ws:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
        assert "since=10 > last id 3" in closed.value.rcvd.reason and "since=0" in closed.value.rcvd.reason
        assert not bus._subs
        # An id the log did issue still resumes normally.
        async with websockets.connect(svc.ws + "/ws/alerts?since=3", subprotocols=["cloudevents.json"]) as ws:
            await bus.publish([status_event(3)])
            assert (await recv_all(ws, 1))[0]["id"] == "4"


async def test_alerts_client_restarts_from_the_start_after_a_log_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io

    from monitor.alerts.client import tail

    out = io.StringIO()
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(2)])  # the new log, after a reset
        # The client last saw id 50 of the old log.
        task = asyncio.create_task(tail(svc.ws + "/ws/alerts", since=50, out=out))
        try:
            async with asyncio.timeout(10):
                while out.getvalue().count("\n") < 2:
                    await asyncio.sleep(0.05)
                await bus.publish([status_event(2)])
                while out.getvalue().count("\n") < 3:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["1", "2", "3"]
    assert any("since=50" in r.getMessage() and "start of the log" in r.getMessage() for r in caplog.records)


async def test_a_stream_id_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    # `$` matches before a final newline: "abc\n" passed and reached logs, metric labels and
    # CloudEvent sources.
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            for bad in ("abc\n", "abc\r\n", "\nabc"):
                r = await http.post("/api/streams", json={"id": bad, "url": "rtsp://127.0.0.1:9/none"})
                assert r.status_code == 422, (bad, r.text)
                assert r.json()["detail"][0]["loc"] == ["id"]
            assert (await http.get("/api/streams")).json() == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"id": "cam", "url": "rtsp://127.0.0.1:9/x", "loop": NaN}', id="NaN-in-a-bad-field"),
        pytest.param('{"id": NaN, "url": "rtsp://127.0.0.1:9/x"}', id="NaN-id"),
        pytest.param('{"id": "cam", "url": "rtsp://127.0.0.1:9/x", "analysis_fps": 1e309}', id="overflow-to-inf"),
        pytest.param('{"id": "cam", "url": "rtsp://127.0.0.1:9/x", "analysis_fps": -Infinity}', id="-Infinity"),
        pytest.param('{"id": "cam", "url": "rtsp://127.0.0.1:9/x", "options": {"x": Infinity}}', id="Infinity-in-options"),
    ],
)
async def test_non_finite_numbers_are_refused_as_bad_json(tmp_path: Path, body: str) -> None:
    # Python's json accepts them; echoed in a 422 they made JSONResponse fail: a 500 in text/plain.
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.headers["content-type"] == "application/json"
            assert "finite" in r.json()["detail"]
            assert (await http.get("/api/streams")).json() == []


async def test_validation_errors_do_not_echo_the_values_sent(tmp_path: Path) -> None:
    secret = "hunter2-rtsp-password"
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            # A misspelt `url`: "missing" echoed the whole body, "extra" the URL with its password.
            r = await http.post("/api/streams", json={"id": "cam", "uri": f"rtsp://admin:{secret}@10.0.0.5/live"})
            assert r.status_code == 422, r.text
            assert secret not in r.text
            assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("url",), ("uri",)}
            assert all(set(e) == {"type", "loc", "msg"} for e in r.json()["detail"])
            # Query parameters too (FastAPI's own 422).
            r = await http.get(f"/api/events?limit={secret}")
            assert r.status_code == 422 and secret not in r.text
            assert r.json()["detail"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize("raw", ["Hash#Secret1", "Slash/Secret2", "Query?Secret3"])
async def test_a_password_with_a_raw_url_delimiter_is_refused_and_never_shown(tmp_path: Path, raw: str) -> None:
    # A raw '#', '/' or '?' ends the URL's host part: the redaction, which looked only there,
    # left the password in the POST answer, the stream status, its events and the logs, and the
    # stream retried for ever a URL that could never connect.
    from monitor.config import redact_url
    from monitor.sources.base import redact_text

    url = f"rtsp://admin:{raw}@127.0.0.1:9/stream"
    assert raw not in redact_url(url) and raw not in redact_text(f"cannot open '{url}': Invalid argument", url)
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", json={"id": "cam", "url": url})
            assert r.status_code == 422 and raw not in r.text and "Percent-encode" in r.text, r.text
            assert (await http.get("/api/streams")).json() == []
    with pytest.raises(ConfigError) as err:
        load_settings(None, streams=[{"id": "cam", "url": url}])
    assert raw not in str(err.value)
    # Encoded, it is a valid URL; an '@' in a path or an empty port stays valid too.
    for ok in (f"rtsp://admin:{quote(raw, safe='')}@127.0.0.1:9/stream", "rtsp://cam.local/a@b", "rtsp://cam.local:/s"):
        assert load_settings(None, streams=[{"id": "cam", "url": ok}]).streams[0].url == ok


@pytest.mark.parametrize("since", ["-1", "-100000000000000000000000", str(2**63), "abc", "1.5", "", "1e3"])
async def test_a_since_no_event_id_can_have_is_refused_with_a_reason(tmp_path: Path, since: str) -> None:
    # Below -2^63 the log's query overflowed and the connection dropped with no code or reason.
    async with running_service(make_settings(tmp_path)) as svc:
        await svc.runtime.bus.publish([status_event(1)])
        with pytest.raises(ConnectionClosed) as closed:
            async with websockets.connect(svc.ws + f"/ws/alerts?since={since}", subprotocols=["cloudevents.json"]) as ws:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "since must be an event id" in closed.value.rcvd.reason


async def test_api_events_refuses_a_since_past_any_id_and_ignores_an_empty_epoch(tmp_path: Path) -> None:
    # Before: a since past 2^63 - 1 answered 409 "event log reset" (telling the client to replay
    # everything) instead of 422, and `epoch=` (empty) counted as another log's epoch.
    async with running_service(make_settings(tmp_path)) as svc:
        await svc.runtime.bus.publish([status_event(i) for i in range(3)])
        async with httpx.AsyncClient(base_url=svc.base) as http:
            assert (await http.get(f"/api/events?since={2**63}")).status_code == 422
            r = await http.get("/api/events?since=2&epoch=")
            assert r.status_code == 200 and [e["id"] for e in r.json()] == ["3"]
        async with websockets.connect(svc.ws + "/ws/alerts?since=2&epoch=", subprotocols=["cloudevents.json"]) as ws:
            assert [e["id"] for e in await recv_all(ws, 1)] == ["3"]


async def test_a_websocket_whose_resume_check_fails_is_closed_and_unsubscribed(tmp_path: Path) -> None:
    # Before: an error reading the log's last id (a damaged log being swapped, an I/O error)
    # dropped the connection with no close frame and left its subscription behind, filling up
    # to queue_size events for good, one more for every retry of the client.
    import sqlite3

    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(3)])

        async def failing_last_id(*args: object) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        bus.last_id = failing_last_id  # type: ignore[method-assign]
        for _ in range(3):
            with pytest.raises(ConnectionClosed) as closed:
                async with websockets.connect(svc.ws + "/ws/alerts?since=10", subprotocols=["cloudevents.json"]) as ws:
                    async with asyncio.timeout(5):
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            assert closed.value.rcvd.reason == "event log unavailable; retry with the same since"
        assert not bus._subs


@pytest.mark.parametrize("url", ["rtsp://127.0.0.1:9/x\r\nSET pwned 1\r\nQUIT", "http://127.0.0.1:9/whep\r\nFoo: bar", "rtsp://127.0.0.1:9/a\x00b"])
async def test_a_stream_url_with_control_characters_is_refused(tmp_path: Path, url: str) -> None:
    # Line breaks reached the RTSP request line: any lines to any host the service can reach.
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            body = {"id": "cam", "url": url, **({"source": "whep"} if "whep" in url else {})}
            r = await http.post("/api/streams", json=body)
            assert r.status_code == 422 and "control characters" in r.text and "pwned" not in r.text, r.text
            assert (await http.get("/api/streams")).json() == []


async def test_with_public_metrics_off_metrics_and_health_need_the_token(tmp_path: Path) -> None:
    # The metrics name every stream and count its alerts: an operator who turns them private
    # must not find them served to anyone.
    settings = make_settings(tmp_path, server={"token": TOKEN, "public_metrics": False})
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            for path, body in (("/metrics", "deepfake_monitor_streams_active"), ("/healthz", '"status"')):
                assert (await http.get(path)).status_code == 401, path
                assert (await http.get(path, headers={"Authorization": "Bearer " + "x" * 32})).status_code == 401, path
                ok = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert ok.status_code == 200 and body in ok.text, path


async def test_a_chunked_body_is_held_to_the_size_limit_too(tmp_path: Path) -> None:
    # Without a Content-Length only the bytes received can be counted: a chunked body over
    # server.max_body_bytes is cut off with 413, and nothing it asked for is created.
    async with running_service(make_settings(tmp_path, server={"max_body_bytes": 4096})) as svc:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"id": "cam1", "url": "rtsp://127.0.0.1:9/x", "options": {"open_timeout_s": 0.5}, "pad": "'
            for _ in range(50):
                yield b"p" * 1024
            yield b'"}'

        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", content=chunks(), headers={"Content-Type": "application/json"})
            assert r.status_code == 413, r.text
            assert r.request.headers["transfer-encoding"] == "chunked" and "content-length" not in r.request.headers
            assert (await http.get("/api/streams")).json() == []
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "too_large"}) == 1


async def test_a_body_of_exactly_the_size_limit_is_accepted_chunked_or_not(tmp_path: Path) -> None:
    # The same body, whether it declares its length or not: the limit is inclusive both ways.
    async with running_service(make_settings(tmp_path, server={"max_body_bytes": 4096})) as svc:
        def body(i: int) -> bytes:
            raw = json.dumps({"id": f"cam{i}", "url": "rtsp://127.0.0.1:9/x", "options": {"open_timeout_s": 0.5}}).encode()
            return raw + b" " * (4096 - len(raw))  # JSON allows trailing whitespace

        async def chunked(data: bytes) -> AsyncIterator[bytes]:
            for k in range(0, len(data), 1000):
                yield data[k:k + 1000]

        async with httpx.AsyncClient(base_url=svc.base) as http:
            declared = await http.post("/api/streams", content=body(1), headers={"Content-Type": "application/json"})
            streamed = await http.post("/api/streams", content=chunked(body(2)), headers={"Content-Type": "application/json"})
            assert (declared.status_code, streamed.status_code) == (201, 201), (declared.text, streamed.text)
            assert len(body(1)) == 4096 and "content-length" not in streamed.request.headers


async def test_no_swagger_or_redoc_pages_only_the_openapi_document(tmp_path: Path) -> None:
    # Both pages load their code from cdn.jsdelivr.net, and were served without the token.
    settings = make_settings(tmp_path, server={"token": TOKEN, "public_metrics": False})
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
                r = await http.get(path)
                assert r.status_code == 404, (path, r.status_code)
                assert "cdn.jsdelivr.net" not in r.text
            assert (await http.get("/openapi.json")).json()["info"]["title"] == "deepfake-monitor"


async def test_an_oversized_request_head_is_refused_before_it_ends(tmp_path: Path) -> None:
    # httptools buffered any header until its end: a few unauthenticated clients sending one
    # that never ends held hundreds of MB.
    async with running_service(make_settings(tmp_path, server={"token": TOKEN})) as svc:
        port = int(svc.base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = b""
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            try:
                for _ in range(16):  # 1 MiB of one header, never finished
                    writer.write(b"a" * 65536)
                    await writer.drain()
            except ConnectionError:
                pass  # the server closed on us mid-send: refused
            try:
                async with asyncio.timeout(10):  # refused without waiting for the end of the head
                    answer = await reader.read(200)
            except ConnectionError:
                answer = b""
        finally:
            writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
        # A complete 300 KB head in one write: httptools took it whole; h11 stops at about 128 KiB.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
            try:
                await writer.drain()
                async with asyncio.timeout(10):
                    answer = await reader.read(200)
            except ConnectionError:
                answer = b""
        finally:
            writer.close()
        assert not answer.startswith(b"HTTP/1.1 2"), answer
        async with httpx.AsyncClient(base_url=svc.base) as http:
            assert (await http.get("/healthz")).status_code == 200
            ok = await http.get("/api/streams", headers={"Authorization": f"Bearer {TOKEN}", "X-Normal": "n" * 4096})
            assert ok.status_code == 200


async def test_api_file_streams_only_under_the_configured_roots(tmp_path: Path) -> None:
    from monitor.sources.demo_media import write_clip

    media = tmp_path / "media"
    media.mkdir()
    clip = write_clip(media / "rec.mp4", 1.0, fps=10, width=160, height=120)
    outside = write_clip(tmp_path / "elsewhere.mp4", 1.0, fps=10, width=160, height=120)
    (media / "link.mp4").symlink_to(outside)
    settings = make_settings(tmp_path, server={"token": TOKEN, "api_file_roots": [str(media)]})
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            refused = [
                str(outside),  # exists, outside the root
                "/etc/passwd",  # exists: refused exactly like a missing file, so nothing is learnt
                "/nonexistent/clip.mp4",
                f"{media}/../elsewhere.mp4",  # resolved before the check
                str(media / "link.mp4"),  # a link out of the root
                "media/rec.mp4",  # relative: depends on the service's working directory
            ]
            for i, url in enumerate(refused):
                r = await http.post("/api/streams", json={"id": f"no{i}", "url": url})
                assert r.status_code == 403 and "server.api_file_roots" in r.text, (url, r.text)
            r = await http.post("/api/streams", json={"id": "nul", "url": f"{media}/rec\x00.mp4"})  # not a 500
            assert r.status_code == 422 and "control characters" in r.text, r.text
            r = await http.post("/api/streams", json={"id": "gone", "url": f"{media}/missing.mp4"})
            assert r.status_code == 400 and "file not found" in r.text, r.text  # under a root: said at once
            r = await http.post("/api/streams", json={"id": "ok", "url": f"file://{clip}", "realtime": False})
            assert r.status_code == 201, r.text
            assert [s["id"] for s in (await http.get("/api/streams")).json()] == ["ok"]


async def test_a_configured_file_missing_at_start_fails_its_stream_only(tmp_path: Path) -> None:
    # Before: the service started the other streams, stopped them and exited ("file not found"),
    # leaving every camera unwatched because a share was not mounted yet.
    from monitor.sources.demo_media import write_clip

    clip = write_clip(tmp_path / "rec.mp4", 2.0, fps=10, width=160, height=120)
    streams = [{"id": "gone", "url": str(tmp_path / "not-mounted" / "rec.mp4")},
               {"id": "here", "url": str(clip), "loop": True}]
    async with running_service(make_settings(tmp_path, streams=streams)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            async with asyncio.timeout(30):
                while True:
                    states = {s["id"]: s for s in (await http.get("/api/streams")).json()}
                    if states["gone"]["state"] == "failed" and states["here"]["state"] == "running":
                        break
                    await asyncio.sleep(0.05)
    assert "no such file" in states["gone"]["last_error"]


async def test_alert_websocket_clients_are_capped(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path, server={"max_ws_clients": 2})) as svc:
        url = svc.ws + "/ws/alerts"
        async with websockets.connect(url) as first, websockets.connect(url):
            third = await websockets.connect(url)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert "at most 2" in closed.value.rcvd.reason
            await first.close()
            # A place is free again once a client leaves.
            deadline = asyncio.get_running_loop().time() + 10
            while svc.runtime.metrics.registry.get_sample_value("deepfake_monitor_websocket_clients") != 1:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
            async with websockets.connect(url) as again:
                await svc.runtime.bus.publish([status_event(1)])
                assert json.loads(await asyncio.wait_for(again.recv(), 10))["id"] == "1"
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "too_many_clients"}) == 1


async def test_a_lone_surrogate_in_a_body_is_refused(tmp_path: Path) -> None:
    # Valid JSON text but no UTF-8 string: the stream was added, then every listing failed (500).
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            body = b'{"id": "w", "source": "whep", "url": "http://127.0.0.1:9/x\\ud800"}'
            r = await http.post("/api/streams", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "surrogate" in r.json()["detail"], r.text
            listing = await http.get("/api/streams")
            assert listing.status_code == 200 and listing.json() == []


async def test_connections_past_max_connections_are_dropped_as_they_connect(tmp_path: Path) -> None:
    # Before: nothing bounded idle connections but the open-file limit; about a thousand from
    # anyone used every descriptor, and /healthz, WHIP and the cameras' reconnects failed.
    settings = make_settings(tmp_path, server={"max_connections": 4, "request_timeout_s": 60.0})
    async with running_service(settings) as svc:
        port = int(svc.base.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.2)  # all four accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # dropped, not answered
        except ConnectionResetError:
            pass  # an abort may arrive as a reset
        writer.close()
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "too_many_connections"}) == 1
        for _, w in held:
            w.close()
        deadline = time.monotonic() + 10
        while True:  # the held ones' places come free once the server sees them close
            async with httpx.AsyncClient(base_url=svc.base) as http:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            assert time.monotonic() < deadline, "no place came free"
            await asyncio.sleep(0.1)


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from monitor.app import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        want = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
        assert raise_open_file_limit() == want
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
        assert raise_open_file_limit(ceiling=low) == want  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_slow_clients_are_cut_off_at_the_request_timeout(tmp_path: Path) -> None:
    # uvicorn alone kept a connection that sent nothing, or a head a byte at a time, open for
    # ever, and a handler waited for ever on a trickled body (slowloris).
    settings = make_settings(tmp_path, server={"token": TOKEN, "request_timeout_s": 1.0})
    async with running_service(settings) as svc:
        port = int(svc.base.rsplit(":", 1)[1])

        async def answer_to(data: bytes) -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = asyncio.get_running_loop().time()
            try:
                writer.write(data)
                await writer.drain()
                async with asyncio.timeout(30):
                    return await reader.read(), asyncio.get_running_loop().time() - started
            finally:
                writer.close()

        silent, waited = await answer_to(b"")
        assert silent == b"" and 0.9 < waited < 20, (silent, waited)
        partial, waited = await answer_to(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert partial == b"" and 0.9 < waited < 20, (partial, waited)
        # A kept-alive connection: one request answered, the next head never finished.
        pipelined, waited = await answer_to(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost:")
        assert pipelined.startswith(b"HTTP/1.1 200") and pipelined.count(b"HTTP/1.1") == 1, pipelined
        assert 0.9 < waited < 20, waited
        head = (
            f"POST /api/streams HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\": "
        )
        trickled, waited = await answer_to(head.encode())
        assert trickled.startswith(b"HTTP/1.1 408"), trickled
        assert b"request_timeout_s" in trickled and 0.9 < waited < 20, (trickled, waited)
        # One deadline for the whole body, not one per chunk: a byte every 0.4 s (the 100 bytes
        # would take 40 s) is cut off at the request timeout all the same.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    await asyncio.sleep(0.4)
                    writer.write(b" ")
                    await writer.drain()

        writer.write(head.encode())
        dripping = asyncio.create_task(drip())
        try:
            async with asyncio.timeout(30):
                dripped = await reader.read()
            waited = asyncio.get_running_loop().time() - started
        finally:
            dripping.cancel()
            writer.close()
        assert dripped.startswith(b"HTTP/1.1 408") and waited < 8, (dripped, waited)

        # A kept-alive connection serves one request after another; an open websocket and
        # well-behaved clients are not affected.
        async with websockets.connect(svc.ws + "/ws/alerts", additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
                for _ in range(3):
                    assert (await http.get("/api/streams")).status_code == 200
                    await asyncio.sleep(0.6)
                await asyncio.sleep(1.0)
                await ws.ping()
                r = await http.post("/api/streams", json={"id": "x", "url": "rtsp://127.0.0.1:9/none"})
                assert r.status_code == 201, r.text
        timeouts = svc.runtime.metrics.registry.get_sample_value("deepfake_monitor_http_rejected_total", {"reason": "timeout"})
        assert timeouts == 5


async def test_a_resume_from_another_logs_epoch_is_refused_even_when_its_id_exists(tmp_path: Path) -> None:
    # A log replaced (data_dir wiped, a file restored) restarts its ids; once it has grown past a
    # client's `since`, the id alone cannot tell, and the client skipped the new log's first
    # events. The log's epoch, on every event, can.
    async with running_service(make_settings(tmp_path)) as svc:
        bus = svc.runtime.bus
        await bus.publish([status_event(i) for i in range(5)])
        epoch = bus.log.epoch
        other = "0123456789abcdef"
        assert len(epoch) == 16 and epoch != other
        async with httpx.AsyncClient(base_url=svc.base) as http:
            events = (await http.get("/api/events?since=0")).json()
            assert {e["logepoch"] for e in events} == {epoch}
            assert [e["id"] for e in (await http.get(f"/api/events?since=2&epoch={epoch}")).json()] == ["3", "4", "5"]
            r = await http.get(f"/api/events?since=2&epoch={other}")
            assert r.status_code == 409 and r.json()["epoch"] == epoch and r.json()["last_id"] == 5
            assert other in r.json()["error"] and "since=0" in r.json()["error"]
        with pytest.raises(ConnectionClosed) as closed:
            async with websockets.connect(svc.ws + f"/ws/alerts?since=2&epoch={other}", subprotocols=["cloudevents.json"]) as ws:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409 and other in closed.value.rcvd.reason
        # A non-hex epoch is not echoed: 16 emoji made the close frame too long for the
        # protocol, the close failed (1006) and `monitor alerts` retried for ever.
        with pytest.raises(ConnectionClosed) as closed:
            async with websockets.connect(svc.ws + "/ws/alerts?since=2&epoch=" + "%F0%9F%98%80" * 16, subprotocols=["cloudevents.json"]) as ws:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409 and "since=0" in closed.value.rcvd.reason
        async with websockets.connect(svc.ws + f"/ws/alerts?since=4&epoch={epoch}", subprotocols=["cloudevents.json"]) as ws:
            assert [e["id"] for e in await recv_all(ws, 1)] == ["5"]
            # A binary frame (a client's or proxy's keep-alive) is ignored like text: it dropped
            # the connection with no close frame.
            await ws.send(b"\x00ping")
            await bus.publish([status_event(6)])
            assert [e["id"] for e in await recv_all(ws, 1)] == ["6"]
        # From the start, as the close reason says, any log will do: a stale epoch is ignored.
        async with websockets.connect(svc.ws + f"/ws/alerts?since=0&epoch={other}", subprotocols=["cloudevents.json"]) as ws:
            assert len(await recv_all(ws, 5)) == 5
    # Kept for the file's life; another file gets another.
    reopened = EventLog(tmp_path / "data" / "events.sqlite3")
    fresh = EventLog(tmp_path / "fresh.sqlite3")
    try:
        assert reopened.epoch == epoch and fresh.epoch not in (epoch, "")
    finally:
        reopened.close()
        fresh.close()


def test_a_log_restored_from_a_backup_gets_a_new_epoch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The backup carries the epoch: once the restored log grew past a client's id again, that
    # client resumed there and skipped the ids the backup had lost.
    import shutil

    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.append([status_event(i) for i in range(10)])
    epoch = log.epoch
    log.close()
    shutil.copy(path, tmp_path / "backup.sqlite3")
    log = EventLog(path)
    log.append([status_event(i) for i in range(40)])
    assert log.epoch == epoch and log.last_id() == 50
    log.close()
    shutil.copy(tmp_path / "backup.sqlite3", path)
    restored = EventLog(path)
    try:
        assert restored.last_id() == 10 and restored.epoch != epoch
        assert "restored from a backup" in caplog.text
        # Id 11 comes again, for another event: CloudEvents' (source, id) must not repeat, or a
        # receiver de-duplicating by them (webhook sinks) would drop it as already seen.
        restored.append([status_event(99)])
        new = json.loads(restored.read_since(10)[0][1])
        assert new["id"] == "11" and new["source"] == f"/monitor/logs/{restored.epoch}/streams/cam0"
    finally:
        restored.close()
    again = EventLog(path)  # and it keeps that new epoch
    try:
        assert again.epoch == restored.epoch
    finally:
        again.close()


def test_a_backup_restored_into_an_empty_data_dir_gets_a_new_epoch(tmp_path: Path) -> None:
    # As operations.md says to back it up: the file, not its mark. Restored into a new data_dir
    # (a new machine), it kept its epoch, and a client resuming at an id past the copy, with that
    # epoch, silently skipped the new events that reused those ids (and so did the Redis sink).
    import shutil

    # The log's first run, never restarted: until 2026-11-27 the log knew it had a mark only
    # once a later start had found it, so a backup taken during the first run kept its epoch.
    old, new = tmp_path / "old", tmp_path / "new"
    log = EventLog(old / "events.sqlite3")
    log.append([status_event(i) for i in range(5)])
    epoch = log.epoch
    log._db.execute("PRAGMA wal_checkpoint(FULL)")  # as sqlite3's .backup copies it: everything so far
    shutil.copy(old / "events.sqlite3", tmp_path / "backup.sqlite3")
    log.append([status_event(i) for i in range(5)])  # a client got up to id 10 of this epoch
    log.close()
    new.mkdir()
    shutil.copy(tmp_path / "backup.sqlite3", new / "events.sqlite3")
    restored = EventLog(new / "events.sqlite3")
    try:
        assert restored.last_id() == 5 and restored.epoch != epoch
    finally:
        restored.close()
    # A mark that could not be written (a full disk at the first start after an upgrade) is no
    # restore: the epoch stays, or every client replays all. (The first mark is synced before the
    # log says it has one, so a crash cannot lose it.)
    (tmp_path / "upgraded").mkdir()
    (tmp_path / "upgraded" / "events.sqlite3.mark.tmp").mkdir()  # where the mark is written first: refused
    first = EventLog(tmp_path / "upgraded" / "events.sqlite3")
    first.append([status_event(1)])
    first_epoch = first.epoch
    first.close()
    assert not (tmp_path / "upgraded" / "events.sqlite3.mark").exists()
    (tmp_path / "upgraded" / "events.sqlite3.mark.tmp").rmdir()
    second = EventLog(tmp_path / "upgraded" / "events.sqlite3")
    try:
        assert second.epoch == first_epoch
    finally:
        second.close()
    # A log from before marks (or a new one) has never had one: its epoch stays.
    fresh = EventLog(tmp_path / "fresh" / "events.sqlite3")
    fresh_epoch = fresh.epoch
    fresh.close()
    (tmp_path / "fresh" / "events.sqlite3.mark").unlink()
    reopened = EventLog(tmp_path / "fresh" / "events.sqlite3")
    try:
        assert reopened.epoch == fresh_epoch  # empty: nothing a client could have seen
    finally:
        reopened.close()


def test_the_alerts_client_resumes_with_the_epoch_of_its_last_event() -> None:
    from monitor.alerts.client import with_since

    url = "ws://127.0.0.1:8080/ws/alerts?since=3&epoch=old"
    assert with_since(url, 7, "abc") == "ws://127.0.0.1:8080/ws/alerts?since=7&epoch=abc"
    assert with_since(url, 7) == "ws://127.0.0.1:8080/ws/alerts?since=7"
    assert with_since(url, None, "abc") == "ws://127.0.0.1:8080/ws/alerts"


async def test_responses_carry_security_headers_and_api_answers_are_not_cached(tmp_path: Path) -> None:
    # Before: any site could frame the dashboard (a no-token loopback one is fully usable there),
    # nothing stopped MIME sniffing, and stream and event listings could sit in caches.
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            for path in ("/", "/app.js", "/api/streams", "/api/events", "/healthz", "/nowhere"):
                r = await http.get(path)
                assert r.headers["x-content-type-options"] == "nosniff", path
                assert r.headers["x-frame-options"] == "DENY", path
                assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            for path in ("/api/streams", "/api/events"):
                assert (await http.get(path)).headers["cache-control"] == "no-store", path
            assert "script-src 'self'" in (await http.get("/")).headers["content-security-policy"]
            # Same-origin fetches and the page's own websocket only: `ws: wss:` allowed any host.
            csp = (await http.get("/")).headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["connect-src"] == "'self'"


async def test_streams_carry_the_policy_thresholds_their_states_follow(tmp_path: Path) -> None:
    # Before: the API exposed no thresholds, and the dashboard explained every score against
    # 50% and 70% whatever the configuration said.
    settings = make_settings(tmp_path, policy={"suspicious_enter": 0.3, "alert_enter": 0.85})
    expected = {"suspicious_enter": 0.3, "alert_enter": 0.85}
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as http:
            r = await http.post("/api/streams", json={"id": "cam1", "url": "rtsp://127.0.0.1:9/none"})
            assert r.status_code == 201 and r.json()["policy"] == expected, r.text
            assert [s["policy"] for s in (await http.get("/api/streams")).json()] == [expected]
            assert (await http.get("/api/streams/cam1")).json()["policy"] == expected
            spec = (await http.get("/openapi.json")).json()
            assert "`policy`" in spec["paths"]["/api/streams"]["get"]["description"]


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.0.0.1:8080/", True),
        ("http://127.0.0.1:80801", False),
        ("http://127.0.0.1:8080.evil.example", False),
        ("http://127.0.0.1:8080@evil.example", False),
    ],
)
def test_only_the_same_origin_passes_the_origin_check(origin: str, ok: bool) -> None:
    from monitor.api.http import origin_allowed

    assert origin_allowed(origin, "127.0.0.1:8080", set()) is ok


def test_a_site_whose_name_starts_with_the_host_is_another_origin() -> None:
    from monitor.api.http import origin_allowed

    # Served on port 80 (Host: monitor.lan): a page on monitor.lan.evil.example is not it.
    assert origin_allowed("http://monitor.lan", "monitor.lan", set())
    assert not origin_allowed("http://monitor.lan.evil.example", "monitor.lan", set())
