"""Unit tests for the offline tools' input checks: manifests with repeated paths or no rows,
Celeb-DF's official split as a training source, `--degrade` specs and clips with corrupt
packets, `monitor sbi`'s numeric options, DFDC paths, and which original a training fake is
paired with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from monitor.errors import InputError
from monitor.training.datasets import ClipRecord, manifest_rows, read_celebdf, read_source, read_tsv
from monitor.training.degrade import Degradation, degrade_clip, parse_degradation
from monitor.training.extract import STORE_SIZE, FaceClip
from monitor.training.train import Clip, Sampler, TrainConfig
from tests.support.media import corrupt_clip


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- manifests ------------------------------------------------------------------------------


def test_a_path_repeated_after_normalisation_names_both_lines(tmp_path: Path) -> None:
    from monitor.training.evaluate import read_manifest

    (tmp_path / "dup.tsv").write_text("path\tlabel\ng/a.mp4\treal\nf/b.mp4\tfake\n\n./g//a.mp4\treal\n")
    for read in (manifest_rows, read_manifest, read_tsv):
        with pytest.raises(InputError, match=r"dup.tsv:5: path 'g/a.mp4' repeats line 2"):
            read(tmp_path / "dup.tsv")
    with pytest.raises(InputError, match="repeats line 2"):
        read_source(f"tsv:{tmp_path / 'dup.tsv'}")


def test_a_manifest_with_a_header_and_no_rows_is_an_error(tmp_path: Path) -> None:
    from monitor.training.evaluate import read_manifest

    (tmp_path / "hdr.tsv").write_text("path\tlabel\n\n\n")
    for read in (manifest_rows, read_manifest, read_tsv):
        with pytest.raises(InputError, match=r"hdr.tsv: no clip rows$"):
            read(tmp_path / "hdr.tsv")
    with pytest.raises(InputError, match="no clip rows"):
        read_source(f"tsv:{tmp_path / 'hdr.tsv'}")


# --- Celeb-DF -------------------------------------------------------------------------------

TEST_LIST = "1 YouTube-real/00170.mp4\n1 Celeb-real/id0_0001.mp4\n0 Celeb-synthesis/id0_id16_0001.mp4\n"


def celebdf(root: Path) -> Path:
    """A Celeb-DF v2 layout: three test videos (on the list) and four training videos."""
    for rel in (
        "YouTube-real/00170.mp4", "YouTube-real/00171.mp4",
        "Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "Celeb-real/id1_0000.mp4",
        "Celeb-synthesis/id0_id16_0000.mp4", "Celeb-synthesis/id0_id16_0001.mp4",
    ):
        touch(root / rel)
    touch(root / "Celeb-real" / "notes.txt")
    (root / "List_of_testing_videos.txt").write_text(TEST_LIST)
    return root


def test_celebdf_training_split_is_every_video_not_on_the_test_list(tmp_path: Path) -> None:
    root = celebdf(tmp_path)
    expected = {
        "Celeb-real/id0_0000.mp4": ("real", "celebdf:id0", "Celeb-real"),
        "Celeb-real/id1_0000.mp4": ("real", "celebdf:id1", "Celeb-real"),
        "Celeb-synthesis/id0_id16_0000.mp4": ("fake", "celebdf:id0", "Celeb-synthesis"),
        "YouTube-real/00171.mp4": ("real", "celebdf:00171", "YouTube-real"),
    }
    for read in (lambda: read_source(f"celebdf:{root}"), lambda: read_source(f"celebdf:{root}:train"), lambda: read_celebdf(root, "train")):
        recs = read()
        assert {r.rel: (r.label, r.group, r.method) for r in recs} == expected
        assert all(r.path == root / r.rel for r in recs)
    test = read_source(f"celebdf:{root}:test")
    assert [(r.rel, r.label) for r in test] == [
        ("YouTube-real/00170.mp4", "real"), ("Celeb-real/id0_0001.mp4", "real"), ("Celeb-synthesis/id0_id16_0001.mp4", "fake"),
    ]
    assert not {r.rel for r in test} & set(expected)
    with pytest.raises(InputError, match=r"use celebdf:ROOT\[:train\|test\]"):
        read_source(f"celebdf:{root}:val")


def test_celebdf_training_split_refuses_a_list_or_layout_it_cannot_use(tmp_path: Path) -> None:
    root = celebdf(tmp_path / "a")
    # A list naming none of the videos here would keep nothing out of training.
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id9_0000.mp4\n")
    with pytest.raises(InputError, match=r"none of its 1 videos is under"):
        read_source(f"celebdf:{root}")
    empty = tmp_path / "b"
    empty.mkdir()
    (empty / "List_of_testing_videos.txt").write_text(TEST_LIST)
    with pytest.raises(InputError, match="no Celeb-DF training video"):
        read_source(f"celebdf:{empty}")
    with pytest.raises(InputError, match="List_of_testing_videos.txt"):
        read_source(f"celebdf:{tmp_path / 'c'}")


# --- --degrade ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ALL", Degradation(300_000, 360, 8.0)),
        (" All ", Degradation(300_000, 360, 8.0)),
        ("300K+Noise5", Degradation(300_000, None, 5.0)),
        ("360p", Degradation(2_000_000, 360, 0.0)),
    ],
)
def test_degradation_specs_in_any_case(spec: str, expected: Degradation) -> None:
    assert parse_degradation(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("300k+600k", r"'300k\+600k' gives the bitrate twice \(300k and 600k\)"),
        ("360p+720P", "gives the size twice"),
        ("noise+noise5", "gives the noise twice"),
        ("", "empty degradation"),
        ("  ", "empty degradation"),
        ("300k+", "has an empty part"),
        ("all+noise5", r"all cannot be combined with others; write them out, e.g. 300k\+360p\+noise5"),
        ("blur", "unknown degradation 'blur'"),
    ],
)
def test_degradation_specs_that_are_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_degradation(spec)


def _frames(path: Path) -> int:
    """Frames a tolerant decoder gets from ``path``, as the scan's sampler reads it."""
    from monitor.sources.av_source import decode_frames

    with av.open(str(path)) as c:
        return sum(1 for _ in decode_frames(c, lambda exc: None))


def test_a_clip_with_corrupt_packets_is_degraded_past_them(tmp_path: Path) -> None:
    clip = corrupt_clip(tmp_path / "corrupt.mp4", 3.0, fps=10)
    with av.open(str(clip)) as c, pytest.raises(av.error.InvalidDataError):
        for _ in c.decode(video=0):  # the plain decoder gives up at the first corrupt packet
            pass
    out = degrade_clip(clip, tmp_path / "out.mp4", parse_degradation("300k"))
    assert _frames(out) == _frames(clip) > 0  # the frames the scan would judge, all of them
    errors: list[BaseException] = []
    degrade_clip(clip, tmp_path / "again.mp4", parse_degradation("300k"), on_decode_error=errors.append)
    assert errors  # each skipped packet is reported


def test_a_degraded_copy_can_stop_after_a_duration(tmp_path: Path) -> None:
    # Counted in stream time as the scan's sampler counts it: from the container's start, and
    # one frame interval apart where a raw stream carries no timestamps.
    from tests.support.media import raw_h264, timestamped_ts, write_clip

    clip = tmp_path / "long.mp4"
    write_clip(clip, 3.0, fps=10, width=160, height=120, faces=1)
    late = timestamped_ts(tmp_path / "late.ts", 3.0, 50.0)
    raw = raw_h264(tmp_path / "raw.h264", 3.0, 10)
    for src in (clip, late, raw):
        out = degrade_clip(src, tmp_path / f"short-{src.stem}.mp4", parse_degradation("300k"), max_duration_s=1.0)
        assert 10 <= _frames(out) <= 12 < _frames(src), src.name  # about 1 s and a frame


# --- monitor sbi ----------------------------------------------------------------------------

PACK = ["pack", "--source", "tsv:m.tsv", "--out", "p.npz"]
FIT = ["fit", "--pack", "p.npz", "--out", "fit"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PACK, "--frame-step", "0"], "--frame-step must be at least 1, got 0"),
        ([*PACK, "--workers", "-1"], "--workers must be at least 0, got -1"),
        ([*FIT, "--steps", "0"], "--steps must be at least 1, got 0"),
        ([*FIT, "--pairs", "0"], "--pairs must be at least 1, got 0"),
        ([*FIT, "--workers", "-2"], "--workers must be at least 0, got -2"),
        ([*FIT, "--eval-every", "-1"], "--eval-every must be at least 0, got -1"),
        ([*FIT, "--time-limit", "-5"], "--time-limit must be at least 0, got -5"),
        ([*FIT, "--time-limit", "nan"], "--time-limit must be at least 0, got nan"),
    ],
)
def test_sbi_numbers_out_of_range_are_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    from monitor.training import sbi

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("started work")

    monkeypatch.setattr(sbi, "build_pack", work)
    monkeypatch.setattr(sbi, "fit", work)
    with pytest.raises(InputError, match=f"^{message}$"):
        sbi.main(argv)


def test_sbi_bad_number_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from monitor.cli import app

    r = CliRunner().invoke(app, ["sbi", "fit", "--pack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "o"), "--steps", "0"])
    assert r.exit_code == 2, r.output
    assert "--steps must be at least 1, got 0" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


# --- training batches -------------------------------------------------------------------------


def _clip(name: str, label: str, group: str, value: int, frames: int = 4) -> Clip:
    crops = np.full((frames, STORE_SIZE, STORE_SIZE, 3), value, np.uint8)
    faces = FaceClip(np.arange(frames, dtype=np.float32), np.zeros(frames, np.int32), np.zeros((frames, 478, 3), np.float32),
                     crops, np.zeros((frames, 478, 3), np.float32), float(frames))
    return Clip(ClipRecord(Path(name), label, group), faces, np.arange(frames))  # type: ignore[arg-type]  # a str label


@pytest.mark.parametrize("same_fold", [True, False])
def test_a_fakes_original_from_another_fold_is_not_used(tmp_path: Path, same_fold: bool) -> None:
    # Before: the Sampler took a fake's frame-aligned original wherever it was. A manifest's
    # `group` column can put the two in different folds, and that fold's faces then leaked into
    # the model whose out-of-fold scores calibrate the fusion.
    original = _clip("orig.mp4", "real", "a", 250)  # bright: recognisable after augmentation
    other_real = _clip("other.mp4", "real", "b", 5)
    fake = dataclasses.replace(_clip("fake.mp4", "fake", "b", 120), pair=original)
    members = [fake, other_real] + ([original] if same_fold else [])
    cfg = TrainConfig(sources=("tsv:m.tsv",), self_blend=False, pairs_per_batch=1, out_dir=tmp_path)
    means = []
    for seed in range(6):
        x, y, _, _ = Sampler(members, cfg, np.random.default_rng(seed)).batch()
        means.append(float(x[np.flatnonzero(y == 0)[-1]].mean()))  # the fake's partner: the last genuine input
    if same_fold:
        assert all(m > 180 for m in means), means  # the frame-aligned original
    else:
        assert all(m < 60 for m in means), means  # a genuine face of this fold instead


@pytest.mark.parametrize("recipe", [1, 2])
def test_each_real_frame_comes_with_its_self_blend_through_one_channel_and_one_flip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: int) -> None:
    # The recipe pairs every real frame with its own self-blend in the batch, both degraded by
    # the same call channel and flipped together; in recipe 2 also cropped with the same
    # margins and given the same colour: only the blend tells them apart.
    from monitor.training import synthesis as syn

    channels: list[object] = []
    monkeypatch.setattr(syn, "draw_channel", lambda rng, call_codecs=False: object())

    def no_channel(img: np.ndarray, channel: object, rng: np.random.Generator) -> np.ndarray:
        channels.append(channel)
        return img

    monkeypatch.setattr(syn, "apply_channel", no_channel)
    monkeypatch.setattr(syn, "self_blend", lambda img, lm, p, mask_landmarks=None: (img.copy(), np.zeros(img.shape[:2], np.float32)))
    clip = _clip("real.mp4", "real", "a", 0)
    asymmetric = np.zeros((STORE_SIZE, STORE_SIZE, 3), np.uint8)
    asymmetric[:, :40] = 255  # left side bright: a flip shows
    asymmetric[::7, 60:] = (40, 160, 90)  # stripes: a margin's shift or scale shows
    clip.faces.crops[:] = asymmetric
    cfg = TrainConfig(sources=("tsv:m.tsv",), pairs_per_batch=6, out_dir=tmp_path, recipe=recipe)
    x, y, _, _ = Sampler([clip], cfg, np.random.default_rng(0)).batch()
    assert y.tolist() == [0.0, 1.0] * 6  # every real with its self-blend
    assert len(channels) == 12 and all(channels[i] is channels[i + 1] for i in range(0, 12, 2))
    assert len({id(c) for c in channels}) == 6  # a new channel for each pair
    flipped = [bool(x[i, :, :, -1].mean() > x[i, :, :, 0].mean()) for i in range(12)]
    assert all(flipped[i] == flipped[i + 1] for i in range(0, 12, 2)) and len(set(flipped)) == 2
    if recipe == 1:  # each member's crop shifted on its own
        return
    # The blend is mocked away, so each pair's two inputs are the same pixels, while the pairs'
    # margins and colours differ from each other.
    assert all(np.array_equal(x[i], x[i + 1]) for i in range(0, 12, 2))
    unflipped = [x[i] if not flipped[i] else x[i][:, :, ::-1] for i in range(0, 12, 2)]
    assert len({u.tobytes() for u in unflipped}) == 6


def test_fusion_windows_after_a_gap_read_only_the_rows_since_as_the_service_does() -> None:
    # The fusion is fitted on the windows the service would score: a face back after a gap
    # longer than the appearance pool is judged on the rows since (monitor.detect.temporal).
    from monitor.detect.features import GEOMETRY_DIM
    from monitor.detect.temporal import FrameCues, WindowSpec, window_features
    from monitor.training.train import clip_windows

    rng = np.random.default_rng(0)

    def row(t: float) -> FrameCues:
        return FrameCues(t, float(rng.normal()), rng.normal(0, 1, GEOMETRY_DIM).astype(np.float32), rng.normal(120, 5, 15).astype(np.float32))

    before = [row(i * 0.1) for i in range(30)]  # 0-2.9 s
    after = [row(6.5 + i * 0.1) for i in range(10)]  # back after 3.6 s unseen
    geo = lambda seq: float(np.asarray(seq).mean())  # noqa: E731
    x = clip_windows(before + after, geo, window_s=8.0)
    last = window_features(after, geo, WindowSpec())
    assert np.allclose(x[-1], last)


def _face_clip(frames: int = 6) -> Clip:
    """A genuine clip of textured 160 px crops with a face mesh whose oval is a circle."""
    from tests.unit.test_training_synthesis import synthetic_face

    img, lm = synthetic_face(STORE_SIZE)
    clip = _clip("face.mp4", "real", "a", 0, frames)
    clip.faces.crops[:] = img
    clip.faces.crop_landmarks[:] = lm
    clip.faces.landmarks[:] = lm
    return clip


def test_recipe_1_is_pinned(tmp_path: Path) -> None:
    # The shipped weights are trained with recipe 1: one more random draw, two draws swapped,
    # or another mask deformation would change them. These values were recorded from the code
    # that trained them (the batch's draws leave the generator in one state; the landmark fakes
    # and convex masks come out the same).
    from monitor.training import synthesis as syn
    from tests.unit.test_training_synthesis import _talking_sequence

    cfg = TrainConfig(sources=("tsv:m.tsv",), pairs_per_batch=3, out_dir=tmp_path, recipe=1)
    rng = np.random.default_rng(0)
    sampler = Sampler([_face_clip()], cfg, rng)
    sampler.batch()
    sampler.batch()
    assert rng.bit_generator.state["state"]["state"] == PINNED_BATCH_STATE
    seq = _talking_sequence()
    moved = [float(np.abs(syn.perturb_landmarks(seq, np.random.default_rng(s), seq[::-1].copy())[0] - seq).sum()) for s in range(12)]
    assert moved == pytest.approx(PINNED_LANDMARK_FAKES, rel=1e-5)
    img, lm = _face_clip().faces.crops[0], _face_clip().faces.crop_landmarks[0]
    masks = [float(syn.blend_mask(img.shape[:2], lm, syn.draw_blend(np.random.default_rng(s))).sum()) for s in range(4)]
    assert masks == pytest.approx(PINNED_MASKS, rel=1e-4)
    clip_rng = np.random.default_rng(1)
    syn.self_blend_clip([img] * 5, [lm] * 5, clip_rng)
    assert clip_rng.bit_generator.state["state"]["state"] == PINNED_CLIP_STATE


# Recorded on 2026-11-27 from commit 487b102, the code before recipe 2 existed.
PINNED_BATCH_STATE = 301549462340995864279077174500623848558
PINNED_LANDMARK_FAKES = [143.5062, 386.2637, 38.66634, 587.0191, 587.0191, 587.0191, 386.2637, 195.1915, 587.0191, 534.3582, 587.0191, 5068.757]
PINNED_MASKS = [4300.0, 3955.500, 4754.000, 2788.0]
PINNED_CLIP_STATE = 277017721995234325714030883210584113789


@pytest.mark.parametrize("recipe", [1, 2])
def test_recipe_2_blends_concave_masks_and_moves_the_boundary_target_with_the_crop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: int) -> None:
    from monitor.training import synthesis as syn

    concave: list[bool] = []
    square = np.zeros((STORE_SIZE, STORE_SIZE), np.float32)
    square[50:90, 60:100] = 1.0

    def painted(img: np.ndarray, lm: np.ndarray, p: syn.BlendParams, mask_landmarks: object = None) -> tuple[np.ndarray, np.ndarray]:
        concave.append(p.concave)
        fake = img.copy()
        fake[square > 0] = 255
        return fake, square.copy()

    monkeypatch.setattr(syn, "self_blend", painted)
    monkeypatch.setattr(syn, "apply_channel", lambda img, channel, rng: img)
    clip = _clip("dark.mp4", "real", "a", 30)
    cfg = TrainConfig(sources=("tsv:m.tsv",), pairs_per_batch=8, out_dir=tmp_path, recipe=recipe)
    x, y, bounds, has = Sampler([clip], cfg, np.random.default_rng(3)).batch()
    assert concave == [recipe == 2] * 8
    mismatch = []
    for i in np.flatnonzero(y == 1):
        bright = cv2.resize((x[i, 0] > 200).astype(np.float32), (28, 28), interpolation=cv2.INTER_AREA)
        mismatch.append(float(np.abs(4 * bright * (1 - bright) - bounds[i]).mean()))
    if recipe == 2:  # the target sits on the pasted square's edge wherever the crop moved it
        assert max(mismatch) < 0.02
    else:  # recipe 1: each member shifted on its own, the target left where it was
        assert max(mismatch) > 0.02


def test_fold_windows_blend_clips_by_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.training.train as train_module
    from monitor.training import synthesis as syn

    seen: list[bool] = []

    def blend_clip(frames: list[np.ndarray], landmarks: list[np.ndarray], rng: np.random.Generator, concave: bool = False) -> list[np.ndarray]:
        seen.append(concave)
        return frames

    monkeypatch.setattr(syn, "self_blend_clip", blend_clip)
    monkeypatch.setattr(train_module, "torch_app", lambda net: None)
    monkeypatch.setattr(train_module, "torch_geo", lambda net: None)
    monkeypatch.setattr(train_module, "clip_cues", lambda *args: [])
    monkeypatch.setattr(train_module, "clip_windows", lambda *args: np.zeros((1, 9)))
    for recipe in (1, 2):
        train_module.fold_windows([_clip("a.mp4", "real", "a", 9)], None, None, 8.0, 0, recipe=recipe)
    assert seen == [False, True]


@pytest.mark.parametrize("recipe", [1, 2])
def test_the_geometry_branch_trains_on_the_recipes_landmark_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: int) -> None:
    import monitor.training.train as train_module
    from monitor.training import synthesis as syn

    asked: list[int] = []
    real = syn.perturb_landmarks

    def spy(seq: np.ndarray, rng: np.random.Generator, donor: object = None, fps: float = 10.0, recipe: int = 1) -> tuple[np.ndarray, str]:
        asked.append(recipe)
        return real(seq, rng, donor, fps=fps, recipe=recipe)  # type: ignore[arg-type]

    monkeypatch.setattr(syn, "perturb_landmarks", spy)
    cfg = TrainConfig(sources=("tsv:m.tsv",), out_dir=tmp_path, recipe=recipe, real_fakes=False)
    train_module.train_geometry([_face_clip(frames=14)], cfg, 1, 0, "test", progress=False)
    assert asked and set(asked) == {recipe}


def test_recipe_2_trains_geometry_on_call_copies_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DETECTOR.md: the call channel for both classes. Recipe 2 re-encodes each genuine clip as a
    # call would (drawn per clip, the same on every run) and its landmark windows feed the
    # geometry branch, genuine and perturbed alike; a real fake's genuine partner stays the
    # original (real fakes have no copy), so the channel tells no class apart. Recipe 1: none.
    import monitor.training.train as train_module
    from monitor.config import AnalysisConfig
    from tests.support.media import write_clip

    d1, s1 = train_module.call_degradation("people/a.mp4", 0)
    assert (d1, s1) == train_module.call_degradation("people/a.mp4", 0)
    assert train_module.call_degradation("people/a.mp4", 1) != (d1, s1) and train_module.call_degradation("people/b.mp4", 0) != (d1, s1)
    assert 300_000 <= (d1.bitrate or 0) <= 1_500_000 and d1.short_side in (360, 480, 720) and 0 <= d1.noise_sigma <= 4
    video, swapped = tmp_path / "person.mp4", tmp_path / "swapped.mp4"
    write_clip(video, 3.0, fps=10, width=320, height=240, faces=1)
    write_clip(swapped, 3.0, fps=10, width=400, height=300, faces=1)  # other landmarks than the genuine clip
    records = [ClipRecord(video, "real", "a", rel="person.mp4"), ClipRecord(swapped, "fake", "b", rel="swapped.mp4")]
    degrades: list[float | None] = []
    real_degrade = train_module.degrade_clip

    def counted(*args: Any, max_duration_s: float | None = None, **kwargs: Any) -> Path:
        degrades.append(max_duration_s)
        return real_degrade(*args, max_duration_s=max_duration_s, **kwargs)

    monkeypatch.setattr(train_module, "degrade_clip", counted)
    for recipe in (1, 2):
        cfg = TrainConfig(sources=("tsv:m.tsv",), out_dir=tmp_path / "o", cache_dir=tmp_path / "cache", recipe=recipe, max_clip_s=2.5)
        clips = train_module.load_clips(records, cfg, AnalysisConfig(), progress=False)
        if recipe == 1:
            assert all(c.call_copy is None for c in clips)
            continue
        assert train_module.attach_call_copies(clips, cfg, AnalysisConfig(), progress=False) == 1
        assert degrades == [2.5]  # made once, no longer than the clip is read
        assert train_module.attach_call_copies(clips, cfg, AnalysisConfig(), progress=False) == 1 and degrades == [2.5]  # reused
        genuine, fake = clips if not clips[0].record.is_fake else clips[::-1]
        copy = genuine.call_copy
        assert copy is not None and fake.call_copy is None and len(copy.idx) >= train_module.GEOMETRY_MIN_FACES
        assert not np.allclose(copy.faces.landmarks[copy.idx[:12]], genuine.faces.landmarks[genuine.idx[:12]])
        assert len(copy.faces.crops) == 0  # only landmarks and times are kept
        sources: list[str] = []
        real_window = train_module.geometry_sequence

        def which(landmarks: np.ndarray) -> np.ndarray:
            def within(c: Clip) -> bool:
                return any(np.array_equal(landmarks, c.faces.landmarks[c.idx[a : a + len(landmarks)]]) for a in range(len(c.idx) - len(landmarks) + 1))

            sources.append("copy" if within(copy) else "original" if within(genuine) else "fake" if within(fake) else "perturbed")
            return real_window(landmarks)

        monkeypatch.setattr(train_module, "geometry_sequence", which)
        train_module.train_geometry(clips, cfg, 1, 0, "test", progress=False)
        groups = [sources[i : i + 4] for i in range(0, len(sources), 4)]  # genuine, its fake, a real fake, its partner
        assert len(groups) == 16, sources
        assert all(g[1] == "perturbed" and g[2] == "fake" and g[3] == "original" for g in groups), groups
        assert {g[0] for g in groups} == {"copy", "original"}
    assert len(list((tmp_path / "cache/call-copies").glob("*.mp4"))) == 1


def test_recipe_1_geometry_windows_are_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The windows recipe 1's geometry branch draws (which clip, where, how long), recorded from
    # commit 487b102, the code before recipe 2: an extra random draw would move them.
    import monitor.training.train as train_module

    clip = _face_clip(frames=40)
    clip.faces.landmarks[:] += np.arange(40, dtype=np.float32)[:, None, None]  # each frame its own
    starts: list[tuple[int, int]] = []
    real = train_module.syn.perturb_landmarks

    def spy(seq: np.ndarray, rng: np.random.Generator, *args: Any, **kwargs: Any) -> Any:
        starts.append((len(seq), int(round(float(seq[0, 0, 0] - clip.faces.landmarks[0, 0, 0])))))
        return real(seq, rng, *args, **kwargs)

    monkeypatch.setattr(train_module.syn, "perturb_landmarks", spy)
    cfg = TrainConfig(sources=("tsv:m.tsv",), out_dir=tmp_path, real_fakes=False)
    train_module.train_geometry([clip], cfg, 2, 0, "test", progress=False)
    assert starts == PINNED_GEOMETRY_WINDOWS


PINNED_GEOMETRY_WINDOWS = [
    (20, 10), (20, 17), (20, 6), (20, 1), (20, 1), (20, 16), (20, 13), (20, 12), (20, 16), (20, 15), (20, 5), (20, 4), (20, 3), (20, 1), (20, 20), (20, 3),
    (16, 2), (16, 24), (16, 15), (16, 0), (16, 18), (16, 16), (16, 9), (16, 0), (16, 24), (16, 1), (16, 0), (16, 11), (16, 10), (16, 3), (16, 14), (16, 1),
]
