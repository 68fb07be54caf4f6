"""Unit tests for the long self-blended training (monitor.training.sbi): pack format, batches,
two-frame blends, the AUC and the fold-split check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.training import sbi
from monitor.training import synthesis as syn
from tests.unit.test_training_synthesis import synthetic_face


def write_pack(path: Path, frames: int = 6, clips: int = 2) -> None:
    """A pack of ``clips`` clips x ``frames`` synthetic faces that drift right frame by frame,
    plus four training fakes: solid blue in fold 0, whose original is row 3 (made solid green),
    and solid red in fold 1, without originals."""
    crops, lms, clip_ids = [], [], []
    for k in range(clips):
        for i in range(frames):
            img, lm = synthetic_face()
            img = np.roll(img, 2 * i + k, axis=1)
            lm = lm.copy()
            lm[:, 0] += 2 * i + k
            crops.append(img)
            lms.append(lm[sbi.MASK_POINTS, :2])
            clip_ids.append(k)
    crops[3] = np.full_like(crops[3], (0, 255, 0))
    fakes = [np.full_like(crops[0], colour) for colour in ((0, 0, 255), (0, 0, 255), (255, 0, 0), (255, 0, 0))]
    fk_jpeg, fk_offsets = sbi._encode(fakes, 95)
    jpeg, offsets = sbi._encode(crops, 95)
    small = [syn.to_input(c, np.random.default_rng(0), False) for c in crops]
    ev_jpeg, ev_offsets = sbi._encode(small, 95)
    meta = {
        "version": sbi.PACK_VERSION, "folds": 2, "fold_of_group": {"g0": 0, "g1": 1}, "sources": [], "holdout": [], "seed": 0,
        "train_frames": len(crops),
        "eval_clips": [{"rel": f"c{k}.mp4", "label": "real" if k == 0 else "fake", "group": f"g{k}", "method": "", "heldout": True, "pair": None} for k in range(clips)],
    }
    np.savez(
        path, jpeg=jpeg, offsets=offsets, lm=np.array(lms, np.float32), fold=np.array(clip_ids, np.int8) % 2,
        clip=np.array(clip_ids, np.int32), eval_jpeg=ev_jpeg, eval_offsets=ev_offsets, eval_clip=np.array(clip_ids, np.int32),
        sbi_jpeg=ev_jpeg, sbi_offsets=ev_offsets, sbi_y=np.array([0, 0, 1, 1] * (len(crops) // 4), np.int8), meta=np.array(json.dumps(meta)),
        fake_jpeg=fk_jpeg, fake_offsets=fk_offsets, fake_fold=np.array([0, 0, 1, 1], np.int8), fake_partner=np.array([3, 3, -1, -1], np.int64),
    )


@pytest.fixture()
def pack(tmp_path: Path) -> sbi.Pack:
    write_pack(tmp_path / "p.npz")
    return sbi.Pack(tmp_path / "p.npz")


def test_pack_round_trips_faces_and_mask_landmarks(pack: sbi.Pack) -> None:
    img, lm = synthetic_face()
    got = sbi._decode(pack.jpeg, pack.offsets, 0)
    assert got.shape == img.shape
    # JPEG keeps the low frequencies of this noise texture: compare 8x8 block means.
    def blocks(a: np.ndarray) -> np.ndarray:
        return a.astype(float).reshape(20, 8, 20, 8, 3).mean(axis=(1, 3))

    assert np.abs(blocks(got) - blocks(img)).mean() < 4
    full = sbi._landmarks(pack, 0)
    assert full.shape == (478, 2)
    np.testing.assert_allclose(full[syn.FACE_OVAL], lm[syn.FACE_OVAL, :2], atol=1e-4)
    assert pack.eval_images().shape == (12, 112, 112, 3)


def test_pack_version_is_checked(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    d = dict(np.load(tmp_path / "p.npz"))
    meta = json.loads(str(d["meta"]))
    meta["version"] = 99
    d["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **d)
    with pytest.raises(ValueError, match="pack version 99"):
        sbi.Pack(tmp_path / "old.npz")


@pytest.mark.parametrize("content", [b"not a pack at all", None])
def test_a_file_that_is_not_a_pack_is_an_input_error(tmp_path: Path, content: bytes | None) -> None:
    from monitor.errors import InputError

    if content is None:
        np.savez(tmp_path / "x.npz", other=np.zeros(3))  # an .npz, but not ours
    else:
        (tmp_path / "x.npz").write_bytes(content)
    with pytest.raises(InputError, match="not a pack written by `monitor sbi pack`"):
        sbi.Pack(tmp_path / "x.npz")


@pytest.mark.parametrize("frames", [1, 2])
def test_batches_pair_each_genuine_face_with_its_blend(pack: sbi.Pack, frames: int) -> None:
    rows = np.arange(0, 5)  # clip 0, every row followed by a frame of the same clip
    x, y, bound, has = sbi.make_batch(pack, rows, 4, np.random.default_rng(0), frames)
    assert x.shape == (8, 112, 112, 3 * frames) and x.dtype == np.uint8
    assert y.tolist() == [0.0, 1.0] * 4
    assert bound.shape == (8, 28, 28) and has.tolist() == [1.0] * 8
    assert np.all(bound[y == 0] == 0) and all(b.max() > 0 for b in bound[y == 1])
    # A real and its blend share crop, channel and flip: they differ inside the face only.
    diff = np.abs(x[0::2].astype(int) - x[1::2].astype(int)).mean(axis=(0, 3))
    assert diff[48:64, 48:64].mean() > diff[:6, :6].mean()


def test_real_fakes_come_with_their_original_and_never_from_the_held_fold(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    batches = sbi._batches(tmp_path / "p.npz", fold=1, pairs=8, seed=0, frames=1, fake_share=1.0)
    x, y, bound, has = next(batches)
    assert y.tolist() == [0.0, 1.0] * 8
    mean = x.reshape(16, -1, 3).mean(axis=1)  # RGB
    # Fold 1 is held, so every fake is a blue one, and their original is the green row 3.
    assert np.all(mean[1::2, 2] > 2 * mean[1::2, 0]) and np.all(mean[1::2, 2] > 2 * mean[1::2, 1])
    assert np.all(mean[0::2, 1] > 2 * mean[0::2, 0]) and np.all(mean[0::2, 1] > 2 * mean[0::2, 2])
    # Real fakes have no blend boundary to learn; genuine faces learn an empty one.
    assert has.tolist() == [1.0, 0.0] * 8 and not bound.any()
    # From fold 0's complement: the red fakes, unpaired, so each gets a random genuine face of
    # fold 1 (never the green row 3, which is in the held fold 0).
    x, y, _, _ = next(sbi._batches(tmp_path / "p.npz", fold=0, pairs=16, seed=0, frames=1, fake_share=1.0))
    mean = x.reshape(32, -1, 3).mean(axis=1)
    std = x.reshape(32, -1, 3).std(axis=1).mean(axis=1)
    assert np.all(mean[1::2, 0] > 2 * mean[1::2, 2])
    assert np.all(std[0::2] > 3 * std[1::2])  # textured synthetic faces, not a solid colour


def test_real_fakes_need_a_consistent_pack_that_has_them(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    d = dict(np.load(tmp_path / "p.npz"))

    def batch_from(**changes: np.ndarray) -> None:
        np.savez(tmp_path / "q.npz", **{k: v for k, v in {**d, **changes}.items() if v is not None})
        next(sbi._batches(tmp_path / "q.npz", fold=0, pairs=2, seed=0, frames=1, fake_share=0.5))

    with pytest.raises(ValueError, match="no training fakes outside fold 0"):
        batch_from(fake_fold=np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="original lies in fold 0"):  # a red fake paired with the green row 3
        batch_from(fake_partner=np.array([3, 3, 3, -1], np.int64))
    with pytest.raises(ValueError, match="rebuild it"):  # a pack from before fakes were packed
        batch_from(fake_jpeg=None, fake_offsets=None, fake_fold=None, fake_partner=None)


def test_eval_report_ranks_each_held_out_swap_against_its_own_original() -> None:
    from types import SimpleNamespace

    clips = [
        {"rel": f"deepfacelive_{kind}_cropped/{who}_{kind}.mp4", "label": "fake" if kind == "swap" else "real", "group": f"dfl:{who}",
         "heldout": held, "pair": f"deepfacelive_orig_cropped/{who}_orig.mp4" if kind == "swap" else None}
        for who, held in (("A", True), ("B", True), ("C", True), ("D", False)) for kind in ("swap", "orig")
    ]
    pack = SimpleNamespace(meta={"eval_clips": clips}, eval_clip=np.repeat(np.arange(8), 2), sbi_y=np.array([0, 1]))
    # Swap vs its original: A 2 > 1, B 0 < 5, C 3 > 0; D (in-sample) 4 > 2.
    logits = np.repeat([2.0, 1.0, 0.0, 5.0, 3.0, 0.0, 4.0, 2.0], 2)
    report = sbi.eval_report(pack, logits, np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["live_swaps_heldout_pairs_ranked"] == "2/3"
    assert report["live_swaps_heldout_auc"] == 0.5 and report["live_swaps_all_auc"] == 9 / 16
    seen = sbi.eval_report(pack, logits, np.array([0.0, 1.0]), fakes_seen=True)  # type: ignore[arg-type]
    assert seen["live_swaps_all_auc"] is None
    assert seen["all_unseen_fakes_vs_heldout_genuine_auc"] == 0.5 and report["all_unseen_fakes_vs_heldout_genuine_auc"] == 6.5 / 12


def test_eval_report_scores_each_method_and_pair_of_any_dataset() -> None:
    # A pack of FF++ held out: the report keyed on data/dev's folder names gave no per-method
    # AUC and ranked 0/0 pairs, though FF++ names each fake's method and original.
    from types import SimpleNamespace

    clips = [{"rel": f"original_sequences/youtube/c23/videos/{v}.mp4", "label": "real", "group": f"ffpp:{v}", "method": "original",
              "heldout": True, "pair": None} for v in ("000", "001")]
    clips += [{"rel": f"manipulated_sequences/{m}/c23/videos/{v}_x.mp4", "label": "fake", "group": f"ffpp:{v}", "method": m,
               "heldout": True, "pair": f"original_sequences/youtube/c23/videos/{v}.mp4"}
              for m in ("Deepfakes", "FaceSwap") for v in ("000", "001")]
    pack = SimpleNamespace(meta={"eval_clips": clips}, eval_clip=np.repeat(np.arange(6), 2), sbi_y=np.array([0, 1]))
    # genuine 000: 1, 001: 3; Deepfakes 2, 4 (each above its original); FaceSwap 0, 2 (each below).
    logits = np.repeat([1.0, 3.0, 2.0, 4.0, 0.0, 2.0], 2)
    report = sbi.eval_report(pack, logits, np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["heldout_method_auc"] == {"Deepfakes": 0.75, "FaceSwap": 0.25}
    assert report["heldout_pairs_ranked"] == "2/4" and report["live_swaps_heldout_pairs_ranked"] == "0/0"


def test_eval_report_scores_the_validation_groups_apart_from_the_held_out_ones() -> None:
    from types import SimpleNamespace

    # Validation: V swap 3 above its original 1, W swap 0 below its original 2. Held out: H swap 5, original 4.
    clips = [
        {"rel": f"{who}_{kind}.mp4", "label": "fake" if kind == "swap" else "real", "group": who, "heldout": who == "H",
         "validation": who != "H", "pair": f"{who}_orig.mp4" if kind == "swap" else None}
        for who in ("V", "W", "H") for kind in ("swap", "orig")
    ]
    pack = SimpleNamespace(meta={"eval_clips": clips}, eval_clip=np.repeat(np.arange(6), 2), sbi_y=np.array([0, 1]))
    report = sbi.eval_report(pack, np.repeat([3.0, 1.0, 0.0, 2.0, 5.0, 4.0], 2), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["validation_clip_auc"] == 0.5 and report["validation_pairs_ranked"] == "1/2"
    assert report["heldout_clip_auc"] == 1.0 and report["heldout_pairs_ranked"] == "1/1"
    # The validation fakes pick the checkpoint: they are not counted as unseen (only H's swap is).
    assert report["all_unseen_fakes_vs_heldout_genuine_auc"] == 1.0
    # A pack written before validation groups existed has none.
    for c in clips:
        del c["validation"]
    old = sbi.eval_report(pack, np.repeat([3.0, 1.0, 0.0, 2.0, 5.0, 4.0], 2), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert old["validation_clip_auc"] is None and old["validation_pairs_ranked"] == "0/0"


def test_fit_keeps_the_checkpoint_best_on_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pack(tmp_path / "p.npz")
    scripted = iter([0.6, 0.8, 0.8, 0.7])  # steps 1-4: the first 0.8 (step 2) is kept
    monkeypatch.setattr(sbi, "eval_report", lambda *a, **k: {"validation_clip_auc": next(scripted)})
    summary = sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=4, widths=(8,), pairs=2, workers=0, eval_every=1)
    assert summary["selected"]["step"] == 2 and summary["final"]["step"] == 4
    _, best = sbi.load_fold_models(tmp_path / "out/best.pt", 8, {"g0": 0, "g1": 1})
    _, last = sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})
    assert best["steps"] == 2 and last["steps"] == 4
    assert json.loads((tmp_path / "out/results.json").read_text())["summary"]["selected"]["step"] == 2
    # Without validation groups nothing is selected and no best.pt is written.
    monkeypatch.setattr(sbi, "eval_report", lambda *a, **k: {"validation_clip_auc": None})
    summary = sbi.fit(tmp_path / "p.npz", tmp_path / "none", steps=2, widths=(8,), pairs=2, workers=0, eval_every=1)
    assert "selected" not in summary and not (tmp_path / "none/best.pt").exists()


def test_eval_report_of_a_real_only_pack_has_nothing_to_rank() -> None:
    from types import SimpleNamespace

    # `monitor sbi pack --source real:DIR` without a holdout: no evaluation clip at all.
    pack = SimpleNamespace(meta={"eval_clips": []}, eval_clip=np.zeros(0, np.int32), sbi_y=np.array([0, 1]))
    report = sbi.eval_report(pack, np.zeros(0, np.float32), np.array([0.0, 1.0]))  # type: ignore[arg-type]
    assert report["heldout_clip_auc"] is None and report["live_swaps_heldout_pairs_ranked"] == "0/0"
    assert report["sbi_heldout_frame_auc"] == 1.0


def test_fit_keeps_its_weights_when_the_evaluation_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pack(tmp_path / "p.npz")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("evaluation bug")

    monkeypatch.setattr(sbi, "eval_report", broken)
    with pytest.raises(RuntimeError, match="evaluation bug"):
        sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=2, widths=(8,), pairs=2, workers=0, eval_every=0)
    nets, meta = sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})
    assert len(nets) == 2 and meta["steps"] == 2


def test_two_frame_samples_follow_the_face(pack: sbi.Pack) -> None:
    """The second frame of a sample is the next frame of the clip (the face moved), and both
    frames got the same crop jitter, so genuine motion is the only difference."""
    x, *_ = sbi.make_batch(pack, np.array([0]), 1, np.random.default_rng(3), 2)
    real = x[0].astype(int)
    assert np.abs(real[..., :3] - real[..., 3:]).mean() > 2  # the texture moved by 2 px


def test_pair_blend_lags_or_freezes_like_a_live_tool() -> None:
    img, lm = synthetic_face()
    moved = np.roll(img, 6, axis=1)
    lm2 = lm.copy()
    lm2[:, 0] += 6
    outcomes, lagged, frozen = set(), 0, 0
    for seed in range(60):
        (fa, fb), mask = sbi.blend_pair([img, moved], [lm[:, :2], lm2[:, :2]], np.random.default_rng(seed))
        assert fa.shape == img.shape and fb.shape == img.shape and mask.shape == img.shape[:2]
        outside = mask < 1e-4
        assert np.abs(fb[outside].astype(int) - moved[outside].astype(int)).max() <= 1
        outcomes.add(round(float(mask.max()), 3))
        # Lag: the second frame's mask sits where the face was (x ~ 80), not where it is (~ 86).
        xs = np.arange(img.shape[1])
        centre_x = float((mask.sum(axis=0) * xs).sum() / mask.sum())
        lagged += centre_x < 83
        # Freeze: the second frame shows the first frame's pasted face over the moved head.
        m = mask[..., None]
        frozen += np.array_equal(fb, np.clip(m * fa + (1 - m) * moved + 0.5, 0, 255).astype(np.uint8))
    assert len(outcomes) > 3  # recipes vary
    assert 0 < lagged < 60 and 0 < frozen < 60  # both happen, neither always


def test_auc_matches_definition() -> None:
    assert sbi.auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert sbi.auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert sbi.auc([0, 1], [0.5, 0.5]) == 0.5
    assert sbi.auc([0, 0, 1], [0.1, 0.4, 0.3]) == 0.5
    assert sbi.auc([1, 1], [0.1, 0.2]) is None


def test_call_codecs_reach_the_batches_and_the_fit_metadata(pack: sbi.Pack, tmp_path: Path) -> None:
    rows = np.arange(0, 5)
    plain = sbi.make_batch(pack, rows, 6, np.random.default_rng(1), 1)[0]
    coded = sbi.make_batch(pack, rows, 6, np.random.default_rng(1), 1, call_codecs=True)[0]
    assert plain.shape == coded.shape and not np.array_equal(plain, coded)
    write_pack(tmp_path / "p.npz")
    sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=1, widths=(8,), pairs=2, workers=0, eval_every=0, call_codecs=True)
    _, meta = sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})
    assert meta["call_codecs"] is True


def test_fit_writes_fold_models_that_load_only_for_the_same_split(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    summary = sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=2, widths=(8,), pairs=2, workers=0, eval_every=0)
    assert summary["steps"] == 2
    results = json.loads((tmp_path / "out/results.json").read_text())
    final = results["history"][-1]["w8"]
    assert set(final) >= {"sbi_heldout_frame_auc", "heldout_clip_auc", "live_swaps_heldout_auc"}
    nets, meta = sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 0, "g1": 1})
    assert len(nets) == 2 and meta["steps"] == 2
    with pytest.raises(ValueError, match="another fold split"):
        sbi.load_fold_models(tmp_path / "out/models.pt", 8, {"g0": 1, "g1": 0})
    with pytest.raises(ValueError, match="no model w16-fold0"):
        sbi.load_fold_models(tmp_path / "out/models.pt", 16, {"g0": 0, "g1": 1})
    assert final["live_swaps_heldout_pairs_ranked"] == "0/0"


def test_fit_fine_tunes_the_face_landmark_trunk_as_one_model(tmp_path: Path) -> None:
    write_pack(tmp_path / "p.npz")
    import torch

    from monitor.training.tflite_torch import TFLiteNet, face_landmark_path

    pretrained = TFLiteNet(face_landmark_path()).state_dict()
    trunks = {}
    for scale in (0.0, 0.1):
        out = tmp_path / f"out{scale}"
        summary = sbi.fit(tmp_path / "p.npz", out, steps=2, pairs=2, workers=0, eval_every=0, arch="facemesh", single=True, fake_share=0.5, trunk_lr_scale=scale)
        assert summary["steps"] == 2 and summary["faces_seen"] == 8
        blob = torch.load(out / "models.pt", weights_only=True)
        assert list(blob["state"]) == ["w0-fold-1"] and blob["meta"]["arch"] == "facemesh"
        trunks[scale] = {k.removeprefix("trunk."): v for k, v in blob["state"]["w0-fold-1"].items() if k.startswith("trunk.")}
        assert summary["final"]["w0"]["live_swaps_all_auc"] is None  # trained on fakes: not reported as unseen
    assert trunks[0.0].keys() == pretrained.keys()
    assert all(torch.equal(trunks[0.0][k], pretrained[k]) for k in pretrained)  # trunk frozen at scale 0
    assert not all(torch.equal(trunks[0.1][k], pretrained[k]) for k in pretrained)
    with pytest.raises(ValueError, match="cnn fold models"):
        sbi.load_fold_models(tmp_path / "out0.1/models.pt", 0, {"g0": 0, "g1": 1})
    with pytest.raises(ValueError, match="one frame at a time"):
        sbi.fit(tmp_path / "p.npz", tmp_path / "bad", steps=1, pairs=2, workers=0, fake_share=0.5, frames=2)


def test_fit_fine_tunes_a_tfjs_trunk_and_needs_its_model_file(tmp_path: Path) -> None:
    import torch

    from tests.support.tfjs_graph import write_model

    write_pack(tmp_path / "p.npz")
    (tmp_path / "trunk").mkdir()
    write_model(tmp_path / "trunk", np.random.default_rng(0))
    model = tmp_path / "trunk/model.json"
    summary = sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=2, pairs=2, workers=0, eval_every=0, arch="movenet", single=True, trunk_model=model)
    assert summary["steps"] == 2 and summary["faces_seen"] == 8
    blob = torch.load(tmp_path / "out/models.pt", weights_only=True)
    assert blob["meta"]["arch"] == "movenet" and blob["meta"]["trunk_model"] == str(model)
    assert any(k.startswith("trunk.") for k in blob["state"]["w0-fold-1"])
    for missing in (None, tmp_path / "nope.json"):
        with pytest.raises(ValueError, match="needs --trunk-model"):
            sbi.fit(tmp_path / "p.npz", tmp_path / "bad", steps=1, pairs=2, workers=0, arch="movenet", trunk_model=missing)


def test_faces_reach_the_net_at_the_input_size_asked_for(pack: sbi.Pack, tmp_path: Path) -> None:
    """`--input-size`: training faces are resized from the stored crop, evaluation images from
    the pack's size (area down, bilinear up), and a pack without the key is at 112 px."""
    rng = np.random.default_rng(0)
    assert pack.input_size == 112 and pack.eval_images().shape[1:] == (112, 112, 3)
    for size in (96, 160, 224):
        x, _, bound, _ = sbi.make_batch(pack, np.arange(len(pack.fold)), 2, rng, input_size=size)
        assert x.shape == (4, size, size, 3) and bound.shape == (4, 28, 28)
        assert pack.eval_images(size).shape[1:] == (size, size, 3)
    crop = np.random.default_rng(1).integers(0, 256, (160, 160, 3), np.uint8)
    assert syn.resize_square(crop, 160) is crop
    assert np.array_equal(syn.to_input(crop, rng, False), syn.to_input(crop, rng, False, 112))
    # Down: area averaging (as the service's crop), so 1 px stripes blur to grey rather than alias.
    stripes = np.zeros((160, 160, 3), np.uint8)
    stripes[:, ::2] = 255
    assert np.ptp(syn.to_input(stripes, rng, False)[:, 2:-2].astype(int)) < 160  # area: 102, bilinear: 219
    # Up: bilinear, so a ramp stays an even ramp (area interpolation zooms like nearest: steps).
    ramp = np.tile(np.arange(160, dtype=np.float32)[None, :, None], (160, 1, 3))
    step = np.diff(syn.resize_square(ramp, 224)[0, 2:-2, 0])
    assert np.allclose(step, 160 / 224, atol=1e-3)


def test_only_a_pretrained_trunk_reads_another_input_size(tmp_path: Path) -> None:
    import torch

    from tests.support.tfjs_graph import write_model

    with pytest.raises(ValueError, match="stored crop's side"):  # nothing is upscaled into a pack
        sbi.build_pack([], [], tmp_path / "x.npz", tmp_path, input_size=161)
    write_pack(tmp_path / "p.npz")
    with pytest.raises(ValueError, match="only --arch movenet"):
        sbi.fit(tmp_path / "p.npz", tmp_path / "bad", steps=1, pairs=2, workers=0, input_size=160)
    (tmp_path / "trunk").mkdir()
    write_model(tmp_path / "trunk", np.random.default_rng(0))
    with pytest.raises(ValueError, match="within 32..512"):
        sbi.fit(tmp_path / "p.npz", tmp_path / "bad", steps=1, pairs=2, workers=0, arch="movenet", trunk_model=tmp_path / "trunk/model.json", input_size=4096)
    summary = sbi.fit(tmp_path / "p.npz", tmp_path / "out", steps=2, pairs=2, workers=0, eval_every=0, arch="movenet", single=True, trunk_model=tmp_path / "trunk/model.json", input_size=160)
    assert summary["steps"] == 2
    assert torch.load(tmp_path / "out/models.pt", weights_only=True)["meta"]["input_size"] == 160


def test_evaluation_in_chunks_scores_every_image_as_one_call_would() -> None:
    import torch

    from monitor.detect.nets import AppearanceNet

    # The evaluation runs a few hundred images per call (fewer at larger sizes); a chunk boundary
    # must neither drop, repeat nor reorder an image, and the net goes back to training mode.
    torch.manual_seed(0)
    net = AppearanceNet(8, 3).to(memory_format=torch.channels_last)
    x = torch.rand(37, 3, 112, 112)
    net.eval()
    with torch.inference_mode():
        whole = net(x.contiguous(memory_format=torch.channels_last))[0].float().numpy()
    net.train()
    for chunk in (1, 16, 36, 37, 64):
        got = sbi.chunked_logits(net, x, chunk, torch.device("cpu"), False)
        assert got.shape == (37,) and net.training
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    assert sbi.chunked_logits(net, x[:0], 16, torch.device("cpu"), False).shape == (0,)
    # 512 images at 112 px, fewer as the pixels grow, never under 16
    assert [sbi.eval_chunk(s) for s in (112, 160, 224, 1024)] == [512, 250, 128, 16]
