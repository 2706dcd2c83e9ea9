# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key holder's receiving end of a sync over SSH: a size guard in front of ``rrsync``.

layer 1: may import _unexpected

Each sync client's key in root's ``authorized_keys`` runs (the key_holder role writes it)::

    restrict,command="/usr/local/sbin/grus-sync-receive --dir <export>/<client> --quota 500G --min-free 5%" ssh-...

and this program, before and while it lets ``rrsync -wo <export>/<client>`` do the transfer:

* refuses the sync when the client's directory already uses more than its quota (bytes on disk, hard
  links counted once, not crossing into other file systems): one client cannot grow without bound;
* refuses it when the export's file system has less free space than the reserve, and stops a running
  transfer (SIGTERM to rsync's process group; rsync removes its partial file) as soon as the free space
  falls below it: one client cannot fill the key holder, whatever its quota.

A refusal is one line on stderr, ``grus-sync-receive: REFUSED (<cause>): <why>``, which ssh hands to the
sync client's rsync; the client's sync (``_rsync``) reports it as a failure of kind ``<cause>``
(``quota`` or ``key_holder_full``), so the alert says why. Nothing is ever written to stdout: it
carries rsync's protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys

from . import _unexpected

REFUSAL_PREFIX = "grus-sync-receive: REFUSED"


CAUSE_QUOTA = "quota"


CAUSE_FULL = "key_holder_full"


# The forced command itself is wrong (a missing directory, a bad size): the operator's to fix.
CAUSE_SETUP = "key_holder_setup"


EXIT_REFUSED = 3


DEFAULT_RRSYNC = "/usr/bin/rrsync"


# How often the free space is looked at during a transfer (seconds).
DEFAULT_INTERVAL = 1.0


_SIZE_RE = re.compile(r"^\s*(?P<number>[0-9]+(\.[0-9]+)?)\s*(?P<unit>[KMGTP]?)(i?B)?\s*$", re.IGNORECASE)


_PERCENT_RE = re.compile(r"^\s*(?P<number>[0-9]+(\.[0-9]+)?)\s*%\s*$")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text) -> int | None:
    """Bytes of a size such as ``500G``, ``1.5T``, ``4096`` (binary units); ``None`` for ``""``/``0``/none."""
    if text is None or str(text).strip() in ("", "0"):
        return None
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"invalid size {text!r}: give bytes or a number with K, M, G, T or P (such as 500G)")
    return int(float(match.group("number")) * _UNITS[match.group("unit").upper()])


def parse_reserve(text):
    """``("percent", p)`` for ``5%``, ``("bytes", n)`` for a size, ``None`` for no reserve."""
    if text is not None:
        match = _PERCENT_RE.match(str(text))
        if match:
            share = float(match.group("number"))
            if share >= 100:
                raise ValueError(f"invalid reserve {text!r}: a share of the file system below 100%")
            return ("percent", share) if share > 0 else None
    size = parse_size(text)
    return ("bytes", size) if size else None


def reserve_bytes(reserve, path: str) -> int:
    """The reserve in bytes on the file system of ``path``."""
    if reserve is None:
        return 0
    kind, value = reserve
    if kind == "bytes":
        return int(value)
    st = os.statvfs(path)
    return int(st.f_blocks * st.f_frsize * value / 100)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer could still write (what ``df`` calls available)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def tree_bytes(root: str) -> int:
    """Bytes ``root`` uses on disk (``du -sx``): blocks of every entry, hard links once, one file system."""
    top = os.lstat(root)
    seen = set()
    total = top.st_blocks * 512
    todo = [root]
    while todo:
        directory = todo.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue  # vanished or unreadable: rsync will say so; the guard must not crash on it
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top.st_dev:
                    continue
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
    return total


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)  # pragma: no cover


def refusal_line(cause: str, text: str) -> str:
    """The one line a refusal leaves on stderr (``_rsync_output.receiver_refusal`` reads it)."""
    return f"{REFUSAL_PREFIX} ({cause}): {' '.join(text.split())}"


def _refuse(cause: str, text: str) -> int:
    sys.stderr.write(refusal_line(cause, text) + "\n")
    sys.stderr.flush()
    return EXIT_REFUSED


def check_before(directory: str, quota, reserve):
    """``(cause, why)`` when the sync must not start, else ``None``."""
    if quota:
        used = tree_bytes(directory)
        if used > quota:
            return CAUSE_QUOTA, (
                f"{directory} already uses {human(used)} ({used} bytes), over its quota of {human(quota)} "
                f"({quota} bytes); nothing was transferred. Free space there or raise the client's quota "
                "(key_holder_sync_clients[].quota / key_holder_client_quota)"
            )
    needed = reserve_bytes(reserve, directory)
    free = free_bytes(directory)
    if needed and free < needed:
        return CAUSE_FULL, (
            f"the key holder's export file system has {human(free)} free, below its reserve of {human(needed)} "
            f"(key_holder_export_min_free); nothing was transferred into {directory}"
        )
    return None


def receive(directory: str, quota, reserve, rrsync: str = DEFAULT_RRSYNC, interval: float = DEFAULT_INTERVAL) -> int:
    """Run ``rrsync -wo directory`` under the guards; its exit status, or EXIT_REFUSED."""
    if not os.path.isdir(directory) or os.path.islink(directory):
        return _refuse(CAUSE_SETUP, f"{directory} is not a directory on the key holder")
    refused = check_before(directory, quota, reserve)
    if refused:
        return _refuse(*refused)
    needed = reserve_bytes(reserve, directory)
    # Its own process group: rsync's receiver forks, and both must stop when the disk runs low.
    child = subprocess.Popen([rrsync, "-wo", directory], start_new_session=True)  # noqa: S603

    def forward(signum, _frame):
        _kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, forward)
    while True:
        try:
            return child.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            pass
        free = free_bytes(directory)
        if needed and free < needed:
            _kill(child, signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill(child, signal.SIGKILL)
                child.wait()
            return _refuse(
                CAUSE_FULL,
                f"stopped the transfer into {directory}: the key holder's export file system fell to "
                f"{human(free)} free, below its reserve of {human(needed)} (key_holder_export_min_free)",
            )


def _kill(child, signum) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)


def main(argv=None) -> int:
    """``grus-sync-receive --dir DIR [--quota SIZE] [--min-free SIZE|N%]``: the forced command of a sync key."""
    parser = argparse.ArgumentParser(
        prog="grus-sync-receive", description="receive a sync client's rsync into its directory (grus.backup)"
    )
    parser.add_argument("--dir", required=True, help="the client's directory under the export")
    parser.add_argument("--quota", default="", help="refuse when the directory uses more (such as 500G); none if empty")
    parser.add_argument("--min-free", default="", help="free space kept on the export (such as 10G or 5%%)")
    parser.add_argument("--rrsync", default=DEFAULT_RRSYNC, help="rrsync, which confines rsync to --dir")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        quota = parse_size(args.quota)
        reserve = parse_reserve(args.min_free)
    except ValueError as exc:
        return _refuse(CAUSE_SETUP, str(exc))
    try:
        return receive(os.path.abspath(args.dir), quota, reserve, args.rrsync, max(args.interval, 0.05))
    except Exception as exc:  # one line for the client's rsync (over ssh) and the journal, never a traceback
        return _unexpected.report("grus-sync-receive", exc, f"nothing more was received into {args.dir}")


if __name__ == "__main__":
    raise SystemExit(main())
