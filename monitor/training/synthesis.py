"""Self-blended fakes from real faces (per frame and per clip), landmark perturbations, call-channel simulation."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from monitor.detect.nets import APPEARANCE_INPUT

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
    morph: int  # >0 dilate, <0 erode (pixels at 256 px face region scale)
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


def blend_mask(shape: tuple[int, int], landmarks: np.ndarray, p: BlendParams) -> np.ndarray:
    """Soft float32 mask in [0, ratio] of the (deformed) face hull; 0 outside the face."""
    h, w = shape
    size = face_size(landmarks)
    pts = landmarks[LOWER_FACE if p.lower_face else FACE_OVAL, :2].astype(np.float64)
    centre = pts.mean(axis=0)
    pts = (pts - centre) * np.array(p.hull_scale) + centre
    if p.warp_amp > 0:
        # Smooth deformation: a random low-frequency displacement along the hull.
        rng = np.random.default_rng(p.warp_seed)
        angle = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
        radial = sum(
            rng.normal(0, 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)
        ) / 3.0
        direction = (pts - centre) / np.maximum(np.linalg.norm(pts - centre, axis=1, keepdims=True), 1e-6)
        pts = pts + direction * (radial * p.warp_amp * size)[:, None]
    hull = cv2.convexHull(pts.astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
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


def source_copy(img: np.ndarray, landmarks: np.ndarray, p: BlendParams) -> np.ndarray:
    """The transformed copy pasted into the face: colour change, resample or sharpen, shift."""
    src = img.astype(np.float32)
    src = src * p.contrast + 255.0 * p.brightness + np.array(p.rgb_shift, np.float32)
    src = np.clip(src, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(src, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + p.hsv_shift[0] * 10) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + p.hsv_shift[1] * 0.5), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * (1 + p.hsv_shift[2] * 0.3), 0, 255)
    src = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
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
    frames: list[np.ndarray], landmarks: list[np.ndarray], rng: np.random.Generator
) -> list[np.ndarray]:
    """A clip-level self-blend: one recipe for the clip, per-frame jitter, a mask that lags
    0-3 frames, and occasional frozen source segments (a live tool dropping frames)."""
    base = draw_blend(rng)
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


def to_input(crop160: np.ndarray, rng: np.random.Generator, jitter: bool) -> np.ndarray:
    """Stored crop (160 px) -> 112 px net input, with a small random shift when training."""
    if jitter:
        dx, dy = rng.integers(-4, 5, 2)
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        crop160 = cv2.warpAffine(crop160, m, (crop160.shape[1], crop160.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(crop160, (APPEARANCE_INPUT, APPEARANCE_INPUT), interpolation=cv2.INTER_AREA)


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


def perturb_landmarks(seq: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None = None) -> np.ndarray:
    """A geometry fake from a real (T, 478, 3) landmark sequence in pixels.

    One of: inner face misaligned against the contour (constant or drifting), inner jitter,
    inner face low-passed (over-smoothed), mouth delayed, mouth motion transplanted from
    ``donor``, frozen segment. Magnitudes are relative to face size and reach near zero.
    """
    out = seq.astype(np.float32).copy()
    t = len(out)
    size = float(np.median([face_size(f) for f in out])) if t else 1.0
    kind = int(rng.integers(0, 6))
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
    return out
