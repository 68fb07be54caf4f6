"""A service install has no `train` extra (torch, onnx, tflite): deploy/Dockerfile installs none.

The CLI runs here in processes where importing any of those packages fails as it would if they
were not installed, so these tests hold for the service path in CI, where the venv has them all.
scripts/check_image.sh checks the same on the built image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import TRAINING_PACKAGES
from monitor.sources.demo_media import write_clip

# Installed as sitecustomize, so that every process of the run has it (evaluate's workers are
# spawned): importing a training package fails as if it were not installed, and each attempt is
# logged, so that one the code caught and worked around still shows.
NOT_INSTALLED = """
import importlib.abc, os, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            with open(os.environ["IMPORT_ATTEMPTS"], "a") as log:
                log.write(f"{{os.getpid()}} {{name}}\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
""".format(packages=TRAINING_PACKAGES)


def without_training(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``monitor ARGS...`` without the training packages; ``.attempts`` lists every attempt to
    import one, a line per attempt (the training commands look them up to name what is missing)."""
    site = tmp_path / "not-installed"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NOT_INSTALLED)
    attempts = tmp_path / "import-attempts.txt"
    attempts.write_text("")
    env = {**os.environ, "PYTHONPATH": str(site), "IMPORT_ATTEMPTS": str(attempts)}
    r = subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout, env=env)
    r.attempts = attempts.read_text()  # type: ignore[attr-defined]
    return r


def test_the_training_packages_are_the_train_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split("==")[0].split(">")[0].split("<")[0].strip() for r in reqs}  # noqa: E731
    assert names(project["optional-dependencies"]["train"]) == set(TRAINING_PACKAGES)
    assert not names(project["dependencies"]) & set(TRAINING_PACKAGES)


def test_scan_with_the_default_detector_imports_no_training_package(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=30, width=640, height=480)
    out = tmp_path / "scan.json"
    r = without_training(tmp_path, "scan", str(clip), "-q", "--json", str(out))
    assert r.attempts == "", r.attempts
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(out.read_text())
    assert data["frames_with_face"] >= 25 and 0.0 <= data["score"] <= 1.0  # temporal-v1 scored the face


def test_evaluate_imports_no_training_package(tmp_path: Path) -> None:
    # An operator measures the detector on their own footage with the service install.
    write_clip(tmp_path / "a.mp4", 3.0, fps=10)
    write_clip(tmp_path / "b.mp4", 3.0, fps=10, faces=2)
    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\tfake\n")
    args = ("--root", str(tmp_path), "--json", str(tmp_path / "out.json"), "--workers", "2")
    r = without_training(tmp_path, "evaluate", str(tmp_path / "m.tsv"), *args)
    assert r.attempts == "", r.attempts
    assert "worker process" not in r.stderr, r.stderr  # both workers scanned (no fallback to this process)
    assert r.returncode == 0, r.stdout + r.stderr
    clips = json.loads((tmp_path / "out.json").read_text())["clips"]
    assert [c["path"] for c in clips] == ["a.mp4", "b.mp4"] and all(c["score"] is not None for c in clips)


def test_the_torch_backend_without_torch_is_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 1.0, fps=10, width=320, height=240)
    config = tmp_path / "torch.yaml"
    config.write_text("detector: {name: temporal-v1, options: {backend: torch}}\n")
    r = without_training(tmp_path, "scan", str(clip), "-q", "-c", str(config))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "detector backend 'torch' needs PyTorch" in r.stderr and "scripts/setup.sh" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["train", "sbi"])
def test_training_commands_without_the_extra_exit_2_naming_it(command: str, tmp_path: Path) -> None:
    r = without_training(tmp_path, command, "--help", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"monitor {command} needs torch, onnx, tflite, which this install lacks" in r.stderr and "scripts/setup.sh" in r.stderr
    assert "Traceback" not in r.stderr
