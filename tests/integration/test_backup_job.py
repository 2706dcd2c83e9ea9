"""The key holder's backup run against a real borg repository (append-only, keyfile, passcommand)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import job_config, passphrase_file, run_job, write_export

PASSPHRASE = "integration-passphrase-not-secret-0042"  # noqa: S105 - a throw-away test value


def borg(env, *args, check=True):
    return subprocess.run(["borg", *args], env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def job(tmp_path):
    """An export with two hosts' volumes and a logs volume, an append-only repository, a config."""
    export = write_export(
        tmp_path / "export",
        [
            ("antigone/data/a.txt", "alpha"),
            ("balearica/app/b.bin", "beta" * 1000),
            ("balearica/connection-logs/huge.log", "log line\n" * 100),
            ("antigone/connection-logs/x.log", "log"),
        ],
    )
    secret = passphrase_file(tmp_path, PASSPHRASE)
    env = dict(os.environ)
    env.update(
        BORG_PASSCOMMAND=f"cat {secret}",
        BORG_BASE_DIR=str(tmp_path / "borgbase"),
        BORG_KEYS_DIR=str(tmp_path / "keys"),
    )
    env.pop("BORG_PASSPHRASE", None)
    repo = tmp_path / "repo"
    borg(env, "init", "--encryption", "keyfile-blake2", "--append-only", str(repo))
    cfg = job_config(
        tmp_path,
        str(repo),
        export,
        secret,
        exclude=[f"sh:{export}/*/connection-logs"],
        sources=[{"path": str(export / "antigone" / "data")}, {"path": str(export / "balearica")}],
        markers=[{"path": str(export / "balearica" / ".grus-sync.json"), "max_age_minutes": 60}],
        max_deletions=3,
        state_dir=str(tmp_path / "state"),
    )
    config_path = tmp_path / "backup.json"
    config_path.write_text(json.dumps(cfg))

    def run(*extra):
        return run_job(config_path, "--json", *extra)

    return {"run": run, "env": env, "repo": str(repo), "export": export, "cfg": cfg, "path": config_path}


def archives(job):
    out = borg(job["env"], "list", "--json", job["repo"]).stdout
    return [a["name"] for a in json.loads(out)["archives"]]


def test_one_archive_without_logs_and_marker_warning(job):
    proc = job["run"]()
    report = json.loads(proc.stdout)
    # no marker yet: a warning (exit 1), but the archive is made
    assert proc.returncode == 1, proc.stderr
    assert "marker" in report["warnings"][0]
    assert archives(job) == [report["archive"]["name"]]
    listing = borg(job["env"], "list", "--short", f"{job['repo']}::{report['archive']['name']}").stdout
    paths = listing.split()
    export = str(job["export"]).lstrip("/")
    assert f"{export}/antigone/data/a.txt" in paths
    assert f"{export}/balearica/app/b.bin" in paths
    assert not [p for p in paths if "connection-logs" in p]
    assert PASSPHRASE not in proc.stdout + proc.stderr


def test_fresh_marker_is_ok(job):
    marker = job["export"] / "balearica" / ".grus-sync.json"
    marker.write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    proc = job["run"]()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["warnings"] == [] and report["errors"] == [] and report["exit_status"] == 0
    # the archive is in the repository, and this run's own prune kept it and deleted nothing
    name = report["archive"]["name"]
    assert archives(job) == [name] and report["kept"] == [name] and report["pruned"] == []
    (seen,) = report["markers"]
    assert seen["path"] == str(marker) and seen["state"] == "done" and seen["stale"] is False
    assert 0 <= seen["age_minutes"] < 5 and abs(seen["clock_skew_seconds"]) <= 2


def test_retention_prunes_old_keeps_recent_and_guard_refuses(job):
    for day in ("2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"):
        assert job["run"]("--timestamp", f"{day}T00:00:00", "--no-prune").returncode in (0, 1)
    assert len(archives(job)) == 4
    # four archives older than 14 days, max_deletions 3: refused, nothing pruned, but the archive is made
    proc = job["run"]()
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and "max_deletions" in report["errors"][0]
    assert len(archives(job)) == 5
    proc = job["run"]("--max-deletions", "4")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr  # marker warning only
    assert sorted(report["pruned"]) == [f"grus-2020-01-0{d}T00:00:00Z" for d in (1, 2, 3, 4)]
    left = archives(job)
    assert len(left) == 2 and not [n for n in left if n.startswith("grus-2020")]


def test_clock_in_the_past_makes_the_archive_but_refuses_to_prune(job):
    assert job["run"]("--timestamp", "2020-01-01T00:00:00", "--no-prune").returncode in (0, 1)
    # An archive written while this host's clock was ahead (the job refuses a --timestamp in the future
    # itself, so raw borg makes it): the clock has since gone back.
    future = "grus-2099-01-01T00:00:00Z"
    borg(job["env"], "create", "--timestamp", "2099-01-01T00:00:00", f"{job['repo']}::{future}", str(job["export"]))
    proc = job["run"]()
    report = json.loads(proc.stdout)
    assert proc.returncode == 2
    assert "clock" in report["errors"][0] and "2099-01-01" in report["errors"][0]
    # the backup is still taken; the 2020 archive, due for pruning, is kept: nothing pruned
    assert report["archive"]["name"] in archives(job) and report["pruned"] == []
    assert "grus-2020-01-01T00:00:00Z" in archives(job) and len(archives(job)) == 3


def test_clock_skew_with_a_sync_client_holds_the_prune(job):
    """This host's clock 2 h ahead of the sync client's: too small a jump for max_deletions to notice
    (one archive due), caught by the client's marker, whose time is 2 h behind the moment it landed."""
    assert job["run"]("--timestamp", "2020-01-01T00:00:00", "--no-prune").returncode in (0, 1)
    marker = job["export"] / "balearica" / ".grus-sync.json"
    client_clock = time.time() - 7200
    marker.write_text(
        json.dumps({"state": "done", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(client_clock))})
    )
    proc = job["run"]()
    report = json.loads(proc.stdout)
    assert proc.returncode == 2, proc.stderr
    assert "disagreed by +720" in report["errors"][0] and "NTP" in report["errors"][0], report
    assert report["archive"]["name"] in archives(job) and report["pruned"] == []
    assert "grus-2020-01-01T00:00:00Z" in archives(job)  # due, within max_deletions, and still kept
    # the clocks agree again (the next sync's marker): the prune runs
    marker.write_text(json.dumps({"state": "done", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    time.sleep(1.1)  # archive names carry the second
    proc = job["run"]()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["pruned"] == ["grus-2020-01-01T00:00:00Z"]


def test_guard_stops_before_borg(job):
    for child in (job["export"] / "antigone" / "data").iterdir():
        child.unlink()
    proc = job["run"]()
    assert proc.returncode == 2
    assert "empty" in json.loads(proc.stdout)["errors"][0]
    assert archives(job) == []


def test_wrong_passcommand_is_an_error_without_secret(job, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase")
    cfg = dict(job["cfg"], passcommand=f"cat {wrong}")
    job["path"].write_text(json.dumps(cfg))
    proc = job["run"]()
    assert proc.returncode == 2
    assert "passphrase" in json.loads(proc.stdout)["errors"][0]
    assert PASSPHRASE not in proc.stdout + proc.stderr


def test_a_wiped_volume_holds_every_prune_until_released(job):
    """A compromised sync client wipes its copy (rsync --delete of an empty tree): the run still archives
    the wiped state, but the 2020 archive, due for pruning, outlives it until an operator releases the hold."""
    assert job["run"]("--timestamp", "2020-01-01T00:00:00", "--no-prune").returncode in (0, 1)
    wiped = job["export"] / "balearica" / "app"
    (job["export"] / "empty").mkdir()
    subprocess.run(["rsync", "-a", "--delete", f"{job['export'] / 'empty'}/", f"{wiped}/"], check=True)
    (job["export"] / "empty").rmdir()
    assert list(wiped.iterdir()) == []
    for _run in range(2):  # the hold stays from one run to the next
        proc = job["run"]()
        report = json.loads(proc.stdout)
        assert proc.returncode == 1, proc.stderr
        assert report["errors"] == [] and report["pruned"] == []
        assert report["archive"]["name"] in archives(job)
        files, size = report["prune_hold"]["reasons"]  # the second run adds none: its baseline is the wiped state
        assert files.endswith(f"volume {wiped} lost 100% of its files (1 -> 0; limit 50%)")
        assert size.endswith(f"volume {wiped} lost 100% of its bytes (4000 -> 0; limit 50%)")
        assert any(w.startswith("prune held: ") and "--release-hold" in w for w in report["warnings"])
        assert "grus-2020-01-01T00:00:00Z" in archives(job)
    hold_file = Path(job["cfg"]["state_dir"]) / "prune-hold.json"
    assert json.loads(hold_file.read_text())["reasons"] == report["prune_hold"]["reasons"]
    released = job["run"]("--release-hold")
    assert released.returncode == 0 and "released the prune hold" in released.stdout
    assert not hold_file.exists()
    assert len(archives(job)) == 3  # releasing deletes nothing by itself
    proc = job["run"]()
    report = json.loads(proc.stdout)
    assert report["prune_hold"] is None and report["pruned"] == ["grus-2020-01-01T00:00:00Z"]
    assert "grus-2020-01-01T00:00:00Z" not in archives(job)


def test_a_mass_rewrite_holds_the_prune(job):
    """Every byte of a volume rewritten (as ransomware encryption does): most of the archive is new data."""
    big = job["export"] / "antigone" / "data" / "big.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    assert job["run"]("--timestamp", "2020-01-01T00:00:00", "--no-prune").returncode in (0, 1)
    proc = job["run"]()
    assert json.loads(proc.stdout)["prune_hold"] is None  # unchanged data: no sign, and the 2020 archive goes
    assert "grus-2020-01-01T00:00:00Z" not in archives(job)
    assert job["run"]("--timestamp", "2020-01-02T00:00:00", "--no-prune").returncode in (0, 1)
    big.write_bytes(os.urandom(20 * 1024 * 1024))  # same name, same size, new content
    proc = job["run"]()
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["pruned"] == []
    (reason,) = report["prune_hold"]["reasons"]
    assert "of the archive" in reason and "is new data (limit 50%)" in reason
    assert "grus-2020-01-02T00:00:00Z" in archives(job)
