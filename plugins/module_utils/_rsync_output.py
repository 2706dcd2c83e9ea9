# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading rsync: exit codes, ``--itemize-changes`` lines, ``--stats``, and a sync's result.

layer 0: may import nothing of grus.backup (standard library only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

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


# The one line the key holder's receiving guard (_sync_receive.refusal_line) writes when it refuses or
# stops a sync: ``grus-sync-receive: REFUSED (<cause>): <why>``. Kept in step by a unit test.
_REFUSAL_RE = re.compile(r"grus-sync-receive: REFUSED \((?P<cause>[a-z_]+)\): (?P<why>.*)$")


def receiver_refusal(stderr: str):
    """``(cause, why)`` when the key holder's receiving guard refused the sync, else ``None``."""
    for line in (stderr or "").splitlines():
        match = _REFUSAL_RE.search(line.strip())
        if match:
            return match.group("cause"), match.group("why")
    return None


def stderr_tail(text: str, lines: int = 20) -> str:
    kept = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
