"""A WHIP publisher that stops sending video, or vanishes without DELETE, loses its session
after ``webrtc.no_video_s`` (not after ICE consent's ~30 s, or never), exactly as a DELETE
would end it; the stream id is then free to publish again."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import av
import httpx
import pytest

from monitor.config import Settings
from tests.integration.test_whip_publish import TOKEN, FaceTrack, make_settings, publish, until
from tests.support.service import Running, running_service

pytestmark = pytest.mark.integration

NO_VIDEO_S = 1.5
MARGIN_S = 10.0  # still tells this timer from ICE consent's ~30 s, with room for a loaded machine
ROOT = Path(__file__).resolve().parents[2]


class StallingTrack(FaceTrack):
    """Face video until ``stall`` is set, then no frame ever again (a stopped camera): the
    connection and ICE consent stay up."""

    def __init__(self) -> None:
        super().__init__((160, 120))
        self.stall = asyncio.Event()

    async def recv(self) -> av.VideoFrame:
        if self.stall.is_set():
            await asyncio.Event().wait()
        return await super().recv()


def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, webrtc={"no_video_s": NO_VIDEO_S})


async def receiving(svc: Running, stream: str) -> None:
    await until(lambda: _frames(svc, stream, 3), 15, f"frames on {stream}")


async def _frames(svc: Running, stream: str, n: int) -> bool:
    return any(p.id == stream and p.status().frames_received > n for p in svc.runtime.manager.list())


async def ends_like_a_delete(svc: Running, stream: str, silent_since: float) -> None:
    """The session ends within no_video_s + a margin: stream gone, slot free, 'stopped' event."""
    rt = svc.runtime
    sessions = rt.app.state.whip_sessions

    async def gone() -> bool:
        return not rt.manager.list() and not sessions.sessions

    await until(gone, NO_VIDEO_S + MARGIN_S, "the silent session to end")
    # The no-video timer, not something else. silent_since is taken after the publisher went
    # quiet, so the session's real silence is longer; half the limit leaves room for a loaded box.
    assert time.monotonic() - silent_since >= NO_VIDEO_S * 0.5
    reg = rt.metrics.registry
    assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "no_video"}) == 1
    assert reg.get_sample_value("deepfake_monitor_whip_sessions_active") == 0
    async with httpx.AsyncClient(base_url=svc.base, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert (await client.get("/api/streams")).json() == []
        events = (await client.get("/api/events", params={"since": 0})).json()
    stopped = [
        e for e in events
        if e["source"].endswith(f"/streams/{stream}") and e["type"].endswith("stream.status.v1")
        and e["data"]["state"] == "stopped"
    ]
    assert stopped, [e["type"] for e in events]  # what the DELETE path publishes too


async def publishes_again(svc: Running, stream: str) -> None:
    pc, again = await publish(svc.base, stream, [FaceTrack((160, 120))])
    try:
        assert again.status_code == 201, again.text
        await receiving(svc, stream)
    finally:
        await pc.close()


async def test_a_publisher_that_never_sends_video_is_never_up(tmp_path: Path) -> None:
    async with running_service(settings(tmp_path)) as svc:
        track = StallingTrack()
        track.stall.set()  # connected, but not one frame
        pc, response = await publish(svc.base, "cam", [track])
        states: list[str] = []
        try:
            assert response.status_code == 201, response.text
            reg = svc.runtime.metrics.registry

            async def ended() -> bool:
                states.extend(p.status().state.value for p in svc.runtime.manager.list())
                assert reg.get_sample_value("deepfake_monitor_stream_up", {"stream": "cam"}) in (None, 0.0)
                return not svc.runtime.manager.list()

            # Before: "running" (stream_up 1) from the connection until no_video_s ended it.
            await until(ended, NO_VIDEO_S + MARGIN_S, "the session without video to end")
        finally:
            await pc.close()
        assert states and "running" not in states


async def test_a_publisher_whose_video_stops_loses_its_session(tmp_path: Path) -> None:
    async with running_service(settings(tmp_path)) as svc:
        track = StallingTrack()
        pc, response = await publish(svc.base, "cam", [track])
        assert response.status_code == 201, response.text
        await receiving(svc, "cam")
        track.stall.set()
        silent_since = time.monotonic()
        await ends_like_a_delete(svc, "cam", silent_since)
        await pc.close()
        await publishes_again(svc, "cam")


async def test_one_silent_track_of_two_ends_the_session(tmp_path: Path) -> None:
    # The session ends when any of its video tracks goes silent, though the other still sends.
    async with running_service(settings(tmp_path)) as svc:
        track = StallingTrack()
        pc, response = await publish(svc.base, "cam", [FaceTrack((160, 120)), track])
        try:
            assert response.status_code == 201, response.text
            names = response.headers["x-monitor-streams"].split(",")
            assert len(names) == 2, names
            for name in names:
                await receiving(svc, name)
            track.stall.set()
            silent_since = time.monotonic()
            await ends_like_a_delete(svc, names[1], silent_since)
        finally:
            await pc.close()


# A publisher in its own process, killed with SIGKILL: no DELETE, no DTLS close, no RTCP BYE.
PUBLISHER = """
import asyncio, sys
from tests.integration.test_whip_publish import FaceTrack, publish

async def main():
    pc, response = await publish(sys.argv[1], "gone", [FaceTrack((160, 120))])
    print(response.status_code, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_publisher_that_vanishes_loses_its_session(tmp_path: Path) -> None:
    async with running_service(settings(tmp_path)) as svc:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PUBLISHER, svc.base, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            async with asyncio.timeout(15):
                assert (await child.stdout.readline()).strip() == b"201"
            await receiving(svc, "gone")
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        silent_since = time.monotonic()
        await ends_like_a_delete(svc, "gone", silent_since)
        await publishes_again(svc, "gone")
