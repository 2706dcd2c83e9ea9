"""grus.backup.borg_archive against real borg: local repositories and over SSH (private sshd on 127.0.0.1).

Every state runs check -> apply -> apply again -> check again; restores are compared by SHA-256; every
bad input asserts that the repository directory is byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import assert_names_ssh_reason, borg_cli, closed_port, snapshot, ssh_repo

# ---- helpers ------------------------------------------------------------------------------------


def make_source(root: Path) -> Path:
    """A few MB: a random file (so compression and dedup cannot make it trivial), text, a link, nesting."""
    src = root / "src"
    (src / "db").mkdir(parents=True)
    (src / "www" / "html").mkdir(parents=True)
    (src / "db" / "dump.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "www" / "html" / "index.html").write_text("<h1>grus</h1>\n" * 100)
    (src / "www" / "cache.tmp").write_text("scratch\n")
    (src / "www" / "current").symlink_to("html/index.html")
    (src / "logs").mkdir()
    (src / "logs" / ".nobackup").write_text("")
    (src / "logs" / "access.log").write_text("GET /\n" * 1000)
    return src


def archive_names(repo, passphrase, borg_home, rsh=None) -> list:
    out = borg_cli(["list", "--json", str(repo)], passphrase, borg_home, rsh=rsh).stdout
    return [a["name"] for a in json.loads(out)["archives"]]


def archive_paths(repo, name, passphrase, borg_home) -> list:
    out = borg_cli(["list", "--json-lines", f"{repo}::{name}"], passphrase, borg_home).stdout
    return [json.loads(line)["path"] for line in out.splitlines() if line.strip()]


def four_times(run_module, args, diff=True, after_check=None) -> list:
    """check -> apply -> apply again -> check again, each must succeed; changed as a real run would.

    ``after_check`` (a callable returning a bool) proves that the first check changed nothing.
    """
    results = [run_module("borg_archive", args, check=True, diff=diff)]
    if after_check is not None:
        assert after_check(), "check mode changed something"
    results += [
        run_module("borg_archive", args, diff=diff),
        run_module("borg_archive", args),
        run_module("borg_archive", args, check=True),
    ]
    for result in results:
        assert not result.failed, result.result
    assert [r.changed for r in results] == [True, True, False, False], [r.result for r in results]
    return results


def run_all(run_module, calls) -> list:
    """Independent module runs (name, args) side by side: each is a separate ansible process."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda call: run_module("borg_archive", call), calls))


class Env:
    """One test's world: a source tree, a local keyfile repository, borg's home, the passphrase."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.passphrase = "grus-it-" + secrets.token_hex(12)
        self.home = tmp_path / "borg-home"
        self.home.mkdir()
        self.src = make_source(tmp_path)
        self.repo = tmp_path / "repo"
        self.borg(["init", "--encryption", "keyfile-blake2", str(self.repo)])

    def args(self, **kwargs) -> dict:
        return dict({"repo": str(self.repo), "passphrase": self.passphrase, "base_dir": str(self.home)}, **kwargs)

    def borg(self, args, **kwargs):
        return borg_cli(args, self.passphrase, self.home, **kwargs)

    def names(self) -> list:
        return archive_names(self.repo, self.passphrase, self.home)

    def create(self, name, timestamp=None):
        extra = ["--timestamp", timestamp] if timestamp else []
        self.borg(["create", *extra, f"{self.repo}::{name}", str(self.src)])

    @property
    def src_in_archive(self) -> str:
        return str(self.src).lstrip("/")


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


# ---- present ------------------------------------------------------------------------------------


def test_create_is_idempotent_with_a_fixed_name(run_module, env):
    before = snapshot(env.repo)
    args = env.args(
        name="nightly",
        paths=[str(env.src)],
        exclude=["*.tmp"],
        exclude_if_present=[".nobackup"],
        files_cache="mtime,size",
        compression="zstd,3",
        comment="grus integration",
    )
    check, apply, again = four_times(run_module, args, after_check=lambda: snapshot(env.repo) == before)[:3]
    assert check.result["archive"] is None
    assert f"{env.src}/db/dump.bin" in check.result["diff"]["after"]

    assert apply.result["archive"]["name"] == "nightly"
    assert apply.result["archive"]["stats"]["original_size"] > 3 * 1024 * 1024
    assert f"A {env.src}/db/dump.bin" in apply.result["diff"]["after"]
    assert again.result["archive"]["id"] == apply.result["archive"]["id"]
    assert env.names() == ["nightly"]
    paths = archive_paths(env.repo, "nightly", env.passphrase, env.home)
    assert f"{env.src_in_archive}/db/dump.bin" in paths
    assert f"{env.src_in_archive}/www/current" in paths
    assert not any(p.endswith("cache.tmp") for p in paths)  # exclude
    assert not any("/logs" in p for p in paths)  # exclude_if_present
    comment = json.loads(env.borg(["info", "--json", f"{env.repo}::nightly"]).stdout)["archives"][0]["comment"]
    assert comment == "grus integration"


def test_placeholder_names_always_create(run_module, env):
    args = env.args(name="{hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}", paths=[str(env.src)])
    first = run_module("borg_archive", args)
    second = run_module("borg_archive", args)
    assert first.changed and second.changed
    assert first.result["archive"]["name"] != second.result["archive"]["name"]
    assert sorted(env.names()) == sorted([first.result["archive"]["name"], second.result["archive"]["name"]])
    assert "{" not in first.result["archive"]["name"]


def test_missing_source_fails_before_anything_is_written(run_module, env):
    before = snapshot(env.repo)
    result = run_module("borg_archive", env.args(name="partial", paths=[str(env.src), str(env.tmp / "unmounted")]))
    assert result.failed
    assert result.result["cause"] == "source_missing"
    assert str(env.repo) in result.result["msg"] and "unmounted" in result.result["msg"]
    assert snapshot(env.repo) == before
    assert env.names() == []


# ---- absent -------------------------------------------------------------------------------------


def test_delete_is_idempotent(run_module, env):
    env.create("keep")
    env.create("doomed")
    check, apply = four_times(
        run_module, env.args(name="doomed", state="absent"), after_check=lambda: env.names() == ["keep", "doomed"]
    )[:2]
    assert check.result["archive"]["name"] == "doomed"
    assert apply.result["append_only"] is False
    assert env.names() == ["keep"]


# ---- extracted ----------------------------------------------------------------------------------


def test_restore_round_trip_by_sha256(run_module, env):
    env.create("nightly")
    dest = env.tmp / "restore"
    strip = len(Path(env.src_in_archive).parts)
    args = env.args(
        name="nightly", state="extracted", dest=str(dest), paths=[env.src_in_archive], strip_components=strip
    )
    check, apply, again = four_times(run_module, args, after_check=lambda: not dest.exists())[:3]
    assert "db/dump.bin" in check.result["diff"]["after"]
    assert snapshot(dest) == snapshot(env.src)
    files = [p for p in env.src.rglob("*") if not p.is_dir()]
    assert apply.result["files_restored"] == len(files)
    assert apply.result["bytes_restored"] == sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
    assert again.result["files_restored"] == 0


def test_restore_refusals_leave_everything_unchanged(run_module, env):
    env.create("nightly")
    a_file = env.tmp / "not-a-dir"
    a_file.write_text("precious")
    busy = env.tmp / "busy"
    busy.mkdir()
    (busy / "other.txt").write_text("keep me")
    repo_before, busy_before = snapshot(env.repo), snapshot(busy)
    cases = [
        ({"dest": "/"}, "unsafe_dest"),
        ({"dest": str(a_file)}, "unsafe_dest"),
        ({"dest": str(env.tmp / "t1"), "paths": ["../../etc"]}, "invalid_input"),
        ({"dest": str(env.tmp / "t2"), "paths": ["/etc"]}, "invalid_input"),
        ({"dest": str(env.tmp / "t3"), "name": "no-such-archive"}, "archive_missing"),
        ({"dest": str(busy)}, "dest_not_empty"),
    ]
    results = run_all(
        run_module, [env.args(**dict({"name": "nightly", "state": "extracted"}, **extra)) for extra, _cause in cases]
    )
    for (extra, cause), result in zip(cases, results, strict=True):
        assert result.failed, extra
        assert result.result["cause"] == cause, result.result
        assert str(env.repo) in result.result["msg"]
    assert snapshot(env.repo) == repo_before
    assert a_file.read_text() == "precious"
    assert snapshot(busy) == busy_before
    assert not any((env.tmp / t).exists() for t in ("t1", "t2", "t3"))
    # force restores over a non-empty directory and leaves other files alone
    forced = run_module("borg_archive", env.args(name="nightly", state="extracted", dest=str(busy), force=True))
    assert forced.changed and (busy / "other.txt").read_text() == "keep me"
    assert (busy / env.src_in_archive / "db" / "dump.bin").read_bytes() == (env.src / "db" / "dump.bin").read_bytes()


# ---- pruned -------------------------------------------------------------------------------------


def test_prune_is_idempotent_and_guarded(run_module, env):
    for day in range(1, 6):
        env.create(f"day-{day}", timestamp=f"2026-11-0{day}T04:00:00")
    env.create("other-1", timestamp="2026-11-01T05:00:00")
    before = snapshot(env.repo)

    guarded, malformed = run_all(
        run_module,
        [
            env.args(state="pruned", keep_daily=2, match_archives="day-", max_deletions=2),
            env.args(state="pruned", keep_within="2 weeks"),
        ],
    )
    assert guarded.failed and guarded.result["cause"] == "max_deletions"
    assert "would delete 3 archives" in guarded.result["msg"]
    assert malformed.failed and malformed.result["cause"] == "invalid_input"
    assert str(env.repo) in malformed.result["msg"] and "keep_within" in malformed.result["msg"]
    assert snapshot(env.repo) == before

    args = env.args(state="pruned", keep_daily=2, match_archives="day-", max_deletions=3)
    check, apply, again = four_times(run_module, args, after_check=lambda: snapshot(env.repo) == before)[:3]
    assert [a["name"] for a in check.result["pruned"]] == ["day-3", "day-2", "day-1"]
    assert [a["name"] for a in check.result["kept"]] == ["day-5", "day-4"]
    assert check.result["diff"]["after"] == "day-4\nday-5\n"
    assert [a["name"] for a in apply.result["pruned"]] == ["day-3", "day-2", "day-1"]
    assert again.result["pruned"] == [] and [a["name"] for a in again.result["kept"]] == ["day-5", "day-4"]
    assert sorted(env.names()) == ["day-4", "day-5", "other-1"]  # the glob kept other sources out


# ---- listed -------------------------------------------------------------------------------------


def test_listed(run_module, env):
    env.create("first")
    env.create("second")
    checked = run_module("borg_archive", env.args(state="listed"), check=True)
    listed, files = run_all(
        run_module,
        [
            env.args(state="listed"),
            env.args(state="listed", name="first", paths=[f"{env.src_in_archive}/db"]),
        ],
    )
    for result in (checked, listed):
        assert not result.failed and not result.changed
        assert [a["name"] for a in result.result["archives"]] == ["first", "second"]
    assert not files.changed
    assert [f["path"] for f in files.result["files"]] == [
        f"{env.src_in_archive}/db",
        f"{env.src_in_archive}/db/dump.bin",
    ]
    assert files.result["files"][1]["size"] == 3 * 1024 * 1024


# ---- faults -------------------------------------------------------------------------------------


def test_wrong_passphrase_leaves_repository_identical(run_module, env):
    env.create("nightly")
    before = snapshot(env.repo)
    for result in run_all(
        run_module,
        [
            env.args(name="new", paths=[str(env.src)], passphrase="wrong-" + env.passphrase),
            env.args(name="nightly", state="absent", passphrase="wrong-" + env.passphrase),
        ],
    ):
        assert result.failed
        assert result.result["cause"] == "wrong_passphrase"
        assert f"wrong passphrase for repository {env.repo}" in result.result["msg"]
        assert snapshot(env.repo) == before


def unlocked(state: dict) -> dict:
    return {path: digest for path, digest in state.items() if not path.startswith("lock.")}


def test_locked_repository(run_module, env):
    env.create("nightly")
    holder = subprocess.Popen(
        ["borg", "with-lock", str(env.repo), "sleep", "30"],
        env=dict(os.environ, BORG_PASSPHRASE=env.passphrase, BORG_BASE_DIR=str(env.home)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (env.repo / "lock.exclusive").exists():
            assert holder.poll() is None and time.monotonic() < deadline, "borg with-lock did not take the lock"
            time.sleep(0.1)
        # The holder's own lock files (lock.exclusive/, lock.roster) are still being written when
        # lock.exclusive appears: compare everything else.
        before = unlocked(snapshot(env.repo))
        result = run_module("borg_archive", env.args(name="nightly", state="absent", lock_wait=1))
        assert result.failed
        assert result.result["cause"] == "lock_timeout"
        assert f"repository {env.repo} is locked" in result.result["msg"]
        assert unlocked(snapshot(env.repo)) == before
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        holder.wait(timeout=20)
    assert env.names() == ["nightly"]


def _scan_processes(stop: threading.Event, seen: set):
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        seen.add(handle.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
        time.sleep(0.005)


def test_passphrase_never_visible(run_module, env):
    # A vault variable or a lookup is how a passphrase reaches a task; a literal one on an ad-hoc
    # command line is in ansible's own argv already (see the doc fragment).
    pwfile = env.tmp / "passphrase"
    pwfile.write_text(env.passphrase)
    via_lookup = f"{{{{ lookup('ansible.builtin.file', '{pwfile}') }}}}"
    stop, seen = threading.Event(), set()
    scanner = threading.Thread(target=_scan_processes, args=(stop, seen), daemon=True)
    scanner.start()
    try:
        created = run_module(
            "borg_archive", env.args(name="scan", paths=[str(env.src)], compression="zstd,19", passphrase=via_lookup)
        )
    finally:
        stop.set()
        scanner.join()
    assert created.changed, created.result
    assert any(" create " in cmd and "::scan" in cmd for cmd in seen), "the scan never saw borg create"
    assert not any(env.passphrase in cmd for cmd in seen)
    assert env.passphrase not in created.stdout + created.stderr

    failed, literal_ok, literal_failed = run_all(
        run_module,
        [
            env.args(name="nope", state="extracted", dest=str(env.tmp / "o"), passphrase=via_lookup),
            env.args(state="listed"),
            env.args(name="nope", state="extracted", dest=str(env.tmp / "o")),
        ],
    )
    assert failed.failed and literal_failed.failed and not literal_ok.failed
    assert env.passphrase not in failed.stdout + failed.stderr
    # a literal passphrase (no_log) stays out of the module's result, failed or not
    for result in (literal_ok, literal_failed):
        assert env.passphrase not in json.dumps(result.result)
        assert env.passphrase not in result.stdout


def test_secret_in_the_command_line_is_refused_and_redacted(run_module, env):
    """A passphrase that occurs in a path would reach argv: refused, and redacted from the message."""
    repo = env.tmp / env.passphrase
    result = run_module("borg_archive", env.args(repo=str(repo), state="listed"))
    assert result.failed and result.result["cause"] == "secret_in_argv"
    assert env.passphrase not in json.dumps(result.result)
    assert not repo.exists()


# ---- over SSH -----------------------------------------------------------------------------------


def test_create_and_restore_over_ssh(run_module, env, sshd):
    path = env.tmp / "remote-repo"
    repo = ssh_repo(sshd, path)
    env.borg(["init", "--encryption", "keyfile-blake2", repo], rsh=sshd.rsh)
    args = env.args(repo=repo, rsh=sshd.rsh, name="nightly", paths=[str(env.src)], host_id="grus-it")
    four_times(run_module, args, diff=False)
    assert archive_names(repo, env.passphrase, env.home, rsh=sshd.rsh) == ["nightly"]
    dest = env.tmp / "restore"
    restored = run_module(
        "borg_archive",
        dict(
            args,
            state="extracted",
            dest=str(dest),
            paths=[env.src_in_archive],
            strip_components=len(Path(env.src_in_archive).parts),
        ),
    )
    assert restored.changed, restored.result
    assert snapshot(dest) == snapshot(env.src)


def test_unreachable_host(run_module, env, sshd):
    before = snapshot(env.repo)
    repo = f"ssh://{sshd.user}@127.0.0.1:{closed_port()}{env.repo}"
    # ssh takes the first -p it is given: the fixture's own port must not win over the URL's
    rsh = sshd.rsh.replace(f"-p {sshd.port} ", "")
    result = run_module("borg_archive", env.args(repo=repo, rsh=rsh, name="n", paths=[str(env.src)]))
    assert result.failed
    assert result.result["cause"] == "connection_closed"
    assert repo in result.result["msg"]
    assert_names_ssh_reason(result.result, "Connection refused")
    assert snapshot(env.repo) == before


def test_delete_through_append_only_forced_command_is_only_logical(run_module, env, sshd):
    path = env.tmp / "sarus-repo"
    repo = ssh_repo(sshd, path)
    env.borg(["init", "--encryption", "keyfile-blake2", repo], rsh=sshd.rsh)
    env.borg(["create", f"{repo}::keep", str(env.src)], rsh=sshd.rsh)
    (env.src / "db" / "victim-only.bin").write_bytes(os.urandom(512 * 1024))
    env.borg(["create", f"{repo}::victim", str(env.src)], rsh=sshd.rsh)
    expected = snapshot(env.src)
    sshd.authorize(f'restrict,command="borg serve --append-only --restrict-to-repository {path}"')
    try:
        before_delete = snapshot(path)
        segments_before = {k: v for k, v in before_delete.items() if k.startswith("data/")}
        assert not (path / "transactions").exists()
        args = env.args(repo=repo, rsh=sshd.rsh, name="victim", state="absent")
        # (the full check/apply/apply/check cycle of absent runs locally above; here what the forced command does)
        check = run_module("borg_archive", args, check=True)
        assert check.changed and snapshot(path) == before_delete
        deleted, again = run_module("borg_archive", args), run_module("borg_archive", args)
        assert deleted.changed and not again.changed, (deleted.result, again.result)
        warnings = " ".join(deleted.result.get("warnings", []))
        assert "only logical" in warnings and "append-only" in warnings
        assert archive_names(repo, env.passphrase, env.home, rsh=sshd.rsh) == ["keep"]
        after = snapshot(path)
        # append-only: every segment written before the delete is still there, byte for byte
        assert all(after.get(name) == digest for name, digest in segments_before.items())
        # the repository host logged the delete as an append-only transaction
        assert (path / "transactions").read_text().startswith("transaction ")

        # Recovery (DESIGN.md): on the repository host drop what came after the last good transaction ...
        for name in set(after) - set(segments_before):
            if name.startswith("data/") and after[name] != "dir":
                (path / name).unlink()
        for pattern in ("index.*", "hints.*", "integrity.*"):
            for stale in path.glob(pattern):
                stale.unlink()
        # ... and on the key holder forget the newer state borg remembers for this repository id.
        repo_id = next(
            line.split("=", 1)[1].strip()
            for line in (path / "config").read_text().splitlines()
            if line.startswith("id =")
        )
        shutil.rmtree(env.home / ".cache" / "borg" / repo_id)
        shutil.rmtree(env.home / ".config" / "borg" / "security" / repo_id)
        assert sorted(archive_names(repo, env.passphrase, env.home, rsh=sshd.rsh)) == ["keep", "victim"]
        dest = env.tmp / "recovered"
        dest.mkdir()
        strip = str(len(Path(env.src_in_archive).parts))
        env.borg(["extract", "--strip-components", strip, f"{repo}::victim"], rsh=sshd.rsh, cwd=dest)
        assert snapshot(dest) == expected
    finally:
        sshd.authorize("")
