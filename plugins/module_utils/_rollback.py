# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rollback that cannot make things worse: the change itself, as one transaction, run as the repository's
user (``python3 -m grus_backup._rollback apply PLAN | revert REPO``, started by ``_compaction_tools`` and
``_compaction_job`` through setpriv) under borg's own repository lock.

1. preflight: every source segment it will link opens and reads as a borg segment (its magic), and every
   directory it will change is writable, as this user. Any failure: an error naming the path and the cause,
   and nothing changed;
2. stage: every segment to add is hard-linked into ``REPO/grus-rollback/staged/`` (borg ignores an entry of
   a repository directory it does not know: ``borg check --repository-only`` passes with it). A failure
   (a link refused, another filesystem) removes the work directory: nothing changed;
3. journal: the ordered list of renames, written and synced before the first one;
4. swap, one rename at a time, each recorded in ``progress``: ``config`` aside first (so no borg, a client's
   backup through ``borg serve``, opens a half-swapped repository: "not a valid repository" meanwhile),
   then the index, hints and integrity files and the segments that go, into the work directory; the staged
   segments into place; ``config`` back last;
5. commit: the journal removed (from then on the rollback stands), then the work directory.

An exception during the swap undoes it at once. A process killed half way leaves the journal: ``revert``
(run first by the next rollback, the scheduled compaction and ``--restore-flag``) undoes every rename that was
done, in reverse order, and the repository is as it was before the rollback (the same files, the same
inodes). A work directory without a journal never changed the repository: it is removed.

Exit codes: 0 done; 3 refused or undone (the repository is as it was); anything else (2, a signal): the
journal may be left for the next revert.

layer 1: may import _segments
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

from . import _segments

PROG = "grus-borg-compact"
WORK_DIR = "grus-rollback"
JOURNAL = "journal.json"
PROGRESS = "progress"
LOCK_WAIT = 600
UNCHANGED = 3
INDEX_FILES = re.compile(r"^(index|hints|integrity)\.\d+(\.tmp)?$")
MAX_LISTED = 10


class RollbackError(Exception):
    """The rollback did not happen; ``unchanged`` says whether the repository is exactly as it was."""

    def __init__(self, message: str, unchanged: bool = True):
        super().__init__(message)
        self.unchanged = unchanged


def _say(text: str, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(f"{PROG}: {text}\n")
    stream.flush()


def work_dir(repo: str) -> str:
    return os.path.join(repo, WORK_DIR)


def pending(repo: str) -> bool:
    """A rollback's work directory is there: one runs now, or one was killed (revert it before anything)."""
    return os.path.lexists(work_dir(repo))


def borg_lock(repo: str):
    """Borg's own exclusive repository lock: the one ``borg serve`` and ``borg compact`` take."""
    from borg.locking import Lock  # noqa: PLC0415 - borg is on the repository host only

    return Lock(os.path.join(repo, "lock"), exclusive=True, timeout=LOCK_WAIT)


def _cause(exc: OSError) -> str:
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def _listed(problems: list[str]) -> str:
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more


def _user() -> str:
    try:
        import pwd  # noqa: PLC0415 - only for the message

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


# ---- plan and preflight ---------------------------------------------------------------------------------


def changes(repo: str, source: str, keep: dict[int, str]) -> tuple[list[str], list[str], list[str]]:
    """(segments that go, segments that come from the source, index files that go), paths relative."""
    remove = []
    for number, path in _segments.segment_files(repo):
        if number not in keep or os.stat(path).st_ino != os.stat(os.path.join(source, keep[number])).st_ino:
            remove.append(os.path.relpath(path, repo))
    going = set(remove)
    add = [rel for _n, rel in sorted(keep.items()) if rel in going or not os.path.lexists(os.path.join(repo, rel))]
    index = sorted(name for name in os.listdir(repo) if INDEX_FILES.match(name))
    return remove, add, index


def preflight(repo: str, source: str, remove: list[str], add: list[str]) -> None:
    """As this user, before anything changes: every source readable as a segment, every directory writable."""
    problems = []
    if not os.path.isfile(os.path.join(repo, "config")):
        problems.append(f"{repo}/config: missing (not a repository, or a rollback left it aside)")
    for rel in add:
        path = os.path.join(source, rel)
        try:
            with open(path, "rb") as fd:
                if fd.read(len(_segments.MAGIC)) != _segments.MAGIC:
                    problems.append(f"{path}: not a borg segment (no magic)")
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror})")
    directories = {repo, os.path.join(repo, "data")}
    directories.update(os.path.dirname(os.path.join(repo, rel)) for rel in remove + add)
    for wanted in sorted(directories):
        directory = wanted
        while not os.path.isdir(directory):  # a data/N to be made: its parent must be writable
            directory = os.path.dirname(directory)
        if not os.access(directory, os.W_OK | os.X_OK):
            problems.append(f"{directory}: not writable")
    if problems:
        raise RollbackError(
            f"the rollback of {repo} is refused, as {_user()}: {_listed(problems)}. Nothing was changed"
        )


# ---- stage, journal, swap, commit ---------------------------------------------------------------------


def stage(repo: str, source: str, remove: list[str], add: list[str], index: list[str]) -> list[list[str]]:
    """The links to add, made under the work directory; returns the renames of the swap, in order."""
    work = work_dir(repo)
    os.mkdir(work, 0o700)
    try:
        for rel in add:
            staged = os.path.join(work, "staged", rel)
            os.makedirs(os.path.dirname(staged), mode=0o700, exist_ok=True)
            os.link(os.path.join(source, rel), staged)
        for rel in ["config", *index, *remove]:
            os.makedirs(os.path.dirname(os.path.join(work, "removed", rel)), mode=0o700, exist_ok=True)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise RollbackError(
            f"the rollback of {repo} is refused: staging a segment failed ({_cause(exc)}). Nothing was changed"
        ) from None
    aside = WORK_DIR + "/removed/"
    ops = [["rename", "config", aside + "config"]]
    ops += [["rename", name, aside + name] for name in index]
    ops += [["rename", rel, aside + rel] for rel in remove]
    made = sorted({os.path.dirname(rel) for rel in add if not os.path.isdir(os.path.join(repo, os.path.dirname(rel)))})
    ops += [["mkdir", rel] for rel in made]
    ops += [["rename", f"{WORK_DIR}/staged/{rel}", rel] for rel in add]
    ops.append(["rename", aside + "config", "config"])
    return ops


def _write_journal(repo: str, source: str, ops: list[list[str]]) -> None:
    path = os.path.join(work_dir(repo), JOURNAL)
    with open(path + ".tmp", "w", encoding="utf-8") as fd:
        json.dump({"pid": os.getpid(), "time": time.time(), "source": source, "ops": ops}, fd)
        fd.flush()
        os.fsync(fd.fileno())
    os.replace(path + ".tmp", path)
    _fsync_dir(work_dir(repo))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _do(repo: str, op: list[str]) -> None:
    if op[0] == "mkdir":
        os.mkdir(os.path.join(repo, op[1]), 0o700)
    else:
        os.rename(os.path.join(repo, op[1]), os.path.join(repo, op[2]))


def _done(repo: str, op: list[str]) -> bool:
    """Whether an op not yet recorded happened (it was the one in flight when the process died)."""
    if op[0] == "mkdir":
        return os.path.isdir(os.path.join(repo, op[1]))
    return not os.path.lexists(os.path.join(repo, op[1])) and os.path.lexists(os.path.join(repo, op[2]))


def _undo(repo: str, op: list[str]) -> None:
    if op[0] == "mkdir":
        os.rmdir(os.path.join(repo, op[1]))
        return
    src, dst = os.path.join(repo, op[1]), os.path.join(repo, op[2])
    if os.path.lexists(dst) and not os.path.lexists(src):  # not undone already by a revert that was killed
        os.rename(dst, src)


def swap(repo: str, ops: list[list[str]]) -> None:
    progress = os.open(os.path.join(work_dir(repo), PROGRESS), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for number, op in enumerate(ops):
            _do(repo, op)
            os.write(progress, f"+{number}\n".encode())
    finally:
        os.close(progress)


def commit(repo: str) -> None:
    """The journal goes first: from then on the rollback stands; the rest of the work directory is garbage."""
    os.unlink(os.path.join(work_dir(repo), JOURNAL))
    _fsync_dir(work_dir(repo))
    shutil.rmtree(work_dir(repo))


def revert(repo: str) -> str | None:
    """Undo what a rollback's journal says was done (the caller holds borg's lock); None when nothing was there."""
    work = work_dir(repo)
    if not os.path.lexists(work):
        return None
    journal_path = os.path.join(work, JOURNAL)
    if not os.path.exists(journal_path):
        shutil.rmtree(work)
        return f"removed {work}: a rollback stopped before it changed anything in the repository"
    with open(journal_path, encoding="utf-8") as fd:
        journal = json.load(fd)
    ops = journal["ops"]
    state: dict[int, bool] = {}
    try:
        with open(os.path.join(work, PROGRESS), encoding="utf-8") as fd:
            for line in fd:
                if re.fullmatch(r"[+-]\d+\n", line):
                    state[int(line[1:])] = line[0] == "+"
    except FileNotFoundError:
        pass
    recorded = [n for n in state if state[n]]
    # The op after the last recorded one may have happened just before the kill; once a revert has begun
    # (a "-" record) that one was settled by it, and the check would misread a path the revert moved back.
    in_flight = max(recorded) + 1 if recorded else 0
    if all(state.values()) and in_flight < len(ops) and _done(repo, ops[in_flight]):
        recorded.append(in_flight)
    progress = os.open(os.path.join(work, PROGRESS), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for number in sorted(recorded, reverse=True):
            _undo(repo, ops[number])
            os.write(progress, f"-{number}\n".encode())
    finally:
        os.close(progress)
    os.unlink(journal_path)
    shutil.rmtree(work)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(journal.get("time", 0)))
    return (
        f"reverted an interrupted rollback of {repo} (started {started}, pid {journal.get('pid')}): "
        f"{len(recorded)} of {len(ops)} change(s) undone, the repository is as it was before it"
    )


def apply(plan: dict, lock=None) -> str:
    """Exactly the planned segments remain, no index (borg rebuilds it); all of it or nothing."""
    repo, source = plan["repo"], plan["source"]
    keep = {int(k): v for k, v in plan["keep"].items()}
    with lock if lock is not None else borg_lock(repo):
        reverted = revert(repo)
        if reverted:
            _say(reverted)
        try:
            remove, add, index = changes(repo, source, keep)
        except OSError as exc:
            raise RollbackError(
                f"the rollback of {repo} is refused, as {_user()}: {_cause(exc)}. Nothing was changed"
            ) from None
        preflight(repo, source, remove, add)
        ops = stage(repo, source, remove, add, index)
        try:
            _write_journal(repo, source, ops)
            swap(repo, ops)
        except BaseException as exc:
            failure = _cause(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            try:
                _undo_after_failure(repo)
            except BaseException as again:
                raise RollbackError(
                    f"the rollback of {repo} failed ({failure}) and undoing it failed too "
                    f"({_cause(again) if isinstance(again, OSError) else again}): the journal in {work_dir(repo)} "
                    "is left; the next --rollback, --restore-flag or scheduled compaction puts it back first",
                    unchanged=False,
                ) from None
            raise RollbackError(f"the rollback of {repo} failed ({failure}); every change was undone") from None
        commit(repo)
    return (
        f"removed {len(remove)} segment(s), restored {len(add)} from {source}; "
        f"index, hints, integrity removed ({len(index)} file(s))"
    )


def _undo_after_failure(repo: str) -> None:
    revert(repo)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("apply", "revert"):
        _say("usage: python3 -m grus_backup._rollback apply PLAN | revert REPO", sys.stderr)
        return 2
    repo = argv[1]
    try:
        if argv[0] == "apply":
            with open(argv[1], encoding="utf-8") as fd:
                plan = json.load(fd)
            repo = plan["repo"]
            _say(apply(plan))
        else:
            with borg_lock(repo):
                _say(revert(repo) or f"{repo}: no interrupted rollback")
    except RollbackError as exc:
        _say(str(exc), sys.stderr)
        return UNCHANGED if exc.unchanged else 2
    except Exception as exc:  # the lock timing out, a revert failing: one line, never a traceback
        left = f"; the journal in {work_dir(repo)} is left for the next revert" if pending(repo) else ""
        _say(f"the rollback ({argv[0]}) of {repo} stopped: {type(exc).__name__}: {exc}{left}", sys.stderr)
        return 2 if left else UNCHANGED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
