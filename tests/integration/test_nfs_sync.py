"""grus.backup.nfs_sync with real rsync: locally, over SSH, and through an rrsync-restricted key."""

from __future__ import annotations

import calendar
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SERVICE_UID = 4242
SERVICE_GID = 4242
ACL_UID = 4343
MARKER = ".grus-sync.json"
RRSYNC = "/usr/bin/rrsync"
COLLECTIONS_PATH = Path(__file__).resolve().parents[2] / ".build" / "collections"


# ---- helpers ------------------------------------------------------------------------------------


def make_source(root: Path) -> Path:
    """Three small volumes with what service volumes hold: service uids, modes, ACLs, xattrs, links."""
    src = root / "volumes"
    www = src / "www"
    (www / "html").mkdir(parents=True)
    (www / "html" / "index.html").write_text("<h1>grus</h1>\n")
    (www / "html" / "app.js").write_text("console.log('grus');\n" * 50)
    (www / "cache.tmp").write_text("scratch\n")
    os.link(www / "html" / "index.html", www / "html" / "index-hardlink.html")
    os.symlink("html/index.html", www / "current")
    db = src / "db"
    db.mkdir()
    (db / "data.sql").write_bytes(os.urandom(4096))
    (db / "secret-ish.conf").write_text("password_file=/run/db.pw\n")
    logs = src / "connection-logs"
    logs.mkdir()
    (logs / "access.log").write_text("GET /\n" * 100)
    for path in (www, www / "html", *www.rglob("*"), db, *db.rglob("*")):
        os.lchown(path, SERVICE_UID, SERVICE_GID)
    os.chmod(db, 0o750)  # noqa: S103 - a service volume mode to preserve
    os.chmod(db / "data.sql", 0o640)
    os.chmod(db / "secret-ish.conf", 0o600)
    subprocess.run(["setfacl", "-m", f"u:{ACL_UID}:r", str(db / "data.sql")], check=True)
    subprocess.run(["setfacl", "-d", "-m", f"u:{ACL_UID}:rx", str(db)], check=True)
    subprocess.run(["setfattr", "-n", "user.grus", "-v", "volume-db", str(db / "data.sql")], check=True)
    return src


def tree_state(root: Path) -> dict:
    """Everything that a sync could change under ``root``: names, types, owners, modes, times, data, ACLs."""
    state = {}
    if not root.exists():
        return state
    for path in sorted([root, *root.rglob("*")]):
        st = os.lstat(path)
        entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink]
        if stat.S_ISREG(st.st_mode):
            entry.append(hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            entry.append(os.readlink(path))
        if not stat.S_ISLNK(st.st_mode):
            entry.append(getfacl(path))
        state[str(path.relative_to(root))] = entry
    return state


def getfacl(path: Path) -> str:
    out = subprocess.run(
        ["getfacl", "--numeric", "--omit-header", "--absolute-names", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def volume_content(root: Path) -> dict:
    """Like tree_state but without the top directory's own times (they differ by design)."""
    return {k: v for k, v in tree_state(root).items() if k != "."}


def sync_args(src: Path, dest, lock: Path, **extra) -> dict:
    args = {"src": str(src), "dest": str(dest), "lock": str(lock), "exclude": ["/connection-logs", "*.tmp"]}
    args.update(extra)
    return args


def assert_preserved(src: Path, dest: Path) -> None:
    """Owners, modes, ACLs, xattrs and hard links of the synced volumes are the source's."""
    for volume in ("www", "db"):
        expected = {k: v for k, v in volume_content(src / volume).items() if k != "cache.tmp"}
        assert expected == volume_content(dest / volume) or _explain(src / volume, dest / volume)
    data = dest / "db" / "data.sql"
    st = os.stat(data)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SERVICE_UID, SERVICE_GID, 0o640)
    assert f"user:{ACL_UID}:r--" in getfacl(data)
    assert f"default:user:{ACL_UID}:r-x" in getfacl(dest / "db")
    xattr = subprocess.run(
        ["getfattr", "--only-values", "-n", "user.grus", str(data)], capture_output=True, text=True, check=True
    )
    assert xattr.stdout == "volume-db"
    index = os.stat(dest / "www" / "html" / "index.html")
    twin = os.stat(dest / "www" / "html" / "index-hardlink.html")
    assert index.st_ino == twin.st_ino and index.st_nlink == 2
    assert os.readlink(dest / "www" / "current") == "html/index.html"


def _explain(a: Path, b: Path):
    left = {k: v for k, v in volume_content(a).items() if k != "cache.tmp"}
    right = volume_content(b)
    diff = {k: (left.get(k), right.get(k)) for k in set(left) | set(right) if left.get(k) != right.get(k)}
    raise AssertionError(f"{a} and {b} differ: {diff}")


def marker_of(dest: Path) -> dict:
    return json.loads((dest / MARKER).read_text())


def assert_marker(marker: dict, volumes, rsync_rc: int = 0) -> None:
    assert marker["format"] == 2 and marker["state"] == "done"
    assert marker["volumes"] == sorted(volumes)
    assert marker["rsync_exit_code"] == rsync_rc
    assert marker["source_host"] == os.uname().nodename
    assert marker["time"].endswith("Z") and marker["time"] >= marker["started"]
    age = time.time() - calendar.timegm(time.strptime(marker["time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert -5 < age < 120
    assert marker["files"] > 0 and marker["bytes_total"] > 0


# ---- local ---------------------------------------------------------------------------------------


def test_local_check_apply_idempotent_and_preserving(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "nfs" / "balearica"
    dest.parent.mkdir()
    args = sync_args(src, dest, tmp_path / "sync.lock")

    check = run_module("nfs_sync", args, check=True, diff=True)
    assert not check.failed, check.result
    assert check.changed
    assert not dest.exists(), "check mode must not create anything"
    assert ">f+++++++++ db/data.sql" in check.result["diff"]["prepared"]
    assert check.result["marker"] is None

    apply = run_module("nfs_sync", args)
    assert not apply.failed, apply.result
    assert apply.changed
    assert apply.result["volumes"] == ["db", "www"]
    assert apply.result["excluded_volumes"] == ["connection-logs"]
    assert apply.result["rsync_status"] == "ok"
    assert apply.result["stats"]["files_transferred"] == 4  # the hard link is not sent twice
    assert apply.result["stats"]["bytes_total"] > 4096
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "db", "www"]
    assert not (dest / "www" / "cache.tmp").exists()
    assert_preserved(src, dest)
    marker = marker_of(dest)
    assert marker == apply.result["marker"]
    assert_marker(marker, ["www", "db"])
    assert marker["files_transferred"] == 4
    assert stat.S_IMODE(os.stat(dest / MARKER).st_mode) == 0o644
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")], "marker temp file left behind"

    before = volume_content(dest)
    again = run_module("nfs_sync", args)
    assert not again.failed, again.result
    assert not again.changed, again.result["changes"]
    assert again.result["changes"] == []
    assert again.result["stats"]["files_transferred"] == 0
    assert marker_of(dest)["time"] >= marker["time"], "the marker is refreshed on every run"
    assert {k: v for k, v in volume_content(dest).items() if k != MARKER} == {
        k: v for k, v in before.items() if k != MARKER
    }

    check_again = run_module("nfs_sync", args, check=True, diff=True)
    assert not check_again.failed, check_again.result
    assert not check_again.changed, check_again.result["changes"]
    assert "diff" not in check_again.result or not check_again.result["diff"]["prepared"]


def test_changes_and_deletions_mirrored_delete_false_keeps(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed

    (src / "www" / "html" / "app.js").unlink()
    (src / "db" / "data.sql").write_bytes(b"new data\n")
    keep = run_module("nfs_sync", sync_args(src, dest, lock, delete=False), diff=True)
    assert not keep.failed, keep.result
    assert keep.changed
    assert (dest / "www" / "html" / "app.js").exists(), "delete: false keeps files gone from src"
    assert (dest / "db" / "data.sql").read_bytes() == b"new data\n"
    assert not any(line.startswith("*deleting") for line in keep.result["changes"])

    state = tree_state(dest)
    check = run_module("nfs_sync", sync_args(src, dest, lock), check=True, diff=True)
    assert check.changed and "*deleting   www/html/app.js" in check.result["diff"]["prepared"]
    assert tree_state(dest) == state, "check mode changed the copy"

    mirror = run_module("nfs_sync", sync_args(src, dest, lock))
    assert not mirror.failed, mirror.result
    assert mirror.changed and "*deleting   www/html/app.js" in mirror.result["changes"]
    assert not (dest / "www" / "html" / "app.js").exists()
    assert mirror.result["stats"]["files_deleted"] == 1
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).changed


def test_volume_gone_from_src_is_not_deleted_and_excluded_volume_untouched(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    (dest / "connection-logs").mkdir(parents=True)
    (dest / "connection-logs" / "old.log").write_text("kept\n")
    (dest / "other-client").mkdir()
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed
    assert (dest / "connection-logs" / "old.log").read_text() == "kept\n"
    assert not (dest / "connection-logs" / "access.log").exists()

    www_before = tree_state(dest / "www")
    shutil.rmtree(src / "www")  # discovered volumes: www is simply no longer sent
    result = run_module("nfs_sync", sync_args(src, dest, lock))
    assert not result.failed, result.result
    assert result.result["volumes"] == ["db"]
    assert not result.changed
    assert tree_state(dest / "www") == www_before
    assert (dest / "other-client").is_dir()
    assert marker_of(dest)["volumes"] == ["db"]


# ---- guards -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing_src", "does not exist"),
        ("missing_volume", "missing under"),
        ("unmounted_volume", "are empty"),
        ("unmounted_src", "holds no volume"),
    ],
)
def test_guards_refuse_and_leave_the_copy_untouched(run_module, tmp_path, case, expect):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed
    args = sync_args(src, dest, lock)
    if case == "missing_src":
        shutil.rmtree(src)
    elif case == "missing_volume":
        args["volumes"] = ["www", "db", "mail"]
    elif case == "unmounted_volume":
        # The disk holding db is not mounted: its mount point is an empty directory.
        shutil.rmtree(src / "db")
        (src / "db").mkdir()
    elif case == "unmounted_src":
        shutil.rmtree(src)
        src.mkdir()
    before = tree_state(dest)
    for check in (True, False):
        refused = run_module("nfs_sync", args, check=check)
        assert refused.failed and refused.result["kind"] == "guard", refused.result
        assert expect in refused.result["msg"]
        assert "cmd" not in refused.result, "rsync must not have run"
        assert tree_state(dest) == before


def test_allow_empty_syncs_an_intentionally_empty_volume(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed
    shutil.rmtree(src / "db")
    (src / "db").mkdir()
    result = run_module("nfs_sync", sync_args(src, dest, lock, allow_empty=True))
    assert not result.failed, result.result
    assert result.changed
    assert list((dest / "db").iterdir()) == []


def test_max_delete_exceeded_fails_before_deleting_anything(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed
    (src / "www" / "html" / "app.js").unlink()
    (src / "db" / "secret-ish.conf").unlink()
    (src / "www" / "current").unlink()
    (src / "db" / "new.sql").write_text("new\n")
    before = tree_state(dest)
    for check in (True, False):
        result = run_module("nfs_sync", sync_args(src, dest, lock, max_delete=2), check=check)
        assert result.failed, result.result
        assert result.result["kind"] == "max_delete"
        assert result.result["rsync_status"] == "max_delete" and result.result["rsync_rc"] == 25
        assert "max_delete=2" in result.result["msg"]
        assert tree_state(dest) == before, "nothing may change when max_delete is exceeded"
    within = run_module("nfs_sync", sync_args(src, dest, lock, max_delete=3))
    assert not within.failed, within.result
    assert within.result["stats"]["files_deleted"] == 3
    assert (dest / "db" / "new.sql").exists()


def test_partial_transfer_reported_distinctly(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    assert not run_module("nfs_sync", sync_args(src, dest, lock)).failed
    stuck = dest / "db" / "data.sql"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        (src / "db" / "data.sql").write_bytes(b"changed\n")
        (src / "www" / "html" / "index.html").write_text("<h1>new</h1>\n")
        marker_before = (dest / MARKER).read_text()
        result = run_module("nfs_sync", sync_args(src, dest, lock))
        assert result.failed
        assert result.result["kind"] == "partial" and result.result["rsync_rc"] == 23
        assert "partial transfer" in result.result["msg"] and "exit 23" in result.result["msg"]
        assert (dest / "www" / "html" / "index.html").read_text() == "<h1>new</h1>\n"
        marker = marker_of(dest)
        assert marker_before != (dest / MARKER).read_text()
        # no fresh "done" marker after a partial sync: the backup reads "failed" and the reason
        assert marker["state"] == "failed" and "time" not in marker, marker
        assert marker["error"].startswith("partial: partial transfer") and "exit 23" in marker["error"]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)


# ---- lock ----------------------------------------------------------------------------------------


def test_lock_held_elsewhere_fails_clearly_after_lock_timeout(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    lock = tmp_path / "sync.lock"
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write(f"{os.getpid()}\n")
        holder.flush()
        started = time.monotonic()
        result = run_module("nfs_sync", sync_args(src, dest, lock, lock_timeout=1))
        waited = time.monotonic() - started
    assert result.failed and result.result["kind"] == "lock", result.result
    assert f"another sync holds the lock {lock} (pid {os.getpid()})" in result.result["msg"]
    assert "lock_timeout" in result.result["msg"]
    assert waited >= 1
    assert not dest.exists()


def test_concurrent_syncs_are_serialised(run_module, tmp_path):
    src = make_source(tmp_path)
    (src / "www" / "big.bin").write_bytes(os.urandom(384 * 1024))
    dest = tmp_path / "copy"
    # 384 KiB at 128 KiB/s: the transfer takes about 3 s, long enough to overlap without the lock.
    args = sync_args(src, dest, tmp_path / "sync.lock", bwlimit="128", lock_timeout=60)
    results = [None, None]

    def go(index):
        results[index] = run_module("nfs_sync", args)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None and not r.failed for r in results), results
    # Serialised: the second one found the copy complete and transferred nothing.
    assert sorted(r.changed for r in results) == [False, True], [r.result.get("changes") for r in results]
    transferred = sorted(r.result["stats"]["files_transferred"] for r in results)
    assert transferred == [0, 5]


# ---- the scheduled job's entry point shares the code path ------------------------------------


def test_cli_runs_the_same_rsync_as_the_module(run_module, tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "copy"
    args = sync_args(src, dest, tmp_path / "sync.lock", max_delete=100)
    config = tmp_path / "nfs-sync.json"
    config.write_text(json.dumps(args))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH))
    cli = [sys.executable, "-m", "ansible_collections.grus.backup.plugins.module_utils._rsync", "--config", str(config)]

    printed = subprocess.run([*cli, "--print-argv"], env=env, capture_output=True, text=True, check=True)
    module = run_module("nfs_sync", args, check=True)
    assert json.loads(printed.stdout) == [a for a in module.result["cmd"] if a != "--dry-run"]

    first = subprocess.run(cli, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "marker" in first.stdout
    assert_preserved(src, dest)
    assert_marker(marker_of(dest), ["www", "db"])
    assert not run_module("nfs_sync", args).changed, "the module sees the CLI's sync as complete"

    shutil.rmtree(src / "db")
    (src / "db").mkdir()
    refused = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "FAILED (guard)" in refused.stderr


# ---- over SSH -------------------------------------------------------------------------------------


def _no_secret_in(text: str, sshd) -> None:
    private = Path(sshd.identity).read_text()
    body = "".join(private.strip().splitlines()[1:-1])
    assert "PRIVATE KEY" not in text
    assert body[:40] not in text


def test_over_ssh_check_apply_idempotent(run_module, tmp_path, sshd):
    src = make_source(tmp_path)
    dest = tmp_path / "export" / "balearica"
    dest.parent.mkdir()
    args = sync_args(src, f"{sshd.user}@{sshd.host}:{dest}", tmp_path / "sync.lock", rsh=sshd.rsh, max_delete=50)
    sshd.authorize()

    check = run_module("nfs_sync", args, check=True)
    assert not check.failed, check.result
    assert check.changed and not dest.exists()

    apply = run_module("nfs_sync", args)
    assert not apply.failed, apply.result
    assert apply.changed
    assert apply.result["marker_path"] == f"{sshd.user}@{sshd.host}:{dest}/{MARKER}"
    assert_preserved(src, dest)
    assert_marker(marker_of(dest), ["www", "db"])
    assert stat.S_IMODE(os.stat(dest / MARKER).st_mode) == 0o644

    again = run_module("nfs_sync", args)
    assert not again.failed and not again.changed, again.result
    check_again = run_module("nfs_sync", args, check=True)
    assert not check_again.failed and not check_again.changed, check_again.result

    (src / "www" / "html" / "app.js").unlink()
    mirror = run_module("nfs_sync", args)
    assert mirror.changed and not (dest / "www" / "html" / "app.js").exists()
    for run in (check, apply, again, mirror):
        _no_secret_in(run.stdout + run.stderr, sshd)
    _no_secret_in((dest / MARKER).read_text(), sshd)


@pytest.mark.skipif(not os.path.exists(RRSYNC), reason="rrsync is not installed")
def test_over_ssh_through_an_rrsync_restricted_key(run_module, tmp_path, sshd):
    src = make_source(tmp_path)
    export = tmp_path / "export"
    (export / "balearica").mkdir(parents=True)
    (export / "antigone-only").mkdir()
    (export / "antigone-only" / "keep").write_text("not for the sync client\n")
    lock = tmp_path / "sync.lock"
    sshd.authorize(f'restrict,command="{RRSYNC} {export}"')
    try:
        args = sync_args(src, f"{sshd.user}@{sshd.host}:balearica", lock, rsh=sshd.rsh, max_delete=50)
        check = run_module("nfs_sync", args, check=True)
        assert not check.failed and check.changed, check.result
        apply = run_module("nfs_sync", args)
        assert not apply.failed, apply.result
        assert apply.changed
        assert_preserved(src, export / "balearica")
        assert_marker(marker_of(export / "balearica"), ["www", "db"])
        again = run_module("nfs_sync", args)
        assert not again.failed and not again.changed, (again.result.get("msg"), again.result.get("kind"))
        check_again = run_module("nfs_sync", args, check=True)
        assert not check_again.failed and not check_again.changed, check_again.result

        # The key gets rsync inside the export and nothing else: no shell, no way out.
        shell = subprocess.run(
            [*sshd.rsh.split(), f"{sshd.user}@{sshd.host}", "id"], capture_output=True, text=True, check=False
        )
        assert shell.returncode != 0 and "uid=" not in shell.stdout
        escape = run_module("nfs_sync", sync_args(src, f"{sshd.user}@{sshd.host}:../outside", lock, rsh=sshd.rsh))
        # rrsync refuses the path already for the max_delete guard's dry run (max_delete is on by default),
        # the first rsync of a sync: nothing synced, no marker written
        assert escape.failed and escape.result["kind"] == "error", escape.result
        assert "rsync failed" in escape.result["msg"], escape.result
        # without the guard, rrsync refuses it for the marker written before the sync
        unguarded = run_module(
            "nfs_sync", sync_args(src, f"{sshd.user}@{sshd.host}:../outside", lock, rsh=sshd.rsh, delete=False)
        )
        assert unguarded.failed and unguarded.result["kind"] == "marker", unguarded.result
        assert "before syncing" in unguarded.result["msg"] and "nothing was synced" in unguarded.result["msg"]
        assert not (tmp_path / "outside").exists()
        assert (export / "antigone-only" / "keep").read_text() == "not for the sync client\n"
    finally:
        sshd.authorize()


# ---- the key holder's receiving guard (grus-sync-receive in front of rrsync) -----------------------


# What grus-sync-receive imports (its closure, as test_shipped_files.py proves for the role).
RECEIVE_SHIPPED = ("_sync_receive.py", "_unexpected.py")


def receiver_command(tmp_path: Path, directory: Path, *extra: str) -> str:
    """The forced command as the key_holder role writes it: the shipped module behind a small wrapper."""
    package = tmp_path / "receiver-lib" / "grus_backup"
    if not package.exists():
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for name in RECEIVE_SHIPPED:
            shutil.copy(COLLECTIONS_PATH / "ansible_collections/grus/backup/plugins/module_utils" / name, package)
    wrapper = tmp_path / "grus-sync-receive"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={package.parent} exec /usr/bin/python3 -m grus_backup._sync_receive "$@"\n'
    )
    wrapper.chmod(0o755)
    return " ".join([str(wrapper), "--dir", str(directory), "--rrsync", RRSYNC, *extra])


def _two_clients(tmp_path: Path):
    export = tmp_path / "export"
    (export / "balearica").mkdir(parents=True)
    (export / "other").mkdir()
    (export / "other" / "keep").write_bytes(os.urandom(8192))
    return export


@pytest.mark.skipif(not os.path.exists(RRSYNC), reason="rrsync is not installed")
def test_receiver_refuses_a_client_over_its_quota_and_lets_one_within_it_sync(run_module, tmp_path, sshd):
    src = make_source(tmp_path)
    export = _two_clients(tmp_path)
    (export / "balearica" / "old-bulk").write_bytes(os.urandom(3 << 20))
    other_before, mine_before = tree_state(export / "other"), tree_state(export / "balearica")
    lock = tmp_path / "sync.lock"
    args = sync_args(src, f"{sshd.user}@{sshd.host}:", lock, rsh=sshd.rsh, max_delete=50)
    try:
        # 3 MiB already there, a 1 MiB quota: refused before anything moves, with the cause named.
        sshd.authorize(f'restrict,command="{receiver_command(tmp_path, export / "balearica", "--quota", "1M")}"')
        over = run_module("nfs_sync", args)
        assert over.failed and over.result["kind"] == "quota", over.result
        assert "the key holder refused the sync (quota)" in over.result["msg"]
        assert "over its quota of 1.0 MiB" in over.result["msg"] and str(export / "balearica") in over.result["msg"]
        unguarded = run_module("nfs_sync", {**args, "delete": False})  # the marker goes first: refused too
        assert unguarded.failed and unguarded.result["kind"] == "quota", unguarded.result
        assert tree_state(export / "balearica") == mine_before
        assert tree_state(export / "other") == other_before

        # The scheduled job says the same, by name, and exits 2.
        config = tmp_path / "nfs-sync.json"
        config.write_text(json.dumps(args))
        job = "ansible_collections.grus.backup.plugins.module_utils._rsync"
        cli = subprocess.run(
            [sys.executable, "-m", job, "--config", str(config)],
            env={**os.environ, "PYTHONPATH": str(COLLECTIONS_PATH)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert cli.returncode == 2 and "nfs-sync: FAILED (quota): the key holder refused the sync" in cli.stderr

        # Within its quota the same client syncs as before, owners, modes, ACLs and xattrs kept.
        sshd.authorize(f'restrict,command="{receiver_command(tmp_path, export / "balearica", "--quota", "64M")}"')
        within = run_module("nfs_sync", args)
        assert not within.failed and within.changed, within.result
        assert_preserved(src, export / "balearica")
        assert_marker(marker_of(export / "balearica"), ["www", "db"])
        assert tree_state(export / "other") == other_before
    finally:
        sshd.authorize()


@pytest.mark.skipif(not os.path.exists(RRSYNC), reason="rrsync is not installed")
def test_receiver_refuses_when_the_export_is_below_its_reserve(run_module, tmp_path, sshd):
    src = make_source(tmp_path)
    export = _two_clients(tmp_path)
    other_before = tree_state(export / "other")
    args = sync_args(src, f"{sshd.user}@{sshd.host}:", tmp_path / "sync.lock", rsh=sshd.rsh, max_delete=50)
    try:
        # No file system here has 99.9 % free: the reserve is not met, nothing is transferred.
        command = receiver_command(tmp_path, export / "balearica", "--min-free", "99.9%")
        sshd.authorize(f'restrict,command="{command}"')
        refused = run_module("nfs_sync", args)
        assert refused.failed and refused.result["kind"] == "key_holder_full", refused.result
        assert "below its reserve" in refused.result["msg"] and "nothing was transferred" in refused.result["msg"]
        assert sorted(os.listdir(export / "balearica")) == []
        assert tree_state(export / "other") == other_before
    finally:
        sshd.authorize()


@pytest.mark.skipif(not os.path.exists(RRSYNC), reason="rrsync is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the export")
def test_receiver_stops_a_transfer_that_eats_into_the_reserve(run_module, tmp_path, sshd):
    """A 24 MiB volume into a 32 MiB export that must keep 16 MiB free: stopped midway, the space given back."""
    src = tmp_path / "volumes"
    (src / "bulk").mkdir(parents=True)
    (src / "bulk" / "big.bin").write_bytes(os.urandom(24 << 20))
    export = tmp_path / "export"
    export.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "grus-test-export", str(export)], check=True)
    try:
        (export / "balearica").mkdir()
        (export / "other").mkdir()
        (export / "other" / "keep").write_bytes(os.urandom(8192))
        other_before = tree_state(export / "other")
        free_before = os.statvfs(export).f_bavail * os.statvfs(export).f_frsize
        command = receiver_command(tmp_path, export / "balearica", "--min-free", "16M", "--interval", "0.1")
        sshd.authorize(f'restrict,command="{command}"')
        # bwlimit: the receiver looks at the free space every 0.1 s; the file must not arrive between two looks.
        args = sync_args(src, f"{sshd.user}@{sshd.host}:", tmp_path / "sync.lock", rsh=sshd.rsh, bwlimit="4M")
        stopped = run_module("nfs_sync", args)
        assert stopped.failed and stopped.result["kind"] == "key_holder_full", stopped.result
        assert "stopped the transfer" in stopped.result["msg"], stopped.result
        assert not (export / "balearica" / "bulk" / "big.bin").exists()
        # rsync's partial file is gone: the export has its space back (the progress marker aside).
        free_after = os.statvfs(export).f_bavail * os.statvfs(export).f_frsize
        assert free_after >= free_before - (1 << 20), (free_before, free_after)
        assert tree_state(export / "other") == other_before
        marker = marker_of(export / "balearica")
        assert marker["state"] in ("running", "failed")
    finally:
        sshd.authorize()
        subprocess.run(["umount", str(export)], check=False)
