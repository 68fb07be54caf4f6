"""Unit tests for `monitor train`'s checkpoints (monitor.training.train.Checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.training.train import Checkpoints


def test_checkpoints_are_due_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path, every=3)
    assert [s for s in range(1, 8) if ck.due(s, 7)] == [3, 6, 7]
    assert not any(Checkpoints(tmp_path, every=0).due(s, 7) for s in range(1, 8))


def test_state_round_trips_including_the_rng(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path / "run", every=1)
    rng = np.random.default_rng(5)
    rng.integers(10, size=3)
    ck.save("fold1-appearance", {"step": 4, "rng": rng.bit_generator.state, "w": torch.ones(2)})
    state = ck.load("fold1-appearance")
    assert state is not None and state["step"] == 4
    again = np.random.default_rng(0)
    again.bit_generator.state = state["rng"]
    assert again.integers(1000) == rng.integers(1000)
    assert ck.load("fold2-appearance") is None
    assert not list((tmp_path / "run").glob("*.tmp"))  # written atomically
    ck.clear()
    assert not (tmp_path / "run").exists()


def test_an_unreadable_checkpoint_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ck = Checkpoints(tmp_path, every=1)
    (tmp_path / "geometry.pt").write_bytes(b"not a checkpoint")
    assert ck.load("geometry") is None
    assert "ignoring unreadable checkpoint" in caplog.text


def test_a_checkpoint_of_another_net_starts_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from monitor.detect.nets import GeometryNet
    from monitor.training.train import _resume

    ck = Checkpoints(tmp_path, every=1)
    other = GeometryNet(8)  # another input size: another version of the code, say
    ck.save("geometry", {"step": 50, "net": other.state_dict(), "opt": {}, "sched": None, "rng": None})
    net = GeometryNet(16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters())
    assert _resume(ck, "geometry", "geometry", net, opt, None, np.random.default_rng(0)) == 0
    assert "does not fit this net" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched


def test_checkpoints_of_other_training_code_are_not_resumed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The run key held the config and the clips only: a checkpoint left by other code with the
    # same net shapes was resumed silently, mixing two recipes in one model.
    import monitor.training.train as train_module
    from monitor.training.train import TrainConfig, run_key

    cfg = TrainConfig(sources=("tsv:m.tsv",), out_dir=tmp_path)
    before = run_key(cfg, [])
    assert run_key(cfg, []) == before  # stable for the same code
    monkeypatch.setattr(train_module, "code_version", lambda: "0" * 16)
    assert run_key(cfg, []) != before
