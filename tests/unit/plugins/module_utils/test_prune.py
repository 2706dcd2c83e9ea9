"""The one guarded prune (_prune.guarded_prune): plan, guards, delete exactly the plan, verify.

borg is a fake runner here that answers the dry run, the delete and the listing as borg 1.4 does;
the argv each step sends is checked too.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _backup_job, _prune
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._borg_repo import BorgRepo
from ansible_collections.grus.backup.plugins.module_utils._runner import Result

REPO = "/srv/borg/antigone"
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)  # noqa: UP017


def local(moment: datetime) -> str:
    """A time as borg prints it: local, naive."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


class FakeBorg:
    """A repository of archives (name, time); answers prune --dry-run --list, delete NAMES, list --json."""

    def __init__(self, archives, doomed, keep_on_delete=()):
        self.archives = [{"name": n, "time": t, "id": f"{i:064x}"} for i, (n, t) in enumerate(archives, 1)]
        self.doomed = set(doomed)
        self.keep_on_delete = set(keep_on_delete)  # names a broken delete leaves behind
        self.calls = []

    def __call__(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
        self.calls.append(list(argv))
        command = argv[argv.index("--log-json") + 1 :]
        command = command[2:] if command[0] == "--lock-wait" else command
        return getattr(self, command[0])(argv)

    def prune(self, argv):
        assert "--dry-run" in argv and "--list" in argv, "the plan is always a dry run"
        lines = []
        for archive in self.archives:
            action = "Would prune:" if archive["name"] in self.doomed else "Keeping archive (rule: within #1):"
            when = datetime.fromisoformat(archive["time"])
            text = f"{action:<44} {archive['name']:<36} Mon, {local(when)} [{archive['id']}]"
            lines.append(
                json.dumps({"type": "log_message", "levelname": "INFO", "name": "borg.output.list", "message": text})
            )
        return Result(argv, 0, "", "\n".join(lines) + "\n")

    def delete(self, argv):
        names = set(argv[argv.index("--") + 2 :])
        self.archives = [a for a in self.archives if a["name"] not in names - self.keep_on_delete]
        return Result(argv, 0, "", "")

    def list(self, argv):
        listing = [{"name": a["name"], "time": a["time"], "id": a["id"]} for a in self.archives]
        return Result(argv, 0, json.dumps({"repository": {}, "encryption": {}, "archives": listing}), "")

    @property
    def commands(self):
        return [c[c.index("--log-json") + 3] for c in self.calls]


def archives(days_old, prefix="grus-"):
    return [(f"{prefix}{d}", (NOW - timedelta(days=d)).isoformat()) for d in days_old]


def conn(borg):
    return BorgRepo.from_params({"repo": REPO, "passcommand": "cat /p", "lock_wait": 5}, runner=borg)


def test_plans_deletes_exactly_the_plan_and_verifies():
    borg = FakeBorg(archives([20, 16, 1]), doomed={"grus-20", "grus-16"})
    plan = _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, match_archives="grus-", now=NOW)
    assert [a["name"] for a in plan["pruned"]] == ["grus-20", "grus-16"]
    assert [a["name"] for a in plan["kept"]] == ["grus-1"]
    assert borg.commands == ["prune", "delete", "list"]
    prune_argv, delete_argv, list_argv = borg.calls
    assert prune_argv[prune_argv.index("--glob-archives") + 1] == "grus-*"
    assert delete_argv[delete_argv.index("--") :] == ["--", REPO, "grus-20", "grus-16"]  # the plan, nothing else
    assert list_argv[list_argv.index("--glob-archives") + 1] == "grus-*"
    assert [a["name"] for a in borg.archives] == ["grus-1"]


def test_nothing_due_is_one_borg_call():
    borg = FakeBorg(archives([3, 1]), doomed=())
    plan = _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW)
    assert plan["pruned"] == [] and borg.commands == ["prune"]


def test_more_than_max_deletions_deletes_nothing():
    borg = FakeBorg(archives([30, 29, 28, 1]), doomed={"grus-30", "grus-29", "grus-28"})
    with pytest.raises(BorgError) as err:
        _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, max_deletions=2, now=NOW)
    assert err.value.cause == "max_deletions"
    assert "would delete 3 archives, more than max_deletions=2 (grus-30, grus-29, grus-28)" in err.value.message
    assert borg.commands == ["prune"] and len(borg.archives) == 4


def test_zero_max_deletions_refuses_any_deletion():
    borg = FakeBorg(archives([30, 1]), doomed={"grus-30"})
    with pytest.raises(BorgError) as err:
        _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, max_deletions=0, now=NOW)
    assert err.value.cause == "max_deletions" and borg.commands == ["prune"]


def test_newest_archive_in_the_future_deletes_nothing():
    borg = FakeBorg(archives([30, -1]), doomed={"grus-30"})  # grus--1: a day ahead of this host's clock
    with pytest.raises(BorgError) as err:
        _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW)
    assert err.value.cause == "clock" and "fix the clock (NTP)" in err.value.message
    assert borg.commands == ["prune"] and len(borg.archives) == 2


def test_an_archive_within_the_clock_tolerance_is_no_reason_to_stop():
    borg = FakeBorg(
        [("grus-old", (NOW - timedelta(days=30)).isoformat()), ("grus-now", (NOW + timedelta(seconds=60)).isoformat())],
        doomed={"grus-old"},
    )
    plan = _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW, clock_tolerance=300)
    assert [a["name"] for a in plan["pruned"]] == ["grus-old"]


def test_dry_run_guards_but_deletes_nothing():
    borg = FakeBorg(archives([30, 1]), doomed={"grus-30"})
    plan = _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW, dry_run=True)
    assert [a["name"] for a in plan["pruned"]] == ["grus-30"] and borg.commands == ["prune"]
    borg = FakeBorg(archives([30, 29, 1]), doomed={"grus-30", "grus-29"})
    with pytest.raises(BorgError, match="max_deletions=1"):
        _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW, dry_run=True, max_deletions=1)


def test_a_planned_archive_still_listed_after_the_delete_fails():
    borg = FakeBorg(archives([30, 20, 1]), doomed={"grus-30", "grus-20"}, keep_on_delete={"grus-20"})
    with pytest.raises(BorgError) as err:
        _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, now=NOW)
    assert err.value.cause == "prune_failed" and "grus-20" in err.value.message and "grus-30" not in err.value.message


def test_malformed_limits_and_retention_fail_before_borg():
    borg = FakeBorg(archives([30]), doomed=())
    for bad in (-1, None):
        with pytest.raises(BorgError) as err:
            _prune.guarded_prune(conn(borg), {"keep_within": "14d"}, max_deletions=bad, now=NOW)
        assert err.value.cause == "invalid_input"
    with pytest.raises(BorgError, match="no retention rule"):
        _prune.guarded_prune(conn(borg), {}, now=NOW)
    assert borg.calls == []


def test_module_and_job_share_one_default():
    from ansible_collections.grus.backup.plugins.modules import borg_archive

    assert _prune.DEFAULT_MAX_DELETIONS == 12
    assert borg_archive.argument_spec()["max_deletions"]["default"] == _prune.DEFAULT_MAX_DELETIONS
    assert _backup_job.JobConfig(repo="/r", paths=["/x"]).max_deletions == _prune.DEFAULT_MAX_DELETIONS
