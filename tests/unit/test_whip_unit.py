"""WHIP's session bookkeeping at its seams, with fakes for aiortc's peer connection and the
sinks (the real ones run in tests/integration/test_whip_*.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from monitor.api.whip import Refused, WhipSession, WhipSessions
from monitor.config import load_settings
from monitor.metrics import Metrics


async def test_a_failing_close_never_replaces_the_reason_a_session_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # aiortc's close can fail on a transceiver it half built from an odd offer; raised from the
    # cleanup, that error turned the refusal (a 422) into a 500. Here the teardown itself: no
    # exception escapes it, and the failure is logged. The refusal a client gets for such an
    # offer is checked against a real service in tests/integration/test_whip_errors.py
    # (test_whip_refusals_and_health, "BUNDLE names a missing mid").
    class BrokenClose:
        async def close(self) -> None:
            raise AttributeError("'NoneType' object has no attribute 'stop'")

    class BrokenSink:
        async def aclose(self) -> None:
            raise RuntimeError("already closed")

    settings = load_settings(None, data_dir=tmp_path / "data", demo=False)
    sessions = WhipSessions(settings, manager=None, metrics=Metrics())  # type: ignore[arg-type]
    session = WhipSession("s1", "cam", BrokenClose(), "etag")  # type: ignore[arg-type]
    session.blackholes.append(BrokenSink())  # type: ignore[arg-type]
    await sessions._teardown(session)
    assert session.closed and "closing its peer connection failed" in caplog.text


@pytest.mark.parametrize("host", ["169.254.169.254", "224.0.0.251", "0.0.0.0", "::", "::ffff:169.254.169.254", "fd00::99%a\x00b"])
async def test_aioice_never_pairs_a_remote_address_the_monitor_must_not_send_to(host: str) -> None:
    # The SDP filters see a candidate's text; an mDNS name (webrtc.resolve_mdns) reaches aioice
    # as a name and is resolved there, to whatever a host on the link answered. The check sits
    # where aioice takes the resolved address, so these are refused however they arrive.
    import aioice

    import monitor.sources.webrtc  # noqa: F401  (installs the check)

    conn = aioice.Connection(ice_controlling=True, components=1)
    try:
        def candidate(address: str) -> aioice.Candidate:
            return aioice.Candidate("1", 1, "udp", 2130706431, address, 9, "host")

        conn._add_remote_candidate(candidate(host), host)
        conn._add_remote_candidate(candidate("192.0.2.7"), "192.0.2.7")
        assert [c.host for c in conn.remote_candidates] == ["192.0.2.7"]
    finally:
        await conn.close()


async def test_by_default_no_stun_or_turn_server_is_ever_contacted() -> None:
    # aiortc reads a missing list (None) as stun.l.google.com: the default must be an empty
    # list, and the ICE agent a session builds from it must know no STUN or TURN server.
    from aiortc import RTCPeerConnection

    from monitor.sources.webrtc import rtc_configuration

    config = rtc_configuration(load_settings(None, demo=False).webrtc)
    assert config.iceServers == []
    pc = RTCPeerConnection(config)
    try:
        pc.addTransceiver("video", direction="recvonly")
        agent = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection
        assert agent.stun_server is None and agent.turn_server is None
    finally:
        await pc.close()


async def test_an_offer_is_refused_for_streams_whose_decoder_is_still_stuck(tmp_path: Path) -> None:
    # The capacity check reads the manager's slots_taken(), which also counts removed streams
    # whose decoder thread is stuck: one listed stream plus one stuck leaves no room at 2, so
    # the offer gets 503 before anything is built (counting the list alone let it through, to be
    # refused halfway through building). The count itself is tested in test_stream_teardown.py.
    from aiortc import RTCConfiguration, RTCPeerConnection

    from monitor.api.whip import Refused

    class Manager:
        max_streams = 2

        def list(self) -> list[object]:
            from types import SimpleNamespace

            return [SimpleNamespace(id="other")]

        def slots_taken(self) -> int:
            return 2

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    sessions = WhipSessions(load_settings(None, data_dir=tmp_path / "data", demo=False), Manager(), Metrics())  # type: ignore[arg-type]

    async def build(*args: object) -> None:
        raise AssertionError("nothing may be built past the capacity check")

    sessions._build = build  # type: ignore[method-assign]
    sessions.reserve()
    with pytest.raises(Refused) as refused:
        await sessions.create("cam", offer)
    assert refused.value.status == 503 and refused.value.metric == "capacity"
    assert "room for 0 more stream(s) (at most 2)" in str(refused.value)
    assert sessions._reserved == 0 and sessions._pending_tracks == 0


class ClosesPC:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def one_session(tmp_path: Path) -> tuple[WhipSessions, WhipSession, ClosesPC, Metrics]:
    """A registry holding one session without streams (the manager must not be asked)."""
    metrics = Metrics()
    sessions = WhipSessions(load_settings(None, data_dir=tmp_path / "data", demo=False), manager=None, metrics=metrics)  # type: ignore[arg-type]
    pc = ClosesPC()
    session = WhipSession("s1", "cam", pc, '"etag"')  # type: ignore[arg-type]
    sessions.sessions[session.id] = session
    metrics.whip_sessions_active.inc()
    return sessions, session, pc, metrics


async def test_a_failed_connection_ends_its_session_at_once(tmp_path: Path) -> None:
    # Not at the next timer: its slot and sockets are freed when ICE says it failed.
    sessions, session, pc, metrics = one_session(tmp_path)
    sessions._on_connection(session, "failed")
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.gather(*sessions._ending)
    assert session.closed and pc.closed and sessions.sessions == {}
    value = metrics.registry.get_sample_value
    assert value("deepfake_monitor_whip_sessions_failed_total", {"reason": "ice_failed"}) == 1
    assert value("deepfake_monitor_whip_sessions_active") == 0


async def test_a_session_is_found_only_under_its_own_stream(tmp_path: Path) -> None:
    sessions, session, _, _ = one_session(tmp_path)
    assert sessions.find("cam", "s1") is session
    with pytest.raises(Refused) as refused:
        sessions.find("other", "s1")
    assert refused.value.status == 404
