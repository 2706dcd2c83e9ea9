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


def test_a_delete_already_rolled_back_is_history_no_more():
    """Second incident: the first delete lives on only in its before-rollback snapshot. The proposal is the backup
    made since the rollback, not the state before the first delete (that would lose the backups between)."""
    before = {"reason": "before-rollback", "rolled_back_to_time": 4, "rolled_back_to": "4:4-4"}
    found = [txn(1, 2, 1), txn(2, 4, 3), txn(3, 6, 5, "20261201T033000Z-before-rollback", suspicious=True)]
    found[2]["reason"] = "deleted 12 of 12"
    found += [txn(4, 8, 7), txn(5, 10, 9, suspicious=True)]
    for t in found:
        t["time"] = t["number"]
    for t in found[:3]:
        t["snapshot"] = before
    assert tools.proposed_last_good(found)["ordinal"] == 4
    assert tools.mark(found[2]).startswith("rolled back earlier; SUSPICIOUS")
    assert tools.mark(found[1]) == ""
    # The intruder deletes again right after the rollback: back to what the first rollback went back to.
    assert tools.proposed_last_good(found[:3] + found[4:])["ordinal"] == 2
    # Without the record (an older snapshot), the first suspicious one still decides, as before.
    for t in found[:3]:
        t["snapshot"] = {"reason": "before-rollback"}
    assert tools.proposed_last_good(found)["ordinal"] == 2


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


def listed_txn(ordinal, source="repository", put=(3, 2_100_000), deleted=(0, 0), reason=""):
    return {
        "ordinal": ordinal,
        "time_utc": f"2026-12-07T20:{ordinal:02d}:00Z",
        "source": source,
        "label": f"{ordinal * 4}:{ordinal * 4 - 3}-{ordinal * 4}",
        "objects_put": put[0],
        "bytes_put": put[1],
        "objects_deleted": deleted[0],
        "bytes_deleted": deleted[1],
        "suspicious": bool(reason),
        "reason": reason,
    }


def listing(proposed=True):
    found = [
        listed_txn(1, "20261207T203812Z-compaction", put=(1, 41)),
        listed_txn(2),
        listed_txn(12, deleted=(12, 2_147_258), put=(0, 0), reason="deleted 12 of 13 live objects (100% ...)"),
    ]
    return {
        "repository": "/srv/borg/antigone/repo",
        "transactions": found,
        "suspicious": [12],
        "proposed": found[1] if proposed else None,
        "hold": {"held-by": "audit", "since": "2026-12-07T21:00:00Z"},
    }


def test_the_listing_has_one_aligned_line_per_transaction_and_marks_the_suspicious():
    lines = tools.render(listing(), ["inventories/prod/hosts.yml"], "antigone")
    head, *rows, proposal, command, hold = lines
    assert head == "/srv/borg/antigone/repo: 3 transaction(s) one can roll back to (oldest first)"
    assert [row.split()[0] for row in rows] == ["#1", "#2", "#12"]
    # Columns line up whatever the widths: every row has 'put' and 'deleted' at the same place.
    assert len({row.index(" put ") for row in rows}) == 1 and len({row.index(" deleted ") for row in rows}) == 1
    assert rows[0].split("  ")[:2] == [" #1", "2026-12-07T20:01:00Z"]
    assert "20261207T203812Z-compaction" in rows[0] and "repository" in rows[1]
    assert "put 3 obj 2.1 MB" in rows[1] and "put 1 obj   41 B" in rows[0]
    assert "deleted 12 obj 2.1 MB" in rows[2]
    assert rows[2].endswith("2.1 MB  SUSPICIOUS: deleted 12 of 13 live objects (100% ...)")
    assert "SUSPICIOUS" not in rows[0] + rows[1] and rows[1] == rows[1].rstrip()
    assert proposal == "Proposed last good: #2 (2026-12-07T20:02:00Z, repository, txn 8:5-8); suspicious: #12"
    assert command == (
        "Roll back to it: ansible-playbook -i inventories/prod/hosts.yml grus.backup.recover_append_only "
        "-e recover_repository=antigone -e recover_ordinal=2"
    )
    assert hold == "Compaction hold: held by audit since 2026-12-07T21:00:00Z"


def test_the_listing_without_a_good_transaction_or_an_inventory():
    lines = tools.render(dict(listing(proposed=False), hold=None), [], "antigone")
    assert lines[-2] == "No transaction before the first suspicious one (#12): nothing to roll back to"
    assert lines[-1] == "Compaction hold: none"
    assert not any("ansible-playbook" in line for line in lines)
    assert "-i '<inventory>'" not in tools.rollback_command([], "a", 1)
    assert tools.rollback_command(["a b.yml", "c"], "x", 3).startswith("ansible-playbook -i 'a b.yml' -i c ")


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (2_147_258, "2.1 MB"), (3 * 10**12, "3.0 TB")]
)
def test_bytes_read_as_a_person_reads_them(size, text):
    assert tools.human_bytes(size) == text
