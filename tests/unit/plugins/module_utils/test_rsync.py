"""Unit tests for the private rsync core: argv, parsing, exit codes, guards, lock, marker, procedure."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _rsync
from ansible_collections.grus.backup.plugins.module_utils._rsync import select_volumes, sync, write_marker
from ansible_collections.grus.backup.plugins.module_utils._rsync_options import (
    DEFAULT_IO_TIMEOUT,
    DEFAULT_MAX_DELETE,
    SyncError,
    SyncOptions,
    build_rsync_argv,
    dest_dir,
    is_excluded,
    split_remote,
)
from ansible_collections.grus.backup.plugins.module_utils._rsync_output import (
    Change,
    classify_exit,
    parse_itemized,
    parse_stats,
)
from ansible_collections.grus.backup.plugins.module_utils._runner import CommandNotFound, Result
from ansible_collections.grus.backup.plugins.module_utils._sync_lock import hold_lock

STATS = """
Number of files: 8 (reg: 4, dir: 3, link: 1)
Number of created files: 8 (reg: 4, dir: 3, link: 1)
Number of deleted files: 2 (reg: 2)
Number of regular files transferred: 3
Total file size: 1234567 bytes
Total transferred file size: 6543 bytes
Literal data: 6543 bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 7361
Total bytes received: 109

sent 7361 bytes  received 109 bytes  14940.00 bytes/sec
total size is 1234567  speedup is 165.27
"""

ITEMIZED = """\
cd+++++++++ db/
>f+++++++++ db/x
.d..t...... www/
>f.st...... www/index.html
.f...p..... www/mode-only
.f....og... www/owner-only
.f.......a. www/acl-only
cL+++++++++ www/current -> html/index.html
hf+++++++++ www/b => www/a
*deleting   www/old file.txt
.f          www/unchanged
sending incremental file list
"""


def opts(tmp_path=None, **kw):
    base = {"src": "/srv/volumes", "dest": "/mnt/antigone/balearica", "lock": None}
    base.update(kw)
    return SyncOptions(**base)


# ---- option -> argv -----------------------------------------------------------------------------


def test_default_argv_is_archive_with_acls_xattrs_hardlinks_numeric_ids_relative_delete():
    argv = build_rsync_argv(opts(), ["www", "db"])
    assert argv == [
        "rsync",
        "--archive",
        "--hard-links",
        "--acls",
        "--xattrs",
        "--numeric-ids",
        "--relative",
        "--delete",
        "--max-delete=1000",
        "--timeout=300",
        "--itemize-changes",
        "--stats",
        "--no-human-readable",
        "--exclude=/.grus-sync.json",
        "/srv/volumes/./www",
        "/srv/volumes/./db",
        "/mnt/antigone/balearica/",
    ]


def test_every_option_maps_to_its_flag():
    argv = build_rsync_argv(
        opts(
            delete=False,
            max_delete=10,
            preserve_acls=False,
            preserve_xattrs=False,
            preserve_hardlinks=False,
            numeric_ids=False,
            bwlimit="1.5M",
            checksum=True,
            rsh="ssh -p 2222 -i /etc/grus-backup/key",
            io_timeout=300,
            dry_run=True,
            exclude=["/connection-logs", "*.tmp"],
            marker_name="fresh.json",
        ),
        ["www"],
    )
    for absent in ("--delete", "--acls", "--xattrs", "--hard-links", "--numeric-ids"):
        assert absent not in argv
    for present in (
        "--max-delete=10",
        "--checksum",
        "--bwlimit=1.5M",
        "--rsh=ssh -p 2222 -i /etc/grus-backup/key",
        "--timeout=300",
        "--dry-run",
        "--exclude=/fresh.json",
        "--exclude=/connection-logs",
        "--exclude=*.tmp",
    ):
        assert present in argv
    # Excludes come before the paths, the destination is last.
    assert argv.index("--exclude=*.tmp") < argv.index("/srv/volumes/./www")
    assert argv[-1] == "/mnt/antigone/balearica/"


def test_max_delete_zero_is_passed_not_dropped():
    assert "--max-delete=0" in build_rsync_argv(opts(max_delete=0), ["www"])


def test_no_itemize_keeps_stats():
    argv = build_rsync_argv(opts(itemize=False), ["www"])
    assert "--itemize-changes" not in argv and "--stats" in argv


def test_argv_needs_volumes():
    with pytest.raises(SyncError) as err:
        build_rsync_argv(opts(), [])
    assert err.value.kind == "usage"


def test_argv_uses_listed_volumes_by_default():
    assert build_rsync_argv(opts(volumes=["mail"]))[-2] == "/srv/volumes/./mail"


def test_rsh_is_one_argument_never_split_by_us():
    argv = build_rsync_argv(opts(rsh="ssh -o 'ProxyCommand=none' -p 22"), ["www"])
    assert "--rsh=ssh -o 'ProxyCommand=none' -p 22" in argv


def test_src_trailing_slash_and_relative_paths_are_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = opts(src="volumes/", dest="copy/")
    argv = build_rsync_argv(options, ["www"])
    assert argv[-2] == f"{tmp_path}/volumes/./www"
    assert argv[-1] == f"{tmp_path}/copy/"


@pytest.mark.parametrize(
    ("dest", "host", "path", "as_dir"),
    [
        ("/mnt/x", None, "/mnt/x", "/mnt/x/"),
        ("/mnt/x/", None, "/mnt/x/", "/mnt/x/"),
        ("/mnt/a:b", None, "/mnt/a:b", "/mnt/a:b/"),
        ("antigone:/srv/nfs/bal", "antigone", "/srv/nfs/bal", "antigone:/srv/nfs/bal/"),
        ("sync@antigone:volumes/", "sync@antigone", "volumes/", "sync@antigone:volumes/"),
        ("sync@antigone:", "sync@antigone", "", "sync@antigone:"),
        ("root@[::1]:/srv", "root@[::1]", "/srv", "root@[::1]:/srv/"),
    ],
)
def test_remote_and_local_destinations(dest, host, path, as_dir):
    assert split_remote(dest) == (host, path)
    if host is not None:
        assert dest_dir(dest) == as_dir


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dest": "/"}, "into /"),
        ({"dest": "antigone::module"}, "daemon"),
        ({"dest": "rsync://antigone/module"}, "daemon"),
        ({"volumes": ["../etc"]}, "invalid volume"),
        ({"volumes": ["a/b"]}, "invalid volume"),
        ({"volumes": [".."]}, "invalid volume"),
        ({"max_delete": -1}, "max_delete"),
        ({"bwlimit": "fast"}, "bwlimit"),
        ({"bwlimit": "10; rm -rf /"}, "bwlimit"),
        ({"marker_name": "sub/marker"}, "marker_name"),
        ({"marker_name": ".."}, "marker_name"),
        ({"lock_timeout": -1}, "lock_timeout"),
        ({"io_timeout": -5}, "io_timeout"),
        ({"exclude": [""]}, "exclude"),
    ],
)
def test_invalid_options_are_refused(changes, message):
    with pytest.raises(SyncError) as err:
        opts(**changes)
    assert err.value.kind == "usage"
    assert message in err.value.message


def test_from_dict_takes_module_names_and_refuses_unknown():
    options = SyncOptions.from_dict({"src": "/srv/v", "dest": "/mnt/d", "max_delete": None, "volumes": ["a", "a"]})
    # None (an option not given) is the default: a wipe guard and an I/O timeout, never unlimited
    assert options.max_delete == DEFAULT_MAX_DELETE == 1000 and options.delete is True
    assert options.io_timeout == DEFAULT_IO_TIMEOUT == 300
    assert options.volumes == ["a"]
    with pytest.raises(SyncError, match="unknown sync option"):
        SyncOptions.from_dict({"src": "/srv/v", "dest": "/mnt/d", "passphrase": "x"})
    with pytest.raises(SyncError, match="'dest' is required"):
        SyncOptions.from_dict({"src": "/srv/v"})


def test_empty_lock_and_rsh_mean_none():
    options = opts(lock="", rsh="  ")
    assert options.lock is None and options.rsh is None


# ---- parsing ---------------------------------------------------------------------------------------


def test_parse_itemized_keeps_changes_and_drops_noise():
    changes = parse_itemized(ITEMIZED + STATS)
    assert [c.path for c in changes] == [
        "db/",
        "db/x",
        "www/",
        "www/index.html",
        "www/mode-only",
        "www/owner-only",
        "www/acl-only",
        "www/current",
        "www/b",
        "www/old file.txt",
    ]
    assert changes[7].target == "html/index.html"
    assert changes[8].target == "www/a"
    assert changes[9].is_deletion and changes[9].code == "*deleting"
    assert not changes[1].is_deletion


def test_change_line_round_trips():
    for line in ITEMIZED.splitlines()[:10]:
        (change,) = parse_itemized(line)
        assert change.line == line


def test_parse_itemized_of_nothing():
    assert parse_itemized("") == []
    assert parse_itemized(STATS) == []
    assert parse_itemized(None) == []


def test_parse_stats():
    stats = parse_stats(STATS)
    assert stats == {
        "files": 8,
        "files_created": 8,
        "files_deleted": 2,
        "files_transferred": 3,
        "bytes_total": 1234567,
        "bytes_transferred": 6543,
        "bytes_literal": 6543,
        "bytes_matched": 0,
        "file_list_size": 0,
        "bytes_sent": 7361,
        "bytes_received": 109,
    }


@pytest.mark.parametrize("grouped", ["1,234,567", "1.234.567", "1 234 567", "1'234'567", "1\u202f234\u202f567"])
def test_parse_stats_tolerates_any_digit_grouping(grouped):
    text = STATS.replace("Total file size: 1234567 bytes", f"Total file size: {grouped} bytes")
    assert parse_stats(text)["bytes_total"] == 1234567


def test_parse_stats_of_a_dry_run():
    stats = parse_stats(STATS.replace("speedup is 165.27", "speedup is 165.27 (DRY RUN)"))
    assert stats["files_transferred"] == 3


@pytest.mark.parametrize(
    ("rc", "status"),
    [
        (0, "ok"),
        (24, "vanished"),
        (23, "partial"),
        (25, "max_delete"),
        (1, "error"),
        (11, "error"),
        (12, "error"),
        (30, "error"),
        (255, "error"),
        (99, "error"),
    ],
)
def test_exit_code_classes(rc, status):
    assert classify_exit(rc)[0] == status


def test_exit_messages_are_specific():
    assert "vanished" in classify_exit(24)[1]
    assert "partial transfer due to error" in classify_exit(23)[1]
    assert "--max-delete" in classify_exit(25)[1]
    assert "SSH" in classify_exit(255)[1]
    assert classify_exit(99)[1] == "unknown error"


@pytest.mark.parametrize(
    ("name", "patterns", "excluded"),
    [
        ("connection-logs", ["connection-logs"], True),
        ("connection-logs", ["/connection-logs"], True),
        ("connection-logs", ["/connection-logs/"], True),
        ("connection-logs", ["conn*"], True),
        ("connection-logs", ["connection-logs/*.gz"], False),
        ("www", ["/connection-logs", "*.tmp"], False),
        ("www", [], False),
    ],
)
def test_is_excluded(name, patterns, excluded):
    assert is_excluded(name, patterns) is excluded


# ---- guards -------------------------------------------------------------------------------------


@pytest.fixture
def volumes_dir(tmp_path):
    src = tmp_path / "volumes"
    for name in ("www", "db", "connection-logs"):
        (src / name).mkdir(parents=True)
        (src / name / "f").write_text(name)
    (src / "lost+found").mkdir()
    (src / "README").write_text("not a volume")
    os.symlink(src / "www", src / "www-link")
    return src


def guard(src, **kw):
    return select_volumes(opts(src=str(src), dest=str(src.parent / "copy"), **kw))


def test_discovers_directories_skipping_links_files_lost_found_and_excluded(volumes_dir):
    assert guard(volumes_dir, exclude=["/connection-logs"]) == (["db", "www"], ["connection-logs"])
    assert guard(volumes_dir) == (["connection-logs", "db", "www"], [])


def test_listed_volumes_keep_their_order_and_excluded_are_dropped(volumes_dir):
    assert guard(volumes_dir, volumes=["www", "connection-logs", "db"], exclude=["connection-logs"]) == (
        ["www", "db"],
        ["connection-logs"],
    )


@pytest.mark.parametrize(
    ("prepare", "kw", "message"),
    [
        (lambda s: s.rename(s.parent / "gone"), {}, "does not exist"),
        (lambda s: None, {"volumes": ["www", "mail"]}, "volume(s) mail missing"),
        (lambda s: None, {"volumes": ["www-link"]}, "is a symlink"),
        (lambda s: None, {"volumes": ["README"]}, "not a directory"),
        (lambda s: (s / "db" / "f").unlink(), {}, "volume(s) db under"),
        (lambda s: (s / "db" / "f").unlink(), {"volumes": ["db"]}, "are empty"),
        (lambda s: None, {"exclude": ["*"]}, "every volume"),
        (lambda s: None, {"volumes": []}, "empty list"),
    ],
)
def test_guards_refuse(volumes_dir, prepare, kw, message):
    prepare(volumes_dir)
    with pytest.raises(SyncError) as err:
        guard(volumes_dir, **kw)
    assert err.value.kind == "guard"
    assert message in err.value.message


def test_src_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SyncError, match="not a directory"):
        select_volumes(opts(src=str(tmp_path / "file"), dest=str(tmp_path / "copy")))


def test_empty_src_refused_unless_allowed(tmp_path):
    (tmp_path / "mnt").mkdir()
    with pytest.raises(SyncError, match="holds no volume"):
        select_volumes(opts(src=str(tmp_path / "mnt"), dest=str(tmp_path / "copy")))
    assert select_volumes(opts(src=str(tmp_path / "mnt"), dest=str(tmp_path / "copy"), allow_empty=True)) == ([], [])


def test_empty_volume_allowed_with_allow_empty(volumes_dir):
    (volumes_dir / "db" / "f").unlink()
    assert guard(volumes_dir, allow_empty=True)[0] == ["connection-logs", "db", "www"]


def test_empty_excluded_volume_is_not_a_reason_to_refuse(volumes_dir):
    (volumes_dir / "connection-logs" / "f").unlink()
    assert guard(volumes_dir, exclude=["connection-logs"])[0] == ["db", "www"]


@pytest.mark.parametrize("dest", ["volumes", "volumes/www/copy", "."])
def test_local_dest_overlapping_src_is_refused(volumes_dir, dest):
    with pytest.raises(SyncError, match="overlap"):
        select_volumes(opts(src=str(volumes_dir), dest=str(volumes_dir.parent / dest)))


def test_remote_dest_skips_the_overlap_check(volumes_dir):
    assert select_volumes(opts(src=str(volumes_dir), dest=f"antigone:{volumes_dir}"))[0]


# ---- lock ----------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_times_out_with_the_holder_pid(tmp_path):
    path = str(tmp_path / "sync.lock")
    with hold_lock(path, 1):
        assert Path(path).read_text().strip() == str(os.getpid())
        with pytest.raises(SyncError) as err, hold_lock(path, 0.3, poll=0.05):
            pass
    assert err.value.kind == "lock"
    assert f"another sync holds the lock {path} (pid {os.getpid()})" in err.value.message
    assert "0.3 s" in err.value.message
    with hold_lock(path, 0):  # released
        pass


def test_lock_held_by_another_open_file_blocks(tmp_path):
    path = tmp_path / "sync.lock"
    with open(path, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(SyncError, match="another sync holds the lock"), hold_lock(str(path), 0):
            pass


def test_lock_in_a_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(SyncError) as err, hold_lock(str(tmp_path / "no" / "sync.lock"), 1):
        pass
    assert err.value.kind == "lock" and "cannot open the lock file" in err.value.message


def test_no_lock_path_means_no_lock():
    with hold_lock(None, 0) as held:
        assert held is None


# ---- marker ---------------------------------------------------------------------------------------


def test_local_marker_is_written_atomically(tmp_path):
    dest = tmp_path / "copy"
    options = opts(src=str(tmp_path / "v"), dest=str(dest))
    marker = _rsync.build_marker(options, ["www"], {"files": 3, "bytes_total": 10}, 0, 0, 3600)
    assert marker["time"] == "1970-01-01T01:00:00Z" and marker["started"] == "1970-01-01T00:00:00Z"
    path = write_marker(options, marker)
    assert path == str(dest / ".grus-sync.json")
    assert json.loads((dest / ".grus-sync.json").read_text()) == marker
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(dest) == [".grus-sync.json"]


def test_marker_has_no_rsh(tmp_path):
    options = opts(src="/srv/v", dest=str(tmp_path), rsh="ssh -i /root/.ssh/secret_key", source_host="bal")
    marker = _rsync.build_marker(options, ["www"], {}, 24, 0, 0)
    assert "secret_key" not in json.dumps(marker)
    assert marker["source_host"] == "bal" and marker["rsync_exit_code"] == 24


def test_remote_marker_goes_through_rsync_into_dest(tmp_path):
    calls = []

    def runner(argv, **_kw):
        calls.append(argv)
        local = argv[-2]
        assert os.path.basename(local) == ".grus-sync.json"
        assert json.loads(Path(local).read_text())["volumes"] == ["www"]
        return Result(argv, 0, "", "")

    options = opts(dest="sync@antigone:balearica", rsh="ssh -p 2222", io_timeout=30)
    marker = _rsync.build_marker(options, ["www"], {}, 0, 0, 0)
    assert write_marker(options, marker, runner=runner) == "sync@antigone:balearica/.grus-sync.json"
    (argv,) = calls
    assert argv[:4] == ["rsync", "--perms", "--times", "--ignore-times"]
    assert "--rsh=ssh -p 2222" in argv and "--timeout=30" in argv
    assert argv[-1] == "sync@antigone:balearica/"


def test_remote_marker_failure_raises(tmp_path):
    options = opts(dest="antigone:x")
    marker = _rsync.build_marker(options, [], {}, 0, 0, 0)
    with pytest.raises(OSError, match="rsync exit 255"):
        write_marker(options, marker, runner=lambda argv, **_: Result(argv, 255, "", "ssh: connect refused"))


# ---- the procedure, with a fake rsync -----------------------------------------------------------


class FakeRsync:
    """Answers rsync calls from a script: a list of (rc, stdout, stderr), one per call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, **_kw):
        self.calls.append(argv)
        if not self.answers:
            raise AssertionError(f"unexpected call {argv}")
        rc, out, err = self.answers.pop(0)
        return Result(argv, rc, out, err)


@pytest.fixture
def setup(volumes_dir, tmp_path):
    dest = tmp_path / "copy"
    dest.mkdir()

    def make(**kw):
        # No max_delete here: one rsync call per sync (the preflight dry run has tests of its own).
        base = {
            "src": str(volumes_dir),
            "dest": str(dest),
            "lock": str(tmp_path / "lock"),
            "source_host": "bal",
            "max_delete": None,
        }
        base.update(kw)
        return SyncOptions(**base)

    return make, dest


def test_sync_ok_writes_marker_and_reports(setup):
    make, dest = setup
    fake = FakeRsync((0, ITEMIZED + STATS, ""))
    result = sync(make(exclude=["connection-logs"]), runner=fake)
    assert result.changed and result.rsync_status == "ok" and result.rsync_rc == 0
    assert result.volumes == ["db", "www"] and result.excluded_volumes == ["connection-logs"]
    assert result.stats["files_transferred"] == 3 and result.stats["elapsed_seconds"] >= 0
    assert len(fake.calls) == 1 and "--dry-run" not in fake.calls[0]
    marker = json.loads((dest / ".grus-sync.json").read_text())
    assert marker == result.marker
    assert marker["files"] == 8 and marker["bytes_total"] == 1234567 and marker["rsync_exit_code"] == 0
    assert result.marker_path == str(dest / ".grus-sync.json")
    as_dict = result.to_dict()
    assert as_dict["changes"][0] == "cd+++++++++ db/"


def test_sync_without_changes_is_not_changed_but_refreshes_marker(setup):
    make, dest = setup
    result = sync(make(), runner=FakeRsync((0, STATS, "")))
    assert not result.changed and result.changes == []
    assert (dest / ".grus-sync.json").exists()


def test_dry_run_writes_no_marker(setup):
    make, dest = setup
    fake = FakeRsync((0, ITEMIZED + STATS, ""))
    result = sync(make(dry_run=True), runner=fake)
    assert result.changed and result.dry_run
    assert "--dry-run" in fake.calls[0]
    assert result.marker is None and not (dest / ".grus-sync.json").exists()


def test_marker_false_writes_none(setup):
    make, dest = setup
    result = sync(make(marker=False), runner=FakeRsync((0, STATS, "")))
    assert result.marker is None and os.listdir(dest) == []


def test_vanished_files_are_a_warning_and_recorded_in_the_marker(setup):
    make, dest = setup
    result = sync(make(), runner=FakeRsync((24, STATS, "file has vanished: www/x")))
    assert result.rsync_status == "vanished"
    assert result.warnings and "exit 24" in result.warnings[0]
    assert json.loads((dest / ".grus-sync.json").read_text())["rsync_exit_code"] == 24


def test_partial_transfer_fails_distinctly_without_marker(setup):
    make, dest = setup
    with pytest.raises(SyncError) as err:
        sync(make(), runner=FakeRsync((23, ITEMIZED + STATS, 'rsync: open "x" failed: Permission denied')))
    assert err.value.kind == "partial"
    assert "partial transfer" in err.value.message and "exit 23" in err.value.message
    assert "Permission denied" in err.value.message
    assert err.value.result.changed and err.value.result.rsync_rc == 23
    marker = json.loads((dest / ".grus-sync.json").read_text())
    # no "done" marker: the backup sees a failed sync, not a fresh copy
    assert marker["state"] == "failed" and "time" not in marker
    assert marker["error"].startswith("partial: partial transfer") and marker["failed"] >= marker["started"]


@pytest.mark.parametrize(("rc", "words"), [(255, "SSH"), (12, "protocol data stream"), (11, "file I/O")])
def test_hard_errors_fail_with_rsync_meaning(setup, rc, words):
    make, dest = setup
    with pytest.raises(SyncError) as err:
        sync(make(), runner=FakeRsync((rc, "", "boom")))
    assert err.value.kind == "error"
    assert f"exit {rc}" in err.value.message and words in err.value.message and "boom" in err.value.message
    marker = json.loads((dest / ".grus-sync.json").read_text())
    assert marker["state"] == "failed" and "time" not in marker and f"exit {rc}" in marker["error"]


def test_max_delete_overflow_is_refused_by_the_dry_run_before_anything_happens(setup):
    make, dest = setup
    fake = FakeRsync((25, "*deleting   www/a\n", "Deletions stopped due to --max-delete limit (4 skipped)"))
    with pytest.raises(SyncError) as err:
        sync(make(max_delete=1), runner=fake)
    assert err.value.kind == "max_delete"
    assert "max_delete=1" in err.value.message and "nothing was changed" in err.value.message
    assert len(fake.calls) == 1 and "--dry-run" in fake.calls[0] and "--max-delete=1" in fake.calls[0]
    assert err.value.result.rsync_rc == 25
    assert not (dest / ".grus-sync.json").exists()


def test_max_delete_within_limit_runs_dry_then_real(setup):
    make, _dest = setup
    fake = FakeRsync((0, "*deleting   www/a\n" + STATS, ""), (0, "*deleting   www/a\n" + STATS, ""))
    result = sync(make(max_delete=5), runner=fake)
    assert [("--dry-run" in argv) for argv in fake.calls] == [True, False]
    assert [a for a in fake.calls[0] if a != "--dry-run"] == fake.calls[1]
    assert result.changed


def test_max_delete_hit_during_the_real_run_still_fails(setup):
    make, _dest = setup
    fake = FakeRsync((0, STATS, ""), (25, STATS, ""))
    with pytest.raises(SyncError) as err:
        sync(make(max_delete=5), runner=fake)
    assert err.value.kind == "max_delete" and "exit 25" in err.value.message


def test_no_dry_run_preflight_without_delete_or_in_check_mode(setup):
    make, _dest = setup
    for kw in ({"delete": False}, {"dry_run": True}):
        fake = FakeRsync((0, STATS, ""))
        sync(make(max_delete=1, **kw), runner=fake)
        assert len(fake.calls) == 1


def test_preflight_hard_error_is_reported(setup):
    make, _dest = setup
    with pytest.raises(SyncError) as err:
        sync(make(max_delete=1), runner=FakeRsync((255, "", "Connection refused")))
    assert err.value.kind == "error" and "Connection refused" in err.value.message


def test_guard_runs_before_rsync(setup, volumes_dir):
    make, _dest = setup
    (volumes_dir / "www" / "f").unlink()
    fake = FakeRsync()
    with pytest.raises(SyncError) as err:
        sync(make(), runner=fake)
    assert err.value.kind == "guard" and fake.calls == []


def test_lock_contention_stops_before_rsync(setup, tmp_path):
    make, _dest = setup
    fake = FakeRsync()
    with open(tmp_path / "lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(SyncError) as err:
            sync(make(lock_timeout=0), runner=fake)
    assert err.value.kind == "lock" and fake.calls == []


def test_missing_rsync_is_clear(setup):
    make, _dest = setup

    def runner(argv, **_kw):
        raise CommandNotFound(argv[0])

    with pytest.raises(SyncError, match="rsync not found"):
        sync(make(), runner=runner)


def test_marker_failure_after_sync_is_its_own_kind(setup, monkeypatch):
    make, _dest = setup

    def broken(*_a, **_kw):
        raise OSError("No space left on device")

    written = []

    def broken_at_the_end(options, marker, runner=None):
        if marker["state"] == "done":
            raise OSError("No space left on device")
        written.append(marker["state"])

    monkeypatch.setattr(_rsync, "write_marker", broken_at_the_end)
    with pytest.raises(SyncError) as err:
        sync(make(), runner=FakeRsync((0, ITEMIZED + STATS, "")))
    assert err.value.kind == "marker" and "synced, but" in err.value.message
    assert err.value.result.changed and written == ["running"]


def test_start_marker_failure_stops_before_rsync(setup, monkeypatch):
    make, _dest = setup

    def broken(*_a, **_kw):
        raise OSError("No space left on device")

    monkeypatch.setattr(_rsync, "write_marker", broken)
    fake = FakeRsync((0, ITEMIZED + STATS, ""))
    with pytest.raises(SyncError) as err:
        sync(make(), runner=fake)
    assert err.value.kind == "marker" and "before syncing" in err.value.message
    assert "nothing was synced" in err.value.message and fake.calls == []


def test_running_marker_is_written_before_rsync_and_replaced_after(setup):
    make, dest = setup
    seen = []

    class Watching(FakeRsync):
        def __call__(self, argv, **kwargs):
            seen.append(json.loads((dest / ".grus-sync.json").read_text()))
            return super().__call__(argv, **kwargs)

    result = sync(make(), runner=Watching((0, ITEMIZED + STATS, "")))
    assert seen[0]["state"] == "running" and seen[0]["started"].endswith("Z") and "time" not in seen[0]
    final = json.loads((dest / ".grus-sync.json").read_text())
    assert final["state"] == "done" and final == result.marker and final["format"] == 2


def test_allow_empty_with_no_volume_skips_rsync_and_still_marks(tmp_path):
    (tmp_path / "empty").mkdir()
    dest = tmp_path / "copy"
    options = SyncOptions(src=str(tmp_path / "empty"), dest=str(dest), lock=None, allow_empty=True)
    fake = FakeRsync()
    result = sync(options, runner=fake)
    assert fake.calls == [] and not result.changed and result.volumes == []
    assert json.loads((dest / ".grus-sync.json").read_text())["volumes"] == []


# ---- CLI ---------------------------------------------------------------------------------------------


def write_config(tmp_path, volumes_dir, **kw):
    config = tmp_path / "nfs-sync.json"
    data = {"src": str(volumes_dir), "dest": str(tmp_path / "copy"), "lock": None}
    data.update(kw)
    config.write_text(json.dumps(data))
    return str(config)


def test_cli_print_argv_equals_build_rsync_argv(tmp_path, volumes_dir, capsys):
    config = write_config(tmp_path, volumes_dir, exclude=["/connection-logs"], bwlimit="100")
    assert _rsync.main(["--config", config, "--print-argv"]) == 0
    printed = json.loads(capsys.readouterr().out)
    options = SyncOptions.from_dict(json.loads(Path(config).read_text()))
    assert printed == build_rsync_argv(options, ["db", "www"])


@pytest.mark.parametrize(("rc", "exit_code"), [(0, 0), (24, 1), (23, 2), (25, 2), (255, 2)])
def test_cli_exit_codes(tmp_path, volumes_dir, capsys, rc, exit_code):
    config = write_config(tmp_path, volumes_dir)
    # The scheduled sync has the max_delete guard by default: its dry run first, then the sync.
    fake = FakeRsync((0, STATS, ""), (rc, STATS, "err"))
    assert _rsync.main(["--config", config, "--json"], runner=fake) == exit_code
    assert "--dry-run" in fake.calls[0] and "--max-delete=1000" in fake.calls[0]
    assert "--dry-run" not in fake.calls[1] and "--timeout=300" in fake.calls[1]
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert data["failed"] is (exit_code == 2)
    assert data["rsync_rc"] == rc


def test_cli_dry_run_flag_and_guard_failure(tmp_path, volumes_dir, capsys):
    config = write_config(tmp_path, volumes_dir)
    fake = FakeRsync((0, STATS, ""))
    assert _rsync.main(["--config", config, "--dry-run"], runner=fake) == 0
    assert "--dry-run" in fake.calls[0]
    assert "dry run" in capsys.readouterr().out
    (volumes_dir / "db" / "f").unlink()
    assert _rsync.main(["--config", config], runner=FakeRsync()) == 2
    assert "FAILED (guard)" in capsys.readouterr().err


def test_cli_bad_config(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text("[1, 2]")
    assert _rsync.main(["--config", str(config)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
    assert _rsync.main(["--config", str(tmp_path / "missing.json")]) == 2


def test_change_repr_helpers():
    assert Change("*deleting", "www/a").line == "*deleting   www/a"
    assert Change("hf+++++++++", "www/b", "www/a").line == "hf+++++++++ www/b => www/a"
