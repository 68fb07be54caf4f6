"""What a benchmark's numbers were measured on: commit, detector weights and machine load.

Results files outlive the code and weights they measured; without this, a file could not say
whether it still describes the shipped detector (a review found one that measured another)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def commit() -> dict[str, Any]:
    """The git commit of the checkout, and whether it had uncommitted changes (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def detector(name: str, model_dir: Path | None = None) -> dict[str, Any]:
    """The detector plugin and, for a weights bundle, the sha256 of its manifest (which pins every file)."""
    out: dict[str, Any] = {"detector": name}
    if name == "temporal-v1":
        manifest = (model_dir or ROOT / "models" / "temporal-v1") / "manifest.json"
        out["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return out


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
