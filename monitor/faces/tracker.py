"""Face tracking for one stream: MediaPipe face mesh, stable track ids, aligned crops, quality."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.config import AnalysisConfig
from monitor.faces.align import alignment_matrix, warp_face
from monitor.faces.quality import (
    face_width_px,
    laplacian_variance,
    out_of_frame_fraction,
    turn_occlusion,
)
from monitor.types import FaceFrame, FaceObservation, FaceQuality, Frame, readonly

logger = logging.getLogger(__name__)

N_LANDMARKS = 478

# Association: a detection continues a track when their landmark boxes overlap by at least
# MIN_IOU, or failing that (fast motion at low fps, a face back from a short loss) when its
# centre lies within CENTRE_GATE face sizes of the track's last centre and its size is within
# SIZE_GATE times the track's size.
MIN_IOU = 0.1
CENTRE_GATE = 1.0
SIZE_GATE = 2.0
# An unmatched mesh overlapping a face already claimed in the same frame this much is the same face.
DUPLICATE_IOU = 0.5

# Confidence proxy: the legacy face-mesh API exposes no per-face score, and running
# face_detection as well would cost ~2 ms (40% of the mesh budget). Every face the mesh returns
# already passed min_detection_confidence / min_tracking_confidence = 0.5, so confidence is
# 0.5 plus a share of the rest for each analysed frame the track has persisted: 0.6 on a new
# track's first frame, 1 after PERSIST_FRAMES; each analysed frame in which the track is missing
# halves its persistence.
CONFIDENCE_FLOOR = 0.5
PERSIST_FRAMES = 5

# A NormalizedLandmark serialises as 17 bytes: field tag and length, then x, y, z as tagged
# float32. Reading the serialised list with one numpy view is ~15x faster than 478 attribute
# reads; any other layout (an extra field, a missing one) falls back to the attribute reads.
_LANDMARK_WIRE = np.dtype(
    [
        ("tag", "u1"),
        ("len", "u1"),
        ("tx", "u1"),
        ("x", "<f4"),
        ("ty", "u1"),
        ("y", "<f4"),
        ("tz", "u1"),
        ("z", "<f4"),
    ]
)


def landmarks_to_array(landmark_list: Any, width: int, height: int) -> np.ndarray:
    """MediaPipe ``NormalizedLandmarkList`` to (N, 3) float32 pixels (x*w, y*h, z*w), read-only."""
    raw = landmark_list.SerializeToString()
    count = len(landmark_list.landmark)
    out = np.empty((count, 3), dtype=np.float32)
    if len(raw) == count * _LANDMARK_WIRE.itemsize:
        wire = np.frombuffer(raw, dtype=_LANDMARK_WIRE)
        if (
            (wire["tag"] == 0x0A).all()
            and (wire["len"] == 15).all()
            and (wire["tx"] == 0x0D).all()
            and (wire["ty"] == 0x15).all()
            and (wire["tz"] == 0x1D).all()
        ):
            out[:, 0] = wire["x"]
            out[:, 1] = wire["y"]
            out[:, 2] = wire["z"]
        else:
            out[:] = [(p.x, p.y, p.z) for p in landmark_list.landmark]
    else:
        out[:] = [(p.x, p.y, p.z) for p in landmark_list.landmark]
    out *= np.array([width, height, width], dtype=np.float32)
    return readonly(out)


def bbox_of(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the landmarks' x/y, in pixels."""
    lo = landmarks[:, :2].min(axis=0)
    hi = landmarks[:, :2].max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _size(box: tuple[float, float, float, float]) -> float:
    return max(1e-6, float(np.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))))


def association_cost(
    det: tuple[float, float, float, float], track: tuple[float, float, float, float]
) -> float | None:
    """Cost of continuing ``track`` with ``det`` (lower is better), or None if implausible.

    Overlapping boxes cost 1 - IoU (0..0.9); the centre-distance fallback costs 1 + distance in
    face sizes, so any overlap wins over any fallback match.
    """
    overlap = iou(det, track)
    if overlap >= MIN_IOU:
        return 1.0 - overlap
    det_size, track_size = _size(det), _size(track)
    if max(det_size / track_size, track_size / det_size) > SIZE_GATE:
        return None
    dx = (det[0] + det[2] - track[0] - track[2]) / 2
    dy = (det[1] + det[3] - track[1] - track[3]) / 2
    distance = float(np.hypot(dx, dy)) / track_size
    if distance > CENTRE_GATE:
        return None
    return 1.0 + distance


def greedy_match(costs: list[list[float | None]]) -> list[tuple[int, int]]:
    """Pairs (row, col) chosen cheapest-first; each row and column used at most once.

    Greedy rather than Hungarian: with at most 16 faces and gated costs the two agree in
    practice, and it needs no scipy at run time.
    """
    candidates = sorted(
        (cost, r, c) for r, row in enumerate(costs) for c, cost in enumerate(row) if cost is not None
    )
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for _, r, c in candidates:
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


@dataclass
class _Track:
    track_id: int
    bbox: tuple[float, float, float, float]
    last_t: float
    persistence: float


class TrackAssigner:
    """Assigns stable small-int track ids to per-frame face boxes, in stream time.

    A track unseen for more than ``lost_s`` of stream time ends; a face that comes back sooner,
    near the same place and size, keeps its id. Separate from MediaPipe so it is testable alone.

    Boxes are in pixels of the frame they came from. Pass ``frame_size`` (width, height) so that
    a change of resolution mid-stream (WebRTC bandwidth adaptation, a simulcast layer switch)
    does not end every track: when it differs from the previous frame's size, the tracks' stored
    boxes are first mapped into the new frame, x by new/old width and y by new/old height. Only
    stored state is rescaled, and only on a change, so at a constant size the arithmetic, and the
    ids, are exactly those of an assigner that is never told the size.
    """

    def __init__(self, lost_s: float) -> None:
        self._lost_s = lost_s
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._last_t: float | None = None
        self._frame_size: tuple[int, int] | None = None

    @property
    def active_ids(self) -> tuple[int, ...]:
        return tuple(self._tracks)

    def update(
        self,
        t: float,
        boxes: list[tuple[float, float, float, float]],
        frame_size: tuple[int, int] | None = None,
    ) -> tuple[list[tuple[int, float] | None], tuple[int, ...]]:
        """(track id, confidence) per box, None for a duplicate, and the ids of ended tracks.

        ``frame_size`` is the (width, height) the boxes are in pixels of; None keeps the previous.
        """
        if not math.isfinite(t):
            # A NaN time (a source plugin's bad frame) left every track it touched never
            # ending, and an alert on it open for ever: the frame fails instead.
            raise ValueError(f"frame time must be a finite number of seconds, got {t!r}")
        if frame_size is not None:
            self._rescale(frame_size)
        ended: list[int] = []
        previous_t = self._last_t
        if self._last_t is not None and t < self._last_t:
            # Stream time went backwards (a looped file, a restarted source): nothing carries over.
            ended.extend(self._tracks)
            self._tracks.clear()
        self._last_t = t
        for tid, track in list(self._tracks.items()):
            if t - track.last_t > self._lost_s:
                ended.append(tid)
                del self._tracks[tid]

        track_list = list(self._tracks.values())
        costs = [[association_cost(box, tr.bbox) for tr in track_list] for box in boxes]
        matched: dict[int, int] = {}
        # In cascade, as SORT does: first the tracks seen on the previous frame, then, with the
        # faces left over, those unseen for a moment. In one pass a face seen all along that
        # walked over where a hidden face was last seen (IoU near 1 with that box, against 0.8
        # with its own moved box) took the hidden face's id, and the two identities swapped.
        # Stage one takes only overlaps (cost under 1): a face missed for one frame beside one
        # that came back must not go to its neighbour's recent track through the centre gate
        # while its own track overlaps it. Stage two is one pass over everything left.
        recent = [j for j, tr in enumerate(track_list) if tr.last_t == previous_t]
        for stage, group in enumerate((recent, list(range(len(track_list))))):
            rows = [i for i in range(len(boxes)) if i not in matched]
            group = [j for j in group if j not in matched.values()]
            sub = [[c if (c := costs[i][j]) is not None and (stage or c < 1.0) else None for j in group] for i in rows]
            for a, b in greedy_match(sub):  # cheapest first
                i, j = rows[a], group[b]
                # A second mesh on a face matched already (IoU over 0.5 with it) that overlaps it
                # more than its own track: left unmatched, it is dropped below. Matched, it continued
                # a neighbour's track (one unseen this frame, whose centre gate it passed: an overlap
                # under MIN_IOU), and that track then followed the other face. Two real faces that
                # overlap, one passing behind the other, each overlap their own track more.
                own = iou(boxes[i], track_list[j].bbox)
                if any(iou(boxes[i], boxes[k]) > max(DUPLICATE_IOU, own) for k in matched):
                    continue
                matched[i] = j
        kept = [boxes[i] for i in matched]
        result: list[tuple[int, float] | None] = []
        seen: set[int] = set()
        for i, box in enumerate(boxes):
            if i in matched:
                track = track_list[matched[i]]
                track.bbox = box
                track.last_t = t
                track.persistence = min(float(PERSIST_FRAMES), track.persistence + 1.0)
            elif any(iou(box, other) > DUPLICATE_IOU for other in kept):
                # MediaPipe sometimes returns a second mesh on a face it already tracks.
                result.append(None)
                continue
            else:
                track = _Track(self._next_id, box, t, 1.0)
                self._tracks[track.track_id] = track
                self._next_id += 1
                kept.append(box)
            seen.add(track.track_id)
            confidence = CONFIDENCE_FLOOR + (1.0 - CONFIDENCE_FLOOR) * track.persistence / PERSIST_FRAMES
            result.append((track.track_id, confidence))
        for tid, track in self._tracks.items():
            if tid not in seen:
                track.persistence /= 2.0
        return result, tuple(ended)

    def _rescale(self, frame_size: tuple[int, int]) -> None:
        """Map the tracks' boxes into a frame of ``frame_size`` if it differs from the last one."""
        width, height = int(frame_size[0]), int(frame_size[1])
        if width <= 0 or height <= 0:
            return
        previous = self._frame_size
        self._frame_size = (width, height)
        if previous is None or previous == self._frame_size:
            return
        # Each axis maps by its own ratio, so boxes stay where they were relative to the frame:
        # exact for a pure change of scale. Under a change of aspect ratio this treats the new
        # frame as the old one stretched; for a crop, faces near the centre still match (IoU or
        # the centre gate) while faces near the cropped edges may start new tracks.
        sx, sy = width / previous[0], height / previous[1]
        for track in self._tracks.values():
            x0, y0, x1, y1 = track.bbox
            track.bbox = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


class FaceTracker:
    """Finds, tracks and aligns the faces of one stream; call ``process`` from one thread."""

    def __init__(self, stream_id: str, config: AnalysisConfig) -> None:
        # Imported here so that importing monitor.faces (e.g. for align_face) stays cheap.
        import mediapipe as mp

        self.stream_id = stream_id
        self._config = config
        self._assigner = TrackAssigner(config.track_lost_s)
        self._face_mesh = mp.solutions.face_mesh.FaceMesh
        self._mesh = self._new_mesh()
        self._closed = False
        # Tracks the assigner ended and no process() call has returned yet: the assigner drops
        # them as it reports them, so a call that fails after it ran (warp_face, quality) would
        # lose them, and the analyzer would keep the track, and its open alert, until the end.
        self._pending_ended: dict[int, None] = {}

    def _new_mesh(self) -> Any:
        return self._face_mesh(
            static_image_mode=False,
            max_num_faces=self._config.max_faces,
            refine_landmarks=True,
            min_detection_confidence=0.5,
            min_tracking_confidence=0.5,
        )

    def process(self, frame: Frame, rgb: np.ndarray) -> FaceFrame:
        """Faces in ``rgb`` (H, W, 3 uint8, the frame's one RGB conversion) with stable ids."""
        height, width = rgb.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"frame {frame.seq} is empty ({width}x{height})")  # MediaPipe's graph would fail for good
        if not rgb.flags.c_contiguous:
            # PyAV returns padded rows for some widths; MediaPipe needs contiguous memory.
            rgb = np.ascontiguousarray(rgb)
        try:
            result = self._mesh.process(rgb)
        except RuntimeError:
            # After one error MediaPipe's graph refuses every later frame ("Graph has errors")
            # and even its close() raises: start a new graph, so only this frame is lost. The
            # new graph detects afresh; track ids carry on (the assigner is ours).
            old, self._mesh = self._mesh, self._new_mesh()
            with contextlib.suppress(Exception):
                old.close()
            raise
        landmark_sets = [
            landmarks_to_array(lm, width, height) for lm in (result.multi_face_landmarks or ())
        ]
        # A mesh with a non-finite point is no face: its NaN box would start a phantom track.
        landmark_sets = [lm for lm in landmark_sets if np.isfinite(lm).all()]
        boxes = [bbox_of(lm) for lm in landmark_sets]
        ids, ended = self._assigner.update(frame.pts_s, boxes, (width, height))
        self._pending_ended.update(dict.fromkeys(ended))
        size = self._config.crop_size
        faces: list[FaceObservation] = []
        for landmarks, box, assigned in zip(landmark_sets, boxes, ids):
            if assigned is None:
                continue
            track_id, confidence = assigned
            crop = warp_face(rgb, alignment_matrix(landmarks, size), size)
            quality = FaceQuality(
                face_px=face_width_px(landmarks),
                blur=laplacian_variance(crop),
                out_of_frame=out_of_frame_fraction(landmarks, width, height),
                occlusion=turn_occlusion(landmarks),
                confidence=confidence,
            )
            faces.append(
                FaceObservation(
                    stream_id=self.stream_id,
                    track_id=track_id,
                    frame_seq=frame.seq,
                    t=frame.pts_s,
                    received_at=frame.received_at,
                    landmarks=landmarks,
                    bbox=box,
                    crop=crop,
                    quality=quality,
                    frame_size=(width, height),
                )
            )
        ended_tracks, self._pending_ended = tuple(self._pending_ended), {}
        return FaceFrame(
            stream_id=self.stream_id,
            frame_seq=frame.seq,
            t=frame.pts_s,
            received_at=frame.received_at,
            faces=tuple(faces),
            ended_tracks=ended_tracks,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._mesh.close()
