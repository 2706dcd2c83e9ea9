# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmarks: grus.backup against raw borg and rsync, on the same data, in one run.

Every figure is a RATIO against the raw tool measured in the same run, never an absolute
time: the machines differ, the ratios should not. Ours and the raw tool run as a pair, one
right after the other (the order alternating); a verdict reads the median of the per-pair
figures over ``--runs`` rounds (and ``--repeat`` pairs a round for the cheap unchanged
re-runs), so that the machine's drift, which moves both sides of a pair alike, cancels.
Modules run the way operators run them (``ansible localhost -m grus.backup.X``); the
start-up cost of an Ansible task is measured right after every module call with
``ansible.builtin.ping`` and every module figure is also given net of it.

    .venv/bin/python bench/run.py                     # 1 GiB, 20k files, 3 rounds
    .venv/bin/python bench/run.py --variant 100k      # 100k small files
    .venv/bin/python bench/run.py --size 200M --runs 3 --out bench/results

Results: ``<out>/bench-<stamp>.json`` and ``.md`` (and ``latest.json``/``latest.md``).
Targets are printed PASS/FAIL; the exit status is 0 unless a measurement itself broke
(a command failed, a tool is missing), so timing noise never fails a build.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402

COLLECTIONS = ROOT / ".build" / "collections"
PASSPHRASE = "grus-bench-passphrase"  # noqa: S105 - a throw-away repository in a temp dir
COMPRESSION = "lz4"
ENCRYPTION = "keyfile-blake2"
JOB_FILES_CACHE = "mtime,size"  # what the key holder's job is expected to use for NFS sources
TIMEOUT = 3600


class MeasurementError(RuntimeError):
    """A command under measurement failed: the figures would be meaningless."""


class Unavailable(RuntimeError):
    """A part of the product the benchmark needs is not there (yet)."""


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    argv: list
    seconds: float
    maxrss_kb: int
    rc: int
    stdout: str
    stderr: str
    result: dict = field(default_factory=dict)
    # For a module: the ansible.builtin.ping measured right after it (its start-up, same conditions).
    startup: Sample | None = None
    started: float = 0.0  # time.perf_counter() at the start: which side of a pair ran first


VERBOSE = False
GNU_TIME = "/usr/bin/time"
_running = {}  # the command being measured, so that SIGTERM can stop it too


def measure(argv, env=None, cwd=None, ok_rcs=(0,), timeout=TIMEOUT) -> Sample:
    """Run ``argv`` once; wall time and the peak RSS of its process tree.

    Peak RSS is ru_maxrss from wait4(), which covers the command and the descendants it
    waited for: the largest single process (borg, rsync, or for a module the Ansible
    controller, its worker, the module, borg). Linux keeps a process's maxrss across
    fork+exec, so a command forked straight from this (large) Python process would report
    at least our own size; GNU time, small itself, does the fork and reports the command's.
    """
    argv = [str(a) for a in argv]
    os.sync()  # write-back of the previous step must not land in this one
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rss:
        wrapped = [GNU_TIME, "--quiet", "-f", "%M", "-o", rss.name, *argv] if os.path.exists(GNU_TIME) else argv
        start = time.perf_counter()
        proc = subprocess.Popen(
            wrapped, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        _running["proc"] = proc
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            _running.pop("proc", None)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss_kb = usage.ru_maxrss
        if wrapped is not argv:
            # killed before GNU time wrote it: keep the (upper bound) figure from wait4
            with contextlib.suppress(ValueError, IndexError):
                maxrss_kb = int(Path(rss.name).read_text().split()[-1])
        out.seek(0)
        err.seek(0)
        sample = Sample(
            argv,
            seconds,
            maxrss_kb,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            started=start,
        )
    if VERBOSE:
        what = argv[argv.index("-m") + 1] if "-m" in argv else shlex.join(argv[:3])
        print(f"    {seconds:8.3f} s {maxrss_kb / 1024:7.1f} MB  {what}", flush=True)
    if sample.rc not in ok_rcs:
        raise MeasurementError(
            f"{shlex.join(sample.argv)} exited {sample.rc}\n--- stdout\n{sample.stdout[-3000:]}\n"
            f"--- stderr\n{sample.stderr[-3000:]}"
        )
    return sample


def _on_sigterm(signum, _frame):
    proc = _running.get("proc")
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    sys.exit(128 + signum)


def quiet(argv, env=None, cwd=None):
    """An untimed preparation step that must succeed."""
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MeasurementError(f"{shlex.join(map(str, argv))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


# ---------------------------------------------------------------- the tools


class Bench:
    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.data = work / "data"
        self.python = Path(args.python)
        self.ansible = Path(args.ansible)
        self.borg_env = dict(os.environ)
        for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD", "BORG_NEW_PASSPHRASE"):
            self.borg_env.pop(name, None)
        self.borg_env.update(
            {
                "BORG_BASE_DIR": str(work / "borg-home"),  # keys, cache, security: all in the temp dir
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
                "LC_ALL": "C.UTF-8",
            }
        )
        self.raw_env = dict(self.borg_env, BORG_PASSPHRASE=PASSPHRASE)
        self.ansible_env = dict(self.borg_env)
        self.ansible_env.update(
            {
                "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
                "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_LOCAL_TEMP": str(work / "ansible-local"),
                "ANSIBLE_REMOTE_TEMP": str(work / "ansible-remote"),
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "1",
                "PYTHONPATH": str(COLLECTIONS),
            }
        )
        self.ansible_env["PATH"] = f"{self.python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.jobs = None  # a JobPackage when the scheduled jobs' code is there
        self.startup_samples = []
        self.job_startup_samples = []

    # --- raw tools

    def borg_init(self, repo: Path):
        quiet(["borg", "init", "--encryption", ENCRYPTION, repo], env=self.raw_env)

    def borg_create(self, repo: Path, name: str, src: Path, files_cache=None, timestamp=None, json_out=False) -> Sample:
        argv = ["borg", "create", "--compression", COMPRESSION]
        if json_out:
            argv.append("--json")
        if files_cache:
            argv += ["--files-cache", files_cache]
        if timestamp:
            argv += ["--timestamp", timestamp]
        for pattern in self.borg_excludes_for(src):
            argv += ["--exclude", pattern]
        argv += [f"{repo}::{name}", src]
        return measure(argv, env=self.raw_env)

    def borg_excludes_for(self, src: Path):
        """The same exclude as every other tool: the connection-logs volume."""
        return [str(src / dataset.EXCLUDED_VOLUME)]

    def borg_extract(self, repo: Path, name: str, dest: Path) -> Sample:
        dest.mkdir(parents=True)
        return measure(["borg", "extract", f"{repo}::{name}"], env=self.raw_env, cwd=dest)

    def rsync(self, src: Path, dest: Path, extra=()) -> Sample:
        argv = ["rsync", "-aHAX", "--delete", *extra, "--exclude", f"/{dataset.EXCLUDED_VOLUME}", f"{src}/", f"{dest}/"]
        return measure(argv)

    # --- modules, the way operators run them

    def module(self, name: str, module_args: dict, check=False) -> Sample:
        """One ad-hoc task; for grus.backup modules followed by a ``ping`` (``Sample.startup``)."""
        argv = [
            self.ansible,
            "localhost",
            "-c",
            "local",
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={self.python}",
            "-m",
            name if "." in name else f"grus.backup.{name}",
        ]
        if module_args:
            argv += ["-a", json.dumps(module_args)]
        if check:
            argv.append("--check")
        sample = measure(argv, env=self.ansible_env, cwd=self.work, ok_rcs=(0, 2, 4))
        try:
            data = json.loads(sample.stdout)
            sample.result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
        except (ValueError, KeyError, IndexError) as exc:
            raise MeasurementError(f"no JSON result from {name}: rc={sample.rc}\n{sample.stdout[-3000:]}") from exc
        if sample.rc != 0 or sample.result.get("failed") or sample.result.get("unreachable"):
            message = sample.result.get("msg") or sample.stdout[-2000:]
            if "couldn't resolve module" in str(message).lower() or "was not found" in str(message).lower():
                raise Unavailable(f"module {name} is not available: {message}")
            raise MeasurementError(f"module {name} failed (rc={sample.rc}): {message}")
        if name != "ansible.builtin.ping":
            sample.startup = self.module("ansible.builtin.ping", {})
            self.startup_samples.append(sample.startup)
        return sample

    def module_file(self, name: str) -> Path:
        return ROOT / "plugins" / "modules" / f"{name}.py"


# ---------------------------------------------------------------- statistics and targets


def median(values):
    return statistics.median(values) if values else None


def median_ci(values, level=0.95):
    """A distribution-free confidence interval for the median: ``(low, high, coverage)``.

    Order statistics x_(j) <= median <= x_(n-j+1) hold with probability 1 - 2 P(B <= j-1),
    B ~ Binomial(n, 1/2): the narrowest such pair whose coverage reaches ``level``. With too
    few values for that (fewer than 6 at 95 %) it is the full range, with the coverage it has
    (3 values: 75 %).
    """
    xs = sorted(values)
    n = len(xs)

    def coverage(j):
        return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= level:
        j += 1
    return xs[j - 1], xs[n - j], coverage(j)


def _series(figures: dict, name: str, values: list) -> None:
    """``name`` (the median), ``name_range`` and ``name_ci`` (see ``median_ci``)."""
    low, high, coverage = median_ci(values)
    figures[name] = round(median(values), 3)
    figures[f"{name}_range"] = [round(min(values), 3), round(max(values), 3)]
    figures[f"{name}_ci"] = [round(low, 3), round(high, 3)]
    figures["ci_coverage"] = round(coverage, 3)


def order_balanced(ratios, ours_first) -> float | None:
    """The mean of the median ratio of the pairs where ours ran first and of those where the raw
    tool did: a slowdown of whichever runs second (measured here, its cause outside the tools)
    cancels out, to first order. None unless both orders were measured. (An arithmetic
    mean: a net ratio can be negative on a tiny data set.)"""
    firsts = [r for r, first in zip(ratios, ours_first, strict=True) if first]
    seconds = [r for r, first in zip(ratios, ours_first, strict=True) if not first]
    if not firsts or not seconds:
        return None
    return round((median(firsts) + median(seconds)) / 2, 3)


def paired_figures(ours, raw, startups, ours_first=None) -> dict:
    """Medians of the per-pair figures: ours/raw, ours-raw, and both net of ours' start-up,
    each with its range and a confidence interval of the median; and, where the pairs ran in
    both orders, the order-balanced ratios (``order_balanced``).

    ``startups`` gives the start-up to subtract from each of ours (a ping measured right after
    that module call, or the job start-up's median), or None where there is none.
    """
    figures = {"pairs": len(ours)}
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    _series(figures, "ratio", ratios)
    _series(figures, "diff_s", [o - r for o, r in zip(ours, raw, strict=True)])
    net_ratios = None
    if all(s is not None for s in startups):
        net = [o - s for o, s in zip(ours, startups, strict=True)]
        net_ratios = [n / r for n, r in zip(net, raw, strict=True)]
        _series(figures, "net_ratio", net_ratios)
        _series(figures, "net_diff_s", [n - r for n, r in zip(net, raw, strict=True)])
    balanced = order_balanced(ratios, ours_first) if ours_first is not None else None
    if balanced is not None:
        figures["ours_first_pairs"] = sum(1 for first in ours_first if first)
        figures["balanced_ratio"] = balanced
        if net_ratios is not None:
            figures["balanced_net_ratio"] = order_balanced(net_ratios, ours_first)
    return figures


def summarise(samples):
    return {
        "median_s": round(median([s.seconds for s in samples]), 4),
        "samples_s": [round(s.seconds, 4) for s in samples],
        "peak_rss_mb": round(max(s.maxrss_kb for s in samples) / 1024, 1),
    }


class Comparison:
    def __init__(self, key, title, ours_label, raw_label, startup="ansible"):
        self.key = key
        self.title = title
        self.ours_label = ours_label
        self.raw_label = raw_label
        # What ours pays before it does any work: "ansible" (an ad-hoc task), "python" (the
        # scheduled job's interpreter and imports) or None. Figures are also given net of it.
        self.startup = startup
        self.ours = []
        self.raw = []
        self.notes = []

    def add(self, ours: Sample, raw: Sample):
        self.ours.append(ours)
        self.raw.append(raw)

    def as_dict(self, startups: dict):
        if not self.ours:
            return {"key": self.key, "title": self.title, "measured": False, "notes": self.notes}
        ours, raw = summarise(self.ours), summarise(self.raw)
        d = {
            "key": self.key,
            "title": self.title,
            "measured": True,
            "ours_label": self.ours_label,
            "raw_label": self.raw_label,
            "ours": ours,
            "raw": raw,
            "ratio": round(ours["median_s"] / raw["median_s"], 3),
            "diff_s": round(ours["median_s"] - raw["median_s"], 3),
            "per_pair_ratios": [round(o.seconds / r.seconds, 3) for o, r in zip(self.ours, self.raw, strict=True)],
            "notes": self.notes,
        }
        startup_s = startups.get(self.startup) if self.startup else None
        if self.startup == "ansible":
            pair_startups = [o.startup.seconds if o.startup else startup_s for o in self.ours]
        else:
            pair_startups = [startup_s] * len(self.ours)
        d["paired"] = paired_figures(
            [o.seconds for o in self.ours],
            [r.seconds for r in self.raw],
            pair_startups if self.startup else [None],
            ours_first=[o.started < r.started for o, r in zip(self.ours, self.raw, strict=True)],
        )
        if startup_s is not None:
            d["startup"] = self.startup
            d["startup_s"] = startup_s
            net = ours["median_s"] - startup_s
            d["net_of_startup_s"] = round(net, 4)
            d["net_ratio"] = round(net / raw["median_s"], 3)
            d["net_diff_s"] = round(net - raw["median_s"], 3)
        return d


@dataclass
class Target:
    key: str  # comparison key
    text: str
    kind: str  # "ratio" | "diff" | "ratio_plus_startup"
    limit: float

    def judge(self, comp: dict) -> dict:
        """PASS/FAIL on the median of the per-pair figures (see ``paired_figures``)."""
        out = {"target": self.text, "comparison": self.key}
        if not comp.get("measured"):
            out["verdict"] = "SKIP"
            return out
        paired = comp["paired"]
        out["pairs"] = paired["pairs"]
        if self.kind == "diff":
            value, net = paired["diff_s"], paired.get("net_diff_s")
        else:
            value, net = paired["ratio"], paired.get("net_ratio")
        out["value"] = value
        if self.kind == "ratio_plus_startup":
            # "ratio <= limit + start-up" is the same as "net of the start-up, ratio <= limit"
            out["verdict"] = "PASS" if net is not None and net <= self.limit else "FAIL"
            judged = "net_ratio"
        else:
            out["verdict"] = "PASS" if value <= self.limit else "FAIL"
            judged = "diff_s" if self.kind == "diff" else "ratio"
        if net is not None:
            out["net_value"] = net
            out["net_verdict"] = "PASS" if net <= self.limit else "FAIL"
        # Resolved: the confidence interval of the judged median lies wholly on one side of the
        # limit. An unresolved verdict is within this machine's noise: more pairs would tell.
        ci = paired.get(f"{judged}_ci")
        if ci is not None:
            out.update(ci=ci, ci_coverage=paired["ci_coverage"], resolved=ci[1] <= self.limit or ci[0] > self.limit)
        return out


TARGETS = [
    Target("archive_first", "borg_archive present, first run: ratio <= 1.05", "ratio", 1.05),
    Target("archive_unchanged", "borg_archive present, unchanged re-run: within 0.5 s of borg", "diff", 0.5),
    Target("job_first", "backup job, first run: ratio <= 1.05", "ratio", 1.05),
    Target("job_unchanged", "backup job, unchanged re-run: within 0.5 s of borg", "diff", 0.5),
    Target(
        "job_metrics_first", "backup job with metrics and pings vs without, first run: ratio <= 1.03", "ratio", 1.03
    ),
    Target(
        "job_metrics_unchanged", "backup job with metrics and pings vs without, unchanged: within 0.2 s", "diff", 0.2
    ),
    Target(
        "job_after_resync",
        "backup job after a sync that rewrote files (same content and mtime): <= 1.2x borg's unchanged re-run",
        "ratio",
        1.2,
    ),
    Target(
        "fc_mtime_after_resync",
        "borg --files-cache=mtime,size after the rewriting sync: <= 1.2x borg's unchanged re-run",
        "ratio",
        1.2,
    ),
    Target("sync_first", "nfs_sync, first sync: ratio <= 1.05 + module start-up", "ratio_plus_startup", 1.05),
    Target("sync_unchanged", "nfs_sync, unchanged: ratio <= 1.05 + module start-up", "ratio_plus_startup", 1.05),
    Target("sync_changed", "nfs_sync, 1% changed: ratio <= 1.05 + module start-up", "ratio_plus_startup", 1.05),
    Target("sched_sync_first", "scheduled sync, first sync: ratio <= 1.05 + job start-up", "ratio_plus_startup", 1.05),
    Target(
        "sched_sync_unchanged", "scheduled sync, unchanged: ratio <= 1.05 + job start-up", "ratio_plus_startup", 1.05
    ),
    Target(
        "sched_sync_changed", "scheduled sync, 1% changed: ratio <= 1.05 + job start-up", "ratio_plus_startup", 1.05
    ),
    Target("extract", "borg_archive extracted: ratio <= 1.05", "ratio", 1.05),
]


# ---------------------------------------------------------------- scenarios


def sample_startups(bench: Bench, count: int) -> None:
    """The cost of any one ad-hoc Ansible task (a no-op module), and of the scheduled jobs'
    interpreter and imports; sampled at the start and again in every round, so that they
    are measured under the same conditions as the figures they are subtracted from."""
    for _attempt in range(count):
        bench.startup_samples.append(bench.module("ansible.builtin.ping", {}))
        if bench.jobs:
            bench.job_startup_samples.append(measure(bench.jobs.argv("_rsync", "--help"), env=bench.jobs.env))


def borg_module_args(bench: Bench, repo: Path, **extra) -> dict:
    # The module sets BORG_BASE_DIR only from base_dir (an inherited one is dropped on purpose).
    args = {"repo": str(repo), "passphrase": PASSPHRASE, "base_dir": bench.borg_env["BORG_BASE_DIR"]}
    args.update(extra)
    return args


def archive_args(bench: Bench, repo: Path, name: str, src: Path, **extra) -> dict:
    args = {
        "repo": str(repo),
        "passphrase": PASSPHRASE,
        "base_dir": bench.borg_env["BORG_BASE_DIR"],
        "name": name,
        "state": "present",
        "paths": [str(src)],
        "exclude": [str(src / dataset.EXCLUDED_VOLUME)],
        "compression": COMPRESSION,
    }
    args.update(extra)
    return args


def sync_args(bench: Bench, src: Path, dest: Path) -> dict:
    return {
        "src": str(src),
        "dest": str(dest),
        "exclude": [f"/{dataset.EXCLUDED_VOLUME}"],
        "delete": True,
        "lock": str(bench.work / "nfs-sync.lock"),  # not the host's /run/lock
    }


def paired(first_is_raw: bool, raw, ours):
    """Run both, alternating which goes first from round to round (page cache, write-back)."""
    if first_is_raw:
        r = raw()
        o = ours()
    else:
        o = ours()
        r = raw()
    return o, r


def rotated(rnd: int, steps: list) -> list:
    """Run every step, the order rotating from round to round (page cache, write-back);
    results come back in the original order."""
    if not steps:
        return []
    order = list(range(len(steps)))
    shift = rnd % len(steps)
    order = order[shift:] + order[:shift]
    results = [None] * len(steps)
    for i in order:
        results[i] = steps[i]()
    return results


def sync_step(bench: Bench, rnd: int, comps: dict, phase: str, export: Path, ours: Path, sched_cfg: Path, have_sync):
    """rsync -aHAX --delete vs nfs_sync (module) vs the scheduled sync, on the same data."""
    steps = [lambda: bench.rsync(bench.data, export)]
    if have_sync:
        steps.append(lambda: bench.module("nfs_sync", sync_args(bench, bench.data, ours)))
    if bench.jobs:
        steps.append(lambda: measure(bench.jobs.argv("_rsync", "--config", sched_cfg), env=bench.jobs.env))
    results = rotated(rnd, steps)
    raw = results.pop(0)
    if have_sync:
        module = results.pop(0)
        comps[f"sync_{phase}"].add(module, raw)
        if phase == "unchanged" and module.result.get("changed"):
            comps["sync_unchanged"].notes.append(f"round {rnd + 1}: nfs_sync reported changed on a no-op sync")
    if bench.jobs:
        comps[f"sched_sync_{phase}"].add(results.pop(0), raw)


def rewrite(src: Path, dest: Path) -> None:
    """Re-sync ``dest`` from ``src`` rewriting every file (content and mtime unchanged)."""
    quiet(
        [
            "rsync",
            "-aHAX",
            "--delete",
            "--ignore-times",
            "--exclude",
            f"/{dataset.EXCLUDED_VOLUME}",
            f"{src}/",
            f"{dest}/",
        ]
    )


class JobPackage:
    """plugins/module_utils as the roles ship it, and the entry points the systemd units run.

    roles/key_holder and roles/sync_client copy the files to /usr/local/lib/grus-backup/grus_backup/
    and install /usr/local/sbin/grus-backup-run and grus-nfs-sync, shell scripts that do
    ``PYTHONPATH=/usr/local/lib/grus-backup exec /usr/bin/python3 -m grus_backup.<job> --config FILE``.
    Here the same, in the temporary directory; the configuration file is an argument.
    """

    ENTRY_POINTS = {"_backup_job": "grus-backup-run", "_rsync": "grus-nfs-sync"}

    def __init__(self, work: Path, name: str = "grus_backup", python: str = "/usr/bin/python3"):
        self.dir = work / "jobs"
        self.name = name
        self.python = python if os.path.exists(python) else shutil.which("python3")
        package = self.dir / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("# grus.backup: the collection's module_utils, shipped for the jobs\n")
        for source in (ROOT / "plugins" / "module_utils").glob("_*.py"):
            shutil.copy2(source, package / source.name)
        for module, script in self.ENTRY_POINTS.items():
            path = self.dir / script
            path.write_text(
                f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(self.dir))} exec {self.python} -m {name}.{module} "$@"\n'
            )
            path.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "PYTHON", "ANSIBLE_"))}
        self.env.update(LC_ALL="C.UTF-8", HOME=os.path.expanduser("~"))

    def argv(self, module: str, *args) -> list:
        return [self.dir / self.ENTRY_POINTS[module], *map(str, args)]

    def has(self, module: str) -> bool:
        return (self.dir / self.name / f"{module}.py").exists()


class Job:
    """The key holder's scheduled backup, run the way its systemd unit runs it:
    ``python3 -m <package>._backup_job --config FILE`` (see plugins/module_utils/_backup_job.py
    and roles/key_holder). The passphrase reaches borg through a passcommand, as in production."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.how = None
        self.reason = None
        self.files_cache = None
        self.files_cache_source = None
        self.last_start = 0.0
        self.ping_server = None
        if "job" in bench.args.skip:
            self.reason = "left out (--skip job)"
        elif bench.jobs is None or not bench.jobs.has("_backup_job"):
            self.reason = "plugins/module_utils/_backup_job.py does not exist (yet)"
        else:
            self.how = (
                f"{bench.jobs.ENTRY_POINTS['_backup_job']} --config FILE = PYTHONPATH=... {bench.jobs.python} "
                f"-m {bench.jobs.name}._backup_job --config FILE (as roles/key_holder installs it)"
            )
            secret = bench.work / "passphrase"
            secret.write_text(PASSPHRASE + "\n")
            secret.chmod(0o600)
            self.passcommand = f"cat {secret}"
            self.files_cache = self._default_files_cache()

    def _default_files_cache(self):
        """The files-cache mode the key holder's job runs with: the role's setting, else the job's default."""
        role_vars = ROOT / "roles" / "key_holder" / "vars" / "main.yml"
        try:
            import yaml  # noqa: PLC0415 - the venv has it (ansible-core); only needed here

            config = yaml.safe_load(role_vars.read_text()).get("__key_holder_job_config", {})
            value = config.get("files_cache")
            if isinstance(value, str) and "{" not in value:
                self.files_cache_source = str(role_vars.relative_to(ROOT))
                return value
        except (OSError, ImportError, AttributeError, ValueError):
            pass
        code = (
            f"import dataclasses; from {self.bench.jobs.name}._backup_job import JobConfig; "
            "print(next(f.default for f in dataclasses.fields(JobConfig) if f.name == 'files_cache'))"
        )
        proc = subprocess.run(
            [self.bench.jobs.python, "-c", code],
            env=dict(self.bench.jobs.env, PYTHONPATH=str(self.bench.jobs.dir)),
            capture_output=True,
            text=True,
            check=False,
        )
        self.files_cache_source = "the JobConfig default in plugins/module_utils/_backup_job.py"
        return proc.stdout.strip() or None

    @property
    def available(self):
        return self.how is not None

    def config(self, repo: Path, src: Path) -> Path:
        path = repo.parent / f"{repo.name}.json"
        config = {
            "repo": str(repo),
            "paths": [str(src)],
            "passcommand": self.passcommand,
            "base_dir": self.bench.borg_env["BORG_BASE_DIR"],
            "exclude": [str(src / dataset.EXCLUDED_VOLUME)],
            "sources": [{"path": str(src / v)} for v in dataset.VOLUMES if v != dataset.EXCLUDED_VOLUME],
            "compression": COMPRESSION,
            "state_dir": str(repo.parent / f"{repo.name}-state"),
        }
        if self.files_cache:
            config["files_cache"] = self.files_cache
        path.write_text(json.dumps(config, indent=2))
        return path

    def prepare(self, repo: Path, src: Path):
        self.config(repo, src)

    def ping_url(self) -> str:
        """A dead man's switch stand-in on 127.0.0.1 (answers 200 to every ping), started once."""
        if self.ping_server is None:

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_POST(self):
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    self.send_response(200)
                    self.end_headers()

                def log_message(self, *_args):
                    pass

            self.ping_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=self.ping_server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.ping_server.server_address[1]}/ping/bench"

    def run(self, repo: Path, src: Path, monitored: bool = False) -> Sample:
        """One run; ``monitored``: with ``--metrics-dir`` and a ping URL, as the deployed unit runs it."""
        config = repo.parent / f"{repo.name}.json"
        # Archive names carry the second of the run's start: never start two in the same second.
        time.sleep(max(0.0, self.last_start + 1.05 - time.time()))
        self.last_start = time.time()
        argv = self.bench.jobs.argv("_backup_job", "--config", config)
        env = self.bench.jobs.env
        if monitored:
            metrics = repo.parent / "textfile"
            metrics.mkdir(exist_ok=True)
            argv += ["--metrics-dir", str(metrics)]
            env = dict(env, GRUS_BACKUP_PING_URL=self.ping_url())
        return measure(argv, env=env, ok_rcs=(0, 1))


def job_and_files_cache_step(
    bench: Bench, rnd: int, comps: dict, job: Job, base: Path, export: Path, job_raw: Path, job_repo: Path
) -> None:
    """The backup job vs borg create, and borg's files-cache modes after a rewriting sync."""
    data = bench.data
    # ---- the scheduled backup job vs borg create, on the export; then what the files cache
    #      setting does after a sync that changed no content but rewrote every file.
    #      borg keeps ctime OR mtime in its files cache, by the mode of the run that wrote the
    #      entry, so each mode gets its own repository, used in that mode from the first run.
    modes = {} if "files-cache" in bench.args.skip else {"ctime": "ctime,size", "mtime": "mtime,size"}
    if not (job.available or modes):
        return
    bench.borg_init(job_raw)
    for label, files_cache in modes.items():
        bench.borg_init(base / f"fc-{label}")
        bench.borg_create(base / f"fc-{label}", "first", export, files_cache=files_cache)
    steps = [lambda: bench.borg_create(job_raw, "first", export)]
    job_monitored = job_repo.parent / f"{job_repo.name}-monitored"
    if job.available:
        bench.borg_init(job_repo)
        job.prepare(job_repo, export)
        steps.append(lambda: job.run(job_repo, export))
        # The cost of noticing: the same job with its metrics and pings, against the job without them.
        bench.borg_init(job_monitored)
        job.prepare(job_monitored, export)
        steps.append(lambda: job.run(job_monitored, export, monitored=True))
    results = rotated(rnd, steps)
    if job.available:
        comps["job_first"].add(results[1], results[0])
        comps["job_metrics_first"].add(results[2], results[1])
    for k in range(bench.args.repeat):
        steps[0] = lambda k=k: bench.borg_create(job_raw, f"again-{k}", export)
        results = rotated(rnd + k, steps)
        raw_unchanged = results[0]  # the last one is the reference for the files-cache step
        if job.available:
            comps["job_unchanged"].add(results[1], raw_unchanged)
            comps["job_metrics_unchanged"].add(results[2], results[1])
    if "files-cache" in bench.args.skip:
        return
    # A sync that changed nothing but rewrote every file: same bytes, same mtime, new inode
    # and new ctime (a re-sync over NFS, a client volume restored, a sync with --ignore-times).
    rewrite(data, export)
    steps = []
    if job.available:
        steps.append(("job", lambda: job.run(job_repo, export)))
    if modes:
        steps.append(("default", lambda: bench.borg_create(job_raw, "resynced", export)))
    for label, files_cache in modes.items():
        steps.append(
            (
                label,
                lambda r=base / f"fc-{label}", m=files_cache: bench.borg_create(r, "resynced", export, files_cache=m),
            )
        )
    results = rotated(rnd, [step for _label, step in steps])
    for (label, _step), sample in zip(steps, results, strict=True):
        key = "job_after_resync" if label == "job" else f"fc_{label}_after_resync"
        comps[key].add(sample, raw_unchanged)


def one_round(bench: Bench, rnd: int, comps: dict, job: Job, have_archive: bool, have_sync: bool) -> int:
    """One round of every comparison; returns the bytes the 1 % change wrote."""
    data = bench.data
    raw_first = rnd % 2 == 0
    base = bench.work / f"round-{rnd}"
    base.mkdir()

    # ---- nfs_sync vs rsync -aHAX --delete (first, unchanged); the raw copy is also the
    #      key holder's export that the backup job archives.
    export = base / "export"
    sync_ours = base / "sync-ours"
    export.mkdir()
    sync_ours.mkdir()
    sync_sched = base / "sync-scheduled"
    sync_sched.mkdir()
    sched_cfg = base / "nfs-sync.json"
    sched_cfg.write_text(json.dumps(sync_args(bench, data, sync_sched)))
    sync_step(bench, rnd, comps, "first", export, sync_ours, sched_cfg, have_sync)
    for k in range(bench.args.repeat):
        sync_step(bench, rnd + k, comps, "unchanged", export, sync_ours, sched_cfg, have_sync)

    # ---- borg_archive state=present vs borg create (first, unchanged)
    repo_raw, repo_ours = base / "repo-raw", base / "repo-ours"
    if have_archive:
        bench.borg_init(repo_raw)
        bench.borg_init(repo_ours)
        o, r = paired(
            raw_first,
            lambda: bench.borg_create(repo_raw, "first", data),
            lambda: bench.module("borg_archive", archive_args(bench, repo_ours, "first", data)),
        )
        comps["archive_first"].add(o, r)
        for k in range(bench.args.repeat):
            o, r = paired(
                (rnd + k) % 2 == 0,
                lambda k=k: bench.borg_create(repo_raw, f"again-{k}", data),
                lambda k=k: bench.module("borg_archive", archive_args(bench, repo_ours, f"again-{k}", data)),
            )
            comps["archive_unchanged"].add(o, r)

    # ---- the scheduled backup job, and the files cache after a sync that rewrote every file
    job_raw, job_repo = base / "job-raw", base / "job-ours"
    job_and_files_cache_step(bench, rnd, comps, job, base, export, job_raw, job_repo)

    # ---- 1 % of the data changes, then everything runs again
    changed = 0
    if "changed" not in bench.args.skip:
        changed = dataset.mutate(data, 0.01, seed=bench.args.seed + 1000 + rnd)
        sync_step(bench, rnd, comps, "changed", export, sync_ours, sched_cfg, have_sync)
        if have_archive:
            o, r = paired(
                raw_first,
                lambda: bench.borg_create(repo_raw, "changed", data),
                lambda: bench.module("borg_archive", archive_args(bench, repo_ours, "changed", data)),
            )
            comps["archive_changed"].add(o, r)
        if job.available:
            o, r = paired(
                raw_first,
                lambda: bench.borg_create(job_raw, "changed", export),
                lambda: job.run(job_repo, export),
            )
            comps["job_changed"].add(o, r)

    # ---- borg_archive state=extracted vs borg extract (the latest archive, same content)
    if have_archive:
        dest_raw, dest_ours = base / "extract-raw", base / "extract-ours"
        latest = f"again-{bench.args.repeat - 1}" if "changed" in bench.args.skip else "changed"
        o, r = paired(
            raw_first,
            lambda: bench.borg_extract(repo_raw, latest, dest_raw),
            lambda: bench.module(
                "borg_archive",
                borg_module_args(bench, repo_ours, name=latest, state="extracted", dest=str(dest_ours)),
            ),
        )
        comps["extract"].add(o, r)
        if not o.result.get("changed"):
            comps["extract"].notes.append(f"round {rnd + 1}: borg_archive extracted reported changed=false")
    shutil.rmtree(base)
    return changed


def run_rounds(bench: Bench, runs: int, comps: dict, job: Job, log) -> dict:
    info = {"mutations_bytes": []}
    have_archive = bench.module_file("borg_archive").exists()
    have_sync = bench.module_file("nfs_sync").exists()
    if not have_archive:
        comps["archive_first"].notes.append("plugins/modules/borg_archive.py missing: not measured")
    if not have_sync:
        comps["sync_first"].notes.append("plugins/modules/nfs_sync.py missing: not measured")
    for rnd in range(runs):
        log(f"round {rnd + 1}/{runs}")
        sample_startups(bench, 1)
        info["mutations_bytes"].append(one_round(bench, rnd, comps, job, have_archive, have_sync))
    return info


def run_dedup(bench: Bench, days: int, per_day: int, size: int, files: int, log) -> dict:
    """``days`` x ``per_day`` archives of a slowly changing data set, faked in time."""
    base = bench.work / "dedup"
    src = base / "data"
    repo = base / "repo"
    dataset.generate(src, size, files, seed=bench.args.seed + 7)
    bench.borg_init(repo)
    start = dt.datetime(2026, 1, 1, 0, 0, 0)
    hours = 24 // per_day
    samples = []
    changed_total = 0
    first_stats = None
    for day in range(days):
        for slot in range(per_day):
            when = start + dt.timedelta(days=day, hours=slot * hours)
            if samples:
                changed_total += dataset.mutate(src, 0.002, seed=bench.args.seed + day * 100 + slot)
            name = f"bench-{when:%Y-%m-%dT%H:%M}"
            sample = bench.borg_create(repo, name, src, timestamp=when.strftime("%Y-%m-%dT%H:%M:%S"), json_out=True)
            samples.append(sample)
            if first_stats is None:
                first_stats = json.loads(sample.stdout)["archive"]["stats"]
        log(f"dedup: day {day + 1}/{days}")
    repo_info = json.loads(quiet(["borg", "info", "--json", repo], env=bench.raw_env).stdout)
    cache = repo_info.get("cache", {}).get("stats", {})
    repo_bytes = dataset.du(repo)
    one_copy = first_stats["compressed_size"]
    result = {
        "archives": len(samples),
        "days": days,
        "per_day": per_day,
        "source_bytes": first_stats["original_size"],
        "one_compressed_copy_bytes": one_copy,
        "all_archives_original_bytes": cache.get("total_size"),
        "repository_bytes_on_disk": repo_bytes,
        "repository_vs_one_copy": round(repo_bytes / one_copy, 3),
        "changed_bytes_total": changed_total,
        "changed_per_archive_fraction": 0.002,
        "create_median_s": round(median([s.seconds for s in samples]), 3),
        "create_peak_rss_mb": round(max(s.maxrss_kb for s in samples) / 1024, 1),
    }
    shutil.rmtree(base)
    return result


DEMO_HOSTS = ("sarus", "antigone", "balearica")


def run_site(bench: Bench, log) -> dict:
    """site.yml twice on the three demo hosts (tests/testbed/testbed.sh demo-up): the second
    run must change nothing. Demo hosts that already run are someone else's: left alone."""
    playbook = ROOT / "site.yml"
    if not playbook.exists():
        playbook = ROOT / "playbooks" / "site.yml"
    inventory = ROOT / "inventories" / "demo"
    testbed = ROOT / "tests" / "testbed" / "testbed.sh"
    missing = [str(p.relative_to(ROOT)) for p in (playbook, inventory, testbed) if not p.exists()]
    missing += [
        f"roles/{r}" for r in ("repository_host", "key_holder", "sync_client") if not (ROOT / "roles" / r).exists()
    ]
    if missing:
        return {"measured": False, "reason": "not available yet: " + ", ".join(missing)}
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        PYTHONPATH=str(COLLECTIONS),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
    )
    env["PATH"] = f"{bench.python.parent}:{env.get('PATH', '')}"
    try:
        engine = quiet([testbed, "engine"]).stdout
    except MeasurementError as exc:
        return {"measured": False, "error": f"no container engine: {exc}"}
    for word in shlex.split(engine.replace("export ", "")):
        key, _sep, value = word.partition("=")
        env[key] = value
    cli = "docker" if env.get("GRUS_ENGINE") == "docker" else "podman"
    running = [
        h for h in DEMO_HOSTS
        if subprocess.run([cli, "container", "inspect", h], env=env, capture_output=True, check=False).returncode == 0
    ]  # fmt: skip
    if running:
        return {"measured": False, "reason": f"demo hosts already exist ({', '.join(running)}): not ours, left alone"}
    playbook_argv = [bench.ansible.parent / "ansible-playbook", "-i", inventory, playbook]
    try:
        log("site.yml: demo-up")
        quiet([testbed, "demo-up"], env=env)
        log("site.yml: first run (converge)")
        first = measure(playbook_argv, env=env, cwd=ROOT)
        log("site.yml: second run")
        second = measure(playbook_argv, env=env, cwd=ROOT)
    except MeasurementError as exc:
        return {"measured": False, "error": str(exc)[-4000:]}
    finally:
        if not bench.args.keep:
            subprocess.run([testbed, "demo-down"], env=env, capture_output=True, check=False)
    recap = parse_recap(second.stdout)
    return {
        "measured": True,
        "first_run_s": round(first.seconds, 2),
        "second_run_s": round(second.seconds, 2),
        "second_run_changed": sum(h.get("changed", 0) for h in recap.values()),
        "recap": recap,
        "pipelining": "pipelining = true" in (ROOT / "ansible.cfg").read_text().replace("True", "true"),
    }


def parse_recap(text: str) -> dict:
    recap = {}
    in_recap = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line:
            host, _sep, rest = line.partition(":")
            counts = {}
            for item in rest.split():
                key, _sep, value = item.partition("=")
                if value.isdigit():
                    counts[key] = int(value)
            if counts:
                recap[host.strip()] = counts
    return recap


# ---------------------------------------------------------------- report


def tool_versions(bench: Bench) -> dict:
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0]
        except (OSError, IndexError):
            return None

    return {
        "borg": first_line(["borg", "--version"]),
        "rsync": first_line(["rsync", "--version"]),
        "ansible-core": first_line([bench.ansible, "--version"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }


def fmt_s(value):
    return "-" if value is None else f"{value:.2f}"


def ci_text(target: dict) -> str:
    """``low to high (coverage), resolved|unresolved``, or ``-``."""
    if "ci" not in target:
        return "-"
    low, high = target["ci"]
    state = "resolved" if target["resolved"] else "unresolved"
    return f"{low:g} to {high:g} ({target['ci_coverage']:.0%}), {state}"


def markdown(report: dict) -> str:  # noqa: PLR0915 - the report, section by section, reads top to bottom
    lines = []
    ds = report["dataset"]
    lines.append(f"# grus.backup benchmark, {report['started']}")
    lines.append("")
    lines.append(
        f"Data set: {ds['size_bytes'] / dataset.MIB:.0f} MiB, {ds['files']} files "
        f"({ds['small_files']} small), seed {ds['seed']}; {report['runs']} rounds, "
        f"{report.get('repeat', 1)} pairs a round for the unchanged re-runs; medians of the per-pair figures. "
        f"Ansible start-up (ansible.builtin.ping): {fmt_s(report['startup']['median_s'])} s, "
        f"peak RSS {report['startup']['peak_rss_mb']} MB."
        + (
            f" Scheduled jobs' start-up (grus-nfs-sync --help): {fmt_s(report['job_startup']['median_s'])} s."
            if report.get("job_startup")
            else ""
        )
    )
    versions = report.get("versions", {})
    if versions:
        lines.append("")
        lines.append(
            f"Machine: {versions.get('cpus')} CPUs, kernel {versions.get('kernel')}, load average "
            f"{report.get('load_average_start')} at the start, {report.get('load_average_end')} at the end; "
            f"{versions.get('borg')}, {versions.get('rsync')}, {versions.get('ansible-core')}, "
            f"Python {versions.get('python')}."
        )
    lines.append("")
    lines.append(
        "| comparison | pairs | ours (s) | raw (s) | ratio (range) | net of start-up (range) "
        "| order-balanced ratio / net | diff (s) | net diff (s) | peak RSS ours / raw (MB) |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for comp in report["comparisons"]:
        if not comp.get("measured"):
            lines.append(f"| {comp['title']} | not measured | | | | | | | | |")
            continue
        p = comp["paired"]
        net = "-"
        if "net_ratio" in p:
            net = f"{p['net_ratio']:.3f} ({p['net_ratio_range'][0]:.2f}-{p['net_ratio_range'][1]:.2f})"
        net_diff = f"{p['net_diff_s']:+.2f}" if "net_diff_s" in p else "-"
        balanced = "-"
        if "balanced_ratio" in p:
            balanced = f"{p['balanced_ratio']:.3f} / {p.get('balanced_net_ratio', '-')}"
        lines.append(
            f"| {comp['title']} | {p['pairs']} | {fmt_s(comp['ours']['median_s'])} | {fmt_s(comp['raw']['median_s'])} "
            f"| {p['ratio']:.3f} ({p['ratio_range'][0]:.2f}-{p['ratio_range'][1]:.2f}) | {net} | {balanced} "
            f"| {p['diff_s']:+.2f} | {net_diff} | {comp['ours']['peak_rss_mb']} / {comp['raw']['peak_rss_mb']} |"
        )
    lines.append("")
    lines.append(
        "Ratios and differences are medians of the per-pair figures; ours (s) and raw (s) are the medians of "
        "each side. Net of start-up: less the ping measured right after each module call (modules) or the "
        "scheduled jobs' start-up (jobs). Order-balanced: the mean of the median ratio of the pairs "
        "in which ours ran first and of those in which the raw tool did, which cancels a slowdown of whichever "
        "runs second (shown where the pairs ran in both orders; the verdicts read the plain median)."
    )
    lines.append("")
    lines.append("| target | pairs | value | verdict | confidence interval of the judged median | net of start-up |")
    lines.append("|---|---:|---:|---|---|---|")
    for t in report["targets"]:
        value = t.get("value")
        net = t.get("net_verdict")
        net_text = "-" if net is None else f"{net} ({t['net_value']})"
        lines.append(
            f"| {t['target']} | {t.get('pairs', '-')} | {'-' if value is None else value} | {t['verdict']} "
            f"| {ci_text(t)} | {net_text} |"
        )
    lines.append("")
    lines.append(
        "The interval is that of the median of the per-pair figure the verdict reads (order statistics; its "
        "coverage depends on the number of pairs: 3 pairs give the full range at 75 %). Unresolved: the "
        "interval contains the limit, so the verdict is within this machine's noise."
    )
    dd = report.get("dedup")
    if dd and dd.get("archives"):
        lines.append("")
        lines.append(
            f"Dedup: {dd['archives']} archives ({dd['days']} days x {dd['per_day']}) of a "
            f"{dd['source_bytes'] / dataset.MIB:.1f} MiB data set changing {dd['changed_per_archive_fraction']:.1%} "
            f"per run: repository {dd['repository_bytes_on_disk'] / dataset.MIB:.1f} MiB on disk = "
            f"{dd['repository_vs_one_copy']}x one compressed copy "
            f"({dd['one_compressed_copy_bytes'] / dataset.MIB:.1f} MiB)."
        )
    site = report.get("site", {})
    lines.append("")
    if site.get("measured"):
        lines.append(
            f"site.yml second run on the demo hosts: {site['second_run_s']} s, changed={site['second_run_changed']}."
        )
    else:
        why = site.get("reason") or "FAILED: " + " ".join(str(site.get("error", "")).split())[:300]
        lines.append(f"site.yml second run: not measured ({why}).")
    notes = [f"{c['key']}: {n}" for c in report["comparisons"] for n in c.get("notes", [])]
    notes += report.get("notes", [])
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1G", help="data set size, e.g. 1G, 200M (default 1G)")
    p.add_argument("--files", type=int, default=None, help="number of small files (default 20000)")
    p.add_argument(
        "--variant",
        choices=["default", "100k"],
        default="default",
        help="100k: 100,000 small files (unless --files is given)",
    )
    p.add_argument("--runs", type=int, default=3, help="rounds; figures are medians (default 3)")
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="pairs a round for the cheap unchanged re-runs (sync, archive, job), whose differences are "
        "sub-second and need more samples than the rounds give (default 5)",
    )
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--out", default=str(HERE / "results"), help="directory for the JSON and markdown reports")
    p.add_argument("--workdir", default=None, help="parent of the temporary directory (default: system temp)")
    p.add_argument(
        "--startup-samples",
        type=int,
        default=2,
        help="start-up samples taken before the rounds (one more is taken in every round)",
    )
    p.add_argument("--dedup-days", type=int, default=14)
    p.add_argument("--dedup-per-day", type=int, default=6)
    p.add_argument("--dedup-size", default="50M")
    p.add_argument("--dedup-files", type=int, default=2000)
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["dedup", "job", "files-cache", "changed", "site"],
        help="leave a part out (repeatable): dedup; job (the backup job); files-cache (everything after the "
        "rewriting sync); changed (the 1%%-changed phase); site (site.yml on the demo hosts)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="print every timed command")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and demo hosts (debugging)")
    p.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="interpreter for modules (ansible_python_interpreter)",
    )
    p.add_argument("--ansible", default=None, help="the ansible executable (default: beside --python)")
    args = p.parse_args(argv)
    if args.files is None:
        args.files = 100000 if args.variant == "100k" else 20000
    if args.ansible is None:
        args.ansible = str(Path(args.python).parent / "ansible")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv=None) -> int:  # noqa: PLR0912, PLR0915 - the benchmark script, step by step, as the README tells it
    args = parse_args(argv)
    global VERBOSE  # noqa: PLW0603 - one switch for the whole script
    VERBOSE = args.verbose
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    for tool in ("borg", "rsync"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not on PATH", file=sys.stderr)
            return 2
    if not Path(args.ansible).exists():
        print(f"bench: {args.ansible} not found (run `make deps`)", file=sys.stderr)
        return 2

    # SIGTERM (a CI timeout, kill) must still run the clean-up below.
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="grus-bench-", dir=args.workdir))
    os.chmod(work, 0o700)
    bench = Bench(args, work)
    comps = {
        c.key: c
        for c in [
            Comparison("archive_first", "borg_archive present, first run", "borg_archive", "borg create"),
            Comparison("archive_unchanged", "borg_archive present, unchanged re-run", "borg_archive", "borg create"),
            Comparison("archive_changed", "borg_archive present, 1% changed", "borg_archive", "borg create"),
            Comparison("job_first", "backup job, first run", "backup job", "borg create", startup=None),
            Comparison("job_unchanged", "backup job, unchanged re-run", "backup job", "borg create", startup=None),
            Comparison("job_changed", "backup job, 1% changed", "backup job", "borg create", startup=None),
            Comparison(
                "job_metrics_first",
                "backup job with metrics and pings, first run",
                "job + metrics + pings",
                "backup job",
                startup=None,
            ),
            Comparison(
                "job_metrics_unchanged",
                "backup job with metrics and pings, unchanged re-run",
                "job + metrics + pings",
                "backup job",
                startup=None,
            ),
            Comparison(
                "job_after_resync",
                "backup job after a rewriting no-op sync vs borg unchanged re-run",
                "backup job",
                "borg create (unchanged)",
                startup=None,
            ),
            Comparison(
                "fc_default_after_resync",
                "borg create, default files cache (ctime,size,inode), after the rewriting sync vs unchanged re-run",
                "borg create after the sync",
                "borg create (unchanged)",
                startup=None,
            ),
            Comparison(
                "fc_ctime_after_resync",
                "borg create --files-cache=ctime,size after the rewriting sync vs unchanged re-run",
                "borg create after the sync",
                "borg create (unchanged)",
                startup=None,
            ),
            Comparison(
                "fc_mtime_after_resync",
                "borg create --files-cache=mtime,size after the rewriting sync vs unchanged re-run",
                "borg create after the sync",
                "borg create (unchanged)",
                startup=None,
            ),
            Comparison("sync_first", "nfs_sync, first sync", "nfs_sync", "rsync -aHAX --delete"),
            Comparison("sync_unchanged", "nfs_sync, unchanged", "nfs_sync", "rsync -aHAX --delete"),
            Comparison("sync_changed", "nfs_sync, 1% changed", "nfs_sync", "rsync -aHAX --delete"),
            Comparison(
                "sched_sync_first",
                "scheduled sync, first sync",
                "nfs-sync job",
                "rsync -aHAX --delete",
                startup="python",
            ),
            Comparison(
                "sched_sync_unchanged",
                "scheduled sync, unchanged",
                "nfs-sync job",
                "rsync -aHAX --delete",
                startup="python",
            ),
            Comparison(
                "sched_sync_changed",
                "scheduled sync, 1% changed",
                "nfs-sync job",
                "rsync -aHAX --delete",
                startup="python",
            ),
            Comparison("extract", "borg_archive extracted", "borg_archive", "borg extract"),
        ]
    }
    report = {"started": started.isoformat(), "runs": args.runs, "repeat": args.repeat, "notes": []}
    status = 0
    try:
        size = dataset.parse_size(args.size)
        log(f"generating the data set: {size / dataset.MIB:.0f} MiB, {args.files} small files (seed {args.seed})")
        t0 = time.perf_counter()
        info = dataset.generate(bench.data, size, args.files, seed=args.seed)
        report["dataset"] = dict(info.as_dict(), generated_in_s=round(time.perf_counter() - t0, 1))
        report["dataset"].pop("root")
        report["versions"] = tool_versions(bench)
        report["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
        if (ROOT / "plugins" / "module_utils" / "_rsync.py").exists():
            bench.jobs = JobPackage(work)
        log("start-up costs (ansible.builtin.ping; grus-nfs-sync --help)")
        if args.startup_samples:
            bench.module("ansible.builtin.ping", {})  # warm the byte-code caches once, untimed
            sample_startups(bench, args.startup_samples)
        job = Job(bench)
        if not job.available:
            for key in ("job_first", "job_unchanged", "job_changed", "job_after_resync"):
                comps[key].notes.append(job.reason)
        else:
            report["job"] = {"how": job.how, "files_cache": job.files_cache, "files_cache_from": job.files_cache_source}
        report["rounds"] = run_rounds(bench, args.runs, comps, job, log)
        if "dedup" not in args.skip:
            log("dedup")
            report["dedup"] = run_dedup(
                bench, args.dedup_days, args.dedup_per_day, dataset.parse_size(args.dedup_size), args.dedup_files, log
            )
        report["site"] = (
            run_site(bench, log) if "site" not in args.skip else {"measured": False, "reason": "left out (--skip site)"}
        )
        if report["site"].get("error"):
            print(f"bench: site.yml could not be measured: {report['site']['error'][-2000:]}", file=sys.stderr)
            status = 1
    except (MeasurementError, Unavailable) as exc:
        report["error"] = str(exc)
        print(f"bench: measurement broke: {exc}", file=sys.stderr)
        status = 1
    except (KeyboardInterrupt, SystemExit) as exc:  # interrupted: report what was measured so far
        report["error"] = f"interrupted ({type(exc).__name__} {getattr(exc, 'code', '')})".strip()
        print(f"bench: {report['error']}", file=sys.stderr)
        status = 130
    except Exception as exc:  # the report must still be written for what was measured
        report["error"] = "".join(traceback.format_exception(exc))
        print(report["error"], file=sys.stderr)
        status = 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench: kept {work}")

    if bench.startup_samples:
        report["startup"] = summarise(bench.startup_samples)
    if bench.job_startup_samples:
        report["job_startup"] = summarise(bench.job_startup_samples)
    startups = {
        "ansible": report.get("startup", {}).get("median_s"),
        "python": report.get("job_startup", {}).get("median_s"),
    }
    report["comparisons"] = [c.as_dict(startups) for c in comps.values()]
    by_key = {c["key"]: c for c in report["comparisons"]}
    report["targets"] = [t.judge(by_key[t.key]) for t in TARGETS]
    report["finished"] = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report.setdefault("dataset", {"size_bytes": 0, "files": 0, "small_files": args.files, "seed": args.seed})
    report.setdefault("startup", {"median_s": None, "peak_rss_mb": None})
    report["exit_status"] = status
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = markdown(report)
    for name in (f"bench-{stamp}", "latest"):
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / f"{name}.md").write_text(text)
    print()
    print(text)
    for t in report["targets"]:
        extra = f" (net of start-up: {t['net_verdict']} {t['net_value']})" if "net_verdict" in t else ""
        print(f"{t['verdict']:4}  {t['target']}: {t.get('value', '-')}{extra}; interval {ci_text(t)}")
    print(f"\nreport: {out_dir / f'bench-{stamp}.json'} and .md")
    return status


if __name__ == "__main__":
    sys.exit(main())
