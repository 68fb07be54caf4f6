"""Evidence of each alert, kept on this machine: what the monitor saw when it raised it.

When an alert opens, the monitor saves the frame it was raised on (scaled down, the face
boxed), the face's last aligned crops a fraction of a second apart, and the scores and reasons
behind it, to ``data_dir/evidence/<alert_id>/``. An operator (the dashboard, `GET
/api/alerts/{alert_id}/evidence`) can then judge the alert with their own eyes: the detector's
probability alone does not say what it looked at. Nothing leaves the machine; evidence is
pruned by age at start-up (``alerts.retention_days``) and can be turned off
(``alerts.evidence: false``).

A bundle is written to a temporary folder and renamed into place, so a reader never sees half
of one, by a writer thread of its own: a slow or stuck disk must not hold the analysis thread,
whose alert.opened would otherwise be published after the close a stall declares meanwhile.
The analysis thread only queues the bundle (the frame already scaled down); the event names the
bundle's path once it is queued, and the API answers 404 until it is written, or for good if the
write failed (a full disk: logged and counted). Analysis never waits, and the alert is raised
all the same.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monitor.alerts.eventlog import jsonable
from monitor.types import AlertData

logger = logging.getLogger(__name__)

ALERT_ID = re.compile(r"[0-9a-f]{32}")  # the policy's uuid4().hex
FILE_NAME = re.compile(r"(frame|face-[0-9])\.jpg")
MANIFEST = "evidence.json"
FRAME_MAX_SIDE = 640  # enough to see who and where; a 1080p frame would be 10x the bytes
JPEG_QUALITY = 85
BOX_COLOUR = (255, 64, 64)  # RGB


def evidence_url(alert_id: str) -> str:
    """The API path of an alert's evidence (relative to the service's root)."""
    return f"/api/alerts/{alert_id}/evidence"


QUEUE_MAX = 32  # bundles waiting for the writer; beyond, new ones are dropped (and counted)


class EvidenceStore:
    def __init__(
        self,
        root: Path,
        on_result: Callable[[bool], None] | None = None,
        *,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.root = root
        self._on_result = on_result  # called with True (written) or False (failed, dropped)
        # Bounds on the disk evidence takes: at most max_bytes (the oldest bundles go first), and
        # none written while the disk has less than min_free_bytes free (the event log needs it).
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._sizes: dict[str, tuple[float, int]] | None = None  # bundle -> (saved at, bytes), once read
        self._sizes_lock = threading.Lock()  # not _lock: submit() takes that on the analysis thread
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_MAX)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(
        self,
        stream_id: str,
        alert: AlertData,
        t: float,
        frame_rgb: np.ndarray,
        bbox: tuple[float, float, float, float] | None,
        crops: Sequence[tuple[float, np.ndarray]],
    ) -> bool:
        """Queue the bundle of an alert for the writer thread; False (logged, counted) when the
        writer is this far behind. Called on the analysis thread: only the frame's downscale
        happens here (the queued copy is small; the caller's frame is not kept)."""
        if not ALERT_ID.fullmatch(alert.alert_id):
            raise ValueError(f"not an alert id: {alert.alert_id!r}")
        if self._closed:  # shutting down: a late alert's bundle would wait behind the stop for ever
            logger.warning("stream %s: evidence of alert %s not saved: the store is closed", stream_id, alert.alert_id)
            self._report(False)
            return False
        shown, scale = _scaled(frame_rgb)
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="evidence-writer", daemon=True)
                self._writer.start()
        try:
            self._queue.put_nowait((stream_id, alert, t, shown, scale, frame_rgb.shape[:2], bbox, tuple(crops)))
        except queue.Full:
            logger.warning("stream %s: evidence of alert %s dropped: %d bundles are waiting to be written", stream_id, alert.alert_id, QUEUE_MAX)
            self._report(False)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued bundle is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` in all), then stop the writer. Later
        submits are refused (and counted as failed)."""
        self._closed = True
        if self._writer is None or not self._writer.is_alive():
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return
        self._writer.join(max(0.0, deadline - time.monotonic()))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                stream_id, alert, t, shown, scale, (height, width), bbox, crops = item
                self._report(self._write(stream_id, alert, t, shown, scale, width, height, bbox, crops))
            except Exception:  # never let one bundle stop the writer
                logger.exception("evidence writer failed")
                self._report(False)
            finally:
                self._queue.task_done()

    def _report(self, ok: bool) -> None:
        if self._on_result is not None:
            self._on_result(ok)

    def folder(self, alert_id: str) -> Path | None:
        """The saved bundle of ``alert_id``, or None (also for anything that is not an alert id)."""
        if not ALERT_ID.fullmatch(alert_id):
            return None
        path = self.root / alert_id
        return path if (path / MANIFEST).is_file() else None

    def _write(
        self, stream_id: str, alert: AlertData, t: float, shown: np.ndarray, scale: float, width: int, height: int,
        bbox: tuple[float, float, float, float] | None, crops: Sequence[tuple[float, np.ndarray]],
    ) -> bool:
        final = self.root / alert.alert_id
        tmp = self.root / f".{alert.alert_id}.tmp"
        try:
            # Faces: readable by the service's user only (0700 folders, 0600 files).
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            free = shutil.disk_usage(self.root).free
            if free < self.min_free_bytes:
                logger.warning(
                    "stream %s: evidence of alert %s not saved: %d MiB free on the data_dir's disk, under "
                    "alerts.evidence_min_free_mib (%d)", stream_id, alert.alert_id, free >> 20, self.min_free_bytes >> 20,
                )
                return False
            tmp.mkdir(exist_ok=True, mode=0o700)
            if bbox is not None:  # drawn on the writer's own scaled copy
                x0, y0, x1, y1 = (int(round(v * scale)) for v in bbox)
                cv2.rectangle(shown, (x0, y0), (x1, y1), BOX_COLOUR, max(1, round(2 * max(shown.shape[:2]) / 640)))
            _write_jpeg(tmp / "frame.jpg", shown)
            faces = []
            for k, (crop_t, crop) in enumerate(crops[-10:]):  # face-0 .. face-9: what FILE_NAME serves
                name = f"face-{k}.jpg"
                _write_jpeg(tmp / name, crop)
                faces.append({"file": name, "t": round(crop_t, 3)})
            manifest = {
                "alert_id": alert.alert_id,
                "stream_id": stream_id,
                "track_id": alert.track_id,
                "t": round(t, 3),
                "saved_at": time.time(),
                "alert": jsonable(alert),
                "frame": {"file": "frame.jpg", "width": width, "height": height, "scale": round(scale, 4),
                          "bbox": None if bbox is None else [round(float(v), 1) for v in bbox]},
                "faces": faces,
            }
            _write_private(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
            if final.exists():  # the same alert saved twice: keep the first
                shutil.rmtree(tmp, ignore_errors=True)
                return True
            _fsync_dir(tmp)  # the files' names, before the folder becomes visible under its final one
            tmp.rename(final)
            _fsync_dir(self.root)
            self._account(alert.alert_id, final)
            return True
        except (OSError, cv2.error, ValueError) as exc:
            logger.warning("stream %s: could not save the evidence of alert %s: %s", stream_id, alert.alert_id, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return False

    def _account(self, alert_id: str, folder: Path) -> None:
        """Count a new bundle and, past ``max_bytes``, remove the oldest until under 90% of it."""
        if self.max_bytes is None:
            return
        with self._sizes_lock:
            if self._sizes is None:
                self._sizes = {p.name: _bundle_size(p) for p in self.root.iterdir() if ALERT_ID.fullmatch(p.name)}
            self._sizes[alert_id] = _bundle_size(folder)
            total = sum(size for _, size in self._sizes.values())
            if total <= self.max_bytes:
                return
            removed = 0
            for name, (_, size) in sorted(self._sizes.items(), key=lambda kv: kv[1][0]):
                if total <= 0.9 * self.max_bytes or name == alert_id:
                    break
                shutil.rmtree(self.root / name, ignore_errors=True)
                del self._sizes[name]
                total -= size
                removed += 1
        logger.warning(
            "evidence over alerts.evidence_max_mib (%d MiB): removed the %d oldest bundles (their alerts stay in the event log)",
            self.max_bytes >> 20, removed,
        )

    def prune(self, older_than: float, partial_before: float | None = None) -> int:
        """Remove bundles saved before the wall-clock time ``older_than`` and half-written ones
        left by a crash (only those last changed before ``partial_before``, when given: while the
        service runs, the writer may be filling one); returns how many bundles were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for path in self.root.iterdir():
            try:
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    if partial_before is None or path.stat().st_mtime < partial_before:
                        shutil.rmtree(path, ignore_errors=True)
                elif ALERT_ID.fullmatch(path.name) and _saved_at(path) < older_than:
                    shutil.rmtree(path)
                    removed += 1
                    with self._sizes_lock:
                        if self._sizes is not None:
                            self._sizes.pop(path.name, None)
            except OSError as exc:
                logger.warning("could not prune evidence %s: %s", path, exc)
        return removed


def _saved_at(folder: Path) -> float:
    """When a bundle was saved: its manifest's time, or the folder's where the manifest is gone
    (deleted by hand, a disk error): such a folder was never pruned, only warned about at every
    prune, and its bytes counted against no cap."""
    try:
        return (folder / MANIFEST).stat().st_mtime
    except FileNotFoundError:
        return folder.stat().st_mtime


def _bundle_size(folder: Path) -> tuple[float, int]:
    """(saved at, bytes) of a bundle folder; (0, 0) if it cannot be read."""
    try:
        files = [f.stat() for f in folder.iterdir()]
        return _saved_at(folder), sum(st.st_size for st in files)
    except OSError:
        return 0.0, 0


def _scaled(frame_rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The frame at most ``FRAME_MAX_SIDE`` on its longer side (a copy), and the scale."""
    height, width = frame_rgb.shape[:2]
    scale = min(1.0, FRAME_MAX_SIDE / max(height, width, 1))
    if scale == 1.0:
        return np.array(frame_rgb, copy=True), scale
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(cv2.resize(frame_rgb, size, interpolation=cv2.INTER_AREA)), scale


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for {path.name}")
    _write_private(path, data.tobytes())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only the service's user can read (mode 0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        # On disk before the bundle is renamed into place: after a power cut the API served
        # empty or partial files from a bundle that looked complete.
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make ``folder``'s entries (new files, a rename into it) durable; where directories
    cannot be opened for that (not POSIX), skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

