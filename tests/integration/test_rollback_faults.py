"""A rollback that cannot make things worse, proven by fault injection against real borg 1.4 (issue 22).

The repository user is the real unprivileged ``nobody`` (the deployed ``borg-<repo>`` stands in this way): it
owns the repository and runs every borg command; the job runs as root and reaches it through setpriv, as the
unit does. The layout lives under a world-traversable directory (pytest's own temp root is 0700 root).
A repository gets two archives and an append-only delete of both, then a due compaction runs under the
unit's ``UMask=0077``: the archives are then only in the compaction's snapshot, so a rollback both removes
the repository's segments and links the snapshot's back. Faults:

* an unreadable source (a segment mode 000, a snapshot directory root 0700): refused, the path named,
  nothing changed;
* a link or a rename failing at the Nth call (a ``sitecustomize`` on the job's ``PYTHONPATH`` wraps
  ``os.link``/``os.rename`` in the process that runs as the repository user): every change undone;
* the process killed (SIGKILL) at the Nth rename: the next ``--restore-flag``, scheduled run or rollback
  reverts the journal first.

"The same as before": every file of the repository (borg's lock aside) with its inode and SHA-256, and
every directory; ``borg check --repository-only`` passes; then a plain rollback succeeds and restores
byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import snapshot
from test_compact_guard import CLIENT_KEYS, Host
from test_compaction import make_host

NOBODY = pwd.getpwnam("nobody")
SITECUSTOMIZE = """
import os, signal
_spec = os.environ.get("GRUS_TEST_FAULT")
if _spec and os.geteuid() != 0:  # only in the process that runs as the repository user (the apply)
    _name, _nth, _how = _spec.split(":")
    _real, _calls = getattr(os, _name), [0]

    def _faulty(*args, **kwargs):
        if "grus-rollback" in str(args[0]) + str(args[1]):  # the rollback's own links and renames, not borg's lock
            _calls[0] += 1
            if _calls[0] == int(_nth):
                if _how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(5, "injected fault", args[0])
        return _real(*args, **kwargs)

    setattr(os, _name, _faulty)
"""


def chown_nobody(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)


class World:
    """The repository host (root) and a key holder's borg (as nobody, locally) around one repository."""

    def __init__(self, base: Path):
        self.base = base
        self.host: Host = make_host(base)
        self.host.keys.write_text(self.host.render_keys(CLIENT_KEYS))
        self.inject = base / "inject"
        self.inject.mkdir()
        (self.inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.src = base / "src"
        self.src.mkdir()
        chown_nobody(self.host.repo, self.host.home / ".cache", self.host.home / ".config", base / "client")
        self.homes = 0

    def nobody(self, argv: list[str], env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["setpriv", "--reuid", "nobody", "--regid", str(NOBODY.pw_gid), "--init-groups", "--"]
        proc = subprocess.run(
            [*prefix, *argv], env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=300, check=False
        )
        if check:
            assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        return proc

    def borg(self, *args: str, fresh: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        home = self.base / "client"
        if fresh:  # the key holder after a rollback: cache and security record dropped
            self.homes += 1
            home = self.base / f"client-{self.homes}"
            chown_nobody(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env.update(
            BORG_BASE_DIR=str(home),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return self.nobody(["borg", *args], env=env, check=check)

    def env(self, fault: str | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BORG_", "GRUS_", "PYTHON"))}
        env.update(HOME=str(self.host.home), PYTHONPATH=f"{self.inject}:{self.base / 'lib'}")
        if fault:
            env["GRUS_TEST_FAULT"] = fault
        return env

    def job(self, argv: list[str], fault: str | None = None, umask: int = 0o022) -> subprocess.CompletedProcess:
        """The shipped entry point as root, as the unit or an operator starts it (umask as given)."""
        return subprocess.run(
            ["/usr/bin/python3", "-m", "grus_backup._compaction_tools", *argv],
            env=self.env(fault),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
            preexec_fn=lambda: os.umask(umask),
        )

    def tool(self, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
        state = str(self.host.home / "compaction")
        return self.job([*args, "--run-as", "nobody", "--state-dir", state], fault=fault)

    def unit(self, line: str = "ExecStart=", **overrides) -> subprocess.CompletedProcess:
        """A line of grus-borg-compact@.service, repository user nobody, under the unit's UMask=0077."""
        argv = self.host.unit_argv(7, 0, line=line, **overrides)[1:]
        argv[argv.index("--run-as") + 1] = "nobody"
        return self.job(argv, umask=0o077)

    def rollback(self, label: str, fault: str | None = None) -> subprocess.CompletedProcess:
        (ordinal,) = [t["ordinal"] for t in self.audit()["transactions"] if t["label"] == label]
        return self.tool("--rollback", str(self.host.repo), "--to-ordinal", str(ordinal), fault=fault)

    def audit(self) -> dict:
        proc = self.tool("--audit-json", str(self.host.repo))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def snapshots(self) -> list[Path]:
        return sorted((self.host.home / "compaction" / "snapshots").iterdir())


def repository_state(repo: Path) -> dict:
    """Every file (borg's lock aside) with its inode and SHA-256, and every directory."""
    return snapshot(repo, inodes=True, skip_prefix="lock.")


@pytest.fixture
def world():
    base = Path(tempfile.mkdtemp(prefix="grus-rollback-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield World(base)
    finally:
        shutil.rmtree(base)


def incident(world: World) -> tuple[str, str]:
    """Two archives, an append-only delete of both, a due compaction (the unit's umask): only the snapshot holds them.

    Returns the label of the last transaction before the delete and the SHA-256 of a file of archive b.
    """
    repo = str(world.host.repo)
    world.borg("init", "--encryption", "none", "--append-only", repo)
    for i in range(12):
        (world.src / f"f{i:02d}").write_bytes(os.urandom(4096))
    for name in ("a", "b"):
        (world.src / "changing").write_bytes(os.urandom(64 * 1024))
        world.src.chmod(0o755)
        for path in world.src.iterdir():
            path.chmod(0o644)
        world.borg("create", f"{repo}::{name}", str(world.src))
    expected = hashlib.sha256((world.src / "changing").read_bytes()).hexdigest()
    label = world.audit()["transactions"][-1]["label"]
    world.borg("delete", "--glob-archives", "*", repo)
    compacted = world.unit(repository_host_audit_max_deleted_share=2)
    assert compacted.returncode == 0, (compacted.stdout, compacted.stderr)
    assert "compacted" in compacted.stdout
    assert world.borg("list", "--short", repo).stdout == b""
    return label, expected


def differences(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def assert_as_before(world: World, before: dict) -> dict:
    """As it was (inodes too), and borg check passes; returns the state after the check for the next comparison.

    ``borg check --repository-only`` itself rewrites ``config`` (SaveFile: same content, a new inode), so after
    it only the config's content is compared.
    """
    assert differences(before, repository_state(world.host.repo)) == {}
    assert world.borg("check", "--repository-only", str(world.host.repo), fresh=True).returncode == 0
    after = repository_state(world.host.repo)
    assert after["config"][1] == before["config"][1]
    assert differences(dict(before, config=None), dict(after, config=None)) == {}
    return after


def assert_rolls_back(world: World, label: str, expected: str) -> None:
    done = world.rollback(label)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "borg check --repository-only passed" in done.stdout
    repo = str(world.host.repo)
    assert world.borg("list", "--short", repo, fresh=True).stdout.split() == [b"a", b"b"]
    restored = world.borg("extract", "--stdout", f"{repo}::b", str(world.src / "changing").lstrip("/"), fresh=True)
    assert hashlib.sha256(restored.stdout).hexdigest() == expected
    assert not (world.host.repo / "grus-rollback").exists()


def test_a_snapshot_taken_under_umask_077_is_readable_by_the_repository_user(world):
    """The unit's UMask=0077 (and an operator's any umask) leaves no snapshot the rollback cannot read."""
    incident(world)  # the compaction's snapshot, taken by the job under UMask=0077
    done = world.tool("--restore-flag", str(world.host.repo))  # an operator's shell may have any umask too
    assert done.returncode == 0, done.stderr
    from ansible_collections.grus.backup.plugins.module_utils import _compaction_job as job

    old = os.umask(0o077)
    try:
        job.take_snapshot(str(world.host.repo), str(world.host.home / "compaction"), "before-rollback", "nobody")
    finally:
        os.umask(old)
    snapshots = world.snapshots()
    assert [s.name.split("-", 1)[1] for s in snapshots] == ["compaction", "before-rollback"]
    read_all = (
        "import os, sys\n"
        "n = 0\n"
        "for top, _d, files in os.walk(sys.argv[1], onerror=lambda e: sys.exit(f'{e.filename}: {e.strerror}')):\n"
        "    for f in files:\n"
        "        open(os.path.join(top, f), 'rb').read(8); n += 1\n"
        "print(n)\n"
    )
    for snap in snapshots:
        proc = world.nobody(["/usr/bin/python3", "-c", read_all, str(snap)], check=False)
        assert proc.returncode == 0, (snap, proc.stderr)
        assert int(proc.stdout) > 5  # segments, config, README, transactions, grus-snapshot.json
        for top, _dirs, files in os.walk(snap):
            assert os.stat(top).st_mode & 0o777 == 0o750 and os.stat(top).st_gid == NOBODY.pw_gid, top
            for name in files:
                stat = os.stat(os.path.join(top, name))
                if stat.st_uid == 0:  # a copy (the segments are links: the repository user's own files)
                    assert stat.st_mode & 0o777 == 0o640 and stat.st_gid == NOBODY.pw_gid, (top, name)


def test_an_unreadable_source_is_refused_and_nothing_changes(world):
    label, expected = incident(world)
    (snapshot,) = world.snapshots()
    repo_inodes = {p.stat().st_ino for p in (world.host.repo / "data").glob("*/*")}
    linked = [p for p in sorted((snapshot / "data").glob("*/*")) if p.stat().st_ino not in repo_inodes]
    assert linked, "the snapshot holds no segment the repository lost: nothing would be linked"
    before = repository_state(world.host.repo)

    linked[-1].chmod(0)
    refused = world.rollback(label)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert f"{linked[-1]}: cannot be read (Permission denied)" in refused.stderr
    assert "as nobody" in refused.stderr and "Nothing was changed" in refused.stderr
    assert world.snapshots() == [snapshot]  # the before-rollback snapshot of an unchanged state is not kept
    before = assert_as_before(world, before)
    linked[-1].chmod(0o600)

    # The demo's failure: a snapshot directory root 0700 (UMask=0077, no chmod).
    data_dir = linked[-1].parent
    data_dir.chmod(0o700)
    refused = world.rollback(label)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert str(data_dir) in refused.stderr and "Permission denied" in refused.stderr
    assert_as_before(world, before)
    data_dir.chmod(0o750)

    assert_rolls_back(world, label, expected)


def test_a_link_or_rename_failing_half_way_leaves_the_repository_as_it_was(world):
    label, expected = incident(world)
    before = repository_state(world.host.repo)
    for fault in ("link:2:fail", "rename:1:fail", "rename:4:fail", "rename:8:fail"):
        failed = world.rollback(label, fault=fault)
        assert failed.returncode == 2, (fault, failed.stdout, failed.stderr)
        assert "injected fault" in failed.stderr, (fault, failed.stderr)
        assert "Nothing was changed" in failed.stderr or "every change was undone" in failed.stderr, failed.stderr
        before = assert_as_before(world, before)
    assert_rolls_back(world, label, expected)


@pytest.mark.parametrize("how", ["restore-flag", "scheduled-run", "rollback"])
def test_a_rollback_killed_half_way_is_reverted_first_by_the_next_run(world, how):
    label, expected = incident(world)
    (ordinal,) = [t["ordinal"] for t in world.audit()["transactions"] if t["label"] == label]
    before = repository_state(world.host.repo)
    killed = world.rollback(label, fault="rename:6:kill")
    assert killed.returncode == 2 and "rc -9" in killed.stderr, (killed.stdout, killed.stderr)
    journal = json.loads((world.host.repo / "grus-rollback" / "journal.json").read_text())
    assert len(journal["ops"]) > 6  # killed half way (5 renames done), not at the end
    assert not (world.host.repo / "config").exists()  # aside: no client writes to a half-swapped repository
    refused = world.borg("list", str(world.host.repo), fresh=True, check=False)
    assert refused.returncode != 0 and b"not a valid repository" in refused.stderr

    if how == "rollback":  # the operator runs the same rollback again: reverted first, then done
        done = world.tool("--rollback", str(world.host.repo), "--to-ordinal", str(ordinal))
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "reverted an interrupted rollback" in done.stdout and " 5 of " in done.stdout, done.stdout
        repo = str(world.host.repo)
        assert world.borg("list", "--short", repo, fresh=True).stdout.split() == [b"a", b"b"]
        return
    if how == "restore-flag":  # the unit's ExecStartPre= (and ExecStopPost=)
        nxt = world.unit(line="ExecStartPre=")
    else:  # the daily run, not due: it reverts, audits, and stops there (never compacts a half-swapped one)
        nxt = world.unit(repository_host_compact_interval_days=30, repository_host_audit_max_deleted_share=2)
    assert nxt.returncode == 0, (nxt.stdout, nxt.stderr)
    assert "reverted an interrupted rollback" in nxt.stdout and " 5 of " in nxt.stdout, nxt.stdout
    assert_as_before(world, before)
    assert_rolls_back(world, label, expected)
