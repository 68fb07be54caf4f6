"""`monitor evaluate`: every clip of a manifest through the service's own offline scan, then video-level metrics."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monitor.config import Settings
from monitor.errors import InputError
from monitor.plugins import Detector

if TYPE_CHECKING:
    from monitor.training.degrade import Degradation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipResult:
    path: str
    label: str  # real | fake | attack
    group: str  # first path component
    method: str
    score: float | None  # video level, higher = more fake
    verdict: str
    time_to_detect_s: float | None  # first alert after the first face; None if never
    alerts_opened: int
    duration_s: float
    first_face_t: float | None
    reasons: tuple[str, ...]
    source: str = ""  # the --source it came from ("" for a manifest: one source)

    @property
    def is_fake(self) -> bool:
        return self.label != "real"


@dataclass(frozen=True)
class Metrics:
    """Video-level metrics of one set of clips. ``auc`` is None when a class is missing."""

    name: str
    n_genuine: int
    n_fake: int
    auc: float | None
    eer: float | None
    accuracy: float | None  # at the alert threshold on the video score
    mean_score_genuine: float | None
    mean_score_fake: float | None
    note: str = ""
    auc_ci95: tuple[float, float] | None = None  # stratified bootstrap; None below AUC_CI_MIN_PER_CLASS


@dataclass(frozen=True)
class EvalReport:
    manifest: str
    degrade: str | None
    threshold: float
    clips: tuple[ClipResult, ...]
    overall: Metrics
    groups: tuple[Metrics, ...]
    time_to_detect_median_s: float | None
    time_to_detect_p90_s: float | None
    fakes_detected: int
    false_alarms_per_hour: float | None
    genuine_hours: float
    unjudged: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())
    alerted_without_score: tuple[str, ...] = field(default=())  # alerted on too few scored points for a video score

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["clips"] = [asdict(c) for c in self.clips]
        return d


def roc_auc(y: Sequence[bool], s: Sequence[float]) -> float | None:
    """Mann-Whitney AUC (ties count half); None without both classes."""
    ya, sa = np.asarray(y, bool), np.asarray(s, float)
    pos, neg = sa[ya], sa[~ya]
    if len(pos) == 0 or len(neg) == 0:
        return None
    # From ranks: comparing every pair took fakes x genuine memory (445 MB for 40k x 10k).
    return float(_auc_statistic(pos, neg))


# Below this many clips in either class a bootstrap interval is degenerate (3 fakes above 4
# genuine clips resample to [1, 1]), which would read as certainty; none is reported.
AUC_CI_MIN_PER_CLASS = 5


def _auc_statistic(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney AUC from mid-ranks (ties count half), vectorised over resamples."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg], axis=axis), axis=axis)
    n_pos, n_neg = pos.shape[axis], neg.shape[axis]
    rank_sum = np.take(ranks, np.arange(n_pos), axis=axis).sum(axis=axis)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_interval(y: Sequence[bool], s: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the AUC from a stratified bootstrap (fakes and genuine clips
    resampled separately, as the field reports it for video-level AUC); seeded, so a report
    is reproducible. None when either class has fewer than AUC_CI_MIN_PER_CLASS clips. It
    describes the resampling of these clips only: a perfectly separated set gives (1, 1), which
    says nothing about footage unlike it."""
    from scipy.stats import bootstrap

    ya, sa = np.asarray(y, bool), np.asarray(s, float)
    pos, neg = sa[ya], sa[~ya]
    if min(len(pos), len(neg)) < AUC_CI_MIN_PER_CLASS:
        return None
    batch = max(1, 10_000_000 // (len(pos) + len(neg)))  # bounds memory on large manifests
    res = bootstrap((pos, neg), _auc_statistic, vectorized=True, paired=False, n_resamples=resamples, batch=batch,
                    method="percentile", confidence_level=confidence, random_state=seed)
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def equal_error_rate(y: Sequence[bool], s: Sequence[float]) -> float | None:
    """The rate where false accepts of genuine clips equal missed fakes, on the ROC curve.

    Tied scores move both rates at once, so the curve between two thresholds is a straight
    line (as the AUC counts ties); the crossing is interpolated on it. Taking the best discrete
    threshold instead overstated the EER with ties (1.0 for one genuine and one fake tied)."""
    from sklearn.metrics import roc_curve

    ya, sa = np.asarray(y, bool), np.asarray(s, float)
    if ya.all() or not ya.any():
        return None
    far, tpr, _ = roc_curve(ya, sa, drop_intermediate=False)  # far rises from 0 to 1
    frr = 1.0 - tpr
    gap = far - frr  # from -1 (reject all) up to 1 (accept all)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(far[i])
    w = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def metrics(name: str, clips: Sequence[ClipResult], threshold: float, note: str = "") -> Metrics:
    judged = [c for c in clips if c.score is not None]
    y = [c.is_fake for c in judged]
    s = [float(c.score) for c in judged if c.score is not None]
    g = [c.score for c in judged if not c.is_fake and c.score is not None]
    f = [c.score for c in judged if c.is_fake and c.score is not None]
    acc = float(np.mean([(sc >= threshold) == yy for sc, yy in zip(s, y)])) if judged else None
    return Metrics(
        name, len(g), len(f), roc_auc(y, s), equal_error_rate(y, s), acc,
        float(np.mean(g)) if g else None, float(np.mean(f)) if f else None, note, auc_interval(y, s),
    )


SAME_SOURCE = "fakes vs genuine of the same source"


def group_metrics(results: Sequence[ClipResult], threshold: float) -> list[Metrics]:
    """Per first path component and per ``method``. A group with only fakes is scored against
    every genuine clip of the manifest (the usual per-manipulation AUC), or, when several
    sources are evaluated together, of its own sources where they have any (FF++'s Deepfakes
    against Celeb-DF's genuine clips measured the datasets, not the method); the note says
    which. Its accuracy is over its own clips, the share of them caught (None if none was
    judged): over the pooled set it would mostly measure the other groups' genuine clips."""
    genuine = [c for c in results if not c.is_fake]
    out: list[Metrics] = []
    for kind, key in (("folder", lambda c: c.group), ("method", lambda c: c.method)):
        names = sorted({key(c) for c in results if key(c)})
        for name in names:
            members = [c for c in results if key(c) == name]
            if all(c.is_fake for c in members):
                sources = {c.source for c in members}
                own = [c for c in genuine if c.source in sources]
                if own and len(own) < len(genuine):
                    pooled = metrics(f"{kind}:{name}", members + own, threshold, SAME_SOURCE)
                else:
                    pooled = metrics(f"{kind}:{name}", members + genuine, threshold, "fakes vs all genuine")
                out.append(replace(pooled, accuracy=metrics(pooled.name, members, threshold).accuracy))
            else:
                out.append(metrics(f"{kind}:{name}", members, threshold))
    return out


def read_manifest(manifest: Path) -> list[dict[str, str]]:
    from monitor.training.datasets import manifest_rows

    rows = manifest_rows(manifest)
    for line, r in rows:
        if r["label"].strip().lower() not in ("real", "fake", "attack"):
            raise InputError(f"{manifest}:{line}: label {r['label']!r} is not real, fake or attack")
    return [r for _, r in rows]


@dataclass(frozen=True)
class _Job:
    """One manifest row to scan; picklable, for worker processes."""

    index: int
    rel: str
    path: Path
    label: str
    method: str
    degraded_to: Path | None  # where the degraded copy goes, when degrading
    group: str = ""  # the "folder" group: a manifest path's first component, or the source's name
    source: str = ""  # the --source spec it came from ("" for a manifest)

    def failed(self, reason: str) -> ClipResult:
        return ClipResult(self.rel, self.label, self.group, self.method, None, "error", None, 0, 0.0, None, (reason,), self.source)


def manifest_folder(rel: str) -> str:
    """A manifest path's group: its first path component, "." for a file at the top (which was
    in no folder group at all: its clips counted only overall and by method)."""
    return rel.split("/")[0] if "/" in rel else "."


def source_name(spec: str) -> str:
    """A dataset source's group in reports: its kind and, where it names one, its split
    (``ffpp:test``, ``celebdf:test``, ``dfdc``, ``real``), without the path."""
    from monitor.training.datasets import DEFAULT_SPLIT

    kind, _, rest = spec.partition(":")
    parts = rest.split(":")
    split = parts[1] if kind in DEFAULT_SPLIT and len(parts) > 1 and parts[1] else DEFAULT_SPLIT.get(kind)
    return f"{kind}:{split}" if split else kind


def source_rows(specs: Sequence[str]) -> list[tuple[str, Path, str, str, str, str]]:
    """(rel, path, label, method, group, source spec) of every clip of ``specs`` (``ffpp:``, ``celebdf:``,
    ``dfdc:``, ``real:``, ``tsv:``; see ``datasets.read_source``), as `monitor train` reads them;
    the same file twice is an error."""
    from monitor.training.datasets import DEFAULT_SPLIT, read_source, refuse_duplicate_clips

    rows: list[tuple[str, Path, str, str, str, str]] = []
    records = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind in DEFAULT_SPLIT and (len(rest.split(":")) < 2 or not rest.split(":")[1]):
            # Training's default split is train: evaluated, it reported the training videos as the result.
            raise InputError(f"source {spec!r}: name the split to evaluate, e.g. {kind}:ROOT:test")
        got = read_source(spec)
        if not got:
            raise InputError(f"source {spec!r}: no clips")
        records += got
        name = source_name(spec)
        for r in got:
            rel = r.rel or str(r.path)
            rows.append((rel, r.path, r.label, r.method, manifest_folder(rel) if name == "tsv" else name, spec))
    refuse_duplicate_clips(records)
    return rows


def _scan_job(job: _Job, settings: Settings, make: Callable[[], Detector], degradation: Degradation | None) -> ClipResult:
    """Scan one clip; any failure of that clip is its result, never an exception."""
    from monitor.pipeline.offline import scan
    from monitor.training.degrade import degrade_clip

    skipped: list[BaseException] = []  # corrupt packets of the original, skipped by the copy
    try:
        path = job.path
        if degradation is not None and job.degraded_to is not None:
            # Noise seeded by the clip's own path, not its row: reordering or subsetting a manifest
            # changed every later clip's degraded score.
            seed = zlib.crc32(job.rel.encode())
            path = degrade_clip(path, job.degraded_to, degradation, seed=seed, on_decode_error=skipped.append)
        res = scan(str(path), settings, make())  # sample_video opens a local path by its absolute form
    except Exception as exc:  # one unreadable clip is a reported failure, not a crash
        logger.warning("could not scan %s: %s", job.rel, exc)
        return job.failed(f"error:{type(exc).__name__}: {exc}")
    finally:
        if job.degraded_to is not None:
            # Each copy goes once scanned: a large manifest's copies filled the temporary
            # folder until the whole run ended.
            job.degraded_to.unlink(missing_ok=True)
    ttd = None
    if res.first_alert_t is not None and res.first_face_t is not None:
        ttd = round(max(0.0, res.first_alert_t - res.first_face_t), 3)
    # The clean copy decodes cleanly: the original's corrupt packets are reported as a clean run would.
    reasons = res.reasons + ((f"decode_errors:{len(skipped)}",) if skipped else ())
    return ClipResult(job.rel, job.label, job.group, job.method, res.score, res.verdict, ttd, res.alerts_opened, res.duration_s, res.first_face_t, reasons, job.source)


# Per worker process: what _worker_init was given, so each job carries only its row.
_WORKER: dict[str, object] = {}


def _worker_init(settings: Settings, factory: Callable[[], Detector] | None, degradation: Degradation | None) -> None:
    from monitor.components import detector_factory as default_factory

    logging.basicConfig(level=logging.WARNING)
    _WORKER.update(settings=settings, make=factory or default_factory(settings), degradation=degradation)


def _worker_scan(job: _Job) -> ClipResult:
    return _scan_job(job, _WORKER["settings"], _WORKER["make"], _WORKER["degradation"])  # type: ignore[arg-type]


def _worker_ready() -> bool:
    return "make" in _WORKER


class WorkersUnavailable(RuntimeError):
    """Worker processes cannot start or cannot set up here; scan in-process instead."""


def _scan_parallel(
    jobs: Sequence[_Job], settings: Settings, factory: Callable[[], Detector] | None, degradation: Degradation | None,
    workers: int, results: dict[int, ClipResult], progress: bool,
) -> None:
    """Scan ``jobs`` in ``workers`` fresh processes, filling ``results`` (clip index -> result).

    At most ``workers`` clips are handed out at a time, so when a process dies (a native crash
    in a decoder or in MediaPipe) and takes the pool down, only the clips then in flight are
    suspect. Each is scanned again alone, in a process of its own, so only a clip that kills
    its own process is reported as an error; the others continue in a new pool. A probe
    call first checks that workers start and set up (WorkersUnavailable if not). Ctrl-C
    cancels what has not started and ends the workers."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    ctx = multiprocessing.get_context("spawn")  # MediaPipe's threads do not survive fork

    def pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init, initargs=(settings, factory, degradation))

    pending = deque(jobs)
    with tqdm(total=len(jobs), desc="evaluate", unit="clip", disable=not progress) as bar:
        first = True
        while pending:
            suspects: list[_Job] = []
            with pool(workers) as ex:
                try:
                    if first:
                        try:
                            ex.submit(_worker_ready).result()
                        except Exception as exc:  # BrokenProcessPool, an unpicklable factory, a failing initializer
                            raise WorkersUnavailable(f"worker processes do not start here: {exc!r}") from exc
                        first = False
                    running: dict[Future[ClipResult], _Job] = {}
                    broken = False
                    while pending or running:
                        while pending and len(running) < workers and not suspects and not broken:
                            job = pending.popleft()
                            try:
                                running[ex.submit(_worker_scan, job)] = job
                            except BrokenProcessPool:
                                # A worker died after the last wait: this clip never ran, so it
                                # goes back; the clips in flight come back broken as suspects.
                                pending.appendleft(job)
                                broken = True
                        if not running:
                            break
                        done, _ = wait(running, return_when=ALL_COMPLETED if suspects else FIRST_COMPLETED)
                        for fut in done:
                            job = running.pop(fut)
                            try:
                                results[job.index] = fut.result()
                                bar.update()
                            except BrokenProcessPool:
                                suspects.append(job)
                except BaseException:
                    ex.shutdown(wait=False, cancel_futures=True)
                    raise
            for job in sorted(suspects, key=lambda j: j.index):
                with pool(1) as alone:
                    try:
                        results[job.index] = alone.submit(_worker_scan, job).result()
                    except BrokenProcessPool:
                        logger.warning("could not scan %s: its worker process died", job.rel)
                        results[job.index] = job.failed("error:worker process died while scanning this clip")
                bar.update()


def default_workers() -> int:
    """The CPUs this process may use (affinity and cpusets count), at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, 8))


def evaluate(
    manifest: Path | None,
    root: Path | None,
    settings: Settings,
    json_out: Path | None = None,
    degrade: str | None = None,
    *,
    detector_factory: Callable[[], Detector] | None = None,
    progress: bool = True,
    workers: int = 1,
    sources: Sequence[str] = (),
) -> EvalReport:
    """Scan every clip of ``manifest`` (paths relative to ``root``, default its folder), or of
    the dataset ``sources`` instead (``ffpp:ROOT:test``, ``celebdf:ROOT:test``, ...; each source
    is then a group, beside each ``method``), with the service's streaming pipeline;
    ``degrade`` (e.g. ``300k``, ``360p``, ``noise``, ``all``) re-encodes each clip first.
    ``workers`` > 1 scans clips in that many processes; every clip gets a fresh detector and
    face tracker either way, so the results are the same. A custom ``detector_factory`` that
    workers cannot rebuild (a lambda, say) is run in-process."""
    from tqdm import tqdm

    from monitor.components import detector_factory as default_factory
    from monitor.training.degrade import parse_degradation

    if (manifest is None) == (not sources):
        raise InputError("give a manifest or --source, not both" if sources else "give a manifest or at least one --source")
    if manifest is not None:
        base = root if root is not None else manifest.parent
        rows = [
            (row["path"], base / row["path"], row["label"].strip().lower(), (row.get("method") or "").strip(), manifest_folder(row["path"]), "")
            for row in read_manifest(manifest)
        ]
    else:
        if root is not None:
            raise InputError("--root is for a manifest: a source names its own folder")
        rows = source_rows(sources)
    deg = parse_degradation(degrade) if degrade is not None else None  # "" is an error, not "none"
    threshold = settings.policy.alert_enter
    with tempfile.TemporaryDirectory(prefix="monitor-eval-") as tmp:
        jobs = [
            _Job(i, rel, path, label, method, Path(tmp) / f"{i}.mp4" if deg else None, group, source)
            for i, (rel, path, label, method, group, source) in enumerate(rows)
        ]
        # One detector is built here in any case, so that a bad configuration or a missing
        # bundle fails at once, not once per clip in every worker.
        make = detector_factory or default_factory(settings)
        make()
        done: dict[int, ClipResult] = {}
        if workers > 1 and len(jobs) > 1:
            try:
                _scan_parallel(jobs, settings, detector_factory, deg, min(workers, len(jobs)), done, progress)
            except (OSError, ImportError, NotImplementedError, WorkersUnavailable) as exc:  # no processes here (no /dev/shm, a sandbox)
                logger.warning("cannot use worker processes (%s): scanning the %d clips left in this process", exc, len(jobs) - len(done))
        left = [job for job in jobs if job.index not in done]
        for job in tqdm(left, desc="evaluate", unit="clip", disable=not progress or not left):
            done[job.index] = _scan_job(job, settings, make, deg)
        results = [done[job.index] for job in jobs]
    report = summarise(str(manifest) if manifest is not None else " ".join(sources), degrade, threshold, results)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def summarise(manifest: str, degrade: str | None, threshold: float, results: Sequence[ClipResult]) -> EvalReport:
    fakes = [c for c in results if c.is_fake]
    ttd = [c.time_to_detect_s for c in fakes if c.time_to_detect_s is not None]
    # Judged genuine footage: clips with a score, and any on which an alert was raised (a false
    # alarm counts even on a track too short for a video score).
    genuine = [c for c in results if not c.is_fake and (c.score is not None or c.alerts_opened)]
    hours = sum(c.duration_s for c in genuine) / 3600.0
    alarms = sum(c.alerts_opened for c in genuine)
    return EvalReport(
        manifest=manifest,
        degrade=degrade,
        threshold=threshold,
        clips=tuple(results),
        overall=metrics("overall", results, threshold),
        groups=tuple(group_metrics(results, threshold)),
        time_to_detect_median_s=float(np.median(ttd)) if ttd else None,
        time_to_detect_p90_s=float(np.percentile(ttd, 90)) if ttd else None,
        fakes_detected=len(ttd),
        false_alarms_per_hour=alarms / hours if hours > 0 else None,
        genuine_hours=hours,
        unjudged=tuple((c.path, c.reasons) for c in results if c.score is None and not c.alerts_opened),
        # Judged by its alert (which counts above), but with no video score for the AUC: listed,
        # so that the counts add up (it used to vanish from both).
        alerted_without_score=tuple(c.path for c in results if c.score is None and c.alerts_opened),
    )


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_ci(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"


def format_report(report: EvalReport) -> str:
    """A plain-text summary: overall, per group, time-to-detect, false alarms, unjudged clips."""
    lines = [
        f"manifest {report.manifest}" + (f"  (degraded: {report.degrade})" if report.degrade else ""),
        f"threshold {report.threshold:g} on the video score; {len(report.clips)} clips",
        "",
        f"{'set':52} {'gen':>4} {'fake':>4} {'AUC':>6} {'95% CI':>13} {'EER':>6} {'acc':>6} {'s_gen':>6} {'s_fake':>6}",
    ]
    for m in (report.overall, *report.groups):
        mark = " **" if m.note == SAME_SOURCE else " *" if m.note else ""
        name = m.name[: 52 - len(mark)] + mark  # a long name is cut, never its mark
        lines.append(
            f"{name[:52]:52} {m.n_genuine:>4} {m.n_fake:>4} {_f(m.auc):>6} {format_ci(m.auc_ci95):>13} {_f(m.eer):>6} {_f(m.accuracy):>6} "
            f"{_f(m.mean_score_genuine):>6} {_f(m.mean_score_fake):>6}"
        )
    lines.append("* fakes of this group scored against all genuine clips; acc: the share of the group's own clips caught")
    if any(m.note == SAME_SOURCE for m in report.groups):
        lines.append("** the same, against the genuine clips of the group's own sources")
    lines.append(f"95% CI: stratified bootstrap of the AUC; '-' below {AUC_CI_MIN_PER_CLASS} clips in a class")
    n_fake = sum(c.is_fake for c in report.clips)
    unjudged = {p for p, _ in report.unjudged}
    # Every fake counts, judged or not (an unreadable one is a fake not caught); say how many were not judged.
    n_fake_unjudged = sum(c.is_fake and c.path in unjudged for c in report.clips)
    lines += [
        "",
        f"time to detect (first alert after first face): median {_f(report.time_to_detect_median_s, 2)} s, "
        f"p90 {_f(report.time_to_detect_p90_s, 2)} s; {report.fakes_detected}/{n_fake} fakes alerted"
        + (f" ({n_fake_unjudged} of them not judged)" if n_fake_unjudged else ""),
        f"false alarms: {_f(report.false_alarms_per_hour, 1)} per hour of genuine footage ({report.genuine_hours * 60:.1f} min judged)",
    ]
    if report.unjudged:
        lines.append(f"could not judge {len(report.unjudged)} clips:")
        lines += [f"  {p}: {', '.join(r) or 'unknown'}" for p, r in report.unjudged]
    if report.alerted_without_score:
        lines.append(f"{len(report.alerted_without_score)} clips alerted before a video score (their alerts count above; not in the AUC):")
        lines += [f"  {p}" for p in report.alerted_without_score]
    return "\n".join(lines)
