"""The service end to end over real loopback parts: a gst-rtsp-server streaming an animated
real face, garbage servers, corrupt files, the alert websocket across a process restart,
and a real Prometheus scrape."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import websockets

from monitor.config import Settings, load_settings
from monitor.sources.demo_media import write_clip
from tests.support import dashboards
from tests.support.media import corrupt_clip, text_file
from tests.support.prometheus import Prometheus, promtool_check_metrics
from tests.support.rtsp_server import GarbageRtspServer, RtspServer
from tests.support.service import MONITOR, ServiceProcess, running_service

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", demo=False, **kw)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def stream_status(http: httpx.AsyncClient, stream_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/streams/{stream_id}")
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


async def test_rtsp_stream_tracks_face_reconnects_after_server_restart(tmp_path: Path) -> None:
    with RtspServer(width=640, height=480, fps=30) as server:
        async with running_service(settings_for(tmp_path)) as svc, httpx.AsyncClient(base_url=svc.base, timeout=10) as http:
            async with websockets.connect(svc.ws + "/ws/alerts?since=0", subprotocols=["cloudevents.json"]) as ws:
                r = await http.post("/api/streams", json={"id": "cam", "url": server.url, "options": {"read_timeout_s": 1.0}})
                assert r.status_code == 201, r.text

                # MediaPipe really tracks the face: a track appears and gets a verdict event.
                async def track_event() -> dict[str, Any]:
                    while True:
                        event = json.loads(await ws.recv())
                        if event["type"] == "io.deepfake-monitor.track.state.v1":
                            return event
                event = await asyncio.wait_for(track_event(), 30)
                assert event["subject"] == "streams/cam/tracks/1"
                st = await wait_for(lambda: _tracks_with_score(http), 20, "a scored face track")
                assert st["state"] == "running" and st["width"] == 640
                # Sampled at analysis.fps (10 of 30 frames), not every frame. Counts, not the
                # rate meter: a rate over a short window swings on a loaded machine.
                assert 0.15 <= st["frames_analysed"] / st["frames_received"] <= 0.5, st

                # Kill the server: the source notices (read timeout) and keeps retrying.
                server.kill()
                await wait_for(lambda: _state_is(http, "reconnecting"), 15, "state reconnecting")
                assert (await http.get("/healthz")).status_code == 200
                before = await stream_status(http, "cam")

                server.restart()
                st = await wait_for(lambda: _running_with_more_frames(http, before["frames_received"] + 30), 30, "frames after restart")
                assert st["reconnects"] >= 1
                # Analysis resumes too, not only decoding.
                await wait_for(lambda: _frames_at_least(http, "cam", before["frames_analysed"] + 5), 20, "analysis after restart")
                sample = svc.runtime.metrics.registry.get_sample_value
                assert sample("deepfake_monitor_source_reconnects_total", {"stream": "cam"}) >= 1
                assert sample("deepfake_monitor_frames_analysed_total", {"stream": "cam"}) >= before["frames_analysed"] + 5
                # A removed stream takes its per-stream series with it.
                assert (await http.delete("/api/streams/cam")).status_code == 204
                assert sample("deepfake_monitor_frames_analysed_total", {"stream": "cam"}) is None


async def _tracks_with_score(http: httpx.AsyncClient) -> dict[str, Any] | None:
    st = await stream_status(http, "cam")
    return st if any(t["score"] is not None for t in st["tracks"]) else None


async def _state_is(http: httpx.AsyncClient, state: str) -> bool:
    return (await stream_status(http, "cam"))["state"] == state


async def _running_with_more_frames(http: httpx.AsyncClient, frames: int) -> dict[str, Any] | None:
    st = await stream_status(http, "cam")
    return st if st["state"] == "running" and st["frames_received"] > frames else None


@pytest.mark.parametrize("mode", ["random", "bad_sdp", "close"])
async def test_garbage_rtsp_is_reported_and_service_stays_up(tmp_path: Path, mode: str) -> None:
    with RtspServer(width=320, height=240, fps=15) as good, GarbageRtspServer(mode) as bad:
        async with running_service(settings_for(tmp_path)) as svc, httpx.AsyncClient(base_url=svc.base, timeout=10) as http:
            assert (await http.post("/api/streams", json={"id": "good", "url": good.url})).status_code == 201
            r = await http.post("/api/streams", json={"id": "bad", "url": bad.url, "options": {"open_timeout_s": 1, "read_timeout_s": 1}})
            assert r.status_code == 201

            async def bad_reported() -> dict[str, Any] | None:
                st = await stream_status(http, "bad")
                return st if st["last_error"] and st["reconnects"] >= 1 else None

            st = await wait_for(bad_reported, 30, "the garbage stream's error")
            assert st["state"] in ("reconnecting", "starting", "running")
            # The healthy stream is unaffected and the service answers.
            await wait_for(lambda: _frames_at_least(http, "good", 30), 20, "frames on the good stream")
            assert (await http.get("/healthz")).json()["status"] == "ok"
            events = (await http.get("/api/events?since=0&limit=1000")).json()
            assert any(e["data"].get("stream_id") == "bad" and e["data"].get("state") == "reconnecting" for e in events)


async def _frames_at_least(http: httpx.AsyncClient, stream: str, n: int) -> bool:
    return (await stream_status(http, stream))["frames_analysed"] >= n


async def test_corrupt_file_counts_decode_errors_and_ends(tmp_path: Path) -> None:
    clip = corrupt_clip(tmp_path / "corrupt.mp4", seconds=3.0)
    settings = settings_for(tmp_path, server={"api_file_roots": [str(tmp_path)]})
    async with running_service(settings) as svc, httpx.AsyncClient(base_url=svc.base, timeout=10) as http:
        assert (await http.post("/api/streams", json={"id": "f", "url": str(clip), "realtime": False})).status_code == 201

        async def ended() -> dict[str, Any] | None:
            st = await stream_status(http, "f")
            return st if st["state"] in ("ended", "failed") else None

        st = await wait_for(ended, 30, "the corrupt file to finish")
        assert st["decode_errors"] > 0 and st["frames_received"] > 0
        assert svc.runtime.metrics.registry.get_sample_value(
            "deepfake_monitor_frames_dropped_total", {"stream": "f", "reason": "decode_error"}
        ) == st["decode_errors"]
        # Not a video at all: a clear 201 then a failed state, or a 400 — never a crash.
        notes = text_file(tmp_path / "notes.mp4")
        assert (await http.post("/api/streams", json={"id": "t", "url": str(notes)})).status_code == 201
        await wait_for(lambda: _state_of(http, "t", "failed"), 15, "the text file to fail")
        assert (await http.get("/healthz")).status_code == 200


async def test_a_playlist_under_a_file_root_cannot_reach_files_outside_it(tmp_path: Path) -> None:
    # FFmpeg follows an HLS playlist to the files it lists: one under api_file_roots decoded a
    # clip from anywhere (and told whether a file exists).
    from tests.support.media import timestamped_ts

    root, outside = tmp_path / "uploads", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    secret = timestamped_ts(outside / "clip.ts", 2.0, 0.0)
    playlist = root / "innocent.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")
    settings = settings_for(tmp_path, server={"api_file_roots": [str(root)]})
    async with running_service(settings) as svc, httpx.AsyncClient(base_url=svc.base, timeout=10) as http:
        assert (await http.post("/api/streams", json={"id": "p", "url": str(playlist)})).status_code == 201
        await wait_for(lambda: _state_of(http, "p", "failed"), 15, "the playlist to be refused")
        st = await stream_status(http, "p")
        assert st["frames_received"] == 0 and "playlist" in (st["last_error"] or ""), st


async def _state_of(http: httpx.AsyncClient, stream: str, state: str) -> bool:
    return (await stream_status(http, stream))["state"] == state


def test_websocket_resumes_across_disconnect_and_process_restart(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 4.0, fps=15, width=320, height=240)
    config = {"demo": False, "data_dir": str(tmp_path / "data"), "streams": [{"id": "a", "url": str(clip)}]}
    svc = ServiceProcess(tmp_path, config)
    svc.start()
    try:
        first = asyncio.run(_collect(svc.base, since=0, until=lambda e: _stream_state(e, "a", "ended"), timeout=40))
        svc.stop()
        # While nobody listens, the restarted service produces more events (the file plays again).
        svc.start()
        # (Only a wait for the file to play out: an "ended" that came before the socket is fine.)
        asyncio.run(_collect(svc.base, since=None, until=lambda e: _stream_state(e, "a", "ended"), timeout=40, must_match=False))
        svc.stop()
        svc.start()
        last = int(first[-1]["id"])
        resumed = asyncio.run(_collect(svc.base, since=last, until=lambda e: _stream_state(e, "a", "ended"), timeout=10))
        everything = asyncio.run(_collect(svc.base, since=0, until=lambda e: False, timeout=3, must_match=False))
    finally:
        svc.stop()
    ids = [int(e["id"]) for e in everything]
    assert ids == list(range(1, len(ids) + 1)), "event ids are gapless and increasing across restarts"
    assert [int(e["id"]) for e in first + resumed] == ids[: len(first) + len(resumed)]
    assert len(resumed) >= 3 and int(resumed[0]["id"]) == last + 1


def test_a_token_never_reaches_the_log_even_at_debug(tmp_path: Path) -> None:
    import base64

    token = "sekrit-token-0123456789"
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    config = {"demo": False, "data_dir": str(tmp_path / "data"), "server": {"token": token}, "log_level": "DEBUG"}
    svc = ServiceProcess(tmp_path, config)
    svc.start()

    async def connect(query: str, protocols: tuple[str, ...] = (), headers: dict[str, str] | None = None) -> None:
        url = "ws" + svc.base[4:] + "/ws/alerts" + query
        try:
            async with websockets.connect(  # type: ignore[call-arg]
                url, subprotocols=["cloudevents.json", *protocols], additional_headers=headers
            ) as ws:
                await ws.close()
        except websockets.InvalidStatus:
            pass  # the wrong token is refused; its handshake is logged all the same

    try:
        asyncio.run(connect(f"?since=0&access_token={token}"))
        asyncio.run(connect("?access_token=wrong-token-9876543210"))
        asyncio.run(connect("", protocols=(f"bearer.{encoded}",)))  # as the dashboard does
        asyncio.run(connect("", headers={"Authorization": f"Bearer {token}"}))
        deadline = time.monotonic() + 10
        while svc.log.read_text().count("[accepted]") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        svc.stop()
    log = svc.log.read_text()
    # uvicorn logs each handshake with its query at INFO, and websockets every header at DEBUG.
    assert log.count("access_token=***") >= 2, log[-3000:]  # at DEBUG, the request line too
    assert "bearer.***" in log.lower() and "authorization: ***" in log.lower(), log[-3000:]
    assert token not in log and encoded not in log and "wrong-token" not in log


def _stream_state(event: dict[str, Any], stream: str, state: str) -> bool:
    return event["type"].endswith("stream.status.v1") and event["data"]["stream_id"] == stream and event["data"]["state"] == state


async def _collect(
    base: str, since: int | None, until: Callable[[dict[str, Any]], bool], timeout: float, *, must_match: bool = True
) -> list[dict[str, Any]]:
    """Events from the websocket until one matches ``until`` (required unless ``must_match`` is
    False: then whatever arrives within ``timeout``)."""
    url = "ws" + base[4:] + "/ws/alerts" + ("" if since is None else f"?since={since}")
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, subprotocols=["cloudevents.json"]) as ws:  # type: ignore[list-item]
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = json.loads(await ws.recv())
                    got.append(event)
                    if until(event):
                        return got
        except TimeoutError:
            if must_match:
                raise AssertionError(f"no matching event within {timeout} s; got {[e['type'] for e in got]}") from None
    return got


async def test_real_prometheus_scrapes_the_service(tmp_path: Path) -> None:
    async with running_service(settings_for(tmp_path, streams=[{"id": "demo", "url": "demo://astronaut"}])) as svc:
        target = svc.base.removeprefix("http://")
        async with httpx.AsyncClient(base_url=svc.base) as http:
            await wait_for(lambda: _frames_at_least(http, "demo", 5), 20, "demo frames")
            text = (await http.get("/metrics")).text
        ok, output = promtool_check_metrics(text)
        assert ok, output
        # Another exporter in the same job, as Prometheus itself or a node exporter would be:
        # it has process_* series too, which the dashboard must not chart as a monitor's.
        other, other_thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
        try:
            with Prometheus([target, f"127.0.0.1:{other.server_port}"]) as prom:
                await asyncio.to_thread(prom.wait_for_scrape)
                result = await asyncio.to_thread(prom.query, 'deepfake_monitor_frames_analysed_total{stream="demo"}')
                assert result and float(result[0]["value"][1]) > 0
                result = await asyncio.to_thread(prom.query, "deepfake_monitor_frame_to_verdict_seconds_count")
                assert result and float(result[0]["value"][1]) > 0
                result = await asyncio.to_thread(prom.query, "deepfake_monitor_build_info")
                assert result and result[0]["metric"]["version"]
                await _dashboard_queries_run(prom, target)
                both = await asyncio.to_thread(prom.query, "process_resident_memory_bytes")
                assert {r["metric"]["instance"] for r in both} == {target, f"127.0.0.1:{other.server_port}"}
        finally:
            other.shutdown()
            other_thread.join(5)


async def _dashboard_queries_run(prom: Prometheus, target: str) -> None:
    """Every query of the shipped Grafana dashboard, as Grafana sends it for this instance, is
    valid PromQL on a real Prometheus, and the panels that a watched demo stream must fill
    have data."""
    # rate() needs two samples in its window: wait for a few scrapes.
    await wait_for(lambda: _scrapes_at_least(prom, 4), 20, "4 scrapes")
    instance = re.escape(target).replace("\\", "\\\\")  # a regex inside a PromQL string, as Grafana escapes it
    got: dict[str, list[dict]] = {}
    for where, expr in dashboards.queries(dashboards.load()):
        if where.startswith("variable"):
            expr = dashboards.label_values_to_promql(expr)
        try:
            got[where] = await asyncio.to_thread(prom.query, dashboards.substitute(expr, instance=instance))
        except Exception as exc:  # a PromQL error is an HTTP 400
            raise AssertionError(f"{where}: {expr}: {exc}") from exc

    def value(where: str, **labels: str) -> float:
        rows = [r for r in got[where] if all(r["metric"].get(k) == v for k, v in labels.items())]
        assert rows, f"{where}: no series with {labels} in {got[where]}"
        return float(rows[0]["value"][1])

    assert value("panel 'Frames analysed per second' target A", stream="demo") > 0
    assert value("panel 'Frames received per second' target A", stream="demo") > 0
    assert value("panel 'Stream up' target A", stream="demo") == 1
    assert value("panel 'Streams up' target A") == 1 and value("panel 'Streams down' target A") == 0
    assert value("panel 'Streams watched, by source kind' target A", source="demo") == 1
    assert 0 < value("panel 'Frame to verdict' target B") < 5  # p95, seconds
    assert value("panel 'Analysis stage time p95' target A", stage="faces") > 0
    assert value("panel 'Tracks in alert now' target A") == 0 and value("panel 'Alerts opened' target A") == 0
    assert got["variable 'stream'"] and got["variable 'instance'"][0]["metric"]["instance"] == target
    assert value("panel 'Resident memory' target A") > 100e6 and value("panel 'CPU cores used' target A") > 0
    assert 0 < value("panel 'Open file descriptors, share of the limit' target A") < 1
    for title in ("Resident memory", "CPU cores used", "Open file descriptors, share of the limit"):
        assert {r["metric"]["instance"] for r in got[f"panel '{title}' target A"]} == {target}, title


async def _scrapes_at_least(prom: Prometheus, n: int) -> bool:
    rows = await asyncio.to_thread(prom.query, "count_over_time(deepfake_monitor_build_info[5m])")
    return bool(rows) and float(rows[0]["value"][1]) >= n


def test_scan_cli_prints_score_and_verdict_and_json_timeline(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 5.0, fps=30, width=640, height=480)
    out = tmp_path / "scan.json"
    r = subprocess.run([MONITOR, "scan", str(clip), "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert "score:" in r.stdout and "verdict:" in r.stdout
    data = json.loads(out.read_text())
    assert data["verdict"] in ("clear", "suspicious", "alert")
    assert r.returncode == (1 if data["verdict"] == "alert" else 0), r.stderr
    assert 0.0 <= data["score"] <= 1.0
    assert data["frames_analysed"] >= 45 and data["frames_with_face"] >= 45
    track = data["tracks"][0]
    assert track["track_id"] == 1 and len(track["timeline"]) >= 45
    assert {"t", "state", "score", "raw_score", "reasons"} <= set(track["timeline"][0])


def test_scan_cli_exits_1_when_it_raises_an_alert(tmp_path: Path) -> None:
    # A policy that alerts on any score: the exit status is what a script or CI job checks.
    clip = write_clip(tmp_path / "face.mp4", 4.0, fps=30, width=640, height=480)
    config = tmp_path / "alert-all.yaml"
    config.write_text("policy: {suspicious_enter: 0.001, alert_enter: 0.001, hysteresis: 0.0, min_alert_s: 0.0}\n")
    r = subprocess.run([MONITOR, "scan", str(clip), "-c", str(config), "-q"], capture_output=True, text=True, timeout=120)
    assert "verdict: alert" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 1


def test_scan_cli_exits_2_when_it_cannot_write_its_json(tmp_path: Path) -> None:
    # An error is 2, never the 1 that means "alert" (an uncaught OSError exited 1).
    clip = write_clip(tmp_path / "face.mp4", 1.0, fps=10, width=320, height=240)
    (tmp_path / "a-file").write_text("")
    r = subprocess.run([MONITOR, "scan", str(clip), "-q", "--json", str(tmp_path / "a-file" / "out.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot write" in r.stderr, r.stderr


@pytest.mark.parametrize("make", [text_file, lambda p: p.with_name("missing.mp4")])
def test_scan_cli_rejects_bad_input_clearly(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path / "bad.mp4")
    r = subprocess.run([MONITOR, "scan", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_exposed_bind_without_token(tmp_path: Path) -> None:
    r = subprocess.run([MONITOR, "serve", "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "token" in r.stderr


def test_python_m_monitor_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "monitor", "config", "schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "analysis" in json.loads(r.stdout)["properties"]


async def test_alerts_cli_tails_from_since(tmp_path: Path) -> None:
    from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

    def ev(i: int) -> Event:
        return Event(EventType.STREAM_STATUS, "x", Severity.INFO, 1.7e9 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))

    async with running_service(settings_for(tmp_path)) as svc:
        await svc.runtime.bus.publish([ev(i) for i in range(3)])
        proc = await asyncio.create_subprocess_exec(
            MONITOR, "alerts", "--url", svc.ws + "/ws/alerts", "--since", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            lines = []
            async with asyncio.timeout(30):
                lines.append(json.loads(await proc.stdout.readline()))
                lines.append(json.loads(await proc.stdout.readline()))
                await svc.runtime.bus.publish([ev(3)])
                lines.append(json.loads(await proc.stdout.readline()))
        finally:
            proc.kill()
            await proc.wait()
    assert [e["id"] for e in lines] == ["2", "3", "4"]


def test_sigterm_stops_cleanly_closing_alerts_and_tracks(tmp_path: Path) -> None:
    import signal
    import sqlite3

    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=15, width=320, height=240)
    # Thresholds near 0 make every scored track alert, so there is an open alert to close.
    config = {"demo": False, "data_dir": str(tmp_path / "data"),
              "policy": {"suspicious_enter": 0.001, "alert_enter": 0.001, "hysteresis": 0.0, "min_alert_s": 0.2},
              "streams": [{"id": "a", "url": str(clip), "loop": True}]}
    svc = ServiceProcess(tmp_path, config)
    svc.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if any(e["type"].endswith("alert.opened.v1") for e in svc.get("/api/events?since=0&limit=1000").json()):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no alert opened")
    finally:
        code = svc.stop(signal.SIGTERM)
    assert code == 0, svc.log.read_text()[-2000:]
    db = sqlite3.connect(tmp_path / "data" / "events.sqlite3")
    rows = [(t, json.loads(d)) for t, d in db.execute("SELECT type, data FROM events ORDER BY id")]
    opened = {d["alert_id"] for t, d in rows if t.endswith("alert.opened.v1")}
    closed = {d["alert_id"]: d for t, d in rows if t.endswith("alert.closed.v1")}
    assert opened and opened <= set(closed), "every alert opened before SIGTERM is closed"
    assert any("track_ended" in d["reasons"] for d in closed.values())
    # Every track announced is announced ended, so no subscriber keeps a stale state.
    states = [d for t, d in rows if t.endswith("track.state.v1")]
    ended = {d["track_id"] for d in states if d["reasons"] == ["track_ended"] and d["state"] == "inconclusive"}
    assert ended and ended == {d["track_id"] for d in states}
    assert any(t.endswith("stream.status.v1") and d["state"] == "stopped" for t, d in rows)


async def test_alerts_cli_without_since_resumes_after_a_disconnect(tmp_path: Path) -> None:
    from monitor.alerts.client import tail
    from monitor.types import Event, EventType, Severity, StreamState, StreamStatusData

    def ev(i: int) -> Event:
        return Event(EventType.STREAM_STATUS, "x", Severity.INFO, 1.7e9 + i, StreamStatusData(StreamState.RUNNING, str(i), 0))

    import io

    out = io.StringIO()
    async with running_service(settings_for(tmp_path)) as svc:
        await svc.runtime.bus.publish([ev(i) for i in range(2)])  # history: not printed
        task = asyncio.create_task(tail(svc.ws + "/ws/alerts", out=out))
        await wait_for(lambda: svc.runtime.metrics.registry.get_sample_value("deepfake_monitor_websocket_clients") == 1, 10, "client")
        # Drop every client before any new event, then publish while it reconnects.
        for sub in list(svc.runtime.bus._subs):
            sub.overflowed.set()
        await svc.runtime.bus.publish([ev(2)])
        await wait_for(lambda: out.getvalue().count("\n") >= 1, 15, "the event published during the reconnect")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["3"]


def test_sigterm_while_starting_stops_cleanly(tmp_path: Path) -> None:
    # Before uvicorn took the signals over, SIGTERM killed the process at once (exit -15), in the
    # middle of opening streams. Sent once the first of three streams is up, the others still
    # loading their models.
    import signal
    import sqlite3
    import subprocess

    config = {"demo": False, "data_dir": str(tmp_path / "data"),
              "streams": [{"id": f"s{i}", "url": "demo://astronaut"} for i in range(3)]}
    svc = ServiceProcess(tmp_path, config)
    with svc.log.open("a") as log:
        proc = subprocess.Popen([MONITOR, "serve", "-c", str(svc.config_path), "--port", "0"], cwd=tmp_path,
                                env=svc.env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "watching stream s0" not in svc.log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, svc.log.read_text()[-2000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = svc.log.read_text()
    assert code == 0, text[-2000:]
    assert "stopped while starting" in text and "listening on" not in text
    db = sqlite3.connect(tmp_path / "data" / "events.sqlite3")
    stopped = {json.loads(d)["state"] for t, d in db.execute("SELECT type, data FROM events") if t.endswith("stream.status.v1")}
    assert "stopped" in stopped
