"""Per-frame cues (geometry vector, skin colour, eye opening) and their window statistics (pulse, blinks, flicker)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.faces.align import alignment_matrix

# Landmarks the geometry branch reads: face contour (36) and inner face (38), in aligned
# crop coordinates, so the sequence is invariant to where the face is and how large it is.
CONTOUR = np.array(
    [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
     152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
)
INNER = np.array(
    [33, 133, 159, 145, 160, 144, 158, 153, 362, 263, 386, 374, 385, 380, 387, 373, 70, 105, 107,
     336, 334, 300, 1, 4, 5, 195, 61, 291, 0, 17, 13, 14, 78, 308, 82, 312, 87, 317]
)
GEOMETRY_POINTS = np.concatenate([CONTOUR, INNER])
GEOMETRY_DIM = 2 * len(GEOMETRY_POINTS) + 3  # aligned x/y of each point, two EARs, mouth opening

EYE_R = (33, 160, 158, 133, 153, 144)
EYE_L = (362, 385, 387, 263, 373, 380)

# Skin patches in the aligned crop (fractions of the side; monitor.faces.align framing puts the
# eyes at y~0.37 and the mouth corners at y~0.66): forehead, left cheek, right cheek.
SKIN_BOXES = ((0.42, 0.58, 0.20, 0.27), (0.28, 0.40, 0.47, 0.58), (0.60, 0.72, 0.47, 0.58))
# Inner face (nose bridge and upper lip area) vs the outer ring (forehead edge, jaw sides):
# a pasted face's colour drifts against its surroundings from frame to frame.
INNER_BOX = (0.42, 0.58, 0.42, 0.60)
OUTER_BOXES = ((0.40, 0.60, 0.16, 0.22), (0.22, 0.28, 0.55, 0.70), (0.72, 0.78, 0.55, 0.70))


def eye_aspect_ratio(lm: np.ndarray, idx: tuple[int, ...]) -> float:
    p = lm[list(idx), :2]
    horizontal = float(np.linalg.norm(p[0] - p[3]))
    vertical = float(np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4]))
    return vertical / (2.0 * horizontal) if horizontal > 1e-6 else 0.0


def geometry_vector(landmarks: np.ndarray) -> np.ndarray:
    """(GEOMETRY_DIM,) float32: points in aligned-crop units (0..1) plus eye and mouth opening."""
    m = alignment_matrix(landmarks, 1)
    pts = landmarks[GEOMETRY_POINTS, :2].astype(np.float64) @ m[:, :2].T + m[:, 2]
    mouth = float(np.linalg.norm(landmarks[13, :2] - landmarks[14, :2])) * float(np.hypot(m[0, 0], m[1, 0]))
    extra = np.array([eye_aspect_ratio(landmarks, EYE_R), eye_aspect_ratio(landmarks, EYE_L), mouth])
    return np.concatenate([pts.ravel(), extra]).astype(np.float32)


def _box_mean(crop: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    s = crop.shape[0]
    x0, x1, y0, y1 = (int(round(v * s)) for v in box)
    return crop[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def colour_vector(crop: np.ndarray) -> np.ndarray:
    """(15,) float32: mean RGB of the three skin patches, the inner box and the outer ring."""
    skin = [_box_mean(crop, b) for b in SKIN_BOXES]
    inner = _box_mean(crop, INNER_BOX)
    outer = np.mean([_box_mean(crop, b) for b in OUTER_BOXES], axis=0)
    return np.concatenate(skin + [inner, outer]).astype(np.float32)


@dataclass(frozen=True)
class PhysioStats:
    """Window statistics of the low-weight physiological and colour cues."""

    pulse_coherence: float  # mean correlation of band-passed POS pulse between skin patches
    pulse_snr: float  # power at the dominant pulse frequency over the rest of the band (log)
    blink_rate: float  # blinks per second
    ear_cv: float  # variation of the eye aspect ratio
    colour_flicker: float  # high-frequency std of inner-minus-outer colour, grey levels (log)


NEUTRAL_PHYSIO = PhysioStats(0.0, 0.0, 0.0, 0.0, 0.0)


def _pos(rgb: np.ndarray) -> np.ndarray:
    """Plane-orthogonal-to-skin pulse (Wang et al. 2017) of a (T, 3) RGB mean trace."""
    mean = rgb.mean(axis=0)
    c = rgb / np.maximum(mean, 1e-6) - 1.0
    s1 = c[:, 1] - c[:, 2]
    s2 = -2 * c[:, 0] + c[:, 1] + c[:, 2]
    alpha = s1.std() / max(float(s2.std()), 1e-9)
    return s1 + alpha * s2


def _bandpass(x: np.ndarray, fps: float, lo: float = 0.7, hi: float = 3.0) -> np.ndarray:
    spec = np.fft.rfft(x - x.mean())
    freqs = np.fft.rfftfreq(len(x), 1.0 / fps)
    spec[(freqs < lo) | (freqs > hi)] = 0
    return np.fft.irfft(spec, len(x))


def physio_stats(times: np.ndarray, colours: np.ndarray, geometry: np.ndarray) -> PhysioStats:
    """Pulse coherence, blinks and colour flicker over a window (at least 16 frames spanning at
    least 1.5 s, else neutral).

    Frames are resampled onto a uniform grid first: analysed frames are dropped under load.
    """
    t = np.asarray(times, np.float64)
    if len(t) < 16 or t[-1] - t[0] < 1.5:
        return NEUTRAL_PHYSIO
    fps = (len(t) - 1) / (t[-1] - t[0])
    grid = np.linspace(t[0], t[-1], len(t))
    col = np.stack([np.interp(grid, t, colours[:, k]) for k in range(colours.shape[1])], axis=1)
    pulses = [_bandpass(_pos(col[:, 3 * i : 3 * i + 3]), fps) for i in range(3)]
    corr = []
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = pulses[i], pulses[j]
            den = float(np.linalg.norm(a) * np.linalg.norm(b))
            corr.append(float(a @ b) / den if den > 1e-9 else 0.0)
    mean_pulse = np.mean(pulses, axis=0)
    power = np.abs(np.fft.rfft(mean_pulse)) ** 2
    freqs = np.fft.rfftfreq(len(mean_pulse), 1.0 / fps)
    band = (freqs >= 0.7) & (freqs <= 3.0)
    snr = 0.0
    if band.sum() > 2 and power[band].sum() > 0:
        peak = float(power[band].max())
        snr = float(np.log10(peak / max(float(power[band].sum()) - peak, 1e-12)))
    ear = geometry[:, -3:-1].mean(axis=1)
    med = float(np.median(ear))
    closed = ear < 0.6 * med if med > 0 else np.zeros(len(ear), bool)
    blinks = int(np.sum(closed[1:] & ~closed[:-1]))
    diff = col[:, 9:12] - col[:, 12:15]
    hf = diff[2:] - 2 * diff[1:-1] + diff[:-2] if len(diff) > 2 else np.zeros((1, 3))
    return PhysioStats(
        pulse_coherence=float(np.mean(corr)),
        pulse_snr=snr,
        blink_rate=blinks / float(t[-1] - t[0]),
        ear_cv=float(ear.std() / med) if med > 0 else 0.0,
        colour_flicker=float(np.log10(hf.std() + 0.1)),
    )
