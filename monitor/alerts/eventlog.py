"""The durable event log (SQLite, WAL): every event gets an increasing id before anyone sees
it, so clients and sinks resume from the last id they saw, across disconnects and restarts."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import numbers
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from monitor.types import Event, EventType, StoredEvent

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    time REAL NOT NULL,
    subject TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
-- Alert events are a tiny share of the log: finding them (unclosed_alerts) reads only them.
CREATE INDEX IF NOT EXISTS events_type ON events(type);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def jsonable(value: Any) -> Any:
    """``value`` (dataclasses, enums, containers) as plain JSON types; NaN and infinities as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        # numpy's float32, int64, bool_ (a plugin's signal, say) are not JSON: one failed the
        # whole batch, its alert.opened with it.
        value = value.item()
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None  # NaN and +-Infinity are not JSON
    return value


def _load_data(text: str) -> Any:
    """A stored ``data`` column. Logs written before +-inf was mapped to null may hold
    ``Infinity``: read back as null too, so no CloudEvent ever carries invalid JSON."""
    return json.loads(text, parse_constant=lambda _: None)


def event_payload(event: Event) -> dict[str, Any]:
    """The CloudEvents ``data`` of an event: its typed payload plus the stream and severity."""
    data = jsonable(event.data)
    data["stream_id"] = event.stream_id
    data["severity"] = event.severity.value
    return data


def event_subject(event: Event) -> str:
    track_id = getattr(event.data, "track_id", None)
    return f"streams/{event.stream_id}" + (f"/tracks/{track_id}" if track_id is not None else "")


_FORMAT = JSONFormat()


def to_cloudevent_json(
    instance: str,
    event_id: int,
    type_: str,
    stream_id: str,
    time: float,
    subject: str | None,
    data: dict[str, Any],
    epoch: str | None = None,
) -> str:
    """One stored event as structured-mode CloudEvents 1.0 JSON; ``id`` is the log id and the
    extension attribute ``logepoch`` names the log it belongs to (see EventLog.epoch).

    ``source`` carries the epoch too: ids start again in a new log (data_dir wiped, a backup
    restored), and CloudEvents makes ``source`` + ``id`` unique per event, so a receiver that
    de-duplicates by them (as the spec allows) would otherwise drop a new log's events."""
    attributes: dict[str, Any] = {
        "id": str(event_id),
        "source": f"/{instance}/logs/{epoch}/streams/{stream_id}" if epoch else f"/{instance}/streams/{stream_id}",
        "type": type_,
        "time": datetime.fromtimestamp(time, tz=timezone.utc),
        "datacontenttype": "application/json",
    }
    if epoch:
        attributes["logepoch"] = epoch
    if subject:
        attributes["subject"] = subject
    return _FORMAT.write(CloudEvent(attributes=attributes, data=data)).decode()


PRUNE_BATCH = 2000  # events deleted per transaction at start-up


class CorruptLog(sqlite3.DatabaseError):
    """The event log file is damaged (SQLite's quick_check failed)."""


SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


def is_corrupt(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the file is damaged or not a database at all, as opposed to locked,
    unreadable or on a full disk, where moving it aside would be wrong. Extended codes
    (SQLITE_CORRUPT_INDEX, ...) count by their primary code, the low byte."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, CorruptLog) or (isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB))


def open_event_log(path: Path, instance: str = "monitor") -> EventLog:
    """The event log at ``path``. A damaged file (or one that is not a database) is moved aside,
    with its -wal, -shm and .mark files, as ``<name>.corrupt-<UTC time>`` and a new log is
    started, so the service keeps watching and nothing is deleted: the old file can be
    recovered with ``sqlite3 FILE .recover``. The new log has a new epoch, so clients and sinks
    start again from its beginning; alerts the old log had open are not closed, and events no
    sink had delivered yet stay undelivered. Other failures (locked, unreadable, full disk) are
    raised."""
    try:
        return EventLog(path, instance)
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        reason = exc
    move_aside(path, reason)
    return EventLog(path, instance)


def move_aside(path: Path, reason: BaseException) -> Path:
    """Rename a damaged log with its -wal, -shm and .mark files to ``<name>.corrupt-<UTC time>``
    (nothing is deleted) and say so at ERROR; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while moved.exists():  # a second damaged log within the same second
        n += 1
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm", ".mark"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.replace(moved.with_name(moved.name + suffix))
    logger.error(
        "event log %s is damaged (%s): moved aside as %s and a new log started. Its events stay in that "
        "file (recover with `sqlite3 %s .recover`); alerts it had open are not closed and events no sink "
        "had delivered are not delivered", path, reason, moved.name, moved,
    )
    return moved


class EventLog:
    """SQLite-backed, append-only log. Thread-safe; call it from an executor, not the loop."""

    def __init__(self, path: Path, instance: str = "monitor") -> None:
        self.path = path
        self.instance = instance
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created for the service's user only: the log names streams, tracks and alerts.
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        # timeout: wait for a lock held by a backup or another reader instead of failing at once.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            # Checked before anything is written to it: a damaged page (a disk or copy error)
            # opened without complaint, and then failed every replay and every sink's read for
            # good while new alerts went into the damaged file.
            damage = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if damage != "ok":
                raise CorruptLog(f"database disk image is malformed ({damage})")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL survives power loss too; alerts are rare enough that fsync cost is irrelevant.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            # Next to the file, outside it: the epoch and the last id this log reached. A backup
            # of the file does not carry it, so a restored (older) copy is told apart.
            self._mark = path.with_name(path.name + ".mark")
            self._mark_failed = False
            self.epoch = self._load_epoch()
            # A second connection for clients' reads (replays, /api/events): WAL lets it read while
            # the first writes, so a client replaying a long history does not hold up the writes,
            # and with them every stream's analysis.
            self._reader_lock = threading.Lock()
            self._reader = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        except BaseException:
            self._db.close()
            raise

    def _load_epoch(self) -> str:
        """This log's epoch: random, made when the log is created and kept for its life. Ids
        start again at 1 in a new log (data_dir wiped), or go back to an older id in a file
        restored from a backup: either way it gets a new epoch, and a client that sends the
        epoch of its last event back with ``since`` is told its ids belong to another log, even
        when this one has already grown past them."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?)", (uuid.uuid4().hex[:16],))
            epoch = str(self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
            last = self._last_id()
            # Set in the log once its mark is on disk (written and synced, or found by a start),
            # so a mark that failed to be written is not taken for a lost one. A copy of the file
            # (a backup) carries the flag, even one taken during the first run.
            had_mark = self._db.execute("SELECT 1 FROM meta WHERE key = 'marked'").fetchone() is not None
            found_mark = False
            try:
                marked_epoch, marked_last = self._mark.read_text().split()
                behind = marked_epoch == epoch and int(marked_last) > last
                why = f"ends at id {last} but reached {marked_last} before"
                found_mark = True
                if marked_epoch != epoch:
                    # The log file was replaced (deleted, emptied, another one copied in): its
                    # epoch already tells clients, but the operator should hear of it too.
                    logger.warning(
                        "event log %s is not the log its mark names (epoch %s, which reached id %s): a new or "
                        "replaced file, with epoch %s; clients resuming start again",
                        self.path, marked_epoch, marked_last, epoch,
                    )
            except FileNotFoundError:
                # A log that had a mark, found without it: a backup restored into an empty
                # data_dir. It may have been copied at any id, and clients may hold later ones
                # of this epoch. (A log from before marks, or a new one, has never had one.)
                behind = had_mark and last > 0
                why = f"has lost its mark ({self._mark.name}) at id {last}"
            except (OSError, ValueError):  # an unreadable mark: it only weakens the check
                behind = False
            if behind:
                epoch = uuid.uuid4().hex[:16]
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
                logger.warning(
                    "event log %s %s: restored from a backup? Ids after %d may name other events for "
                    "clients, so it gets a new epoch (%s): clients resuming start again",
                    self.path, why, last, epoch,
                )
            # The first mark is synced before the log says it has one: a restart after a crash
            # must not find the flag without the mark and take the log for a restored backup.
            if self._write_mark(epoch, last, durable=not had_mark) or found_mark:
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('marked', '1')")
        return epoch

    def _write_mark(self, epoch: str, last_id: int, durable: bool = False) -> bool:
        """Best effort: whether the mark was written. Later marks are not synced (one lost in a
        crash leaves an older mark, which only weakens the check); ``durable`` syncs the file
        and its folder."""
        try:
            tmp = self._mark.with_name(self._mark.name + ".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as f:
                f.write(f"{epoch} {last_id}\n")
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            tmp.replace(self._mark)
            if durable:
                folder = os.open(self._mark.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            self._mark_failed = False
            return True
        except OSError as exc:
            # Once at WARNING (a data_dir deleted or unwritable under the running service), then at
            # DEBUG: every append tries again.
            level = logging.DEBUG if self._mark_failed else logging.WARNING
            self._mark_failed = True
            logger.log(level, "cannot write the event log's mark %s (%s): a restore from a backup may go unnoticed", self._mark, exc)
            return False

    def append(self, events: Sequence[Event]) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event in events:
                    cur = self._db.execute(
                        "INSERT INTO events(type, stream_id, severity, time, subject, data) VALUES (?,?,?,?,?,?)",
                        (
                            event.type.value,
                            event.stream_id,
                            event.severity.value,
                            event.time,
                            event_subject(event),
                            json.dumps(event_payload(event), separators=(",", ":")),
                        ),
                    )
                    assert cur.lastrowid is not None
                    stored.append(StoredEvent(cur.lastrowid, event))
                self._db.execute("COMMIT")
                if stored:
                    self._write_mark(self.epoch, stored[-1].id)
            except BaseException:
                # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR): a
                # second ROLLBACK would raise "no transaction is active" and hide the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return stored

    def read_since(self, after_id: int, limit: int = 500, reader: bool = False) -> list[tuple[int, str]]:
        """Events with id > after_id, oldest first, as (id, CloudEvents JSON). ``reader``: on
        the readers' connection, which sees every committed write and waits for none."""
        lock, db = (self._reader_lock, self._reader) if reader else (self._lock, self._db)
        with lock:
            rows = db.execute(
                "SELECT id, type, stream_id, time, subject, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [
            (r[0], to_cloudevent_json(self.instance, r[0], r[1], r[2], r[3], r[4], _load_data(r[5]), self.epoch))
            for r in rows
        ]

    def read_last(self, n: int, reader: bool = False) -> list[tuple[int, str]]:
        """The newest ``n`` events, oldest first (for a dashboard's first paint)."""
        lock, db = (self._reader_lock, self._reader) if reader else (self._lock, self._db)
        with lock:
            row = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return self.read_since(max(int(row[0]) - n, 0), n, reader)

    def render(self, stored: StoredEvent) -> str:
        e = stored.event
        return to_cloudevent_json(
            self.instance, stored.id, e.type.value, e.stream_id, e.time, event_subject(e), event_payload(e), self.epoch
        )

    def last_id(self, reader: bool = False) -> int:
        """The largest id ever assigned (0 for a new log). Pruning never lowers it, so a
        client's ``since`` above it can only come from another (reset) log. ``reader``: on the
        readers' connection (committed writes; waits for none)."""
        lock, db = (self._reader_lock, self._reader) if reader else (self._lock, self._db)
        with lock:
            return self._last_id(db)

    def _last_id(self, db: sqlite3.Connection | None = None) -> int:
        row = (db or self._db).execute(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM events), 0),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))"
        ).fetchone()
        return int(row[0])

    def unclosed_alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``alert.opened`` in the log with no ``alert.closed`` for its alert_id, oldest
        first, as (stream_id, data). Only a process that died with alerts open (SIGKILL, OOM,
        a stop past its grace period) leaves these: a clean stop closes them. An alert whose
        opening was pruned is not found (nor, then, shown open anywhere)."""
        opened, closed = EventType.ALERT_OPENED.value, EventType.ALERT_CLOSED.value
        with self._lock:
            # Matched in Python: SQLite's JSON functions reject the Infinity older logs can hold
            # (see _load_data), and one such row failed the whole query, on every start, so no
            # alert a crash left open was ever closed. Alerts are few: two rows each.
            rows = self._db.execute(
                "SELECT type, stream_id, data FROM events WHERE type IN (?, ?) ORDER BY id", (opened, closed)
            ).fetchall()
        events = [(kind, stream, _load_data(raw)) for kind, stream, raw in rows]
        ended = {data.get("alert_id") for kind, _, data in events if kind == closed} - {None}
        return [(stream, data) for kind, stream, data in events if kind == opened and data.get("alert_id") not in ended]

    def unended_tracks(self) -> list[tuple[str, dict[str, Any]]]:
        """The last ``track.state`` of every face track whose end was never announced (no
        ``track_ended`` reason), oldest first, as (stream_id, data). Track ids start again at 1
        in every run of a stream, so the newest event for a (stream, track id) is what counts:
        a run that ended cleanly announced every end, and only a process that died leaves a
        newest event without one."""
        kind = EventType.TRACK_STATE.value
        with self._lock:
            # SQLite's JSON functions reject the Infinity older logs can hold (see _load_data):
            # those rows are read in Python instead of failing the whole query.
            rows = self._db.execute(
                "SELECT id, stream_id, data FROM events WHERE id IN ("
                "  SELECT MAX(id) FROM events WHERE type = ? AND json_valid(data)"
                "  GROUP BY stream_id, json_extract(data, '$.track_id'))"
                " UNION ALL SELECT id, stream_id, data FROM events WHERE type = ? AND NOT json_valid(data)",
                (kind, kind),
            ).fetchall()
        newest: dict[tuple[str, Any], tuple[int, dict[str, Any]]] = {}
        for row_id, stream, raw in sorted(rows):
            data = _load_data(raw)
            newest[(stream, data.get("track_id"))] = (row_id, data)
        return [
            (stream, data) for (stream, _), (_, data) in sorted(newest.items(), key=lambda kv: kv[1][0])
            if "track_ended" not in (data.get("reasons") or ())
        ]

    def prune(self, older_than: float, keep_after: int | None = None) -> int:
        """Delete events older than ``older_than`` (UNIX time), but none with an id above
        ``keep_after`` (a sink's cursor: not yet delivered); ids are never reused."""
        limit = keep_after if keep_after is not None else (1 << 62)
        removed = 0
        while True:
            # In batches: one transaction deleting a long history needs room in the WAL that a
            # nearly full disk may not have, and holds the write lock meanwhile.
            with self._lock:
                cur = self._db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? AND id <= ? ORDER BY id LIMIT ?)",
                    (older_than, limit, PRUNE_BATCH),
                )
            removed += cur.rowcount
            if cur.rowcount < PRUNE_BATCH:
                return removed

    def count_older(self, after_id: int, older_than: float) -> int:
        """How many events with id > ``after_id`` are older than ``older_than`` (a sink's
        undelivered backlog past the retention)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM events WHERE id > ? AND time < ?", (after_id, older_than)
            ).fetchone()
        return int(row[0])

    def oldest_id(self) -> int | None:
        """The smallest id the log still holds (None when it holds none)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(id) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def get_cursor(self, name: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT last_id FROM cursors WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, name: str, last_id: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursors(name, last_id) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET last_id = excluded.last_id",
                (name, last_id),
            )

    def close(self) -> None:
        with self._reader_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
