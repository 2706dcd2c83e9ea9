# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups come first: a running ``borg check`` gives the repository lock up when a backup starts.

layer 1: may import _runner.

Private to grus.backup and pure standard library (shipped with the key holder's job).

``borg check`` (and ``--verify-data``, which reads every chunk over the link) holds the repository's
exclusive lock for as long as it runs: hours over a WAN. Every backup in that time would fail with a
lock timeout. So the two coordinate through two lock files in the job's state directory:

* ``check.lock``: a check or verify run holds it (``flock`` exclusive) for its whole run and writes
  its pid and task into it. One check at a time: a second one skips (the first covers it).
* ``backup.lock``: a backup run holds it (``flock`` shared) for its whole run. A check that starts
  while a backup runs waits for it to end before it takes the repository lock.

A backup, before ``borg create``, asks a running check to yield (``ask_check_to_yield``): SIGTERM
to the registered pid (only when the lock is really held and the pid is this job's), then it waits,
bounded, until the check released ``check.lock``. The check's SIGTERM handler (``Yielder``) passes
SIGTERM (and SIGCONT, as systemd does) to its borg child, which ends cleanly and so releases the
repository lock (borg's own SIGTERM handling unwinds its ``with repository`` block; through ssh the
server's ``borg serve`` releases it when the connection closes). The check then reports "yielded",
exits 0, and does not count as a complete check: the metric of the last complete check ages, and an
alert fires when no check completed for too long.

``flock`` locks belong to the open file: they go away with the process however it ends (even
SIGKILL), so a crashed check never blocks a backup, and a stale pid in the file is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time

from ._runner import CommandNotFound, Result, _checked_argv, build_env

CHECK_LOCK = "check.lock"
BACKUP_LOCK = "backup.lock"
POLL_SECONDS = 0.2
DEFAULT_YIELD_WAIT = 120  # seconds a backup waits for a check to let go
REGISTER_WAIT = 5.0  # a probe by the other side holds a lock for a moment only
JOB_MARK = "_backup_job"  # a pid is signalled only when it runs the job (not a recycled pid)


class CheckBusy(Exception):
    """Another check or verify run holds ``check.lock``."""


def _lock(fd: int, operation: int, wait_seconds: float, clock=time.monotonic, sleep=time.sleep) -> bool:
    """``flock`` without blocking, retried for ``wait_seconds``; True once taken."""
    start = clock()
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if clock() - start >= wait_seconds:
                return False
            sleep(POLL_SECONDS)


def _open(state_dir: str, name: str, flags: int) -> int:
    return os.open(os.path.join(state_dir, name), flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


class Registration:
    """A check or verify run's hold on ``check.lock`` (with its pid and task), as a context manager."""

    def __init__(self, state_dir: str, task: str):
        self.state_dir = state_dir
        self.task = task
        self.fd = None

    def __enter__(self) -> Registration:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = _open(self.state_dir, CHECK_LOCK, os.O_RDWR | os.O_CREAT)
        if not _lock(fd, fcntl.LOCK_EX, REGISTER_WAIT):
            holder = read_holder(fd)
            os.close(fd)
            raise CheckBusy(f"another check runs ({holder[1] or '?'}, pid {holder[0] or '?'})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.task}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


class BackupRegistration:
    """A backup run's shared hold on ``backup.lock`` (a check waits while any backup holds it)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.fd = None

    def __enter__(self) -> BackupRegistration:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = _open(self.state_dir, BACKUP_LOCK, os.O_RDWR | os.O_CREAT)
        # A check's probe holds it for a moment; a backup never gives up on it (it is not exclusive).
        _lock(fd, fcntl.LOCK_SH, float("inf"))
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def backup_running(state_dir: str) -> bool:
    """True while a backup run holds ``backup.lock``."""
    try:
        fd = _open(state_dir, BACKUP_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if _lock(fd, fcntl.LOCK_EX, 0):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def read_holder(fd: int) -> tuple:
    """``(pid or None, task or "")`` written by the check that holds (or held) ``check.lock``."""
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    except OSError:
        return None, ""
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, text[1] if len(text) > 1 else ""


def is_job(pid: int, proc: str = "/proc") -> bool:
    """True when ``pid`` runs this job (its command line names the job's module)."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as handle:
            return JOB_MARK.encode() in handle.read()
    except OSError:
        return False


def ask_check_to_yield(
    state_dir: str, wait_seconds: float, *, kill=os.kill, is_job=is_job, clock=time.monotonic, sleep=time.sleep
) -> dict | None:
    """Make a running check or verify let go of the repository; None when none runs.

    Returns ``{"pid", "task", "stopped", "waited_seconds"}``: ``stopped`` is False when the check
    still held on after ``wait_seconds`` (the backup then goes on; borg's lock wait is the last
    resort).
    """
    try:
        fd = _open(state_dir, CHECK_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _lock(fd, fcntl.LOCK_SH, 0):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        pid, task = read_holder(fd)
        start = clock()
        if pid and pid != os.getpid() and is_job(pid):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                kill(pid, signal.SIGTERM)
        stopped = _lock(fd, fcntl.LOCK_SH, wait_seconds, clock=clock, sleep=sleep)
        if stopped:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return {"pid": pid, "task": task, "stopped": stopped, "waited_seconds": round(clock() - start, 1)}
    finally:
        os.close(fd)


class Yielder:
    """The check's side: a runner that knows its borg child, and a SIGTERM handler that stops it.

    ``run`` has the signature of ``_runner.run`` (so ``BorgRepo`` takes it as its runner). Once a
    yield was requested it starts nothing more, and the child it runs gets SIGTERM then SIGCONT.
    """

    def __init__(self):
        self.requested = False
        self.child = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, _signum=None, _frame=None) -> None:
        self.requested = True
        self._stop_child()

    def _stop_child(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
                child.send_signal(signal.SIGCONT)

    def run(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
        argv = _checked_argv(argv, secrets)
        if self.requested:
            return Result(argv, 143, "", "", secrets=tuple(secrets))
        try:
            child = subprocess.Popen(  # noqa: S603 - argv list, shell is never used
                argv,
                env=build_env(env, inherit=inherit_env),
                cwd=cwd,
                stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CommandNotFound(argv[0]) from exc
        self.child = child
        if self.requested:  # SIGTERM came between the check above and the start
            self._stop_child()
        try:
            out, err = child.communicate(input=stdin_data, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            return Result(argv, -1, out or "", err or "", timed_out=True, secrets=tuple(secrets))
        finally:
            self.child = None
        return Result(argv, child.returncode, out, err, secrets=tuple(secrets))
