# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A sync's options (``SyncOptions``, checked once when made) and the one rsync command line they give.

layer 1: may import _config, _marker.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import asdict, dataclass, field

from . import _marker
from ._config import dataclass_kwargs

DEFAULT_MARKER_NAME = _marker.DEFAULT_NAME


DEFAULT_LOCK = "/run/lock/grus-backup-nfs-sync.lock"


DEFAULT_LOCK_TIMEOUT = 300


# A sync deletes at most this many files and directories in dest per run unless told otherwise
# (the sync_client role's default too). Normal churn of service volumes stays well below it;
# a source that lost most of its files (a half-mounted disk, a wrong src) is refused before
# rsync deletes anything (the dry run first), instead of mirroring the loss into the copy.
DEFAULT_MAX_DELETE = 1000


# rsync --timeout: a stalled connection (a dead link, a hung NFS server) ends the sync, and
# frees its lock, after this many seconds without I/O instead of holding both forever.
DEFAULT_IO_TIMEOUT = 300


_BWLIMIT_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[bBkKmMgGtTpP]?$")


# [user@]host:path, host may be a bracketed IPv6 address; a slash before the colon means a local path.
_REMOTE_RE = re.compile(r"^(?P<host>(?:[^@/:]+@)?(?:\[[^\]/]+\]|[^/:\[\]]+)):(?P<path>.*)$")


class SyncError(Exception):
    """A sync that did not happen, or did not complete.

    ``kind`` says why: ``usage`` (bad options), ``guard`` (refused before rsync),
    ``lock`` (another sync holds the lock), ``max_delete``, ``partial``, ``error``
    (rsync failed), ``marker`` (synced, but the marker could not be written), or what the key holder's
    receiving guard named when it refused: ``quota``, ``key_holder_full``, ``key_holder_setup``.
    ``result`` is the :class:`SyncResult` so far, when rsync ran.
    """

    def __init__(self, kind: str, message: str, result=None):
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
    max_delete: int | None = DEFAULT_MAX_DELETE
    preserve_acls: bool = True
    preserve_xattrs: bool = True
    preserve_hardlinks: bool = True
    numeric_ids: bool = True
    bwlimit: str | None = None
    checksum: bool = False
    rsh: str | None = None
    io_timeout: int | None = DEFAULT_IO_TIMEOUT
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
        try:
            kwargs = dataclass_kwargs(cls, data, ("src", "dest"), "sync option")
        except ValueError as exc:
            raise SyncError("usage", str(exc)) from exc
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        # Options are checked once, when made, however they are made (module, job, tests).
        self.validate()

    def validate(self) -> None:
        """Normalise and check the options; raise SyncError('usage') on nonsense."""
        self._validate_places()
        self._validate_names()
        self.max_delete = _count_or_none(self.max_delete, "max_delete must be 0 or more")
        self.io_timeout = _count_or_none(self.io_timeout, "io_timeout must be 0 (none) or more seconds")
        self.lock_timeout = _count_or_none(self.lock_timeout, "lock_timeout must be 0 or more seconds")
        if self.bwlimit is not None:
            self.bwlimit = str(self.bwlimit).strip()
            if not _BWLIMIT_RE.match(self.bwlimit):
                raise SyncError("usage", f"invalid bwlimit {self.bwlimit!r}: use KiB/s, or a number with K, M or G")
        self.lock = self.lock or None
        if self.rsh is not None and not str(self.rsh).strip():
            self.rsh = None

    def _validate_places(self) -> None:
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

    def _validate_names(self) -> None:
        if self.volumes is not None:
            self.volumes = list(dict.fromkeys(str(v) for v in self.volumes))
            for name in self.volumes:
                check_plain_name(name, "volume name", "a directory name directly under src")
        self.exclude = [str(p) for p in (self.exclude or [])]
        for pattern in self.exclude:
            if not pattern or "\n" in pattern:
                raise SyncError("usage", f"invalid exclude pattern {pattern!r}")
        if self.marker:
            check_plain_name(self.marker_name, "marker_name", "a plain file name, written in dest")
        check_marker_not_a_volume(self, self.volumes or ())


def check_marker_not_a_volume(options: SyncOptions, names) -> None:
    """Refuse a marker named like a volume: ``--exclude=/<marker_name>`` would leave the volume out
    of every sync (its copy silently ageing), and the marker would be written over its copy."""
    if options.marker and options.marker_name in names:
        raise SyncError(
            "usage",
            f"marker_name {options.marker_name!r} is also the name of a volume under {options.src}: that volume "
            "would never be synced and the marker would overwrite its copy in dest; choose another marker_name",
        )


def _count_or_none(value, message: str):
    """``value`` as an int >= 0 (``None`` stays ``None``); SyncError('usage', message) otherwise."""
    if value is None:
        return None
    value = int(value)
    if value < 0:
        raise SyncError("usage", message)
    return value


def split_remote(dest: str):
    """``(host, path)`` for an rsync ``[user@]host:path``; ``(None, dest)`` for a local path."""
    match = _REMOTE_RE.match(dest)
    if not match:
        return None, dest
    return match.group("host"), match.group("path")


def check_plain_name(name: str, option: str, meaning: str) -> None:
    """Refuse a name that is not one plain path component (volumes, the marker)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or "\n" in name:
        raise SyncError("usage", f"invalid {option} {name!r}: {meaning}")


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


# Boolean options, in the order of the command line.
_SWITCHES_BEFORE_RELATIVE = (
    ("preserve_hardlinks", "--hard-links"),
    ("preserve_acls", "--acls"),
    ("preserve_xattrs", "--xattrs"),
    ("numeric_ids", "--numeric-ids"),  # service uids need not exist by name on the key holder
)
# Options with a value, left out when unset (or 0: no I/O timeout).
_VALUED = (("bwlimit", "--bwlimit"), ("io_timeout", "--timeout"), ("rsh", "--rsh"))


def rsync_flags(options: SyncOptions, preflight: bool = False) -> list:
    """The rsync options of a sync, without program name and paths.

    This is the one place where the sync's rsync options are decided; the
    scheduled job and the module both get them from here. ``preflight``: the dry run
    that counts deletions before the real run (itemised, changes nothing).
    """
    flags = ["--archive"]  # -rlptgoD: recursion, links, perms, times, owner, group, devices/specials
    flags += [flag for option, flag in _SWITCHES_BEFORE_RELATIVE if getattr(options, option)]
    flags.append("--relative")  # src/./vol -> dest/vol, see the module docstring
    if options.delete:
        flags.append("--delete")
    if options.max_delete is not None:
        flags.append(f"--max-delete={options.max_delete}")
    if options.checksum:
        flags.append("--checksum")
    flags += [f"{flag}={getattr(options, option)}" for option, flag in _VALUED if getattr(options, option)]
    if options.itemize or preflight:
        flags.append("--itemize-changes")
    # Plain numbers whatever the locale (no thousands separators to guess).
    flags += ["--stats", "--no-human-readable"]
    if options.dry_run or preflight:
        flags.append("--dry-run")
    if options.marker_name:
        # The marker lives beside the volumes, outside what rsync sends; this also keeps a
        # volume that happens to share its name from clobbering it.
        flags.append(f"--exclude=/{options.marker_name}")
    flags += [f"--exclude={pattern}" for pattern in options.exclude]
    return flags


def build_rsync_argv(options: SyncOptions, volumes=None, preflight: bool = False) -> list:
    """The complete rsync command line (a list) for ``volumes`` (default ``options.volumes``)."""
    volumes = options.volumes if volumes is None else volumes
    if not volumes:
        raise SyncError("usage", "no volume to sync: list volumes or discover them with select_volumes()")
    src = options.src.rstrip("/") or "/"
    sources = [f"{src}/./{name}" for name in volumes]
    return [options.rsync, *rsync_flags(options, preflight), *sources, dest_dir(options.dest)]
