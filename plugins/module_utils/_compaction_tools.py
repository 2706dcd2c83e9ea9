# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository host's entry point (``python3 -m grus_backup._compaction_tools``, as ``grus-borg-compact``):
the scheduled compaction (``_compaction_job``) and its on-demand modes, for the unit's hooks and
recover_append_only.

layer 3: may import _segments, _rollback, _unexpected, _compaction_job

* ``--restore-flag REPO``: append_only = 1 again (ExecStartPre=, ExecStopPost=, the role at deploy);
  a compaction still running (its intent file names a live process) is left alone.
* ``--audit-json REPO``: every transaction of the repository and of each snapshot, classified, with one
  ordinal each (a number alone repeats after a rollback), the suspicious ones and the proposed last good one;
  ``lines``: the same as a person reads it (``--audit REPO`` prints only those): one line per transaction, then
  the proposal and the exact ``ansible-playbook`` command that rolls back to it (``--inventory``,
  ``--repository-name``: what the command names; the playbook passes its own).
* ``--rollback REPO (--to-ordinal K | --to-transaction N[:FIRST-LAST])``: back to that transaction, from the
  repository's own segments or, for one older than the last compaction, from the snapshot that holds it.
  A rollback a killed process left half way is reverted first. The current state is snapshotted (the
  rollback can be undone); the change itself (``_rollback``: preflight, staged links, a journal, renames)
  runs as the repository's user under borg's own repository lock, all of it or nothing;
  ``borg check --repository-only`` ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import sys

from . import _compaction_job as job
from . import _rollback, _segments, _unexpected

MODES = ("--restore-flag", "--audit", "--audit-json", "--rollback")
PLAYBOOK = "grus.backup.recover_append_only"


def candidates(repo: str, state_dir: str, thresholds: _segments.Thresholds) -> list[dict]:
    """The transactions one can roll back to, each once (by the inode of its commit segment).

    A source (the repository, a snapshot) holds a transaction whole only if no compaction ran on it after
    that transaction: older ones come from the snapshot taken just before the compaction that followed them.
    """
    times = job.compaction_times(state_dir)
    sources = [("repository", repo, times[-1] if times else 0, None)]
    for path, info in job.list_snapshots(state_dir):
        sources.append((os.path.basename(path), path, float(info.get("previous_compaction", 0)), info))
    found, seen = [], set()
    for name, path, since, info in sources:
        inodes = {n: os.stat(p).st_ino for n, p in _segments.segment_files(path)}
        for txn in _segments.read_transactions(path, thresholds):
            if txn.time <= since or inodes.get(txn.number) in seen:
                continue
            seen.add(inodes.get(txn.number))
            found.append(dict(txn.as_dict(), source=name, source_path=path, snapshot=info))
    found.sort(key=lambda t: (t["time"], t["source"] != "repository", t["number"]))
    for ordinal, txn in enumerate(found, start=1):
        txn["ordinal"] = ordinal
        txn["time_utc"] = job.utc(txn["time"])
    return found


def rolled_away(txn: dict) -> bool:
    """A transaction an earlier rollback took out of the history: only its ``before-rollback`` snapshot holds it."""
    info = txn.get("snapshot") or {}
    return info.get("rolled_back_to_time") is not None and txn["time"] > float(info["rolled_back_to_time"])


def proposed_last_good(found: list[dict]) -> dict | None:
    """The transaction just before the first suspicious one; the newest when none is suspicious.

    What an earlier rollback took away is no longer history: a delete already rolled back neither counts as
    the first suspicious one (the backups made since are good) nor is proposed.
    """
    history = [t for t in found if not rolled_away(t)]
    for index, txn in enumerate(history):
        if txn["suspicious"]:
            return history[index - 1] if index else None
    return history[-1] if history else None


def human_bytes(size: int) -> str:
    """Decimal units, as borg prints them: 2.1 MB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # not reached


def rollback_command(inventories: list[str], name: str, ordinal: int) -> str:
    sources = " ".join(f"-i {shlex.quote(source)}" for source in inventories) or "-i <inventory>"
    return (
        f"ansible-playbook {sources} {PLAYBOOK} -e recover_repository={shlex.quote(name)} -e recover_ordinal={ordinal}"
    )


def mark(txn: dict) -> str:
    parts = ["rolled back earlier"] if rolled_away(txn) else []
    if txn["suspicious"]:
        parts.append(f"SUSPICIOUS: {txn['reason']}")
    return "; ".join(parts)


def render(report: dict, inventories: list[str], name: str) -> list[str]:
    """The listing a person reads during an incident: one aligned line per transaction, then what to do."""
    found = report["transactions"]
    rows = [
        (
            f"#{t['ordinal']}",
            t["time_utc"],
            t["source"],
            f"txn {t['label']}",
            f"{t['objects_put']} obj",
            human_bytes(t["bytes_put"]),
            f"{t['objects_deleted']} obj",
            human_bytes(t["bytes_deleted"]),
            mark(t),
        )
        for t in found
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(8)]
    lines = [f"{report['repository']}: {len(found)} transaction(s) one can roll back to (oldest first)"]
    for row in rows:
        ordinal, when, source, label, put, put_bytes, deleted, deleted_bytes, note = row
        text = (
            f"{ordinal:>{widths[0]}}  {when}  {source:<{widths[2]}}  {label:<{widths[3]}}  "
            f"put {put:>{widths[4]}} {put_bytes:>{widths[5]}}  "
            f"deleted {deleted:>{widths[6]}} {deleted_bytes:>{widths[7]}}"
        )
        lines.append(f"{text}  {note}" if note else text.rstrip())
    proposed = report["proposed"]
    suspicious = ", ".join(f"#{n}" for n in report["suspicious"]) or "none"
    if proposed:
        lines.append(
            f"Proposed last good: #{proposed['ordinal']} ({proposed['time_utc']}, {proposed['source']}, "
            f"txn {proposed['label']}); suspicious: {suspicious}"
        )
        lines.append(f"Roll back to it: {rollback_command(inventories, name, proposed['ordinal'])}")
    else:
        lines.append(f"No transaction before the first suspicious one ({suspicious}): nothing to roll back to")
    hold = report["hold"]
    since = f" since {hold['since']}" if hold and hold.get("since") else ""
    lines.append(f"Compaction hold: held by {hold.get('held-by', '?')}{since}" if hold else "Compaction hold: none")
    return lines


def audit_report(args) -> dict:
    thresholds = _segments.Thresholds(args.max_deleted_share, args.min_deleted_objects)
    found = candidates(args.repo, args.state_dir, thresholds)
    hold = job.hold_path(args.repo)
    report = {
        "repository": args.repo,
        "transactions": found,
        "suspicious": [t["ordinal"] for t in found if t["suspicious"]],
        "proposed": proposed_last_good(found),
        "snapshots": [dict(info, path=path) for path, info in job.list_snapshots(args.state_dir)],
        "transactions_log": _segments.read_transactions_log(args.repo),
        "hold": job.read_hold(hold) if os.path.exists(hold) else None,
        "thresholds": {
            "max_deleted_share": thresholds.max_share,
            "min_deleted_objects": thresholds.min_objects,
            "total_deleted_share": thresholds.total_share,
        },
    }
    name = args.repository_name or os.path.basename(os.path.dirname(args.repo))
    report["lines"] = render(report, args.inventory, name)
    return report


def audit_json(args) -> int:
    sys.stdout.write(json.dumps(audit_report(args), indent=1) + "\n")
    return 0


def audit_text(args) -> int:
    sys.stdout.write("".join(line + "\n" for line in audit_report(args)["lines"]))
    return 0


def choose(found: list[dict], ordinal: int | None, spec: str | None) -> dict:
    if ordinal is not None:
        matches = [t for t in found if t["ordinal"] == ordinal]
    else:
        number, _sep, segments = spec.partition(":")
        matches = [t for t in found if str(t["number"]) == number and (not segments or t["label"] == spec)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise job.JobError(
            f"no transaction {ordinal if ordinal is not None else spec} in the repository or any snapshot: "
            "older than the last compaction and no snapshot covers it (or not a transaction): nothing was changed"
        )
    listed = ", ".join(f"ordinal {t['ordinal']} = {t['label']} ({t['source']}, {t['time_utc']})" for t in matches)
    raise job.JobError(f"transaction {spec} is ambiguous ({listed}): name it by ordinal; nothing was changed")


def rollback(args) -> int:
    borg = job.Borg(args.run_as)
    job.revert_interrupted_rollback(args.repo, borg)
    thresholds = _segments.Thresholds(args.max_deleted_share, args.min_deleted_objects)
    found = candidates(args.repo, args.state_dir, thresholds)
    target = choose(found, args.to_ordinal, args.to_transaction)
    source = target["source_path"]
    keep = {n: os.path.relpath(p, source) for n, p in _segments.segment_files(source) if n <= target["number"]}
    before = job.take_snapshot(args.repo, args.state_dir, "before-rollback", args.run_as)
    job.say(f"the state before the rollback is kept as snapshot {os.path.basename(before)}")
    plan = os.path.join(args.state_dir, "rollback-plan.json")
    with open(plan, "w", encoding="utf-8") as fd:
        json.dump({"repo": args.repo, "source": source, "keep": keep}, fd)
    os.chmod(plan, 0o640)
    if args.run_as:
        os.chown(plan, 0, pwd.getpwnam(args.run_as).pw_gid)
    package = __spec__.parent if __spec__ and __spec__.parent else "grus_backup"
    applied = borg.run(sys.executable, "-m", f"{package}._rollback", "apply", plan, timeout=job.LOCK_WAIT + 600)
    os.unlink(plan)
    sys.stdout.write(applied.stdout)
    said = applied.stderr.strip().replace(f"{job.PROG}: ", "")
    if applied.rc == _rollback.UNCHANGED:
        # Nothing changed: the snapshot of the unchanged state would only add a duplicate source to the listing.
        shutil.rmtree(before)
        raise job.JobError(f"{said[-1500:]} ({args.repo} is as it was; snapshot removed)")
    if not applied.ok:
        raise job.JobError(
            f"the rollback failed (rc {applied.rc}): {said[-800:]}. If it was stopped half way, "
            f"the next --rollback, --restore-flag or scheduled compaction first puts {args.repo} back as it was; "
            f"the state before it is snapshot {os.path.basename(before)}"
        )
    mark_rolled_back(before, target)
    checked = borg.borg("check", "--repository-only", args.repo, timeout=24 * 3600)
    if not checked.ok:
        raise job.JobError(f"borg check --repository-only {args.repo} failed after the rollback: {checked.stderr}")
    job.say(
        f"rolled back {args.repo} to transaction {target['label']} (ordinal {target['ordinal']}, "
        f"{target['time_utc']}, from {target['source']}); borg check --repository-only passed"
    )
    return 0


def mark_rolled_back(snapshot: str, target: dict) -> None:
    """The ``before-rollback`` snapshot records what the rollback went back to: its later transactions are
    then known as rolled away (``rolled_away``), so a later incident's proposal does not go back past them."""
    path = os.path.join(snapshot, job.SNAPSHOT_INFO)
    with open(path, encoding="utf-8") as fd:
        info = json.load(fd)
    info.update(rolled_back_to_time=target["time"], rolled_back_to=target["label"])
    job.replace_file(path, json.dumps(info, indent=1), like=path)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=job.PROG)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--restore-flag", metavar="REPO")
    mode.add_argument("--audit", metavar="REPO", help="the audit as a person reads it")
    mode.add_argument("--audit-json", metavar="REPO")
    mode.add_argument("--rollback", metavar="REPO")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--to-ordinal", type=int)
    target.add_argument("--to-transaction")
    parser.add_argument("--run-as", default=None)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--max-deleted-share", type=float, default=0.2)
    parser.add_argument("--min-deleted-objects", type=int, default=100)
    parser.add_argument(
        "--inventory", action="append", default=[], help="the inventory the rollback command names (repeatable)"
    )
    parser.add_argument("--repository-name", default=None, help="recover_repository in that command (the home's name)")
    args = parser.parse_args(argv)
    args.repo = os.path.abspath(args.restore_flag or args.audit or args.audit_json or args.rollback or ".")
    args.state_dir = args.state_dir or os.path.join(os.path.dirname(args.repo), "compaction")
    if args.rollback and args.to_ordinal is None and not args.to_transaction:
        parser.error("--rollback needs --to-ordinal or --to-transaction")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MODES:
        return job.main(argv)
    args = parse(argv)
    try:
        return run_mode(args)
    except job.JobError as exc:
        job.warn(str(exc))
        return 2
    except Exception as exc:  # one line that says what was not done, never a bare traceback
        return _unexpected.report(job.PROG, exc, NOT_DONE[mode_of(args)])


def run_mode(args) -> int:
    if args.audit_json or args.audit:
        # A listing of a half-swapped repository would show ordinals that are not there: back first
        # (said on stderr: stdout is the listing).
        job.revert_interrupted_rollback(args.repo, job.Borg(args.run_as), stream=sys.stderr)
        return audit_json(args) if args.audit_json else audit_text(args)
    if args.rollback:
        return rollback(args)
    os.makedirs(args.state_dir, mode=0o750, exist_ok=True)
    job.restore_flag(args.repo, args.state_dir, job.Borg(args.run_as), own_run=False)
    return 0


# What an unexpected failure of each mode leaves undone (a rollback says more itself: see ``rollback``).
NOT_DONE = {
    "restore_flag": "append_only = 1 may not be restored; the compaction job puts it back first when it runs",
    "audit_json": "no audit was listed; nothing was changed",
    "audit": "no audit was listed; nothing was changed",
    "rollback": "the rollback did not finish: list the repository again (--audit) before anything else",
}


def mode_of(args) -> str:
    return next((mode for mode in NOT_DONE if getattr(args, mode, None)), "restore_flag")


if __name__ == "__main__":
    raise SystemExit(main())
