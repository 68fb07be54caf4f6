"""The weight bundle on disk (models/<name>/): sha256-verified files, the fusion constants, and the two inference backends."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from monitor.errors import ConfigError

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MANIFEST = "manifest.json"
# The files every bundle holds; manifest.json maps each to its sha256.
FILES = ("appearance.onnx", "appearance.pt", "geometry.onnx", "geometry.pt", "fusion.json")

Backend = Literal["onnx", "torch"]
# Side of the aligned crop the appearance CNN reads (monitor.faces.align framing). Defined here,
# not in monitor.detect.nets, so that the service's ONNX path never imports torch: torch is the
# `train` extra, and a service install (the container image) has none.
APPEARANCE_INPUT = 112
# torch's Linux wheel on PyPI is the multi-GB CUDA build: the hint takes the CPU one.
TRAIN_EXTRA_HINT = (
    "install the `train` extra in a checkout: scripts/setup.sh --train does, or "
    "pip install -e '.[train]' --extra-index-url https://download.pytorch.org/whl/cpu"
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, extra: dict[str, object] | None = None) -> str:
    """Hash every bundle file into manifest.json; returns the manifest's own sha256."""
    manifest = {"files": {name: sha256_file(directory / name) for name in FILES}, **(extra or {})}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return sha256_file(path)


def verify(directory: Path, manifest_sha256: str | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Refuse a bundle whose manifest or files do not match their sha256 (a partial copy,
    a stale checkout, tampering). ``manifest_sha256`` pins the manifest itself.

    Returns the manifest and the bytes of every file as hashed: the loaders use those bytes,
    so what runs is what was checked, even if the folder changes after the check."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ConfigError(f"detector weights: {path} is missing (run `monitor train` or restore models/)")
    raw = path.read_bytes()
    actual = actual_manifest = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None and actual != manifest_sha256:
        raise ConfigError(
            f"detector weights: {path} sha256 {actual} does not match the pinned {manifest_sha256}. "
            f"If you retrained into this folder, pin your bundle instead (detector options: "
            f"manifest_sha256: {actual}) or train with --out into a folder of its own; to go back "
            f"to the shipped weights, restore the folder (git checkout -- {directory})"
        )
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("`files` is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:  # a traceback before, naming no file
        raise ConfigError(f"detector weights: {path} is not a bundle manifest ({type(exc).__name__}: {exc})") from None
    contents: dict[str, bytes] = {}
    for name in FILES:
        expected = files.get(name)
        data = (directory / name).read_bytes() if (directory / name).is_file() else None
        if data is None:
            raise ConfigError(f"detector weights: {directory / name} is missing (a partial copy of the bundle?)")
        actual = hashlib.sha256(data).hexdigest()
        if expected is None or actual != expected:
            raise ConfigError(f"detector weights: {directory / name} sha256 {actual} != manifest {expected}")
        contents[name] = data
    # Which weights run, said once per bundle and manifest: an unpinned bundle retrained in place
    # gives streams added later other weights than the running ones, and this is how to tell.
    key = (str(directory.resolve()), actual_manifest)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        logger.info("detector weights %s verified: manifest sha256 %s", directory, actual_manifest)
    return manifest, contents


_ANNOUNCED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Fusion:
    """Logistic fusion of window features, then a calibration shift (see models/<name>.md)."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float
    branch: tuple[str, ...]  # which branch each feature belongs to, for explanations

    @classmethod
    def load(cls, path: Path) -> Fusion:
        return cls.from_json(path.read_bytes())

    @classmethod
    def from_json(cls, text: str | bytes) -> Fusion:
        d = json.loads(text)
        fusion = cls(
            names=tuple(d["names"]),
            mean=np.array(d["mean"], np.float64),
            std=np.array(d["std"], np.float64),
            coef=np.array(d["coef"], np.float64),
            intercept=float(d["intercept"]),
            branch=tuple(d["branch"]),
        )
        # Checked here: a wrong length loaded fine and then failed every frame (a broadcast error).
        n = len(fusion.names)
        for name in ("mean", "std", "coef", "branch"):
            got = getattr(fusion, name)
            if len(got) != n or (name != "branch" and np.ndim(got) != 1):
                raise ValueError(f"fusion `{name}` has {len(got)} entries for {n} features")
        # A zero std or a NaN made every logit NaN, which the clamp read as probability 1.0: an
        # alert on every face.
        for name in ("mean", "std", "coef"):
            if not np.isfinite(getattr(fusion, name)).all():
                raise ValueError(f"fusion `{name}` holds a value that is not a finite number")
        if not math.isfinite(fusion.intercept):
            raise ValueError("fusion `intercept` is not a finite number")
        if (fusion.std <= 0).any():
            raise ValueError("fusion `std` must be above 0 for every feature")
        return fusion

    def to_json(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "branch": list(self.branch),
        }

    def terms(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the logit (the logit is their sum plus the intercept)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        return self.coef * np.clip(z, -6.0, 6.0)


class AppearanceModel(Protocol):
    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) uint8 RGB crops -> (N,) fake logits."""
        ...


class GeometryModel(Protocol):
    def __call__(self, seq: np.ndarray) -> float:
        """(T, D) float32 geometry sequence -> fake logit."""
        ...


class _OnnxAppearance:
    def __init__(self, model: bytes) -> None:
        self._sess = _onnx_session(model)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        return np.asarray(self._sess.run(["logit"], {"crop": x})[0], np.float32)


class _OnnxGeometry:
    def __init__(self, model: bytes) -> None:
        self._sess = _onnx_session(model)

    def __call__(self, seq: np.ndarray) -> float:
        x = np.ascontiguousarray(seq[None], dtype=np.float32)
        return float(self._sess.run(["logit"], {"seq": x})[0][0])


def _onnx_session(model: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One core per stream: the service scales across streams, not within one face.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _torch_state(path: Path, state: bytes) -> tuple[dict[str, Any], int]:
    """The state dict in ``state`` (the file at ``path``) and its number of ensemble members
    (0: a single net), read from the weights themselves: the ONNX path needs no count, and a
    manifest without one loaded there but failed here."""
    import torch

    try:
        weights = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a file that is not its format
        raise ConfigError(f"detector weights: {path} is not a torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(weights, dict) or not weights or not all(isinstance(k, str) and hasattr(v, "shape") for k, v in weights.items()):
        raise ConfigError(f"detector weights: {path} is not a torch state dict")
    members = {k.split(".")[1] for k in weights if k.startswith("members.")}
    return weights, len(members)


def _load_net(path: Path, net: Any, weights: dict[str, Any]) -> Any:
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors: torch's first reason
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ConfigError(f"detector weights: {path} does not fit the network ({' '.join(lines[:2])[:400]})") from None
    return net.eval()


class _TorchAppearance:
    def __init__(self, path: Path, state: bytes) -> None:
        import torch

        from monitor.detect.nets import AppearanceEnsemble, AppearanceNet

        self._torch = torch
        weights, members = _torch_state(path, state)
        stem = weights.get("members.0.stem.0.weight" if members else "stem.0.weight")
        width = int(stem.shape[0]) if stem is not None else 24  # the first convolution's outputs
        self._net = _load_net(path, AppearanceEnsemble(width, members) if members else AppearanceNet(width), weights)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.array(crops, dtype=np.float32)).permute(0, 3, 1, 2)
            return self._net(x)[0].numpy().astype(np.float32)


class _TorchGeometry:
    def __init__(self, path: Path, state: bytes, in_dim: int) -> None:
        import torch

        from monitor.detect.nets import GeometryEnsemble, GeometryNet

        self._torch = torch
        weights, members = _torch_state(path, state)
        self._net = _load_net(path, GeometryEnsemble(in_dim, members) if members else GeometryNet(in_dim), weights)

    def __call__(self, seq: np.ndarray) -> float:
        torch = self._torch
        with torch.inference_mode():
            return float(self._net(torch.from_numpy(np.ascontiguousarray(seq[None], dtype=np.float32)))[0])


@dataclass(frozen=True)
class Bundle:
    directory: Path
    appearance: AppearanceModel
    geometry: GeometryModel
    fusion: Fusion
    meta: dict[str, object]


def load_bundle(directory: Path, backend: Backend, manifest_sha256: str | None) -> Bundle:
    """Verify and load a bundle; nothing is fetched from the network."""
    from monitor.detect.features import GEOMETRY_DIM

    meta, files = verify(directory, manifest_sha256)
    if backend == "onnx":
        try:
            app: AppearanceModel = _OnnxAppearance(files["appearance.onnx"])
            geo: GeometryModel = _OnnxGeometry(files["geometry.onnx"])
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail...: a file that is not the net
            raise ConfigError(f"detector weights in {directory}: an ONNX file cannot be loaded ({type(exc).__name__}: {exc})") from None
    else:
        try:
            import torch
        except ImportError as exc:
            raise ConfigError(f"detector backend 'torch' needs PyTorch, which this install lacks ({exc}): use backend 'onnx', "
                              f"or {TRAIN_EXTRA_HINT}") from None
        torch.set_num_threads(1)
        app = _TorchAppearance(directory / "appearance.pt", files["appearance.pt"])
        geo = _TorchGeometry(directory / "geometry.pt", files["geometry.pt"], GEOMETRY_DIM)
    try:
        fusion = Fusion.from_json(files["fusion.json"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"detector weights: {directory / 'fusion.json'} is not a fusion ({type(exc).__name__}: {exc})") from None
    _warm_up(directory, app, geo, GEOMETRY_DIM)
    return Bundle(directory, app, geo, fusion, meta)


def _warm_up(directory: Path, app: AppearanceModel, geo: GeometryModel, geometry_dim: int) -> None:
    """One call of each net on zeros, at load: two graphs swapped, or an input of the wrong size,
    loaded fine and then failed every frame, so no face was ever scored."""
    try:
        logits = app(np.zeros((2, APPEARANCE_INPUT, APPEARANCE_INPUT, 3), np.uint8))
        if np.shape(logits) != (2,):
            raise ValueError(f"the appearance net gave shape {np.shape(logits)} for 2 crops, not (2,)")
        geo(np.zeros((8, geometry_dim), np.float32))
    except Exception as exc:
        raise ConfigError(f"detector weights in {directory} do not run on this detector's inputs ({type(exc).__name__}: {exc})") from None
