"""Per-face quality measures (size, blur, out-of-frame, turn-away occlusion) from landmarks and crop."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# Cheek contour points at the widest part of the face (image left, image right), forehead top, chin.
CHEEK_L, CHEEK_R, FOREHEAD, CHIN = 234, 454, 10, 152

# Head turn at which occlusion starts to rise, and where it reaches 1 (degrees). Below ~20 deg
# the far side of the face is fully visible; past ~60 deg yaw half the face is hidden.
YAW_FREE_DEG, YAW_FULL_DEG = 20.0, 60.0
PITCH_FREE_DEG, PITCH_FULL_DEG = 20.0, 50.0


def face_width_px(landmarks: np.ndarray) -> float:
    """Face width in pixels: 3-D distance between the cheek points 234 and 454.

    MediaPipe's z is in the same scale as x, so the 3-D distance does not shrink when the head
    turns; a turned face is not reported as low resolution, it is reported as occluded.
    """
    return float(np.linalg.norm(landmarks[CHEEK_R] - landmarks[CHEEK_L]))


def head_angles_deg(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees from the depth of the cheek and forehead/chin points.

    Yaw is the angle of the cheek-to-cheek vector out of the image plane, pitch that of the
    forehead-to-chin vector; both 0 for a frontal face. Signs follow MediaPipe's z.
    """
    cheek = landmarks[CHEEK_R] - landmarks[CHEEK_L]
    vertical = landmarks[CHIN] - landmarks[FOREHEAD]
    yaw = math.degrees(math.atan2(float(cheek[2]), math.hypot(float(cheek[0]), float(cheek[1]))))
    pitch = math.degrees(
        math.atan2(float(vertical[2]), math.hypot(float(vertical[0]), float(vertical[1])))
    )
    return yaw, pitch


def _ramp(value: float, start: float, full: float) -> float:
    return min(1.0, max(0.0, (value - start) / (full - start)))


def turn_occlusion(landmarks: np.ndarray) -> float:
    """0..1 estimate of how much of the face is turned away, from head yaw and pitch.

    A cheap proxy: it sees self-occlusion by head pose only, not hands, masks or glasses.
    0 up to 20 deg of yaw or pitch, rising linearly to 1 at 60 deg yaw or 50 deg pitch.
    """
    yaw, pitch = head_angles_deg(landmarks)
    return max(
        _ramp(abs(yaw), YAW_FREE_DEG, YAW_FULL_DEG),
        _ramp(abs(pitch), PITCH_FREE_DEG, PITCH_FULL_DEG),
    )


def out_of_frame_fraction(landmarks: np.ndarray, width: int, height: int) -> float:
    """Fraction of landmarks whose (x, y) falls outside the image."""
    x = landmarks[:, 0]
    y = landmarks[:, 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    return float(outside.mean())


# The blur measure is taken at this side whatever analysis.crop_size is: the Laplacian's variance
# falls several-fold when the same face is aligned at twice the size, so a fixed min_blur
# rejected usable faces at crop_size 224 and let blurred ones through at 32.
BLUR_REFERENCE_PX = 112


def laplacian_variance(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop at 112 px; low means blurred (or upscaled from
    few pixels)."""
    if crop.shape[0] != BLUR_REFERENCE_PX or crop.shape[1] != BLUR_REFERENCE_PX:
        shrink = crop.shape[0] > BLUR_REFERENCE_PX
        crop = cv2.resize(
            crop, (BLUR_REFERENCE_PX, BLUR_REFERENCE_PX), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
    return float(std[0, 0]) ** 2
