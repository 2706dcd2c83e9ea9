"""Space cost of the compaction snapshots (the true delay): bytes only the snapshots keep, against the repository.

Simulates DAYS days of PER_DAY backups (``borg create --timestamp``; each backup rewrites CHURN of the data)
with a prune after each backup (archives older than RETENTION_DAYS go), and runs of the repository host's
compaction job (the shipped ``grus_backup`` package, ``/usr/bin/python3``, interval 0, delay DELAY_DAYS, every
COMPACT_EVERY_DAYS days; after each simulated day every snapshot is aged by a day, as the calendar would).
Reports, after the last day, the repository's segment bytes, the bytes held only by snapshots (inodes no
longer in the repository), and their ratio; and the same for a repository never compacted (what the old
"compact every DELAY days" scheme held at most).

    /usr/bin/python3 bench/compaction_space.py [--days 10] [--per-day 6] [--retention-days 3] [--delay-days 7]
        [--compact-every-days 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def borg(env: dict, *args: str, cwd: Path | None = None) -> None:
    subprocess.run(["borg", *args], env=env, cwd=cwd, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def ship(lib: Path) -> None:
    package = lib / "grus_backup"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    # Every module_utils file, as bench/run.py ships them: a list of its own here went stale once the
    # compaction job imported the metrics and ping modules.
    for source in (ROOT / "plugins" / "module_utils").glob("_*.py"):
        shutil.copy(source, package / source.name)


def segment_bytes(repo: Path) -> tuple[int, set]:
    total, inodes = 0, set()
    for path in (repo / "data").glob("*/*"):
        stat = path.stat()
        total += stat.st_size
        inodes.add(stat.st_ino)
    return total, inodes


def snapshot_only_bytes(snapshots: Path, live: set) -> int:
    seen, total = set(), 0
    for path in snapshots.glob("*/data/*/*"):
        stat = path.stat()
        if stat.st_ino not in live and stat.st_ino not in seen:
            seen.add(stat.st_ino)
            total += stat.st_size
    return total


def age_snapshots(snapshots: Path, seconds: float) -> None:
    for info in snapshots.glob("*/grus-snapshot.json"):
        data = json.loads(info.read_text())
        data["created"] -= seconds
        info.write_text(json.dumps(data))


def simulate(args, base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(BORG_BASE_DIR=str(base / "borg-home"), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")
    home = base / "srv" / "r"
    repo, plain = home / "repo", base / "plain"
    (home / ".ssh").mkdir(parents=True)
    (home / ".cache").mkdir()
    (home / ".ssh" / "authorized_keys").write_text("")
    for r in (repo, plain):
        borg(env, "init", "--encryption", "none", "--append-only", str(r))
    src = base / "src"
    src.mkdir()
    files = [src / f"f{i:03d}" for i in range(100)]
    for f in files:
        f.write_bytes(os.urandom(args.file_kib * 1024))
    lib = base / "lib"
    ship(lib)
    job_env = dict(env, PYTHONPATH=str(lib), HOME=str(home))
    start = time.time() - args.days * 86400
    made: dict = {}
    for n in range(args.days * args.per_day):
        moment = start + n * 86400 / args.per_day
        for f in files[: int(len(files) * args.churn)]:
            f.write_bytes(os.urandom(args.file_kib * 1024))
        files.append(files.pop(0))
        name = time.strftime("b-%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        due = [a for a, t in made.items() if t < moment - args.retention_days * 86400]
        for r in (repo, plain):
            borg(env, "create", "--compression", "none", "--timestamp", stamp, f"{r}::{name}", ".", cwd=src)
            if due:
                borg(env, "delete", str(r), *due)
        made[name] = moment
        for a in due:
            del made[a]
        if (n + 1) % (args.per_day * args.compact_every_days) == 0:
            argv = [sys.executable, "-m", "grus_backup._compaction_job", str(repo), str(args.delay_days)]
            argv += [str(home / ".cache" / "stamp"), str(home / ".ssh" / "authorized_keys")]
            argv += ["--interval-days", "0", "--max-deleted-share", "2", "--storage-quota", ""]
            subprocess.run(argv, env=job_env, check=True, capture_output=True)
        if (n + 1) % args.per_day == 0:
            age_snapshots(home / "compaction" / "snapshots", 86400)
    live_bytes, live_inodes = segment_bytes(repo)
    held = snapshot_only_bytes(home / "compaction" / "snapshots", live_inodes)
    plain_bytes = segment_bytes(plain)[0]
    return {
        "days": args.days,
        "backups_per_day": args.per_day,
        "retention_days": args.retention_days,
        "delay_days": args.delay_days,
        "compact_every_days": args.compact_every_days,
        "repository_bytes": live_bytes,
        "snapshot_only_bytes": held,
        "snapshots": len(list((home / "compaction" / "snapshots").glob("*/grus-snapshot.json"))),
        "ratio_snapshots_to_repository": round(held / live_bytes, 3),
        "ratio_total_to_never_compacted": round((live_bytes + held) / plain_bytes, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--per-day", type=int, default=6)
    parser.add_argument("--retention-days", type=int, default=3)
    parser.add_argument("--delay-days", type=int, default=7)
    parser.add_argument("--compact-every-days", type=int, default=1, help="repository_host_compact_interval_days")
    parser.add_argument("--churn", type=float, default=0.05, help="share of the files rewritten per backup")
    parser.add_argument("--file-kib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grus-compaction-space-") as tmp:
        print(json.dumps(simulate(args, Path(tmp)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
