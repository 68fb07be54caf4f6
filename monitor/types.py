"""Typed, immutable values that cross stage boundaries; imports nothing from monitor."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np


def readonly(array: np.ndarray) -> np.ndarray:
    """Return ``array`` marked read-only so a stage cannot mutate what another stage holds."""
    array.setflags(write=False)
    return array


class Decoded(Protocol):
    """What a source hands over before conversion: an ``av.VideoFrame`` or anything like it."""

    width: int
    height: int

    def to_ndarray(self, **kwargs: Any) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded video frame. RGB conversion is deferred: only analysed frames pay for it.

    ``pts_s`` is stream time (seconds from the stream's start); ``received_at`` is the
    monitor's monotonic clock when the frame left the decoder, used for frame age and latency.
    """

    stream_id: str
    seq: int
    pts_s: float
    received_at: float
    width: int  # as displayed, i.e. after ``orientation``
    height: int
    decoded: Decoded | np.ndarray
    orientation: Orientation | None = None  # from decoded to displayed; None: as decoded

    @classmethod
    def from_decoded(cls, stream_id: str, seq: int, pts_s: float, received_at: float, decoded: Decoded) -> Frame:
        """A frame as the viewer sees it. Phones record portrait (and front cameras mirrored)
        video as landscape pixels plus a display matrix; face tracking on the raw pixels would
        see every face lying on its side."""
        o = display_orientation(decoded)
        w, h = (decoded.height, decoded.width) if o and o[0] else (decoded.width, decoded.height)
        return cls(stream_id, seq, pts_s, received_at, w, h, decoded, o)

    def rgb(self) -> np.ndarray:
        """The frame as (H, W, 3) uint8 RGB. A source plugin may hand over an ndarray: grey
        (H, W) or (H, W, 1) and RGBA (H, W, 4) uint8 are converted; anything else is a
        ValueError saying what is expected (before: IndexError, TypeError deep in MediaPipe)."""
        if isinstance(self.decoded, np.ndarray):
            return as_rgb24(self.decoded)
        if isinstance(self.decoded, av.VideoFrame):
            # One thread. PyAV's default (0, auto) gives every frame its own scaler with a
            # thread per CPU, started for the conversion and kept while the frame lives: each
            # analysed frame started CPU-count threads, and the frames the streams still held
            # kept a median of about 280 extra threads alive in the soak (5 streams, 2 CPUs;
            # benchmarks/results/soak_pyav_threads.md). Streams are the parallelism here; one
            # 720p conversion takes well under a ms, and the pixels are the same.
            image = self.decoded.to_ndarray(format="rgb24", threads=1)
        else:
            image = self.decoded.to_ndarray(format="rgb24")
        if self.orientation:
            image = orient(image, self.orientation)
        return readonly(image)


def as_rgb24(image: np.ndarray) -> np.ndarray:
    """``image`` as (H, W, 3) uint8 RGB: grey and RGBA uint8 converted, the rest refused."""
    if image.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8 RGB (H, W, 3), not {image.dtype}: scale it to 8 bits in the source")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"a frame must be uint8 RGB (H, W, 3), not an array of shape {image.shape}")
    if image.shape[2] == 1:
        return readonly(np.repeat(image, 3, axis=2))
    if image.shape[2] == 4:
        return readonly(np.ascontiguousarray(image[:, :, :3]))
    return image


# (transpose, flip rows, flip columns), applied in that order: the eight ways a display matrix
# can turn and mirror a frame by multiples of 90 degrees.
Orientation = tuple[bool, bool, bool]


def matrix_orientation(matrix: Sequence[int]) -> Orientation | None:
    """The orientation an FFmpeg display matrix (9 int32, 16.16 fixed point, row-major ``a b u
    c d v x y w``) asks for, rounded to the nearest multiple of 90 degrees; None for identity.

    FFmpeg maps a source pixel (p, q) to (a*p + c*q, b*p + d*q), y pointing down: ``b = 1,
    c = -1`` is the 90-degree clockwise turn of a phone held upright, ``a = -1`` a mirror."""
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) + abs(d) >= abs(b) + abs(c):
        o = (False, d < 0, a < 0)  # x' = +-x, y' = +-y
    else:
        o = (True, b < 0, c < 0)  # y' = b*x, x' = c*y: transpose, then flip
    return o if any(o) else None


def display_orientation(decoded: object) -> Orientation | None:
    """The orientation of a decoded frame's display-matrix side data (PyAV), if any."""
    side = getattr(decoded, "side_data", None)
    data = side.get("DISPLAYMATRIX") if side is not None else None
    if data is None:
        return None
    return matrix_orientation(np.frombuffer(bytes(data), np.int32))  # FFmpeg writes native int32


def orient(image: np.ndarray, o: Orientation) -> np.ndarray:
    """``image`` (rows, columns, ...) turned and mirrored as ``o`` says, contiguous."""
    if o[0]:
        image = image.swapaxes(0, 1)
    if o[1]:
        image = image[::-1]
    if o[2]:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class FaceQuality:
    """How much a face observation can be trusted."""

    face_px: float  # face width in pixels (3-D distance between the cheek landmarks, pose-invariant)
    blur: float  # variance of the Laplacian on the aligned crop; low means blurred
    out_of_frame: float  # fraction of landmarks outside the image, 0..1
    occlusion: float  # 0..1 estimate of how much of the face is hidden or turned away
    confidence: float  # face detector / tracker confidence, 0..1


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """One tracked face in one analysed frame."""

    stream_id: str
    track_id: int
    frame_seq: int
    t: float  # stream time of the frame, seconds
    received_at: float  # monotonic time the frame left the decoder
    landmarks: np.ndarray  # (478, 3) float32, x/y in image pixels, z in the same scale
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    crop: np.ndarray | None  # aligned face crop, (S, S, 3) uint8 RGB, read-only
    quality: FaceQuality
    frame_size: tuple[int, int] = (0, 0)  # width, height


@dataclass(frozen=True, eq=False)
class FaceFrame:
    """Everything the face stage found in one analysed frame (possibly no face)."""

    stream_id: str
    frame_seq: int
    t: float
    received_at: float
    faces: tuple[FaceObservation, ...]
    ended_tracks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Signal:
    """One named contribution to a detector score, for explanations."""

    name: str
    value: float  # the branch's own score, 0..1 where that makes sense
    weight: float  # how much it contributed to the fused score


@dataclass(frozen=True)
class Score:
    """A detector's judgement of one face track's recent window."""

    probability: float | None  # calibrated P(manipulated); None when it cannot judge
    signals: tuple[Signal, ...] = ()
    reasons: tuple[str, ...] = ()  # why it could not judge, or caveats


class TrackState(str, enum.Enum):
    CLEAR = "clear"
    SUSPICIOUS = "suspicious"
    ALERT = "alert"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """The detector's output for one track at one moment, before policy smoothing."""

    stream_id: str
    track_id: int
    t: float
    received_at: float
    score: Score
    quality: FaceQuality | None
    reasons: tuple[str, ...]  # reason codes from quality gating plus the detector's own


class EventType(str, enum.Enum):
    TRACK_STATE = "io.deepfake-monitor.track.state.v1"
    ALERT_OPENED = "io.deepfake-monitor.alert.opened.v1"
    ALERT_CLOSED = "io.deepfake-monitor.alert.closed.v1"
    STREAM_STATUS = "io.deepfake-monitor.stream.status.v1"


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class StreamState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TrackStateData:
    """Payload of a track state change: the smoothed verdict and why."""

    track_id: int
    state: TrackState
    previous: TrackState | None
    score: float | None  # smoothed probability of manipulation
    raw_score: float | None  # detector probability at this moment
    reasons: tuple[str, ...]
    signals: tuple[Signal, ...]
    since_t: float  # stream time the track entered this state
    t: float  # stream time of the verdict that caused the change


@dataclass(frozen=True)
class AlertData:
    """Payload of an alert that opened or closed on one face track."""

    alert_id: str
    track_id: int
    score: float  # peak smoothed score during the alert
    reasons: tuple[str, ...]
    signals: tuple[Signal, ...]
    start_t: float  # stream time the alert condition began
    end_t: float | None  # stream time it ended (its last readable score when evidence ran out); None while open
    start_time: float  # wall-clock UNIX time it began
    evidence: str | None = None  # API path of what the monitor saw (alert.opened, when saved)


@dataclass(frozen=True)
class StreamStatusData:
    """Payload of a stream lifecycle change (started, reconnecting, failed, ended)."""

    state: StreamState
    detail: str
    reconnects: int


@dataclass(frozen=True)
class Event:
    """Something a subscriber must be told: a track changed state, an alert opened or closed."""

    type: EventType
    stream_id: str
    severity: Severity
    time: float  # wall-clock UNIX time the event was created
    data: TrackStateData | AlertData | StreamStatusData


@dataclass(frozen=True)
class StoredEvent:
    """An event after the durable log has given it its id."""

    id: int
    event: Event


@dataclass
class SourceStatus:
    """Counters a source keeps about itself (mutable, owned by the source), read by the API."""

    state: StreamState = StreamState.STARTING
    frames_received: int = 0
    frames_dropped: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    last_error: str | None = None
    fps_in: float = 0.0
    width: int = 0
    height: int = 0
