"""Trickle ICE (RFC 8840 fragments): every candidate reaches the ICE transport of its own
m-section's mid, or the PATCH is refused; never a 204 that dropped a candidate."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from monitor.sources.webrtc import set_local_description
from tests.integration.test_whip_publish import TOKEN, FaceTrack, make_settings
from tests.support.service import running_service

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATCH = {**AUTH, "Content-Type": "application/trickle-ice-sdpfrag"}


def candidate(n: int, host: str) -> str:
    return f"a=candidate:{n} 1 udp 2122260223 {host} 50000 typ host\r\n"


async def test_candidates_go_to_their_own_mid(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        # A trickling publisher: audio (mid 0) and video (mid 1), BUNDLEd, no candidates yet.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(FaceTrack(), direction="sendonly")
        await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
        lines = pc.localDescription.sdp.splitlines()
        offer = "\r\n".join(x for x in lines if not x.startswith(("a=candidate:", "a=end-of-candidates"))) + "\r\n"
        ufrag = next(x for x in lines if x.startswith("a=ice-ufrag:"))
        async with httpx.AsyncClient(base_url=svc.base) as client:
            created = await client.post("/whip/mic", content=offer, headers={**AUTH, "Content-Type": "application/sdp"})
            assert created.status_code == 201, created.text
            loc = created.headers["location"]
            session = next(iter(svc.runtime.app.state.whip_sessions.sessions.values()))
            ice = session.pc.getTransceivers()[0].receiver.transport.transport  # shared by both mids

            def remote_hosts() -> set[str]:
                return {c.ip for c in ice.getRemoteCandidates()}

            # One candidate under each m-section; the video one under the last a=mid.
            both = (
                f"{ufrag}\r\n"
                f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate(1, '192.0.2.7')}"
                f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n{candidate(2, '192.0.2.8')}"
            )
            r = await client.patch(loc, content=both, headers=PATCH)
            assert r.status_code == 204, r.text
            assert {"192.0.2.7", "192.0.2.8"} <= remote_hosts()

            # The fragment of the report: the candidate under mid 0, then an empty mid 1.
            first_only = (
                f"{ufrag}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate(3, '192.0.2.9')}"
                f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
            )
            assert (await client.patch(loc, content=first_only, headers=PATCH)).status_code == 204
            assert "192.0.2.9" in remote_hosts()

            # A mid the session does not have: refused whole, nothing applied.
            unknown = (
                f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidate(4, '192.0.2.10')}"
                f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:7\r\n{candidate(5, '192.0.2.11')}"
            )
            r = await client.patch(loc, content=unknown, headers=PATCH)
            assert r.status_code == 422 and "a=mid:7" in r.json()["error"], r.text
            assert not {"192.0.2.10", "192.0.2.11"} & remote_hosts()

            # End of candidates is accepted.
            end = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=end-of-candidates\r\n"
            assert (await client.patch(loc, content=end, headers=PATCH)).status_code == 204
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()
