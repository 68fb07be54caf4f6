"""Unit tests for the fusion's calibration in `monitor train` (fit_fusion, fold_margin)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detect.temporal import FEATURE_NAMES
from monitor.training.train import TrainConfig, fit_fusion, fold_margin

FOLD = 1_000_000  # run_training's fold offset in clip ids


def test_the_margin_is_how_far_one_fold_overshot_the_others() -> None:
    # Genuine clip ids are 3k (+ FOLD * fold); values are each clip's 90th-percentile logit.
    assert fold_margin({0: 1.0, 3: 2.0, FOLD: 3.0, FOLD + 3: 0.5}) == pytest.approx(1.0)
    assert fold_margin({0: 1.0, FOLD: 2.0, 2 * FOLD: 5.0, 2 * FOLD + 3: -4.0}) == pytest.approx(3.0)
    assert fold_margin({0: 2.0, FOLD: 2.0}) == 0.0
    assert fold_margin({0: -3.0, 3: -1.0, FOLD: -2.5}) == pytest.approx(1.5)


def test_one_fold_gives_no_margin(caplog: pytest.LogCaptureFixture) -> None:
    assert fold_margin({0: 4.0, 3: -1.0}) == 0.0
    assert "no margin" in caplog.text


def windows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two folds of clips, 20 windows each: genuine ones (3k) and self-blends (3k + 1)."""
    xs, ys, ids = [], [], []
    for fold in range(2):
        for k in range(6):
            for fake in (0, 1):
                # Fold 1's genuine clips sit higher, as unseen sources may.
                offset = 1.5 * fake + (0.8 if fold == 1 and not fake else 0.0)
                xs.append(rng.normal(offset, 1.0, size=(20, len(FEATURE_NAMES))))
                ys.append(np.full(20, float(fake)))
                ids.append(np.full(20, FOLD * fold + 3 * k + fake))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)


def test_the_unseen_margin_lowers_the_intercept_by_exactly_the_margin() -> None:
    x, y, ids = windows(np.random.default_rng(3))
    cfg = TrainConfig(sources=("tsv:m.tsv",))
    plain, plain_stats = fit_fusion(x, y, ids, cfg)
    wide, wide_stats = fit_fusion(x, y, ids, cfg.model_copy(update={"unseen_margin": True}))
    margin = wide_stats["unseen_margin"]
    assert "unseen_margin" not in plain_stats  # so that manifests without it rebuild unchanged
    logit = (np.clip((x - plain.mean) / plain.std, -6, 6) @ plain.coef) + plain.intercept - plain_stats["calibration_shift"]
    p90 = {int(c): float(np.percentile(logit[ids == c], 90)) for c in np.unique(ids[y == 0])}
    assert margin == pytest.approx(fold_margin(p90)) and margin > 0.1
    assert plain_stats["calibration_shift"] < 0  # the calibration bound, so the margin adds to it
    assert wide.intercept == pytest.approx(plain.intercept - margin)
    assert np.array_equal(wide.coef, plain.coef)
    assert wide_stats["oof_genuine_exceed"] <= plain_stats["oof_genuine_exceed"]
