"""WHIP ingest (RFC 9725) on the service's own port: sessions, trickle ICE, teardown, limits."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCIceCandidate, RTCIceTransport, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from monitor.api.auth import token_given, token_ok
from monitor.config import STREAM_ID_RULE, Settings, StreamConfig, is_stream_id
from monitor.errors import ConfigError, ShuttingDown, StreamExists, StreamNotFound, StreamStartFailed
from monitor.metrics import Metrics
from monitor.pipeline.manager import StreamManager
from monitor.sources.webrtc import (
    MAX_REMOTE_CANDIDATES,
    AudioBlackhole,
    WhipTrackSource,
    count_candidates,
    drop_mdns_candidates,
    drop_unroutable_candidates,
    extra_host_addresses,
    is_mdns_host,
    is_unroutable_address,
    rtc_configuration,
    set_local_description,
    watch_states,
)

logger = logging.getLogger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
ENDPOINT_METHODS = "POST, OPTIONS"  # /whip/{stream}
SESSION_METHODS = "PATCH, DELETE, OPTIONS"  # /whip/{stream}/{session}


def etag_matches(if_match: str, etag: str) -> bool:
    """RFC 9110 If-Match: ``*`` or a list of entity tags, compared strongly (a weak ``W/``
    tag never matches)."""
    tags = [t.strip() for t in if_match.split(",")]
    return "*" in tags or etag in tags
DECODABLE = {"video/vp8", "video/h264"}  # what aiortc decodes
# DTLS fingerprint algorithms aiortc can verify (aiortc.rtcdtlstransport.X509_DIGEST_ALGORITHMS).
FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}  # digest sizes
FINGERPRINT_ALGORITHMS = frozenset(FINGERPRINT_BYTES)
RETRY_AFTER_S = 5
_MID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SDP_LINE = re.compile(r"[a-z]=.*")  # RFC 8866: <type>=<value>, the type one lower-case letter
# With webrtc.resolve_mdns, the most one PATCH waits for its mDNS candidates to resolve (aioice
# gives each name 1 s; they resolve concurrently). What is not resolved by then is not added.
MDNS_TRICKLE_DEADLINE_S = 2.0
# Remote ICE candidates one session may give, in its offer and trickled (MAX_REMOTE_CANDIDATES,
# shared with WHEP answers): without a cap a 32 KB PATCH adds hundreds.


class Refused(Exception):
    """A request the endpoint answers with a 4xx/5xx and a reason; ``metric`` labels the failure."""

    def __init__(self, status: int, reason: str, metric: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.metric = metric
        self.headers = headers or {}


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(eq=False)
class WhipSession:
    """One WHIP publisher: its peer connection and the streams its video tracks became."""

    id: str
    stream_id: str
    pc: RTCPeerConnection
    etag: str
    sources: list[WhipTrackSource] = field(default_factory=list)
    blackholes: list[AudioBlackhole] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    closed: bool = False
    mdns_dropped: int = 0  # mDNS candidates dropped so far (offer and trickle)
    remote_candidates: int = 0  # candidates given so far (offer and trickle), against MAX_REMOTE_CANDIDATES
    adding: int = 0  # trickle PATCHes whose candidates are being added now
    adds_done: asyncio.Event = field(default_factory=_set_event)  # set while ``adding`` is 0

    @property
    def stream_ids(self) -> list[str]:
        return [s.stream_id for s in self.sources]


class WhipSessions:
    """Owns every WHIP session. A session ends on DELETE, on ICE failure or timeout, when a
    video track goes silent, or when one of its streams is removed; whatever the cause, its
    streams leave the manager and its peer connection closes, once (``end``)."""

    def __init__(self, settings: Settings, manager: StreamManager, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.sessions: dict[str, WhipSession] = {}
        self._reserved = 0  # sessions being negotiated: they count against the limit too
        self._pending_tracks = 0  # streams those sessions will add: they count against the manager's room
        self._hosts = extra_host_addresses(settings)
        self._ending: set[asyncio.Task[None]] = set()

    def reserve(self) -> None:
        if len(self.sessions) + self._reserved >= self.settings.webrtc.max_sessions:
            raise Refused(
                503,
                f"at most {self.settings.webrtc.max_sessions} WHIP sessions",
                "capacity",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self._reserved += 1

    async def create(self, stream_id: str, offer: str) -> tuple[WhipSession, str]:
        """Answer ``offer`` and start one stream per video track; the reservation is released."""
        try:
            return await self._create(stream_id, offer)
        finally:
            self._reserved -= 1

    async def _create(self, stream_id: str, offer: str) -> tuple[WhipSession, str]:
        offer = with_explicit_directions(offer)
        mids = check_offer(offer, self.settings.webrtc.max_video_tracks)
        names = dict(zip(mids, stream_names(stream_id, mids)))
        by_name: dict[str, list[str]] = {}
        for mid, name in names.items():
            by_name.setdefault(name, []).append(mid)
        for name, same in by_name.items():
            if len(same) > 1:  # a=mid v+1 and v_1 both become <id>.v_1: refused before building either
                raise Refused(400, f"video mids {', '.join(map(repr, same))} would both be stream {name!r}", "malformed_sdp")
        for name in names.values():
            if not is_stream_id(name):
                raise Refused(400, f"stream id {name!r} must be {STREAM_ID_RULE}", "bad_stream_id")
            if any(p.id == name for p in self.manager.list()):
                raise Refused(409, f"stream {name!r} already exists", "conflict")
        # Every track costs a pipeline (a MediaPipe graph, a detector): refuse before building
        # any rather than build some and tear them down when the manager is full.
        free = self.manager.max_streams - self.manager.slots_taken() - self._pending_tracks
        if len(mids) > free:
            raise Refused(
                503,
                f"room for {max(free, 0)} more stream(s) (at most {self.manager.max_streams}); "
                f"the offer has {len(mids)} video tracks",
                "capacity",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        claim = [len(mids)]  # tracks not yet in the manager: each leaves the claim as it is added
        self._pending_tracks += claim[0]
        try:
            return await self._build(stream_id, offer, names, claim)
        finally:
            self._pending_tracks -= claim[0]

    async def _build(
        self, stream_id: str, offer: str, names: dict[str, str], claim: list[int]
    ) -> tuple[WhipSession, str]:
        mdns_dropped = 0
        if not self.settings.webrtc.resolve_mdns:
            offer, mdns_dropped = drop_mdns_candidates(offer)
        offer, unroutable = drop_unroutable_candidates(offer)
        if unroutable:
            logger.info("WHIP offer on %s: dropped %d ICE candidates at multicast, broadcast, unspecified, link-local or zoned addresses", stream_id, unroutable)
        pc = RTCPeerConnection(rtc_configuration(self.settings.webrtc))
        session = WhipSession(secrets.token_urlsafe(12), stream_id, pc, _etag())
        session.remote_candidates = count_candidates(offer)
        self._note_mdns_dropped(session, mdns_dropped, "offer")
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        watch_states(pc, "whip", self.metrics, lambda state: self._on_connection(session, state))
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            except OperationError as exc:
                raise Refused(422, f"cannot answer the offer: {exc}", "unanswerable_sdp") from exc
            except (
                ValueError, InvalidAccessError, InvalidStateError, AssertionError, IndexError, KeyError, AttributeError
            ) as exc:
                # AttributeError: aiortc dereferences parts of the offer it assumes are present.
                raise Refused(400, f"malformed SDP offer: {str(exc) or type(exc).__name__}", "malformed_sdp") from exc
            try:
                await set_local_description(pc, await pc.createAnswer(), self._hosts)
            except (ValueError, AttributeError) as exc:
                # An offer aiortc accepted but cannot build a matching answer for.
                raise Refused(422, f"cannot answer the offer: {str(exc) or type(exc).__name__}", "unanswerable_sdp") from exc
            except OSError as exc:
                # Gathering our addresses failed (out of file descriptors: listing the interfaces
                # opens a socket): was a bare 500.
                logger.warning("WHIP offer on %s: cannot gather ICE candidates: %s", stream_id, exc)
                raise Refused(503, f"cannot set up media now ({exc.strerror or exc}); retry later", "capacity", {"Retry-After": str(RETRY_AFTER_S)}) from exc
            if "a=candidate:" not in pc.localDescription.sdp:
                # Every UDP socket failed to bind (aioice logs that at INFO only): a 201 with no
                # candidate is a session that can never connect.
                logger.warning("WHIP offer on %s: no ICE candidate could be gathered (no UDP socket could be bound)", stream_id)
                raise Refused(503, "no address for media could be bound now; retry later", "capacity", {"Retry-After": str(RETRY_AFTER_S)})
            by_mid = {t.receiver.track: t.mid for t in pc.getTransceivers()}
            video_tracks = [t for t in tracks if t.kind == "video"]
            for track in tracks:
                if track.kind == "audio":
                    session.blackholes.append(AudioBlackhole(track))
            for track in video_tracks:
                name = names.get(by_mid.get(track) or "")
                if name is None:
                    raise Refused(422, "a video track has no usable m-line", "unanswerable_sdp")
                source = WhipTrackSource(
                    name,
                    track,
                    metrics=self.metrics,
                    clock=self.manager.clock,
                    on_close=self._source_closed(session),
                    on_failed=self._source_failed(session),
                )
                stream = StreamConfig(id=name, url=f"whip:/whip/{stream_id}#{by_mid.get(track)}", source="whip")
                try:
                    await self.manager.add(stream, source=source)
                except StreamExists as exc:
                    raise Refused(409, str(exc), "conflict") from exc
                except (ConfigError, ShuttingDown) as exc:
                    raise Refused(503, str(exc), "capacity", {"Retry-After": str(RETRY_AFTER_S)}) from exc
                except StreamStartFailed as exc:
                    raise Refused(503, str(exc), "start_failed", {"Retry-After": str(RETRY_AFTER_S)}) from exc
                finally:
                    # Added (now in manager.list()) or failed: no longer pending either way.
                    claim[0] -= 1
                    self._pending_tracks -= 1
                session.sources.append(source)
                if session.closed:
                    # The connection failed or closed while streams were starting: what was
                    # added is already torn down; refuse rather than register a dead session.
                    raise Refused(422, "the peer connection closed during setup", "ice_failed")
        except BaseException:
            await self._teardown(session)
            raise
        self.sessions[session.id] = session
        self.metrics.whip_sessions_created.inc()
        self.metrics.whip_sessions_active.inc()
        self._arm_timer(session, "ice_timeout")  # it must connect within session_idle_s
        logger.info("WHIP session %s on %s: streams %s", session.id, stream_id, session.stream_ids)
        return session, pc.localDescription.sdp

    def _note_mdns_dropped(self, session: WhipSession, dropped: int, where: str) -> None:
        """Log dropped mDNS candidates: at info the first time in a session, then at debug."""
        if not dropped:
            return
        level = logging.DEBUG if session.mdns_dropped else logging.INFO
        session.mdns_dropped += dropped
        logger.log(
            level,
            "WHIP session %s on %s: dropped %d mDNS (.local) ICE candidates of the %s (webrtc.resolve_mdns is off)",
            session.id, session.stream_id, dropped, where,
        )

    def _source_closed(self, session: WhipSession) -> Callable[[WhipTrackSource], Awaitable[None]]:
        async def closed(source: WhipTrackSource) -> None:
            # The manager removed one of the session's streams (API delete, shutdown): the
            # session has lost its purpose.
            await self.end(session, "stream_removed")

        return closed

    def _source_failed(self, session: WhipSession) -> Callable[[WhipTrackSource, str], None]:
        def failed(source: WhipTrackSource, why: str) -> None:
            # Nobody reads the failed track any more, and aiortc keeps decoding into its
            # unbounded queue: end the session (and its peer connection) now.
            if not session.closed:
                self.metrics.whip_sessions_failed.labels("track_failed").inc()
                self._spawn_end(session, f"stream {source.stream_id} failed: {why}")

        return failed

    def _on_connection(self, session: WhipSession, state: str) -> None:
        if session.closed:
            return
        if state == "connected":
            self._watch_video(session)
        elif state == "failed":
            if session.id in self.sessions:
                # A session still being set up is refused as ice_failed, which counts it there.
                self.metrics.whip_sessions_failed.labels("ice_failed").inc()
            self._spawn_end(session, "ice_failed")
        elif state == "closed":
            self._spawn_end(session, "closed")
        else:
            self._arm_timer(session, "ice_timeout")

    def _arm_timer(self, session: WhipSession, reason: str) -> None:
        if session.timer is not None:
            return

        def expired() -> None:
            session.timer = None
            if not session.closed:
                self.metrics.whip_sessions_failed.labels(reason).inc()
                self._spawn_end(session, reason)

        session.timer = asyncio.get_running_loop().call_later(self.settings.webrtc.session_idle_s, expired)

    def _watch_video(self, session: WhipSession) -> None:
        """Replace the connect timer: from now on the session ends when one of its video
        tracks has delivered no frame for ``webrtc.no_video_s``. Without this a publisher
        that vanished keeps its streams, face tracks and open alerts until ICE consent
        expires (about 30 s in aioice, not configurable), and one whose camera stopped keeps
        them for as long as the connection stays up."""
        self._disarm_timer(session)
        limit = self.settings.webrtc.no_video_s
        clock = self.manager.clock
        connected_at = clock.monotonic()  # the first frame is due within `limit` of this
        loop = asyncio.get_running_loop()

        def check() -> None:
            session.timer = None
            if session.closed:
                return
            # The most silent track decides: one dead stream would keep its alerts open.
            last = min(
                (connected_at if s.last_frame_at is None else s.last_frame_at for s in session.sources),
                default=connected_at,
            )
            silent = clock.monotonic() - last
            if silent < limit:
                session.timer = loop.call_later(limit - silent, check)
                return
            self.metrics.whip_sessions_failed.labels("no_video").inc()
            self._spawn_end(session, f"no video for {limit:g} s")

        session.timer = loop.call_later(limit, check)

    def _disarm_timer(self, session: WhipSession) -> None:
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None

    def _spawn_end(self, session: WhipSession, reason: str) -> None:
        task = asyncio.ensure_future(self.end(session, reason))
        self._ending.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(_log_failure)

    async def end(self, session: WhipSession, reason: str) -> None:
        """End a session once: remove its streams from the manager, close its connection."""
        if session.closed:
            return
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.whip_sessions_active.dec()
        logger.info("WHIP session %s on %s ended: %s", session.id, session.stream_id, reason)
        await self._teardown(session)

    async def _teardown(self, session: WhipSession) -> None:
        session.closed = True
        self._disarm_timer(session)
        # Together, not one after another: aiortc goes on decoding every track into a queue
        # nobody reads until the connection closes below, so each pipeline's stop time (its
        # last analysis, closing its alerts) would add up, and so would the frames.
        results = await asyncio.gather(*(self.manager.remove(source.stream_id) for source in session.sources), return_exceptions=True)
        for source, result in zip(session.sources, results):
            if isinstance(result, BaseException) and not isinstance(result, StreamNotFound):  # not found: already removed
                logger.warning("WHIP session %s: removing stream %s failed: %r", session.id, source.stream_id, result)
        # Cleanup must never replace the error that ended the session (a 422 became a 500 when
        # aiortc's close failed on a transceiver it had half built from an odd offer).
        for hole in session.blackholes:
            try:
                await hole.aclose()
            except Exception:
                logger.warning("WHIP session %s: closing an audio sink failed", session.id, exc_info=True)
        try:
            await session.pc.close()
        except Exception:
            logger.warning("WHIP session %s: closing its peer connection failed", session.id, exc_info=True)

    def _check_open(self, session: WhipSession) -> None:
        if session.closed or self.sessions.get(session.id) is not session:
            raise Refused(404, "no such WHIP session", "not_found")

    def find(self, stream_id: str, session_id: str) -> WhipSession:
        session = self.sessions.get(session_id)
        if session is None or session.stream_id != stream_id:
            raise Refused(404, "no such WHIP session", "not_found")
        return session

    async def trickle(self, session: WhipSession, fragment: str) -> None:
        """Add the remote candidates of a trickle-ice-sdpfrag (RFC 8840) to the session.

        Each candidate belongs to the m-section it appears in (that section's ``a=mid``);
        lines before the first ``m=`` form a section too, and candidates without a mid go to
        the session's first media section. A fragment naming a mid the session lacks is
        refused whole (422): nothing is applied, nothing dropped silently. So is one that adds
        candidates to a section whose candidates have ended (aiortc would ignore them).
        ``a=end-of-candidates`` ends its section's candidates (all of them at session level).
        mDNS candidates (``<name>.local``) are dropped, and logged, unless
        ``webrtc.resolve_mdns``; then they are resolved concurrently, for at most
        ``MDNS_TRICKLE_DEADLINE_S`` in all.
        """
        self._check_open(session)
        resolve_mdns = self.settings.webrtc.resolve_mdns
        mdns_dropped = 0
        ufrag: str | None = None
        candidate_lines = 0
        remote = session.pc.remoteDescription
        current_ufrag = SessionDescription.parse(remote.sdp).media[0].ice.usernameFragment if remote else None
        sections = [_FragmentSection()]
        for raw in fragment.splitlines():
            line = raw.strip()
            if line and not _SDP_LINE.fullmatch(line):
                raise Refused(400, f"not an SDP fragment line: {line[:80]!r}", "malformed_sdp")
            if line.startswith("m="):
                sections.append(_FragmentSection())
            elif line.startswith("a=mid:"):
                sections[-1].mid = line[6:]
            elif line.startswith("a=ice-ufrag:"):
                ufrag = line[12:]
            elif line == "a=end-of-candidates":
                sections[-1].end = True
            elif line.startswith("a=candidate"):
                candidate_lines += 1
                if not line.startswith("a=candidate:"):
                    raise Refused(400, f"malformed candidate line: {line[:80]}", "malformed_sdp")
                try:
                    candidate = candidate_from_sdp(line[len("a=candidate:") :])
                except (AssertionError, ValueError, IndexError) as exc:
                    raise Refused(400, f"malformed candidate line: {line[:80]}", "malformed_sdp") from exc
                check_candidate(candidate)
                if not resolve_mdns and is_mdns_host(candidate.ip):
                    mdns_dropped += 1
                    continue
                if is_unroutable_address(candidate.ip):
                    logger.info("WHIP session %s: dropped a trickled ICE candidate at %s (unroutable)", session.id, candidate.ip)
                    continue
                sections[-1].candidates.append(candidate)
        if ufrag is not None and current_ufrag is not None and ufrag != current_ufrag:
            raise Refused(422, "ICE restart is not supported: start a new session", "ice_restart")
        if not candidate_lines and not any(section.end for section in sections):
            # RFC 8840: a fragment carries candidates or their end. One with neither was answered
            # 204, as if its candidates had been added (garbage, an empty body, "a=cand:...").
            raise Refused(400, "the fragment has no a=candidate or a=end-of-candidates line", "malformed_sdp")

        transports = _ice_transports(session.pc)
        first_mid = next(iter(transports), None)
        for section in sections:
            if section.mid is not None and section.mid not in transports:
                raise Refused(422, f"the session has no m-section with a=mid:{section.mid}", "unknown_mid")
        added: list[tuple[RTCIceTransport, RTCIceCandidate]] = []
        for section in sections:
            mid = section.mid if section.mid is not None else first_mid
            if section.candidates and mid is not None and getattr(transports[mid].iceGatherer, "_remote_candidates_end", False):
                # aiortc ignores candidates after end-of-candidates without a word.
                raise Refused(
                    422,
                    f"the candidates of a=mid:{mid} have ended (a=end-of-candidates): start a new session to add more",
                    "candidates_ended",
                )
            for candidate in section.candidates:
                candidate.sdpMid = mid
                # The mid's own transport: with BUNDLE that is the shared one, which
                # pc.addIceCandidate() would skip for every mid but the first.
                added.append((transports[mid], candidate))
        if session.remote_candidates + len(added) > MAX_REMOTE_CANDIDATES:
            raise Refused(
                422,
                f"a session may give at most {MAX_REMOTE_CANDIDATES} ICE candidates; it gave "
                f"{session.remote_candidates} and this fragment has {len(added)}",
                "too_many_candidates",
            )
        session.remote_candidates += len(added)
        self._note_mdns_dropped(session, mdns_dropped, "trickle fragment")
        # No await between the candidates_ended check above and this count: a concurrent PATCH
        # ending the candidates waits for these adds (aiortc drops candidates after the end).
        # The session may have ended while the body was read: its candidates would go nowhere.
        self._check_open(session)
        session.adding += 1
        session.adds_done.clear()
        try:
            await _add_candidates(added, MDNS_TRICKLE_DEADLINE_S)
        finally:
            session.adding -= 1
            if not session.adding:
                session.adds_done.set()
        self._check_open(session)  # ended during the adds (a DELETE, ICE failing): nothing took them
        if mdns_dropped:
            return  # its end-of-candidates too: the peer may still be found as peer-reflexive
        if any(section.end for section in sections):
            while session.adding:  # candidates other PATCHes are still adding land first
                await session.adds_done.wait()
        for section in sections:
            if section.end:
                ended = [transports[section.mid]] if section.mid is not None else list(transports.values())
                for transport in ended:
                    await transport.addRemoteCandidate(None)  # aiortc ignores a repeat


async def _add_candidates(added: list[tuple[RTCIceTransport, RTCIceCandidate]], deadline_s: float) -> None:
    """Add remote candidates concurrently: an address is added at once, an mDNS name (only
    with webrtc.resolve_mdns) waits for its resolution. After ``deadline_s`` in all, those
    still resolving are given up."""
    if not added:
        return
    adds = asyncio.gather(*(transport.addRemoteCandidate(c) for transport, c in added), return_exceptions=True)
    try:
        results = await asyncio.wait_for(adds, deadline_s)
    except asyncio.TimeoutError:
        logger.info("trickle: mDNS candidates not resolved within %g s were not added", deadline_s)
        return
    for result in results:
        if isinstance(result, (ValueError, InternalError)):
            raise Refused(400, f"cannot add candidate: {result}", "malformed_sdp") from result
        if isinstance(result, BaseException):
            raise result


def check_candidate(candidate: RTCIceCandidate) -> None:
    """aioice takes any integer as a candidate's port; checking a pair with one outside 0-65535
    raised OverflowError in asyncio's datagram transport and closed the local socket. (An address
    with an IPv6 zone id is dropped with the unroutable ones: ``is_unroutable_address``.)"""
    if not 0 <= candidate.port <= 65535:
        raise Refused(400, f"malformed SDP: ICE candidate port {candidate.port} is not 0-65535", "malformed_sdp")


_DIRECTIONS = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")


def with_explicit_directions(offer: str) -> str:
    """``offer`` with a direction attribute in every m-section that has none: the session's, or
    sendrecv (RFC 8866 6.7). aiortc needs one, and such a valid offer was refused with
    "cannot answer the offer: None is not in list"."""
    lines = offer.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session_direction = next((line.strip() for line in sections[0] if line.strip() in _DIRECTIONS), "a=sendrecv")
    if len(sections) == 1 or all(any(line.strip() in _DIRECTIONS for line in sec) for sec in sections[1:]):
        return offer
    out = list(sections[0])
    for sec in sections[1:]:
        if not any(line.strip() in _DIRECTIONS for line in sec):
            end = len(sec)
            while end > 1 and not sec[end - 1].strip():  # before the trailing empty line
                end -= 1
            sec = [*sec[:end], session_direction, *sec[end:]]
        out.extend(sec)
    return "\r\n".join(out)


def _fingerprint_ok(algorithm: str, value: str) -> bool:
    """Whether ``value`` is a fingerprint of ``algorithm``: colon-separated hex of its length."""
    size = FINGERPRINT_BYTES.get(algorithm.lower())
    parts = value.split(":")
    return size is not None and len(parts) == size and all(re.fullmatch(r"[0-9A-Fa-f]{2}", b) for b in parts)


def check_offer(offer: str, max_video_tracks: int) -> list[str]:
    """The mids of the offer's video sections we can receive; Refused when there are none,
    or more than ``max_video_tracks``."""
    if not offer.startswith("v=0"):
        raise Refused(400, "malformed SDP offer: it must start with v=0", "malformed_sdp")
    try:
        parsed = SessionDescription.parse(offer)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise Refused(400, f"malformed SDP offer: {str(exc) or type(exc).__name__}", "malformed_sdp") from exc
    # aiortc assumes unique mids and a DTLS fingerprint per m-line (RFC 8843, RFC 8842):
    # without them it fails deep inside negotiation (AttributeError, a 500) or answers and
    # then cannot check DTLS. Refuse such offers here, with a reason.
    # Every m-line costs a receiver (an audio one, a task draining it): a publisher sends video
    # and at most as many audio tracks.
    media_lines = sum(1 for media in parsed.media if media.kind in ("audio", "video"))
    if media_lines > 2 * max_video_tracks:
        raise Refused(
            422,
            f"the offer has {media_lines} audio and video m-lines; a session may have at most {2 * max_video_tracks} "
            "(webrtc.max_video_tracks video tracks and as many audio)",
            "too_many_tracks",
        )
    candidates = count_candidates(offer)
    if candidates > MAX_REMOTE_CANDIDATES:
        raise Refused(
            422, f"the offer has {candidates} ICE candidates; a session may give at most {MAX_REMOTE_CANDIDATES}",
            "too_many_candidates",
        )
    for media in parsed.media:
        for candidate in media.ice_candidates:
            check_candidate(candidate)
    seen_mids: set[str] = set()
    for index, media in enumerate(parsed.media):
        mid = media.rtp.muxId or ""
        if mid in seen_mids:
            which = f"with a=mid:{mid}" if mid else "without a=mid"
            raise Refused(400, f"malformed SDP offer: more than one m-line {which}", "malformed_sdp")
        seen_mids.add(mid)
        if media.dtls is None or not media.dtls.fingerprints:  # aiortc drops dtls without a=setup
            raise Refused(400, f"malformed SDP offer: m-line {index} has no a=fingerprint (or no a=setup)", "malformed_sdp")
        for f in media.dtls.fingerprints:
            if f.algorithm.lower() in FINGERPRINT_ALGORITHMS and not _fingerprint_ok(f.algorithm, f.value):
                raise Refused(
                    400,
                    f"malformed SDP offer: m-line {index}'s a=fingerprint:{f.algorithm} is not "
                    f"{FINGERPRINT_BYTES[f.algorithm.lower()]} hex pairs",
                    "malformed_sdp",
                )
        if not any(f.algorithm.lower() in FINGERPRINT_ALGORITHMS for f in media.dtls.fingerprints):
            # Answered, such a session could never pass DTLS: it died later, with no reason given.
            raise Refused(
                400,
                f"malformed SDP offer: m-line {index} has no a=fingerprint with "
                f"{', '.join(sorted(FINGERPRINT_ALGORITHMS))}",
                "malformed_sdp",
            )
    bundled: set[str] = set()
    for group in parsed.group:
        if group.semantic.upper() == "BUNDLE":
            unknown = [str(mid) for mid in group.items if str(mid) not in seen_mids]
            if unknown:
                raise Refused(
                    400, f"malformed SDP offer: a=group:BUNDLE names a=mid {', '.join(unknown)}, which no m-line has",
                    "malformed_sdp",
                )
            bundled = bundled or {str(mid) for mid in group.items}
    if len(parsed.media) > 1 and not seen_mids <= bundled:
        # RFC 9725 4.2: WHIP clients use BUNDLE with the max-bundle policy. Answered, such an offer
        # got one ICE transport per section, and trickling a section's own credentials was refused
        # as an ICE restart.
        raise Refused(
            422, "the offer's m-lines are not all in one a=group:BUNDLE: WHIP needs them bundled (RFC 9725)", "unanswerable_sdp"
        )
    videos: list[str] = []
    not_sending: list[str] = []
    codecs_seen: set[str] = set()
    sending_codecs: set[str] = set()
    for index, media in enumerate(parsed.media):
        if media.kind != "video":
            continue
        names = {c.mimeType.lower() for c in media.rtp.codecs}
        codecs_seen |= names
        if media.direction not in (None, "sendonly", "sendrecv"):
            not_sending.append(media.direction)
            continue
        sending_codecs |= names
        if names & DECODABLE:
            videos.append(media.rtp.muxId or str(index))
    if not videos:
        if not codecs_seen:
            raise Refused(422, "the offer has no video to publish", "unanswerable_sdp")
        if not sending_codecs:  # every video section is recvonly or inactive
            raise Refused(
                422, f"the offer's video does not send (a=sendonly or sendrecv needed; got a={', a='.join(sorted(set(not_sending)))})",
                "unanswerable_sdp",
            )
        offered = ", ".join(sorted(sending_codecs))
        raise Refused(422, f"no decodable video codec offered (need VP8 or H264; got {offered})", "unanswerable_sdp")
    if len(videos) > max_video_tracks:
        # Each track would become a stream with its own pipeline: refused before any is built.
        raise Refused(
            422,
            f"the offer has {len(videos)} video tracks; a session may publish at most {max_video_tracks} "
            "(webrtc.max_video_tracks)",
            "too_many_tracks",
        )
    return videos


@dataclass
class _FragmentSection:
    """One m-section of a trickle fragment (or the lines before the first ``m=``)."""

    mid: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    end: bool = False


def _ice_transports(pc: RTCPeerConnection) -> dict[str, RTCIceTransport]:
    """Each negotiated mid's ICE transport, in m-line order; bundled mids share one."""
    transports = {t.mid: t.receiver.transport.transport for t in pc.getTransceivers() if t.mid is not None}
    if pc.sctp is not None and pc.sctp.mid is not None:
        transports[pc.sctp.mid] = pc.sctp.transport.transport
    return transports


def stream_names(stream_id: str, mids: list[str]) -> list[str]:
    """One video track keeps the session's stream id; several get ``<id>.<mid>``."""
    if len(mids) == 1:
        return [stream_id]
    return [f"{stream_id}.{_MID_UNSAFE.sub('_', mid)}" for mid in mids]


def _etag() -> str:
    return f'"{secrets.token_hex(8)}"'


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("ending a WHIP session failed", exc_info=task.exception())


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def whip_router(settings: Settings, manager: StreamManager, metrics: Metrics) -> tuple[APIRouter, WhipSessions]:
    """The WHIP endpoints and the session registry they share. Nothing closes the registry at
    shutdown: a session ends when the manager removes its streams, at shutdown as on a delete."""
    router = APIRouter(tags=["whip"])
    sessions = WhipSessions(settings, manager, metrics)
    expected = settings.server.token
    allowed_origins = set(settings.server.cors_origins)

    def cors(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin and origin in allowed_origins:
            return {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Link, X-Monitor-Streams",
                "Vary": "Origin",
            }
        return {}

    def refuse(request: Request, exc: Refused) -> JSONResponse:
        if exc.metric not in ("not_found",):
            metrics.whip_sessions_failed.labels(exc.metric).inc()
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers={**exc.headers, **cors(request)})

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization")
        query = request.query_params.get("access_token")
        if token_ok(expected, header, query):
            return
        if not token_given(header, query):
            # RFC 6750 3.1: no bearer credentials (none, Basic ones, an empty "Bearer") is a 401 with a challenge.
            raise Refused(401, "missing bearer token", "unauthorized", {"WWW-Authenticate": "Bearer"})
        raise Refused(403, "wrong bearer token", "forbidden")

    async def read_body(request: Request) -> str:
        limit = settings.webrtc.max_sdp_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"body larger than {limit} bytes", "too_large")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(400, "body is not UTF-8", "malformed_sdp") from exc

    @router.options("/whip/{stream_id}")
    @router.options("/whip/{stream_id}/{session_id}")
    async def preflight(request: Request) -> Response:
        """CORS preflight, and what the endpoint (POST an offer) or a session (PATCH
        candidates, DELETE) accepts."""
        on_session = "session_id" in request.path_params
        headers = {
            **cors(request),
            **({"Accept-Patch": TRICKLE} if on_session else {"Accept-Post": SDP}),
            "Allow": SESSION_METHODS if on_session else ENDPOINT_METHODS,
            "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)

    # Any other method: 405 naming the ones that work (a GET on a session URL fell through to
    # the dashboard's files, a 404 that reads as "session gone"; others listed GET and HEAD).
    @router.api_route("/whip/{stream_id}", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def endpoint_other(request: Request) -> Response:
        return Response(status_code=405, headers={**cors(request), "Allow": ENDPOINT_METHODS})

    @router.api_route("/whip/{stream_id}/{session_id}", methods=["GET", "HEAD", "PUT", "POST"], include_in_schema=False)
    async def session_other(request: Request) -> Response:
        return Response(status_code=405, headers={**cors(request), "Allow": SESSION_METHODS})

    @router.post("/whip/{stream_id}", status_code=201, response_class=Response)
    async def publish(stream_id: str, request: Request) -> Response:
        """Publish over WebRTC: body is the SDP offer (application/sdp); 201 with the answer."""
        try:
            authorize(request)
            if _media_type(request) != SDP:
                raise Refused(415, f"Content-Type must be {SDP}", "unsupported_media_type")
            if not is_stream_id(stream_id):
                raise Refused(400, f"stream id must be {STREAM_ID_RULE}", "bad_stream_id")
            offer = await read_body(request)
            sessions.reserve()
            session, answer = await sessions.create(stream_id, offer)
        except Refused as exc:
            return refuse(request, exc)
        location = f"/whip/{stream_id}/{session.id}"
        headers = {
            **cors(request),
            "Location": location,
            "ETag": session.etag,
            "Accept-Patch": TRICKLE,
            "X-Monitor-Streams": ",".join(session.stream_ids),
        }
        return Response(answer, status_code=201, media_type=SDP, headers=headers)

    @router.patch("/whip/{stream_id}/{session_id}", response_class=Response)
    async def trickle(stream_id: str, session_id: str, request: Request) -> Response:
        """Trickle ICE candidates (application/trickle-ice-sdpfrag); ICE restarts get 422."""
        try:
            authorize(request)
            session = sessions.find(stream_id, session_id)
            if _media_type(request) != TRICKLE:
                raise Refused(415, f"Content-Type must be {TRICKLE}", "unsupported_media_type")
            match = request.headers.get("if-match")
            if match is not None and not etag_matches(match, session.etag):
                raise Refused(412, "ETag does not match the session", "precondition_failed")
            fragment = await read_body(request)
            await sessions.trickle(session, fragment)
        except Refused as exc:
            return refuse(request, exc)
        return Response(status_code=204, headers=cors(request))

    @router.delete("/whip/{stream_id}/{session_id}", response_class=Response)
    async def stop(stream_id: str, session_id: str, request: Request) -> Response:
        """End the session: its streams stop and leave the stream list."""
        try:
            authorize(request)
            session = sessions.find(stream_id, session_id)
        except Refused as exc:
            return refuse(request, exc)
        await sessions.end(session, "deleted by the publisher")
        return Response(status_code=200, headers=cors(request))

    return router, sessions
