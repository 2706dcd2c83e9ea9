# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guarded volume sync: one rsync argv, guards, lock, freshness marker.

Private to grus.backup and pure standard library. The ``nfs_sync`` module and the
scheduled job that the ``sync_client`` role installs both call :func:`sync`, so a
timer-driven sync and an Ansible-driven one run the very same rsync command:

    python3 -m <package>._rsync --config /etc/grus-backup/nfs-sync.json

(the configuration file holds the module's option names; see :func:`main`).

How a run goes, and why:

* Every volume is a directory directly under ``src`` and lands in ``dest/<volume>``.
  All volumes go in ONE rsync, as ``src/./<volume>`` with ``--relative``: one
  process, one lock, one marker, and ``--delete`` only acts inside the volumes
  that were sent. A volume that disappeared from ``src`` is never removed from
  ``dest`` (it is refused as missing when listed, and simply not sent when
  ``volumes`` is discovered), and anything else in ``dest`` (the marker, other
  clients' directories) is out of rsync's reach.
* Guards run under the lock, right before rsync: a missing ``src``, a missing
  volume or an empty one (the mount point of a disk that is not mounted) stops
  the run, because mirroring an empty directory with ``--delete`` would wipe
  the good copy. ``allow_empty`` lets an intentionally empty volume through.
* With ``max_delete`` and ``delete``, a dry run goes first: rsync's own
  ``--max-delete`` would delete up to the limit before stopping; the dry run
  lets us refuse before a single file is touched. The real run still carries
  ``--max-delete`` in case the source changed in between.
* The JSON marker ``dest/<marker_name>`` tells the key holder's backup how the
  copy stands: ``state: running`` is written before rsync starts, ``state: done``
  (with the time) after a successful run (exit 0 or 24), ``state: failed`` (best
  effort) after a failed one. The backup waits for a running sync and reports
  a failed or unfinished one. Each is written atomically; over SSH it is sent
  with rsync through the same ``rsh``, so the receiving key can stay restricted
  to ``rrsync``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import fcntl
import fnmatch
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields

from ._runner import CommandNotFound, run

DEFAULT_MARKER_NAME = ".grus-sync.json"
DEFAULT_LOCK = "/run/lock/grus-backup-nfs-sync.lock"
DEFAULT_LOCK_TIMEOUT = 300
MARKER_FORMAT = 2  # 2: the state field (running, done, failed)

# Directories that exist on a freshly made file system and are never volumes.
NOT_VOLUMES = frozenset({"lost+found"})

RSYNC_EXIT_MESSAGES = {
    0: "success",
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    6: "daemon unable to append to log file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "the SSH connection failed or the remote side died",
}

# rsync exit codes by meaning; everything else is a hard error.
STATUS_OK = "ok"
STATUS_VANISHED = "vanished"  # 24: files disappeared while being sent; normal on live volumes
STATUS_PARTIAL = "partial"  # 23: some files could not be transferred
STATUS_MAX_DELETE = "max_delete"  # 25
STATUS_ERROR = "error"

_BWLIMIT_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[bBkKmMgGtTpP]?$")
# [user@]host:path, host may be a bracketed IPv6 address; a slash before the colon means a local path.
_REMOTE_RE = re.compile(r"^(?P<host>(?:[^@/:]+@)?(?:\[[^\]/]+\]|[^/:\[\]]+)):(?P<path>.*)$")


class SyncError(Exception):
    """A sync that did not happen, or did not complete.

    ``kind`` says why: ``usage`` (bad options), ``guard`` (refused before rsync),
    ``lock`` (another sync holds the lock), ``max_delete``, ``partial``, ``error``
    (rsync failed) or ``marker`` (synced, but the marker could not be written).
    ``result`` is the :class:`SyncResult` so far, when rsync ran.
    """

    def __init__(self, kind: str, message: str, result: SyncResult | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.result = result


@dataclass
class SyncOptions:
    """Everything one sync needs; the field names are the nfs_sync module's option names."""

    src: str
    dest: str
    volumes: list | None = None
    exclude: list = field(default_factory=list)
    delete: bool = True
    max_delete: int | None = None
    preserve_acls: bool = True
    preserve_xattrs: bool = True
    preserve_hardlinks: bool = True
    numeric_ids: bool = True
    bwlimit: str | None = None
    checksum: bool = False
    rsh: str | None = None
    io_timeout: int | None = None
    marker: bool = True
    marker_name: str = DEFAULT_MARKER_NAME
    lock: str | None = DEFAULT_LOCK
    lock_timeout: int = DEFAULT_LOCK_TIMEOUT
    allow_empty: bool = False
    dry_run: bool = False
    itemize: bool = True
    rsync: str = "rsync"
    source_host: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> SyncOptions:
        """Options from a mapping with the module's option names; ``None`` means the default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SyncError("usage", f"unknown sync option(s): {', '.join(unknown)}")
        for required in ("src", "dest"):
            if not data.get(required):
                raise SyncError("usage", f"the sync option {required!r} is required")
        options = cls(**{k: v for k, v in data.items() if v is not None})
        options.validate()
        return options

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Normalise and check the options; raise SyncError('usage') on nonsense."""
        if not self.src:
            raise SyncError("usage", "src is required")
        if not self.dest:
            raise SyncError("usage", "dest is required")
        self.src = os.path.abspath(os.path.expanduser(self.src))
        host, path = split_remote(self.dest)
        if host is None:
            self.dest = os.path.abspath(os.path.expanduser(self.dest))
            if self.dest == "/":
                raise SyncError("usage", "refusing to sync into / (dest)")
        elif self.dest.startswith("rsync://") or path.startswith(":"):
            raise SyncError("usage", f"rsync daemon destinations are not supported (dest={self.dest}); use host:path")
        if self.volumes is not None:
            self.volumes = list(dict.fromkeys(str(v) for v in self.volumes))
            for name in self.volumes:
                check_volume_name(name)
        self.exclude = [str(p) for p in (self.exclude or [])]
        for pattern in self.exclude:
            if not pattern or "\n" in pattern:
                raise SyncError("usage", f"invalid exclude pattern {pattern!r}")
        if self.max_delete is not None:
            self.max_delete = int(self.max_delete)
            if self.max_delete < 0:
                raise SyncError("usage", "max_delete must be 0 or more")
        if self.bwlimit is not None:
            self.bwlimit = str(self.bwlimit).strip()
            if not _BWLIMIT_RE.match(self.bwlimit):
                raise SyncError("usage", f"invalid bwlimit {self.bwlimit!r}: use KiB/s, or a number with K, M or G")
        if self.io_timeout is not None:
            self.io_timeout = int(self.io_timeout)
            if self.io_timeout < 0:
                raise SyncError("usage", "io_timeout must be 0 (none) or more seconds")
        if self.marker:
            check_marker_name(self.marker_name)
        self.lock_timeout = int(self.lock_timeout)
        if self.lock_timeout < 0:
            raise SyncError("usage", "lock_timeout must be 0 or more seconds")
        if not self.lock:
            self.lock = None
        if self.rsh is not None and not str(self.rsh).strip():
            self.rsh = None


@dataclass
class Change:
    """One line of ``--itemize-changes``: ``code`` (YXcstpoguax or ``*deleting``) and the path."""

    code: str
    path: str
    target: str | None = None

    @property
    def line(self) -> str:
        text = f"{self.code:<11} {self.path}"
        if self.target is not None:
            text += (" => " if self.code.startswith("h") else " -> ") + self.target
        return text

    @property
    def is_deletion(self) -> bool:
        return self.code.startswith("*deleting")


@dataclass
class SyncResult:
    changed: bool
    dry_run: bool
    volumes: list
    excluded_volumes: list
    argv: list
    rsync_rc: int | None
    rsync_status: str
    changes: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    marker: dict | None = None
    marker_path: str | None = None
    warnings: list = field(default_factory=list)
    stderr: str = ""

    def to_dict(self) -> dict:
        # Field by field, not dataclasses.asdict: asdict deep-copies every Change, which
        # costs 0.3 s on a first sync of 20,000 files (bench/) for a dict that is only serialised.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["changes"] = [c.line for c in self.changes]
        return data


# ---- pure helpers: names, paths, argv ---------------------------------------------------


def split_remote(dest: str):
    """``(host, path)`` for an rsync ``[user@]host:path``; ``(None, dest)`` for a local path."""
    match = _REMOTE_RE.match(dest)
    if not match:
        return None, dest
    return match.group("host"), match.group("path")


def check_volume_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or "\n" in name:
        raise SyncError("usage", f"invalid volume name {name!r}: a directory name directly under src")


def check_marker_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or "\n" in name:
        raise SyncError("usage", f"invalid marker_name {name!r}: a plain file name, written in dest")


def is_excluded(name: str, patterns) -> bool:
    """Whether an rsync exclude pattern matches the top-level volume ``name``.

    Only patterns that name one path component are considered (``logs``,
    ``/logs``, ``logs/``, ``conn*``): those are the ones that exclude a whole
    volume. Deeper patterns act inside volumes and are left to rsync.
    """
    for pattern in patterns:
        core = pattern.rstrip("/")
        core = core[1:] if core.startswith("/") else core
        if core and "/" not in core and fnmatch.fnmatchcase(name, core):
            return True
    return False


def dest_dir(dest: str) -> str:
    """``dest`` as rsync's destination directory argument (always ending in ``/``)."""
    host, path = split_remote(dest)
    if host is not None:
        return f"{host}:{path.rstrip('/')}/" if path.rstrip("/") else f"{host}:{path}"
    return dest.rstrip("/") + "/"


def rsync_flags(options: SyncOptions) -> list:
    """The rsync options of a sync, without program name and paths.

    This is the one place where the sync's rsync options are decided; the
    scheduled job and the module both get them from here.
    """
    flags = ["--archive"]  # -rlptgoD: recursion, links, perms, times, owner, group, devices/specials
    if options.preserve_hardlinks:
        flags.append("--hard-links")
    if options.preserve_acls:
        flags.append("--acls")
    if options.preserve_xattrs:
        flags.append("--xattrs")
    if options.numeric_ids:
        flags.append("--numeric-ids")  # service uids need not exist by name on the key holder
    flags.append("--relative")  # src/./vol -> dest/vol, see the module docstring
    if options.delete:
        flags.append("--delete")
    if options.max_delete is not None:
        flags.append(f"--max-delete={options.max_delete}")
    if options.checksum:
        flags.append("--checksum")
    if options.bwlimit:
        flags.append(f"--bwlimit={options.bwlimit}")
    if options.io_timeout:
        flags.append(f"--timeout={options.io_timeout}")
    if options.rsh:
        flags.append(f"--rsh={options.rsh}")
    if options.itemize:
        flags.append("--itemize-changes")
    # Plain numbers whatever the locale (no thousands separators to guess).
    flags += ["--stats", "--no-human-readable"]
    if options.dry_run:
        flags.append("--dry-run")
    if options.marker_name:
        # The marker lives beside the volumes, outside what rsync sends; this also keeps a
        # volume that happens to share its name from clobbering it.
        flags.append(f"--exclude=/{options.marker_name}")
    flags += [f"--exclude={pattern}" for pattern in options.exclude]
    return flags


def build_rsync_argv(options: SyncOptions, volumes=None) -> list:
    """The complete rsync command line (a list) for ``volumes`` (default ``options.volumes``)."""
    volumes = options.volumes if volumes is None else volumes
    if not volumes:
        raise SyncError("usage", "no volume to sync: list volumes or discover them with select_volumes()")
    src = options.src.rstrip("/") or "/"
    sources = [f"{src}/./{name}" for name in volumes]
    return [options.rsync, *rsync_flags(options), *sources, dest_dir(options.dest)]


# ---- parsing rsync's output ---------------------------------------------------------------

_ITEM_RE = re.compile(r"^(?P<code>[<>ch.][fdLDSU][.+ ?a-zA-Z]{9}) (?P<rest>.*)$")
_MESSAGE_RE = re.compile(r"^(?P<code>\*[a-z]+) +(?P<rest>.*)$")


def parse_itemized(text: str) -> list:
    """The changes listed by ``--itemize-changes`` (one Change per item, other lines ignored).

    Items that only repeat an unchanged file (``-ii`` style, all dots/spaces) are dropped,
    so every returned entry is a real change.
    """
    changes = []
    for raw in (text or "").splitlines():
        line = raw.rstrip("\r")
        match = _MESSAGE_RE.match(line)
        if match:
            changes.append(Change(match.group("code"), match.group("rest")))
            continue
        match = _ITEM_RE.match(line)
        if not match:
            continue
        code, rest = match.group("code"), match.group("rest")
        if code[0] == "." and not code[2:].strip(". "):
            continue
        target = None
        if code[0] == "h" and " => " in rest:
            rest, target = rest.split(" => ", 1)
        elif code[1] == "L" and " -> " in rest:
            rest, target = rest.split(" -> ", 1)
        changes.append(Change(code, rest, target))
    return changes


_STATS_KEYS = {
    "Number of files": "files",
    "Number of created files": "files_created",
    "Number of deleted files": "files_deleted",
    "Number of regular files transferred": "files_transferred",
    "Total file size": "bytes_total",
    "Total transferred file size": "bytes_transferred",
    "Literal data": "bytes_literal",
    "Matched data": "bytes_matched",
    "File list size": "file_list_size",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}
_STATS_RE = re.compile(r"^(?P<key>[A-Z][A-Za-z ]+?):\s+(?P<value>[0-9][0-9,.' \u202f\u00a0]*)")


def parse_stats(text: str) -> dict:
    """The ``--stats`` block as integers, keyed by stable names (see ``_STATS_KEYS``).

    Digit grouping of any locale (``1,234``, ``1.234``, ``1 234``) is tolerated although
    we ask for ``--no-human-readable``; unknown lines are ignored.
    """
    stats = {}
    for line in (text or "").splitlines():
        match = _STATS_RE.match(line.strip())
        if not match or match.group("key") not in _STATS_KEYS:
            continue
        digits = re.sub(r"\D", "", match.group("value"))
        if digits:
            stats[_STATS_KEYS[match.group("key")]] = int(digits)
    return stats


def classify_exit(rc: int):
    """``(status, message)`` for an rsync exit code."""
    message = RSYNC_EXIT_MESSAGES.get(rc, "unknown error")
    if rc == 0:
        return STATUS_OK, message
    if rc == 24:
        return STATUS_VANISHED, message
    if rc == 23:
        return STATUS_PARTIAL, message
    if rc == 25:
        return STATUS_MAX_DELETE, message
    return STATUS_ERROR, message


def _stderr_tail(text: str, lines: int = 20) -> str:
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# ---- guards ----------------------------------------------------------------------------------


def _is_empty_dir(path: str) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _overlaps(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def select_volumes(options: SyncOptions):
    """Check the source and return ``(volumes, excluded_volumes)``; raise SyncError('guard').

    Refuses: a missing ``src``; a listed volume that is missing, not a directory or a
    symlink (rsync would copy the link, not the data); an ``src`` without volumes or an
    empty volume (an unmounted disk) unless ``allow_empty``; a local ``dest`` that overlaps
    ``src``. Volumes matched by an exclude pattern are left out (and reported).
    """
    src = options.src
    if not os.path.exists(src):
        raise SyncError("guard", f"refusing to sync: source directory {src} does not exist")
    if not os.path.isdir(src):
        raise SyncError("guard", f"refusing to sync: source {src} is not a directory")
    host, _path = split_remote(options.dest)
    if host is None and _overlaps(src, options.dest):
        raise SyncError("guard", f"refusing to sync: dest {options.dest} and src {src} overlap")
    if options.volumes is None:
        with os.scandir(src) as entries:
            names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name not in NOT_VOLUMES)
        if not names and not options.allow_empty:
            raise SyncError(
                "guard",
                f"refusing to sync: source {src} holds no volume (is its disk mounted?); "
                "set allow_empty to sync an empty source",
            )
    elif not options.volumes and not options.allow_empty:
        raise SyncError("guard", "refusing to sync: volumes is an empty list; set allow_empty to sync nothing")
    else:
        names = list(options.volumes)
        missing = [n for n in names if not os.path.lexists(os.path.join(src, n))]
        if missing:
            raise SyncError(
                "guard",
                f"refusing to sync: volume(s) {', '.join(missing)} missing under {src} (is the disk mounted?)",
            )
        for name in names:
            path = os.path.join(src, name)
            if os.path.islink(path):
                raise SyncError("guard", f"refusing to sync: volume {path} is a symlink; list its target instead")
            if not os.path.isdir(path):
                raise SyncError("guard", f"refusing to sync: volume {path} is not a directory")
    excluded = [n for n in names if is_excluded(n, options.exclude)]
    volumes = [n for n in names if n not in excluded]
    if not volumes and names and not options.allow_empty:
        raise SyncError("guard", f"refusing to sync: every volume under {src} is excluded; nothing to sync")
    if not options.allow_empty:
        empty = [n for n in volumes if _is_empty_dir(os.path.join(src, n))]
        if empty:
            raise SyncError(
                "guard",
                f"refusing to sync: volume(s) {', '.join(empty)} under {src} are empty (unmounted disk?); "
                "syncing would wipe the copy in dest. Set allow_empty if this is intended",
            )
    return volumes, excluded


# ---- lock --------------------------------------------------------------------------------------


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


@contextlib.contextmanager
def hold_lock(path: str | None, timeout: float, poll: float = 0.2):
    """Hold an exclusive ``flock`` on ``path``, waiting up to ``timeout`` seconds.

    The kernel drops the lock when the holder exits, however it dies, so a crashed
    sync never blocks the next one. The file keeps the holder's pid for the error text.
    """
    if not path:
        yield None
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SyncError("lock", f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise SyncError("lock", f"cannot lock {path}: {exc.strerror}") from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    holder = _lock_holder(fd)
                    who = f" (pid {holder})" if holder else ""
                    raise SyncError(
                        "lock",
                        f"another sync holds the lock {path}{who}; gave up after waiting {timeout:g} s (lock_timeout)",
                    ) from None
                time.sleep(min(poll, remaining))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


# ---- marker ------------------------------------------------------------------------------------


def _utc_iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)  # noqa: UP017 - targets may run Python < 3.11
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_marker(options: SyncOptions, volumes, stats: dict, rsync_rc: int, started: float, finished: float) -> dict:
    """The freshness marker: when, from where, what, and how rsync ended. No secrets, no rsh."""
    return {
        **build_progress_marker(options, "done", started),
        "time": _utc_iso(finished),
        "volumes": list(volumes),
        "files": stats.get("files", 0),
        "files_transferred": stats.get("files_transferred", 0),
        "files_deleted": stats.get("files_deleted", 0),
        "bytes_total": stats.get("bytes_total", 0),
        "bytes_sent": stats.get("bytes_sent", 0),
        "rsync_exit_code": rsync_rc,
    }


def build_progress_marker(options: SyncOptions, state: str, started: float, error: str | None = None) -> dict:
    """The marker's common part, all of a sync under way (``running``) or one that ``failed``."""
    marker = {
        "format": MARKER_FORMAT,
        "writer": "grus.backup.nfs_sync",
        "state": state,
        "started": _utc_iso(started),
        "source_host": options.source_host or socket.gethostname(),
        "source": options.src,
    }
    if state == "failed":
        marker["failed"] = _utc_iso(time.time())
        marker["error"] = error
    return marker


def marker_path(options: SyncOptions) -> str:
    host, path = split_remote(options.dest)
    if host is not None:
        return f"{host}:{path.rstrip('/') + '/' if path.rstrip('/') else path}{options.marker_name}"
    return os.path.join(options.dest, options.marker_name)


def write_marker(options: SyncOptions, marker: dict, runner=run) -> str:
    """Write ``marker`` atomically as ``dest/<marker_name>``; return where it went.

    Locally: a temporary file in ``dest``, fsync, rename. Over SSH: rsync of a local
    temporary file into ``dest`` through the same ``rsh`` (rsync writes a temporary file
    beside the target and renames it), which a key limited to ``rrsync`` allows.
    """
    data = json.dumps(marker, indent=2, sort_keys=True) + "\n"
    target = marker_path(options)
    host, _path = split_remote(options.dest)
    if host is None:
        os.makedirs(options.dest, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=options.dest, prefix=f".{options.marker_name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(options.dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return target
    with tempfile.TemporaryDirectory(prefix="grus-sync-marker.") as tmp_dir:
        local = os.path.join(tmp_dir, options.marker_name)
        with open(local, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.chmod(local, 0o644)
        # Into the directory, not onto the file name: rrsync (3.5) pins an existing target file
        # by descriptor and then cannot replace it. --ignore-times: a marker of the same size
        # written within the same second must still be sent.
        argv = [options.rsync, "--perms", "--times", "--ignore-times"]
        if options.io_timeout:
            argv.append(f"--timeout={options.io_timeout}")
        if options.rsh:
            argv.append(f"--rsh={options.rsh}")
        argv += [local, dest_dir(options.dest)]
        result = runner(argv)
    if result.rc != 0:
        _status, meaning = classify_exit(result.rc)
        raise OSError(f"rsync exit {result.rc} ({meaning}): {_stderr_tail(result.stderr, 5)}")
    return target


# ---- the procedure -------------------------------------------------------------------------


def _run_rsync(argv, runner):
    try:
        return runner(argv)
    except CommandNotFound as exc:
        raise SyncError("error", f"rsync not found ({exc.program}): install rsync") from exc


def sync(options: SyncOptions, runner=run) -> SyncResult:
    """Run one guarded sync. Returns a SyncResult, or raises SyncError (with ``.result``).

    Exit 24 (source files vanished during the transfer) is a success with a warning;
    23 (partial), 25 (max_delete) and every other code are failures, each with its own
    ``kind``. The marker is written only after a successful, real (not dry) run, and
    does not count as a change: it is rewritten on every run, by design.
    """
    options.validate()
    with hold_lock(options.lock, options.lock_timeout):
        volumes, excluded = select_volumes(options)
        result = SyncResult(
            changed=False,
            dry_run=options.dry_run,
            volumes=volumes,
            excluded_volumes=excluded,
            argv=[],
            rsync_rc=None,
            rsync_status=STATUS_OK,
        )
        started = time.time()
        clock = time.monotonic()
        if volumes:
            argv = build_rsync_argv(options, volumes)
            result.argv = argv
            if options.delete and options.max_delete is not None and not options.dry_run:
                _preflight_deletions(options, volumes, result, runner)
            tracked = options.marker and not options.dry_run
            if tracked:
                _write_progress_marker(options, "running", started, runner, result)
            try:
                proc = _run_rsync(argv, runner)
                result.rsync_rc = proc.rc
                result.stderr = _stderr_tail(proc.stderr)
                result.changes = parse_itemized(proc.stdout)
                result.changed = bool(result.changes)
                result.stats = parse_stats(proc.stdout)
                status, meaning = classify_exit(proc.rc)
                result.rsync_status = status
                _raise_for_status(options, status, meaning, proc.rc, result)
            except SyncError as exc:
                if tracked:
                    # Best effort: when the link is down this fails too, and the marker
                    # stays "running", which the backup reports as an unfinished sync.
                    with contextlib.suppress(OSError, CommandNotFound):
                        failed = build_progress_marker(options, "failed", started, f"{exc.kind}: {exc.message}"[:300])
                        write_marker(options, failed, runner=runner)
                raise
        result.stats["elapsed_seconds"] = round(time.monotonic() - clock, 3)
        if options.marker and not options.dry_run:
            marker = build_marker(options, volumes, result.stats, result.rsync_rc or 0, started, time.time())
            try:
                result.marker_path = write_marker(options, marker, runner=runner)
            except (OSError, CommandNotFound) as exc:
                raise SyncError(
                    "marker", f"synced, but could not write the marker {marker_path(options)}: {exc}", result
                ) from exc
            result.marker = marker
        return result


def _write_progress_marker(options, state, started, runner, result) -> None:
    try:
        write_marker(options, build_progress_marker(options, state, started), runner=runner)
    except (OSError, CommandNotFound) as exc:
        raise SyncError(
            "marker",
            f"could not write the marker {marker_path(options)} before syncing: {exc}; nothing was synced",
            result,
        ) from exc


def _preflight_deletions(options, volumes, result, runner) -> None:
    """A dry run first, so that a max_delete overflow refuses before anything is deleted."""
    dry = SyncOptions(**{**options.to_dict(), "dry_run": True, "itemize": True})
    proc = _run_rsync(build_rsync_argv(dry, volumes), runner)
    status, meaning = classify_exit(proc.rc)
    if status == STATUS_MAX_DELETE:
        would = [c for c in parse_itemized(proc.stdout) if c.is_deletion]
        result.rsync_rc = proc.rc
        result.rsync_status = status
        result.changes = parse_itemized(proc.stdout)
        result.stderr = _stderr_tail(proc.stderr)
        raise SyncError(
            "max_delete",
            f"refusing to sync: more than max_delete={options.max_delete} deletions needed in "
            f"{options.dest} (dry run listed {len(would)} before stopping); nothing was changed",
            result,
        )
    if status == STATUS_ERROR:
        result.rsync_rc = proc.rc
        result.rsync_status = status
        result.stderr = _stderr_tail(proc.stderr)
        _raise_for_status(options, status, meaning, proc.rc, result)


def _raise_for_status(options, status, meaning, rc, result) -> None:
    where = f"{options.src} -> {options.dest}"
    detail = f": {result.stderr}" if result.stderr else ""
    if status == STATUS_OK:
        return
    if status == STATUS_VANISHED:
        result.warnings.append(
            f"rsync exit 24: some source files vanished during the transfer ({where}); normal on live volumes"
        )
        return
    if status == STATUS_PARTIAL:
        raise SyncError(
            "partial",
            f"partial transfer {where}: some files could not be transferred (rsync exit 23){detail}",
            result,
        )
    if status == STATUS_MAX_DELETE:
        raise SyncError(
            "max_delete",
            f"rsync stopped deleting at max_delete={options.max_delete} ({where}, rsync exit 25){detail}",
            result,
        )
    raise SyncError("error", f"rsync failed {where}: exit {rc} ({meaning}){detail}", result)


# ---- the scheduled job's entry point --------------------------------------------------------

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2


def _say(text: str, stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    stream.write(text + "\n")
    stream.flush()


def main(argv=None, runner=run) -> int:
    """``python3 -m <package>._rsync --config FILE``: the scheduled sync.

    The configuration is a JSON object with the nfs_sync module's option names. Exit 0
    on success, 1 on success with warnings (rsync 24), 2 on failure or refusal.
    """
    parser = argparse.ArgumentParser(prog="grus-nfs-sync", description="guarded volume sync (grus.backup)")
    parser.add_argument("--config", required=True, help="JSON file with the nfs_sync options")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--print-argv", action="store_true", help="print the rsync argv as JSON and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise SyncError("usage", f"{args.config}: expected a JSON object")
        if args.dry_run:
            data["dry_run"] = True
        options = SyncOptions.from_dict(data)
        if args.print_argv:
            volumes, _excluded = select_volumes(options)
            _say(json.dumps(build_rsync_argv(options, volumes)))
            return EXIT_OK
        result = sync(options, runner=runner)
    except SyncError as exc:
        _say(f"nfs-sync: FAILED ({exc.kind}): {exc.message}", sys.stderr)
        if args.json and exc.result is not None:
            _say(json.dumps({"failed": True, "kind": exc.kind, "msg": exc.message, **exc.result.to_dict()}))
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        _say(f"nfs-sync: FAILED: {exc}", sys.stderr)
        return EXIT_ERROR
    if args.json:
        _say(json.dumps({"failed": False, **result.to_dict()}))
    else:
        stats = result.stats
        _say(
            f"nfs-sync: {'dry run, ' if result.dry_run else ''}{len(result.changes)} change(s) in "
            f"{', '.join(result.volumes) or 'no volume'} -> {options.dest}; "
            f"{stats.get('files_transferred', 0)} file(s) sent, {stats.get('bytes_sent', 0)} bytes, "
            f"{stats.get('elapsed_seconds', 0)} s; marker {result.marker_path or 'not written'}"
        )
    for warning in result.warnings:
        _say(f"nfs-sync: WARNING: {warning}", sys.stderr)
    return EXIT_WARNING if result.warnings else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
