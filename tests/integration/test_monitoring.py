"""Metrics and pings of the real jobs: real borg and rsync, the files promtool reads, a ping server on 127.0.0.1.

Every job's real output (sync, backup and prune, check, verify-data, the failed-unit record) passes
``promtool check metrics``; the numbers are the run's; a failed run keeps the last success time; the
dead man's switch gets start, success and fail, and a dead ping server never fails a job.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import passphrase_file, write_export

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / ".build" / "collections"
PKG = "ansible_collections.grus.backup.plugins.module_utils"
PASSPHRASE = "monitoring-passphrase-not-secret-0042"  # noqa: S105 - a throw-away test value
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: make host-deps installs prometheus")


def samples(path: Path) -> dict:
    """``{'name{labels}': value}`` of a textfile."""
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def job(got: dict, name: str, task: str) -> float:
    """The job sample ``name`` of ``task`` (whatever its repository label)."""
    (value,) = [v for k, v in got.items() if k.startswith(name + "{") and f'task="{task}"' in k]
    return value


def promtool_ok(path: Path) -> None:
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=path.read_text(), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Pings(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        Pings.seen.append((self.path, self.rfile.read(length).decode()))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *_args):
        pass


@pytest.fixture
def ping_server():
    Pings.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/check-uuid", Pings.seen
    server.shutdown()


@pytest.fixture
def setup(tmp_path):
    export = write_export(
        tmp_path / "export", [("antigone/data/a.txt", "alpha"), ("balearica/app/b.bin", "beta" * 1000)]
    )
    secret = passphrase_file(tmp_path, PASSPHRASE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(
        BORG_PASSCOMMAND=f"cat {secret}", BORG_BASE_DIR=str(tmp_path / "base"), BORG_KEYS_DIR=str(tmp_path / "k")
    )
    repo = tmp_path / "repo"
    subprocess.run(["borg", "init", "--encryption", "keyfile-blake2", str(repo)], env=env, check=True)
    cfg = {
        "repo": str(repo),
        "paths": [str(export)],
        "passcommand": f"cat {secret}",
        "base_dir": str(tmp_path / "base"),
        "keys_dir": str(tmp_path / "k"),
        "lock_wait": 5,
        "markers": [{"path": str(export / "balearica" / ".grus-sync.json"), "max_age_minutes": 60}],
        "state_dir": str(tmp_path / "state"),
    }
    config = tmp_path / "backup.json"
    config.write_text(json.dumps(cfg))
    metrics = tmp_path / "textfile"
    metrics.mkdir()

    def run(module, *args, extra_env=None):
        run_env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "GRUS_"))}
        run_env.update(PYTHONPATH=str(COLLECTIONS), **(extra_env or {}))
        return subprocess.run(
            [sys.executable, "-m", f"{PKG}.{module}", *args, "--metrics-dir", str(metrics)],
            env=run_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    def backup(*args, extra_env=None):
        return run("_backup_job", "--config", str(config), *args, extra_env=extra_env)

    return {"run": run, "backup": backup, "metrics": metrics, "export": export, "repo": repo, "tmp": tmp_path}


def test_backup_check_and_verify_write_true_metrics_promtool_accepts(setup):
    proc = setup["backup"]()
    assert proc.returncode == 1, proc.stderr  # the marker is missing: a warning
    path = setup["metrics"] / "grus_backup_backup.prom"
    promtool_ok(path)
    got = samples(path)
    where = f'prefix="grus-",repository="{setup["repo"]}"'
    assert job(got, "grus_backup_job_exit_status", "backup") == 1
    assert job(got, "grus_backup_job_warnings", "backup") == 1
    assert got[f"grus_backup_archive_files{{{where}}}"] == 2
    assert 4005 <= got[f"grus_backup_archive_original_bytes{{{where}}}"] < 8000  # files plus directory entries
    assert got[f"grus_backup_archives{{{where}}}"] == 1
    assert got[f"grus_backup_prune_held{{{where}}}"] == 0
    assert got[f"grus_backup_prune_deleted_archives{{{where}}}"] == 0
    assert got['grus_backup_volume_bytes{client="balearica",volume="app"}'] == 4000
    assert got['grus_backup_volume_files{client="antigone",volume="data"}'] == 1
    assert got['grus_backup_sync_marker_state{client="balearica",state="unreadable"}'] == 1
    first_success = job(got, "grus_backup_job_last_success_timestamp_seconds", "backup")
    assert abs(first_success - time.time()) < 60
    assert "grus-2020" not in path.read_text()  # no archive name as a label

    # An old archive (no prune), then a run that prunes it (14 days' retention): deleted and count say so.
    assert setup["backup"]("--timestamp", "2020-01-01T00:00:00", "--no-prune").returncode == 1
    assert f"grus_backup_archives{{{where}}}" not in samples(path)  # not pruned: the count is not known
    assert setup["backup"]().returncode == 1
    got = samples(path)
    assert got[f"grus_backup_prune_deleted_archives{{{where}}}"] == 1
    assert got[f"grus_backup_archives{{{where}}}"] == 2

    for flag, task in (("--check", "check"), ("--verify-data", "verify_data")):
        proc = setup["backup"](flag)
        assert proc.returncode == 0, proc.stderr
        task_file = setup["metrics"] / f"grus_backup_{task}.prom"
        promtool_ok(task_file)
        assert job(samples(task_file), "grus_backup_job_exit_status", task) == 0

    # The repository goes away: the run fails (2), the last success time stays.
    before = job(samples(path), "grus_backup_job_last_success_timestamp_seconds", "backup")
    setup["repo"].rename(setup["tmp"] / "repo-gone")
    proc = setup["backup"]()
    assert proc.returncode == 2
    promtool_ok(path)
    got = samples(path)
    assert job(got, "grus_backup_job_exit_status", "backup") == 2
    assert job(got, "grus_backup_job_last_success_timestamp_seconds", "backup") == before
    assert job(got, "grus_backup_job_last_end_timestamp_seconds", "backup") > before
    check = setup["backup"]("--check")
    assert check.returncode == 2
    assert job(samples(setup["metrics"] / "grus_backup_check.prom"), "grus_backup_job_exit_status", "check") == 2
    assert PASSPHRASE not in "".join(p.read_text() for p in setup["metrics"].iterdir())


def test_sync_and_failed_unit_metrics(setup):
    src = setup["tmp"] / "src"
    (src / "www").mkdir(parents=True)
    (src / "www" / "index.html").write_text("hello")
    (src / "db").mkdir()
    (src / "db" / "data.sql").write_text("x" * 100)
    dest = setup["tmp"] / "copy" / "balearica"
    dest.mkdir(parents=True)
    (dest / "db").mkdir()
    (dest / "db" / "stale.sql").write_text("old")
    sync_cfg = setup["tmp"] / "nfs-sync.json"
    sync_cfg.write_text(json.dumps({"src": str(src), "dest": str(dest), "lock": str(setup["tmp"] / "sync.lock")}))
    proc = setup["run"]("_rsync", "--config", str(sync_cfg))
    assert proc.returncode == 0, proc.stderr
    path = setup["metrics"] / "grus_backup_sync.prom"
    promtool_ok(path)
    got = samples(path)
    assert got['grus_backup_sync_files_transferred{client="balearica"}'] == 2
    assert got['grus_backup_sync_deleted_files{client="balearica"}'] == 1
    assert got['grus_backup_sync_volumes{client="balearica"}'] == 2
    assert job(got, "grus_backup_job_exit_status", "sync") == 0

    # The alert unit's record of a failed unit.
    proc = setup["run"]("_metrics", "--unit-failed", "grus-nfs-sync.service")
    assert proc.returncode == 0, proc.stderr
    assert "grus-nfs-sync.service FAILED" in proc.stderr
    failed = setup["metrics"] / "grus_backup_unit_failed_grus-nfs-sync.service.prom"
    promtool_ok(failed)
    assert samples(failed)['grus_backup_unit_failed{unit="grus-nfs-sync.service"}'] == 1


def test_pings_start_success_fail_and_a_dead_server_never_fails_the_job(setup, ping_server):
    url, seen = ping_server
    assert setup["backup"]("--no-prune", extra_env={"GRUS_BACKUP_PING_URL": url}).returncode == 1
    assert [p for p, _body in seen] == ["/ping/check-uuid/start", "/ping/check-uuid/fail"]  # 1: warnings
    seen.clear()
    assert setup["backup"]("--check", extra_env={"GRUS_BACKUP_PING_URL": url}).returncode == 0
    assert [p for p, _body in seen] == ["/ping/check-uuid/start", "/ping/check-uuid"]
    assert seen[1][1].startswith("exit status 0")

    # Nobody listens: the check still succeeds, in about the ping timeout at most, and says so without the URL.
    dead = "http://127.0.0.1:9/never"
    started = time.monotonic()
    proc = setup["backup"]("--check", extra_env={"GRUS_BACKUP_PING_URL": dead})
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30
    assert "ping failed" in proc.stderr and "/never" not in proc.stderr + proc.stdout
    assert job(samples(setup["metrics"] / "grus_backup_check.prom"), "grus_backup_job_exit_status", "check") == 0


def test_repository_host_metrics_tell_a_good_run_a_mass_deletion_and_tampered_keys(tmp_path, sshd):
    """The compaction job's metrics (no key): sizes and guards after a normal run, the audit's hold after a
    mass ``borg delete`` from the key holder's key, and authorized_keys tampered with."""
    from test_compaction import Client, make_host, run_job, simulate

    host = make_host(tmp_path)
    client = Client(tmp_path, sshd, host)
    metrics = tmp_path / "textfile"
    metrics.mkdir()
    try:
        client.borg("init", "--encryption", "none", client.url)
        simulate(client, tmp_path / "src", days=2, per_day=3)
        extra = ("--metrics-dir", str(metrics), "--min-deleted-objects", "5")
        normal = run_job(host, *extra)
        assert normal.returncode == 0, normal.stderr
        (path,) = metrics.glob("grus_backup_compaction_*.prom")
        promtool_ok(path)
        got = samples(path)
        where = f'{{repository="{host.repo}"}}'
        assert got["grus_backup_authorized_keys_ok"] == 1
        assert got[f"grus_backup_compaction_held{where}"] == 0
        assert got[f"grus_backup_repository_mass_deletion{where}"] == 0
        assert got[f"grus_backup_repository_size_bytes{where}"] > 0
        assert got[f"grus_backup_repository_free_bytes{where}"] > 0
        assert abs(got[f"grus_backup_repository_last_write_timestamp_seconds{where}"] - time.time()) < 600
        assert job(got, "grus_backup_job_exit_status", "compaction") == 0

        client.borg("delete", "--glob-archives", "*", client.url)  # the stolen key
        held = run_job(host, *extra)
        assert held.returncode == 2
        got = samples(path)
        assert got[f"grus_backup_repository_mass_deletion{where}"] == 1
        assert got[f"grus_backup_compaction_held{where}"] == 1
        assert got[f"grus_backup_repository_deleted_objects_since_compaction{where}"] >= 5
        assert job(got, "grus_backup_job_exit_status", "compaction") == 2

        host.keys.write_text(
            host.keys.read_text() + "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIntruderKeyNotReal intruder\n"
        )
        tampered = run_job(host, *extra)
        assert tampered.returncode == 2
        promtool_ok(path)
        assert samples(path)["grus_backup_authorized_keys_ok"] == 0
    finally:
        sshd.authorize("")
