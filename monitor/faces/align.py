"""Aligned face crops: a similarity transform from five MediaPipe landmarks to a fixed template.

The canonical template is the ArcFace 112x112 five-point template (eye centres, nose tip,
mouth corners), shrunk by ``TEMPLATE_SCALE`` = 0.8 about the face centre and re-centred, so the
whole face (forehead edge to chin, cheek to cheek) fits with a margin: on frontal faces from
data/dev the face mesh spans x 0.21..0.79 and y 0.16..0.84 of the crop. Positions are stored as
fractions of the crop side, so any ``size`` gives the same framing:

==========================  ==========  ==========
point (image side)          x / size    y / size
==========================  ==========  ==========
eye on the image left       0.3735      0.3693
eye on the image right      0.6252      0.3678
nose tip                    0.5002      0.5124
mouth corner, image left    0.3968      0.6598
mouth corner, image right   0.6052      0.6586
==========================  ==========  ==========

Eye centres are the midpoints of the eye corners (33/133 and 362/263), not the irises, so a
glance sideways does not move the crop. Nose tip is landmark 1, mouth corners 61 and 291.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from monitor.types import readonly

logger = logging.getLogger(__name__)

# ArcFace (insightface) 112x112 five-point template, in pixels of a 112 crop.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
TEMPLATE_SCALE = 0.8
# Centre of the face mesh in ArcFace coordinates (fractions), measured on data/dev frontal faces.
_ARCFACE_FACE_CENTRE = np.array([0.5, 0.625])

CANONICAL_TEMPLATE: np.ndarray = readonly(
    (_ARCFACE_112 / 112.0 - _ARCFACE_FACE_CENTRE) * TEMPLATE_SCALE + np.array([0.5, 0.5])
)
"""(5, 2) template positions as fractions of the crop side, in the order of ``ALIGN_POINTS``."""

# Landmark indices averaged into each template point, in template order.
ALIGN_POINTS: tuple[tuple[int, ...], ...] = ((33, 133), (362, 263), (1,), (61,), (291,))
_POINT_INDEX = np.array([33, 133, 362, 263, 1, 61, 291])


def template_points(landmarks: np.ndarray) -> np.ndarray:
    """The five (x, y) source points of ``landmarks`` (478, 3) matching ``CANONICAL_TEMPLATE``."""
    p = landmarks[_POINT_INDEX, :2].astype(np.float64)
    return np.stack([(p[0] + p[1]) / 2, (p[2] + p[3]) / 2, p[4], p[5], p[6]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    The closed-form 2-D Umeyama solution (no reflection); deterministic, unlike the RANSAC
    default of ``cv2.estimateAffinePartial2D``, which may drop one of only five points, and
    ~10x cheaper than an SVD. Returns (2, 3).
    """
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    s = src - src_mean
    d = dst - dst_mean
    norm = float((s * s).sum())
    if norm <= 0:
        a, b = 1.0, 0.0
    else:
        a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / norm
        b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    matrix = np.array([[a, -b, 0.0], [b, a, 0.0]])
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The (2, 3) matrix that maps image pixels to the ``size`` x ``size`` aligned crop."""
    return similarity_transform(template_points(landmarks), CANONICAL_TEMPLATE * size)


def warp_face(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``rgb`` with an ``alignment_matrix`` into a read-only (size, size, 3) uint8 crop."""
    crop = cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return readonly(crop)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Aligned face crop: (size, size, 3) uint8 RGB, read-only, framed by ``CANONICAL_TEMPLATE``.

    ``landmarks`` are MediaPipe face-mesh landmarks (478 or 468, 3) in image pixels.
    """
    return warp_face(rgb, alignment_matrix(landmarks, size), size)
