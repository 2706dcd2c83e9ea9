"""Faults and bad input against real borg, ssh and the key holder's scheduled run (issue 7).

Only the cases no other test file proves; docs/reliability.md maps every case of the issue to the
test that proves it. Each case asserts the outcome and that nothing was lost: the archives made
before the fault are still listed, pass ``borg check --verify-data``, and every segment file that
held them is byte-identical afterwards.

Borg runs with the environment and argument lists the project builds (``BorgRepo.env()``,
``borg_argv``), the backup run is the shipped entry point (``python -m ..._backup_job``), and every
wait is bounded. Processes are killed by their own pid only (or the session group we created).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ansible_collections.grus.backup.plugins.module_utils._borg_argv import borg_argv, create_argv, init_argv
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._borg_repo import BorgRepo, list_archives, prune
from ansible_collections.grus.backup.plugins.module_utils._runner import build_env, run
from helpers import run_job, ssh_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "faults-passphrase-not-secret-7731"  # noqa: S105 - a throw-away test value
HOST_ID = "faults-key-holder"
MIB = 1024 * 1024

# ---- helpers ------------------------------------------------------------------------------------


def snapshot(root: Path, under: str = "") -> dict:
    """SHA-256 of every file under ``root`` (or its ``under`` sub-directory), by relative path."""
    state = {}
    base = root / under if under else root
    for dirpath, _dirnames, filenames in os.walk(base):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    state[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return state


def segments(repo_path: Path) -> dict:
    """The repository's data segments (where the archives' chunks live), by path and SHA-256."""
    return snapshot(repo_path, "data")


def data_bytes(repo_path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(repo_path / "data"):
        for name in filenames:
            with contextlib.suppress(OSError):  # a segment the writer just removed
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def wait_for(predicate, timeout: float, what: str, proc=None, alive=None) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` s, or at once if the awaited worker ended."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (rc {proc.returncode})")
        if alive is not None and not alive():
            raise AssertionError(f"{what}: the worker ended first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for _mib in range(size // MIB):
            handle.write(os.urandom(MIB))


def infinite_stream_create(repo: str, name: str) -> list:
    """A ``borg create`` that never finishes by itself: it archives an endless random stream.

    So a fault can be injected while the create is certainly still writing, however fast or
    slow the machine is. ``exec 2>/dev/null``: the stream must not hold our stderr pipe open.
    """
    return borg_argv(
        [
            "create",
            "--compression",
            "lz4",
            "--content-from-command",
            "--stdin-name",
            "stream.bin",
            "--",
            f"{repo}::{name}",
            "sh",
            "-c",
            "exec 2>/dev/null; exec cat /dev/urandom",
        ],
        lock_wait=10,
    )


def marker_text(moment: datetime) -> str:
    return json.dumps({"time": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})


class World:
    """The key holder of one test: an export with two hosts' volumes, its borg home, keys and job config."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.export = tmp_path / "export"
        (self.export / "antigone" / "data").mkdir(parents=True)
        (self.export / "antigone" / "data" / "a.txt").write_text("alpha\n" * 100)
        write_random(self.export / "balearica" / "app" / "b.bin", MIB)
        secret = tmp_path / "passphrase"
        secret.write_text(PASSPHRASE)
        secret.chmod(0o600)
        self.passcommand = f"cat {secret}"
        self.base_dir = tmp_path / "borg-home"
        self.keys_dir = tmp_path / "keys"
        self.config_path = tmp_path / "backup.json"

    def conn(self, repo: str, **kwargs) -> BorgRepo:
        options = {
            "passcommand": self.passcommand,
            "host_id": HOST_ID,
            "keys_dir": str(self.keys_dir),
            "base_dir": str(self.base_dir),
            "lock_wait": 10,
            "timeout": 120,
        }
        options.update(kwargs)
        return BorgRepo(repo=repo, **options)

    def init(self, conn: BorgRepo, append_only: bool = True) -> None:
        conn.run(init_argv(conn.repo, "keyfile-blake2", append_only=append_only, lock_wait=conn.lock_wait))

    def config(self, repo: str, **overrides) -> dict:
        cfg = {
            "repo": repo,
            "paths": [str(self.export)],
            "passcommand": self.passcommand,
            "base_dir": str(self.base_dir),
            "keys_dir": str(self.keys_dir),
            "host_id": HOST_ID,
            "lock_wait": 10,
            "sources": [{"path": str(self.export / "antigone" / "data")}, {"path": str(self.export / "balearica")}],
            "max_deletions": 3,
            "state_dir": str(self.tmp / "state"),
        }
        cfg.update(overrides)
        return cfg

    def job(self, cfg: dict, *extra, config_path: Path | None = None, timeout: int = 120):
        """The scheduled run, as systemd starts it; returns (rc, report, stderr)."""
        path = config_path or self.config_path
        path.write_text(json.dumps(cfg))
        proc = run_job(path, "--json", *extra, timeout=timeout)
        try:
            report = json.loads(proc.stdout)
        except ValueError as exc:
            raise AssertionError(f"no JSON report: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}") from exc
        return proc.returncode, report, proc.stderr

    def seed(self, repo_path: Path, names) -> None:
        """Init ``repo_path`` (append-only) and archive the export as ``names``, locally.

        Borg's home for this is a separate one: the clients under test then reach the same repository
        over SSH with their own cache, as the key holder does; only the key is shared. (Seeding over SSH
        costs several handshakes per archive on a loaded machine.)
        """
        seeder = self.conn(str(repo_path), base_dir=str(self.tmp / "seed-home"))
        self.init(seeder)
        for name in names:
            seeder.run(create_argv(str(repo_path), name, [self.export], lock_wait=seeder.lock_wait), archive=name)

    def names(self, conn: BorgRepo) -> list:
        return [a["name"] for a in list_archives(conn)]

    def verify(self, conn: BorgRepo) -> None:
        """``borg check --verify-data`` (repository, archives, every chunk) must pass."""
        out = conn.run(borg_argv(["check", "--verify-data", "--", conn.repo], lock_wait=conn.lock_wait))
        assert out.rc == 0, out.warnings


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under tmp_path; all unmounted at the end, whatever happened."""
    mounted = []

    def mount(path: Path, size: str = "40m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    def unmount(path: Path) -> None:
        subprocess.run(["umount", str(path)], check=True, timeout=30)
        mounted.remove(path)

    mount.unmount = unmount
    try:
        yield mount
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the session we started for ``proc`` (it and its children only), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)


def kill_my_children_matching(text: str) -> None:
    """SIGKILL this test process's own child processes whose command line contains ``text``."""
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = parent_pid(int(pid))
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and text in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


# ---- crashes ------------------------------------------------------------------------------------


def test_sigkill_mid_create_next_run_succeeds_without_manual_step(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    rc, first, stderr = world.job(world.config(str(repo_path)))
    assert rc == 0, (first, stderr)
    before = segments(repo_path)
    size_before = data_bytes(repo_path)

    # The same borg, environment and host id as the job; killed once 96 MiB are written.
    killed = subprocess.Popen(
        infinite_stream_create(str(repo_path), "killed"),
        env=build_env(conn.env()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: data_bytes(repo_path) > size_before + 96 * MIB, 90, "borg create writing", proc=killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=20)
    finally:
        kill_group(killed)
    assert killed.returncode == -signal.SIGKILL
    # The dead run left its lock behind. The next run removes it only because it runs with the same
    # host id and so can tell that the lock's owner process is dead (a foreign host id's lock is kept).
    assert (repo_path / "lock.exclusive").is_dir()

    rc, report, stderr = world.job(world.config(str(repo_path)))
    assert rc == 0, (report, stderr)
    assert world.names(conn) == [first["archive"]["name"], report["archive"]["name"]]
    assert not (repo_path / "lock.exclusive").exists()
    after = segments(repo_path)
    assert {k: after.get(k) for k in before} == before, "a segment of an earlier archive changed"
    world.verify(conn)


def test_ssh_cut_mid_backup_fails_clearly_and_the_next_run_succeeds(world, sshd):
    repo_path = world.tmp / "sarus-repo"
    repo = ssh_repo(sshd, repo_path)
    pid_file = world.tmp / "serve.pid"
    conn = world.conn(repo, rsh=sshd.rsh)
    world.seed(repo_path, ["seeded"])
    # The repository host's forced command, recording the pid of each borg serve it starts.
    sshd.authorize(
        f'restrict,command="echo $$ > {pid_file}; exec borg serve --append-only --restrict-to-repository {repo_path}"'
    )
    try:
        cfg = world.config(repo, rsh=sshd.rsh)
        assert world.names(conn) == ["seeded"]
        before = segments(repo_path)
        size_before = data_bytes(repo_path)
        pid_file.unlink()

        failure = {}

        def backup():
            try:
                conn.run(infinite_stream_create(repo, "cut"))
            except BorgError as exc:
                failure["error"] = exc

        thread = threading.Thread(target=backup, daemon=True)
        thread.start()
        wait_for(
            lambda: data_bytes(repo_path) > size_before + 16 * MIB,
            90,
            f"borg create over ssh writing ({failure})",
            alive=thread.is_alive,
        )
        serve_pid = int(pid_file.read_text())
        session_pid = parent_pid(serve_pid)
        with open(f"/proc/{session_pid}/comm") as handle:
            assert handle.read().strip().startswith("sshd"), "the parent of borg serve is not our sshd session"
        os.kill(session_pid, signal.SIGKILL)  # the connection is cut
        thread.join(timeout=90)
        assert not thread.is_alive(), "borg did not notice the cut connection"
        # The orphaned borg serve notices too (stdin closed) and releases the repository.
        wait_for(lambda: not os.path.exists(f"/proc/{serve_pid}"), 30, "borg serve ending")

        error = failure.get("error")
        assert error is not None, "the create over a cut connection did not fail"
        assert error.cause == "connection_closed", error.as_dict()
        assert f"connection to repository {repo} closed" in error.message
        assert world.names(conn) == ["seeded"]
        world.verify(conn)

        rc, report, stderr = world.job(cfg)
        assert rc == 0, (report, stderr)
        assert world.names(conn) == ["seeded", report["archive"]["name"]]
        after = segments(repo_path)
        assert {k: after.get(k) for k in before} == before, "a segment of an earlier archive changed"
    finally:
        kill_my_children_matching(f"{repo}::cut")  # only if the test failed before the cut
        sshd.authorize("")


# ---- storage --------------------------------------------------------------------------------------


def test_repository_disk_full_fails_clearly_and_check_passes(world, tmpfs):
    repo_path = tmpfs(world.tmp / "small-disk") / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    cfg = world.config(str(repo_path))
    rc, first, stderr = world.job(cfg)
    assert rc == 0, (first, stderr)
    before = segments(repo_path)

    big = world.export / "balearica" / "app" / "big.bin"
    write_random(big, 64 * MIB)  # more than the 40 MiB disk
    rc, report, stderr = world.job(cfg)
    assert rc == 2, (report, stderr)
    assert report["archive"] is None and report["pruned"] == []
    error = report["errors"][0]
    assert str(repo_path) in error and "No space left on device" in error, error

    assert world.names(conn) == [first["archive"]["name"]]
    world.verify(conn)
    after = segments(repo_path)
    assert {k: after.get(k) for k in before} == before, "a segment of an earlier archive changed"
    # Space is back once the failed transaction is gone; the next run needs no manual step.
    big.unlink()
    rc, report, stderr = world.job(cfg)
    assert rc == 0, (report, stderr)
    assert world.names(conn) == [first["archive"]["name"], report["archive"]["name"]]


def test_corrupted_segment_fails_verify_data_and_is_reported(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    rc, first, stderr = world.job(world.config(str(repo_path)))
    assert rc == 0, (first, stderr)
    world.verify(conn)
    segment = max((p for p in (repo_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    assert segment.stat().st_size > MIB  # the segment holding b.bin's chunks
    with open(segment, "r+b") as handle:
        handle.seek(segment.stat().st_size // 2)
        original = handle.read(16)
        handle.seek(-16, os.SEEK_CUR)
        handle.write(bytes(b ^ 0xFF for b in original))

    # What the key holder's grus-backup-verify.service runs: a non-zero exit is a failed unit (OnFailure).
    argv = borg_argv(["check", "--verify-data", "--", conn.repo], lock_wait=conn.lock_wait)
    raw = run(argv, env=conn.env(), timeout=120)
    assert raw.rc != 0 and not raw.timed_out, raw.stderr
    # Through the project's runner the failure is surfaced, not swallowed.
    try:
        out = conn.run(argv)
    except BorgError as exc:
        reported = [exc.message, *exc.details]
    else:
        assert out.rc != 0
        reported = out.warnings
    text = " ".join(reported)
    assert str(repo_path) in text, reported
    assert "mismatch" in text.lower() or "corrupt" in text.lower() or "integrity" in text.lower(), reported


# ---- guards ---------------------------------------------------------------------------------------


def test_unmounted_source_makes_no_archive_and_no_prune(world, tmpfs):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    volume = tmpfs(world.export / "antigone" / "data", size="8m")
    (volume / "a.txt").write_text("on the mounted disk\n")
    cfg = world.config(
        str(repo_path),
        sources=[{"path": str(volume), "mountpoint": True}, {"path": str(world.export / "balearica")}],
        max_deletions=1,
    )
    # An archive far older than the 14-day retention: any prune would delete it.
    rc, old, stderr = world.job(cfg, "--timestamp", "2020-01-01T00:00:00", "--no-prune")
    assert rc == 0, (old, stderr)
    tmpfs.unmount(volume)
    (volume / "a.txt").write_text("a file on the root disk under the mount point\n")
    before = snapshot(repo_path)
    rc, report, stderr = world.job(cfg)
    assert rc == 2, (report, stderr)
    assert "not mounted" in report["errors"][0], report
    assert report["archive"] is None and report["pruned"] == []
    assert snapshot(repo_path) == before
    assert world.names(conn) == [old["archive"]["name"]]


def test_stale_sync_marker_is_a_warning_and_the_old_copy_is_backed_up(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    marker = world.export / "balearica" / ".grus-sync.json"
    marker.write_text(marker_text(datetime.now(timezone.utc) - timedelta(hours=10)))  # noqa: UP017
    # A marker written now that says "10 h ago" also looks like a clock jump between this host and the
    # client (J::test_clock_skew_with_a_sync_client_holds_the_prune); here only staleness is the point.
    cfg = world.config(str(repo_path), markers=[{"path": str(marker), "max_age_minutes": 60}], clock_tolerance=86400)
    rc, report, stderr = world.job(cfg)
    assert rc == 1, (report, stderr)
    assert len(report["warnings"]) == 1 and "is stale" in report["warnings"][0], report
    assert "WARNING" in stderr and "stale" in stderr
    assert report["markers"][0]["stale"] is True
    name = report["archive"]["name"]
    assert world.names(conn) == [name]
    listing = conn.run(borg_argv(["list", "--short", "--", f"{repo_path}::{name}"])).stdout.split()
    assert str(world.export / "balearica" / "app" / "b.bin").lstrip("/") in listing


# ---- concurrency ----------------------------------------------------------------------------------


def test_two_backups_at_once_one_waits_no_archive_lost(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    write_random(world.export / "balearica" / "app" / "c.bin", 12 * MIB)  # long enough to overlap
    cfg = world.config(str(repo_path), lock_wait=90)
    rc, first, stderr = world.job(cfg)
    assert rc == 0, (first, stderr)
    (world.export / "antigone" / "data" / "new.txt").write_text("changed\n")
    results = [None, None]

    def go(index, timestamp):
        results[index] = world.job(
            cfg, "--timestamp", timestamp, "--no-prune", config_path=world.tmp / f"backup-{index}.json"
        )

    threads = [threading.Thread(target=go, args=(i, f"2026-01-01T00:00:0{i}"), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert all(r is not None for r in results), "a concurrent run did not finish"
    for rc, report, stderr in results:
        assert rc == 0, (report, stderr)
    assert sorted(world.names(conn)) == sorted(
        [first["archive"]["name"], "grus-2026-01-01T00:00:00Z", "grus-2026-01-01T00:00:01Z"]
    )
    world.verify(conn)


# ---- the repository host's forced command -----------------------------------------------------------


def test_append_only_forced_command_prune_compact_are_logical_other_paths_refused(world, sshd):
    repo_path = world.tmp / "sarus-repo"
    other_path = world.tmp / "other-client-repo"
    repo = ssh_repo(sshd, repo_path)
    conn = world.conn(repo, rsh=sshd.rsh)
    world.seed(repo_path, ["grus-2020-01-01T00:00:00Z", "grus-2020-01-02T00:00:00Z"])
    world.init(world.conn(str(other_path)))
    sshd.authorize(f'restrict,command="borg serve --append-only --restrict-to-repository {repo_path}"')
    try:
        before = segments(repo_path)
        other_before = snapshot(other_path)

        pruned = prune(conn, {"keep_last": 1})
        assert [a["name"] for a in pruned["pruned"]] == ["grus-2020-01-01T00:00:00Z"]
        out = conn.run(borg_argv(["compact", "--", repo], lock_wait=conn.lock_wait))
        assert out.rc in (0, 1)
        assert world.names(conn) == ["grus-2020-01-02T00:00:00Z"]
        after = segments(repo_path)
        # Only logical: every segment of the pruned archive is still there, byte for byte.
        assert {k: after.get(k) for k in before} == before
        assert (repo_path / "transactions").is_file()

        # The same key cannot reach another client's repository, nor make a new one elsewhere.
        other = world.conn(ssh_repo(sshd, other_path), rsh=sshd.rsh)
        with pytest.raises(BorgError) as refused:
            list_archives(other)
        assert refused.value.cause == "path_not_allowed", refused.value.as_dict()
        assert other.repo in refused.value.message
        elsewhere = world.conn(ssh_repo(sshd, world.tmp / "new-repo"), rsh=sshd.rsh)
        with pytest.raises(BorgError) as refused:
            world.init(elsewhere)
        assert refused.value.cause == "path_not_allowed", refused.value.as_dict()
        assert snapshot(other_path) == other_before
        assert not (world.tmp / "new-repo").exists()
    finally:
        sshd.authorize("")


# ---- keys -----------------------------------------------------------------------------------------


def test_missing_keyfile_is_a_clear_error_and_changes_nothing(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    rc, first, stderr = world.job(world.config(str(repo_path)))
    assert rc == 0, (first, stderr)
    empty_keys = world.tmp / "empty-keys"
    empty_keys.mkdir()
    before = snapshot(repo_path)
    rc, report, stderr = world.job(world.config(str(repo_path), keys_dir=str(empty_keys)))
    assert rc == 2, (report, stderr)
    assert report["archive"] is None and report["pruned"] == []
    error = report["errors"][0]
    assert "keyfile_missing" in error and f"no key for repository {repo_path}" in error, error
    assert PASSPHRASE not in stderr + json.dumps(report)
    assert snapshot(repo_path) == before
    assert world.names(conn) == [first["archive"]["name"]]


# ---- a sync that overruns into the backup, dies, or fails ---------------------------------------

SYNC_MODULE = "ansible_collections.grus.backup.plugins.module_utils._rsync"


class Client:
    """A sync client's volumes, synced by the scheduled sync (real rsync) into the world's export."""

    def __init__(self, world: World):
        self.world = world
        self.volumes = world.tmp / "client"
        (self.volumes / "app").mkdir(parents=True)
        (self.volumes / "app" / "settings.txt").write_text("version 1\n")
        write_random(self.volumes / "app" / "b.bin", MIB)
        self.marker = world.export / "balearica" / ".grus-sync.json"
        self.config_path = world.tmp / "nfs-sync.json"

    def start(self, bwlimit: str | None = None) -> subprocess.Popen:
        options = {
            "src": str(self.volumes),
            "dest": str(self.world.export / "balearica"),
            "lock": str(self.world.tmp / "sync.lock"),
            "bwlimit": bwlimit,
        }
        self.config_path.write_text(json.dumps(options))
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / ".build" / "collections"))
        return subprocess.Popen(
            [sys.executable, "-m", SYNC_MODULE, "--config", str(self.config_path), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def sync(self) -> None:
        proc = self.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)

    def state(self) -> str | None:
        try:
            return json.loads(self.marker.read_text()).get("state")
        except (OSError, ValueError):
            return None

    def wait_until_running(self, proc: subprocess.Popen) -> None:
        wait_for(lambda: self.state() == "running", 20, "the sync's running marker", proc=proc)


def archived_sha256(world: World, conn: BorgRepo, name: str, path: Path) -> str:
    """SHA-256 of one file as the archive holds it (``borg extract --stdout``, bytes)."""
    argv = borg_argv(["extract", "--stdout", "--", f"{conn.repo}::{name}", str(path).lstrip("/")], log_json=False)
    proc = subprocess.run(argv, env=build_env(conn.env()), capture_output=True, check=True, timeout=120)
    return hashlib.sha256(proc.stdout).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def overlap(world):
    repo_path = world.tmp / "repo"
    conn = world.conn(str(repo_path))
    world.init(conn)
    client = Client(world)
    client.sync()
    assert client.state() == "done"
    procs = []
    yield world, conn, client, procs
    for proc in procs:  # bounded: nothing of ours outlives the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_backup_waits_for_a_sync_that_overran_and_archives_the_whole_sync(overlap):
    world, conn, client, procs = overlap
    (client.volumes / "app" / "settings.txt").write_text("version 2, longer\n")
    write_random(client.volumes / "app" / "new.bin", 3 * MIB)
    sync = client.start(bwlimit="1000")  # KiB/s: about 3 s for the new file
    procs.append(sync)
    client.wait_until_running(sync)
    cfg = world.config(conn.repo, markers=[{"path": str(client.marker), "max_age_minutes": 60}], sync_wait_minutes=1)
    rc, report, stderr = world.job(cfg)
    assert sync.wait(timeout=60) == 0
    assert rc == 0, (report, stderr)
    assert report["sync_waited_seconds"] >= 1 and report["markers"][0]["state"] == "done", report
    name = report["archive"]["name"]
    export_app = world.export / "balearica" / "app"
    # the archive holds the whole sync: the new file complete, the changed one new
    assert archived_sha256(world, conn, name, export_app / "new.bin") == sha256(client.volumes / "app" / "new.bin")
    assert archived_sha256(world, conn, name, export_app / "settings.txt") == sha256(
        client.volumes / "app" / "settings.txt"
    )


def test_sync_still_running_after_the_wait_is_reported_and_the_copy_backed_up(overlap):
    world, conn, client, procs = overlap
    good = sha256(world.export / "balearica" / "app" / "b.bin")
    write_random(client.volumes / "app" / "new.bin", 8 * MIB)
    sync = client.start(bwlimit="500")  # about 16 s: longer than the 3 s the backup waits
    procs.append(sync)
    client.wait_until_running(sync)
    cfg = world.config(conn.repo, markers=[{"path": str(client.marker), "max_age_minutes": 60}], sync_wait_minutes=0.05)
    rc, report, stderr = world.job(cfg)
    assert sync.poll() is None, "the sync must still be running for this test to mean anything"
    assert rc == 1, (report, stderr)
    unfinished = [w for w in report["warnings"] if "has not finished" in w]
    assert len(unfinished) == 1, report
    # Besides, borg may see rsync's temporary file of the new file grow ("file changed while we backed
    # it up"): part of a sync that had not finished, reported as such, and never the only copy of anything.
    others = [w for w in report["warnings"] if w not in unfinished]
    assert all("file changed while we backed it up" in w and "/app/.new.bin." in w for w in others), report
    assert "WARNING" in stderr and 2.5 <= report["sync_waited_seconds"] < 30
    name = report["archive"]["name"]
    # the last good copy is in the archive, byte for byte
    assert archived_sha256(world, conn, name, world.export / "balearica" / "app" / "b.bin") == good
    assert sync.wait(timeout=60) == 0 and client.state() == "done"
    rc, report, stderr = world.job(cfg)  # the next run: clean, with the whole new file
    assert rc == 0, (report, stderr)
    new = world.export / "balearica" / "app" / "new.bin"
    assert archived_sha256(world, conn, report["archive"]["name"], new) == sha256(client.volumes / "app" / "new.bin")
    assert world.names(conn) == [name, report["archive"]["name"]]


def test_sync_killed_mid_transfer_is_reported_and_the_last_good_copy_backed_up(overlap):
    world, conn, client, procs = overlap
    good = sha256(world.export / "balearica" / "app" / "b.bin")
    (client.volumes / "app" / "b.bin").unlink()
    write_random(client.volumes / "app" / "b.bin", 8 * MIB)  # b.bin is being replaced when the sync dies
    sync = client.start(bwlimit="500")
    procs.append(sync)
    client.wait_until_running(sync)
    time.sleep(1)
    os.killpg(sync.pid, signal.SIGKILL)
    sync.wait(timeout=30)
    assert client.state() == "running"  # a dead sync cannot say so: its marker stays "running"
    cfg = world.config(conn.repo, markers=[{"path": str(client.marker), "max_age_minutes": 60}], sync_wait_minutes=0.05)
    rc, report, stderr = world.job(cfg)
    assert rc == 1, (report, stderr)
    assert "still running, or it died" in report["warnings"][0], report
    # rsync writes into a temporary file and renames: the old b.bin is still whole in the archive
    name = report["archive"]["name"]
    assert archived_sha256(world, conn, name, world.export / "balearica" / "app" / "b.bin") == good
    world.verify(conn)


def test_failed_sync_is_reported_and_the_copy_still_backed_up(overlap):
    world, conn, client, _procs = overlap
    stuck = world.export / "balearica" / "app" / "settings.txt"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        (client.volumes / "app" / "settings.txt").write_text("version 2, longer\n")
        sync = client.start()
        out, _err = sync.communicate(timeout=60)
        assert sync.returncode == 2 and json.loads(out)["kind"] == "partial"
        assert client.state() == "failed"
        cfg = world.config(conn.repo, markers=[{"path": str(client.marker), "max_age_minutes": 60}])
        rc, report, stderr = world.job(cfg)
        assert rc == 1, (report, stderr)
        assert "the last sync from" in report["warnings"][0] and "partial" in report["warnings"][0], report
        assert report["sync_waited_seconds"] == 0  # a failed sync is not waited for
        name = report["archive"]["name"]
        assert archived_sha256(world, conn, name, stuck) == sha256(stuck)  # the copy as it stands (version 1)
        assert stuck.read_text() == "version 1\n"
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
