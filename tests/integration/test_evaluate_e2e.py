"""End to end: `run_training` on generated clips, then `evaluate` through the service's offline scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.config import Settings
from monitor.detect.temporal import TemporalDetector
from monitor.errors import InputError
from monitor.sources.demo_media import write_clip
from monitor.training.evaluate import evaluate, format_report
from monitor.training.train import TrainConfig, run_training

pytestmark = pytest.mark.slow  # trains a tiny bundle and scans six clips: ~30 s


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    # Two faces need the larger frame to stay above the service's minimum face size.
    for name, faces, w, h in (("genuine/a.mp4", 1, 320, 240), ("genuine/b.mp4", 2, 640, 480), ("swapped/c.mp4", 1, 320, 240)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(root / name, 3.0, fps=10, width=w, height=h, faces=faces)
    (root / "nothing").mkdir()
    (root / "nothing/missing.mp4").write_bytes(b"not a video")
    (root / "m.tsv").write_text(
        "path\tlabel\tmethod\n"
        "genuine/a.mp4\treal\tcamera\n"
        "genuine/b.mp4\treal\tcamera\n"
        "swapped/c.mp4\tfake\tsynthetic swap\n"
    )
    (root / "eval.tsv").write_text((root / "m.tsv").read_text() + "nothing/missing.mp4\tattack\treplay\n")
    return root


@pytest.fixture(scope="module")
def bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    cfg = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=out, cache_dir=tmp_path_factory.mktemp("cache"),
        appearance_steps=3, geometry_steps=3, pairs_per_batch=2, folds=2, threads=1,
    )
    assert run_training(cfg, progress=False) == out
    return out


@pytest.mark.parametrize("degrade", [None, "300k+noise"])
def test_evaluate_reports_every_clip(dataset: Path, bundle: Path, settings: Settings, tmp_path: Path, degrade: str | None) -> None:
    config = TemporalDetector.Config(model_dir=bundle)
    out = tmp_path / "out.json"
    report = evaluate(
        dataset / "eval.tsv", dataset, settings, out, degrade,
        detector_factory=lambda: TemporalDetector(config), progress=False,
    )
    data = json.loads(out.read_text())
    assert [c["path"] for c in data["clips"]] == ["genuine/a.mp4", "genuine/b.mp4", "swapped/c.mp4", "nothing/missing.mp4"]
    for clip in data["clips"]:
        assert {"path", "label", "score", "verdict", "time_to_detect_s", "alerts_opened"} <= set(clip)
    judged = [c for c in data["clips"] if c["score"] is not None]
    assert len(judged) == 3
    assert all(0.0 <= c["score"] <= 1.0 for c in judged)
    broken = data["clips"][3]
    assert broken["score"] is None and broken["verdict"] == "error" and broken["reasons"]
    assert report.unjudged and report.unjudged[0][0] == "nothing/missing.mp4"
    assert report.overall.n_genuine == 2 and report.overall.n_fake == 1
    assert report.overall.auc is not None
    assert {m.name for m in report.groups} >= {"folder:genuine", "folder:swapped", "method:synthetic swap"}
    text = format_report(report)
    assert "overall" in text and "false alarms" in text and "could not judge 1 clips" in text


def test_evaluate_reads_dataset_sources_as_training_does(dataset: Path, bundle: Path, settings: Settings, tmp_path: Path) -> None:
    # The standard datasets' readers (ffpp:, celebdf:, dfdc:, real:) were for training only: an
    # official test split could be trained on but not evaluated without writing a manifest.
    (tmp_path / "fakes.tsv").write_text("path\tlabel\tmethod\nswapped/c.mp4\tfake\tsynthetic swap\n")
    config = TemporalDetector.Config(model_dir=bundle)
    sources = [f"real:{dataset / 'genuine'}", f"tsv:{tmp_path / 'fakes.tsv'}:{dataset}"]
    report = evaluate(None, None, settings, tmp_path / "out.json", None, sources=sources, detector_factory=lambda: TemporalDetector(config), progress=False)
    data = json.loads((tmp_path / "out.json").read_text())
    assert [(c["path"], c["label"]) for c in data["clips"]] == [("a.mp4", "real"), ("b.mp4", "real"), ("swapped/c.mp4", "fake")]
    assert report.overall.n_genuine == 2 and report.overall.n_fake == 1 and report.overall.auc is not None
    # Each source is a group (a manifest's rows keep their first path component), beside each method.
    assert {m.name for m in report.groups} == {"folder:real", "folder:swapped", "method:genuine", "method:synthetic swap"}
    assert data["manifest"] == " ".join(sources)
    with pytest.raises(InputError, match="a.mp4"):  # the same clip twice would count twice
        evaluate(None, None, settings, None, None, sources=[*sources, f"tsv:{dataset / 'm.tsv'}"], progress=False)
    with pytest.raises(InputError, match="not both"):
        evaluate(dataset / "m.tsv", None, settings, None, None, sources=sources, progress=False)
    with pytest.raises(InputError, match="at least one"):
        evaluate(None, None, settings, None, None, progress=False)
    with pytest.raises(InputError, match="--root is for a manifest"):
        evaluate(None, dataset, settings, None, None, sources=sources, progress=False)


def test_gpu_style_appearance_training_feeds_monitor_train(dataset: Path, tmp_path: Path) -> None:
    """`sbi pack` -> `sbi fit` -> `monitor train --appearance-from`: the fold CNNs are used as
    they are, the bundle loads and scores, and its manifest records where they came from."""
    import numpy as np
    import torch

    from monitor.training import sbi

    (dataset / "grouped.tsv").write_text(
        "path\tlabel\tgroup\n" "genuine/a.mp4\treal\tga\n" "genuine/b.mp4\treal\tgb\n" "swapped/c.mp4\tfake\tga\n"
    )
    source = f"tsv:{dataset / 'grouped.tsv'}"
    cache = tmp_path / "cache"
    summary = sbi.build_pack([source], [], tmp_path / "pack.npz", cache)
    # Genuine faces of both clips train; the evaluation set holds the one fake (nothing is held out).
    assert summary["folds"] == 2 and summary["train_frames"] > 20 and summary["eval_clips"] == 1
    # A validation group is never trained on: without ga's genuine clip one group is left, too few folds.
    with pytest.raises(InputError, match="at least two groups"):
        sbi.build_pack([source], [], tmp_path / "val.npz", cache, validation=["ga"])
    with pytest.raises(InputError, match="both held out and for validation: ga"):
        sbi.build_pack([source], ["ga"], tmp_path / "val.npz", cache, validation=["ga"])
    with pytest.raises(InputError, match="--validation gz: no such group"):
        sbi.build_pack([source], [], tmp_path / "val.npz", cache, validation=["gz"])
    # A third genuine group for validation: evaluated, flagged, and none of its faces trained on.
    (dataset / "extra").mkdir(exist_ok=True)
    (dataset / "extra/v.mp4").write_bytes((dataset / "genuine/a.mp4").read_bytes())
    (dataset / "val.tsv").write_text((dataset / "grouped.tsv").read_text() + "extra/v.mp4\treal\tgv\n")
    val = sbi.build_pack([f"tsv:{dataset / 'val.tsv'}"], [], tmp_path / "val.npz", cache, validation=["gv"])
    assert val["train_clips"] == 2 and val["train_frames"] == summary["train_frames"]
    clips = sbi.Pack(tmp_path / "val.npz").meta["eval_clips"]
    assert [(c["rel"], c["validation"], c["heldout"]) for c in clips if c["validation"]] == [("extra/v.mp4", True, False)]
    sbi.fit(tmp_path / "pack.npz", tmp_path / "fit", steps=2, widths=(8,), pairs=2, workers=0, eval_every=0)
    cfg = TrainConfig(
        sources=(source,), out_dir=tmp_path / "bundle", cache_dir=cache, geometry_steps=2, folds=2, threads=1,
        width=8, appearance_from=tmp_path / "fit/models.pt",
    )
    run_training(cfg, progress=False)
    manifest = json.loads((tmp_path / "bundle/manifest.json").read_text())
    assert manifest["appearance_from"]["steps"] == 2 and len(manifest["appearance_from"]["sha256"]) == 64
    shipped = torch.load(tmp_path / "bundle/appearance.pt", weights_only=True)
    fitted = torch.load(tmp_path / "fit/models.pt", weights_only=True)["state"]
    for f in range(2):  # the bundle's ensemble members are the fitted fold models, unchanged
        for key, value in fitted[f"w8-fold{f}"].items():
            assert torch.equal(shipped[f"members.{f}.{key}"], value)
    detector = TemporalDetector(TemporalDetector.Config(model_dir=tmp_path / "bundle"))
    crop = np.random.default_rng(0).integers(0, 255, (1, 112, 112, 3), dtype=np.uint8)
    assert np.isfinite(detector.bundle.appearance(crop)).all()

    # Fine-tuning starts from the fitted models and trains them further with real fakes.
    tuned = cfg.model_copy(update={"out_dir": tmp_path / "tuned", "finetune_appearance": True, "appearance_steps": 4, "pairs_per_batch": 2})
    run_training(tuned, progress=False)
    assert json.loads((tmp_path / "tuned/manifest.json").read_text())["appearance_from"]["finetuned"] is True
    moved = torch.load(tmp_path / "tuned/appearance.pt", weights_only=True)
    assert not all(torch.equal(moved[f"members.0.{k}"], v) for k, v in fitted["w8-fold0"].items())
    with pytest.raises(ValueError, match="needs --appearance-from"):
        run_training(tuned.model_copy(update={"appearance_from": None}), progress=False)


def test_interrupted_training_resumes_to_the_same_weights(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints: a run killed mid-way and started again ends with exactly the weights of an
    uninterrupted run, and a finished run leaves no checkpoints behind."""
    import torch

    from monitor.training import train

    cfg = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=tmp_path / "a", cache_dir=tmp_path / "cache",
        appearance_steps=4, geometry_steps=4, pairs_per_batch=2, folds=0, threads=1, checkpoint_every=1,
    )
    run_training(cfg, progress=False)
    assert not any((tmp_path / "cache/checkpoints").glob("*/*.pt"))

    calls = {"n": 0}
    real_batch = train.Sampler.batch

    def killed_at_third_batch(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real_batch(self)

    monkeypatch.setattr(train.Sampler, "batch", killed_at_third_batch)
    resumed = cfg.model_copy(update={"out_dir": tmp_path / "b"})
    with pytest.raises(RuntimeError, match="killed"):
        run_training(resumed, progress=False)
    (state,) = (tmp_path / "cache/checkpoints").glob("*/appearance.pt")
    assert torch.load(state, weights_only=True)["step"] == 2
    monkeypatch.undo()
    run_training(resumed, progress=False)
    for name in ("appearance.pt", "geometry.pt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a/fusion.json").read_text() == (tmp_path / "b/fusion.json").read_text()


def test_animated_stills_add_fusion_windows_and_leave_the_rest_unchanged(dataset: Path, tmp_path: Path) -> None:
    """--animated-stills adds one still per genuine clip to the fusion's windows; the nets and
    every other window (clips, self-blends) are those of a run without it."""
    import numpy as np
    import torch

    base = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=tmp_path / "off", cache_dir=tmp_path / "cache",
        appearance_steps=2, geometry_steps=2, pairs_per_batch=2, folds=0, threads=1, call_codecs=False,
    )
    run_training(base, progress=False)
    stills = base.model_copy(update={"out_dir": tmp_path / "on", "animated_stills": True})
    run_training(stills, progress=False)
    off = np.load(tmp_path / "cache/fusion-windows-off.npz")
    on = np.load(tmp_path / "cache/fusion-windows-on.npz")
    still = on["ids"] % 3 == 2
    assert still.any() and (on["y"][still] == 1).all()
    assert len(np.unique(on["ids"][still])) == 2  # one per genuine clip
    assert np.array_equal(on["x"][~still], off["x"]) and np.array_equal(on["ids"][~still], off["ids"])
    a = torch.load(tmp_path / "off/appearance.pt", weights_only=True)
    b = torch.load(tmp_path / "on/appearance.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "animated_stills" not in json.loads((tmp_path / "off/manifest.json").read_text())["train_config"]
    assert "call_codecs" not in json.loads((tmp_path / "off/manifest.json").read_text())["train_config"]
    assert json.loads((tmp_path / "on/manifest.json").read_text())["train_config"]["animated_stills"] is True
    detector = TemporalDetector(TemporalDetector.Config(model_dir=tmp_path / "on"))
    assert np.isfinite(detector.fusion.intercept)


def test_recipe_2_trains_a_bundle_the_detector_loads(dataset: Path, tmp_path: Path) -> None:
    """`monitor train --recipe 2` (DETECTOR.md's recipe in full) runs end to end; its manifest
    says which recipe made it, and its nets differ from recipe 1's on the same data and seed."""
    import numpy as np
    import torch

    one = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=tmp_path / "one", cache_dir=tmp_path / "cache",
        appearance_steps=2, geometry_steps=2, pairs_per_batch=2, folds=0, threads=1, call_codecs=False,
    )
    run_training(one, progress=False)
    two = one.model_copy(update={"out_dir": tmp_path / "two", "recipe": 2})
    run_training(two, progress=False)
    assert json.loads((tmp_path / "one/manifest.json").read_text())["train_config"]["recipe"] == 1
    assert json.loads((tmp_path / "two/manifest.json").read_text())["train_config"]["recipe"] == 2
    for net in ("appearance.pt", "geometry.pt"):
        a = torch.load(tmp_path / "one" / net, weights_only=True)
        b = torch.load(tmp_path / "two" / net, weights_only=True)
        assert not all(torch.equal(a[k], b[k]) for k in a), net
    detector = TemporalDetector(TemporalDetector.Config(model_dir=tmp_path / "two"))
    assert np.isfinite(detector.fusion.intercept)


def test_call_codecs_flag_changes_only_the_appearance_training(dataset: Path, tmp_path: Path) -> None:
    """`monitor train` re-encodes training crops with H.264/VP8 by default: the CNN weights
    change and the manifest says so; with `--no-call-codecs` (the recipe before 2026-11-26) the
    manifest does not mention it, so that recipe still rebuilds its bundles bit for bit."""
    import torch

    from monitor.training.train import main

    common = ["--source", f"tsv:{dataset / 'm.tsv'}", "--cache-dir", str(tmp_path / "cache"), "--appearance-steps", "3", "--geometry-steps", "2", "--checkpoint-every", "0"]
    main([*common, "--out", str(tmp_path / "off"), "--no-call-codecs"])
    main([*common, "--out", str(tmp_path / "on")])
    off = json.loads((tmp_path / "off/manifest.json").read_text())["train_config"]
    on = json.loads((tmp_path / "on/manifest.json").read_text())["train_config"]
    assert "call_codecs" not in off and on.pop("call_codecs") is True and on == off
    a = torch.load(tmp_path / "off/appearance.pt", weights_only=True)
    b = torch.load(tmp_path / "on/appearance.pt", weights_only=True)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    g1 = torch.load(tmp_path / "off/geometry.pt", weights_only=True)
    g2 = torch.load(tmp_path / "on/geometry.pt", weights_only=True)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_unseen_margin_flag_changes_only_the_calibration(dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`monitor train --unseen-margin` trains the same nets; the manifest records the flag and
    the margin, and a run without it records neither. These clips hold one genuine group, so the
    fusion is fitted in-sample and the margin is 0, with a warning (the margin's arithmetic is
    unit-tested in tests/unit/test_training_fusion.py)."""
    import torch

    from monitor.training.train import main

    common = ["--source", f"tsv:{dataset / 'm.tsv'}", "--cache-dir", str(tmp_path / "cache"), "--appearance-steps", "2", "--geometry-steps", "2", "--checkpoint-every", "0", "--no-call-codecs"]
    main([*common, "--out", str(tmp_path / "off")])
    main([*common, "--out", str(tmp_path / "on"), "--unseen-margin"])
    off = json.loads((tmp_path / "off/manifest.json").read_text())
    on = json.loads((tmp_path / "on/manifest.json").read_text())
    assert "unseen_margin" not in off["train_config"] and "unseen_margin" not in off["fusion_stats"]
    assert on["train_config"].pop("unseen_margin") is True and on["train_config"] == off["train_config"]
    assert on["fusion_stats"].pop("unseen_margin") == 0.0 and on["fusion_stats"] == off["fusion_stats"]
    assert "no margin" in caplog.text
    for net in ("appearance.pt", "geometry.pt"):
        a = torch.load(tmp_path / "off" / net, weights_only=True)
        b = torch.load(tmp_path / "on" / net, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), net


def test_worker_processes_give_the_serial_results(dataset: Path, bundle: Path, settings: Settings, tmp_path: Path) -> None:
    import functools

    factory = functools.partial(TemporalDetector, TemporalDetector.Config(model_dir=bundle))
    serial = evaluate(dataset / "eval.tsv", dataset, settings, None, None, detector_factory=factory, progress=False)
    parallel = evaluate(dataset / "eval.tsv", dataset, settings, tmp_path / "p.json", None, detector_factory=factory, progress=False, workers=2)
    assert parallel.clips == serial.clips  # same order, same scores, same errors
    assert json.loads((tmp_path / "p.json").read_text())["clips"][3]["verdict"] == "error"


def test_a_pool_found_broken_when_handing_out_a_clip_loses_nothing(
    dataset: Path, bundle: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker can die between two hand-outs: then submit() itself raises. The clip it was
    # handing out never ran and must be scanned later, not end the whole evaluation.
    import concurrent.futures
    import functools
    from concurrent.futures.process import BrokenProcessPool

    calls = {"n": 0}

    class BreaksOnce(concurrent.futures.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:  # the probe, the first clip, then this
                raise BrokenProcessPool("a worker died")
            return super().submit(*args, **kwargs)

    factory = functools.partial(TemporalDetector, TemporalDetector.Config(model_dir=bundle))
    serial = evaluate(dataset / "eval.tsv", dataset, settings, None, None, detector_factory=factory, progress=False)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", BreaksOnce)
    parallel = evaluate(dataset / "eval.tsv", dataset, settings, None, None, detector_factory=factory, progress=False, workers=2)
    assert calls["n"] > 3
    assert parallel.clips == serial.clips


def test_a_clip_that_kills_its_worker_is_an_error_and_nothing_else_is_lost(dataset: Path, settings: Settings, tmp_path: Path) -> None:
    from tests.support import crashing_detector

    root = tmp_path / "clips"
    root.mkdir()
    names = ["a.mp4", "crash.mp4", "b.mp4", "c.mp4"]
    for name in names:
        width = crashing_detector.CRASH_WIDTH if name == "crash.mp4" else 320
        write_clip(root / name, 2.0, fps=10, width=width, height=240)
    (root / "all.tsv").write_text("path\tlabel\n" + "".join(f"{n}\treal\n" for n in names))
    (root / "safe.tsv").write_text("path\tlabel\n" + "".join(f"{n}\treal\n" for n in names if n != "crash.mp4"))
    report = evaluate(root / "all.tsv", root, settings, None, None, detector_factory=crashing_detector.make, progress=False, workers=2)
    by = {c.path: c for c in report.clips}
    assert [c.path for c in report.clips] == names
    assert by["crash.mp4"].verdict == "error" and "worker process died" in by["crash.mp4"].reasons[0]
    # In-process (it would kill pytest on the marked clip): the other clips score the same.
    safe = evaluate(root / "safe.tsv", root, settings, None, None, detector_factory=crashing_detector.make, progress=False)
    assert [by[c.path] for c in safe.clips] == list(safe.clips)
    assert all(c.score is not None for c in safe.clips)


def test_without_worker_processes_evaluate_scans_in_process(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import concurrent.futures

    from tests.support import crashing_detector

    def unavailable(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno 38] Function not implemented (sem_open)")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", unavailable)
    for name in ("a.mp4", "b.mp4"):
        write_clip(tmp_path / name, 1.5, fps=10, width=320, height=240)
    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\tfake\n")
    report = evaluate(tmp_path / "m.tsv", tmp_path, settings, None, None, detector_factory=crashing_detector.make, progress=False, workers=2)
    assert [c.score is not None for c in report.clips] == [True, True]
    assert "cannot use worker processes" in caplog.text


@pytest.mark.parametrize("factory_kind", ["unimportable in a worker", "a lambda"])
def test_workers_that_cannot_set_up_fall_back_to_scanning_in_process(tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture, factory_kind: str) -> None:
    from tests.support import crashing_detector

    factory = crashing_detector.ParentOnlyFactory() if factory_kind == "unimportable in a worker" else (lambda: crashing_detector.make())
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        write_clip(tmp_path / name, 1.5, fps=10, width=320, height=240)
    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\tfake\nc.mp4\treal\n")
    report = evaluate(tmp_path / "m.tsv", tmp_path, settings, None, None, detector_factory=factory, progress=False, workers=2)
    assert all(c.score is not None for c in report.clips), [c.reasons for c in report.clips]
    assert "cannot use worker processes" in caplog.text and "do not start here" in caplog.text


def test_face_extraction_workers_give_the_serial_faces_and_weights(dataset: Path, bundle: Path, tmp_path: Path) -> None:
    import numpy as np

    from monitor.config import AnalysisConfig
    from monitor.detect.bundle import sha256_file
    from monitor.training.extract import cache_file, load_or_extract, prefetch

    analysis = AnalysisConfig()
    clips = [dataset / n for n in ("genuine/a.mp4", "genuine/b.mp4", "swapped/c.mp4")]
    failed = prefetch([*clips, dataset / "nothing/missing.mp4"], analysis, tmp_path / "par", 60.0, workers=2, progress=False)
    assert list(failed) == [dataset / "nothing/missing.mp4"]
    for clip in clips:
        serial = load_or_extract(clip, analysis, tmp_path / "ser", 60.0)
        with np.load(cache_file(clip, analysis, tmp_path / "par", 60.0)) as parallel:
            assert len(serial) > 0
            for name in ("t", "track", "landmarks", "crops", "crop_landmarks"):
                assert np.array_equal(parallel[name], getattr(serial, name)), (clip.name, name)

    cfg = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=tmp_path / "w2", cache_dir=tmp_path / "cache",
        appearance_steps=3, geometry_steps=3, pairs_per_batch=2, folds=2, threads=1,
    )
    run_training(cfg, progress=False, workers=2)
    for name in ("appearance.pt", "geometry.pt", "appearance.onnx", "geometry.onnx", "fusion.json"):
        assert sha256_file(tmp_path / "w2" / name) == sha256_file(bundle / name), name


def test_training_refuses_clips_too_short_for_the_geometry_branch(tmp_path: Path) -> None:
    from monitor.errors import InputError

    for name in ("a/x.mp4", "b/y.mp4"):
        (tmp_path / "reals" / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(tmp_path / "reals" / name, 0.8, fps=10, width=320, height=240)
    cfg = TrainConfig(
        sources=(f"real:{tmp_path / 'reals'}",), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
        appearance_steps=3, geometry_steps=3, pairs_per_batch=2, folds=2, threads=1,
    )
    # Before any training (it used to fail with a raw ValueError after the first stage).
    with pytest.raises(InputError, match="12 usable face frames"):
        run_training(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_the_previous_bundle_as_it_was(
    dataset: Path, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monitor.training.train as train_module
    from monitor.detect.bundle import load_bundle, sha256_file

    target = tmp_path / "models" / "mine"
    target.mkdir(parents=True)
    for f in bundle.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    before = {f.name: sha256_file(f) for f in target.iterdir()}

    def onnx_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ONNX export failed")

    monkeypatch.setattr(train_module, "_export_onnx", onnx_fails)
    cfg = TrainConfig(
        sources=(f"tsv:{dataset / 'm.tsv'}",), out_dir=target, cache_dir=tmp_path / "cache",
        appearance_steps=2, geometry_steps=2, pairs_per_batch=2, folds=2, threads=1, seed=3,
    )
    with pytest.raises(RuntimeError, match="ONNX export failed"):
        run_training(cfg, progress=False)
    assert {f.name: sha256_file(f) for f in target.iterdir()} == before
    load_bundle(target, "onnx", None)  # still a whole bundle
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mine"]  # no staging folder left


def test_training_refuses_a_fold_whose_other_half_is_too_short_before_training(tmp_path: Path) -> None:
    from monitor.errors import InputError

    for name, seconds in (("a/long.mp4", 3.0), ("b/short.mp4", 0.8)):
        (tmp_path / "reals" / name).parent.mkdir(parents=True, exist_ok=True)
        write_clip(tmp_path / "reals" / name, seconds, fps=10, width=320, height=240)
    cfg = TrainConfig(
        sources=(f"real:{tmp_path / 'reals'}",), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
        appearance_steps=3, geometry_steps=3, pairs_per_batch=2, folds=2, threads=1,
    )
    with pytest.raises(InputError, match="cross-fitting fold .* in the other folds"):
        run_training(cfg, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "checkpoints").exists()
