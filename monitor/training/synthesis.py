"""Self-blended fakes from real faces (per frame and per clip), landmark perturbations, call-channel simulation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from monitor.detect.bundle import APPEARANCE_INPUT

# MediaPipe FACEMESH_FACE_OVAL, in contour order.
FACE_OVAL = np.array(
    [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
     152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
)
# Forehead points of the oval, replaced by the brows for the "below the forehead" mask that
# DeepFaceLive-style tools paste (they keep the driver's forehead and hair line).
FOREHEAD = np.array([10, 338, 297, 332, 284, 54, 103, 67, 109])
BROWS = np.array([70, 63, 105, 66, 107, 336, 296, 334, 293, 300])
LOWER_FACE = np.concatenate([np.setdiff1d(FACE_OVAL, FOREHEAD), BROWS])

# Inner face (eyes, brows, nose, lips) versus the contour, for landmark-sequence fakes.
INNER = np.array(
    [33, 133, 159, 145, 160, 144, 158, 153, 362, 263, 386, 374, 385, 380, 387, 373, 70, 105, 107,
     336, 334, 300, 1, 4, 5, 195, 61, 291, 0, 17, 13, 14, 78, 308, 82, 312, 87, 317]
)
MOUTH = np.array([61, 291, 0, 17, 13, 14, 78, 308, 82, 312, 87, 317])


@dataclass(frozen=True)
class BlendParams:
    """One self-blend recipe; a clip-level fake replays one recipe on every frame."""

    lower_face: bool  # mask without the forehead
    hull_scale: tuple[float, float]  # mask stretch in x, y about its centroid
    warp_seed: int  # seed of the smooth random mask deformation
    warp_amp: float  # deformation amplitude, fraction of face size
    morph: int  # >0 dilate, <0 erode (pixels per 128 px of face size)
    blur1: float  # sigma of the first mask blur, fraction of face size
    blur2: float
    ratio: float  # blend ratio at the mask centre
    shift: tuple[float, float]  # source translation, fraction of face size
    scale: float  # source rescale about the face centre
    rgb_shift: tuple[float, float, float]
    hsv_shift: tuple[float, float, float]
    contrast: float
    brightness: float
    resample: float  # <1: down-then-up-scale the source by this factor; 1: sharpen instead
    sharpen: float
    # Recipe 2: the deformed outline is filled as it is (it can turn concave). Recipe 1 (the
    # shipped weights') took the convex hull of the deformed points. Never drawn: set by the caller.
    concave: bool = False


def draw_blend(rng: np.random.Generator) -> BlendParams:
    """Draw a recipe with SBI's ranges; magnitudes reach near zero so some fakes are hard."""
    return BlendParams(
        lower_face=bool(rng.random() < 0.5),
        hull_scale=(float(rng.uniform(0.9, 1.08)), float(rng.uniform(0.9, 1.08))),
        warp_seed=int(rng.integers(1 << 31)),
        warp_amp=float(rng.uniform(0.0, 0.04)),
        morph=int(rng.integers(-6, 7)),
        blur1=float(rng.uniform(0.01, 0.06)),
        blur2=float(rng.uniform(0.0, 0.04)),
        ratio=float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])),
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.015, 0.015))),
        scale=float(rng.uniform(0.95, 1.05)),
        rgb_shift=tuple(float(v) for v in rng.uniform(-20, 20, 3)),  # type: ignore[arg-type]
        hsv_shift=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
        contrast=float(rng.uniform(0.8, 1.2)),
        brightness=float(rng.uniform(-0.1, 0.1)),
        resample=float(rng.choice([rng.uniform(0.3, 0.9), 1.0])),
        sharpen=float(rng.uniform(0.0, 1.0)),
    )


def jitter_blend(p: BlendParams, rng: np.random.Generator, amount: float) -> BlendParams:
    """Per-frame jitter of a clip recipe: the blend ratio and source offset wobble, as live
    swap tools' per-frame mask and alignment do."""
    return BlendParams(
        **{
            **p.__dict__,
            "ratio": float(np.clip(p.ratio + rng.normal(0, 0.1 * amount), 0.2, 1.0)),
            "shift": (p.shift[0] + float(rng.normal(0, 0.006 * amount)), p.shift[1] + float(rng.normal(0, 0.004 * amount))),
            "scale": p.scale + float(rng.normal(0, 0.005 * amount)),
        }
    )


def face_size(landmarks: np.ndarray) -> float:
    pts = landmarks[FACE_OVAL, :2]
    return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))


HULL_POINTS = 72  # points of the mask's outline
WARP_HARMONICS = (2, 3, 4, 5, 6)  # of the mask's radial deformation


def _resample_closed(poly: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced along the closed polygon ``poly`` (M, 2), in its order."""
    closed = np.vstack([poly, poly[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] <= 0:
        return np.repeat(poly[:1], n, axis=0)
    at = np.linspace(0.0, arc[-1], n, endpoint=False)
    return np.stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])], axis=1)


def blend_mask(shape: tuple[int, int], landmarks: np.ndarray, p: BlendParams) -> np.ndarray:
    """Soft float32 mask in [0, ratio] of the (deformed) face hull; 0 outside the face."""
    h, w = shape
    size = face_size(landmarks)
    pts = landmarks[LOWER_FACE if p.lower_face else FACE_OVAL, :2].astype(np.float64)
    centre = pts.mean(axis=0)
    pts = (pts - centre) * np.array(p.hull_scale) + centre
    mask = _concave_mask((h, w), pts, centre, size, p) if p.concave else _convex_mask((h, w), pts, centre, size, p)
    k = int(abs(p.morph) * size / 128.0)
    if k > 0:
        kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
        mask = cv2.dilate(mask, kernel) if p.morph > 0 else cv2.erode(mask, kernel)
    for sigma in (p.blur1, p.blur2):
        if sigma > 0:
            mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, sigma * size))
    # Re-normalise so the blur does not push the centre below the ratio (SBI's two-step soften).
    peak = float(mask.max())
    if peak > 0:
        mask = np.clip(mask / peak, 0, 1)
    return mask * np.float32(p.ratio)


def _convex_mask(shape: tuple[int, int], pts: np.ndarray, centre: np.ndarray, size: float, p: BlendParams) -> np.ndarray:
    """Recipe 1: the hull points wobbled radially, then their convex hull (never concave)."""
    if p.warp_amp > 0:
        rng = np.random.default_rng(p.warp_seed)
        angle = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
        radial = sum(
            rng.normal(0, 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
        ) / 3.0
        direction = (pts - centre) / np.maximum(np.linalg.norm(pts - centre, axis=1, keepdims=True), 1e-6)
        pts = pts + direction * (radial * p.warp_amp * size)[:, None]
    hull = cv2.convexHull(pts.astype(np.float32)).astype(np.int32)
    mask = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
    return mask


def _concave_mask(shape: tuple[int, int], pts: np.ndarray, centre: np.ndarray, size: float, p: BlendParams) -> np.ndarray:
    """Recipe 2: an elastic deformation of the hull's outline, filled as it is."""
    # The hull in contour order, resampled to evenly spaced points so a deformation can bend
    # its sides as well as move its corners.
    outline = _resample_closed(cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64), HULL_POINTS)
    if p.warp_amp > 0:
        # Smooth elastic deformation: a random low-frequency radial displacement along the
        # outline. The polygon is filled as it is, so the mask can turn concave (SBI deforms
        # its hull mask elastically, not by a convex shape).
        rng = np.random.default_rng(p.warp_seed)
        angle = np.arctan2(outline[:, 1] - centre[1], outline[:, 0] - centre[0])
        radial = sum(
            rng.normal(0, 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in WARP_HARMONICS
        ) / 2.0
        direction = (outline - centre) / np.maximum(np.linalg.norm(outline - centre, axis=1, keepdims=True), 1e-6)
        outline = outline + direction * (radial * p.warp_amp * size)[:, None]
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1.0)
    return mask


def recolour(
    img: np.ndarray, contrast: float, brightness: float, rgb_shift: tuple[float, float, float], hsv_shift: tuple[float, float, float]
) -> np.ndarray:
    """Contrast, brightness (fraction of 255) and per-channel shifts (grey levels), then hue,
    saturation and value shifts (fractions of 10 hue steps, 50% and 30%), on uint8 RGB."""
    src = img.astype(np.float32) * contrast + 255.0 * brightness + np.array(rgb_shift, np.float32)
    src = np.clip(src, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(src, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hsv_shift[0] * 10) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + hsv_shift[1] * 0.5), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * (1 + hsv_shift[2] * 0.3), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def source_copy(img: np.ndarray, landmarks: np.ndarray, p: BlendParams) -> np.ndarray:
    """The transformed copy pasted into the face: colour change, resample or sharpen, shift."""
    src = recolour(img, p.contrast, p.brightness, p.rgb_shift, p.hsv_shift)
    h, w = src.shape[:2]
    if p.resample < 1.0:
        sw, sh = max(8, int(w * p.resample)), max(8, int(h * p.resample))
        src = cv2.resize(cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    elif p.sharpen > 0:
        blur = cv2.GaussianBlur(src, (0, 0), 1.0)
        src = cv2.addWeighted(src, 1 + p.sharpen, blur, -p.sharpen, 0)
    size = face_size(landmarks)
    centre = landmarks[FACE_OVAL, :2].mean(axis=0)
    m = np.array([[p.scale, 0, 0], [0, p.scale, 0]], np.float64)
    m[:, 2] = centre - p.scale * centre + np.array(p.shift) * size
    return cv2.warpAffine(src, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def self_blend(img: np.ndarray, landmarks: np.ndarray, p: BlendParams, mask_landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend a transformed copy of ``img`` into its own face: ``m*source + (1-m)*img``.

    ``mask_landmarks`` (default ``landmarks``) places the mask; passing an earlier frame's
    landmarks makes the mask lag the face, as a live swap's does under fast motion.
    Returns the fake (uint8) and the mask (float32, [0, 1]), the blend-boundary target.
    """
    mask = blend_mask(img.shape[:2], landmarks if mask_landmarks is None else mask_landmarks, p)
    src = source_copy(img, landmarks, p)
    m = mask[..., None]
    out = m * src.astype(np.float32) + (1 - m) * img.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def self_blend_clip(
    frames: list[np.ndarray], landmarks: list[np.ndarray], rng: np.random.Generator, concave: bool = False
) -> list[np.ndarray]:
    """A clip-level self-blend: one recipe for the clip, per-frame jitter, a mask that lags
    0-3 frames, and occasional frozen source segments (a live tool dropping frames)."""
    base = dataclasses.replace(draw_blend(rng), concave=concave)
    lag = int(rng.integers(0, 4))
    jitter = float(rng.uniform(0.0, 1.5))
    freeze_at = int(rng.integers(0, len(frames))) if rng.random() < 0.3 else -1
    freeze_len = int(rng.integers(2, 6))
    out: list[np.ndarray] = []
    for i, (img, lm) in enumerate(zip(frames, landmarks)):
        p = jitter_blend(base, rng, jitter)
        mask_lm = landmarks[max(0, i - lag)]
        if freeze_at >= 0 and freeze_at <= i < freeze_at + freeze_len and out:
            # Frozen swap: the previous pasted face stays while the head moves on underneath.
            # The earlier frame's blend is pasted again through the current mask, so across the
            # mask's soft edge some of the earlier frame's background shows too
            # (m^2 source + m(1-m) earlier frame + (1-m) current frame), as the weights were
            # trained.
            src_img = frames[max(0, freeze_at - 1)]
            fake, _ = self_blend(src_img, landmarks[max(0, freeze_at - 1)], p, mask_landmarks=mask_lm)
            m = blend_mask(img.shape[:2], mask_lm, p)[..., None]
            fake = np.clip(m * fake + (1 - m) * img, 0, 255).astype(np.uint8)
        else:
            fake, _ = self_blend(img, lm, p, mask_landmarks=mask_lm)
        out.append(fake)
    return out


# --- animated stills (a proxy for warping-based talking heads) ---------------------------

# Points that drive the warp: the face contour, eyes, brows, nose and lips, enough for blinks
# and speech. A 160 px crop takes about 9 ms to warp on this machine.
WARP_POINTS = np.unique(np.concatenate([FACE_OVAL, INNER, np.array([2, 98, 327, 168, 6, 197])]))


def piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Warp ``img`` so that points ``src`` (N, 2) land on ``dst``: affine inside each triangle
    of a Delaunay triangulation of ``dst`` plus the image border, which stays in place."""
    from scipy.spatial import Delaunay

    h, w = img.shape[:2]
    border = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w / 2, 0], [w / 2, h - 1], [0, h / 2], [w - 1, h / 2]], np.float64)
    d = np.vstack([dst.astype(np.float64), border])
    sp = np.vstack([src.astype(np.float64), border])
    tri = Delaunay(d)
    ys, xs = np.mgrid[0:h, 0:w]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    simplex = tri.find_simplex(grid)
    inside = simplex >= 0
    t = tri.transform[simplex[inside]]  # (M, 3, 2): inverse affine to barycentric, and offset
    b = np.einsum("mij,mj->mi", t[:, :2], grid[inside] - t[:, 2])
    bary = np.concatenate([b, 1 - b.sum(axis=1, keepdims=True)], axis=1)
    mapped = grid.copy()
    mapped[inside] = np.einsum("mk,mkj->mj", bary, sp[tri.simplices[simplex[inside]]])
    mx = mapped[:, 0].reshape(h, w).astype(np.float32)
    my = mapped[:, 1].reshape(h, w).astype(np.float32)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def animate_still(frames: list[np.ndarray], landmarks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A clip-level talking-head proxy: one frame of the clip, warped to follow every other
    frame's landmarks (head pose, blinks, speech), as warping-based generators (FOMM,
    LivePortrait, SadTalker's renderer) animate a single source image. The skin keeps the
    source frame's colour throughout, so no pulse or lighting change survives. One "generator
    look" per clip: down-then-up-scaling or sharpening, as their decoders and face enhancers
    leave."""
    ref = int(rng.integers(len(frames)))
    src_img = frames[ref]
    src_pts = landmarks[ref][WARP_POINTS, :2]
    resample = float(rng.uniform(0.5, 0.9)) if rng.random() < 0.5 else 1.0
    sharpen = float(rng.uniform(0.0, 1.0)) if resample == 1.0 else 0.0
    h, w = src_img.shape[:2]
    look = src_img
    if resample < 1.0:
        small = cv2.resize(src_img, (max(8, int(w * resample)), max(8, int(h * resample))), interpolation=cv2.INTER_AREA)
        look = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    elif sharpen > 0:
        blur = cv2.GaussianBlur(src_img, (0, 0), 1.0)
        look = cv2.addWeighted(src_img, 1 + sharpen, blur, -sharpen, 0)
    return [piecewise_affine(look, src_pts, lm[WARP_POINTS, :2]) for lm in landmarks]


# --- net inputs ----------------------------------------------------------------------------


def to_input(crop160: np.ndarray, rng: np.random.Generator, jitter: bool, size: int = APPEARANCE_INPUT) -> np.ndarray:
    """Stored crop (160 px) -> net input (112 px; ``size`` for `monitor sbi`'s input-size
    experiments), with a small random shift when training."""
    if jitter:
        dx, dy = rng.integers(-4, 5, 2)
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        crop160 = cv2.warpAffine(crop160, m, (crop160.shape[1], crop160.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    return resize_square(crop160, size)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` at ``size`` x ``size``: area averaging down, bilinear up, untouched when equal."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    inter = cv2.INTER_AREA if size < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=inter)


@dataclass(frozen=True)
class PairAugment:
    """What happens alike to a real face and its fake before the call channel: the crop's
    margins (a scale and a shift of the stored crop) and a camera's colour."""

    crop_scale: float  # >1 zooms in (narrower margins), <1 out
    crop_shift: tuple[int, int]  # pixels at the stored crop's size
    contrast: float
    brightness: float
    rgb_shift: tuple[float, float, float]
    hsv_shift: tuple[float, float, float]


def draw_pair_augment(rng: np.random.Generator) -> PairAugment:
    """Margins scaled by 0.92-1.08 and shifted by up to 4 px; a milder colour change than the
    blend's own (half of its ranges), since it models cameras, not a pasted face."""
    return PairAugment(
        crop_scale=float(rng.uniform(0.92, 1.08)),
        crop_shift=(int(rng.integers(-4, 5)), int(rng.integers(-4, 5))),
        contrast=float(rng.uniform(0.9, 1.1)),
        brightness=float(rng.uniform(-0.05, 0.05)),
        rgb_shift=tuple(float(v) for v in rng.uniform(-10, 10, 3)),  # type: ignore[arg-type]
        hsv_shift=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
    )


def _crop_matrix(shape: tuple[int, int], a: PairAugment) -> np.ndarray:
    h, w = shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), 0.0, a.crop_scale)
    m[:, 2] += np.array(a.crop_shift, np.float64)
    return m


def augment_pair_member(crop160: np.ndarray, a: PairAugment) -> np.ndarray:
    """Stored crop -> 112 px net input, with the pair's margins and colour."""
    h, w = crop160.shape[:2]
    moved = cv2.warpAffine(crop160, _crop_matrix((h, w), a), (w, h), borderMode=cv2.BORDER_REPLICATE)
    small = cv2.resize(moved, (APPEARANCE_INPUT, APPEARANCE_INPUT), interpolation=cv2.INTER_AREA)
    return recolour(small, a.contrast, a.brightness, a.rgb_shift, a.hsv_shift)


def augment_mask(mask160: np.ndarray, a: PairAugment) -> np.ndarray:
    """The blend mask moved with its crop's margins, for the boundary target."""
    h, w = mask160.shape[:2]
    return cv2.warpAffine(mask160, _crop_matrix((h, w), a), (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def boundary_target(mask: np.ndarray) -> np.ndarray:
    """Face X-ray style target: 4 m (1 - m), high where the blend is partial, at 28x28."""
    small = cv2.resize(mask, (28, 28), interpolation=cv2.INTER_AREA)
    return (4.0 * small * (1.0 - small)).astype(np.float32)


# --- call-channel simulation -------------------------------------------------------------


# Video codecs of calls, as the channel simulation runs them (`draw_channel(call_codecs=True)`):
# PyAV encoder, decoder, and the range of the fixed quantiser drawn. The ranges match what real
# 360p calls at 0.3-1.5 Mbit/s do to the face crop (`benchmarks/channel_calibration.py`).
CALL_CODECS: dict[str, tuple[str, str, tuple[int, int]]] = {
    "h264": ("libx264", "h264", (0, 28)),
    "vp8": ("libvpx", "vp8", (0, 24)),
}


@dataclass(frozen=True)
class ChannelParams:
    """A degradation applied alike to reals and fakes: what a video call does to a face."""

    scale: float  # downscale factor before upscaling back (360p-like at ~0.5)
    jpeg_quality: int  # 100 = none
    noise_sigma: float  # Gaussian noise, grey levels
    blur_sigma: float
    codec: str = "none"  # "h264" or "vp8": re-encoded by that codec (replaces JPEG)
    quantiser: int = 0  # the codec's fixed quantiser (x264 QP 0-51, VP8 q 0-63)
    motion: tuple[int, int] = (0, 0)  # pixels the face moved since the reference frame


def draw_channel(rng: np.random.Generator, call_codecs: bool = False) -> ChannelParams:
    """Downscaling, noise and blur, each at even odds or less; then compression. By default half
    the draws are JPEG-compressed (quality 30-99). With ``call_codecs``, half keep full
    quality and the rest are JPEG-compressed (1/6 of draws) or re-encoded by H.264 (1/4) or VP8
    (1/12) as a call at 0.3-1.5 Mbit/s is."""
    if not call_codecs:
        return ChannelParams(
            scale=float(rng.choice([1.0, rng.uniform(0.35, 1.0)])),
            jpeg_quality=int(rng.choice([100, int(rng.integers(30, 100))])),
            noise_sigma=float(rng.choice([0.0, rng.uniform(0.0, 6.0)])),
            blur_sigma=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)])),
        )
    scale = float(rng.choice([1.0, rng.uniform(0.35, 1.0)]))
    noise = float(rng.choice([0.0, rng.uniform(0.0, 6.0)]))
    blur = float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)]))
    kind = rng.choice(["none"] * 6 + ["jpeg"] * 2 + ["h264"] * 3 + ["vp8"])
    if kind in CALL_CODECS:
        lo, hi = CALL_CODECS[str(kind)][2]
        motion = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        return ChannelParams(scale, 100, noise, blur, str(kind), int(rng.integers(lo, hi + 1)), motion)
    quality = int(rng.integers(30, 100)) if kind == "jpeg" else 100
    return ChannelParams(scale, quality, noise, blur)


def codec_roundtrip(img: np.ndarray, codec: str, quantiser: int, motion: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``img`` (uint8 RGB, even size) as a call's decoder shows it: coded by ``codec`` at a
    fixed quantiser as an inter frame, predicted from a copy moved by ``motion`` pixels
    (a key frame when there is no motion), then decoded. One thread, so it is deterministic."""
    import av

    encoder, decoder, _ = CALL_CODECS[codec]
    h, w = img.shape[:2]
    enc = av.CodecContext.create(encoder, "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 30)
    if codec == "h264":
        enc.options = {"qp": str(quantiser), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
    else:
        enc.options = {"qmin": str(quantiser), "qmax": str(quantiser), "deadline": "realtime", "cpu-used": "-4", "threads": "1", "b": "10M"}
    frames = [img]
    if motion != (0, 0):
        shift = np.array([[1, 0, motion[0]], [0, 1, motion[1]]], np.float32)
        frames = [cv2.warpAffine(img, shift, (w, h), borderMode=cv2.BORDER_REPLICATE), img]
    packets = []
    for i, a in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create(decoder, "r")
    out = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    return np.ascontiguousarray(out[-1].to_ndarray(format="rgb24"))


def apply_channel(img: np.ndarray, p: ChannelParams, rng: np.random.Generator) -> np.ndarray:
    """Downscale, blur, add noise, then JPEG-compress or re-encode ``img`` (uint8 RGB) with a
    call's video codec, keeping its size."""
    h, w = img.shape[:2]
    out = img
    if p.scale < 0.999:
        sw, sh = max(8, int(w * p.scale)), max(8, int(h * p.scale))
        out = cv2.resize(cv2.resize(out, (sw, sh), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    if p.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), p.blur_sigma)
    if p.noise_sigma > 0:
        out = np.clip(out.astype(np.float32) + rng.normal(0, p.noise_sigma, out.shape), 0, 255).astype(np.uint8)
    if p.codec != "none":
        out = codec_roundtrip(out, p.codec, p.quantiser, p.motion)
    elif p.jpeg_quality < 100:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
        if ok:
            out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


# --- landmark-sequence fakes -------------------------------------------------------------


LEFT_EYE = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246])
RIGHT_EYE = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398])
IRISES = np.arange(468, 478)
EYES = np.concatenate([LEFT_EYE, RIGHT_EYE, IRISES])
# Eye aspect ratio: two lid gaps over the corner-to-corner width, per eye.
_EAR = ((159, 145, 158, 153, 33, 133), (386, 374, 385, 380, 362, 263))

# Landmark fakes, in perturb_landmarks' order. Each is drawn with equal odds.
LANDMARK_FAKES = ("misalign", "jitter", "low_pass", "mouth_delay", "transplant", "blink", "freeze")
# A quarter of the fakes are hard: moved only this fraction of the way from the real sequence.
HARD_SHARE = 0.25
HARD_STRENGTH = (0.05, 0.3)


def inter_ocular(seq: np.ndarray) -> float:
    """Median distance between the two eyes' centres (corner midpoints) over a (T, 478, 3)
    sequence, in its units: the scale of the landmark fakes' magnitudes."""
    left = (seq[:, 33, :2] + seq[:, 133, :2]) / 2
    right = (seq[:, 362, :2] + seq[:, 263, :2]) / 2
    return float(max(np.median(np.linalg.norm(left - right, axis=1)), 1e-3)) if len(seq) else 1.0


def eye_aspect(seq: np.ndarray) -> np.ndarray:
    """(T,) mean eye aspect ratio of both eyes: lower when the lids close."""
    ears = []
    for a, b, c, d, e, f in _EAR:
        gap = np.linalg.norm(seq[:, a, :2] - seq[:, b, :2], axis=1) + np.linalg.norm(seq[:, c, :2] - seq[:, d, :2], axis=1)
        ears.append(gap / (2 * np.maximum(np.linalg.norm(seq[:, e, :2] - seq[:, f, :2], axis=1), 1e-6)))
    return np.mean(ears, axis=0)


def _relative(seq: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``idx`` of each frame relative to their centroid, and the centroids."""
    centre = seq[:, idx, :2].mean(axis=1, keepdims=True)
    return seq[:, idx, :2] - centre, centre


def perturb_landmarks(
    seq: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None, fps: float = 10.0, recipe: int = 1
) -> tuple[np.ndarray, str]:
    """A geometry fake from a real (T, 478, 3) landmark sequence in pixels, sampled at ``fps``,
    and the name of the fake (one of ``LANDMARK_FAKES``, drawn with equal odds; recipe 1:
    ``LANDMARK_FAKES_V1``, see ``perturb_landmarks_v1``).

    ``recipe`` 2 is DETECTOR.md's recipe: the inner face misaligned against the contour by 1-5
    degrees and 1-3% (constant or drifting); inner-face jitter of sigma 0.3-1.5%; the inner
    face's motion against the contour low-passed at 2-4 Hz (a causal Butterworth filter at
    ``fps``, as a tool smoothing its tracker does; at rates too low for the cutoff, below
    4.4-8.9 fps, held at its mean instead); the mouth 2-6 frames late; mouth or eye motion
    transplanted from ``donor``; blinks removed or stretched (a window with no blink gets still
    eyes); a frozen segment of the inner face (a tool dropping frames shows its last face
    meanwhile). Magnitudes are relative to the inter-ocular distance. A quarter of the fakes
    (``HARD_SHARE``) are moved only 5-30% of the way from the real sequence, so magnitudes reach
    near zero. The face contour never moves. ``recipe`` 1 is ``perturb_landmarks_v1``.
    """
    if recipe == 1:
        return perturb_landmarks_v1(seq, rng, donor)
    from scipy.signal import butter, sosfilt

    real = seq.astype(np.float32)
    out = real.copy()
    t = len(out)
    kind = int(rng.integers(0, len(LANDMARK_FAKES)))
    name = LANDMARK_FAKES[kind]
    if t == 0:
        return out, name
    if not (math.isfinite(fps) and fps > 0):
        fps = 10.0  # an unknown rate: the service's default
    iod = inter_ocular(out)
    rel, centre = _relative(out, INNER)
    if name == "misalign":
        drift = bool(rng.random() < 0.5)
        ramp = np.linspace(rng.uniform(0, 0.5), 1, t) if drift else np.ones(t)
        angle = np.deg2rad(rng.uniform(1, 5) * rng.choice([-1, 1])) * ramp
        heading = rng.uniform(0, 2 * np.pi)
        shift = rng.uniform(0.01, 0.03) * iod * np.array([np.cos(heading), np.sin(heading)])
        c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
        rot = np.stack([c * rel[..., 0] - s * rel[..., 1], s * rel[..., 0] + c * rel[..., 1]], axis=-1)
        out[:, INNER, :2] = rot + centre + (shift[None, :] * ramp[:, None])[:, None, :]
    elif name == "jitter":
        sigma = rng.uniform(0.003, 0.015) * iod
        out[:, INNER, :2] += rng.normal(0, sigma, (t, 1, 2)).astype(np.float32)
    elif name == "low_pass":
        # The inner face's motion against the contour (expression and alignment; the head's
        # own motion, carried by the contour, stays as it is).
        contour = out[:, FACE_OVAL, :2].mean(axis=1, keepdims=True)
        inner = out[:, INNER, :2] - contour
        cutoff = float(rng.uniform(2.0, 4.0))
        if cutoff < 0.45 * fps and t > 3:
            sos = butter(2, cutoff, fs=fps, output="sos")
            # Start from rest at the first frame, so the filter adds no transient of its own.
            out[:, INNER, :2] = sosfilt(sos, inner - inner[:1], axis=0) + inner[:1] + contour
        else:  # the rate is too low for this cutoff to smooth anything: over-smooth by a mean
            out[:, INNER, :2] = inner.mean(axis=0, keepdims=True) + contour
    elif name == "mouth_delay":
        d = min(int(rng.integers(2, 7)), max(t - 1, 1))
        mrel, mcentre = _relative(out, MOUTH)
        out[:, MOUTH, :2] = np.concatenate([np.repeat(mrel[:1], d, axis=0), mrel[:-d]])[:t] + mcentre
    elif name == "transplant":
        region = MOUTH if rng.random() < 0.5 else EYES
        source = donor if donor is not None and len(donor) else real[::-1]  # no donor: its own motion reversed
        dn = source[np.arange(t) % len(source)]
        scale = iod / inter_ocular(dn)
        drel, _ = _relative(dn, region)
        orel, ocentre = _relative(out, region)
        # The donor's motion about its own mean shape, on this face's mean shape.
        out[:, region, :2] = orel.mean(axis=0, keepdims=True) + (drel - drel.mean(axis=0, keepdims=True)) * scale + ocentre
    elif name == "blink":
        ear = eye_aspect(out)
        closed = ear < 0.6 * np.median(ear)
        erel, ecentre = _relative(out, EYES)
        if closed.any() and not closed.all():
            start = int(np.argmax(closed))
            stretch = rng.random() >= 0.5
            factor = float(rng.uniform(2.0, 3.0))
            if stretch and start < t - 1:  # every frame of the eyes' motion from the blink on shown 2-3 times as long
                src = np.minimum(start + (np.arange(t - start) / factor).astype(int), t - 1)
                erel[start:] = erel[src]
            else:  # removed (also a blink on the last frame, which stretching would leave as it is)
                erel[closed] = erel[~closed].mean(axis=0)
        else:  # no blink to remove: the eyes' motion stops, as when a tool drops blinks
            erel[:] = erel.mean(axis=0, keepdims=True)
        out[:, EYES, :2] = erel + ecentre
    else:  # a frozen segment: the tool drops frames and shows its last face meanwhile
        a = int(rng.integers(0, max(1, t - 3)))
        n = int(rng.integers(3, 8))
        out[a : a + n, INNER, :2] = rel[a][None] + centre[a : a + n]
    if rng.random() < HARD_SHARE:
        strength = np.float32(rng.uniform(*HARD_STRENGTH))
        out = real + strength * (out - real)
    return out, name


LANDMARK_FAKES_V1 = ("misalign", "jitter", "low_pass", "mouth_delay", "transplant", "freeze")


def perturb_landmarks_v1(seq: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Recipe 1 (the shipped weights'): a geometry fake from a real (T, 478, 3) landmark
    sequence in pixels, and its name (one of ``LANDMARK_FAKES_V1``).

    One of: inner face misaligned against the contour (constant or drifting), inner jitter,
    inner face low-passed (over-smoothed), mouth delayed, mouth motion transplanted from
    ``donor``, frozen segment. Magnitudes are relative to face size (about 2.5-3 inter-ocular
    distances, to which the recipe's bounds are relative), and only some reach near zero.
    """
    out = seq.astype(np.float32).copy()
    t = len(out)
    size = float(np.median([face_size(f) for f in out])) if t else 1.0
    kind = int(rng.integers(0, 6))
    # A branch whose condition fails (too short a window, no donor) falls through to a freeze.
    name = LANDMARK_FAKES_V1[kind] if (kind not in (2, 3, 4) or (kind == 2 and t > 3) or (kind == 3 and t > 6) or (kind == 4 and donor is not None and len(donor) > 0)) else "freeze"
    inner = INNER
    centre = out[:, inner, :2].mean(axis=1, keepdims=True)
    if kind == 0:
        angle = np.deg2rad(rng.uniform(-5, 5)) * np.linspace(rng.uniform(0, 1), 1, t)
        shift = rng.uniform(-0.03, 0.03, 2) * size
        rel = out[:, inner, :2] - centre
        c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
        rot = np.stack([c * rel[..., 0] - s * rel[..., 1], s * rel[..., 0] + c * rel[..., 1]], axis=-1)
        out[:, inner, :2] = rot + centre + shift
    elif kind == 1:
        sigma = rng.uniform(0.001, 0.015) * size
        out[:, inner, :2] += rng.normal(0, sigma, (t, 1, 2)).astype(np.float32)
    elif kind == 2 and t > 3:
        rel = out[:, inner, :2] - centre
        k = int(rng.integers(2, 5))
        kernel = np.ones(k) / k
        smooth = np.apply_along_axis(lambda v: np.convolve(np.pad(v, (k - 1, 0), mode="edge"), kernel, "valid"), 0, rel)
        out[:, inner, :2] = smooth + centre
    elif kind == 3 and t > 6:
        d = int(rng.integers(2, 7))
        rel = out[:, MOUTH, :2] - out[:, MOUTH, :2].mean(axis=1, keepdims=True)
        delayed = np.concatenate([np.repeat(rel[:1], d, axis=0), rel[:-d]])
        out[:, MOUTH, :2] = delayed + out[:, MOUTH, :2].mean(axis=1, keepdims=True)
    elif kind == 4 and donor is not None and len(donor) > 0:
        dn = donor[np.arange(t) % len(donor)]
        dsize = float(np.median([face_size(f) for f in dn]))
        rel = (dn[:, MOUTH, :2] - dn[:, MOUTH, :2].mean(axis=1, keepdims=True)) * (size / max(dsize, 1.0))
        out[:, MOUTH, :2] = rel + out[:, MOUTH, :2].mean(axis=1, keepdims=True)
    else:
        a = int(rng.integers(0, max(1, t - 3)))
        n = int(rng.integers(3, 8))
        rel = out[a, inner, :2] - centre[a]
        out[a : a + n, inner, :2] = rel[None] + centre[a : a + n]
    return out, name
