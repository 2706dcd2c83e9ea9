"""Unit tests for the key holder's backup run: guards, markers, clock, prune guard, exit status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _backup_job, _marker, _prune, _volume_guard
from ansible_collections.grus.backup.plugins.module_utils._backup_job import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_WARNING,
    JobConfig,
    JobError,
    JobReport,
    archive_name,
    check_sources,
    prune_guarded,
    run_job,
)
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._borg_parse import parse_archive_time
from ansible_collections.grus.backup.plugins.module_utils._prune import check_clock

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)  # noqa: UP017


def check_marker(marker, now, written_at=None):
    return _marker.judge(marker["path"], marker["max_age_minutes"], now, written_at)


STATE_DIR = {}


@pytest.fixture(autouse=True)
def _state_dir(tmp_path):
    """The shrink guard's state of each test in its own directory, never /var/lib."""
    STATE_DIR["path"] = str(tmp_path / "state")


def config(**extra):
    data = {"repo": "/srv/repo", "paths": ["/srv/export"], "passcommand": "cat /etc/pw", "state_dir": STATE_DIR["path"]}
    data.update(extra)
    return JobConfig.from_dict(data)


def test_config_defaults_are_the_policy():
    cfg = config()
    assert cfg.retention == {"keep_within": "14d"}
    assert cfg.files_cache == "mtime,size"
    assert cfg.sync_wait_minutes == 30
    assert cfg.max_deletions == 12
    assert config(markers=["/m"]).markers == [{"path": "/m", "max_age_minutes": 270}]


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"repo": "/r", "paths": ["/x"], "passphrase": "secret"}, "never put the passphrase"),
        ({"repo": "/r"}, "'paths' is required"),
        ({"repo": "/r", "paths": ["/x"], "bogus": 1}, "unknown configuration key"),
        ({"repo": "/r", "paths": ["/x"], "retention": {"keep_within": "14 days"}}, "keep_within"),
        ({"repo": "/r", "paths": ["/x"], "max_deletions": -1}, "max_deletions"),
        ({"repo": "/r", "paths": ["/x"], "sync_wait_minutes": -1}, "sync_wait_minutes"),
        ({"repo": "/r", "paths": ["/x"], "markers": [{"path": ""}]}, "needs a path"),
        ({"repo": "/r", "paths": ["/x"], "markers": ["/m"], "marker_max_age_minutes": 0}, "max_age_minutes > 0"),
    ],
)
def test_config_refuses_nonsense(data, fragment):
    with pytest.raises(JobError) as info:
        JobConfig.from_dict(data)
    assert fragment in info.value.message


def test_archive_name_is_utc_and_sortable():
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert archive_name("grus-", local) == "grus-2026-01-02T01:04:05Z"


def test_parse_archive_time_accepts_both_borg_formats():
    assert parse_archive_time("2026-11-23T12:00:00.123456") is not None
    assert parse_archive_time("2026-11-23T12:00:00") is not None
    assert parse_archive_time("garbage") is None
    assert parse_archive_time(None) is None


def test_clock_check_refuses_archive_in_the_future():
    future = (NOW + timedelta(hours=2)).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f")
    with pytest.raises(BorgError) as info:
        check_clock([{"time": future}], NOW, 300)
    assert info.value.cause == "clock" and "is later than this host's clock" in info.value.message


def test_clock_check_accepts_past_and_tolerance():
    recent = (NOW + timedelta(seconds=60)).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f")
    check_clock([{"time": recent}, {"time": None}], NOW, 300)
    check_clock([], NOW, 300)


def test_sources_missing_empty_unmounted(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "f").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    check_sources([{"path": str(full)}], is_mount=lambda p: False)
    check_sources([{"path": str(empty), "allow_empty": True}])
    for source, fragment in [
        ({"path": str(tmp_path / "nope")}, "does not exist"),
        ({"path": str(empty)}, "is empty"),
        ({"path": str(a_file)}, "not a directory"),
        ({"path": str(full), "mountpoint": True}, "not mounted"),
    ]:
        with pytest.raises(JobError) as info:
            check_sources([source], is_mount=lambda p: False)
        assert fragment in info.value.message
        assert info.value.kind == "guard"
    check_sources([{"path": str(full), "mountpoint": True}], is_mount=lambda p: True)


def write_marker(path, when):
    path.write_text(json.dumps({"time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}))


def test_marker_fresh_stale_missing_broken(tmp_path):
    marker = tmp_path / ".grus-sync.json"
    write_marker(marker, NOW - timedelta(minutes=10))
    report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert warning is None and report["stale"] is False and report["age_minutes"] == 10.0
    write_marker(marker, NOW - timedelta(minutes=90))
    report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert report["stale"] is True and "stale" in warning
    marker.write_text("{not json")
    _report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert "unreadable" in warning
    _report, warning = check_marker({"path": str(tmp_path / "none"), "max_age_minutes": 60}, NOW)
    assert "missing" in warning


def test_report_exit_status():
    assert JobReport().exit_status == EXIT_OK
    assert JobReport(warnings=["w"]).exit_status == EXIT_WARNING
    assert JobReport(warnings=["w"], errors=["e"]).exit_status == EXIT_ERROR


class FakeBorg:
    """Stands in for the borg calls of a run (version, create, prune, delete, list); records them."""

    def __init__(self, archives=(), would_prune=0):
        self.archives = list(archives)
        self.would_prune = would_prune
        self.existing = set()  # archive names a run in the same second already took
        self.calls = []

    def cached_borg_version(self, borg, runner=None):
        self.calls.append(("version",))
        return "1.4.0"

    def create_archive(self, conn, name, paths, **options):
        self.calls.append(("create", name, tuple(paths), options["files_cache"], tuple(options["exclude"])))
        if name in self.existing:
            raise BorgError(f"archive {name} already exists", cause="archive_exists", rc=30)
        return {"archive": {"name": name}, "warnings": []}

    def prune(self, conn, retention, match_archives=None, dry_run=False, archives=None):
        self.calls.append(("prune", dry_run, retention, archives))
        pruned = [{"name": f"old{i}", "time": "2026-11-01T04:00:00", "id": f"o{i}"} for i in range(self.would_prune)]
        kept = [{"name": "new", "time": "2026-11-23T12:00:00", "id": "n"}, *self.archives]
        return {"pruned": pruned, "kept": kept, "warnings": []}

    def delete_planned(self, conn, plan):
        self.calls.append(("delete", [a["name"] for a in plan["pruned"]]))
        self.deleted = {a["id"] for a in plan["pruned"]}
        return []

    def list_archives(self, conn, match_archives=None):
        self.calls.append(("list", match_archives))
        return [{"name": "new", "id": "n"}]


@pytest.fixture
def fake(monkeypatch):
    borg = FakeBorg()
    for name in ("cached_borg_version", "create_archive"):
        monkeypatch.setattr(_backup_job, name, getattr(borg, name))
    for name in ("prune", "delete_planned", "list_archives"):  # what the one guarded prune calls
        monkeypatch.setattr(_prune, name, getattr(borg, name))
    return borg


def test_run_creates_one_archive_then_prunes(fake, tmp_path):
    fake.would_prune = 2
    cfg = config(exclude=["sh:/srv/export/*/connection-logs"], max_deletions=2)
    report = run_job(cfg, now=NOW)
    assert report.errors == []
    # no listing before or after the create: the prune's dry run lists the archives (and their times);
    # one listing after the delete verifies it, limited to this job's archives
    assert [c[0] for c in fake.calls] == ["version", "create", "prune", "delete", "list"]
    assert fake.calls[-1] == ("list", "grus-")
    create = fake.calls[1]
    assert create[1] == "grus-2026-11-23T12:00:00Z"
    assert create[2] == ("/srv/export",) and create[3] == "mtime,size"
    assert create[4] == ("sh:/srv/export/*/connection-logs",)
    assert [c[1] for c in fake.calls if c[0] == "prune"] == [True]
    # names and times come from borg's prune lines, not from a separate listing
    assert [c[3] for c in fake.calls if c[0] == "prune"] == [()]
    # exactly the planned archives are deleted: no second prune that could apply the retention anew
    assert fake.calls[3] == ("delete", ["old0", "old1"])
    assert report.pruned == ["old0", "old1"] and report.exit_status == EXIT_OK


def test_a_name_taken_in_the_same_second_moves_to_the_next_second(fake):
    fake.existing = {"grus-2026-11-23T12:00:00Z"}
    before = datetime.now(timezone.utc).replace(microsecond=0)  # noqa: UP017
    report = run_job(config(), now=NOW)
    assert report.errors == [] and [c[0] for c in fake.calls] == ["version", "create", "create", "prune"]
    second = fake.calls[2][1]
    assert second != "grus-2026-11-23T12:00:00Z" and report.archive == {"name": second}
    # the retry's name is a later second of the real clock (the run's own time was taken)
    assert datetime.strptime(second, "grus-%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) > before  # noqa: UP017


def test_an_explicit_timestamp_that_clashes_is_an_error(fake):
    fake.existing = {"grus-2026-11-01T04:00:00Z"}
    report = run_job(config(), now=NOW, timestamp="2026-11-01T04:00:00")
    assert report.exit_status == EXIT_ERROR and report.errors[0].startswith("borg (archive_exists)")
    assert [c[0] for c in fake.calls] == ["version", "create"] and report.archive is None


def test_prune_guard_refuses_too_many(fake):
    fake.would_prune = 3
    report = run_job(config(max_deletions=2), now=NOW)
    assert report.exit_status == EXIT_ERROR and "max_deletions" in report.errors[0]
    # the dry run only: nothing was deleted
    assert [c[1] for c in fake.calls if c[0] == "prune"] == [True]
    assert not [c for c in fake.calls if c[0] == "delete"]
    assert report.archive == {"name": "grus-2026-11-23T12:00:00Z"}


def test_no_prune_when_guard_fails(fake, tmp_path):
    report = run_job(config(sources=[str(tmp_path / "missing")]), now=NOW)
    assert report.exit_status == EXIT_ERROR and "guard" in report.errors[0]
    assert fake.calls == [("version",)]


def test_clock_wrong_archive_made_but_nothing_pruned(fake):
    fake.would_prune = 1
    future = (NOW + timedelta(days=1)).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    fake.archives = [{"name": "x", "time": future}]
    report = run_job(config(), now=NOW)
    assert report.exit_status == EXIT_ERROR and "clock" in report.errors[0]
    assert "archive was made" in report.errors[0]
    assert [c[0] for c in fake.calls] == ["version", "create", "prune"]
    assert [c[1] for c in fake.calls if c[0] == "prune"] == [True] and report.pruned == []


def test_nothing_to_prune_skips_the_delete(fake):
    report = run_job(config(), now=NOW)
    assert [c[0] for c in fake.calls] == ["version", "create", "prune"]
    assert [c[1] for c in fake.calls if c[0] == "prune"] == [True]
    assert report.kept == ["new"] and report.pruned == []


def test_prune_guarded_respects_zero(fake):
    fake.would_prune = 1
    report = JobReport()
    with pytest.raises(JobError) as info:
        prune_guarded(None, config(max_deletions=0), report, now=NOW)
    assert info.value.kind == "max_deletions"
    assert "would delete 1 archives, more than max_deletions=0 (old0)" in info.value.message
    assert "nothing was deleted" in info.value.message and "archive was made" in info.value.message
    # the dry run only: nothing deleted, nothing reported as pruned
    assert [c[0] for c in fake.calls] == ["prune"] and fake.calls[0][1] is True
    assert report.pruned == [] and report.kept == []


def test_stale_marker_is_a_warning_and_backup_still_runs(fake, tmp_path):
    marker = tmp_path / "m.json"
    written = datetime.now(timezone.utc)  # noqa: UP017
    write_marker(marker, written)  # the sync ran, and its marker landed, a day before this run
    report = run_job(config(markers=[{"path": str(marker), "max_age_minutes": 60}]), now=written + timedelta(days=1))
    assert report.exit_status == EXIT_WARNING and "is stale" in report.warnings[0]
    assert report.archive is not None and [c[1] for c in fake.calls if c[0] == "prune"] == [True]
    assert abs(report.markers[0]["clock_skew_seconds"]) <= 2


def test_marker_clock_skew_is_measured_from_the_files_ctime(tmp_path):
    marker = tmp_path / "m.json"
    write_marker(marker, NOW)
    report, _warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW, NOW.timestamp() + 7200)
    assert report["clock_skew_seconds"] == 7200
    with pytest.raises(JobError) as info:
        _backup_job.check_clock_skew([dict(report, path=str(marker))], 300)
    assert info.value.kind == "clock" and "+7200 s" in info.value.message and "archive was made" in info.value.message
    _backup_job.check_clock_skew([dict(report, clock_skew_seconds=-299)], 300)
    _backup_job.check_clock_skew([{"path": "x", "clock_skew_seconds": None}], 300)


def test_clock_skew_with_a_client_holds_the_prune_not_the_backup(fake, tmp_path, monkeypatch):
    fake.would_prune = 1
    marker = tmp_path / "m.json"
    write_marker(marker, NOW)
    real_judge = _marker.judge
    monkeypatch.setattr(
        _marker, "judge", lambda path, age, now: real_judge(path, age, now, written_at=NOW.timestamp() + 3 * 3600)
    )
    report = run_job(config(markers=[{"path": str(marker), "max_age_minutes": 60}]), now=NOW)
    assert report.exit_status == EXIT_ERROR and report.errors[0].startswith("clock: refusing to prune")
    assert report.archive is not None and report.pruned == []
    assert [c[0] for c in fake.calls] == ["version", "create"]  # not even the dry run


def test_marker_states(tmp_path):
    marker = tmp_path / "m.json"
    marker.write_text(json.dumps({"state": "running", "started": "2026-11-23T11:45:00Z", "source_host": "b"}))
    report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert report["state"] == "running" and "has not finished" in warning and "11:45:00Z" in warning
    marker.write_text(json.dumps({"state": "failed", "failed": "2026-11-23T11:50:00Z", "error": "partial"}))
    report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert report["state"] == "failed" and "failed at 2026-11-23T11:50:00Z (partial" in warning
    write_marker(marker, NOW - timedelta(minutes=5))  # a marker of format 1 has no state: done
    report, warning = check_marker({"path": str(marker), "max_age_minutes": 60}, NOW)
    assert report["state"] == "done" and warning is None


def test_wait_for_syncs_waits_for_a_running_sync_and_gives_up_in_time(tmp_path):
    marker = tmp_path / "m.json"
    marker.write_text(json.dumps({"state": "running"}))
    ticks = {"now": 0.0, "sleeps": []}

    def clock():
        return ticks["now"]

    def sleep(seconds):
        ticks["sleeps"].append(seconds)
        ticks["now"] += seconds
        if ticks["now"] >= 12:  # the sync finishes after 12 s
            write_marker(marker, NOW)

    assert _backup_job.wait_for_syncs([{"path": str(marker)}], 60, clock, sleep) == 15
    assert ticks["sleeps"] == [5, 5, 5]
    # never finishes (the sync died): gives up at the limit
    marker.write_text(json.dumps({"state": "running"}))
    ticks.update(now=0.0, sleeps=[])
    waited = _backup_job.wait_for_syncs(
        [{"path": str(marker)}], 7, clock, lambda s: ticks.__setitem__("now", ticks["now"] + s)
    )
    assert waited == 7
    # nothing running: no wait at all
    write_marker(marker, NOW)
    assert _backup_job.wait_for_syncs([{"path": str(marker)}], 60, clock, sleep) == 0


def test_main_bad_config_is_error(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"repo": "/r", "paths": ["/x"], "passphrase": "hunter2hunter2"}))
    assert _backup_job.main(["--config", str(path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "passphrase" in err and "hunter2hunter2" not in err
    assert _backup_job.main(["--config", str(tmp_path / "absent.json")]) == EXIT_ERROR


def export_with_volume(tmp_path, files=4):
    volume = tmp_path / "export" / "balearica" / "app"
    volume.mkdir(parents=True)
    for i in range(files):
        (volume / f"f{i}").write_text("data")
    return tmp_path / "export", volume


def test_a_vanished_volume_sets_a_hold_and_no_prune_runs(fake, tmp_path):
    export, volume = export_with_volume(tmp_path)
    fake.would_prune = 1
    first = run_job(config(paths=[str(export)]), now=NOW)
    assert first.prune_hold is None and first.pruned == ["old0"]
    assert first.volumes == {str(volume): {"files": 4, "bytes": 16}}
    for child in volume.iterdir():
        child.unlink()
    volume.rmdir()
    fake.calls.clear()
    report = run_job(config(paths=[str(export)]), now=NOW)
    # the archive is made; the prune is not even planned
    assert [c[0] for c in fake.calls] == ["version", "create"]
    assert report.exit_status == EXIT_WARNING and report.errors == [] and report.pruned == []
    assert report.prune_hold["reasons"] == [
        f"grus-2026-11-23T12:00:00Z: volume {volume} vanished (it held 4 files, 16 bytes)"
    ]
    assert report.warnings[-1].startswith("prune held: ") and report.to_dict()["prune_hold"] == report.prune_hold


def test_release_hold_lets_the_next_run_prune(fake, tmp_path, capsys):
    cfg_file = tmp_path / "backup.json"
    cfg_file.write_text(json.dumps({"repo": "/r", "paths": ["/srv/export"], "state_dir": STATE_DIR["path"]}))
    assert _backup_job.main(["--config", str(cfg_file), "--release-hold"]) == EXIT_OK
    assert "no prune hold" in capsys.readouterr().out
    _volume_guard.set_hold(STATE_DIR["path"], "a-1", ["volume /v vanished"])
    held = run_job(config(), now=NOW)
    assert held.exit_status == EXIT_WARNING and "prune" not in [c[0] for c in fake.calls]
    assert _backup_job.main(["--config", str(cfg_file), "--release-hold"]) == EXIT_OK
    assert "released the prune hold: a-1: volume /v vanished" in capsys.readouterr().out
    assert fake.calls.count(("version",)) == 1  # releasing runs no borg
    assert run_job(config(), now=NOW).prune_hold is None and fake.calls[-1][0] == "prune"


@pytest.mark.parametrize(("key", "value"), [("shrink_share", 0), ("rewrite_share", 1.5), ("state_dir", "state")])
def test_bad_guard_settings_are_refused(key, value):
    with pytest.raises(JobError) as info:
        config(**{key: value})
    assert info.value.kind == "usage" and key in info.value.message
