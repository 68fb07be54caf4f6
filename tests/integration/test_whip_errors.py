"""WHIP refuses what it must, with the right status and a reason, and the service stays healthy."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from monitor.config import load_settings
from monitor.sources.webrtc import count_candidates, set_local_description
from tests.integration.test_whip_publish import TOKEN, FaceTrack, make_settings, publish, until
from tests.support.service import running_service

pytestmark = pytest.mark.integration

SDP = {"Content-Type": "application/sdp"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def real_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(FaceTrack(), direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def only_vp9(offer: str) -> str:
    """The offer with its video codecs renamed to VP9, which aiortc cannot decode."""
    return offer.replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000")


async def test_an_offer_without_a_direction_attribute_is_answered_as_sendrecv() -> None:
    # RFC 8866: no direction attribute means sendrecv. aiortc needs one, and such an offer was
    # refused with "cannot answer the offer: None is not in list".
    from aiortc import RTCSessionDescription

    from monitor.api.whip import check_offer, with_explicit_directions

    offer = (await real_offer()).replace("a=sendonly\r\n", "")
    fixed = with_explicit_directions(offer)
    assert fixed.count("a=sendrecv") == 1 and fixed.endswith("\r\n") and check_offer(fixed, 4) == ["0"]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=fixed, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert "a=recvonly" in pc.localDescription.sdp or "a=sendrecv" in pc.localDescription.sdp
    finally:
        await pc.close()
    session_level = offer.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert "a=sendonly\r\n" in with_explicit_directions(session_level).split("m=video")[1]
    assert with_explicit_directions(fixed) == fixed  # nothing to add: the offer as it came


async def test_whip_refusals_and_health(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN},
        webrtc={"max_sdp_bytes": 4096, "max_sessions": 1},
    )
    offer = await real_offer()
    assert len(offer.encode()) < 4096
    cases = [
        # (what, headers, body, status, reason fragment)
        ("no token", SDP, offer, 401, "missing bearer token"),
        ("wrong token", {**SDP, "Authorization": "Bearer " + "x" * 32}, offer, 403, "wrong bearer token"),
        # No bearer credentials at all: 401 with a challenge, as the REST API answers (was 403).
        ("Basic credentials", {**SDP, "Authorization": "Basic dXNlcjpwYXNz"}, offer, 401, "missing bearer token"),
        ("empty Bearer", {**SDP, "Authorization": "Bearer"}, offer, 401, "missing bearer token"),
        ("wrong content type", {**AUTH, "Content-Type": "application/json"}, offer, 415, "application/sdp"),
        ("no content type", AUTH, offer, 415, "application/sdp"),
        ("oversized body", {**AUTH, **SDP}, offer + "a=x-pad:" + "p" * 5000 + "\r\n", 413, "larger than 4096"),
        ("not SDP", {**AUTH, **SDP}, "hello", 400, "malformed SDP"),
        ("broken SDP", {**AUTH, **SDP}, "v=0\r\nm=video x\r\n", 400, "malformed SDP"),
        ("no VP8/H264", {**AUTH, **SDP}, only_vp9(offer), 422, "VP8 or H264"),
        # Said "no decodable video codec ... got video/vp8" though VP8 was offered.
        ("video not sent", {**AUTH, **SDP}, offer.replace("a=sendonly", "a=recvonly"), 422, "does not send"),
        ("audio only", {**AUTH, **SDP}, offer.replace("m=video", "m=audio").replace("VP8/90000", "opus/48000/2"), 422, ""),
        ("not UTF-8", {**AUTH, **SDP}, b"v=0\r\n\xff\xfe", 400, "UTF-8"),
        # aiortc took this one, failed to answer, then failed to close: a 500 hid the 422.
        ("BUNDLE names a missing mid", {**AUTH, **SDP}, offer.replace("a=group:BUNDLE 0", "a=group:BUNDLE 5 0"), 400, "a=group:BUNDLE"),
        # Answered, a session that could never pass DTLS died later with no reason given.
        ("unverifiable fingerprint", {**AUTH, **SDP}, re.sub(r"a=fingerprint:sha-\d+", "a=fingerprint:md5", offer), 400, "a=fingerprint"),
        ("garbage fingerprint", {**AUTH, **SDP}, re.sub(r"(a=fingerprint:sha-256) \S+", r"\1 zz", offer), 400, "hex pairs"),
    ]
    assert "a=group:BUNDLE 0\r\n" in offer and "a=fingerprint:sha-256" in offer
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            for what, headers, body, status, reason in cases:
                r = await client.post("/whip/cam1", content=body, headers=headers)
                assert r.status_code == status, (what, r.status_code, r.text)
                assert reason in r.json()["error"], (what, r.text)
                assert (r.headers.get("www-authenticate") == "Bearer") == (status == 401), (what, r.headers)
            assert (await client.post("/whip/bad%20id", content=offer, headers={**AUTH, **SDP})).status_code == 400
            # A body over the server-wide limit is cut off before it is read.
            huge = await client.post("/whip/cam1", content="v=0\r\n" + "a" * 70_000, headers={**AUTH, **SDP})
            assert huge.status_code == 413

            # CORS preflight needs no token.
            pre = await client.options("/whip/cam1")
            assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]
            assert pre.headers["accept-post"] == "application/sdp"

            # Session limit: the second concurrent publisher gets 503 with Retry-After.
            pc1, first = await publish(svc.base, "cam1", [FaceTrack((160, 120))])
            assert first.status_code == 201, first.text
            pc2, second = await publish(svc.base, "cam2", [FaceTrack((160, 120))])
            assert second.status_code == 503 and int(second.headers["retry-after"]) > 0
            # PATCH: wrong content type, stale ETag, then a good trickle fragment (aiortc's offer
            # ended its candidates, so only a repeated end is good), then a candidate after that end.
            loc = first.headers["location"]
            frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
            end = "a=mid:0\r\na=end-of-candidates\r\n"
            patch_type = {**AUTH, "Content-Type": "application/trickle-ice-sdpfrag"}
            assert "a=end-of-candidates" in pc1.localDescription.sdp  # what the session was offered
            assert (await client.patch(loc, content=frag, headers=AUTH)).status_code == 415
            # Trickling needs the token as publishing does: a session URL alone is not enough.
            trickle_only = {"Content-Type": "application/trickle-ice-sdpfrag"}
            assert (await client.patch(loc, content=frag, headers=trickle_only)).status_code == 401
            wrong = {**trickle_only, "Authorization": "Bearer " + "x" * 32}
            assert (await client.patch(loc, content=frag, headers=wrong)).status_code == 403
            assert (await client.patch(loc, content=frag, headers={**patch_type, "If-Match": '"nope"'})).status_code == 412
            # aioice took any port; checking this pair raised OverflowError and closed a socket.
            bad_port = "a=mid:0\r\na=candidate:1 1 udp 2130706431 10.1.2.3 -5 typ host\r\n"
            refused = await client.patch(loc, content=bad_port, headers=patch_type)
            assert refused.status_code == 400 and "port -5 is not 0-65535" in refused.json()["error"], refused.text
            # If-Match is a list (RFC 9110): the session's tag anywhere in it matches.
            listed = f'"other", {first.headers["etag"]}'
            ok = await client.patch(loc, content=end, headers={**patch_type, "If-Match": listed})
            assert ok.status_code == 204, ok.text
            # A session URL: what it accepts, and 405 naming it for anything else (a GET fell
            # through to the dashboard's files, a 404 that reads as "session gone").
            pre = await client.options(loc)
            assert pre.headers["accept-patch"] == "application/trickle-ice-sdpfrag" and "accept-post" not in pre.headers
            for method in ("GET", "HEAD", "PUT", "POST"):
                other = await client.request(method, loc, headers=AUTH)
                assert other.status_code == 405 and other.headers["allow"] == "PATCH, DELETE, OPTIONS", (method, other.status_code)
            assert (await client.get("/whip/cam1", headers=AUTH)).headers["allow"] == "POST, OPTIONS"
            late = await client.patch(loc, content=frag, headers=patch_type)
            assert late.status_code == 422 and "end-of-candidates" in late.json()["error"], late.text
            restart = "a=ice-ufrag:zzzz\r\na=ice-pwd:" + "p" * 24 + "\r\n" + frag
            assert (await client.patch(loc, content=restart, headers=patch_type)).status_code == 422
            assert (await client.patch(loc + "x", content=frag, headers=patch_type)).status_code == 404
            assert (await client.delete(loc)).status_code == 401
            assert (await client.delete(loc, headers=AUTH)).status_code == 200
            for pc in (pc1, pc2):
                await pc.close()

            health = await client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            reg = svc.runtime.metrics.registry
            for reason, n in [("unauthorized", 5), ("forbidden", 2), ("unsupported_media_type", 3),
                              ("too_large", 1), ("malformed_sdp", 7), ("unanswerable_sdp", 3), ("capacity", 1),
                              ("candidates_ended", 1)]:
                got = reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": reason})
                assert got == n, (reason, got)
            assert reg.get_sample_value("deepfake_monitor_whip_sessions_active") == 0
            assert svc.runtime.manager.list() == []


def without_fingerprint(offer: str) -> str:
    """ICE credentials and rtcp-mux, but no DTLS fingerprint: aiortc fails on it with AttributeError."""
    return "".join(line for line in offer.splitlines(keepends=True) if not line.startswith("a=fingerprint:"))


def port_out_of_range(offer: str) -> str:
    """The offer with its first ICE candidate's port set to 99999."""
    return re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ \S+ )\d+", r"\g<1>99999", offer, count=1)


def zone_id(offer: str) -> str:
    """The offer with its first ICE candidate at an IPv6 address with a zone id holding a NUL."""
    return re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ )\S+", "\\g<1>fd00::99%a\x00b", offer, count=1)


async def test_a_candidate_with_a_zone_id_is_dropped_and_the_offer_answered(tmp_path: Path) -> None:
    # Before: taken as it was; the first check to it raised TypeError in sendto and closed the
    # session's socket. The rest of the offer is good: answered, without that candidate.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    offer = zone_id(await real_offer())
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/cam1", content=offer, headers={**AUTH, **SDP})
            assert r.status_code == 201, r.text
            [session] = svc.runtime.app.state.whip_sessions.sessions.values()
            assert session.remote_candidates == count_candidates(offer) - 1
            assert (await client.delete(r.headers["location"], headers=AUTH)).status_code == 200


def video_twice(offer: str) -> str:
    """The video m-section repeated, so two m-lines share ``a=mid:0``."""
    head, video = offer.split("m=video", 1)
    return head + "m=video" + video + "m=video" + video


async def test_whip_offers_aiortc_chokes_on_get_400_and_free_the_slot(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN}, webrtc={"max_sessions": 1}
    )
    offer = await real_offer()
    cases = [
        (without_fingerprint(offer), "no a=fingerprint"),
        (video_twice(offer), "more than one m-line with a=mid:0"),
        (port_out_of_range(offer), "port 99999 is not 0-65535"),
        # Past the up-front checks: aiortc itself refuses it (ValueError), a 400 and not a 500.
        (re.sub(r"a=ice-(ufrag|pwd):[^\r\n]*\r\n", "", offer), "ICE username fragment or password is missing"),
    ]
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            for body, reason in cases:
                r = await client.post("/whip/cam1", content=body, headers={**AUTH, **SDP})
                assert r.status_code == 400, (reason, r.text)
                assert reason in r.json()["error"], r.text
        reg = svc.runtime.metrics.registry
        failed = reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "malformed_sdp"})
        assert failed == 4
        sessions = svc.runtime.app.state.whip_sessions
        assert sessions.sessions == {} and sessions._reserved == 0
        assert svc.runtime.manager.list() == []
        # The only session slot is free again: a good offer is answered.
        pc, ok = await publish(svc.base, "cam1", [FaceTrack((160, 120))])
        assert ok.status_code == 201, ok.text
        await pc.close()


def with_a_text_section(offer: str) -> str:
    """The offer plus an m=text section, bundled, with the video's DTLS and ICE lines."""
    video = offer.split("m=video", 1)[1].split("\r\n")
    dtls = "".join(line + "\r\n" for line in video if line.startswith(("a=ice-", "a=fingerprint", "a=setup")))
    assert "a=group:BUNDLE 0\r\n" in offer
    return offer.replace("a=group:BUNDLE 0\r\n", "a=group:BUNDLE 0 7\r\n") + "m=text 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:7\r\na=rtcp-mux\r\na=rtpmap:98 t140/1000\r\n" + dtls


async def test_offers_that_pass_the_checks_but_aiortc_cannot_answer_get_422_and_free_the_slot(tmp_path: Path) -> None:
    # A second video track offering only VP9/AV1 (aiortc: OperationError), and an m=text
    # section (aiortc: AttributeError while answering): a 422 with the reason, not a 500.
    head, first, second = (await video_offer(2)).split("m=video")
    cases = [head + "m=video" + first + "m=video" + only_vp9(second), with_a_text_section(await real_offer())]
    async with running_service(make_settings(tmp_path, webrtc={"max_sessions": 1})) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            for body in cases:
                r = await client.post("/whip/cam", content=body, headers={**AUTH, **SDP})
                assert r.status_code == 422, r.text
                assert "cannot answer the offer" in r.json()["error"], r.text
        sessions = svc.runtime.app.state.whip_sessions
        assert sessions.sessions == {} and sessions._reserved == 0 and svc.runtime.manager.list() == []
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "unanswerable_sdp"}) == 2
        pc, ok = await publish(svc.base, "cam", [FaceTrack((160, 120))])  # the only slot is free again
        try:
            assert ok.status_code == 201, ok.text
        finally:
            await pc.close()


async def test_whip_takes_the_token_in_the_query_too(tmp_path: Path) -> None:
    offer = await real_offer()
    async with running_service(make_settings(tmp_path)) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            wrong = await client.post("/whip/cam", params={"access_token": "x" * 32}, content=offer, headers=SDP)
            assert wrong.status_code == 403, wrong.text
            r = await client.post("/whip/cam", params={"access_token": TOKEN}, content=offer, headers=SDP)
            assert r.status_code == 201, r.text
            gone = await client.delete(r.headers["location"], params={"access_token": TOKEN})
            assert gone.status_code == 200, gone.text
        assert svc.runtime.app.state.whip_sessions.sessions == {}


async def test_a_session_that_never_connects_ends_after_session_idle_s(tmp_path: Path) -> None:
    # The publisher takes the answer and never starts ICE: without the connect timer it would
    # hold a max_sessions slot for good, and a few such POSTs would lock WHIP out.
    async with running_service(make_settings(tmp_path, webrtc={"session_idle_s": 1.0, "max_sessions": 1})) as svc:
        rt = svc.runtime
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/cam", content=await real_offer(), headers={**AUTH, **SDP})  # its peer is closed
            assert r.status_code == 201, r.text

            async def gone() -> bool:
                return not rt.manager.list() and not rt.app.state.whip_sessions.sessions

            await until(gone, 10, "the session that never connected to end")
            value = rt.metrics.registry.get_sample_value
            assert value("deepfake_monitor_whip_sessions_failed_total", {"reason": "ice_timeout"}) == 1
            assert value("deepfake_monitor_whip_sessions_active") == 0
            again = await client.post("/whip/cam", content=await real_offer(), headers={**AUTH, **SDP})
            assert again.status_code == 201, again.text


async def test_a_connected_session_outlives_session_idle_s(tmp_path: Path) -> None:
    # Once connected, the connect timer gives way to the no-video watchdog: a healthy
    # publisher is not dropped session_idle_s after its POST.
    import asyncio

    async with running_service(make_settings(tmp_path, webrtc={"session_idle_s": 2.0})) as svc:
        rt = svc.runtime
        pc, r = await publish(svc.base, "cam", [FaceTrack((160, 120))])
        try:
            assert r.status_code == 201, r.text

            async def receiving() -> bool:
                return any(p.id == "cam" and p.status().frames_received > 3 for p in rt.manager.list())

            await until(receiving, 15, "frames on cam")
            await asyncio.sleep(3.5)  # past session_idle_s, counted from the POST
            assert [p.id for p in rt.manager.list()] == ["cam"] and len(rt.app.state.whip_sessions.sessions) == 1
            assert rt.metrics.registry.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "ice_timeout"}) in (None, 0.0)
        finally:
            await pc.close()


async def video_offer(tracks: int) -> str:
    """An aiortc offer with ``tracks`` sendonly video m-lines."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(tracks):
        pc.addTransceiver("video", direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def watch_adds(svc: object, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stream ids the manager is asked to add from now on."""
    manager = svc.runtime.manager  # type: ignore[attr-defined]
    added: list[str] = []
    real_add = manager.add

    async def add(stream: object, source: object = None) -> object:
        added.append(stream.id)  # type: ignore[attr-defined]
        return await real_add(stream, source=source)

    monkeypatch.setattr(manager, "add", add)
    return added


async def test_a_stream_id_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    # "abc\n" passed the id check; the newline then broke the Location header (the response
    # crashed) after the stream and session were registered.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    offer = await real_offer()
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            for path in ("/whip/abc%0A", "/whip/abc%0D%0A", "/whip/%0Aabc"):
                r = await client.post(path, content=offer, headers={**AUTH, **SDP})
                assert r.status_code == 400 and "stream id" in r.json()["error"], (path, r.text)
        sessions = svc.runtime.app.state.whip_sessions
        assert sessions.sessions == {} and sessions._reserved == 0
        assert svc.runtime.manager.list() == []
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "bad_stream_id"}) == 3


async def test_too_many_video_tracks_are_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One offer with 60 video m-lines built 60 pipelines (about 2 GB) and took every stream slot.
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN}, webrtc={"max_video_tracks": 2}
    )
    three = await video_offer(3)
    async with running_service(settings) as svc:
        added = watch_adds(svc, monkeypatch)
        reg = svc.runtime.metrics.registry
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/room", content=three, headers={**AUTH, **SDP})
            assert r.status_code == 422, r.text
            assert "3 video tracks" in r.json()["error"] and "webrtc.max_video_tracks" in r.json()["error"]
            # Two mids that make one stream name: before, the first pipeline was built and the
            # publisher got 409 "stream 'room.v_1' already exists" for a stream that never did.
            clash = (await video_offer(2)).replace("a=mid:0", "a=mid:v+1").replace("a=mid:1", "a=mid:v_1")
            clash = clash.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE v+1 v_1")
            r = await client.post("/whip/room", content=clash, headers={**AUTH, **SDP})
            assert r.status_code == 400 and "would both be stream 'room.v_1'" in r.json()["error"], r.text
            assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "too_many_tracks"}) == 1
            # Within the limit it is answered.
            pc, ok = await publish(svc.base, "room", [FaceTrack((160, 120)), FaceTrack((160, 120))])
            assert ok.status_code == 201, ok.text
            assert (await client.delete(ok.headers["location"], headers=AUTH)).status_code == 200
            await pc.close()
        assert added == ["room.0", "room.1"]  # none for the refused offer


async def test_audio_m_lines_count_against_the_track_limit(tmp_path: Path) -> None:
    # Each audio m-line got a receiver and a task draining it, without limit.
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN}, webrtc={"max_video_tracks": 1}
    )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendonly")
    for _ in range(2):
        pc.addTransceiver("audio", direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    offer = pc.localDescription.sdp
    await pc.close()
    async with running_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/room", content=offer, headers={**AUTH, **SDP})
        assert r.status_code == 422 and "3 audio and video m-lines" in r.json()["error"], r.text
        assert svc.runtime.manager.list() == []
        # A data channel's m-line is no track: video, audio and a data channel pass.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        pc.createDataChannel("chat")
        await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
        assert pc.localDescription.sdp.count("m=") == 3
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/room", content=pc.localDescription.sdp, headers={**AUTH, **SDP})
            assert r.status_code == 201, r.text
            assert (await client.delete(r.headers["location"], headers=AUTH)).status_code == 200
        await pc.close()


async def test_more_tracks_than_the_manager_has_room_for_get_503_before_any_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager refused the track that did not fit only after the others were built.
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    two = await video_offer(2)
    async with running_service(settings) as svc:
        added = watch_adds(svc, monkeypatch)
        svc.runtime.manager.max_streams = 1
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/room", content=two, headers={**AUTH, **SDP})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert "room for 1 more stream" in r.json()["error"]
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "capacity"}) == 1
        assert added == []
        sessions = svc.runtime.app.state.whip_sessions
        assert sessions.sessions == {} and sessions._reserved == 0
        assert svc.runtime.manager.list() == []


async def test_a_session_refused_after_its_first_stream_was_added_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A two-track offer whose second stream name is taken while the session is being built (by
    # an API client, after the up-front check): its first stream was already added and its peer
    # connection built, and both must go with the 409.
    import monitor.api.whip as whip_module
    from monitor.config import StreamConfig

    built: list[RTCPeerConnection] = []

    class Recorded(RTCPeerConnection):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(whip_module, "RTCPeerConnection", Recorded)
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        manager = svc.runtime.manager
        real_add = manager.add

        async def add(stream: StreamConfig, source: object = None) -> object:
            if stream.id == "room.1":  # the other client wins the name
                await real_add(StreamConfig(id="room.1", url="demo://astronaut"))
            return await real_add(stream, source=source)

        monkeypatch.setattr(manager, "add", add)
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/room", content=await video_offer(2), headers={**AUTH, **SDP})
            assert r.status_code == 409 and "room.1" in r.json()["error"], r.text
        assert [(p.id, p.config.url) for p in manager.list()] == [("room.1", "demo://astronaut")]  # room.0 is gone
        sessions = svc.runtime.app.state.whip_sessions
        assert sessions.sessions == {} and sessions._reserved == 0 and sessions._pending_tracks == 0
        assert len(built) == 1 and built[0].connectionState == "closed"
        reg = svc.runtime.metrics.registry
        assert reg.get_sample_value("deepfake_monitor_whip_sessions_active") == 0
        assert reg.get_sample_value("deepfake_monitor_whip_sessions_failed_total", {"reason": "conflict"}) == 1


# --- found by a mutation audit -------------------------------------------------------------


async def test_whip_cors_answers_only_the_listed_origins(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN, "cors_origins": ["https://studio.example"]}
    )
    async with running_service(settings) as svc, httpx.AsyncClient(base_url=svc.base) as client:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
        for path in ("/whip/cam1", "/whip/cam1/some-session"):
            listed = await client.options(path, headers={"Origin": "https://studio.example", **preflight})
            assert listed.status_code == 204
            assert listed.headers.get("access-control-allow-origin") == "https://studio.example"
            assert "origin" in listed.headers.get("vary", "").lower()  # caches must not reuse it for another origin
            other = await client.options(path, headers={"Origin": "https://evil.example", **preflight})
            assert other.status_code == 204
            assert "access-control-allow-origin" not in other.headers
        # A refused publish (no token) from an unlisted page gets no CORS grant either.
        refused = await client.post("/whip/cam1", content="v=0\r\n", headers={"Origin": "https://evil.example", "Content-Type": "application/sdp"})
        assert refused.status_code == 401
        assert "access-control-allow-origin" not in refused.headers
        # A body over server.max_body_bytes is refused before WHIP sees it: from a listed page the
        # refusal is readable all the same (it was an opaque "Failed to fetch"), from others not.
        huge = "v=0\r\n" + "a" * 70_000
        for origin, granted in (("https://studio.example", True), ("https://evil.example", False)):
            r = await client.post("/whip/cam1", content=huge, headers={"Origin": origin, "Authorization": f"Bearer {TOKEN}", **SDP})
            assert r.status_code == 413 and r.json()["error"] == "request body too large", r.text
            assert r.headers.get("access-control-allow-origin") == (origin if granted else None)


@pytest.mark.parametrize("where", ["interfaces", "sockets"])
async def test_an_offer_the_process_has_no_descriptors_for_gets_503_not_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    # Out of file descriptors, listing the interfaces (aioice through ifaddr opens a socket) raised
    # EMFILE while the answer was built: a bare 500. Binding the media sockets failing instead
    # (aioice logs that at INFO) gave a 201 whose answer had no candidate, a session that could
    # never connect.
    import asyncio
    import errno

    import ifaddr

    def no_descriptors(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    async def no_sockets(*args: object, **kwargs: object) -> None:
        no_descriptors()

    offer = await real_offer()
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc:
        if where == "interfaces":
            monkeypatch.setattr(ifaddr, "get_adapters", no_descriptors)
        else:
            monkeypatch.setattr(asyncio.get_running_loop(), "create_datagram_endpoint", no_sockets)
        async with httpx.AsyncClient(base_url=svc.base) as client:
            r = await client.post("/whip/cam1", content=offer, headers={**AUTH, **SDP})
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"] == {
            "interfaces": "cannot set up media now (Too many open files); retry later",
            "sockets": "no address for media could be bound now; retry later",
        }[where]
        assert svc.runtime.app.state.whip_sessions.sessions == {}


async def test_an_offer_whose_m_lines_are_not_bundled_is_refused_up_front(tmp_path: Path) -> None:
    # Before: answered with one ICE transport per section, after which a candidate trickled with
    # the second section's own credentials was refused as an "ICE restart".
    from aiortc.mediastreams import AudioStreamTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(FaceTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await set_local_description(pc, await pc.createOffer(), ("127.0.0.1",))
    bundled = pc.localDescription.sdp
    await pc.close()
    assert "a=group:BUNDLE 0 1\r\n" in bundled
    settings = load_settings(None, data_dir=tmp_path / "data", demo=False, server={"token": TOKEN})
    async with running_service(settings) as svc, httpx.AsyncClient(base_url=svc.base) as client:
        for offer in (bundled.replace("a=group:BUNDLE 0 1\r\n", ""), bundled.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")):
            r = await client.post("/whip/cam1", content=offer, headers={**AUTH, **SDP})
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "the offer's m-lines are not all in one a=group:BUNDLE: WHIP needs them bundled (RFC 9725)"
        assert svc.runtime.app.state.whip_sessions.sessions == {}
        # Bundled, the same offer is taken.
        r = await client.post("/whip/cam1", content=bundled, headers={**AUTH, **SDP})
        assert r.status_code == 201, r.text
        assert (await client.delete(r.headers["location"], headers=AUTH)).status_code == 200
