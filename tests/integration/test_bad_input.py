"""Issue 16 item 7: bad input that used to pass silently (or fail unclearly), against real borg, rsync,
ssh and Ansible. Every refusal names the problem and leaves everything as it was: repositories
byte-identical (and their archives listed), synced copies unchanged.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import run_role_tasks
from helpers import borg_cli, run_job, snapshot, ssh_repo

HOST_KEY_TEXT = "host key verification failed (possible man-in-the-middle, or the repository host was reinstalled)"


class World:
    """A source, a keyfile repository holding two jobs' archives, borg's home, the passphrase."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.passphrase = "grus-bad-input-" + secrets.token_hex(12)
        self.home = tmp_path / "borg-home"
        self.home.mkdir()
        self.src = tmp_path / "src"
        (self.src / "data").mkdir(parents=True)
        (self.src / "data" / "a.txt").write_text("alpha\n")
        self.repo = tmp_path / "repo"
        self.borg(["init", "--encryption", "keyfile-blake2", str(self.repo)])

    def borg(self, args, **kwargs):
        return borg_cli(args, self.passphrase, self.home, **kwargs)

    def create(self, name, timestamp):
        self.borg(["create", "--timestamp", timestamp, f"{self.repo}::{name}", str(self.src)])

    def names(self, repo=None, rsh=None) -> list:
        out = self.borg(["list", "--json", str(repo or self.repo)], rsh=rsh).stdout
        return [a["name"] for a in json.loads(out)["archives"]]

    def args(self, **kwargs) -> dict:
        return dict({"repo": str(self.repo), "passphrase": self.passphrase, "base_dir": str(self.home)}, **kwargs)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def assert_refused(result, fragment, cause="invalid_input"):
    assert result.failed, result.result
    assert result.result.get("cause") == cause, result.result
    assert fragment in result.result["msg"], result.result["msg"]


# ---- 1: state=pruned without match_archives ------------------------------------------------------


def test_prune_without_match_archives_is_refused_and_every_jobs_archives_stay(run_module, world):
    for day in (1, 2, 3):
        world.create(f"antigone-{day}", f"2020-01-0{day}T04:00:00")
        world.create(f"balearica-{day}", f"2020-01-0{day}T05:00:00")
    before, names = snapshot(world.repo), world.names()
    for check in (True, False):
        result = run_module("borg_archive", world.args(state="pruned", keep_last=1), check=check)
        assert_refused(result, "state=pruned needs match_archives")
        assert str(world.repo) in result.result["msg"]
    assert snapshot(world.repo) == before and world.names() == names
    # the explicit opt-in: one retention over every prefix (check mode: nothing deleted)
    everything = run_module(
        "borg_archive", world.args(state="pruned", keep_last=1, match_archives="*", max_deletions=10), check=True
    )
    assert not everything.failed and len(everything.result["pruned"]) == 5
    assert snapshot(world.repo) == before


# ---- 2, 3, 4, 5, 6: the borg modules' options ----------------------------------------------------


def test_bad_borg_module_input_is_refused_and_the_repository_is_byte_identical(run_module, world, monkeypatch):
    world.create("nightly", "2020-01-01T04:00:00")
    before = snapshot(world.repo)
    future = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: UP017
    source = [str(world.src)]
    # An operator shell that sourced borg.env: BORG_REPO names the real repository.
    monkeypatch.setenv("BORG_REPO", str(world.repo))
    monkeypatch.setenv("BORG_PASSPHRASE", world.passphrase)
    cases = [
        ("borg_archive", {"repo": "", "name": "stray", "paths": source}, "repo is empty"),
        ("borg_archive", {"repo": "", "state": "pruned", "keep_last": 1, "match_archives": "*"}, "repo is empty"),
        ("borg_repo", {"repo": ""}, "repo is empty"),
        ("borg_archive", {"name": "", "paths": source}, "name is empty"),
        ("borg_archive", {"name": "", "state": "absent"}, "name is empty"),
        ("borg_archive", {"name": "ahead", "paths": source, "timestamp": future}, "lies in the future"),
        ("borg_archive", {"name": "n", "paths": source, "lock_wait": -1}, "lock_wait=-1 is negative"),
        ("borg_repo", {"lock_wait": -3}, "lock_wait=-3 is negative"),
        ("borg_archive", {"name": "nightly", "state": "listed", "max_files": -1}, "max_files=-1 is negative"),
        ("borg_archive", {"name": "n", "paths": source, "compression": "zstd,23"}, "invalid compression"),
        ("borg_archive", {"name": "n", "paths": source, "compression": "gzip"}, "unknown algorithm 'gzip'"),
        ("borg_archive", {"name": "n", "paths": source, "files_cache": "ctime,inode"}, "invalid files_cache"),
        (
            "borg_archive",
            {"state": "pruned", "keep_within": "0d", "match_archives": "nightly"},
            "keep_within='0d' is a zero interval",
        ),
    ]
    for module, extra, fragment in cases:
        result = run_module(module, world.args(**extra))
        assert_refused(result, fragment)
        assert world.passphrase not in json.dumps(result.result)
    assert snapshot(world.repo) == before
    assert world.names() == ["nightly"]


# ---- 4, 5, 6: the scheduled backup job -------------------------------------------------------------


def run_configured_job(config: dict, path: Path, *extra):
    path.write_text(json.dumps(config))
    return run_job(path, *extra, timeout=120)


def test_job_refuses_a_future_timestamp_and_bad_configuration(world, tmp_path):
    secret = tmp_path / "passphrase"
    secret.write_text(world.passphrase)
    secret.chmod(0o600)
    world.create("grus-2020-01-01T04:00:00Z", "2020-01-01T04:00:00")
    before = snapshot(world.repo)
    cfg = {
        "repo": str(world.repo),
        "paths": [str(world.src)],
        "passcommand": f"cat {secret}",
        "base_dir": str(world.home),
    }
    future = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: UP017
    proc = run_configured_job(cfg, tmp_path / "backup.json", "--timestamp", future)
    assert proc.returncode == 2
    assert f"FAILED (usage): --timestamp: timestamp '{future}' lies in the future" in proc.stderr
    for extra, fragment in [
        ({"repo": " "}, "repo is empty"),
        ({"lock_wait": -1}, "lock_wait=-1 is negative"),
        ({"clock_tolerance": -1}, "clock_tolerance=-1 is negative"),
        ({"compression": "zstd,0"}, "invalid compression 'zstd,0'"),
        ({"files_cache": "inode"}, "invalid files_cache 'inode'"),
        ({"retention": {"keep_within": "0H"}}, "keep_within='0H' is a zero interval"),
    ]:
        proc = run_configured_job(dict(cfg, **extra), tmp_path / "backup.json")
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert "FAILED (usage)" in proc.stderr and fragment in proc.stderr, (extra, proc.stderr)
        assert world.passphrase not in proc.stdout + proc.stderr
    assert snapshot(world.repo) == before
    assert world.names() == ["grus-2020-01-01T04:00:00Z"]


# ---- 7, 8: nfs_sync ------------------------------------------------------------------------------


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_nfs_sync_marker_named_like_a_volume_is_refused_and_defaults_guard_a_wipe(run_module, tmp_path):
    src = tmp_path / "volumes"
    for volume in ("www", "state"):
        (src / volume).mkdir(parents=True)
        for n in range(3):
            (src / volume / f"f{n}").write_text(f"{volume} {n}\n")
    dest = tmp_path / "copy"
    args = {"src": str(src), "dest": str(dest), "lock": str(tmp_path / "lock")}
    first = run_module("nfs_sync", args)
    assert not first.failed, first.result
    assert "--max-delete=1000" in first.result["cmd"] and "--timeout=300" in first.result["cmd"]
    before = tree(dest)
    for extra in ({"marker_name": "state"}, {"marker_name": "www", "volumes": ["www"]}):
        for check in (True, False):
            result = run_module("nfs_sync", dict(args, **extra), check=check)
            assert result.failed and result.result["kind"] == "usage", result.result
            assert f"marker_name '{extra['marker_name']}' is also the name of a volume" in result.result["msg"]
            assert tree(dest) == before
    # the default max_delete refuses a source that lost more than 1000 files, before deleting any
    bulk = src / "www" / "bulk"
    bulk.mkdir()
    for n in range(1005):
        (bulk / f"{n}").write_text("")
    assert not run_module("nfs_sync", args).failed
    for path in bulk.iterdir():
        path.unlink()
    before = tree(dest)
    refused = run_module("nfs_sync", args)
    assert refused.failed and refused.result["kind"] == "max_delete", refused.result
    assert "max_delete=1000" in refused.result["msg"]
    assert tree(dest) == before


# ---- 9: a zero retention at deploy ------------------------------------------------------------------


@pytest.mark.parametrize(("retention", "ok"), [("0d", False), ("00H", False), ("0w", False), ("14d", True)])
def test_key_holder_role_refuses_a_zero_retention_at_deploy(tmp_path, retention, ok):
    proc = run_role_tasks(tmp_path, "key_holder", "checks", {"key_holder_retention": retention}, timeout=120)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    if not ok:
        assert f"key_holder_retention={retention} is not a positive interval" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "hidden"),
    [
        ({"key_holder_export_dir": "/home/grus/export"}, "/home/grus/export"),
        ({"key_holder_local_repository": "/root/repo"}, "/root/repo"),
        ({"key_holder_sources": [{"path": "/run/user/0/data"}]}, "/run/user/0/data"),
        ({"key_holder_export_dir": "/srv/homework"}, None),
    ],
)
def test_key_holder_role_refuses_paths_its_hardened_units_cannot_see(tmp_path, extra, hidden):
    defaults = {
        "key_holder_retention": "14d",
        "key_holder_export_dir": "/srv/grus/export",
        "key_holder_local_repository": "/srv/borg-local/repo",
        "key_holder_sources": [],
    }
    proc = run_role_tasks(tmp_path, "key_holder", "checks", {**defaults, **extra}, timeout=120)
    assert (proc.returncode == 0) is (hidden is None), proc.stdout + proc.stderr
    if hidden:
        assert f"{hidden}: under /root, /home or /run/user" in proc.stdout


# ---- 10: a changed repository host key ---------------------------------------------------------------


def test_changed_host_key_is_its_own_cause_and_the_repository_is_unchanged(run_module, world, sshd, tmp_path):
    path = tmp_path / "sarus-repo"
    repo = ssh_repo(sshd, path)
    world.borg(["init", "--encryption", "keyfile-blake2", repo], rsh=sshd.rsh)
    world.borg(["create", f"{repo}::keep", str(world.src)], rsh=sshd.rsh)
    before = snapshot(path)
    # known_hosts pins another key for [127.0.0.1]:port: the host was reinstalled, or someone is in between
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    changed = tmp_path / "known_hosts_changed"
    changed.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    rsh = sshd.rsh.replace(f"UserKnownHostsFile={sshd.known_hosts}", f"UserKnownHostsFile={changed}")
    assert rsh != sshd.rsh
    args = world.args(repo=repo, rsh=rsh)
    for module, extra in [
        ("borg_archive", {"name": "new", "paths": [str(world.src)]}),
        ("borg_archive", {"state": "listed"}),
        ("borg_repo", {}),
    ]:
        result = run_module(module, dict(args, **extra))
        assert result.failed, result.result
        assert result.result["cause"] == "host_key_changed", result.result
        assert result.result["msg"].startswith(HOST_KEY_TEXT), result.result["msg"]
        assert repo in result.result["msg"]
        # ssh's own words; which of its lines borg forwards before the connection closes varies from run to run
        assert re.search(r"Host key|HOST IDENTIFICATION HAS CHANGED", json.dumps(result.result["borg_messages"])), (
            result.result
        )
        assert world.passphrase not in json.dumps(result.result)
    assert snapshot(path) == before
    assert world.names(repo, rsh=sshd.rsh) == ["keep"]
