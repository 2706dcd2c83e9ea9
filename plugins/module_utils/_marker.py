# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sync freshness marker (``.grus-sync.json``): its one owner.

layer 0: may import nothing of grus.backup (standard library only).

The sync client writes it (``_rsync``), the key holder's backup reads it (``_backup_job``):
name, format version, states, building, writing (atomic), reading and judging freshness all
live here, so the two sides cannot disagree.

A marker says ``state: running`` before rsync starts, ``state: done`` (with ``time``, the
client's clock when the sync ended) after a successful run, ``state: failed`` (with the
reason) after a failed one. Markers of format 1 had no state: they mean ``done``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from datetime import datetime, timezone

DEFAULT_NAME = ".grus-sync.json"
FORMAT = 2  # 2: the state field (running, done, failed)
WRITER = "grus.backup.nfs_sync"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, to the second


def utc_text(timestamp: float) -> str:
    """A marker time: UTC, ISO 8601, to the second."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime(TIME_FORMAT)  # noqa: UP017 - Python < 3.11


def parse_utc_text(text) -> datetime | None:
    """The aware datetime of a marker time, ``None`` when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)  # noqa: UP017 - Python < 3.11
    except ValueError:
        return None


# ---- building ---------------------------------------------------------------------------------


def build_progress(state: str, started: float, source: str, source_host=None, error=None) -> dict:
    """The marker's common part, all of a sync under way (``running``) or one that ``failed``.

    No secret and no ``rsh`` ever goes in: the key holder's backup and its operators read it.
    """
    marker = {
        "format": FORMAT,
        "writer": WRITER,
        "state": state,
        "started": utc_text(started),
        "source_host": source_host or socket.gethostname(),
        "source": source,
    }
    if state == FAILED:
        marker["failed"] = utc_text(time.time())
        marker["error"] = error
    return marker


def build_done(started: float, finished: float, source: str, source_host, volumes, stats: dict, rsync_rc: int) -> dict:
    """The marker of a successful sync: when, from where, what, and how rsync ended."""
    return {
        **build_progress(DONE, started, source, source_host),
        "time": utc_text(finished),
        "volumes": list(volumes),
        "files": stats.get("files", 0),
        "files_transferred": stats.get("files_transferred", 0),
        "files_deleted": stats.get("files_deleted", 0),
        "bytes_total": stats.get("bytes_total", 0),
        "bytes_sent": stats.get("bytes_sent", 0),
        "rsync_exit_code": rsync_rc,
    }


# ---- writing ----------------------------------------------------------------------------------


def serialise(marker: dict) -> str:
    return json.dumps(marker, indent=2, sort_keys=True) + "\n"


def write_local(directory: str, marker: dict, name: str = DEFAULT_NAME) -> str:
    """Write ``marker`` atomically as ``directory/name`` (temporary file, fsync, rename, fsync dir)."""
    target = os.path.join(directory, name)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(serialise(marker))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def write_through(send, marker: dict, name: str = DEFAULT_NAME) -> None:
    """Write ``marker`` as a local temporary file called ``name`` and hand its path to ``send``.

    For a remote destination: ``send`` copies the file there (rsync writes a temporary file
    beside the target and renames it, so the remote side sees the marker change atomically).
    """
    with tempfile.TemporaryDirectory(prefix="grus-sync-marker.") as tmp_dir:
        local = os.path.join(tmp_dir, name)
        with open(local, "w", encoding="utf-8") as handle:
            handle.write(serialise(marker))
        os.chmod(local, 0o644)
        send(local)


# ---- reading and judging ----------------------------------------------------------------------


def read(path: str):
    """``(marker, None)``, or ``(None, reason)`` when it cannot be read (``missing``, ``unreadable (...)``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    return (data, None) if isinstance(data, dict) else (None, "unreadable (not a JSON object)")


def state_of(data) -> str:
    """``running``, ``failed`` or ``done``; markers written before states existed are ``done``."""
    state = data.get("state") if isinstance(data, dict) else None
    return state if state in (RUNNING, FAILED) else DONE


def is_running(path: str) -> bool:
    return state_of(read(path)[0]) == RUNNING


def judge(path: str, max_age_minutes: float, now: datetime, written_at: float | None = None) -> tuple:
    """``(report, warning or None)`` for the marker at ``path``: state, age, staleness, clock skew.

    ``clock_skew_seconds`` compares the client's clock (the marker's ``time``) with this host's
    (the file's ctime when it landed); ``written_at`` stands in for the ctime in tests.
    """
    report = {"path": path, "state": None, "time": None, "age_minutes": None, "stale": True}
    data, problem = read(path)
    if problem == "missing":
        return report, f"sync marker {path} is missing: that client never synced; its data may be absent"
    if data is None:
        return report, f"sync marker {path} is {problem}; backing up what is there"
    state = report["state"] = state_of(data)
    warning = _unfinished_warning(path, data, state)
    if warning:
        return report, warning
    when = parse_utc_text(data.get("time"))
    if when is None:
        return report, f"sync marker {path} has no valid time; backing up what is there"
    with contextlib.suppress(OSError):
        # Two clocks, one moment: the client's when the sync ended, this host's when the marker landed.
        written = os.stat(path).st_ctime if written_at is None else written_at
        report["clock_skew_seconds"] = round(written - when.timestamp())
    age = (now - when).total_seconds() / 60
    report.update(time=data["time"], age_minutes=round(age, 1), stale=age > max_age_minutes)
    if report["stale"]:
        return report, (
            f"sync marker {path} is stale: last sync {data['time']}, {age:.0f} min ago "
            f"(limit {max_age_minutes} min); backing up the old copy"
        )
    return report, None


def _unfinished_warning(path: str, data: dict, state: str) -> str | None:
    who = data.get("source_host") or "the sync client"
    if state == RUNNING:
        return (
            f"the sync from {who} that started at {data.get('started')} has not finished (still running, or it "
            f"died; marker {path}): backing up the copy as it is, possibly partly updated"
        )
    if state == FAILED:
        return (
            f"the last sync from {who} failed at {data.get('failed')} ({data.get('error') or 'no reason given'}; "
            f"marker {path}): backing up the copy as it is, possibly partly updated"
        )
    return None
