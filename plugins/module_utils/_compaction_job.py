# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository host's compaction job (``python3 -m grus_backup._compaction_job``), run as root by
``grus-borg-compact@<repo>.service``; borg itself runs as the repository's user (``--run-as``, via setpriv).

Compaction is what makes a client's deletes permanent, so one run does, in this order:

1. the ``authorized_keys`` guard: every key line has the exact append-only forced command (else exit 2);
2. the repository's own ``append_only`` flag is 1 (restored first: a compaction killed while it had set 0);
3. a compaction hold (``GRUS-HOLD-COMPACTION`` beside the repository) stops here: exit 0, or exit 2 when
   the deletion audit set it (the unit fails, ``OnFailure=`` alerts, every day until an operator removes it);
4. the deletion audit: every transaction since the last compaction, read from the segments without the key;
   one that deletes more than a prune plausibly does holds compaction and exits 2;
5. not due (the interval since the last compaction): exit 0; due, but a backup of the key holder starts
   within ``--quiet-minutes`` (``--backup-times``, this host's clock): deferred to the next daily run,
   exit 0. The compaction holds the repository's exclusive lock; started late (``Persistent=`` after a
   downtime) it would make that backup wait or fail. Only this host's own configuration decides: a key
   holder (an intrusion target) cannot defer it, and a deferral never lasts past a run outside the window;
6. a hard-linked snapshot of the repository, kept ``DELAY_DAYS`` (the true delay: whatever was deleted
   before this compaction stays recoverable from it), older snapshots expired;
7. ``borg compact`` with the flag at 0 for its duration (the intent recorded first), then the flag at 1 again.

The other modes (``--restore-flag``, ``--audit-json``, ``--rollback``) live in ``_compaction_tools``, the
entry point the unit and ``grus-borg-compact`` run. Exit 0 ok (or nothing due), 2 error or hold by the audit.

With ``--metrics-dir`` every run writes its metrics (``_metrics``, task ``compaction``, one file per
repository): the repository's bytes on disk, free space, last write, transactions and deleted objects
since the last compaction, the compaction hold, the audit's verdict and the authorized_keys guard's; with
``GRUS_BACKUP_PING_URL`` in the environment it pings a dead man's switch (``_ping``). Neither can fail it.

layer 2: may import _runner, _metrics, _ping, _segments, _rollback, _unexpected
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import sys
import tempfile
import time

from . import _metrics, _ping, _rollback, _segments, _unexpected
from ._runner import run

PROG = _rollback.PROG
HOLD_NAME = "GRUS-HOLD-COMPACTION"
AUDIT_OWNER = "audit"
SNAPSHOT_INFO = "grus-snapshot.json"
SNAPSHOT_NAME = re.compile(r"^\d{8}T\d{6}Z(-[a-z0-9-]+)?$")
# Copied into a snapshot, not linked: borg appends to `transactions` in place. The nonce is never copied:
# a rollback keeps the repository's highest reserved nonce (a lower one would let a client reuse nonces).
COPIED_FILES = ("config", "README", "transactions")
DUE_SLACK_SECONDS = 3600  # the daily timer fires within a minute of its time; a run a little early is due
LOCK_WAIT = _rollback.LOCK_WAIT


class JobError(Exception):
    """A failure that ends the run with exit 2; the message says what and what was not done."""


class KeysError(JobError):
    """authorized_keys lets a client key do more than an append-only borg serve of this repository."""


def _write(stream, text: str) -> None:
    stream.write(f"{PROG}: {text}\n")
    stream.flush()


def say(text: str) -> None:
    _write(sys.stdout, text)


def warn(text: str) -> None:
    _write(sys.stderr, text)


def utc(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts if ts is not None else time.time()))


# ---- borg as the repository's user -------------------------------------------------------------------


class Borg:
    """Runs borg (and this job) as the repository's user: root owns the job, the user owns the repository."""

    def __init__(self, run_as: str | None):
        self.prefix = []
        if run_as:
            entry = pwd.getpwnam(run_as)
            if entry.pw_uid != os.geteuid():
                # The user's own primary group by number: not every user has a group of its name (nobody).
                self.prefix = ["setpriv", "--reuid", run_as, "--regid", str(entry.pw_gid), "--init-groups", "--"]

    def run(self, *args: str, timeout: int | None = None):
        return run([*self.prefix, *args], timeout=timeout)

    def borg(self, *args: str, timeout: int | None = None):
        return self.run("borg", "--lock-wait", str(LOCK_WAIT), *args, timeout=timeout)


# ---- 1. the authorized_keys guard --------------------------------------------------------------------


def forced_command(repo: str, storage_quota: str) -> str:
    quota = f" --storage-quota {storage_quota}" if storage_quota else ""
    return f'restrict,command="borg serve --append-only --restrict-to-repository {repo}{quota}"'


def key_line_ok(trimmed: str, forced: str) -> bool:
    """The exact forced command, then the key; a ``from=`` after it only narrows who may connect."""
    if trimmed.startswith(forced + " "):
        return True
    return re.match(re.escape(forced) + r',from="[^"\s]*" ', trimmed) is not None


def check_keys(keys: str, forced: str) -> None:
    try:
        with open(keys, "rb") as fd:
            content = fd.read().decode("utf-8", errors="replace")
    except OSError:
        raise KeysError(
            f"{keys} is missing or unreadable: cannot prove every client key is limited to its "
            "append-only forced command"
        ) from None
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    bad = []
    for number, line in enumerate(lines, start=1):
        trimmed = line.lstrip(" \t")
        # sshd skips leading blanks, empty lines and comments; so do we.
        if not trimmed or trimmed.startswith("#") or key_line_ok(trimmed, forced):
            continue
        # The first 40 characters show the options (or the key type of a bare key), never a whole key.
        excerpt = "".join(c if c.isprintable() else "?" for c in trimmed[:40])
        warn(f"{keys} line {number} starts '{excerpt}'")
        bad.append(str(number))
    if bad:
        raise KeysError(
            f"{keys} line(s) {', '.join(bad)}: a client key lost its append-only forced command (every key "
            f"line must start with '{forced} '): that key could delete archives for good"
        )
    # OpenSSH reads authorized_keys2 beside it too (Debian's default AuthorizedKeysFile); we never write one.
    keys2 = os.path.join(os.path.dirname(keys), "authorized_keys2")
    if os.path.lexists(keys2):
        raise KeysError(
            f"{keys2} exists: sshd also accepts the keys in it, without the append-only forced command checked here"
        )


# ---- 2. the repository's own append_only flag ---------------------------------------------------------


def append_only_flag(repo: str) -> str | None:
    with open(os.path.join(repo, "config"), encoding="utf-8") as fd:
        found = re.search(r"^append_only\s*=\s*(\d+)\s*$", fd.read(), re.MULTILINE)
    return found.group(1) if found else None


def rewrite_flag(repo: str) -> None:
    """Set append_only = 1 in the config file itself (atomically, same owner and mode): the fallback."""
    path = os.path.join(repo, "config")
    with open(path, encoding="utf-8") as fd:
        text = fd.read()
    new, count = re.subn(r"^append_only\s*=\s*\d+\s*$", "append_only = 1", text, flags=re.MULTILINE)
    if not count:
        new = re.sub(r"^\[repository\]\s*$", "[repository]\nappend_only = 1", text, count=1, flags=re.MULTILINE)
    stat = os.stat(path)
    tmp = path + ".grus-tmp"
    with open(tmp, "w", encoding="utf-8") as fd:
        fd.write(new)
        fd.flush()
        os.fsync(fd.fileno())
    os.chmod(tmp, stat.st_mode & 0o7777)
    os.chown(tmp, stat.st_uid, stat.st_gid)
    os.replace(tmp, path)


def set_flag_one(repo: str, borg: Borg) -> str:
    """Make the repository append-only; returns what was done. Raises JobError if borg config failed."""
    if append_only_flag(repo) == "1":
        return ""
    result = borg.borg("config", repo, "append_only", "1", timeout=LOCK_WAIT + 60)
    if result.ok and append_only_flag(repo) == "1":
        return "set append_only = 1"
    rewrite_flag(repo)
    raise JobError(
        f"borg config {repo} append_only 1 failed (rc {result.rc}: {result.stderr.strip()[-300:]}); "
        "append_only = 1 was written into its config file directly"
    )


def intent_path(state_dir: str) -> str:
    return os.path.join(state_dir, "append-only-intent")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def revert_interrupted_rollback(repo: str, borg: Borg, stream=None) -> None:
    """A rollback killed half way left its journal: the repository goes back to its state before it, first.

    Run as the repository's user, under borg's lock (a rollback still running holds it: this waits for it).
    """
    if not _rollback.pending(repo):
        return
    package = __spec__.parent if __spec__ and __spec__.parent else "grus_backup"
    result = borg.run(sys.executable, "-m", f"{package}._rollback", "revert", repo, timeout=LOCK_WAIT + 600)
    (stream or sys.stdout).write(result.stdout)
    if not result.ok or _rollback.pending(repo):
        raise JobError(
            f"{repo} holds an interrupted rollback ({_rollback.work_dir(repo)}) that could not be reverted "
            f"(rc {result.rc}: {result.stderr.strip()[-500:]}): nothing was compacted or changed"
        )


def restore_flag(repo: str, state_dir: str, borg: Borg, own_run: bool = True) -> None:
    """Put append_only = 1 back first: a compaction killed (SIGKILL) after it set 0 left its intent file."""
    revert_interrupted_rollback(repo, borg)
    intent = intent_path(state_dir)
    recorded = {}
    if os.path.exists(intent):
        with open(intent, encoding="utf-8") as fd:
            recorded = json.loads(fd.read() or "{}")
        if not own_run and recorded.get("pid") and pid_alive(int(recorded["pid"])):
            say(f"a compaction (pid {recorded['pid']}) has append_only = 0 in {repo} for its duration: left to it")
            return
    if not os.path.exists(os.path.join(repo, "config")):
        say(f"{repo} has no repository yet: nothing to make append-only")
        return
    done = set_flag_one(repo, borg)
    if done and recorded:
        say(f"{done} in {repo}: restored after a compaction that ended without it ({recorded.get('time')})")
    elif done:
        say(f"{done} in {repo} (it was not append-only: created through borg serve, or loosened)")
    if os.path.exists(intent):
        os.unlink(intent)


def compact(repo: str, state_dir: str, borg: Borg) -> None:
    with open(intent_path(state_dir), "w", encoding="utf-8") as fd:
        json.dump({"pid": os.getpid(), "time": utc(), "repository": repo}, fd)
        fd.flush()
        os.fsync(fd.fileno())
    failure = None
    try:
        result = borg.borg("config", repo, "append_only", "0", timeout=LOCK_WAIT + 60)
        if not result.ok:
            failure = f"borg config {repo} append_only 0 failed (rc {result.rc}): nothing was compacted"
        else:
            result = borg.borg("compact", "--verbose", repo)
            if result.rc >= 2 or result.timed_out:
                failure = f"borg compact failed (rc {result.rc}): {result.stderr.strip()[-500:]}"
    finally:
        try:
            set_flag_one(repo, borg)
        finally:
            if append_only_flag(repo) == "1":
                os.unlink(intent_path(state_dir))
    if failure:
        raise JobError(failure)


# ---- 3-4. hold and audit -------------------------------------------------------------------------------


def hold_path(repo: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(repo)), HOLD_NAME)


def read_hold(path: str) -> dict:
    fields = {}
    with open(path, encoding="utf-8", errors="replace") as fd:
        for line in fd.read().splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                fields.setdefault(key, value)
    return fields


def write_hold(repo: str, owner: str, reason: str) -> str:
    path = hold_path(repo)
    with open(path, "w", encoding="utf-8") as fd:
        fd.write(
            f"held-by: {owner}\nsince: {utc()}\nreason: {reason}\n"
            "Compaction of this repository stays held until an operator removes this file "
            "(docs/operations.md, incident runbook).\n"
        )
    return path


def watermark_path(state_dir: str) -> str:
    return os.path.join(state_dir, "audited-through.json")


def read_watermark(repo: str, state_dir: str) -> int:
    """The last audited commit segment, if that very segment file is still there (not after a rollback)."""
    try:
        with open(watermark_path(state_dir), encoding="utf-8") as fd:
            mark = json.load(fd)
    except (OSError, ValueError):
        return -1
    for number, path in _segments.segment_files(repo):
        if number == mark.get("segment"):
            stat = os.stat(path)
            if stat.st_size == mark.get("size") and stat.st_mtime_ns == mark.get("mtime_ns"):
                return number
    return -1


def write_watermark(repo: str, state_dir: str, number: int) -> None:
    for segment, path in _segments.segment_files(repo):
        if segment == number:
            stat = os.stat(path)
            with open(watermark_path(state_dir), "w", encoding="utf-8") as fd:
                json.dump({"segment": number, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, fd)


def audit(repo: str, state_dir: str, thresholds: _segments.Thresholds, observed: dict | None = None) -> list:
    """Classify every transaction since the last audited one; hold compaction on a suspicious one."""
    transactions = _segments.read_transactions(repo, thresholds)
    if observed is not None:
        observed["transactions"] = transactions
    mark = read_watermark(repo, state_dir)
    new = [t for t in transactions if t.number > mark]
    suspicious = [t for t in new if t.suspicious]
    say(
        f"audit of {repo}: {len(new)} transaction(s) since the last audit, "
        f"{sum(t.objects_deleted for t in new)} object(s) deleted, {len(suspicious)} suspicious"
    )
    if suspicious:
        reason = "; ".join(f"transaction {t.label} at {utc(t.time)}: {t.reason}" for t in suspicious)
        path = write_hold(repo, AUDIT_OWNER, reason)
        write_watermark(repo, state_dir, new[-1].number)
        raise JobError(
            f"{reason}. Compaction is held ({path}); nothing was compacted, the deleted archives stay "
            "recoverable (playbooks/recover_append_only.yml). Remove the hold once the deletion is understood."
        )
    return transactions


# ---- 5-6. due, snapshots --------------------------------------------------------------------------------


def due(stamp: str, interval_days: float) -> bool:
    try:
        age = time.time() - os.stat(stamp).st_mtime
    except FileNotFoundError:
        return True
    return age >= interval_days * 86400 - DUE_SLACK_SECONDS


def replace_file(path: str, text: str, mtime: float | None = None, like: str | None = None) -> None:
    """A new file replaces ``path`` (temp in the same directory, fsync, rename); a failure leaves no temp file.

    ``mtime`` is set on our own fd (no CAP_FOWNER needed: root created the file); ``like`` gives it that
    file's mode and owner (else root's, at the process umask).
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            if like is not None:
                stat = os.stat(like)
                os.fchmod(handle.fileno(), stat.st_mode & 0o7777)
                os.fchown(handle.fileno(), stat.st_uid, stat.st_gid)
            if mtime is not None:
                os.utime(handle.fileno(), (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_stamp(stamp: str, start: float) -> None:
    """The stamp as a new file (``replace_file``), so root owns it.

    The unit has no CAP_FOWNER, so root cannot ``utime`` a stamp another user owns (an older role made
    it ``borg-<repo>``'s): only a file it created itself can take the compaction's start as its time.
    """
    replace_file(stamp, f"grus.backup: last compaction started {utc(start)}\n", mtime=start)


def parse_backup_times(text: str) -> list:
    """``"00:00,04:00"`` -> ``[(0, 0), (4, 0)]``; a clear error for anything else."""
    times = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", item)
        if not match:
            raise argparse.ArgumentTypeError(f"backup time {item!r} is not HH:MM (00:00 to 23:59)")
        times.append((int(match.group(1)), int(match.group(2))))
    return times


def minutes_to_next_backup(backup_times: list, now: time.struct_time) -> float | None:
    """Minutes from ``now`` (local time, as systemd's calendar) to the next backup time; None without any."""
    if not backup_times:
        return None
    current = now.tm_hour * 60 + now.tm_min + now.tm_sec / 60
    return min((hour * 60 + minute - current) % 1440 for hour, minute in backup_times)


def defer_for_backup(backup_times: list, quiet_minutes: float, now: time.struct_time | None = None) -> float | None:
    """The minutes to the next backup when it is closer than ``quiet_minutes`` (defer), else None."""
    ahead = minutes_to_next_backup(backup_times, now or time.localtime())
    if ahead is not None and ahead < quiet_minutes:
        return ahead
    return None


def snapshot_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "snapshots")


def list_snapshots(state_dir: str) -> list[tuple[str, dict]]:
    found = []
    base = snapshot_dir(state_dir)
    if not os.path.isdir(base):
        return found
    for name in sorted(os.listdir(base)):
        info_path = os.path.join(base, name, SNAPSHOT_INFO)
        if SNAPSHOT_NAME.match(name) and os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as fd:
                found.append((os.path.join(base, name), json.load(fd)))
    return found


def compactions_path(state_dir: str) -> str:
    return os.path.join(state_dir, "compactions.json")


def compaction_times(state_dir: str) -> list[float]:
    """When each compaction started (newest last): transactions older than one are no longer whole in
    what came after it, so a rollback to them must come from the snapshot taken just before it."""
    try:
        with open(compactions_path(state_dir), encoding="utf-8") as fd:
            return [float(t) for t in json.load(fd)]
    except (OSError, ValueError):
        return []


def record_compaction(state_dir: str, start: float) -> None:
    times = [*compaction_times(state_dir), start][-1000:]
    with open(compactions_path(state_dir) + ".tmp", "w", encoding="utf-8") as fd:
        json.dump(times, fd)
    os.replace(compactions_path(state_dir) + ".tmp", compactions_path(state_dir))


def take_snapshot(repo: str, state_dir: str, label: str, group_of: str | None = None) -> str:
    """Hard links of every segment, copies of the small files that borg changes in place; readable by the repo user.

    Modes are set explicitly, never left to the umask: the unit runs with UMask=0077 and an operator's
    ``--rollback`` with any umask, and the rollback reads the snapshot as the repository's user.
    """
    base = snapshot_dir(state_dir)
    os.makedirs(base, mode=0o750, exist_ok=True)
    for directory in (state_dir, base):
        _give_group(directory, group_of, walk=False)
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{label}"
    final = os.path.join(base, name)
    while os.path.exists(final):
        time.sleep(1)
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{label}"
        final = os.path.join(base, name)
    partial = os.path.join(base, "." + name + ".partial")
    os.makedirs(partial, mode=0o750)
    segments = _segments.segment_files(repo)
    for _number, path in segments:
        target = os.path.join(partial, os.path.relpath(path, repo))
        os.makedirs(os.path.dirname(target), mode=0o750, exist_ok=True)
        os.link(path, target)
    for name_ in COPIED_FILES:
        if os.path.exists(os.path.join(repo, name_)):
            shutil.copyfile(os.path.join(repo, name_), os.path.join(partial, name_))
    transactions = _segments.read_transactions(partial)
    times = compaction_times(state_dir)
    info = {
        "created": time.time(),
        "previous_compaction": times[-1] if times else 0,
        "created_utc": utc(),
        "reason": label,
        "repository": os.path.abspath(repo),
        "segments": len(segments),
        "last_transaction": transactions[-1].label if transactions else None,
    }
    with open(os.path.join(partial, SNAPSHOT_INFO), "w", encoding="utf-8") as fd:
        json.dump(info, fd, indent=1)
    _give_group(partial, group_of)
    os.rename(partial, final)
    return final


def _give_group(root: str, user: str | None, walk: bool = True) -> None:
    """Root owns snapshots (the repository user cannot delete them); its group may read them (rollback).

    Directories 0750 and copies 0640 whatever the umask; the linked segments keep the repository user's
    owner and mode (they are that user's own files, readable by it).
    """
    gid = pwd.getpwnam(user).pw_gid if user else None
    for dirpath, _dirnames, filenames in os.walk(root) if walk else [(root, [], [])]:
        if gid is not None:
            os.chown(dirpath, 0, gid)
        os.chmod(dirpath, 0o750)  # noqa: S103 - the repository user's group reads it (rollback)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.stat(path).st_nlink == 1:  # copies; the linked segments keep the repository user's ownership
                if gid is not None:
                    os.chown(path, 0, gid)
                os.chmod(path, 0o640)


def expire_snapshots(state_dir: str, delay_days: float) -> None:
    for path, info in list_snapshots(state_dir):
        if time.time() - float(info.get("created", 0)) > delay_days * 86400:
            shutil.rmtree(path)
            say(f"snapshot {os.path.basename(path)} is older than {delay_days:g} day(s): removed")


# ---- the scheduled run ------------------------------------------------------------------------------


def scheduled_run(args, observed: dict | None = None) -> int:
    observed = {} if observed is None else observed
    repo = os.path.abspath(args.repo)
    check_keys(args.authorized_keys, forced_command(args.repo, args.storage_quota))
    observed["keys_ok"] = True
    borg = Borg(args.run_as)
    state_dir = observed["state_dir"] = args.state_dir or os.path.join(os.path.dirname(repo), "compaction")
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    revert_interrupted_rollback(repo, borg)  # a half-swapped repository has its config aside: never "no repository"
    if not os.path.exists(os.path.join(repo, "config")):
        say(f"{repo} has no repository yet (the key holder creates it): nothing to audit or compact")
        return 0
    restore_flag(repo, state_dir, borg)
    hold = hold_path(repo)
    if os.path.exists(hold):
        fields = read_hold(hold)
        if fields.get("held-by") == AUDIT_OWNER:
            raise JobError(f"{hold} was set by the deletion audit ({fields.get('reason', '?')}): not compacting")
        say(f"{hold} exists (an incident is being handled): not compacting")
        return 0
    thresholds = _segments.Thresholds(args.max_deleted_share, args.min_deleted_objects)
    audit(repo, state_dir, thresholds, observed)
    if not due(args.stamp, args.interval_days):
        say(f"last compaction less than {args.interval_days:g} day(s) ago: not due")
        return 0
    ahead = defer_for_backup(args.backup_times, args.quiet_minutes)
    if ahead is not None:
        observed["deferred"] = True
        say(
            f"due, but a backup starts in {ahead:.0f} minute(s) (quiet window {args.quiet_minutes:g} min before "
            "each backup): deferred to the next run, the backup keeps the repository"
        )
        return 0
    observed["deferred"] = False
    expire_snapshots(state_dir, args.delay_days)
    snap = take_snapshot(repo, state_dir, "compaction", args.run_as)
    say(f"snapshot {os.path.basename(snap)} kept {args.delay_days:g} day(s): deletions stay recoverable from it")
    start = time.time()
    record_compaction(state_dir, start)
    observed["snapshot"] = os.path.basename(snap)
    compact(repo, state_dir, borg)
    observed["compacted"] = True
    transactions = observed["transactions"] = _segments.read_transactions(repo)
    if transactions:
        write_watermark(repo, state_dir, transactions[-1].number)
    write_stamp(args.stamp, start)
    say(f"compacted {args.repo}")
    return 0


def parse_scheduled(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Delayed, guarded, audited compaction of one repository.")
    parser.add_argument("repo", metavar="REPO")
    parser.add_argument("delay_days", metavar="DELAY_DAYS", type=float, help="days each snapshot is kept")
    parser.add_argument("stamp", metavar="STAMP_FILE")
    parser.add_argument("authorized_keys", metavar="AUTHORIZED_KEYS")
    parser.add_argument("--interval-days", type=float, default=7.0, help="days between compactions")
    parser.add_argument("--storage-quota", default="", help="the --storage-quota of the forced command")
    parser.add_argument("--run-as", default=None, help="the repository's user (borg runs as it)")
    parser.add_argument("--state-dir", default=None, help="snapshots, audit mark, flag intent")
    parser.add_argument("--max-deleted-share", type=float, default=0.2)
    parser.add_argument("--min-deleted-objects", type=int, default=100)
    parser.add_argument(
        "--metrics-dir", default=None, help="write Prometheus metrics here (node_exporter's textfile dir)"
    )
    parser.add_argument(
        "--backup-times", type=parse_backup_times, default=[], help="the key holders' backup times, HH:MM,HH:MM"
    )
    parser.add_argument(
        "--quiet-minutes", type=float, default=0.0, help="no compaction starts this close before a backup"
    )
    args = parser.parse_args(argv)
    if args.quiet_minutes < 0:
        parser.error(f"--quiet-minutes must be 0 or more, not {args.quiet_minutes:g}")
    return args


def repository_bytes(repo: str) -> tuple:
    """(bytes on disk, time of the last write) of the repository's files."""
    size, last = 0, 0.0
    for top, _dirs, files in os.walk(repo):
        for name in files:
            try:
                stat = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            size += stat.st_blocks * 512
            last = max(last, stat.st_mtime)
    return size, last


def record(metrics: _metrics.JobMetrics, args, observed: dict) -> None:
    """The repository host's samples; best effort (a repository not there yet has only the guard's)."""
    repo = os.path.abspath(args.repo)
    where = {"repository": repo}
    metrics.set("grus_backup_authorized_keys_ok", 1 if observed.get("keys_ok") else 0)
    if not os.path.exists(os.path.join(repo, "config")):
        return
    size, last = repository_bytes(repo)
    vfs = os.statvfs(repo)
    metrics.set("grus_backup_repository_size_bytes", size, **where)
    metrics.set("grus_backup_repository_free_bytes", vfs.f_bavail * vfs.f_frsize, **where)
    metrics.set("grus_backup_repository_last_write_timestamp_seconds", last or None, **where)
    hold = hold_path(repo)
    held = os.path.exists(hold)
    metrics.set("grus_backup_compaction_held", 1 if held else 0, **where)
    if "deferred" in observed:
        metrics.set("grus_backup_compaction_deferred", 1 if observed["deferred"] else 0, **where)
    metrics.set(
        "grus_backup_repository_mass_deletion", int(held and read_hold(hold).get("held-by") == AUDIT_OWNER), **where
    )
    transactions = observed.get("transactions")
    if transactions is not None:
        times = compaction_times(observed.get("state_dir") or os.path.join(os.path.dirname(repo), "compaction"))
        since = [t for t in transactions if t.time > (times[-1] if times else 0)]
        metrics.set("grus_backup_repository_transactions_since_compaction", len(since), **where)
        deleted = sum(t.objects_deleted for t in since)
        metrics.set("grus_backup_repository_deleted_objects_since_compaction", deleted, **where)


def not_done(args, observed: dict) -> str:
    """What an unexpected failure left undone, from how far the run got."""
    if observed.get("compacted"):
        return f"{args.repo} was compacted, but its audit mark and stamp may not be written (the next run redoes them)"
    if observed.get("snapshot"):
        return (
            f"the compaction of {args.repo} may not have finished; what it deleted stays recoverable from "
            f"snapshot {observed['snapshot']}"
        )
    return (
        f"nothing was compacted in {args.repo}, so deleted archives stay recoverable "
        "(playbooks/recover_append_only.yml)"
    )


def main(argv: list[str] | None = None) -> int:
    """The scheduled run (``_compaction_tools`` is the entry point: it hands every other argv here)."""
    args = parse_scheduled(list(sys.argv[1:] if argv is None else argv))
    repo = os.path.abspath(args.repo)
    metrics = _metrics.JobMetrics(
        "compaction", args.metrics_dir, repository=repo, instance=os.path.basename(repo.rstrip("/"))
    )
    pinger = _ping.Pinger.from_env()
    pinger.start()
    observed: dict = {}
    try:
        rc = scheduled_run(args, observed)
    except JobError as exc:
        warn(str(exc))
        advice = f"Investigate who changed {args.authorized_keys}, then re-run site.yml to rewrite it."
        warn(
            f"nothing was compacted in {args.repo}, so deleted archives stay recoverable "
            f"(playbooks/recover_append_only.yml).{' ' + advice if isinstance(exc, KeysError) else ''}"
        )
        rc = 2
    except Exception as exc:  # whatever it is, the metrics, the ping and one line still follow
        rc = _unexpected.report(PROG, exc, not_done(args, observed))
    if metrics.directory:
        try:
            record(metrics, args, observed)
        except Exception as exc:  # measuring must not hide the run's own result
            warn(f"WARNING: some repository metrics could not be measured: {exc}")
    pinger.finish(rc)
    for warning in metrics.finish(rc) + pinger.warnings:
        warn(f"WARNING: {warning}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
