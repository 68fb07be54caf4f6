"""A service install has no `train` extra (torch, onnx, tflite): deploy/Dockerfile installs none.

The CLI runs here in a process where importing any of those packages fails as it would if they
were not installed, so these tests hold for the service path in CI, where the venv has them all.
scripts/check_image.sh checks the same on the built image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import TRAINING_PACKAGES
from monitor.sources.demo_media import write_clip

# Runs `monitor ARGS...` with the training packages unimportable; every attempt to import one is
# printed at exit, so an attempt that the code caught and worked around still shows.
WITHOUT_TRAINING = """
import atexit, importlib.abc, sys
attempts = []
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: print("import attempts:", sorted(set(attempts)), file=sys.stderr))
from monitor.cli import main
sys.argv[0] = "monitor"
main()
""".format(packages=TRAINING_PACKAGES)


def without_training(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TRAINING, *args], capture_output=True, text=True, timeout=timeout)


def test_the_training_packages_are_the_train_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split("==")[0].split(">")[0].split("<")[0].strip() for r in reqs}  # noqa: E731
    assert names(project["optional-dependencies"]["train"]) == set(TRAINING_PACKAGES)
    assert not names(project["dependencies"]) & set(TRAINING_PACKAGES)


def test_scan_with_the_default_detector_imports_no_training_package(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 3.0, fps=30, width=640, height=480)
    out = tmp_path / "scan.json"
    r = without_training("scan", str(clip), "-q", "--json", str(out))
    assert "import attempts: []" in r.stderr, r.stderr
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(out.read_text())
    assert data["frames_with_face"] >= 25 and 0.0 <= data["score"] <= 1.0  # temporal-v1 scored the face


def test_evaluate_imports_no_training_package(tmp_path: Path) -> None:
    # An operator measures the detector on their own footage with the service install.
    write_clip(tmp_path / "a.mp4", 3.0, fps=10)
    write_clip(tmp_path / "b.mp4", 3.0, fps=10, faces=2)
    (tmp_path / "m.tsv").write_text("path\tlabel\na.mp4\treal\nb.mp4\tfake\n")
    r = without_training("evaluate", str(tmp_path / "m.tsv"), "--root", str(tmp_path), "--json", str(tmp_path / "out.json"))
    assert "import attempts: []" in r.stderr, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    clips = json.loads((tmp_path / "out.json").read_text())["clips"]
    assert [c["path"] for c in clips] == ["a.mp4", "b.mp4"] and all(c["score"] is not None for c in clips)


def test_the_torch_backend_without_torch_is_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "face.mp4", 1.0, fps=10, width=320, height=240)
    config = tmp_path / "torch.yaml"
    config.write_text("detector: {name: temporal-v1, options: {backend: torch}}\n")
    r = without_training("scan", str(clip), "-q", "-c", str(config))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "detector backend 'torch' needs PyTorch" in r.stderr and "pip install 'deepfake-monitor[train]'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["train", "sbi"])
def test_training_commands_without_the_extra_exit_2_naming_it(command: str) -> None:
    r = without_training(command, "--help", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"monitor {command} needs torch" in r.stderr and "pip install 'deepfake-monitor[train]'" in r.stderr
    assert "Traceback" not in r.stderr
