"""Unit tests for the temporal-v1 detector: ONNX/torch agreement, sha256 verification, window scoring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.detect.bundle import FILES, MODELS_DIR, Fusion, load_bundle, sha256_file
from monitor.detect.features import GEOMETRY_DIM, GEOMETRY_POINTS
from monitor.detect.nets import AppearanceNet, GeometryNet
from monitor.detect.temporal import (
    FEATURE_BRANCH,
    FEATURE_NAMES,
    FrameCues,
    TemporalDetector,
    WindowSpec,
    appearance_features,
    since_gap,
    thin_rows,
    window_features,
)
from monitor.errors import ConfigError
from monitor.plugins import TrackWindow
from monitor.training.train import export


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle from randomly initialised nets: agreement must not depend on trained weights."""
    torch.manual_seed(0)
    app, geo = AppearanceNet(16).eval(), GeometryNet(GEOMETRY_DIM).eval()
    # Non-trivial batch-norm statistics, so the exported graph folds real numbers.
    for m in app.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    n = len(FEATURE_NAMES)
    fusion = Fusion(FEATURE_NAMES, np.zeros(n), np.ones(n), np.linspace(0.5, 0.1, n), -0.5, FEATURE_BRANCH)
    out = tmp_path_factory.mktemp("bundle")
    export(app, geo, fusion, out, {"appearance_width": 16})
    return out


def bundles(bundle_dir: Path) -> list[Path]:
    shipped = MODELS_DIR / "temporal-v1"
    return [bundle_dir] + ([shipped] if (shipped / "manifest.json").is_file() else [])


def test_onnx_and_torch_agree(bundle_dir: Path) -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (6, 112, 112, 3)).astype(np.uint8)
    seqs = [rng.uniform(0.2, 0.8, (t, GEOMETRY_DIM)).astype(np.float32) for t in (4, 17, 32)]
    for directory in bundles(bundle_dir):
        onnx_b = load_bundle(directory, "onnx", None)
        torch_b = load_bundle(directory, "torch", None)
        a, b = onnx_b.appearance(crops), torch_b.appearance(crops)
        assert a.shape == b.shape == (6,)
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
        for seq in seqs:
            assert onnx_b.geometry(seq) == pytest.approx(torch_b.geometry(seq), abs=1e-3)


def test_tampered_weights_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    copy.mkdir()
    for name in (*FILES, "manifest.json"):
        (copy / name).write_bytes((bundle_dir / name).read_bytes())
    load_bundle(copy, "onnx", sha256_file(copy / "manifest.json"))
    with pytest.raises(ConfigError, match="pinned"):
        load_bundle(copy, "onnx", "0" * 64)
    raw = bytearray((copy / "appearance.onnx").read_bytes())
    raw[-10] ^= 0xFF
    (copy / "appearance.onnx").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="appearance.onnx"):
        load_bundle(copy, "onnx", None)
    (copy / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="missing"):
        load_bundle(copy, "onnx", None)


@pytest.mark.parametrize(
    ("manifest", "fusion_len", "message"),
    [
        (b"not json", None, "manifest.json is not a bundle manifest"),
        (b'{"nofiles": 1}', None, "manifest.json is not a bundle manifest"),
        (b'{"files": [1, 2]}', None, "manifest.json is not a bundle manifest"),
        (None, 3, "fusion.json is not a fusion"),
    ],
)
def test_a_malformed_bundle_is_a_config_error(bundle_dir: Path, tmp_path: Path, manifest: bytes | None, fusion_len: int | None, message: str) -> None:
    # Before: JSONDecodeError, KeyError or AttributeError; a short fusion loaded and then failed on every frame.
    import hashlib
    import json

    copy = tmp_path / "b"
    copy.mkdir()
    for name in (*FILES, "manifest.json"):
        (copy / name).write_bytes((bundle_dir / name).read_bytes())
    if fusion_len is not None:
        fusion = json.loads((copy / "fusion.json").read_text())
        fusion["coef"] = fusion["coef"][:fusion_len]
        (copy / "fusion.json").write_text(json.dumps(fusion))
        meta = json.loads((copy / "manifest.json").read_text())
        meta["files"]["fusion.json"] = hashlib.sha256((copy / "fusion.json").read_bytes()).hexdigest()
        manifest = json.dumps(meta).encode()
    assert manifest is not None
    (copy / "manifest.json").write_bytes(manifest)
    with pytest.raises(ConfigError, match=message):
        load_bundle(copy, "onnx", None)


def test_torch_reads_the_ensemble_shape_from_the_weights(bundle_dir: Path, tmp_path: Path) -> None:
    # Before: a manifest without `members` or `appearance_width` loaded with ONNX Runtime but
    # failed with torch (load_state_dict: missing keys), the reference path.
    import hashlib
    import json

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    for k, directory in enumerate(bundles(bundle_dir)):  # a single net of width 16; the shipped pair of width 24
        copy = tmp_path / f"b{k}"
        copy.mkdir()
        for name in (*FILES, "manifest.json"):
            (copy / name).write_bytes((directory / name).read_bytes())
        meta = json.loads((copy / "manifest.json").read_text())
        meta.pop("members", None)
        meta.pop("appearance_width", None)
        (copy / "manifest.json").write_text(json.dumps(meta))
        np.testing.assert_allclose(load_bundle(copy, "torch", None).appearance(crops), load_bundle(copy, "onnx", None).appearance(crops), atol=1e-3, rtol=1e-3)
        (copy / "geometry.pt").write_bytes(b"not torch")
        meta["files"]["geometry.pt"] = hashlib.sha256(b"not torch").hexdigest()
        (copy / "manifest.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match="geometry.pt is not a torch state dict"):
            load_bundle(copy, "torch", None)
        # Weights of another shape: torch's reason is kept.
        import io

        import torch

        weights = torch.load(copy / "appearance.pt", weights_only=True)
        weights.pop(next(k for k in weights if k.endswith("head.weight") or "fc" in k or k.endswith("boundary.weight")))
        buf = io.BytesIO()
        torch.save(weights, buf)
        (copy / "appearance.pt").write_bytes(buf.getvalue())
        meta["files"]["appearance.pt"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (copy / "geometry.pt").write_bytes((directory / "geometry.pt").read_bytes())
        meta["files"]["geometry.pt"] = hashlib.sha256((directory / "geometry.pt").read_bytes()).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match=r"appearance.pt does not fit the network \(Error\(s\) in loading state_dict .* Missing key"):
            load_bundle(copy, "torch", None)


def cues(n: int, dt: float = 0.1, logit: float = 0.0, t0: float = 0.0, seed: int = 1) -> list[FrameCues]:
    rng = np.random.default_rng(seed)
    geo = rng.uniform(0.3, 0.7, GEOMETRY_DIM).astype(np.float32)
    return [
        FrameCues(t0 + i * dt, logit + 0.1 * np.sin(i), geo + rng.normal(0, 1e-3, GEOMETRY_DIM).astype(np.float32),
                  np.full(15, 120.0, np.float32) + rng.normal(0, 1, 15).astype(np.float32))
        for i in range(n)
    ]


class _Obs:
    def __init__(self, t: float) -> None:
        self.t = t


def window_of(rows: list[FrameCues | None], track: int = 1) -> TrackWindow:
    w = TrackWindow("s", track, 8.0)
    for i, r in enumerate(rows):
        w.push(_Obs(r.t if r is not None else i * 0.1), r)  # type: ignore[arg-type]
    return w


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_score_needs_a_short_window_then_judges(bundle_dir: Path, backend: str) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, backend=backend))  # type: ignore[arg-type]
    short = det.score(window_of(cues(3)))
    assert short.probability is None and short.reasons == ("window_too_short",)
    assert det.score(window_of([None] * 20)).probability is None  # no usable crops at all
    full = det.score(window_of(cues(20)))
    assert full.probability is not None and 0.0 <= full.probability <= 1.0
    assert {s.name for s in full.signals} == {"appearance", "geometry", "physiology"}
    assert sum(s.weight for s in full.signals) == pytest.approx(1.0, abs=1e-3)


def test_a_face_back_after_a_long_gap_warms_up_again(bundle_dir: Path) -> None:
    # Usable for 3 s, unreadable for 3.5 s, back: its first frame alone was judged (and the
    # policy took that as the track's score); a new face would wait for 5 rows over 0.4 s.
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    before, after = cues(30), [dataclasses.replace(r, t=r.t + 6.5) for r in cues(5)]
    assert det.score(window_of(before + after[:1])).reasons == ("window_too_short",)
    assert det.score(window_of(before + after[:4], track=2)).reasons == ("window_too_short",)
    assert det.score(window_of(before + after, track=3)).probability is not None
    # And it is judged on the rows since the gap alone: before, pulse, blinks and landmark
    # motion were computed on signal interpolated across the 3.5 s it was not seen.
    since = det.score(window_of(after, track=6))
    assert det.score(window_of(before + after, track=7)).probability == pytest.approx(since.probability, abs=1e-9)
    # Nor on window cues cached before the gap, however long refresh_s is.
    slow = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, refresh_s=5.0))
    w = window_of(before, track=8)
    slow.score(w)  # caches geometry and physiology at 2.9 s
    for r in after:
        w.push(_Obs(r.t), r)  # type: ignore[arg-type]
    assert slow.score(w).probability == pytest.approx(since.probability, abs=1e-9)
    # Short gaps (a blink of bad frames, a slow analysis rate) do not restart it.
    short_gap = before + [dataclasses.replace(r, t=r.t + 4.5) for r in cues(1)]
    assert det.score(window_of(short_gap, track=4)).probability is not None
    # A short appearance pool at a slow rate: each step is no gap (it was `window_too_short` for ever).
    brief = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, appearance_s=0.5))
    assert brief.score(window_of(cues(8, dt=1.0), track=5)).probability is not None


def test_score_rises_with_the_appearance_logit(bundle_dir: Path) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    low = det.score(window_of(cues(20, logit=-3.0), track=1)).probability
    high = det.score(window_of(cues(20, logit=3.0), track=2)).probability
    assert low is not None and high is not None and high > low


def test_a_faster_analysis_rate_is_scored_as_the_calibrated_rate(bundle_dir: Path) -> None:
    """At 30 fps a window is thinned to the 10 fps rows it holds: same features, same score."""
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    fast = cues(90, dt=1 / 30)  # 3 s at 30 fps, logits changing frame to frame
    slow = [r for i, r in enumerate(fast) if i % 3 == 2]  # the newest row of each 0.1 s slot
    assert thin_rows(fast, 10.0) == slow
    assert det.score(window_of(fast, track=1)).probability == det.score(window_of(slow, track=2)).probability
    # At the calibrated rate nothing is dropped, however uneven: 10 fps from a 15 fps source.
    jittered = [dataclasses.replace(r, t=(3 * i // 2) / 15) for i, r in enumerate(cues(30))]
    assert thin_rows(jittered, 10.0) == jittered
    assert thin_rows(fast, 60.0) == fast  # slower than the rate named: untouched
    # A face unreadable for most of the window (the gap between the two bursts) is no slow rate.
    gappy = fast[:30] + [dataclasses.replace(r, t=r.t + 5.0) for r in fast[60:]]
    assert len(thin_rows(gappy, 10.0)) == 20


def test_non_finite_window_features_never_become_a_probability(bundle_dir: Path) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    x = np.zeros(len(FEATURE_NAMES))
    assert det.fuse(x).probability is not None
    x[3] = np.nan  # torch's GRU gave NaN for a window holding one NaN row: sigmoid's clamp made it 1.0
    score = det.fuse(x)
    assert score.probability is None and score.reasons == ("invalid_features",)


def test_a_face_with_non_finite_landmarks_adds_nothing(bundle_dir: Path) -> None:
    from monitor.types import FaceObservation, FaceQuality

    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    landmarks = np.full((478, 3), 50.0, np.float32)
    landmarks[GEOMETRY_POINTS[0], 0] = np.nan  # a point the geometry branch reads
    crop = np.full((112, 112, 3), 128, np.uint8)
    obs = FaceObservation("s", 1, 0, 0.0, 0.0, landmarks, (0, 0, 10, 10), crop, FaceQuality(100, 100, 0, 0, 1))
    assert det.features(obs) is None
    landmarks[:] = 50.0  # every point in one place: alignment falls back to identity, still finite
    cues = det.features(obs)
    assert cues is not None and np.isfinite(cues.geometry).all()


def test_config_is_strict() -> None:
    with pytest.raises(Exception):
        TemporalDetector.Config.model_validate({"window": 3})
    with pytest.raises(Exception):
        TemporalDetector.Config.model_validate({"backend": "tensorrt"})


@pytest.mark.parametrize(("backend", "weights"), [("onnx", "appearance.onnx"), ("torch", "appearance.pt")])
def test_the_bundle_runs_the_bytes_it_verified(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, weights: str) -> None:
    # Swapping a file between the check and the load must not change what runs: neither the
    # fusion nor the weights (here another appearance net that runs: the shipped one).
    import monitor.detect.bundle as bundle_module

    copy = _copy_with(bundle_dir, tmp_path, {})
    expected = load_bundle(copy, backend, None).appearance(crops_of(4))  # type: ignore[arg-type]
    real_verify = bundle_module.verify

    def verify_then_swap(directory: Path, pin: str | None):  # type: ignore[no-untyped-def]
        checked = real_verify(directory, pin)
        (directory / "fusion.json").write_text('{"names": [], "mean": [], "std": [], "coef": [], "intercept": -99, "branch": []}')
        (directory / weights).write_bytes((MODELS_DIR / "temporal-v1" / weights).read_bytes())
        return checked

    monkeypatch.setattr(bundle_module, "verify", verify_then_swap)
    loaded = load_bundle(copy, backend, None)  # type: ignore[arg-type]
    assert loaded.fusion.names == FEATURE_NAMES and loaded.fusion.intercept != -99
    np.testing.assert_allclose(loaded.appearance(crops_of(4)), expected, rtol=1e-6, atol=1e-6)


def crops_of(n: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 112, 112, 3)).astype(np.uint8)


@pytest.mark.parametrize("name", FILES)
def test_a_manifest_that_does_not_list_a_file_is_refused(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    # A manifest without a file's hash (one older than the file, or an unpinned one with the
    # line of a replaced file removed) must not let that file load unchecked.
    import json

    copy = _copy_with(bundle_dir, tmp_path, {})
    meta = json.loads((copy / "manifest.json").read_text())
    del meta["files"][name]
    (copy / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_bundle(copy, "onnx", None)


class _RunsCodeWhenLoaded:
    """Pickles to a call of os.makedirs(marker): code run by merely unpickling the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.makedirs, (str(self.marker),))


def test_a_torch_file_that_runs_code_on_load_is_refused_unrun(bundle_dir: Path, tmp_path: Path) -> None:
    # A bundle under models/<name>/ needs no pin, so its own manifest vouches for whatever is
    # there: only torch.load's weights_only keeps a .pt file from being a program.
    import io

    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save({"stem.0.weight": _RunsCodeWhenLoaded(marker)}, buf)
    copy = _copy_with(bundle_dir, tmp_path, {"appearance.pt": buf.getvalue()})
    with pytest.raises(ConfigError, match="appearance.pt is not a torch state dict"):
        load_bundle(copy, "torch", None)
    assert not marker.exists(), "loading the bundle ran code from appearance.pt"


def test_a_pin_is_compared_whole(bundle_dir: Path) -> None:
    actual = sha256_file(bundle_dir / "manifest.json")
    near = actual[:-1] + ("0" if actual[-1] != "0" else "1")  # only the last digit differs
    with pytest.raises(ConfigError, match="pinned"):
        load_bundle(bundle_dir, "onnx", near)
    load_bundle(bundle_dir, "onnx", actual)


def test_a_retrained_bundle_under_a_pinned_name_says_how_to_use_it(bundle_dir: Path) -> None:
    from monitor.training.train import use_bundle_hint

    actual = sha256_file(bundle_dir / "manifest.json")
    with pytest.raises(ConfigError, match=f"manifest_sha256: {actual}") as refused:
        load_bundle(bundle_dir, "onnx", "0" * 64)
    assert "git checkout" in str(refused.value)
    hint = use_bundle_hint(MODELS_DIR / "temporal-v1", actual)
    assert f"manifest_sha256: {actual}" in hint and "refuses" in hint
    assert use_bundle_hint(MODELS_DIR / "mine", actual) == "detector: {name: temporal-v1, options: {model: mine}}"
    # The configuration the hint gives loads the bundle.
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, manifest_sha256=actual))
    assert det.fusion.names == FEATURE_NAMES


def test_the_weights_that_run_are_named_once(bundle_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Nothing said which manifest a stream loaded: a bundle retrained in place mixed weights
    # between old and new streams unseen.
    import logging

    from monitor.detect import bundle as bundle_module

    bundle_module._ANNOUNCED.clear()
    with caplog.at_level(logging.INFO, logger="monitor.detect.bundle"):
        for _ in range(3):
            load_bundle(bundle_dir, "onnx", None)
    assert caplog.text.count(f"manifest sha256 {sha256_file(bundle_dir / 'manifest.json')}") == 1


def _copy_with(bundle_dir: Path, tmp_path: Path, changed: dict[str, bytes]) -> Path:
    """A copy of the bundle with some files replaced and its manifest's hashes updated."""
    import hashlib
    import json

    copy = tmp_path / "b"
    copy.mkdir(parents=True)
    for name in (*FILES, "manifest.json"):
        (copy / name).write_bytes(changed.get(name, (bundle_dir / name).read_bytes()))
    meta = json.loads((copy / "manifest.json").read_text())
    for name in changed:
        meta["files"][name] = hashlib.sha256((copy / name).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize(("field", "value"), [("std", 0.0), ("mean", float("nan")), ("intercept", float("nan"))])
def test_a_fusion_that_would_score_nan_is_refused(bundle_dir: Path, tmp_path: Path, field: str, value: float) -> None:
    # A zero std or a NaN made every logit NaN, and the sigmoid's clamp read it as 1.0: an alert
    # on every face (measured: ALERT_OPENED at 1.4 s on a face the shipped bundle scores 0.05).
    import json

    fusion = json.loads((bundle_dir / "fusion.json").read_text())
    if field == "intercept":
        fusion[field] = value
    else:
        fusion[field][2] = value
    copy = _copy_with(bundle_dir, tmp_path, {"fusion.json": json.dumps(fusion).encode()})
    with pytest.raises(ConfigError, match=f"fusion.json is not a fusion.*{field}"):
        load_bundle(copy, "onnx", None)


def test_a_nan_logit_is_never_a_probability(bundle_dir: Path) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    bad = dataclasses.replace(det.fusion, intercept=float("nan"))
    det.fusion = bad
    score = det.fuse(np.zeros(len(FEATURE_NAMES)))
    assert score.probability is None and "invalid_features" in score.reasons


@pytest.mark.parametrize("field", ["mean", "std", "coef", "branch"])
def test_a_fusion_vector_of_the_wrong_shape_is_refused(field: str) -> None:
    # A column of the right length is no vector (it broadcast every window to an n x n matrix),
    # and a branch list one short mislabels the signals.
    import json

    fusion = json.loads((MODELS_DIR / "temporal-v1" / "fusion.json").read_text())
    fusion[field] = fusion[field][:-1] if field == "branch" else [[v] for v in fusion[field]]
    with pytest.raises(ValueError, match=field):
        Fusion.from_json(json.dumps(fusion))


class _TwoLogitsPerCrop(torch.nn.Module):
    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return crop.mean(dim=(2, 3))[:, :2]  # runs on the right input, gives the wrong shape


def test_an_appearance_graph_with_the_wrong_output_shape_is_refused_at_load(bundle_dir: Path, tmp_path: Path) -> None:
    from monitor.training.train import _export_onnx

    (tmp_path / "graphs").mkdir()
    _export_onnx(_TwoLogitsPerCrop(), GeometryNet(GEOMETRY_DIM), tmp_path / "graphs")
    with pytest.raises(ConfigError, match="gave shape"):
        load_bundle(_copy_with(bundle_dir, tmp_path, {"appearance.onnx": (tmp_path / "graphs/appearance.onnx").read_bytes()}), "onnx", None)


def test_onnx_files_that_verify_but_do_not_run_are_config_errors(bundle_dir: Path, tmp_path: Path) -> None:
    # Swapped graphs loaded and then failed every frame (no face ever scored); a corrupt graph
    # with a matching hash raised onnxruntime's InvalidProtobuf out of the load.
    swapped = {"appearance.onnx": (bundle_dir / "geometry.onnx").read_bytes(), "geometry.onnx": (bundle_dir / "appearance.onnx").read_bytes()}
    with pytest.raises(ConfigError, match="do not run on this detector's inputs"):
        load_bundle(_copy_with(bundle_dir, tmp_path / "1", swapped), "onnx", None)
    with pytest.raises(ConfigError, match="an ONNX file cannot be loaded"):
        load_bundle(_copy_with(bundle_dir, tmp_path / "2", {"appearance.onnx": b"not a graph"}), "onnx", None)


async def test_a_service_with_no_streams_checks_its_detector_weights_at_start(tmp_path: Path) -> None:
    # A service taking streams only over WHIP or the API started with a broken bundle and
    # failed only when the first publisher came.
    from monitor.app import runtime
    from monitor.config import load_settings

    settings = load_settings(
        None, data_dir=tmp_path / "data", demo=False,
        detector={"name": "temporal-v1", "options": {"model_dir": str(tmp_path / "no-bundle")}},
    )
    (tmp_path / "no-bundle").mkdir()
    with pytest.raises(ConfigError, match="no-bundle"):
        async with runtime(settings):
            pass


def test_a_bundle_missing_a_weights_file_says_which(bundle_dir: Path, tmp_path: Path) -> None:
    copy = _copy_with(bundle_dir, tmp_path, {})
    (copy / "geometry.pt").unlink()
    with pytest.raises(ConfigError, match=r"geometry.pt is missing"):
        load_bundle(copy, "onnx", None)


def test_the_shipped_bundle_is_pinned_by_name_even_with_a_consistent_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Weights swapped in models/temporal-v1 together with a manifest that matches them load by
    # their own manifest, but not under the shipped name: SHIPPED_MANIFESTS pins that folder.
    import json

    import monitor.detect.temporal as temporal_module
    from monitor.detect.temporal import SHIPPED_MANIFESTS

    shipped = MODELS_DIR / "temporal-v1"
    assert sha256_file(shipped / "manifest.json") == SHIPPED_MANIFESTS["temporal-v1"]  # folder and pin agree
    fusion = json.loads((shipped / "fusion.json").read_text())
    fusion["intercept"] += 3.0
    swapped = _copy_with(shipped, tmp_path, {"fusion.json": json.dumps(fusion).encode()}).rename(tmp_path / "temporal-v1")
    monkeypatch.setattr(temporal_module, "MODELS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="pinned"):
        TemporalDetector(TemporalDetector.Config())
    # Nor reached another way: a path is not a name ("temporal-v1/" and "./temporal-v1" opened
    # the folder unpinned), and the folder keeps its pin through model_dir or a link.
    for spelling in ("temporal-v1/", "./temporal-v1", "../models/temporal-v1", " temporal-v1", "."):
        with pytest.raises(ValueError, match="not a folder name under models/"):
            TemporalDetector.Config(model=spelling)
    (tmp_path / "link").symlink_to(swapped)
    for reached in (swapped, tmp_path / "link", tmp_path / "link" / ".." / "temporal-v1"):
        with pytest.raises(ConfigError, match="pinned"):
            TemporalDetector(TemporalDetector.Config(model_dir=reached))
    assert temporal_module.shipped_pin(tmp_path) is None and temporal_module.shipped_pin(tmp_path / "missing") is None
    # The operator's own pin (what the refusal tells them to set) loads it.
    own = TemporalDetector(TemporalDetector.Config(manifest_sha256=sha256_file(swapped / "manifest.json")))
    assert own.fusion.intercept == pytest.approx(fusion["intercept"])


def test_the_fusion_is_the_clipped_logistic_training_fitted(bundle_dir: Path) -> None:
    # The calibration lives in the intercept and the standardisation: a fusion with a non-zero
    # mean, a std other than 1 and a non-zero intercept, checked against the formula by hand.
    from monitor.detect.temporal import sigmoid

    n = len(FEATURE_NAMES)
    rng = np.random.default_rng(5)
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    det.fusion = f = Fusion(FEATURE_NAMES, rng.normal(0, 1, n), rng.uniform(0.5, 2.0, n), rng.normal(0, 0.5, n), -1.3, FEATURE_BRANCH)
    for x in rng.normal(0, 2, (5, n)):
        z = np.clip((x - f.mean) / f.std, -6, 6)
        assert det.fuse(x).probability == pytest.approx(1 / (1 + np.exp(-(f.intercept + f.coef @ z))), abs=1e-5)
        # The explanation: each branch's own score, and its share of the logit's terms.
        signals = {s.name: s for s in det.fuse(x).signals}
        assert signals["appearance"].value == pytest.approx(sigmoid(x[FEATURE_NAMES.index("app_mean")]), abs=1e-4)
        assert signals["geometry"].value == pytest.approx(sigmoid(x[FEATURE_NAMES.index("geo_logit")]), abs=1e-4)
    # Standardised features are clipped at 6 as in training: an outlier weighs no more than that.
    far, edge = f.mean + 100 * f.std, f.mean + 6 * f.std
    np.testing.assert_allclose(f.terms(far), f.coef * 6)
    assert det.fuse(far).probability == det.fuse(edge).probability


def test_a_window_spanning_too_short_a_time_is_not_judged(bundle_dir: Path) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    assert det.score(window_of(cues(5, dt=0.09))).reasons == ("window_too_short",)  # 0.36 s < min_span_s
    assert det.score(window_of(cues(6, dt=0.09), track=2)).probability is not None  # 0.45 s


def test_the_verdict_is_refreshed_at_least_every_half_second(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The requirement: every window-level branch is recomputed within 0.5 s of stream
    # time, and the appearance pooling on every frame in between.
    import monitor.detect.temporal as temporal_module

    assert TemporalDetector.Config().refresh_s <= 0.5
    full_at: list[float] = []
    real = temporal_module.window_features

    def counted(rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        full_at.append(rows[-1].t)
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(temporal_module, "window_features", counted)
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    rows = cues(40)
    w = window_of(rows[:10])
    det.score(w)
    probabilities, appearance = [], []
    for k, r in enumerate(rows[10:]):
        # The face turns fake from 2.5 s: a strongly positive appearance logit.
        r = dataclasses.replace(r, app_logit=5.0) if k >= 15 else r
        w.push(_Obs(r.t), r)  # type: ignore[arg-type]
        score = det.score(w)
        probabilities.append(score.probability)
        appearance.append({s.name: s.value for s in score.signals}["appearance"])
    assert max(np.diff(full_at)) <= 0.5 + 1e-9 and full_at[-1] >= rows[-1].t - 0.5
    # Every frame after the change moves the score, not only the full refreshes.
    assert all(b > a for a, b in zip(appearance[14:19], appearance[15:20])), appearance[14:20]
    assert probabilities[19] > probabilities[14]


# --- The window's promises (docs/detector.md, the Config descriptions); from a mutation audit ---


def test_the_geometry_branch_reads_the_newest_rows_of_geometry_s() -> None:
    rows = cues(60)  # 6 s at 10 fps
    seen: list[np.ndarray] = []

    def geometry(seq: np.ndarray) -> float:
        seen.append(seq)
        return 0.0

    window_features(rows, geometry, WindowSpec(appearance_s=3.0, geometry_s=1.0))
    newest = [r.geometry for r in rows if rows[-1].t - r.t <= 1.0]
    assert 9 <= len(newest) <= 11
    np.testing.assert_array_equal(seen[-1], np.stack(newest))
    window_features(rows, geometry, WindowSpec(appearance_s=3.0, geometry_s=5.0))  # 50 rows: the newest 32
    np.testing.assert_array_equal(seen[-1], np.stack([r.geometry for r in rows[-32:]]))


def test_appearance_pools_the_last_appearance_s_and_flicker_is_the_mean_absolute_change() -> None:
    rows = [dataclasses.replace(r, app_logit=10.0 if r.t < 3.0 else 0.0) for r in cues(60)]
    assert appearance_features(rows, WindowSpec(appearance_s=2.0)) == (0.0, 0.0, 0.0)
    alternating = [dataclasses.replace(r, app_logit=float(i % 2)) for i, r in enumerate(cues(11))]
    assert appearance_features(alternating, WindowSpec(appearance_s=3.0))[2] == pytest.approx(1.0)


def test_only_the_rows_after_the_last_of_two_gaps_count(bundle_dir: Path) -> None:
    a, b, c = cues(10), cues(10, t0=3.0, seed=2), cues(10, t0=6.0, seed=3)
    assert list(since_gap(a + b + c, 2.0)) == c
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, appearance_s=1.0))  # gaps from 2 s
    alone = det.score(window_of(c, track=1)).probability
    assert alone is not None
    assert det.score(window_of(a + b + c, track=2)).probability == pytest.approx(alone, abs=1e-9)


def window_feature_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[FrameCues], WindowSpec]]:
    """Each full computation of the window features from now on: its rows and spec."""
    import monitor.detect.temporal as temporal_module

    calls: list[tuple[list[FrameCues], WindowSpec]] = []
    real = temporal_module.window_features

    def spy(rows, geometry, spec):  # type: ignore[no-untyped-def]
        calls.append((list(rows), spec))
        return real(rows, geometry, spec)

    monkeypatch.setattr(temporal_module, "window_features", spy)
    return calls


def test_window_branches_are_recomputed_at_most_every_refresh_s(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = window_feature_calls(monkeypatch)
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    rows = cues(40)
    window = window_of(rows[:10])
    for r in rows[10:]:
        window.push(_Obs(r.t), r)  # type: ignore[arg-type]
        det.score(window)
    full_at = [computed[-1].t for computed, _ in calls]
    assert len(full_at) >= 5 and min(np.diff(full_at)) >= det.config.refresh_s - 1e-9, full_at


def test_a_new_window_with_the_same_ids_gets_its_own_window_cues(bundle_dir: Path) -> None:
    # A restarted stream's track 1 starting at the same time must not reuse the old one's cues.
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    first = window_of(cues(20), track=1)
    det.score(first)
    other_rows = [dataclasses.replace(r, geometry=r.geometry + 0.2, colour=r.colour * 0.5) for r in cues(20, seed=7)]
    fresh = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir)).score(window_of(other_rows, track=1))
    assert det.score(window_of(other_rows, track=1)).probability == fresh.probability
    assert first is not None  # kept alive, so its id() cannot be reused


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_window_feature_is_never_a_probability(bundle_dir: Path, bad: float) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    x = np.zeros(len(FEATURE_NAMES))
    x[4] = bad
    score = det.fuse(x)
    assert score.probability is None and score.reasons == ("invalid_features",)


def test_min_observations_and_slow_rates(bundle_dir: Path) -> None:
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    assert det.score(window_of(cues(4, dt=0.2), track=1)).reasons == ("window_too_short",)  # 4 rows over 0.6 s
    assert det.score(window_of(cues(5, dt=0.2), track=2)).probability is not None
    # 0.5 fps (a 2 s step) is a rate the service supports, not a gap, even with a short pool.
    short_pool = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, appearance_s=0.5))
    assert short_pool.score(window_of(cues(5, dt=2.0), track=3)).probability is not None
    # With appearance_s over 2 s, a face unreadable for less than it does not warm up again.
    rows = cues(30) + [dataclasses.replace(r, t=r.t + 5.4) for r in cues(1)]  # 2.5 s unseen
    assert det.score(window_of(rows, track=4)).probability is not None


def test_the_window_options_reach_the_window(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = window_feature_calls(monkeypatch)
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir, geometry_s=1.5, window_s=4.0))
    det.score(window_of(cues(20)))
    assert calls and calls[-1][1].geometry_s == 1.5 and calls[-1][1].appearance_s == 3.0
    assert det.window_s == 4.0  # the analyzer sizes each track's window by it


def test_a_live_tracks_cues_outlast_those_of_tracks_that_ended(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache evicted by first insertion: a face watched since the stream began lost its
    # cached cues to every newer track, ended or not, and was recomputed on every frame.
    import monitor.detect.temporal as temporal_module

    monkeypatch.setattr(temporal_module, "CACHE_WINDOWS", 4)
    det = TemporalDetector(TemporalDetector.Config(model_dir=bundle_dir))
    rows = cues(40)
    live = window_of(rows[:20], track=1)
    det.score(live)  # cached first
    ended = [window_of(rows[:20], track=k) for k in (2, 3, 4, 5)]
    for window in ended[:3]:  # the cache is full
        det.score(window)
    for r in rows[20:25]:  # 0.5 s on: the live track refreshes (recomputed once)
        live.push(_Obs(r.t), r)  # type: ignore[arg-type]
        det.score(live)
    det.score(ended[3])  # a fifth window: the oldest refresh goes, an ended track's
    calls = window_feature_calls(monkeypatch)
    live.push(_Obs(rows[25].t), rows[25])  # type: ignore[arg-type]
    det.score(live)
    assert calls == []  # within refresh_s of its last refresh: served from the cache
