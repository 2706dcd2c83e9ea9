"""Unit tests for the nfs_sync module: options reach the core unchanged, results and failures map back."""

from __future__ import annotations

import dataclasses

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.grus.backup.plugins.module_utils._rsync_options import SyncError, SyncOptions
from ansible_collections.grus.backup.plugins.module_utils._rsync_output import Change, SyncResult
from ansible_collections.grus.backup.plugins.modules import nfs_sync


class ModuleExit(Exception):
    def __init__(self, failed, result):
        super().__init__(result)
        self.failed = failed
        self.result = result


@pytest.fixture(autouse=True)
def capture_exits(monkeypatch):
    def exit_json(self, **kwargs):
        raise ModuleExit(False, kwargs)

    def fail_json(self, msg, **kwargs):
        raise ModuleExit(True, {"msg": msg, **kwargs})

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


@pytest.fixture
def fake_sync(monkeypatch):
    """Replace the core with a recorder; ``outcome`` is a SyncResult to return or a SyncError to raise."""
    state = {"options": None, "outcome": None}

    def fake(options):
        state["options"] = options
        outcome = state["outcome"]
        if isinstance(outcome, SyncError):
            raise outcome  # pylint: disable=raising-bad-type  # set per test
        return outcome

    monkeypatch.setattr(nfs_sync, "sync", fake)
    return state


def a_result(**kw):
    base = dict(
        changed=True,
        dry_run=False,
        volumes=["db", "www"],
        excluded_volumes=["connection-logs"],
        argv=["rsync", "--archive", "/srv/v/./db", "/srv/v/./www", "/mnt/d/"],
        rsync_rc=0,
        rsync_status="ok",
        changes=[Change(">f+++++++++", "db/x"), Change("*deleting", "www/old")],
        stats={"files": 3, "files_transferred": 1, "elapsed_seconds": 0.1},
        marker={"time": "2026-11-23T12:00:00Z", "rsync_exit_code": 0},
        marker_path="/mnt/d/.grus-sync.json",
    )
    base.update(kw)
    return SyncResult(**base)


def run(args, check=False, diff=False):
    full = dict(args)
    if check:
        full["_ansible_check_mode"] = True
    if diff:
        full["_ansible_diff"] = True
    with patch_module_args(full), pytest.raises(ModuleExit) as exc:
        nfs_sync.main()
    return exc.value


ARGS = {"src": "/srv/v", "dest": "/mnt/d"}


def test_every_module_option_is_a_sync_option():
    """The module adds nothing of its own: the scheduled job's config takes the same names."""
    names = {f.name for f in dataclasses.fields(SyncOptions)}
    assert set(nfs_sync.ARGUMENT_SPEC) <= names
    defaults = SyncOptions(src="/s", dest="/d")
    for name, spec in nfs_sync.ARGUMENT_SPEC.items():
        if "default" in spec:
            assert spec["default"] == getattr(defaults, name), name


def test_defaults_reach_the_core(fake_sync):
    fake_sync["outcome"] = a_result()
    done = run(ARGS)
    options = fake_sync["options"]
    assert isinstance(options, SyncOptions)
    assert options.src == "/srv/v" and options.dest == "/mnt/d"
    assert options.volumes is None and options.exclude == []
    assert options.delete and options.preserve_acls and options.preserve_xattrs
    assert options.preserve_hardlinks and options.numeric_ids
    assert not options.checksum and not options.allow_empty and not options.dry_run
    assert options.marker and options.marker_name == ".grus-sync.json"
    assert options.lock == "/run/lock/grus-backup-nfs-sync.lock" and options.lock_timeout == 300
    assert not done.failed


def test_options_are_passed_through(fake_sync):
    fake_sync["outcome"] = a_result()
    run(
        {
            **ARGS,
            "volumes": ["www"],
            "exclude": ["/connection-logs"],
            "delete": False,
            "max_delete": 7,
            "preserve_acls": False,
            "bwlimit": "2M",
            "checksum": True,
            "rsh": "ssh -p 2222",
            "io_timeout": 60,
            "marker": False,
            "lock": "",
            "lock_timeout": 5,
            "allow_empty": True,
        }
    )
    options = fake_sync["options"]
    assert options.volumes == ["www"] and options.exclude == ["/connection-logs"]
    assert not options.delete and options.max_delete == 7 and not options.preserve_acls
    assert options.bwlimit == "2M" and options.checksum and options.rsh == "ssh -p 2222"
    assert options.io_timeout == 60 and not options.marker and options.lock is None
    assert options.lock_timeout == 5 and options.allow_empty


def test_result_fields(fake_sync):
    fake_sync["outcome"] = a_result()
    done = run(ARGS)
    result = done.result
    assert result["changed"] is True
    assert result["cmd"] == a_result().argv
    assert result["rsync_rc"] == 0 and "rc" not in result, "rc would make Ansible treat exit 24 as a failure"
    assert result["rsync_status"] == "ok"
    assert result["changes"] == [">f+++++++++ db/x", "*deleting   www/old"]
    assert result["changes_count"] == 2
    assert result["marker"]["rsync_exit_code"] == 0
    assert result["marker_path"] == "/mnt/d/.grus-sync.json"
    assert result["excluded_volumes"] == ["connection-logs"]
    assert "diff" not in result


def test_check_mode_is_a_dry_run_and_diff_lists_changes(fake_sync):
    fake_sync["outcome"] = a_result(dry_run=True, marker=None, marker_path=None)
    done = run(ARGS, check=True, diff=True)
    assert fake_sync["options"].dry_run is True
    assert done.result["changed"] is True
    assert done.result["diff"] == {"prepared": ">f+++++++++ db/x\n*deleting   www/old\n"}
    assert done.result["marker"] is None and "marker_path" not in done.result


def test_unchanged_has_no_diff(fake_sync):
    fake_sync["outcome"] = a_result(changed=False, changes=[])
    done = run(ARGS, diff=True)
    assert done.result["changed"] is False and "diff" not in done.result


def test_changes_are_capped_but_counted(fake_sync):
    many = [Change(">f+++++++++", f"www/{i}") for i in range(nfs_sync.MAX_REPORTED_CHANGES + 5)]
    fake_sync["outcome"] = a_result(changes=many)
    done = run(ARGS)
    assert len(done.result["changes"]) == nfs_sync.MAX_REPORTED_CHANGES
    assert done.result["changes_count"] == nfs_sync.MAX_REPORTED_CHANGES + 5


def test_vanished_warning_is_surfaced(fake_sync, monkeypatch):
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text: warnings.append(text))
    fake_sync["outcome"] = a_result(rsync_rc=24, rsync_status="vanished", warnings=["rsync exit 24: vanished"])
    done = run(ARGS)
    assert not done.failed and warnings == ["rsync exit 24: vanished"]
    assert done.result["rsync_rc"] == 24


def test_refusal_before_rsync_fails_with_kind(fake_sync):
    fake_sync["outcome"] = SyncError("guard", "refusing to sync: volume(s) db under /srv/v are empty")
    done = run(ARGS)
    assert done.failed
    assert done.result == {
        "msg": "refusing to sync: volume(s) db under /srv/v are empty",
        "kind": "guard",
        "changed": False,
    }


def test_rsync_failure_keeps_what_is_known(fake_sync):
    partial = a_result(rsync_rc=23, rsync_status="partial", marker=None, marker_path=None, stderr="denied")
    fake_sync["outcome"] = SyncError("partial", "partial transfer ...", partial)
    done = run(ARGS, diff=True)
    assert done.failed
    assert done.result["kind"] == "partial" and done.result["rsync_rc"] == 23
    assert done.result["rsync_status"] == "partial" and done.result["stderr"] == "denied"
    assert done.result["changed"] is True
    assert "*deleting   www/old" in done.result["diff"]["prepared"]


def test_bad_options_fail_in_the_core_validation(fake_sync, monkeypatch):
    # No fake here: SyncOptions.from_dict must refuse before sync() is reached.
    monkeypatch.setattr(nfs_sync, "sync", lambda options: pytest.fail("sync must not run"))
    done = run({**ARGS, "dest": "antigone::module"})
    assert done.failed and done.result["kind"] == "usage" and "daemon" in done.result["msg"]
    done = run({**ARGS, "marker_name": "a/b"})
    assert done.failed and "marker_name" in done.result["msg"]


def test_src_is_required():
    done = run({"dest": "/mnt/d"})
    assert done.failed and "src" in done.result["msg"]
