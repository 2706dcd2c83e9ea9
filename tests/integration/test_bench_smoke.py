"""A small run of the benchmark script (bench/run.py): it must measure every part and
write a sane report. Timings are reported, never asserted: this is not a performance
test, it proves that `make bench` works and what its report contains."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "run.py"

# The parts that need only the modules and the raw tools (the backup job and site.yml
# depend on the roles; they are checked when present).
# The 1 %-changed phase and the files-cache references are left out to stay quick.
ALWAYS_MEASURED = {
    "archive_first",
    "archive_unchanged",
    "sync_first",
    "sync_unchanged",
    "sched_sync_first",
    "sched_sync_unchanged",
    "extract",
    "job_metrics_first",
    "job_metrics_unchanged",
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results"
    work = tmp / "work"
    work.mkdir()
    argv = [
        sys.executable,
        str(BENCH),
        "--size", "3M",
        "--files", "150",
        "--runs", "1",
        "--repeat", "2",
        "--startup-samples", "0",
        "--skip", "files-cache",
        "--skip", "changed",
        "--skip", "site",
        "--dedup-days", "1",
        "--dedup-per-day", "2",
        "--dedup-size", "1M",
        "--dedup-files", "20",
        "--out", str(out),
        "--workdir", str(work),
        "--python", sys.executable,
    ]  # fmt: skip
    env = dict(os.environ)
    for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND"):
        env.pop(name, None)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False, cwd=REPO_ROOT)
    return proc, out, work


def test_bench_exits_zero_and_cleans_up(bench_run):
    proc, _out, work = bench_run
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert list(work.iterdir()) == [], "the benchmark left its temporary directory behind"


def test_bench_report_has_sane_ratios(bench_run):
    proc, out, _work = bench_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "latest.json").read_text())
    assert "error" not in report
    assert report["exit_status"] == 0
    assert report["dataset"]["files"] >= 150
    assert report["dataset"]["size_bytes"] > 2 * 1024 * 1024
    assert report["startup"]["median_s"] > 0
    assert report["job_startup"]["median_s"] > 0
    comps = {c["key"]: c for c in report["comparisons"]}
    for key in ALWAYS_MEASURED:
        comp = comps[key]
        assert comp["measured"], key
        # the cheap unchanged re-runs are measured --repeat times a round, the rest once
        pairs = 2 if key.endswith("unchanged") else 1
        assert len(comp["ours"]["samples_s"]) == len(comp["raw"]["samples_s"]) == pairs, key
        assert comp["ours"]["median_s"] > 0 and comp["raw"]["median_s"] > 0, key
        assert comp["ratio"] == pytest.approx(comp["ours"]["median_s"] / comp["raw"]["median_s"], rel=0.01), key
        assert 0 < comp["ours"]["peak_rss_mb"] < 4096 and 0 < comp["raw"]["peak_rss_mb"] < 4096, key
        # verdicts read the median of the per-pair ratios
        paired = comp["paired"]
        assert paired["pairs"] == pairs, key
        assert paired["ratio"] == pytest.approx(statistics.median(comp["per_pair_ratios"]), abs=0.002), key
        assert paired["ratio_range"][0] <= paired["ratio"] <= paired["ratio_range"][1], key
        # and a confidence interval of that median, within the range (2 pairs: the range, at 50 %)
        assert paired["ratio_range"][0] <= paired["ratio_ci"][0] <= paired["ratio"] <= paired["ratio_ci"][1], key
        assert paired["ratio_ci"][1] <= paired["ratio_range"][1], key
        assert paired["ci_coverage"] == pytest.approx(1 - 2 * 0.5**pairs), key
        if key.endswith("unchanged") and key.startswith("archive"):
            # its 2 pairs ran in both orders: one each
            assert paired["ours_first_pairs"] == 1, key
            assert paired["balanced_ratio"] == pytest.approx(
                (comp["per_pair_ratios"][0] + comp["per_pair_ratios"][1]) / 2, abs=0.002
            ), key
        if key.startswith(("archive", "sync", "extract")):
            # modules: the same figures net of Ansible's start-up, a ping measured right after each call
            assert comp["startup"] == "ansible", key
            assert comp["net_ratio"] == pytest.approx(
                (comp["ours"]["median_s"] - report["startup"]["median_s"]) / comp["raw"]["median_s"], abs=0.01
            ), key
            assert paired["net_ratio"] < paired["ratio"], key
            assert paired["net_diff_s"] < paired["diff_s"], key
    # a no-op sync is reported as such by nfs_sync
    assert not any("reported changed" in n for n in comps["sync_unchanged"]["notes"])
    assert not comps["archive_changed"]["measured"]
    job_measured = comps["job_first"]["measured"]
    assert job_measured or comps["job_first"]["notes"], "an unmeasured backup job must say why"
    targets = {t["comparison"]: t for t in report["targets"]}
    for key in ALWAYS_MEASURED & set(targets):
        target = targets[key]
        assert target["verdict"] in ("PASS", "FAIL"), key
        # resolved exactly when the interval lies on one side of the limit the verdict reads
        low, high = target["ci"]
        assert low <= high and isinstance(target["resolved"], bool), key
        value = target["net_value"] if "start-up" in target["target"] else target["value"]
        assert low <= value <= high, key
    # every module call was followed by its own start-up sample (and no --startup-samples were asked)
    module_calls = sum(len(comps[k]["ours"]["samples_s"]) for k in comps if comps[k].get("startup") == "ansible")
    assert len(report["startup"]["samples_s"]) >= module_calls
    dedup = report["dedup"]
    assert dedup["archives"] == 2
    assert dedup["one_compressed_copy_bytes"] > 0
    # two archives of nearly the same data: deduplicated, far less than two copies
    assert dedup["repository_bytes_on_disk"] < 2 * dedup["one_compressed_copy_bytes"] + 2 * 1024 * 1024


def test_bench_markdown_table(bench_run):
    proc, out, _work = bench_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = (out / "latest.md").read_text()
    assert "| comparison | pairs | ours (s) | raw (s) | ratio (range) | net of start-up (range) |" in text
    assert "| order-balanced ratio / net |" in text
    assert "| target | pairs | value | verdict | confidence interval of the judged median | net of start-up |" in text
    assert "resolved" in text
    assert "borg_archive present, first run" in text
    assert "Dedup:" in text
    # the console shows a verdict per target
    assert any(line.startswith(("PASS", "FAIL")) for line in proc.stdout.splitlines())
