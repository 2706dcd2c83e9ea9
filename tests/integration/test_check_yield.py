"""Long checks and backups coexist: real borg, real repository locks, the real job as the units run it.

The long operation is made long deterministically, without a timed assertion:

* a check or verify: the job's real ``borg check --verify-data`` is started and, once it holds the
  repository's exclusive lock, frozen with SIGSTOP: from outside exactly a check that takes hours
  (the lock held, the process alive). The backup's request (SIGTERM to the job, which passes SIGTERM
  and SIGCONT to borg, as systemd does) is what wakes and ends it.
* compaction on the repository host: ``borg with-lock REPO sleep N`` holds the same exclusive lock
  ``borg compact`` takes; a second run with a short lock wait proves the lock was really held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import job_argv, job_config, job_env, passphrase_file, ssh_repo, write_export

PASSPHRASE = "integration-passphrase-not-secret-0043"  # noqa: S105 - a throw-away test value
POLL = 0.01
BOUND = 60  # seconds: every wait of this file gives up after this (no test hangs)


def borg(env, *args, check=True):
    return subprocess.run(["borg", *args], env=env, capture_output=True, text=True, check=check, timeout=BOUND)


@pytest.fixture
def job(tmp_path):
    """An export with some MB of data, an append-only local repository with one archive, a job configuration."""
    return make_job(tmp_path)


@pytest.fixture
def remote_job(tmp_path, sshd):
    """The same through ssh and the repository host's forced command (``borg serve --append-only``)."""
    repo = tmp_path / "repo"
    sshd.authorize(f'restrict,command="borg serve --append-only --restrict-to-repository {repo}"')
    try:
        yield make_job(tmp_path, sshd)
    finally:
        sshd.authorize("")


def make_job(tmp_path, sshd=None):
    export = write_export(tmp_path / "export", [("antigone/data/a.txt", "alpha"), ("balearica/app/b.txt", "beta")])
    (export / "balearica" / "app" / "random.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    secret = passphrase_file(tmp_path, PASSPHRASE)
    env = dict(os.environ)
    env.update(BORG_PASSCOMMAND=f"cat {secret}", BORG_BASE_DIR=str(tmp_path / "borgbase"))
    env.update(BORG_KEYS_DIR=str(tmp_path / "keys"))
    env.pop("BORG_PASSPHRASE", None)
    repo = tmp_path / "repo"
    url = str(repo)
    if sshd:
        url = ssh_repo(sshd, repo)
        env["BORG_RSH"] = sshd.rsh
    borg(env, "init", "--encryption", "keyfile-blake2", "--append-only", url)
    # lock_wait 5 s (job_config's): without the yield, the backup would fail on the check's lock after 5 s.
    cfg = job_config(
        tmp_path,
        url,
        export,
        secret,
        rsh=sshd.rsh if sshd else None,
        sources=[{"path": str(export / "antigone")}],
        state_dir=str(tmp_path / "state"),
        yield_wait=BOUND,
    )
    config_path = tmp_path / "backup.json"
    config_path.write_text(json.dumps(cfg))
    metrics = tmp_path / "metrics"
    metrics.mkdir()

    def start(*extra):
        argv = job_argv(config_path, "--metrics-dir", str(metrics), *extra)
        return subprocess.Popen(argv, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(*extra):
        proc = start(*extra)
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    rc, out, err = run("--no-prune")
    assert rc == 0, out + err
    return {
        "start": start,
        "run": run,
        "env": env,
        "repo": repo,
        "url": url,
        "cfg": cfg,
        "path": config_path,
        "metrics": metrics,
    }


def children(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def serving(repo: Path) -> list:
    """Pids of ``borg serve`` processes of ``repo`` (the forced command names it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if b"serve" in cmdline and str(repo).encode() in cmdline:
            found.append(int(entry))
    return found


def lock_held(repo: Path) -> bool:
    return (repo / "lock.exclusive").is_dir()


def frozen_check(job, mode: str):
    """The job's real check, frozen (SIGSTOP) while its borg holds the repository lock; (job, borg pid).

    Returns None when borg was done before it could be frozen (a check faster than the poll).
    """
    proc = job["start"](mode)
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline and proc.poll() is None:
        borg_pids = [p for p in children(proc.pid) if b"borg" in Path(f"/proc/{p}/cmdline").read_bytes()]
        if borg_pids and lock_held(job["repo"]):
            os.kill(borg_pids[0], signal.SIGSTOP)
            if lock_held(job["repo"]) and proc.poll() is None:
                return proc, borg_pids[0]
            os.kill(borg_pids[0], signal.SIGCONT)
            break
        time.sleep(POLL)
    proc.communicate(timeout=BOUND)
    return None


@pytest.mark.parametrize(
    ("where", "mode"), [("local", "--verify-data"), ("local", "--check"), ("ssh", "--verify-data")]
)
def test_a_check_running_when_the_backup_starts_yields_and_the_backup_succeeds(request, where, mode):
    """Through ssh the lock is held by the repository host's ``borg serve``: it lets go when the client ends."""
    job = request.getfixturevalue("job" if where == "local" else "remote_job")
    for _attempt in range(3):  # bounded: a check that ended before the freeze is simply started again
        frozen = frozen_check(job, mode)
        if frozen:
            break
    assert frozen, "the check never held the repository lock long enough to be frozen in 3 attempts"
    check, borg_pid = frozen
    try:
        # A plain borg create cannot get in: the repository lock is really held by the check.
        blocked = borg(
            job["env"], "create", "--lock-wait", "1", f"{job['url']}::blocked", str(job["path"]), check=False
        )
        assert blocked.returncode != 0 and "lock" in blocked.stderr.lower(), blocked.stderr

        rc, out, err = job["run"]("--no-prune", "--json")
        report = json.loads(out.splitlines()[-1])
        assert rc == 0, out + err
        assert report["archive"]["name"]
        task = "verify_data" if mode == "--verify-data" else "check"
        assert report["yielded_by"]["task"] == task
        assert report["yielded_by"]["pid"] == check.pid
        assert report["yielded_by"]["stopped"] is True

        check_out, check_err = check.communicate(timeout=BOUND)
    finally:
        if check.poll() is None:
            os.kill(borg_pid, signal.SIGCONT)
            check.kill()
            check.communicate()
    assert check.returncode == 0, check_out + check_err  # a yield is not an alert by itself
    assert "yielded" in check_out
    prom = (job["metrics"] / f"grus_backup_{task}.prom").read_text()
    assert f'grus_backup_check_yielded{{repository="{job["url"]}",task="{task}"}} 1.0' in prom
    assert "grus_backup_check_last_complete_timestamp_seconds{" in prom
    # The lock is free, nothing of the check is left, and the repository is sound.
    assert not lock_held(job["repo"])
    assert not Path(f"/proc/{borg_pid}").exists()  # the check's borg ended (and was reaped)
    assert not serving(job["repo"])  # through ssh: no borg serve of this repository is left
    borg(job["env"], "with-lock", "--lock-wait", "1", str(job["repo"]), "true")
    borg(job["env"], "check", job["url"])
    names = [a["name"] for a in json.loads(borg(job["env"], "list", "--json", job["url"]).stdout)["archives"]]
    assert len(names) == 2 and "blocked" not in names

    # The next check, with no backup in its way, completes and says so.
    rc, out, err = job["run"](mode)
    assert rc == 0 and "yielded" not in out, out + err
    prom = (job["metrics"] / f"grus_backup_{task}.prom").read_text()
    assert f'grus_backup_check_yielded{{repository="{job["url"]}",task="{task}"}} 0.0' in prom


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_a_partial_repository_check_resumes_and_completes(request, where):
    """check_max_duration: borg check --repository-only --max-duration, then the archives; complete here.

    Through the forced command too (``borg serve --append-only`` accepts the partial check and forwards borg's
    INFO line that says the pass reached the last segment).
    """
    job = request.getfixturevalue("job" if where == "local" else "remote_job")
    job["cfg"]["check_max_duration"] = 3600
    job["path"].write_text(json.dumps(job["cfg"]))
    rc, out, err = job["run"]("--check", "--json")
    assert rc == 0, out + err
    report = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert report["check_complete"] is True
    assert "repository: the pass reached the last segment (borg said so)" in report["check_notes"]
    prom = (job["metrics"] / "grus_backup_check.prom").read_text()
    assert 'grus_backup_check_yielded{repository="' in prom


def test_compaction_holding_the_lock_when_the_backup_starts_the_backup_waits_and_succeeds(job):
    """The repository host's compaction takes the exclusive lock; the backup's lock wait covers it.

    ``borg with-lock REPO cat`` holds the lock until its stdin closes: the test lets go only once the
    backup's borg create is running and waiting for it, so the wait is proven, not timed.
    """
    holder = subprocess.Popen(
        ["borg", "with-lock", str(job["repo"]), "cat"],
        env=job["env"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    backup = None
    try:
        deadline = time.monotonic() + BOUND
        while not lock_held(job["repo"]) and time.monotonic() < deadline:
            time.sleep(POLL)
        assert lock_held(job["repo"])
        # Without a wait the backup fails: the lock is really held.
        job["cfg"]["lock_wait"] = 0
        job["path"].write_text(json.dumps(job["cfg"]))
        rc, out, err = job["run"]("--no-prune", "--json")
        assert rc == 2 and "lock" in err.lower(), out + err
        # With a lock wait that covers a normal compaction, the backup waits for the lock.
        job["cfg"]["lock_wait"] = BOUND
        job["path"].write_text(json.dumps(job["cfg"]))
        backup = job["start"]("--no-prune", "--json")
        while time.monotonic() < deadline and not any(
            b"create" in Path(f"/proc/{p}/cmdline").read_bytes() for p in children(backup.pid)
        ):
            time.sleep(POLL)
        assert backup.poll() is None and lock_held(job["repo"]), "the backup did not wait for the lock"
        holder.stdin.close()  # the "compaction" ends
        out, err = backup.communicate(timeout=BOUND)
        assert backup.returncode == 0, out + err
        assert json.loads(out.splitlines()[-1])["archive"]["name"]
    finally:
        if holder.stdin and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=BOUND)
        if backup is not None and backup.poll() is None:
            backup.kill()
            backup.communicate()
    assert holder.returncode == 0, holder.stderr.read()
    borg(job["env"], "check", str(job["repo"]))


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({}, None),  # the defaults: 02:00 + 30 min, 90 min before 04:00
        ({"repository_host_compact_time": "03:30"}, "it is 30 minute(s) before one"),
        ({"repository_host_compact_time": "03:30", "repository_host_compact_quiet_minutes": 0}, None),
        ({"repository_host_compact_time": "3h"}, "repository_host_compact_time 3h (HH:MM)"),
        ({"repository_host_backup_times": ["04:00", "25:00"]}, "25:00 (HH:MM)"),
        ({"repository_host_backup_times": []}, None),  # no backups to keep clear of
    ],
)
def test_the_role_refuses_a_compaction_time_every_run_would_defer(tmp_path, extra, refused):
    """Deploy-time: a compaction time inside the quiet window before a backup would never compact."""
    from conftest import run_role_tasks

    proc = run_role_tasks(tmp_path, "repository_host", "validate_schedule", extra, callback="ansible.builtin.default")
    if refused is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode != 0 and refused in proc.stdout, proc.stdout + proc.stderr
        assert "nothing would ever be compacted" in proc.stdout
