"""The repository host's compaction job against real borg 1.4 through the real forced command.

Clients reach the repository through the private sshd on 127.0.0.1 with the key line the role renders
(``authorized_keys.j2``: ``restrict,command="borg serve --append-only --restrict-to-repository REPO
--storage-quota Q"``); the job is the shipped ``grus_backup`` package run by ``/usr/bin/python3`` with the
unit's argument list (``test_compact_guard.Host``). Proven here:

* the true delay: every archive deleted through the forced command, two compactions, and the archives
  still roll back (from the snapshot) and restore byte-identical; snapshots expire only after the delay;
* borg never rewrites a repository file in place, except ``transactions`` (the snapshot copies that one);
* the deletion audit: 20 simulated days of 6 backups and prunes are normal; a mass delete holds compaction
  (exit 2, hold file, nothing compacted) until an operator removes the hold; the guided rollback goes to the
  proposed last good transaction and the archives restore byte-identical;
* the repository's own append_only flag: restored after a compaction killed with SIGKILL, and when
  ``borg config`` fails;
* the storage quota: a backup over it fails with borg's message, earlier archives stay intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import snapshot, ssh_repo
from test_compact_guard import NAME, TEMPLATES, Host, current_user, jinja, role_vars, ship_job

MIB = 1024 * 1024
HOUR = 3600


def make_host(tmp_path: Path) -> Host:
    base = tmp_path / "srv-borg"
    home = base / NAME
    repo = home / "repo"
    (home / ".ssh").mkdir(parents=True)
    (home / ".cache").mkdir()
    lib = tmp_path / "lib"
    ship_job(lib)
    script = tmp_path / "grus-borg-compact"
    text = (TEMPLATES / "grus-borg-compact.j2").read_text().replace("{{ ansible_managed }}", "Ansible managed")
    script.write_text(text.replace("/usr/local/lib/grus-backup", str(lib)))
    script.chmod(0o755)
    return Host(base, home, repo, home / ".ssh" / "authorized_keys", home / ".cache" / "grus-last-compact", script)


class Client:
    """A key holder reaching the repository only through the rendered forced command."""

    def __init__(self, tmp_path: Path, sshd, host: Host, quota: str | None = None):
        self.home = tmp_path / "client-home"
        self.sshd = sshd
        self.host = host
        self.url = ssh_repo(sshd, host.repo)
        values = dict(role_vars(), repository_host_base_dir=str(host.base), ansible_managed="Ansible managed")
        item = {"name": NAME, "client_keys": [sshd.public_key]}
        if quota is not None:
            item["storage_quota"] = quota
        self.quota = quota if quota is not None else values["repository_host_storage_quota"]
        sshd.authorized_keys.write_text(jinja().get_template("authorized_keys.j2").render(item=item, **values))
        host.keys.write_text(jinja().get_template("authorized_keys.j2").render(item=item, **values))

    def env(self, home: Path | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env.update(
            BORG_BASE_DIR=str(home or self.home),
            BORG_RSH=self.sshd.rsh,
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return env

    def borg(self, *args: str, check: bool = True, home: Path | None = None, cwd=None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["borg", *args],
            env=self.env(home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
            check=False,
            cwd=cwd,
        )
        if check:
            assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"))
        return proc

    def names(self, home: Path | None = None) -> list[str]:
        return self.borg("list", "--short", self.url, home=home).stdout.decode().split()


@pytest.fixture
def world(tmp_path, sshd):
    host = make_host(tmp_path)
    client = Client(tmp_path, sshd, host)
    try:
        yield host, client
    finally:
        sshd.authorize("")


def segment_numbers(repo: Path) -> list[int]:
    return sorted(int(p.name) for p in (repo / "data").glob("*/*") if p.name.isdigit())


def run_job(host: Host, *extra: str, delay_days: int = 7, interval_days: int = 0, env=None):
    argv = host.unit_argv(delay_days, interval_days)
    proc = host.run([*argv, *extra]) if env is None else run_env(host, [*argv, *extra], env)
    return proc


def run_env(host: Host, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False
    )


def tool(host: Host, *args: str) -> subprocess.CompletedProcess:
    """An on-demand entry point of the shipped job, as recover_append_only calls it on the host."""
    return host.run([str(host.script), *args, "--run-as", current_user(), "--state-dir", str(host.home / "compaction")])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restore_fresh(client: Client, tmp: Path, archive: str) -> bytes:
    """The key holder after a rollback: cache and security record dropped (a fresh borg home)."""
    fresh = tmp / f"fresh-{time.monotonic_ns()}"
    return client.borg("extract", "--stdout", f"{client.url}::{archive}", home=fresh).stdout


# ---- item 1: the true delay --------------------------------------------------------------------------


def test_borg_replaces_repository_files_by_rename_and_only_appends_transactions(world, tmp_path):
    """Why hard links are a safe snapshot: no file borg ever had is changed in place, except `transactions`."""
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    data = tmp_path / "a.bin"
    data.write_bytes(os.urandom(2 * MIB))
    client.borg("create", "--compression", "none", f"{client.url}::a", str(data))
    side = tmp_path / "side"
    shutil.copytree(host.repo, side, copy_function=os.link)
    before = snapshot(side)
    client.borg("create", f"{client.url}::b", str(data))
    client.borg("delete", f"{client.url}::a")
    proc = run_job(host, "--max-deleted-share", "2")  # config toggled twice, compact, index rewritten
    assert proc.returncode == 0, proc.stderr
    changed = {path for path, digest in snapshot(side).items() if before[path] != digest}
    assert changed == {"transactions"}, changed
    replaced = [p.name for p in side.iterdir() if p.name.startswith(("index.", "hints.", "integrity."))]
    assert replaced and all(not (host.repo / name).exists() for name in replaced)


def test_deleted_archives_stay_recoverable_after_two_compactions(world, tmp_path):
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    files = {}
    for name in ("a", "b"):
        data = tmp_path / f"{name}.bin"
        data.write_bytes(os.urandom(3 * MIB))
        files[name] = sha256(data.read_bytes())
        client.borg("create", "--compression", "none", f"{client.url}::{name}", str(data), cwd=tmp_path)
    audit = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)
    last_good = audit["transactions"][-1]["number"]
    client.borg("delete", "--glob-archives", "*", client.url)
    assert client.names() == []
    size_before = sum(p.stat().st_size for p in (host.repo / "data").glob("*/*"))

    # Due at once (no stamp), then due again (stamp aged past the interval): two compactions, two snapshots.
    first = run_job(host, "--max-deleted-share", "2", interval_days=1)
    assert first.returncode == 0, first.stderr
    aged = time.time() - 25 * HOUR
    os.utime(host.stamp, (aged, aged))
    second = run_job(host, "--max-deleted-share", "2", interval_days=1)
    assert second.returncode == 0, second.stderr
    assert "compacted" in first.stdout and "compacted" in second.stdout
    size_after = sum(p.stat().st_size for p in (host.repo / "data").glob("*/*"))
    assert size_after < size_before - 5 * MIB, (size_before, size_after)  # the space really came back
    snaps = sorted((host.home / "compaction" / "snapshots").iterdir())
    assert len(snaps) == 2

    # The archives' transaction is older than both compactions: only a snapshot holds it.
    refused = tool(host, "--rollback", str(host.repo), "--to-transaction", "999999")
    assert refused.returncode == 2 and "no snapshot covers it" in refused.stderr
    rolled = tool(host, "--rollback", str(host.repo), "--to-transaction", str(last_good))
    assert rolled.returncode == 0, rolled.stderr
    assert "borg check --repository-only passed" in rolled.stdout
    assert "compaction" in rolled.stdout  # from the snapshot
    fresh = tmp_path / "fresh-list"
    assert client.names(home=fresh) == ["a", "b"]
    for name, digest in files.items():
        assert sha256(restore_fresh(client, tmp_path, f"{name}")) == digest


def test_snapshots_expire_only_after_the_delay(world, tmp_path):
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    (tmp_path / "f").write_bytes(os.urandom(MIB))
    client.borg("create", f"{client.url}::a", str(tmp_path / "f"))
    assert run_job(host, delay_days=7).returncode == 0
    (snap,) = (host.home / "compaction" / "snapshots").iterdir()
    assert run_job(host, delay_days=7).returncode == 0
    assert snap.exists()  # a day or a second old: kept
    info = snap / "grus-snapshot.json"
    data = json.loads(info.read_text())
    data["created"] = time.time() - 7 * 86400 - HOUR
    info.write_text(json.dumps(data))
    proc = run_job(host, delay_days=7)
    assert proc.returncode == 0 and "older than 7 day(s): removed" in proc.stdout
    assert not snap.exists()


def test_before_the_key_holder_created_the_repository_the_run_only_guards(world):
    host, _client = world
    proc = run_job(host)
    assert proc.returncode == 0, proc.stderr
    assert "no repository yet" in proc.stdout and not host.repo.exists()


def hhmm_in(minutes: int) -> str:
    """The local time (the job's and systemd's clock) ``minutes`` from now, as HH:MM."""
    return time.strftime("%H:%M", time.localtime(time.time() + minutes * 60))


def deferred_sample(prom: str) -> list:
    return [line.split()[-1] for line in prom.splitlines() if line.startswith("grus_backup_compaction_deferred{")]


def test_a_due_compaction_close_before_a_backup_is_deferred_then_runs_outside_the_window(world, tmp_path):
    """Compaction holds the repository's exclusive lock: one that would start just before a backup waits a day.

    The backup times are the role's (rendered into the unit's command line); nothing the key holder sends
    decides it.
    """
    host, client = world
    deleted_archive(client, tmp_path)
    before = snapshot(host.repo / "data")

    soon = host.unit_argv(7, 0, repository_host_backup_times=[hhmm_in(10)], repository_host_compact_quiet_minutes=60)
    deferred = host.run(soon)
    assert deferred.returncode == 0, deferred.stderr
    assert "deferred to the next run" in deferred.stdout
    assert "compacted" not in deferred.stdout
    assert snapshot(host.repo / "data") == before  # nothing compacted (the append-only flag was set to 1)
    assert not (host.home / "compaction" / "snapshots").exists() or not any(
        (host.home / "compaction" / "snapshots").iterdir()
    )
    assert not host.stamp.exists()
    prom = next((host.base / "textfile").glob("grus_backup_compaction*.prom")).read_text()
    assert deferred_sample(prom) == ["1.0"]

    later = host.unit_argv(7, 0, repository_host_backup_times=[hhmm_in(180)], repository_host_compact_quiet_minutes=60)
    ran = host.run(later)
    assert ran.returncode == 0, ran.stderr
    assert "compacted" in ran.stdout and "deferred" not in ran.stdout
    assert host.stamp.exists()
    prom = next((host.base / "textfile").glob("grus_backup_compaction*.prom")).read_text()
    assert deferred_sample(prom) == ["0.0"]
    assert snapshot(host.repo / "data") != before  # this time the deleted archive's space came back


# ---- item 2 and 4: the deletion audit, the hold, the guided rollback ---------------------------------------


def simulate(client: Client, src: Path, days: int = 20, per_day: int = 6, keep_days: int = 14) -> dict:
    """Backups every 4 h with simulated times, each followed by the prune of what fell out of the retention."""
    start = time.time() - days * 86400
    made = {}
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}").write_bytes(os.urandom(2048))
    for n in range(days * per_day):
        moment = start + n * 86400 / per_day
        (src / f"f{n % 30:02d}").write_bytes(os.urandom(2048))  # one file changes per backup
        name = "b-" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        client.borg("create", "--timestamp", stamp, f"{client.url}::{name}", ".", cwd=src)
        made[name] = moment
        due = [a for a, t in made.items() if t <= moment - keep_days * 86400]
        if due:
            client.borg("delete", client.url, *due)
            for a in due:
                del made[a]
    return made


@pytest.mark.slow
def test_mass_delete_is_held_after_normal_prunes_and_rolled_back(world, tmp_path):
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    kept = simulate(client, tmp_path / "src")
    assert len(kept) == 14 * 6
    listing = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"]
    prunes = [t for t in listing if t["objects_deleted"]]
    peak = max(t["deleted_data_share"] for t in prunes)
    # docs/reliability.md quotes this figure against the total-deletion share (0.9).
    print(f"20-day simulation: {len(prunes)} prunes, peak deleted share {peak:.4f} (live objects but the manifest)")
    assert len(prunes) == 36 and not any(t["suspicious"] for t in listing)
    assert peak < 0.05
    # One daily run: 120 backups and 36 prunes are normal; it compacts; the repository becomes append-only.
    normal = run_job(host)
    assert normal.returncode == 0, normal.stderr
    assert "0 suspicious" in normal.stdout and "compacted" in normal.stdout
    assert "append_only = 1" in (host.repo / "config").read_text()
    newest = sorted(kept)[-1]
    expected = sha256(client.borg("extract", "--stdout", f"{client.url}::{newest}").stdout)

    client.borg("delete", "--glob-archives", "*", client.url)  # the stolen key
    assert client.names() == []
    before = snapshot(host.repo)
    held = run_job(host)
    assert held.returncode == 2, (held.stdout, held.stderr)
    assert "suspicious" in held.stdout and "deleted" in held.stderr and "Compaction is held" in held.stderr
    hold = (host.home / "GRUS-HOLD-COMPACTION").read_text()
    assert hold.startswith("held-by: audit\n") and "live objects" in hold
    assert snapshot(host.repo) == before  # nothing compacted, nothing changed
    again = run_job(host)
    assert again.returncode == 2 and "set by the deletion audit" in again.stderr  # every day, until released
    assert snapshot(host.repo) == before

    audit = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)
    (bad,) = [t for t in audit["transactions"] if t["suspicious"]]
    assert bad["objects_deleted"] >= 100 and bad["deleted_share"] > 0.9
    others = [t for t in audit["transactions"] if not t["suspicious"] and t["objects_deleted"]]
    assert others == [] or max(t["deleted_share"] for t in others) < 0.05
    proposed = audit["proposed"]
    assert proposed["ordinal"] == bad["ordinal"] - 1
    rolled = tool(host, "--rollback", str(host.repo), "--to-ordinal", str(proposed["ordinal"]))
    assert rolled.returncode == 0, rolled.stderr
    fresh = tmp_path / "fresh"
    assert sorted(client.names(home=fresh)) == sorted(kept)
    assert sha256(restore_fresh(client, tmp_path, newest)) == expected


@pytest.mark.parametrize("archives", [1, 2])
def test_deleting_every_archive_of_a_tiny_repository_holds_compaction(world, tmp_path, archives):
    """The demo's intrusion: far under the 100-object floor, but every live object but the manifest."""
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    for n in range(archives):
        (tmp_path / f"f{n}").write_bytes(os.urandom(64 * 1024))
        client.borg("create", f"{client.url}::a{n}", str(tmp_path / f"f{n}"))
    client.borg("delete", "--glob-archives", "*", client.url)  # the stolen key, through the forced command
    assert client.names() == []
    before = snapshot(host.repo / "data")  # the run sets append_only = 1 in the config: only that changes

    held = run_job(host)

    assert held.returncode == 2, (held.stdout, held.stderr)
    assert "1 suspicious" in held.stdout and "Compaction is held" in held.stderr
    assert "of all but the manifest" in held.stderr and "suspicious at any size" in held.stderr
    hold = (host.home / "GRUS-HOLD-COMPACTION").read_text()
    assert hold.startswith("held-by: audit\n")
    assert snapshot(host.repo / "data") == before and not host.stamp.exists()  # nothing compacted
    listing = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"]
    (bad,) = [t for t in listing if t["suspicious"]]
    assert bad["objects_deleted"] < 100 and bad["deleted_data_share"] == 1.0
    print(f"delete of {archives} archive(s): {bad['objects_deleted']} of {bad['live_objects_before']} live objects")


def test_a_tiny_prune_of_one_of_several_archives_is_not_held(world, tmp_path):
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    for n in range(4):
        (tmp_path / f"f{n}").write_bytes(os.urandom(64 * 1024))
        client.borg("create", f"{client.url}::a{n}", str(tmp_path / f"f{n}"))
    client.borg("delete", f"{client.url}::a0")

    ran = run_job(host)

    assert ran.returncode == 0, ran.stderr
    assert "0 suspicious" in ran.stdout and "compacted" in ran.stdout
    assert not (host.home / "GRUS-HOLD-COMPACTION").exists()
    assert client.names() == ["a1", "a2", "a3"]
    listing = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"]
    (prune,) = [t for t in listing if t["objects_deleted"]]
    print(f"prune of 1 of 4 archives: deleted share {prune['deleted_data_share']:.2f}")
    assert prune["deleted_data_share"] < 0.5


def test_a_repeated_transaction_number_is_refused_unless_named_by_ordinal(world, tmp_path):
    host, client = world
    client.borg("init", "--encryption", "none", client.url)
    (tmp_path / "f").write_bytes(os.urandom(MIB))
    client.borg("create", f"{client.url}::a", str(tmp_path / "f"))
    base = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"][-1]
    client.borg("create", f"{client.url}::b", str(tmp_path / "f"))
    after_b = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"][-1]
    assert tool(host, "--rollback", str(host.repo), "--to-ordinal", str(base["ordinal"])).returncode == 0
    fresh = tmp_path / "h1"
    client.borg("create", f"{client.url}::c", str(tmp_path / "f"), home=fresh)  # numbers restart after a rollback
    listing = json.loads(tool(host, "--audit-json", str(host.repo)).stdout)["transactions"]
    numbers = [t["number"] for t in listing]
    assert numbers.count(after_b["number"]) == 2, numbers  # b's (in the before-rollback snapshot) and c's
    ambiguous = tool(host, "--rollback", str(host.repo), "--to-transaction", str(after_b["number"]))
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr and "ordinal" in ambiguous.stderr
    (b_txn,) = [t for t in listing if t["number"] == after_b["number"] and t["source"] != "repository"]
    assert tool(host, "--rollback", str(host.repo), "--to-ordinal", str(b_txn["ordinal"])).returncode == 0
    assert client.names(home=tmp_path / "h2") == ["a", "b"]


# ---- item 6: the repository's own append_only flag ----------------------------------------------------


def borg_shim(tmp_path: Path, body: str) -> dict:
    """A `borg` first on PATH that does `body` (sh) and then runs the real borg."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    real = shutil.which("borg")
    (shim_dir / "borg").write_text(f'#!/bin/sh\n{body}\nexec {real} "$@"\n')
    (shim_dir / "borg").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env["HOME"] = str(tmp_path / "srv-borg" / NAME)
    env["PATH"] = f"{shim_dir}:{env['PATH']}"
    return env


def flag(host: Host) -> str:
    return next(x for x in (host.repo / "config").read_text().splitlines() if x.startswith("append_only"))


def deleted_archive(client: Client, tmp_path: Path) -> None:
    """An older archive kept and one deleted: a prune (deleting every archive would hold compaction)."""
    client.borg("init", "--encryption", "none", client.url)
    (tmp_path / "kept").write_bytes(os.urandom(4096))
    client.borg("create", f"{client.url}::kept", str(tmp_path / "kept"))
    (tmp_path / "f").write_bytes(os.urandom(MIB))
    client.borg("create", f"{client.url}::a", str(tmp_path / "f"))
    client.borg("delete", f"{client.url}::a")


def test_compaction_killed_leaves_the_flag_restored_by_execstoppost_and_the_next_run(world, tmp_path):
    host, client = world
    deleted_archive(client, tmp_path)
    assert flag(host) == "append_only = 0"  # created through borg serve --append-only: borg writes 0
    marker = tmp_path / "compacting"
    env = borg_shim(tmp_path, f'case "$*" in *" compact "*) touch {marker}; sleep 300;; esac')
    job = subprocess.Popen(host.unit_argv(7, 0), env=env, start_new_session=True, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert job.poll() is None and time.monotonic() < deadline, "compaction never started"
        time.sleep(0.1)
    assert flag(host) == "append_only = 0"  # set for the compaction
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert flag(host) == "append_only = 0"  # what a SIGKILL leaves
    stop_post = host.run(host.unit_argv(7, 0, line="ExecStopPost="))
    assert stop_post.returncode == 0, stop_post.stderr
    assert flag(host) == "append_only = 1" and "restored after a compaction" in stop_post.stdout
    # Killed again, without the hook: the next run puts it back first, then compacts.
    marker.unlink()
    job = subprocess.Popen(host.unit_argv(7, 0), env=env, start_new_session=True, stdout=subprocess.PIPE)
    while not marker.exists():
        assert job.poll() is None
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert flag(host) == "append_only = 0"
    nxt = run_job(host, "--max-deleted-share", "2")
    assert nxt.returncode == 0, nxt.stderr
    assert "restored after a compaction" in nxt.stdout and flag(host) == "append_only = 1"


@pytest.mark.parametrize("failing", ["append_only 0", "append_only 1"])
def test_borg_config_failing_exits_2_and_the_flag_stays_1(world, tmp_path, failing):
    host, client = world
    deleted_archive(client, tmp_path)
    assert run_job(host, "--max-deleted-share", "2").returncode == 0  # flag 1 now
    (tmp_path / "g").write_bytes(os.urandom(MIB))
    client.borg("create", f"{client.url}::b", str(tmp_path / "g"))
    client.borg("delete", f"{client.url}::b")
    env = borg_shim(tmp_path, f'case "$*" in *" config "*"{failing}") echo "config refused" >&2; exit 2;; esac')
    before = snapshot(host.repo / "data")
    proc = run_job(host, "--max-deleted-share", "2", env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"borg config {host.repo} {failing} failed" in proc.stderr
    assert flag(host) == "append_only = 1"
    assert not (host.home / "compaction" / "append-only-intent").exists()
    if failing == "append_only 0":
        assert snapshot(host.repo / "data") == before  # nothing compacted


# ---- item 5: the storage quota ------------------------------------------------------------------------


def test_a_backup_over_the_quota_fails_and_earlier_archives_stay_intact(tmp_path, sshd):
    host = make_host(tmp_path)
    client = Client(tmp_path, sshd, host, quota="20M")
    try:
        assert "--storage-quota 20M" in sshd.authorized_keys.read_text()
        client.borg("init", "--encryption", "none", client.url)
        small = tmp_path / "small.bin"
        small.write_bytes(os.urandom(5 * MIB))
        client.borg("create", "--compression", "none", f"{client.url}::small", str(small))
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(30 * MIB))
        over = client.borg("create", "--compression", "none", f"{client.url}::big", str(big), check=False)
        assert over.returncode == 2, over.stderr
        assert b"storage quota" in over.stderr and b"exceeded" in over.stderr, over.stderr
        assert client.names() == ["small"]
        assert sha256(client.borg("extract", "--stdout", f"{client.url}::small").stdout) == sha256(small.read_bytes())
        # The guard expects that very quota in the forced command (the unit's drop-in gives it).
        refused = host.run(host.unit_argv(7, 0))  # the role's default quota, not this repository's 20M
        assert refused.returncode == 2 and "lost its append-only forced command" in refused.stderr
        accepted = host.run([*host.unit_argv(7, 0), "--storage-quota", "20M"])
        assert accepted.returncode == 0, accepted.stderr
    finally:
        sshd.authorize("")
