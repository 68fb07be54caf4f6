"""A real aiortc publisher sends generated face video over WHIP to the running service on
loopback; verdicts arrive on the alert websocket; sessions end cleanly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path

import av
import httpx
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack

from monitor.config import Settings, load_settings
from monitor.sources.demo_media import render_frame
from monitor.sources.webrtc import set_local_description
from tests.support.service import running_service

pytestmark = pytest.mark.integration

TOKEN = "w" * 32


class FaceTrack(VideoStreamTrack):
    """Generated face video at the track's 30 fps clock, rendered at ``size``."""

    def __init__(self, size: tuple[int, int] = (320, 240)) -> None:
        super().__init__()
        self.size = size

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = render_frame(float(pts * time_base), *self.size)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(time_base)
        return frame


async def publish(
    base: str, stream: str, tracks: list, token: str | None = TOKEN, origin: str | None = None
) -> tuple[RTCPeerConnection, httpx.Response]:
    """WHIP-publish ``tracks``; the peer connection (answer applied if 201) and the response."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if origin:
        headers["Origin"] = origin
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post(f"/whip/{stream}", content=pc.localDescription.sdp, headers=headers)
    if response.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    return pc, response


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN}, **kw)


async def test_whip_publish_produces_verdicts_on_the_websocket(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        rt = svc.runtime
        url = svc.ws + f"/ws/alerts?access_token={TOKEN}"
        async with websockets.connect(url, subprotocols=["cloudevents.json"]) as ws:
            audio = AudioStreamTrack()  # silence: the service must swallow it
            pc, response = await publish(svc.base, "cam1", [FaceTrack(), audio])
            assert response.status_code == 201, response.text
            assert response.headers["content-type"].startswith("application/sdp")
            location = response.headers["location"]
            assert location.startswith("/whip/cam1/") and response.headers["etag"]
            assert "a=candidate:" in response.text and "127.0.0.1" in response.text
            assert rt.metrics.registry.get_sample_value("deepfake_monitor_whip_sessions_active") == 1

            # A verdict for a face track of this stream arrives as a CloudEvent.
            verdict = None
            async with asyncio.timeout(25):
                while verdict is None:
                    event = json.loads(await ws.recv())
                    if event["source"].endswith("/streams/cam1") and event["type"].startswith("io.deepfake-monitor.track"):
                        verdict = event
            assert verdict["specversion"] == "1.0"
            assert verdict["data"]["state"] in ("clear", "suspicious", "alert", "inconclusive")

            status = rt.manager.get("cam1").status()
            assert status.source == "whip" and status.state.value == "running"
            async with asyncio.timeout(15):  # the input rate needs a few frames to measure
                while (status := rt.manager.get("cam1").status()).fps_in <= 5:
                    await asyncio.sleep(0.2)
            assert status.width == 320
            reg = rt.metrics.registry
            assert reg.get_sample_value("deepfake_monitor_webrtc_connection_state_changes_total", {"role": "whip", "state": "connected"}) == 1
            assert reg.get_sample_value("deepfake_monitor_frame_age_seconds_count", {"source": "whip"}) > 0

            # DELETE ends the session: the stream leaves the manager, the gauge returns to 0.
            async with httpx.AsyncClient(base_url=svc.base) as client:
                gone = await client.delete(location, headers={"Authorization": f"Bearer {TOKEN}"})
                assert gone.status_code == 200
                again = await client.delete(location, headers={"Authorization": f"Bearer {TOKEN}"})
                assert again.status_code == 404
            assert [p.id for p in rt.manager.list()] == []
            assert reg.get_sample_value("deepfake_monitor_whip_sessions_active") == 0
            await pc.close()


async def test_media_can_be_kept_to_the_configured_addresses(tmp_path: Path) -> None:
    # By default the answer lists (and aioice binds) every address of the machine's interfaces,
    # whatever server.host is; with webrtc.only_host_addresses, only the configured ones.
    import re

    settings = make_settings(tmp_path, webrtc={"only_host_addresses": True})
    async with running_service(settings) as svc:
        pc, response = await publish(svc.base, "cam1", [FaceTrack()])
        try:
            assert response.status_code == 201, response.text
            addresses = set(re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", response.text))
            assert addresses == {"127.0.0.1"}, response.text
            async with asyncio.timeout(25):  # and the media still flows
                while (status := svc.runtime.manager.get("cam1").status()).frames_received < 5:
                    await asyncio.sleep(0.1)
            assert status.state.value == "running"
        finally:
            await pc.close()


async def test_an_allowed_cross_origin_client_can_read_its_stream_ids(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN, "cors_origins": ["https://studio.example"]}
    )
    async with running_service(settings) as svc:
        pc, response = await publish(svc.base, "cam1", [FaceTrack()], origin="https://studio.example")
        try:
            assert response.status_code == 201, response.text
            assert response.headers["access-control-allow-origin"] == "https://studio.example"
            # A browser hides every response header not listed here from the page's script.
            exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
            assert {"location", "etag", "x-monitor-streams"} <= exposed
            assert response.headers["x-monitor-streams"] == "cam1"
        finally:
            await pc.close()


async def test_two_video_tracks_become_two_streams_and_vanish_when_the_peer_leaves(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, webrtc={"session_idle_s": 10.0})  # room for a slow ICE/DTLS start
    async with running_service(settings) as svc:
        rt = svc.runtime
        pc, response = await publish(svc.base, "room", [FaceTrack((160, 120)), FaceTrack((192, 144))])
        assert response.status_code == 201, response.text
        names = response.headers["x-monitor-streams"].split(",")
        assert len(names) == 2 and all(n.startswith("room.") for n in names)

        async def both_running() -> bool:
            return all(rt.manager.get(n).status().frames_received > 3 for n in names)

        await until(both_running, 15, "frames on both streams")
        assert {rt.manager.get(n).status().width for n in names} == {160, 192}

        # The publisher vanishes without DELETE: the service notices and cleans up.
        await pc.close()

        async def cleaned() -> bool:
            return not rt.manager.list() and not svc.runtime.app.state.whip_sessions.sessions

        await until(cleaned, 15, "session cleanup")
        assert rt.metrics.registry.get_sample_value("deepfake_monitor_whip_sessions_active") == 0


async def test_removing_the_stream_through_the_api_ends_the_session(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        rt = svc.runtime
        pc, response = await publish(svc.base, "desk", [FaceTrack((160, 120))])
        assert response.status_code == 201, response.text
        async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert (await client.delete("/api/streams/desk")).status_code == 204
            sessions = rt.app.state.whip_sessions.sessions
            assert not sessions
            # The id is free again: the same publisher name can come back.
            pc2, again = await publish(svc.base, "desk", [FaceTrack((160, 120))])
            assert again.status_code == 201, again.text
            await pc2.close()
        await pc.close()


async def test_a_session_removes_its_streams_together_when_it_ends(tmp_path: Path) -> None:
    # One after another, each pipeline's stop time added up (seconds with a slow detector) while
    # aiortc kept decoding every track into a queue nobody read until the connection closed.
    async with running_service(make_settings(tmp_path)) as svc:
        rt = svc.runtime
        pc, response = await publish(svc.base, "panel", [FaceTrack((160, 120)) for _ in range(3)])
        assert response.status_code == 201, response.text
        names = response.headers["x-monitor-streams"].split(",")
        log: list[str] = []
        remove = rt.manager.remove

        async def recorded(stream_id: str) -> None:
            log.append("start " + stream_id)
            await asyncio.sleep(0.2)  # a stop that takes a moment, as every real one does
            await remove(stream_id)
            log.append("end " + stream_id)

        rt.manager.remove = recorded  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert (await client.delete(response.headers["location"])).status_code == 200
        assert sorted(log[:3]) == sorted("start " + n for n in names), log  # all begun before any ended
        await pc.close()


async def test_video_over_the_pixel_limit_fails_the_stream_and_ends_the_session(tmp_path: Path) -> None:
    # WHIP sources skipped analysis.max_frame_pixels: a 4800x4000 publisher took the service
    # from 0.3 to 1.5 GB while its stream showed "running".
    # Then the failed track was no longer read while aiortc went on decoding into its unbounded
    # queue until webrtc.no_video_s ended the session (238 frames queued in 8 s): the session
    # must end at once, whatever no_video_s is.
    settings = make_settings(tmp_path, analysis={"max_frame_pixels": 100 * 100}, webrtc={"no_video_s": 120})
    async with running_service(settings) as svc:
        rt = svc.runtime
        pc, response = await publish(svc.base, "huge", [FaceTrack((160, 120))])
        assert response.status_code == 201, response.text
        (session,) = rt.app.state.whip_sessions.sessions.values()
        async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            async def ended() -> bool:
                r = await client.get("/api/events?since=0")
                return any(
                    e["data"].get("state") == "failed" and "max_frame_pixels" in (e["data"].get("detail") or "")
                    for e in r.json() if e["type"].endswith("stream.status.v1")
                )

            await until(ended, 20, "the stream to fail on its frame size")
            await until(lambda: asyncio.sleep(0, not rt.app.state.whip_sessions.sessions), 10, "the session to end")
            assert (await client.get("/api/streams")).json() == []
            assert session.pc.connectionState == "closed"
            metrics = (await client.get("/metrics")).text
            assert 'whip_sessions_failed_total{reason="track_failed"} 1.0' in metrics
            assert 'reason="no_video"' not in metrics
        await pc.close()
