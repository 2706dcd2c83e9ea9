# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sync's lock: an exclusive ``flock`` shared by the ``nfs_sync`` module and the scheduled sync.

layer 2: may import _rsync_options.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from ._rsync_options import SyncError


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
