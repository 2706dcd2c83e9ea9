"""borg_archive state=pruned and the key holder's backup job prune through the same function.

Each path is run with ``guarded_prune`` replaced by a recorder: both must reach it, with their own
retention and the same guards, and the name each imports must be that one function.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _archive, _backup_job, _prune
from ansible_collections.grus.backup.plugins.modules import borg_archive

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)  # noqa: UP017
PLAN = {
    "pruned": [{"name": "old", "time": "2026-11-01T04:00:00", "id": "1" * 64}],
    "kept": [{"name": "new", "time": "2026-11-23T04:00:00", "id": "2" * 64}],
    "warnings": [],
}


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def guarded_prune(conn, retention, **kwargs):
        calls.append({"repo": conn.repo, "retention": retention, **kwargs})
        return {key: list(value) for key, value in PLAN.items()}

    monkeypatch.setattr(_archive, "guarded_prune", guarded_prune)
    monkeypatch.setattr(_backup_job, "guarded_prune", guarded_prune)
    return calls


def test_both_import_the_one_guarded_prune():
    assert _archive.guarded_prune is _prune.guarded_prune
    assert _backup_job.guarded_prune is _prune.guarded_prune


def test_the_module_prunes_through_guarded_prune(recorder, call_module, monkeypatch):
    monkeypatch.setattr(_archive, "cached_borg_version", lambda borg: "1.4.0")
    monkeypatch.setattr(_archive, "list_archives", lambda conn, match_archives=None: PLAN["pruned"] + PLAN["kept"])
    monkeypatch.setattr(_archive, "repo_append_only", lambda conn: False)
    args = {"repo": "/srv/borg/r", "passcommand": "cat /p", "state": "pruned", "keep_daily": 7, "match_archives": "a-"}
    result = call_module(borg_archive.main, args)
    assert not result["failed"] and result["changed"] and result["pruned"] == PLAN["pruned"]
    (call,) = recorder
    assert call["repo"] == "/srv/borg/r" and call["retention"] == {"keep_daily": 7}
    assert call["match_archives"] == "a-" and call["max_deletions"] == 12 and call["dry_run"] is False
    call_module(borg_archive.main, args, check=True)
    assert recorder[1]["dry_run"] is True  # check mode: the same guards, nothing deleted


def test_the_job_prunes_through_guarded_prune(recorder, monkeypatch, tmp_path):
    monkeypatch.setattr(_backup_job, "cached_borg_version", lambda borg, runner=None: "1.4.0")
    monkeypatch.setattr(
        _backup_job, "create_archive", lambda conn, name, paths, **options: {"archive": {"name": name}, "warnings": []}
    )
    config = _backup_job.JobConfig.from_dict(
        {"repo": "/srv/borg/r", "paths": ["/srv/export"], "passcommand": "cat /p", "state_dir": str(tmp_path)}
    )
    report = _backup_job.run_job(config, now=NOW)
    assert report.errors == [] and report.pruned == ["old"] and report.kept == ["new"]
    (call,) = recorder
    assert call["repo"] == "/srv/borg/r" and call["retention"] == {"keep_within": "14d"}
    assert call["match_archives"] == "grus-" and call["max_deletions"] == 12 and call["now"] == NOW
    assert call["clock_tolerance"] == _prune.DEFAULT_CLOCK_TOLERANCE
