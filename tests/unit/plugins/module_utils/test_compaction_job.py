"""Unit tests for the compaction job's decisions (the runs against real borg are in tests/integration)."""

from __future__ import annotations

import os
import time

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _compaction_job as job
from ansible_collections.grus.backup.plugins.module_utils import _compaction_tools as tools

REPO = "/srv/borg/antigone/repo"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2aFqKVbmlg0wPVMYcpA4Dm8Rz+qfFQ4w4p0jXlYB2m antigone"


def test_the_forced_command_carries_the_quota_and_only_from_may_follow():
    forced = job.forced_command(REPO, "500G")
    assert forced == f'restrict,command="borg serve --append-only --restrict-to-repository {REPO} --storage-quota 500G"'
    assert (
        job.forced_command(REPO, "") == f'restrict,command="borg serve --append-only --restrict-to-repository {REPO}"'
    )
    assert job.key_line_ok(f"{forced} {KEY}", forced)
    assert job.key_line_ok(f'{forced},from="192.0.2.1,10.0.0.0/8" {KEY}', forced)
    assert not job.key_line_ok(f"{forced},pty {KEY}", forced)
    assert not job.key_line_ok(f'{forced},from="x",pty {KEY}', forced)
    assert not job.key_line_ok(f"{job.forced_command(REPO, '')} {KEY}", forced)
    assert not job.key_line_ok(KEY, forced)


def test_due_after_the_interval_with_an_hour_of_slack(tmp_path):
    stamp = tmp_path / "stamp"
    assert job.due(str(stamp), 1)
    stamp.write_text("")
    assert not job.due(str(stamp), 1)
    assert job.due(str(stamp), 0)
    almost = time.time() - 86400 + 1800  # the timer fired a little earlier than yesterday's run started
    os.utime(stamp, (almost, almost))
    assert job.due(str(stamp), 1)


def test_the_hold_names_its_owner(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    path = job.write_hold(str(repo), "audit", "transaction 9:6-9 deleted 300 of 301 live objects")
    assert path == str(tmp_path / job.HOLD_NAME)
    fields = job.read_hold(path)
    assert fields["held-by"] == "audit" and fields["reason"].startswith("transaction 9:6-9")
    (tmp_path / job.HOLD_NAME).write_text("incident\n")  # a hand-made hold has no owner
    assert job.read_hold(path) == {}


def txn(ordinal, number, first, source="repository", suspicious=False):
    return {
        "ordinal": ordinal,
        "number": number,
        "label": f"{number}:{first}-{number}",
        "source": source,
        "suspicious": suspicious,
        "time_utc": "2026-12-05T00:00:00Z",
    }


def test_a_target_is_found_by_ordinal_or_number_and_refused_when_ambiguous():
    found = [txn(1, 5, 2, "20261201T033000Z-compaction"), txn(2, 9, 6), txn(3, 5, 2), txn(4, 13, 10, suspicious=True)]
    assert tools.choose(found, 2, None)["number"] == 9
    assert tools.choose(found, None, "9")["ordinal"] == 2
    with pytest.raises(job.JobError, match=r"ambiguous.*ordinal 1.*ordinal 3"):
        tools.choose(found, None, "5")
    with pytest.raises(job.JobError, match="ambiguous"):
        tools.choose(found, None, "5:2-5")  # number and segment range repeat too after a rollback
    with pytest.raises(job.JobError, match="no snapshot covers it"):
        tools.choose(found, None, "3")
    assert tools.proposed_last_good(found)["ordinal"] == 3
    assert tools.proposed_last_good(found[:3])["ordinal"] == 3
    assert tools.proposed_last_good([txn(1, 1, 0, suspicious=True)]) is None


def test_the_flag_fallback_rewrites_the_config_atomically(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    config = repo / "config"
    config.write_text("[repository]\nversion = 1\nappend_only = 0\nid = abc\n")
    config.chmod(0o600)
    job.rewrite_flag(str(repo))
    assert config.read_text() == "[repository]\nversion = 1\nappend_only = 1\nid = abc\n"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    config.write_text("[repository]\nversion = 1\n")
    job.rewrite_flag(str(repo))
    assert job.append_only_flag(str(repo)) == "1"
