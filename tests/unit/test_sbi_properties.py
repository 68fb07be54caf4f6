"""monitor.training.sbi (`monitor sbi pack` / `fit`): promises of the module's docstrings and
docs/detector.md ("Long self-blend training") that a mutation audit found unchecked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from monitor.errors import InputError
from monitor.training import sbi
from tests.unit.test_training_sbi import write_pack
from tests.unit.test_training_synthesis import synthetic_face

GREEN, RED = (0, 255, 0), (255, 0, 0)


def _rewrite(path: Path, out: Path, **changes: object) -> Path:
    d = dict(np.load(path))
    d.update({k: v for k, v in changes.items() if k != "meta"})
    if "meta" in changes:
        d["meta"] = np.array(json.dumps(changes["meta"]))
    np.savez(out, **d)
    return out


def _coloured_pack(tmp_path: Path, **changes: object) -> Path:
    """write_pack's pack with clip 0 (fold 0) solid green and clip 1 (fold 1) solid red."""
    write_pack(tmp_path / "p.npz")
    d = np.load(tmp_path / "p.npz")
    n = len(d["fold"])
    crops = [np.full((160, 160, 3), GREEN if d["clip"][i] == 0 else RED, np.uint8) for i in range(n)]
    jpeg, offsets = sbi._encode(crops, 95)
    return _rewrite(tmp_path / "p.npz", tmp_path / "c.npz", jpeg=jpeg, offsets=offsets, **changes)


def _dominant(x: np.ndarray) -> np.ndarray:
    """Per image (N, H, W, 3k): index of the dominant channel of each frame, shape (N, k)."""
    n, h, w, c = x.shape
    mean = x.reshape(n, h * w, c // 3, 3).mean(axis=1)
    return mean.argmax(axis=2)


# --- the pack ---------------------------------------------------------------------------------


def test_pack_of_an_older_version_is_refused(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    meta = json.loads(str(np.load(tmp_path / "p.npz")["meta"]))
    meta["version"] = sbi.PACK_VERSION - 1
    old = _rewrite(tmp_path / "p.npz", tmp_path / "old.npz", meta=meta)
    with pytest.raises(InputError, match=f"pack version {sbi.PACK_VERSION - 1}, expected {sbi.PACK_VERSION}"):
        sbi.Pack(old)


def test_pack_input_size_may_be_the_stored_crops_side(tmp_path: Path) -> None:
    # "at most 160": 160 passes the size check (and then fails for want of clips, not of size).
    with pytest.raises(InputError, match="at least two groups"):
        sbi.build_pack([], [], tmp_path / "x.npz", tmp_path, input_size=160)
    with pytest.raises(InputError, match="stored crop's side"):
        sbi.build_pack([], [], tmp_path / "x.npz", tmp_path, input_size=31)


class _Clip:
    """A stand-in for train.Clip (identity equality, as build_pack's ``not in`` needs)."""

    def __init__(self, name: str, group: str, fake: bool, frames: int, code: int, pair: _Clip | None = None, method: str = "") -> None:
        img, lm = synthetic_face()
        crops = []
        for i in range(frames):
            c = np.roll(img, 3 * i, axis=1).copy()
            c[:16, :16] = code  # a marker that survives JPEG: which clip a row came from
            crops.append(c)
        lms = np.repeat(lm[None], frames, axis=0)
        for i in range(frames):
            lms[i, :, 0] += 3 * i
        self.record = SimpleNamespace(path=Path(f"/nonexistent/{name}.mp4"), rel=f"{name}.mp4", group=group, is_fake=fake,
                                      label="fake" if fake else "real", method=method)
        self.idx = np.arange(frames)
        self.faces = SimpleNamespace(crops=np.stack(crops), crop_landmarks=lms)
        self.pair = pair


def _fake_sources(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Clip]:
    a = _Clip("a", "gA", False, 4, 20)
    b = _Clip("b", "gB", False, 4, 60)
    c = _Clip("c", "gC", False, 4, 100)
    d = _Clip("d", "gD", False, 4, 140)
    v = _Clip("v", "gV", False, 10, 180)
    h = _Clip("h", "gH", False, 10, 220)
    clips = {k: x for k, x in zip("abcdvh", (a, b, c, d, v, h), strict=True)}
    # Training fakes, each paired with a genuine clip; "fa" is longer than its original.
    for name, orig, n in (("fa", a, 6), ("fb", b, 4), ("fc", c, 4), ("fd", d, 4)):
        # All in gA: fa beside its own original; of b, c and d (four groups dealt two to a
        # fold) exactly one shares gA's fold, so two of these fakes cross folds.
        group = "gA"
        clips[name] = _Clip(name, group, True, n, 250, pair=orig, method="m1")
    clips["fv"] = _Clip("fv", "gV", True, 10, 250, pair=v, method="m2")
    clips["fh"] = _Clip("fh", "gH", True, 10, 250, pair=h, method="m3")
    import monitor.training.datasets as datasets
    import monitor.training.train as train

    monkeypatch.setattr(datasets, "read_source", lambda spec: [x.record for x in clips.values()])
    monkeypatch.setattr(train, "load_clips", lambda records, cfg, analysis, workers=1: list(clips.values()))
    return clips


@pytest.fixture()
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, sbi.Pack, dict[str, _Clip]]:
    clips = _fake_sources(monkeypatch)
    summary = sbi.build_pack(["fake:src"], ["gH"], tmp_path / "b.npz", tmp_path, folds=2, validation=["gV"])
    return summary, sbi.Pack(tmp_path / "b.npz"), clips


def _marker(pack: sbi.Pack, i: int) -> int:
    """The clip marker of training row ``i`` (the nearest of the codes used)."""
    mean = sbi._decode(pack.jpeg, pack.offsets, i)[:16, :16].mean()
    return min((20, 60, 100, 140, 180, 220, 250), key=lambda c: abs(c - mean))


def test_pack_trains_only_on_genuine_faces_of_the_training_groups(built: tuple) -> None:
    summary, pack, clips = built
    assert pack.meta["folds"] == 2 and summary["folds"] == 2  # min(folds, groups), not more
    assert summary["train_clips"] == 4 and summary["train_frames"] == 16
    codes = {_marker(pack, i) for i in range(len(pack.fold))}
    assert codes == {20, 60, 100, 140}  # never gV's 180 or gH's 220, nor a fake's 250
    fold_of = pack.meta["fold_of_group"]
    assert set(fold_of) >= {"gA", "gB", "gC", "gD"} and "gV" not in fold_of and "gH" not in fold_of
    for i, f in enumerate(pack.fold):  # each row tagged with its group's fold
        group = ["gA", "gB", "gC", "gD"][int(pack.clip[i])]
        assert f == fold_of[group]


def test_pack_pairs_a_fake_only_with_a_frame_of_its_own_original_in_its_own_fold(built: tuple) -> None:
    _, pack, clips = built
    fold_of = pack.meta["fold_of_group"]
    fakes = ["fa", "fb", "fc", "fd"]  # in that order in the pack (fv and fh are not training fakes)
    assert pack.fake_fold.tolist() == [fold_of[clips[n].record.group] for n in fakes for _ in range(len(clips[n].idx))]
    crossing = [n for n in fakes if fold_of[clips[n].record.group] != fold_of[clips[n].pair.record.group]]
    staying = [n for n in fakes if n not in crossing]
    assert crossing and staying  # the split exercises both cases
    start = 0
    reals = ["a", "b", "c", "d"]
    for n in fakes:
        k = len(clips[n].idx)
        partners = pack.fake_partner[start : start + k]
        orig = reals.index(clips[n].pair.record.rel[0])
        if n in crossing:
            assert np.all(partners == -1), n  # an original in another fold would leak it
        else:
            n_orig = len(clips[n].pair.idx)
            first = int(np.flatnonzero(pack.clip == orig)[0])
            want = [first + i if i < n_orig else -1 for i in range(k)]
            assert partners.tolist() == want, n  # frame-aligned, never past the original's frames
        start += k
    paired = pack.fake_partner[pack.fake_partner >= 0]
    assert np.all(pack.fold[paired] == pack.fake_fold[pack.fake_partner >= 0])


def test_pack_evaluates_validation_apart_and_self_blends_only_held_out_people(built: tuple) -> None:
    summary, pack, _ = built
    by_rel = {c["rel"]: c for c in pack.meta["eval_clips"]}
    assert by_rel["v.mp4"]["validation"] and not by_rel["v.mp4"]["heldout"]
    assert by_rel["h.mp4"]["heldout"] and not by_rel["h.mp4"]["validation"]
    # One held-out genuine clip of 10 frames: 8 evaluation pairs, every other one self-blended
    # (two genuine frames and their two fakes each). gV's genuine clip is not a held-out person.
    assert summary["sbi_frames"] == 4 * 4 and pack.sbi_y.tolist() == [0, 0, 1, 1] * 4
    # Evaluation images come as pairs of consecutive (so different) analysed frames.
    ev = pack.eval_images().astype(int)
    k = list(by_rel).index("h.mp4")
    mine = ev[pack.eval_clip == k]
    assert len(mine) == 16
    assert all(np.abs(mine[2 * j] - mine[2 * j + 1]).mean() > 2 for j in range(8))


# --- batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("fold", [0, 1])
def test_a_fold_model_never_trains_on_its_own_folds_genuine_faces(tmp_path: Path, fold: int) -> None:
    path = _coloured_pack(tmp_path)
    x, y, _, _ = next(sbi._batches(path, fold=fold, pairs=24, seed=0, frames=1))
    other = 0 if fold == 1 else 1  # fold 0 is green (channel 1), fold 1 red (channel 0)
    want = 1 if other == 0 else 0
    assert np.all(_dominant(x[y == 0])[:, 0] == want)
    # ``--single`` (fold -1) draws from every face.
    x, y, _, _ = next(sbi._batches(path, fold=-1, pairs=24, seed=0, frames=1))
    assert set(_dominant(x[y == 0])[:, 0].tolist()) == {0, 1}


def test_two_frame_samples_never_span_two_clips(tmp_path: Path) -> None:
    path = _coloured_pack(tmp_path)
    x, y, _, _ = next(sbi._batches(path, fold=-1, pairs=64, seed=0, frames=2))
    dom = _dominant(x)
    assert x.shape[-1] == 6 and np.all(dom[:, 0] == dom[:, 1])


def test_a_partner_in_row_zero_counts_for_the_held_fold_check(tmp_path: Path) -> None:
    # A red fake of fold 1 paired with row 0, a face of fold 0: fold 0's model would see it.
    path = _coloured_pack(tmp_path, fake_partner=np.array([3, 3, 0, -1], np.int64))
    with pytest.raises(InputError, match="original lies in fold 0"):
        next(sbi._batches(path, fold=0, pairs=2, seed=0, frames=1, fake_share=0.5))


def test_a_fake_paired_with_row_zero_comes_with_that_original(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    d = np.load(tmp_path / "p.npz")
    img, _ = synthetic_face()
    crops = [np.full((160, 160, 3), GREEN, np.uint8) if i == 0 else img for i in range(len(d["fold"]))]
    jpeg, offsets = sbi._encode(crops, 95)
    path = _rewrite(tmp_path / "p.npz", tmp_path / "z.npz", jpeg=jpeg, offsets=offsets, fake_partner=np.array([0, 0, -1, -1], np.int64))
    x, y, _, _ = next(sbi._batches(path, fold=1, pairs=16, seed=0, frames=1, fake_share=1.0))
    assert np.all(_dominant(x[y == 0])[:, 0] == 1)  # every original is the green row 0


def test_two_frame_fakes_are_blended_as_a_pair(pack_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = sbi.blend_pair
    monkeypatch.setattr(sbi, "blend_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    sbi.make_batch(sbi.Pack(pack_path), np.arange(5), 3, np.random.default_rng(0), 2)
    assert len(calls) == 3


@pytest.fixture()
def pack_path(tmp_path: Path) -> Path:
    write_pack(tmp_path / "p.npz")
    return tmp_path / "p.npz"


# --- eval_report ----------------------------------------------------------------------------


def _report_pack(clips: list[dict], per_clip: int = 2, sbi_y: list[int] | None = None) -> SimpleNamespace:
    return SimpleNamespace(meta={"eval_clips": clips}, eval_clip=np.repeat(np.arange(len(clips)), per_clip), sbi_y=np.array(sbi_y or [0, 1]))


def test_clip_score_is_the_mean_sample_logit() -> None:
    clips = [{"rel": f"{k}.mp4", "label": lab, "group": f"g{k}", "heldout": True, "pair": None} for k, lab in enumerate(("real", "fake"))]
    # genuine: mean 2 (max 4); fake: mean 3 (max 3.5). By mean the fake ranks above; by max not.
    report = sbi.eval_report(_report_pack(clips), np.array([0.0, 4.0, 2.5, 3.5]), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["heldout_clip_auc"] == 1.0


def test_two_frame_report_reads_one_label_per_sample() -> None:
    clips = [{"rel": "0.mp4", "label": "real", "group": "g", "heldout": True, "pair": None}]
    pack = _report_pack(clips, per_clip=4, sbi_y=[0, 0, 0, 0, 1, 1, 1, 1])  # 4 samples of two frames
    report = sbi.eval_report(pack, np.zeros(2), np.array([0.0, 0.1, 0.9, 1.0]), frames=2)  # type: ignore[arg-type]
    assert report["sbi_heldout_frame_auc"] == 1.0


def test_a_tie_with_its_original_is_not_ranked_above_it() -> None:
    clips = [
        {"rel": f"deepfacelive_{kind}_cropped/A_{kind}.mp4", "label": "fake" if kind == "swap" else "real", "group": "dfl:A",
         "heldout": True, "pair": "deepfacelive_orig_cropped/A_orig.mp4" if kind == "swap" else None, "method": "dfl"}
        for kind in ("swap", "orig")
    ]
    report = sbi.eval_report(_report_pack(clips), np.full(4, 1.5), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["live_swaps_heldout_pairs_ranked"] == "0/1" and report["heldout_pairs_ranked"] == "0/1"


def _with_validation_live_swaps() -> list[dict]:
    # Held out: H swap (score 5) and original (4). Validation, also live swaps: V swap 0, original 3.
    # In-sample (neither): T swap (1, method "seen") and original (2).
    return [
        {"rel": f"deepfacelive_{kind}_cropped/{who}_{kind}.mp4", "label": "fake" if kind == "swap" else "real", "group": who,
         "heldout": who == "H", "validation": who == "V", "method": ("seen" if who == "T" else "m") if kind == "swap" else "original",
         "pair": f"deepfacelive_orig_cropped/{who}_orig.mp4" if kind == "swap" else None}
        for who in ("H", "V", "T") for kind in ("swap", "orig")
    ]


def test_validation_fakes_count_in_no_unseen_figure() -> None:
    pack = _report_pack(_with_validation_live_swaps())
    logits = np.repeat([5.0, 4.0, 0.0, 3.0, 1.0, 2.0], 2)
    report = sbi.eval_report(pack, logits, np.array([0.0, 1.0]))  # type: ignore[arg-type]
    # Live swaps outside validation: H (5) and T (1) against H's, T's originals (4, 2): 2 of 4.
    assert report["live_swaps_all_auc"] == 0.5
    seen = sbi.eval_report(pack, logits, np.array([0.0, 1.0]), fakes_seen=True)  # type: ignore[arg-type]
    # Fakes seen: only held-out fakes are unseen (H's 5 against H's original 4).
    assert seen["all_unseen_fakes_vs_heldout_genuine_auc"] == 1.0


def test_per_method_auc_is_over_held_out_fakes_only() -> None:
    report = sbi.eval_report(_report_pack(_with_validation_live_swaps()), np.repeat([5.0, 4.0, 0.0, 3.0, 1.0, 2.0], 2), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["heldout_method_auc"] == {"m": 1.0}


# --- fit ------------------------------------------------------------------------------------


def _scripted(monkeypatch: pytest.MonkeyPatch, values: list[float | None]) -> None:
    it = iter(values)
    monkeypatch.setattr(sbi, "eval_report", lambda *a, **k: {"validation_clip_auc": next(it)})


def test_a_nan_validation_auc_is_never_selected(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, [math.nan, 0.6, 0.7])
    summary = sbi.fit(pack_path, tmp_path / "out", steps=3, widths=(8,), pairs=2, workers=0, eval_every=1)
    assert summary["selected"]["step"] == 3


def test_an_earlier_runs_best_checkpoint_is_removed(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted(monkeypatch, [0.7])
    sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=1)
    assert (tmp_path / "out/best.pt").exists()
    _scripted(monkeypatch, [None])
    summary = sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=1)
    assert "selected" not in summary and not (tmp_path / "out/best.pt").exists()


def test_the_checkpoint_is_judged_by_the_first_widths_models(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # eval_report runs once per width (8 then 16) at each evaluation.
    _scripted(monkeypatch, [0.9, 0.1, 0.5, 0.99])
    summary = sbi.fit(pack_path, tmp_path / "out", steps=2, widths=(8, 16), pairs=2, workers=0, eval_every=1)
    assert summary["selected"]["step"] == 1


class _Clock:
    """time.monotonic for sbi: each call advances one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def _record_lr(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    import torch

    lrs: list[float] = []

    class Recorder(torch.optim.AdamW):
        def step(self, *a, **k):  # type: ignore[no-untyped-def]
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", Recorder)
    return lrs


def test_a_time_limit_ends_the_run_and_the_cosine_still_anneals(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lrs = _record_lr(monkeypatch)
    clock = _Clock()
    monkeypatch.setattr(sbi, "time", SimpleNamespace(monotonic=clock.monotonic))
    # 200 planned steps, a 60 s limit on a clock that ticks once per call: the time limit ends it.
    summary = sbi.fit(pack_path, tmp_path / "out", steps=200, widths=(8,), pairs=1, workers=0, eval_every=0, lr=1e-3, time_limit_s=60.0, single=True)
    steps = summary["steps"]
    assert 5 <= steps < 100 and len(lrs) == steps
    peak = max(lrs)
    assert peak > 0.5e-3  # warmed up
    after = lrs[lrs.index(peak):]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))  # annealing
    assert lrs[-1] < 0.1 * peak  # close to the cycle's end


def test_the_schedule_is_one_cosine_cycle_over_the_steps(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lrs = _record_lr(monkeypatch)
    sbi.fit(pack_path, tmp_path / "out", steps=40, widths=(8,), pairs=1, workers=0, eval_every=0, lr=1e-3, single=True)
    want = [1e-3 * (0.5 * (1 + math.cos(math.pi * s / 40)) if s / 40 > 0.03 else (s / 40) / 0.03) for s in range(40)]
    np.testing.assert_allclose(lrs, want, rtol=1e-9, atol=1e-12)


def test_fit_refuses_up_front_a_fake_share_on_a_pack_without_fakes(pack_path: Path, tmp_path: Path) -> None:
    empty = _rewrite(pack_path, tmp_path / "nofakes.npz", fake_jpeg=np.zeros(0, np.uint8), fake_offsets=np.zeros(1, np.int64),
                     fake_fold=np.zeros(0, np.int8), fake_partner=np.zeros(0, np.int64))
    with pytest.raises(InputError, match="this pack has none"):
        sbi.fit(empty, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, fake_share=0.5)


def test_a_fake_share_of_one_is_allowed(pack_path: Path, tmp_path: Path) -> None:
    summary = sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=0, fake_share=1.0, single=True)
    assert summary["steps"] == 1


def test_a_single_model_is_refused_as_fold_models(pack_path: Path, tmp_path: Path) -> None:
    sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=0, single=True)
    with pytest.raises(InputError, match="single model"):
        sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})


def test_the_cnn_reads_only_the_services_input_size(pack_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only --arch movenet"):
        sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, input_size=96)


def test_the_evaluation_scores_the_mean_of_the_fold_models(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    got = {}
    monkeypatch.setattr(sbi, "eval_report", lambda pack, ev, sb, *a, **k: got.update(ev=ev) or {"validation_clip_auc": None})
    sbi.fit(pack_path, tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=0)
    nets, _ = sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})
    x = torch.from_numpy(sbi.Pack(pack_path).eval_images()).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want = np.mean([n(x)[0].numpy() for n in nets], axis=0)
    np.testing.assert_allclose(got["ev"], want, rtol=1e-4, atol=1e-5)


def test_every_frame_of_a_sample_and_its_blend_share_one_crop_jitter(pack_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = synthetic_face()
    d = np.load(pack_path)
    jpeg, offsets = sbi._encode([img] * len(d["fold"]), 95)  # every row the same face
    same = _rewrite(pack_path, tmp_path / "same.npz", jpeg=jpeg, offsets=offsets)
    monkeypatch.setattr(sbi.syn, "apply_channel", lambda x, channel, rng: x)  # no channel noise
    x, y, _, _ = sbi.make_batch(sbi.Pack(same), np.arange(5), 6, np.random.default_rng(0), 2)
    real = x[y == 0]
    assert np.array_equal(real[..., :3], real[..., 3:])  # identical frames, identical jitter
    # A genuine face and its blend differ only inside the blend mask: the corners agree.
    x, y, _, _ = sbi.make_batch(sbi.Pack(same), np.arange(5), 6, np.random.default_rng(1), 1)
    assert np.array_equal(x[0::2, :8, :8], x[1::2, :8, :8])


def test_make_batch_refuses_real_fakes_in_two_frame_samples(pack_path: Path) -> None:
    pack = sbi.Pack(pack_path)
    with pytest.raises(ValueError, match="one frame at a time"):
        sbi.make_batch(pack, np.arange(5), 2, np.random.default_rng(0), 2, fake_rows=np.array([2, 3]), fake_share=0.5)


# --- found by the audit: a pack crashed with a bare KeyError here


def test_a_training_fake_made_from_a_held_out_face_does_not_crash_the_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = _fake_sources(monkeypatch)
    # A manifest `group` column can put a fake in a training group and its original in a held-out one.
    clips["fx"] = _Clip("fx", "gA", True, 4, 250, pair=clips["h"])
    sbi.build_pack(["fake:src"], ["gH"], tmp_path / "b.npz", tmp_path, folds=2, validation=["gV"])
    pack = sbi.Pack(tmp_path / "b.npz")
    assert pack.fake_partner[-4:].tolist() == [-1] * 4  # never paired with a face outside training


def test_sadtalker_counts_only_when_unseen() -> None:
    # Validation fakes count in no held-out or "unseen" figure (docs/detector.md), and with
    # --fake-share the trained-on ones neither: the SadTalker figure counted both (found by the
    # audit; dev-v1 holds SadTalker out, so its numbers were unaffected).
    def report(heldout: bool, validation: bool, fakes_seen: bool) -> float | None:
        clips = [
            {"rel": "h.mp4", "label": "real", "group": "gH", "heldout": True, "validation": False, "pair": None},
            {"rel": "s.mp4", "label": "fake", "group": "sadtalker_fake", "heldout": heldout, "validation": validation, "pair": None},
        ]
        pack = SimpleNamespace(meta={"eval_clips": clips}, eval_clip=np.array([0, 1]), sbi_y=np.array([0, 1]))
        return sbi.eval_report(pack, np.array([0.0, 1.0]), np.array([0.0, 1.0]), fakes_seen=fakes_seen)["sadtalker_vs_heldout_genuine_auc"]

    assert report(heldout=True, validation=False, fakes_seen=True) == 1.0
    assert report(heldout=False, validation=False, fakes_seen=False) == 1.0  # self-blends only: unseen
    assert report(heldout=False, validation=True, fakes_seen=False) is None
    assert report(heldout=False, validation=False, fakes_seen=True) is None
