"""The ``monitor`` command: serve, scan, alerts, train, evaluate, config."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from monitor.errors import ConfigError, MonitorError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Watch video streams for deepfaked faces.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (MONITOR_* env vars override it).", exists=True, dir_okay=False)


def _setup_logging(level: str) -> None:
    from monitor.app import install_log_redaction

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()  # before any client logs a URL with its credentials


def _offline_log_level(settings: Any) -> str:
    """`scan` and `evaluate` log warnings only, unless `log_level` was set (file or
    MONITOR_LOG_LEVEL): the service's default INFO would bury their report, but a level asked
    for was ignored outright."""
    return str(settings.log_level) if "log_level" in settings.model_fields_set else "WARNING"


# `scan` and `evaluate` open no port: the server's bind (say MONITOR_SERVER__HOST=0.0.0.0 in the
# container image, without a token) must not refuse them.
OFFLINE_SERVER = {"host": "127.0.0.1"}


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "events"}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@app.command()
def serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="HTTP port (default 8080; 0 picks a free one)."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the event log lives (default ./monitor-data)."),
) -> None:
    """Run the service: watch the configured streams (or the built-in demo) and serve the API."""
    from monitor.app import serve as run_service
    from monitor.config import load_settings

    try:
        server: dict[str, Any] = {}
        if host is not None:
            server["host"] = host
        if port is not None:
            server["port"] = port
        # Validated once, after merging: `--host 127.0.0.1` rescues a file that binds 0.0.0.0
        # without a token. The server keys merge with the file's and env's, key by key.
        settings = load_settings(config, data_dir=data_dir, server=server or None)
    except ConfigError as exc:
        _fail(exc)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(run_service(settings))
    except MonitorError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def scan(
    target: str = typer.Argument(..., help="A video file, or an rtsp://, rtsps:// or http(s):// URL."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result (per-track timelines) here."),
    config: Optional[Path] = ConfigOpt,
    duration: Optional[float] = typer.Option(None, min=0.1, help="Stop after this many seconds of stream time (default: whole file; 30 s for URLs)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ca_file: Optional[Path] = typer.Option(
        None, "--ca-file", help="rtsps:// or https://: a PEM file of the CA (or self-signed certificate) the server's certificate must chain to."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="rtsps:// or https://: accept any certificate (whoever intercepts the connection gets the URL's password or token)."
    ),
) -> None:
    """Analyse a file or stream offline; print a per-track summary, a video-level score and verdict.

    An rtsps:// or https:// server's certificate and host name are checked against the system's
    CAs or --ca-file, as the service checks a camera's.

    Exit status: 0 when no alert was raised, 1 when one was (verdict `alert`), 2 on an error,
    130 when interrupted."""
    if ca_file is not None and not ca_file.is_file():
        _fail(ConfigError(f"no such file: {ca_file}"))
    try:
        _scan(target, json_out, config, duration, quiet, tls_verify=not insecure, ca_file=None if ca_file is None else str(ca_file))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None  # interrupted: not 1, which means an alert


def _scan(
    target: str,
    json_out: Path | None,
    config: Path | None,
    duration: float | None,
    quiet: bool,
    *,
    tls_verify: bool = True,
    ca_file: str | None = None,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from monitor.config import load_settings
    from monitor.pipeline.offline import scan as run_scan

    try:
        settings = load_settings(config, demo=False, server=OFFLINE_SERVER)
    except ConfigError as exc:
        _fail(exc)
    _setup_logging(_offline_log_level(settings))
    is_url = "://" in target and not target.startswith("file://")
    if not is_url and not Path(target.removeprefix("file://")).is_file():
        _fail(ConfigError(f"no such file: {target}"))
    if is_url and duration is None:
        duration = 30.0
    if json_out is not None:
        _check_writable(json_out)
    total = duration if duration is not None else _duration_of(target)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]scanning"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.1f}s"),
        TimeRemainingColumn(), console=console, disable=quiet or not console.is_terminal and not _env_flag("MONITOR_PROGRESS"),
    )
    try:
        with progress:
            task = progress.add_task("scan", total=total or None)
            result = run_scan(
                target,
                settings,
                progress=lambda t: progress.update(task, completed=t),
                max_duration_s=duration,
                tls_verify=tls_verify,
                ca_file=ca_file,
            )
    except MonitorError as exc:
        _fail(exc)
    except Exception:  # a bug or a library failure: 2 with its traceback, never 1 (an alert)
        console.print_exception()
        raise typer.Exit(2) from None
    out = Console()
    table = Table(title=f"{target}: {result.duration_s:.1f} s, {result.frames_analysed} frames analysed")
    for col in ("track", "from s", "to s", "frames", "score", "max", "final state", "alerts"):
        table.add_column(col)
    for t in result.tracks:
        table.add_row(
            str(t.track_id), f"{t.first_t:.1f}", f"{t.last_t:.1f}", str(t.points),
            "-" if t.score is None else f"{t.score:.3f}", "-" if t.max_score is None else f"{t.max_score:.3f}",
            t.final_state.value, str(t.alerts),
        )
    out.print(table)
    speed = result.realtime_factor
    out.print(f"speed: {speed:.1f}x real time" if speed else "speed: n/a")
    out.print(f"score: {'n/a' if result.score is None else f'{result.score:.3f}'}")
    out.print(f"verdict: {result.verdict}" + (f" ({', '.join(result.reasons)})" if result.reasons else ""))
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(_jsonable(result), indent=1))
        except OSError as exc:  # 2, not the 1 of an uncaught exception, which reads as an alert
            _fail(ConfigError(f"cannot write {json_out}: {exc.strerror or exc}"))
    if result.verdict == "alert":
        raise typer.Exit(1)  # scripts and CI jobs can act on a detection without parsing output


def _check_writable(path: Path) -> None:
    """Fail now, with exit status 2, if the result cannot be written to ``path``: not after
    minutes (or hours) of scanning, which the failure would throw away."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        if path.exists():  # /dev/stdout, or a file made beforehand in a folder we cannot write
            writable = os.access(path, os.W_OK)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(path.parent, os.W_OK)
        if not writable:
            raise PermissionError(13, "permission denied")
    except OSError as exc:
        _fail(ConfigError(f"cannot write {path}: {exc.strerror or exc}"))


def _duration_of(path: str) -> float | None:
    import av

    try:
        with av.open(path.removeprefix("file://")) as c:
            stream = c.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return c.duration / 1_000_000 if c.duration else None
    except Exception:
        return None


@app.command()
def alerts(
    url: str = typer.Option("ws://127.0.0.1:8080/ws/alerts", help="The monitor's alert websocket."),
    since: Optional[int] = typer.Option(None, min=0, help="Replay every event after this id first."),
    epoch: Optional[str] = typer.Option(None, help="With --since: the logepoch of that event, so a log reset since is noticed (and replayed from its start)."),
    token: Optional[str] = typer.Option(None, envvar="MONITOR_TOKEN", help="Bearer token (or MONITOR_TOKEN)."),
    follow: bool = typer.Option(True, help="Reconnect (resuming from the last id) when the connection drops."),
) -> None:
    """Tail the alert websocket, one CloudEvent JSON per line."""
    from monitor.alerts.client import tail

    try:
        asyncio.run(tail(url, since=since, token=token, follow=follow, out=sys.stdout, epoch=epoch))
    except KeyboardInterrupt:
        pass
    except MonitorError as exc:
        _fail(exc)


# The packages of the `train` extra: a service install (the container image) has none of them.
TRAINING_PACKAGES = ("torch", "onnx", "tflite")


def _training_entry(command: str, module: str) -> Any:
    """``module``'s ``main``, or exit 2 naming the extra when one of its packages is not installed.
    All are checked before anything runs: onnx is first needed at export, after the training."""
    import importlib
    import importlib.util

    from monitor.detect.bundle import TRAIN_EXTRA_HINT

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ImportError:  # an import hook that refuses it
            return False

    missing = [name for name in TRAINING_PACKAGES if not installed(name)]
    if missing:
        _fail(MonitorError(f"monitor {command} needs {', '.join(missing)}, which this install lacks: {TRAIN_EXTRA_HINT}"))
    return importlib.import_module(module).main


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Train the temporal-v1 detector bundle (`monitor train --help` for the options)."""
    train_main = _training_entry("train", "monitor.training.train")
    try:
        train_main(ctx.args)
    except (MonitorError, OSError) as exc:  # bad input (InputError) or an unwritable path: no traceback
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None  # as scan: not 1, an unexpected failure (checkpoints resume)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def sbi(ctx: typer.Context) -> None:
    """Long self-blend training of the appearance CNN, GPU-ready: `monitor sbi pack|fit --help`."""
    sbi_main = _training_entry("sbi", "monitor.training.sbi")
    try:
        sbi_main(ctx.args)
    except (MonitorError, OSError) as exc:
        _fail(exc)


@app.command()
def evaluate(
    manifest: Optional[Path] = typer.Argument(None, help="TSV with a header and at least `path` and `label` (real | fake | attack).", exists=True, dir_okay=False),
    root: Optional[Path] = typer.Option(None, help="Directory the manifest's paths are relative to (default: the manifest's directory).", exists=True, file_okay=False),
    source: Optional[list[str]] = typer.Option(None, "--source", help="Instead of a manifest, a dataset as `monitor train` reads it (repeatable): ffpp:ROOT:test, celebdf:ROOT:test, dfdc:PATH, real:DIR or tsv:MANIFEST[:ROOT]. Each source is a group."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every clip's score, verdict, time to detect and alerts here."),
    degrade: Optional[str] = typer.Option(None, help="Evaluate degraded copies: 300k, 360p, noise or all."),
    workers: Optional[int] = typer.Option(None, min=1, help="Clips scanned at once, one process each (default: the CPUs available, at most 8); results do not depend on it."),
    config: Optional[Path] = ConfigOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (none either when stderr is not a terminal)."),
) -> None:
    """Run the streaming pipeline over every clip of a manifest (or of dataset sources); report
    AUC, EER, accuracy, time to detect and false alarms per hour, overall and per group.
    Exit status: 0, or 2 on bad input, including any clip that could not be read (missing,
    not a video): the report and --json are still written, naming each; 130 when interrupted."""
    from monitor.config import load_settings
    from monitor.training.evaluate import default_workers, format_report
    from monitor.training.evaluate import evaluate as run_evaluate

    try:
        settings = load_settings(config, demo=False, server=OFFLINE_SERVER)
    except ConfigError as exc:
        _fail(exc)
    _setup_logging(_offline_log_level(settings))
    if json_out is not None:
        _check_writable(json_out)
    try:
        report = run_evaluate(
            manifest, root, settings, None, degrade,
            workers=workers or default_workers(), progress=not quiet and sys.stderr.isatty(), sources=source or (),
        )
    except (MonitorError, OSError) as exc:  # InputError: a bad manifest row or --degrade spec
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(format_report(report))
    if json_out is not None:  # after the report: a failure here must not throw the run away
        try:
            json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as exc:
            _fail(ConfigError(f"cannot write {json_out}: {exc.strerror or exc}"))
    unread = sum(1 for clip in report.clips if clip.verdict == "error")
    if unread:
        # A broken mount or a wrong --root reported "-" everywhere and exited 0: a scripted
        # evaluation could not tell it from a real run. Clips with no face are not errors.
        _fail(MonitorError(f"{unread} of {len(report.clips)} clips could not be read (listed above under 'could not judge')"))


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration, with a description of every knob; each
    installed plugin's `options` are under `x-plugin-options`."""
    from monitor.components import settings_schema

    typer.echo(json.dumps(settings_schema(), indent=2))


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt) -> None:
    """Print the effective configuration (file + env + defaults), credentials hidden, after
    checking it as `serve` would: plugin names and their options included."""
    from monitor.components import check_plugins
    from monitor.config import load_settings, redact

    try:
        settings = load_settings(config)
        check_plugins(settings)
    except ConfigError as exc:
        _fail(exc)
    typer.echo(json.dumps(redact(settings.model_dump(mode="json")), indent=2))


def _env_flag(name: str) -> bool:
    """A yes/no environment variable: 1, true, yes or on (any case) is yes; 0, false, no, off
    or empty is no, as a user who writes MONITOR_PROGRESS=0 means."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    _fail(ConfigError(f"{name}={value!r}: use 1 (yes) or 0 (no)"))
    return False  # not reached: _fail exits


def main() -> None:
    # MediaPipe's C++ logging (glog/absl) is noisy at INFO on every start; keep warnings+.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app()


if __name__ == "__main__":
    main()
