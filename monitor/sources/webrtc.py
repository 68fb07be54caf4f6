"""WebRTC sources: WHIP-published tracks (server side) and WHEP pull (client side), on aiortc."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import aioice.ice
import httpx
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.clock import Clock
from monitor.config import IceServer, Settings, StreamConfig, WebRTCConfig, bearer_token, normalise_origin, redact_url
from monitor.errors import ConfigError, SourceEnded, SourceError
from monitor.metrics import Metrics
from monitor.plugins import plugin_config
from monitor.sources.base import LatestSlot, ThreadedSource
from monitor.types import Frame, StreamState

logger = logging.getLogger(__name__)

# --- ICE configuration ------------------------------------------------------------------
#
# aiortc 1.16 (rtcicetransport.RTCIceGatherer) falls back to stun:stun.l.google.com:19302
# only when ``iceServers is None``; an explicit empty list means "no STUN/TURN at all". So
# every peer connection here is built through ``rtc_configuration`` with a list, never None.
#
# aioice 0.13 gathers host candidates from ``aioice.ice.get_host_addresses``, which skips
# 127.0.0.1 and has no option to add addresses. We wrap that one function, once, so that it
# also returns the addresses in ``_extra_hosts`` -- a ContextVar set only around our own
# ``setLocalDescription`` calls (the gathering tasks inherit the caller's context). Other
# aioice users in the process see the unmodified behaviour. We also wrap
# ``aioice.ice.validate_remote_candidate``, for every connection in the process: it refuses
# remote addresses the service must never send to (``is_unroutable_address``, zone ids).

@dataclass(frozen=True)
class IceHosts:
    """The host addresses our peer connections gather candidates on: ``addresses`` in addition
    to what aioice finds on the machine's interfaces, or, with ``only``, those alone (aioice
    binds a UDP socket on each address it gathers)."""

    addresses: tuple[str, ...] = ()
    only: bool = False


_extra_hosts: contextvars.ContextVar[IceHosts] = contextvars.ContextVar("monitor_ice_hosts", default=IceHosts())
_hook_installed = False


def _install_hooks() -> None:
    global _hook_installed
    if _hook_installed:
        return
    original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        hosts = _extra_hosts.get()
        found = [] if hosts.only else list(original(use_ipv4, use_ipv6))
        for address in hosts.addresses:
            wanted = use_ipv6 if ":" in address else use_ipv4
            if wanted and address not in found:
                found.append(address)
        return found

    aioice.ice.get_host_addresses = get_host_addresses
    original_check: Callable[[Any, str], str] = aioice.ice.validate_remote_candidate

    def validate_remote_candidate(candidate: Any, host: str) -> str:
        # Where every remote address reaches aioice, the address of an mDNS name included once
        # it is resolved (webrtc.resolve_mdns): the SDP filters see only the name, and any host
        # on the link may answer for it, with 169.254.169.254 say. ValueError: aioice skips it.
        if "%" in host or is_unroutable_address(host):
            raise ValueError(f"{host} is not an address the monitor sends to")
        return original_check(candidate, host)

    aioice.ice.validate_remote_candidate = validate_remote_candidate
    _hook_installed = True


_install_hooks()  # now: a WHIP offer's candidates reach aioice before any local description


@contextlib.contextmanager
def ice_host_addresses(hosts: IceHosts | tuple[str, ...]) -> Iterator[None]:
    """Gather host candidates on ``hosts`` for peer connections gathered inside (a tuple: extra
    addresses, beside the interfaces')."""
    _install_hooks()
    token = _extra_hosts.set(hosts if isinstance(hosts, IceHosts) else IceHosts(tuple(hosts)))
    try:
        yield
    finally:
        _extra_hosts.reset(token)


def extra_host_addresses(settings: Settings) -> IceHosts:
    """The configured host addresses, plus 127.0.0.1 when serving on loopback; with
    ``webrtc.only_host_addresses``, those alone."""
    cfg = settings.webrtc
    extra = list(cfg.host_addresses)
    if cfg.include_loopback and settings.server.is_loopback and "127.0.0.1" not in extra:
        extra.append("127.0.0.1")
    return IceHosts(tuple(extra), cfg.only_host_addresses)


def unbindable_addresses(addresses: tuple[str, ...] | list[str]) -> list[str]:
    """Each of ``addresses`` a UDP socket cannot bind on this machine, with the reason: an
    address it does not have (a typo, an address that moved). aioice skips such an address
    with a log line at INFO, so with ``only_host_addresses`` every answer went out with no
    candidate, and every session died at its idle timeout with no reason given."""
    bad = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))
        except OSError as exc:
            bad.append(f"{address} ({exc.strerror or exc})")
    return bad


def check_media_addresses(settings: Settings) -> None:
    """At start, with ``webrtc.only_host_addresses``: ConfigError when none of the addresses
    WebRTC media may use can be bound here, a warning naming those that cannot."""
    hosts = extra_host_addresses(settings)
    if not hosts.only:
        return
    bad = unbindable_addresses(hosts.addresses)
    if bad and len(bad) == len(hosts.addresses):
        raise ConfigError(
            f"webrtc.only_host_addresses: no address for WebRTC media can be bound on this machine: {', '.join(bad)}; "
            "list addresses it has in webrtc.host_addresses"
        )
    if bad:
        logger.warning("webrtc.host_addresses: cannot bind %s on this machine; WebRTC media uses the others only", ", ".join(bad))


def rtc_configuration(cfg: WebRTCConfig) -> RTCConfiguration:
    """An explicit configuration: an empty list keeps aiortc off public STUN servers."""
    return RTCConfiguration(iceServers=[_ice_server(s) for s in cfg.ice_servers])


def _ice_server(server: IceServer) -> RTCIceServer:
    return RTCIceServer(urls=list(server.urls), username=server.username, credential=server.credential)


# --- mDNS candidates ----------------------------------------------------------------------
#
# Browsers hide their local addresses behind ``<uuid>.local`` host candidates. aioice resolves
# such a candidate by multicast DNS: it binds UDP 0.0.0.0:5353 and sends queries to
# 224.0.0.251, whatever address the service is bound to, and waits up to 1 s per name. The
# monitor contacts no host unless configured to, so these candidates are dropped before they
# reach aioice unless ``webrtc.resolve_mdns`` is set. A browser that offers only mDNS
# candidates still connects: its connectivity checks reach our host candidates and aioice
# learns its address as peer-reflexive -- as long as aioice still waits for candidates: an
# ``a=end-of-candidates`` after dropped ones would make it fail at once, before any check
# arrives, so it is dropped with them (a session that never connects ends after
# ``webrtc.session_idle_s``).


def is_mdns_host(address: str) -> bool:
    """Whether a candidate's address is an mDNS name (``<name>.local``), not an IP address.
    Wider than aioice's own test (any case, any number of labels): what aioice would not
    resolve it ignores anyway, so dropping it changes nothing."""
    return address.rstrip(".").lower().endswith(".local")


def _candidate_address(line: str) -> str | None:
    """The address of an ``a=candidate:`` line (its fifth field), None for any other line."""
    if not line.startswith("a=candidate:"):
        return None
    parts = line[len("a=candidate:"):].split()
    return parts[4] if len(parts) > 4 else None


def drop_mdns_candidates(sdp: str) -> tuple[str, int]:
    """``sdp`` without its mDNS ``a=candidate`` lines, and how many were dropped. When any
    was dropped, its ``a=end-of-candidates`` lines go too (see above)."""
    lines = sdp.splitlines(keepends=True)
    dropped = sum(1 for line in lines if is_mdns_candidate_line(line.strip()))
    if not dropped:
        return sdp, 0
    kept = [
        line for line in lines
        if not is_mdns_candidate_line(line.strip()) and line.strip() != "a=end-of-candidates"
    ]
    return "".join(kept), dropped


def is_unroutable_address(address: str) -> bool:
    """Whether a remote candidate's address is one no peer can be reached at, or one the
    service must never send to: multicast (224/4, ff00::/8: SSDP, every host on the link),
    unspecified (0.0.0.0, ::), broadcast, and IPv4 link-local 169.254/16 (cloud metadata
    services). aiortc would send STUN checks to each, for whoever wrote the offer. An IPv6
    address with a zone id (``fe80::1%eth0``) too: it means nothing on another host, and one
    holding a NUL made ``sendto`` raise TypeError, which closed the session's socket."""
    if "%" in address:
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False  # a name (mDNS is handled apart) or garbage aiortc will not resolve
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255") or (
        isinstance(ip, ipaddress.IPv4Address) and ip.is_link_local
    )


def drop_unroutable_candidates(sdp: str) -> tuple[str, int]:
    """``sdp`` without its ``a=candidate`` lines at unroutable addresses, and how many."""
    lines = sdp.splitlines(keepends=True)
    kept = [line for line in lines if not is_unroutable_address(_candidate_address(line.strip()) or "")]
    return "".join(kept), len(lines) - len(kept)


# Remote ICE candidates one peer may give (a WHIP publisher, a WHEP endpoint's answer): a peer
# gathers a handful per network interface. Each is a pair the ICE agent checks, sending STUN to
# an address the peer chose. monitor/api/whip.py applies the same number to WHIP offers and
# trickle PATCHes.
MAX_REMOTE_CANDIDATES = 64


def count_candidates(sdp: str) -> int:
    """How many ``a=candidate:`` lines ``sdp`` has (in any section), as aiortc's parser sees them."""
    return sum(1 for line in sdp.splitlines() if line.startswith("a=candidate:"))


def is_mdns_candidate_line(line: str) -> bool:
    """Whether ``line`` is an ``a=candidate:`` line whose address is an mDNS name."""
    address = _candidate_address(line)
    return address is not None and is_mdns_host(address)


async def set_local_description(pc: RTCPeerConnection, description: RTCSessionDescription, hosts: IceHosts | tuple[str, ...]) -> None:
    """``setLocalDescription`` with our host addresses; aiortc gathers every candidate in it."""
    with ice_host_addresses(hosts):
        await pc.setLocalDescription(description)


def watch_states(pc: RTCPeerConnection, role: str, metrics: Metrics, on_connection: Callable[[str], None] | None = None) -> None:
    """Count ICE and connection state changes, and forward connection states."""

    @pc.on("iceconnectionstatechange")
    def _ice() -> None:
        metrics.webrtc_ice_states.labels(role, pc.iceConnectionState).inc()

    @pc.on("connectionstatechange")
    def _conn() -> None:
        metrics.webrtc_connection_states.labels(role, pc.connectionState).inc()
        if on_connection is not None:
            on_connection(pc.connectionState)


# --- WHIP: one published video track -----------------------------------------------------


class AudioBlackhole:
    """Reads an audio track and discards every frame: aiortc decodes audio whether or not
    anyone reads it, into an unbounded queue, so an unread track grows memory."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames = 0
        self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while True:
                await self.track.recv()
                self.frames += 1
        except MediaStreamError:
            pass

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class WhipTrackSource(ThreadedSource):
    """One remote video track of a WHIP session. A reader task drains ``track.recv()``
    continuously (aiortc's receive queue is unbounded) into the shared LatestSlot, so the
    pipeline always gets the newest frame and every replaced frame is counted.

    Decoding already happens in aiortc's decoder thread; there is no thread of our own.
    """

    kind: ClassVar[str] = "whip"
    reconnect: ClassVar[bool] = False

    def __init__(
        self,
        stream_id: str,
        track: MediaStreamTrack,
        *,
        metrics: Metrics,
        clock: Clock | None = None,
        on_close: Callable[[WhipTrackSource], Awaitable[None]] | None = None,
        on_failed: Callable[[WhipTrackSource, str], None] | None = None,
    ) -> None:
        super().__init__(stream_id, metrics=metrics, clock=clock)
        self.track = track
        self._reader: asyncio.Task[None] | None = None
        self._on_close = on_close
        # Called once when reading fails (a frame over max_frame_pixels, a bug): nobody reads
        # the track after that, and aiortc went on decoding every frame into its unbounded
        # queue until no_video_s ended the session (238 frames in 8 s; 3.7 GB in the default
        # 5 s for frames just over the default limit).
        self._on_failed = on_failed
        self._t0: float | None = None
        self.last_frame_at: float | None = None  # clock.monotonic() of the newest frame

    async def start(self) -> None:
        self._slot = LatestSlot(asyncio.get_running_loop(), self._superseded)
        self._reader = asyncio.create_task(self._read_track(), name=f"whip-reader-{self.stream_id}")

    async def _read_track(self) -> None:
        assert self._slot is not None
        end: BaseException = SourceEnded(f"stream {self.stream_id} ended")
        try:
            while True:
                try:
                    vf = await self.track.recv()
                except MediaStreamError:
                    self._set_state(StreamState.ENDED, "peer ended the track")
                    break
                self.check_frame_size(vf.width, vf.height)  # before the copy out of the decoder
                now = self.clock.monotonic()
                self.last_frame_at = now
                if self._t0 is None:
                    # Running from the first frame, as the other sources: a publisher that
                    # connects but sends no video is not "up".
                    self._t0 = now
                    self._set_state(StreamState.RUNNING)
                # Stream time is the monitor's clock since the first frame, like RTSP.
                self._deliver(Frame.from_decoded(self.stream_id, self.next_seq(), now - self._t0, now, vf))
        except asyncio.CancelledError:
            self._set_state(StreamState.STOPPED)
            raise
        except SourceError as exc:  # the publisher's video breaks a limit: said, not a traceback
            end = exc
            self._failed(exc)
        except Exception as exc:  # a bug here must end the stream, not hang the pipeline
            logger.exception("WHIP reader for %s failed", self.stream_id)
            end = SourceError(str(exc), retryable=False)
            self._failed(end)
        finally:
            self._slot.close_threadsafe(end)

    def _failed(self, exc: BaseException) -> None:
        message = self._redact(str(exc))
        self.status.last_error = message  # as every other source shows it in /api/streams
        self._set_state(StreamState.FAILED, message)
        if self._on_failed is not None:
            callback, self._on_failed = self._on_failed, None
            callback(self, message)

    async def aclose(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._slot is not None:
            self._slot.close_threadsafe(SourceEnded(f"stream {self.stream_id} closed"))
        if self._on_close is not None:
            # The WHIP session learns that the manager removed this stream (and ends itself).
            callback, self._on_close = self._on_close, None
            await callback(self)


# --- WHEP: pull one stream from a media server ------------------------------------------


def _compressed(response: httpx.Response) -> bool:
    """Whether the body comes with a Content-Encoding: we ask for none, and do not decode one."""
    return response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")


class _TooLarge(Exception):
    """A WHEP response body longer than the limit (``webrtc.max_sdp_bytes``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


def session_url(endpoint: str, location: str) -> str:
    """A WHEP session's URL: its ``Location`` header resolved against the endpoint URL;
    SourceError (retryable, not quoting it) when that is no URL: httpx's error quotes the
    header, and it escaped as an "unexpected" error with a traceback on every retry."""
    try:
        return str(httpx.URL(endpoint).join(location))
    except (httpx.InvalidURL, ValueError):
        raise SourceError("WHEP endpoint answered an invalid Location", retryable=True) from None


def same_origin(a: str, b: str) -> bool:
    """Same scheme, host and port (httpx lower-cases hosts and normalises default ports away);
    False for a URL whose host cannot be decoded (an invalid international name)."""
    try:
        ua, ub = httpx.URL(a), httpx.URL(b)
        return (ua.scheme, ua.host, ua.port) == (ub.scheme, ub.host, ub.port)
    except (httpx.InvalidURL, ValueError):
        return False


def http_failure(exc: httpx.HTTPError) -> str:
    """What a failed WHEP request says, without the endpoint's own bytes: h11 quotes a status
    or header line it could not parse ("illegal status line: bytearray(b'SSH-2.0-...')"), so
    a protocol or decoding error is named by a fixed text; the rest (refused connections,
    certificate checks, timeouts) come from this side."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.DecodingError)):
        return "the endpoint's answer is not valid HTTP"
    return str(exc) or type(exc).__name__


def message_without_quotes_of(exc: Exception, text: str) -> str:
    """``exc``'s message, or only its type when the message quotes anything or repeats a word of
    ``text``: aiortc's own messages are fixed ("ICE username fragment or password is missing"),
    but a parser's quote what it failed on ("invalid literal for int() with base 10: '...'"), and
    an endpoint's text must not reach events, sinks and logs (it may be an internal service the
    URL points at). A quote is withheld whole: repr() escapes control characters and
    backslashes, so an escaped quote matched no word of ``text`` and got through."""
    message = str(exc)
    if (
        not message
        or re.search(r"['\"\\]", message)
        or any(word in text for word in re.findall(r"[^\s'\"():,]{3,}", message))
    ):
        logger.debug("an error quoting the endpoint's text, withheld: %r", exc)
        return type(exc).__name__
    return f"{message} ({type(exc).__name__})"


class WhepSource(ThreadedSource):
    """Subscribes to a WHEP endpoint as a client and reconnects with backoff like RTSP.

    aiortc needs an event loop: this source runs a private one in its own thread, so the
    shared ThreadedSource machinery (state, backoff, LatestSlot hand-off) applies unchanged
    and media processing never competes with the service's loop for scheduling.
    """

    kind: ClassVar[str] = "whep"
    MAX_REDIRECTS: ClassVar[int] = 3
    DELETE_TIMEOUT_S: ClassVar[float] = 5.0  # the whole DELETE of the session on stop

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        token: str | None = Field(None, description="Bearer token for the WHEP endpoint.")
        # At most 300 s, as RTSP's: a connect that takes longer is not coming, and an endpoint that
        # trickles its answer in would hold the attempt (and its buffers) that long.
        open_timeout_s: float = Field(
            10.0, gt=0, le=300, description="Time allowed for the offer/answer exchange and ICE/DTLS to connect (at most 300 s)."
        )
        read_timeout_s: float = Field(
            3.0, gt=0, le=300, description="A stream silent this long counts as stalled; the source reconnects (at most 300 s)."
        )
        redirect_origins: tuple[str, ...] = Field(
            (),
            description="Other origins (scheme://host[:port]) the endpoint may redirect the offer to, or place the "
            "session on; they are sent the token. A redirect to any other origin is refused.",
        )

        @field_validator("token")
        @classmethod
        def _token_fits_a_header(cls, token: str | None) -> str | None:
            # A newline (a YAML block, a file read with its line end) failed every request, for
            # ever, and httpx's error quoted the whole header into the stream's status.
            return bearer_token(token)

        @field_validator("redirect_origins")
        @classmethod
        def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(normalise_origin(o) for o in origins)

    def __init__(
        self,
        stream_id: str,
        url: str,
        *,
        metrics: Metrics,
        clock: Clock | None = None,
        config: Config | None = None,
        webrtc: WebRTCConfig | None = None,
        hosts: IceHosts | tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        super().__init__(stream_id, metrics=metrics, clock=clock)
        self.url = url
        self.config = config or self.Config()
        self.webrtc = webrtc or WebRTCConfig()
        self.hosts = hosts
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._pc: RTCPeerConnection | None = None
        self._track: MediaStreamTrack | None = None
        self._resource: str | None = None
        self._failed: str | None = None
        self._t0: float | None = None
        self._mdns_logged = False

    @classmethod
    def from_stream(
        cls, stream: StreamConfig, *, settings: Settings, metrics: Metrics, clock: Clock | None = None
    ) -> WhepSource:
        config = plugin_config(cls, stream.options)
        assert isinstance(config, cls.Config)
        cls.validate_url(stream.url)
        return cls(
            stream.id,
            stream.url,
            metrics=metrics,
            clock=clock,
            config=config,
            webrtc=settings.webrtc,
            hosts=extra_host_addresses(settings),
        )

    @classmethod
    def validate_url(cls, url: str) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"a WHEP endpoint must be an http(s):// URL, got {redact_url(url)!r}")

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        return headers

    def _trusted(self, url: str) -> bool:
        """The configured endpoint's origin, or one listed in ``redirect_origins``."""
        return any(same_origin(url, origin) for origin in (self.url, *self.config.redirect_origins))

    def _open(self) -> None:
        self._aloop = asyncio.new_event_loop()
        self._failed = None
        try:
            self._aloop.run_until_complete(self._unless_stopped(self._negotiate(), self.config.open_timeout_s))
        except asyncio.TimeoutError as exc:
            raise SourceError(f"WHEP connect to {self.url} timed out", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise SourceError(f"WHEP request to {self.url} failed: {http_failure(exc)}", retryable=True) from exc

    async def _unless_stopped(self, work: Awaitable[None], timeout: float) -> None:
        """``work`` within ``timeout``, cancelled early when the source is asked to stop:
        ``aclose`` joins the thread for 10 s, which ``open_timeout_s`` may exceed."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        deadline = loop.time() + timeout
        try:
            while not task.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                if self._stop.is_set():
                    raise SourceError("stopped while connecting", retryable=True)
                await asyncio.wait({task}, timeout=min(left, 0.25))
            task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _negotiate(self) -> None:
        pc = RTCPeerConnection(rtc_configuration(self.webrtc))
        self._pc = pc
        connected = asyncio.Event()

        def on_connection(state: str) -> None:
            if state == "connected":
                connected.set()
            elif state in ("failed", "closed"):
                self._failed = state
                connected.set()

        watch_states(pc, "whep", self.metrics, on_connection)
        transceiver = pc.addTransceiver("video", direction="recvonly")
        await set_local_description(pc, await pc.createOffer(), self.hosts)
        async with self._post_offer(pc.localDescription.sdp) as (endpoint, response):
            if response.status_code != 201:
                # 4xx other than 404/429 will not fix itself, but a media server that has not
                # started the stream yet answers 404: keep retrying everything, with backoff.
                # The status only: the body of whatever answered (an internal service the URL
                # points at, by mistake or not) would reach events, sinks and logs.
                if logger.isEnabledFor(logging.DEBUG):  # otherwise its body is not read at all
                    logger.debug(
                        "WHEP endpoint %s answered %d: %s", redact_url(str(endpoint)), response.status_code,
                        await self._error_body(response),
                    )
                # The standard phrase, not the one on the status line: that is the endpoint's text.
                phrase = httpx.codes.get_reason_phrase(response.status_code)
                raise SourceError(f"WHEP endpoint answered {response.status_code} {phrase}".rstrip(), retryable=True)
            location = response.headers.get("location")
            if not location:
                # RFC 9725 requires one: without it the session cannot be deleted when we stop.
                logger.warning("WHEP %s: the endpoint answered 201 without a Location; its session will not be deleted on stop", self.stream_id)
            # The session belongs to the endpoint that answered, not the one we were sent to;
            # known before the answer is read, so that one refused below is deleted too.
            try:
                self._resource = session_url(endpoint, location) if location else None
            except SourceError:
                self._resource = None
                logger.warning("WHEP %s: the endpoint answered 201 with an invalid Location; its session will not be deleted on stop", self.stream_id)
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type and media_type != "application/sdp":  # none at all: the body is taken as SDP, as before
                # A login portal's or a proxy's page: aiortc said "Media sections in answer do
                # not match offer", which sent operators looking at the media server's codecs.
                raise SourceError("WHEP endpoint answered 201 with a body that is not application/sdp", retryable=True)
            answer = await self._read_answer(response)
        usable = self._answer_sdp(answer)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=usable, type="answer"))
        except Exception as exc:
            refused = SourceError(f"WHEP answer refused: {message_without_quotes_of(exc, usable)}", retryable=True)
            refused.kind = type(exc).__name__
            raise refused from None
        self._track = transceiver.receiver.track
        await connected.wait()
        if self._failed:
            raise SourceError(f"WHEP connection {self._failed}", retryable=True)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The body as sent, read no further than ``webrtc.max_sdp_bytes`` (the WHIP offer
        limit): ``_TooLarge`` past it. Raw bytes: a Content-Encoding is not decoded (a few KB of
        gzip inflate to hundreds of MB), so a limit on them is a limit on memory."""
        limit = self.webrtc.max_sdp_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge(limit)
        body = bytearray()
        async for chunk in response.aiter_raw():  # chunks of at most 64 KiB (httpcore's reads)
            body += chunk
            if len(body) > limit:
                raise _TooLarge(limit)
        return bytes(body)

    async def _read_answer(self, response: httpx.Response) -> str:
        """A 201's SDP answer; SourceError (retryable, as any answer aiortc cannot use) when it
        is larger than ``webrtc.max_sdp_bytes`` or compressed."""
        if _compressed(response):
            # We asked for none (Accept-Encoding: identity). Not the header's value: it is the
            # endpoint's text, and the message reaches events and sinks.
            raise SourceError("WHEP answer is compressed (Content-Encoding): only an uncompressed answer is read", retryable=True)
        try:
            body = await self._read_capped(response)
        except _TooLarge as exc:
            raise SourceError(f"WHEP answer larger than {exc.limit} bytes (webrtc.max_sdp_bytes)", retryable=True) from None
        return body.decode("utf-8", errors="replace")

    async def _error_body(self, response: httpx.Response) -> str:
        """The start of an error answer's body, for a debug log: read no further than
        ``webrtc.max_sdp_bytes`` either."""
        if _compressed(response):
            return "(compressed body, not read)"
        try:
            body = await self._read_capped(response)
        except _TooLarge as exc:
            return f"(body larger than {exc.limit} bytes, not read)"
        return repr(body[:200].decode("utf-8", errors="replace"))

    def _answer_sdp(self, answer: str) -> str:
        """The answer as aiortc gets it: without candidates at unroutable addresses (multicast,
        link-local: cloud metadata), and without mDNS ones unless ``webrtc.resolve_mdns``.
        SourceError when it has more than MAX_REMOTE_CANDIDATES candidates, all counted, as a
        WHIP offer with that many is refused."""
        candidates = count_candidates(answer)
        if candidates > MAX_REMOTE_CANDIDATES:
            # Retryable, as any other answer aiortc cannot use (the endpoint may be fixed).
            raise SourceError(
                f"WHEP answer has {candidates} ICE candidates; at most {MAX_REMOTE_CANDIDATES} are accepted", retryable=True
            )
        answer, unroutable = drop_unroutable_candidates(answer)
        if unroutable:
            logger.info("WHEP %s: dropped %d ICE candidates of the answer at multicast, broadcast, unspecified or link-local addresses", self.stream_id, unroutable)
        if self.webrtc.resolve_mdns:
            return answer
        answer, dropped = drop_mdns_candidates(answer)
        if dropped:
            # Once at info (a reconnect repeats the answer), then at debug.
            level = logging.DEBUG if self._mdns_logged else logging.INFO
            self._mdns_logged = True
            logger.log(
                level, "WHEP %s: dropped %d mDNS (.local) ICE candidates of the answer (webrtc.resolve_mdns is off)",
                self.stream_id, dropped,
            )
        return answer

    @contextlib.asynccontextmanager
    async def _post_offer(self, offer: str) -> AsyncIterator[tuple[str, httpx.Response]]:
        """POST the offer, following up to MAX_REDIRECTS 307/308 redirects (RFC 9725 load
        balancing); the final URL and its answer, its body not read yet (see ``_read_capped``).
        We follow redirects ourselves, not httpx, and only to the endpoint's origin or
        ``redirect_origins``: the service contacts no host it was not configured with, and only
        those get the token."""
        url = self.url
        headers = {**self._headers("application/sdp"), "Accept-Encoding": "identity"}
        # trust_env=False: no proxy from HTTP(S)_PROXY/ALL_PROXY, which would get the offer and
        # the token, and no .netrc: only the host configured is contacted.
        async with httpx.AsyncClient(timeout=self.config.open_timeout_s, trust_env=False) as client:
            for _ in range(self.MAX_REDIRECTS + 1):
                async with client.stream("POST", url, content=offer, headers=headers) as response:
                    location = response.headers.get("location")
                    if response.status_code not in (307, 308) or not location:
                        yield url, response
                        return
                # A redirect's body is never read.
                url = session_url(url, location)
                if not self._trusted(url):
                    try:
                        target = httpx.URL(url)
                        # Scheme, host and port only: a user:password in the Location is the endpoint's text.
                        where = f"{target.scheme}://{target.host}" + (f":{target.port}" if target.port else "")
                    except (httpx.InvalidURL, ValueError):
                        where = "a host it cannot name"
                    raise SourceError(
                        f"WHEP endpoint redirected to {where}, not its origin: "
                        "list it in the stream's options.redirect_origins to follow it (it will get the token)",
                        retryable=True,
                    )
        raise SourceError(f"WHEP endpoint {self.url}: more than {self.MAX_REDIRECTS} redirects", retryable=True)

    def _read(self) -> Iterator[Frame]:
        assert self._aloop is not None and self._track is not None
        silent_since = self.clock.monotonic()
        while not self._stop.is_set():
            if self._failed:
                raise SourceError(f"WHEP connection {self._failed}", retryable=True)
            try:
                # Short waits so a stop request is noticed promptly.
                vf = self._aloop.run_until_complete(asyncio.wait_for(self._track.recv(), 0.25))
            except asyncio.TimeoutError:
                if self.clock.monotonic() - silent_since > self.config.read_timeout_s:
                    raise SourceError(f"no video for {self.config.read_timeout_s:.1f}s", retryable=True) from None
                continue
            except MediaStreamError as exc:
                raise SourceError("WHEP track ended", retryable=True) from exc
            now = self.clock.monotonic()
            silent_since = now
            if self._t0 is None:
                self._t0 = now
            yield Frame.from_decoded(self.stream_id, self.next_seq(), now - self._t0, now, vf)

    def _close(self) -> None:
        loop, self._aloop = self._aloop, None
        if loop is None:
            return
        try:
            loop.run_until_complete(self._teardown())
        except Exception:  # closing a broken session may itself fail
            logger.debug("WHEP teardown for %s failed", self.stream_id, exc_info=True)
        finally:
            loop.close()

    async def _teardown(self) -> None:
        pc, self._pc, self._track = self._pc, None, None
        resource, self._resource = self._resource, None
        if pc is not None:
            await pc.close()
        if resource is None:
            return
        if not self._trusted(resource):
            # The service contacts no host nobody configured, not even to say goodbye: the
            # media server ends the session itself when the connection goes.
            logger.warning(
                "WHEP session %s is not on a configured origin: not deleting it there "
                "(list its origin in the stream's redirect_origins to have it deleted)", redact_url(resource)
            )
            return
        # Only the status matters: the reply's body is never read (an endless one would fill
        # memory, 2 s per read at a time), and the whole DELETE has DELETE_TIMEOUT_S.
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with (
                asyncio.timeout(self.DELETE_TIMEOUT_S),
                httpx.AsyncClient(timeout=2.0, trust_env=False) as client,
                client.stream("DELETE", resource, headers=self._headers()),
            ):
                pass

