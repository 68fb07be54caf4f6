"""Trickle ICE (RFC 8840 fragments): every candidate reaches the ICE transport of its own
m-section's mid, or the PATCH is refused; never a 204 that dropped a candidate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import httpx
import pytest
from aiortc import RTCConfiguration, RTCIceTransport, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from monitor.api import whip
from monitor.api.whip import WhipSession
from monitor.sources.webrtc import set_local_description
from tests.integration.test_whip_publish import TOKEN, FaceTrack, make_settings
from tests.support.service import Running, running_service

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
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
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


def mdns_candidate(n: int) -> str:
    return f"a=candidate:{n} 1 udp 2122260223 {uuid.uuid4()}.local {40000 + n} typ host\r\n"


class FakeMdns:
    """Stands in for aioice's mDNS protocol: records each use, answers after ``delay``
    (None: never).

    A fake in an integration test, on purpose: the real protocol binds 0.0.0.0:5353 and
    multicasts its queries to 224.0.0.251, which leaves loopback (and needs a responder on the
    network to answer). Everything else in these tests is real: the service, its HTTP server,
    aiortc and aioice's ICE agent; only name resolution, underneath aioice, is scripted."""

    def __init__(self, delay: float | None = 0.5) -> None:
        self.delay = delay
        self.created = 0
        self.resolved: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0  # resolutions under way at once, at the most

    async def get_or_create(self, subscriber: object) -> FakeMdns:
        self.created += 1
        return self

    async def resolve(self, hostname: str, timeout: float | None = 1.0) -> str | None:
        self.resolved.append(hostname)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return "192.0.2.50"


@pytest.fixture
def fake_mdns(monkeypatch: pytest.MonkeyPatch) -> FakeMdns:
    fake = FakeMdns()
    monkeypatch.setattr(aioice.ice, "get_or_create_mdns_protocol", fake.get_or_create)
    return fake


async def trickling_offer(extra: str = "", end: bool = False) -> tuple[RTCPeerConnection, str]:
    """A video publisher's offer: its own candidates, then ``extra`` lines, then (if ``end``)
    a=end-of-candidates."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(FaceTrack(), direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    lines = [x for x in pc.localDescription.sdp.splitlines() if x and x != "a=end-of-candidates"]
    last = max(i for i, x in enumerate(lines) if x.startswith("a=candidate:"))
    tail = extra.splitlines() + (["a=end-of-candidates"] if end else [])
    return pc, "\r\n".join(lines[: last + 1] + tail + lines[last + 1 :]) + "\r\n"


async def published(svc: Running, client: httpx.AsyncClient, offer: str) -> tuple[str, WhipSession, RTCIceTransport]:
    """POST ``offer`` as stream "cam": its session URL, the session, and its (bundled) ICE transport."""
    created = await client.post("/whip/cam", content=offer, headers={**AUTH, "Content-Type": "application/sdp"})
    assert created.status_code == 201, created.text
    session = next(iter(svc.runtime.app.state.whip_sessions.sessions.values()))
    return created.headers["location"], session, session.pc.getTransceivers()[0].receiver.transport.transport


async def test_mdns_candidates_are_dropped_not_resolved(tmp_path: Path, fake_mdns: FakeMdns) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        # mDNS candidates in the offer, which also ends its candidates.
        pc, offer = await trickling_offer("".join(mdns_candidate(i) for i in range(3)), end=True)
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            assert session.mdns_dropped == 3
            # Its end-of-candidates went with them: the peer may still be found as peer-reflexive.
            assert not ice.iceGatherer._remote_candidates_end

            # 20 trickled at once: each took a 1 s mDNS query, one after another.
            frag = "a=mid:0\r\n" + "".join(mdns_candidate(i) for i in range(10, 30)) + candidate(1, "192.0.2.7")
            async with asyncio.timeout(5):
                r = await client.patch(loc, content=frag, headers=PATCH)
            assert r.status_code == 204, r.text
            assert session.mdns_dropped == 23
            hosts = {c.ip for c in ice.getRemoteCandidates()}
            assert "192.0.2.7" in hosts and not any(h.endswith(".local") for h in hosts)
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()
    assert fake_mdns.created == 0 and fake_mdns.resolved == []


async def test_with_resolve_mdns_trickled_names_resolve_concurrently_within_a_deadline(
    tmp_path: Path, fake_mdns: FakeMdns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real service and ICE agent; the mDNS answers are FakeMdns's, since real mDNS queries
    would leave loopback (multicast from 0.0.0.0:5353)."""
    async with running_service(make_settings(tmp_path, webrtc={"resolve_mdns": True})) as svc:
        pc, offer = await trickling_offer()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)

            # 20 names taking 0.5 s each: together, not 10 s one after another.
            frag = "a=mid:0\r\n" + "".join(mdns_candidate(i) for i in range(20))
            async with asyncio.timeout(30):  # a hang guard only: the overlap is checked below
                assert (await client.patch(loc, content=frag, headers=PATCH)).status_code == 204
            assert len(fake_mdns.resolved) == 20 and fake_mdns.most_in_flight == 20
            assert sum(c.ip.endswith(".local") for c in ice.getRemoteCandidates()) == 20

            # Names that never resolve: the PATCH ends at the deadline, without them.
            fake_mdns.delay = None
            monkeypatch.setattr(whip, "MDNS_TRICKLE_DEADLINE_S", 0.3)
            frag = "a=mid:0\r\n" + "".join(mdns_candidate(i) for i in range(20, 25))
            async with asyncio.timeout(20):  # without the deadline, it never ends
                assert (await client.patch(loc, content=frag, headers=PATCH)).status_code == 204
            assert sum(c.ip.endswith(".local") for c in ice.getRemoteCandidates()) == 20
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()


async def test_candidates_after_end_of_candidates_are_refused_not_ignored(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer(end=True)
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            r = await client.patch(loc, content="a=mid:0\r\n" + candidate(1, "192.0.2.20"), headers=PATCH)
            assert r.status_code == 422 and "a=end-of-candidates" in r.json()["error"], r.text
            assert "192.0.2.20" not in {c.ip for c in ice.getRemoteCandidates()}
            # Ending again is harmless.
            assert (await client.patch(loc, content="a=end-of-candidates\r\n", headers=PATCH)).status_code == 204
            reg = svc.runtime.metrics.registry
            assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "candidates_ended"}) == 1
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()


@pytest.mark.parametrize(
    "fragment",
    ["garbage\r\n", "", "a=candidate\r\n", "a=cand:1 1 udp 1 192.0.2.1 9 typ host\r\n", "a=mid:0\r\n", "a=mid:0\r\nnot sdp\r\n" + candidate(1, "192.0.2.21")],
)
async def test_a_fragment_with_no_candidate_or_end_is_refused_not_answered_204(tmp_path: Path, fragment: str) -> None:
    # Before: every line the parser did not know was skipped, and the publisher was told (204)
    # that candidates had been added when none were.
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            before = {c.ip for c in ice.getRemoteCandidates()}
            r = await client.patch(loc, content=fragment, headers=PATCH)
            assert r.status_code == 400, r.text
            assert r.json()["error"] in {
                "the fragment has no a=candidate or a=end-of-candidates line",
                "malformed candidate line: a=candidate",
            } or r.json()["error"].startswith("not an SDP fragment line:"), r.text
            assert {c.ip for c in ice.getRemoteCandidates()} == before
            # A real fragment still goes through.
            assert (await client.patch(loc, content="a=mid:0\r\n" + candidate(2, "192.0.2.22"), headers=PATCH)).status_code == 204
            assert "192.0.2.22" in {c.ip for c in ice.getRemoteCandidates()}
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()


async def test_a_patch_whose_session_ends_while_its_body_is_read_gets_404(tmp_path: Path) -> None:
    # Before: the session was looked up before the body was read; a DELETE (or ICE failing) in
    # between, and the candidates went to a closed connection while the PATCH answered 204.
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            found = asyncio.Event()
            release = asyncio.Event()
            sessions = svc.runtime.app.state.whip_sessions
            real_find = sessions.find

            def finding(*args: str) -> WhipSession:
                got = real_find(*args)
                found.set()  # the PATCH handler has its session and goes on to read the body
                return got

            sessions.find = finding  # type: ignore[method-assign]

            async def slow_body() -> AsyncIterator[bytes]:
                yield b"a=mid:0\r\n"
                await release.wait()
                yield candidate(3, "192.0.2.23").encode()

            patching = asyncio.create_task(client.patch(loc, content=slow_body(), headers=PATCH))
            await asyncio.wait_for(found.wait(), 10)
            sessions.find = real_find  # type: ignore[method-assign]
            async with httpx.AsyncClient(base_url=svc.base, timeout=30) as other:
                assert (await other.delete(loc, headers=AUTH)).status_code == 200
            release.set()
            r = await asyncio.wait_for(patching, 10)
            assert r.status_code == 404 and r.json()["error"] == "no such WHIP session", r.text
        await pc.close()


async def test_a_session_gives_at_most_64_candidates(tmp_path: Path) -> None:
    # Before: a PATCH could add hundreds of addresses for the ICE agent to send STUN checks to.
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, _, _ = await published(svc, client, offer)
            given = offer.count("a=candidate:")
            room = 64 - given
            too_many = "a=mid:0\r\n" + "".join(candidate(100 + i, f"192.0.2.{i + 1}") for i in range(room + 1))
            r = await client.patch(loc, content=too_many, headers=PATCH)
            assert r.status_code == 422 and "at most 64" in r.json()["error"], r.text
            fits = "a=mid:0\r\n" + "".join(candidate(100 + i, f"192.0.2.{i + 1}") for i in range(room))
            assert (await client.patch(loc, content=fits, headers=PATCH)).status_code == 204
            one_more = "a=mid:0\r\n" + candidate(999, "198.51.100.1")
            assert (await client.patch(loc, content=one_more, headers=PATCH)).status_code == 422
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
            # In the offer itself too.
            _, crowded = await trickling_offer("".join(candidate(200 + i, f"203.0.113.{i + 1}") for i in range(65)))
            r = await client.post("/whip/cam2", content=crowded, headers={**AUTH, "Content-Type": "application/sdp"})
            assert r.status_code == 422 and "ICE candidates" in r.json()["error"], r.text
        await pc.close()
    reg = svc.runtime.metrics.registry
    assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "too_many_candidates"}) == 3


async def test_an_end_of_candidates_waits_for_candidates_still_being_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A browser PATCHes each candidate, then the end, without waiting for the answers. The end
    # overtook a candidate still being added: aiortc dropped it, and its PATCH said 204.
    real_add = whip._add_candidates
    adding = asyncio.Event()

    async def slow_add(added: list, deadline_s: float) -> None:  # type: ignore[type-arg]
        if added:
            adding.set()
            await asyncio.sleep(0.3)  # an mDNS resolution, say
        await real_add(added, deadline_s)

    monkeypatch.setattr(whip, "_add_candidates", slow_add)
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            first = asyncio.create_task(client.patch(loc, content="a=mid:0\r\n" + candidate(1, "192.0.2.30"), headers=PATCH))
            await asyncio.wait_for(adding.wait(), 30)  # the candidate passed its checks and is being added
            end = await client.patch(loc, content="a=end-of-candidates\r\n", headers=PATCH)
            assert (await first).status_code == 204 and end.status_code == 204
            assert "192.0.2.30" in {c.ip for c in ice.getRemoteCandidates()}
            assert ice.iceGatherer._remote_candidates_end
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()


UNROUTABLE = ("224.0.0.1", "239.255.255.250", "0.0.0.0", "169.254.169.254", "ff02::1")


async def test_candidates_at_addresses_no_peer_has_are_never_contacted(tmp_path: Path) -> None:
    # Before: an offer made the service send STUN checks to multicast groups (SSDP), 0.0.0.0
    # and the cloud metadata address, for whoever wrote it.
    async with running_service(make_settings(tmp_path)) as svc:
        pc, offer = await trickling_offer("".join(candidate(i, h) for i, h in enumerate(UNROUTABLE)) + candidate(9, "192.0.2.7"))
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
            loc, session, ice = await published(svc, client, offer)
            frag = "a=mid:0\r\n" + "".join(candidate(20 + i, h) for i, h in enumerate(UNROUTABLE)) + candidate(30, "192.0.2.8")
            assert (await client.patch(loc, content=frag, headers=PATCH)).status_code == 204
            hosts = {c.ip for c in ice.getRemoteCandidates()}
            assert {"192.0.2.7", "192.0.2.8"} <= hosts and not hosts & set(UNROUTABLE), hosts
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
        await pc.close()
