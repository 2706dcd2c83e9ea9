"""Checks give way to backups (``_check_yield``, the check side of ``_backup_job``) and compaction defers for them.

Real flock locks and real child processes; borg is faked (the integration tests run the real one).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _backup_job, _check_yield, _compaction_job, _metrics
from ansible_collections.grus.backup.plugins.module_utils._borg_argv import check_argv
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._runner import Result

# ---- the registration and the request -----------------------------------------------------------------


def test_a_check_registers_with_its_pid_and_task_and_a_second_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_check_yield, "REGISTER_WAIT", 0.0)
    with _check_yield.Registration(str(tmp_path), "verify_data") as held:
        assert _check_yield.read_holder(held.fd)[1] == "verify_data"
        assert _check_yield.read_holder(held.fd)[0] > 0
        with pytest.raises(_check_yield.CheckBusy, match="another check runs \\(verify_data, pid"):
            _check_yield.Registration(str(tmp_path), "check").__enter__()
    with _check_yield.Registration(str(tmp_path), "check"):  # free again once the first let go
        pass
    assert (tmp_path / "check.lock").stat().st_mode & 0o777 == 0o600


def test_no_check_running_means_nothing_to_yield(tmp_path):
    assert _check_yield.ask_check_to_yield(str(tmp_path), 5) is None  # no file
    with _check_yield.Registration(str(tmp_path), "check"):
        pass
    assert _check_yield.ask_check_to_yield(str(tmp_path), 5, kill=pytest.fail) is None  # a file nobody holds


def test_a_running_check_gets_sigterm_and_the_backup_waits_until_it_let_go(tmp_path):
    held = _check_yield.Registration(str(tmp_path), "verify_data").__enter__()
    os.pwrite(held.fd, b"12345 verify_data\n", 0)  # the check is another process
    signals = []

    def kill(pid, sig):
        signals.append((pid, sig))
        held.__exit__(None, None, None)  # the check ends

    asked = _check_yield.ask_check_to_yield(str(tmp_path), 5, kill=kill, is_job=lambda pid: True)
    assert signals == [(12345, signal.SIGTERM)]
    assert asked["task"] == "verify_data" and asked["stopped"] is True


def test_a_check_that_holds_on_is_reported_not_stopped_after_the_bounded_wait(tmp_path):
    clock = iter(range(1000)).__next__
    with _check_yield.Registration(str(tmp_path), "check"):
        asked = _check_yield.ask_check_to_yield(
            str(tmp_path), 3, kill=lambda pid, sig: None, is_job=lambda pid: True, clock=clock, sleep=lambda s: None
        )
    assert asked["stopped"] is False and asked["waited_seconds"] >= 3


def test_a_pid_that_is_not_the_job_is_never_signalled(tmp_path):
    with _check_yield.Registration(str(tmp_path), "check"):
        asked = _check_yield.ask_check_to_yield(str(tmp_path), 0, kill=pytest.fail, is_job=lambda pid: False)
    assert asked["stopped"] is False


def test_is_job_reads_the_command_line(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cmdline").write_bytes(b"/usr/bin/python3\0-m\0grus_backup._backup_job\0--check\0")
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "cmdline").write_bytes(b"/usr/bin/sleep\0100\0")
    assert _check_yield.is_job(42, proc=str(tmp_path))
    assert not _check_yield.is_job(43, proc=str(tmp_path))
    assert not _check_yield.is_job(44, proc=str(tmp_path))


def test_a_backup_holds_backup_lock_shared_and_a_check_sees_it(tmp_path):
    assert not _check_yield.backup_running(str(tmp_path))
    with _check_yield.BackupRegistration(str(tmp_path)), _check_yield.BackupRegistration(str(tmp_path)):
        assert _check_yield.backup_running(str(tmp_path))  # two backups at once: both get in
    assert not _check_yield.backup_running(str(tmp_path))


# ---- the check's side: its borg child is stopped on SIGTERM ---------------------------------------------


def test_sigterm_to_the_check_stops_its_child_and_marks_the_yield():
    yielder = _check_yield.Yielder()
    previous = signal.getsignal(signal.SIGTERM)
    yielder.install()
    try:

        def send():
            while yielder.child is None:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)  # as a backup does (ask_check_to_yield)

        threading.Thread(target=send, daemon=True).start()
        result = yielder.run(["sleep", "30"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert yielder.requested
    assert result.rc == -signal.SIGTERM


def test_after_a_yield_request_nothing_more_starts():
    yielder = _check_yield.Yielder()
    yielder.on_sigterm()
    result = yielder.run(["false"])
    assert result.rc == 143 and yielder.child is None


def test_the_yielder_runs_like_the_runner(tmp_path):
    result = _check_yield.Yielder().run(["sh", "-c", "echo out; echo err >&2; exit 3"], env={"X": "1"})
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(ValueError, match="secret"):
        _check_yield.Yielder().run(["echo", "s3cret"], secrets=("s3cret",))


# ---- the check run ------------------------------------------------------------------------------------


def make_config(tmp_path, **extra):
    data = {"repo": str(tmp_path / "repo"), "paths": [str(tmp_path)], "state_dir": str(tmp_path / "state")}
    data.update(extra)
    return _backup_job.JobConfig.from_dict(data)


class FakeBorg:
    def __init__(self, stderr_by_command=None, fail=None):
        self.calls = []
        self.stderr_by_command = stderr_by_command or {}
        self.fail = fail

    def __call__(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, secrets=()):
        self.calls.append(argv)
        key = "repository" if "--repository-only" in argv else "archives" if "--archives-only" in argv else "full"
        if self.fail == key:
            return Result(argv, 2, "", json.dumps({"type": "log_message", "levelname": "ERROR", "message": "bad"}))
        return Result(argv, 0, "", self.stderr_by_command.get(key, ""))


def info(message):
    return json.dumps({"type": "log_message", "levelname": "INFO", "message": message})


def test_check_argv_bounds_only_a_repository_only_check():
    argv = check_argv("/r", repository_only=True, max_duration=60)
    assert argv[argv.index("check") :] == ["check", "--repository-only", "--info", "--max-duration", "60", "--", "/r"]
    with pytest.raises(BorgError, match="max_duration"):
        check_argv("/r", verify_data=True, repository_only=True, max_duration=60)
    with pytest.raises(BorgError, match="max_duration"):
        check_argv("/r", max_duration=60)


def test_a_full_check_is_complete(tmp_path):
    borg = FakeBorg()
    report = _backup_job.run_check(make_config(tmp_path), False, runner=borg)
    assert report.check_complete and not report.errors and not report.check_yielded
    assert len(borg.calls) == 1 and "--max-duration" not in borg.calls[0]


def test_a_partial_pass_is_not_complete_and_the_archives_are_checked_anyway(tmp_path):
    borg = FakeBorg({"repository": info("finished partial segment check, last segment checked is 7")})
    report = _backup_job.run_check(make_config(tmp_path, check_max_duration=600), False, runner=borg)
    assert not report.check_complete and not report.errors
    assert any("partial pass" in note for note in report.check_notes)
    assert ["--archives-only" in argv for argv in borg.calls] == [False, True]


def test_a_pass_that_reached_the_last_segment_is_complete(tmp_path):
    borg = FakeBorg({"repository": info("finished segment check at segment 12")})
    report = _backup_job.run_check(make_config(tmp_path, check_max_duration=600), False, runner=borg)
    assert report.check_complete


def test_verify_data_is_never_cut_by_max_duration(tmp_path):
    borg = FakeBorg()
    report = _backup_job.run_check(make_config(tmp_path, check_max_duration=600), True, runner=borg)
    assert report.check_complete and "--verify-data" in borg.calls[0] and "--max-duration" not in borg.calls[0]


@pytest.mark.parametrize(
    ("logs", "elapsed", "complete"),
    [
        ([], 10, True),  # a remote serve says nothing at INFO: under the limit, the pass ended
        ([], 600, False),  # at or over the limit: maybe cut, count it partial
        ([{"message": "finished segment check at segment 3"}], 900, True),
        ([{"message": "finished partial segment check, last segment checked is 3"}], 1, False),
    ],
)
def test_repository_pass_complete(logs, elapsed, complete):
    assert _backup_job.repository_pass_complete(logs, elapsed, 600) is complete


def test_a_failing_archives_check_is_an_error_not_complete(tmp_path):
    borg = FakeBorg({"repository": info("finished segment check at segment 12")}, fail="archives")
    report = _backup_job.run_check(make_config(tmp_path, check_max_duration=600), False, runner=borg)
    assert report.errors and not report.check_complete


def test_a_check_told_to_yield_reports_it_without_error(tmp_path):
    yielder = _check_yield.Yielder()

    def borg(argv, **kwargs):
        yielder.on_sigterm()  # a backup asked while borg ran; borg then ends with SigTerm's status
        return Result(argv, 143, "", json.dumps({"type": "log_message", "levelname": "ERROR", "message": "SIGTERM"}))

    report = _backup_job.run_check(make_config(tmp_path), True, runner=borg, yielder=yielder)
    assert report.check_yielded and not report.check_complete and not report.errors
    assert report.exit_status == _backup_job.EXIT_OK


def test_a_second_check_while_one_runs_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(_check_yield, "REGISTER_WAIT", 0.0)
    config = make_config(tmp_path)
    with _check_yield.Registration(config.state_dir, "verify_data"):
        report = _backup_job.run_check(config, False, runner=pytest.fail)
    assert report.check_notes[0].startswith("skipped: another check runs (verify_data")
    assert not report.check_complete and report.exit_status == _backup_job.EXIT_OK


def test_a_check_waits_while_a_backup_runs_and_stops_waiting_when_told_to_yield(tmp_path):
    yielder = _check_yield.Yielder()
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 3:
            yielder.on_sigterm()

    with _check_yield.BackupRegistration(str(tmp_path)):
        _backup_job.wait_for_backups(str(tmp_path), yielder, sleep=sleep)
    assert len(waits) == 3
    _backup_job.wait_for_backups(str(tmp_path), _check_yield.Yielder(), sleep=pytest.fail)  # no backup: no wait


def test_bad_check_settings_are_refused(tmp_path):
    for key in ("check_max_duration", "yield_wait"):
        with pytest.raises(_backup_job.JobError, match=key):
            make_config(tmp_path, **{key: -1})


def test_a_backup_warns_when_the_check_did_not_let_go(tmp_path, monkeypatch):
    monkeypatch.setattr(
        _check_yield,
        "ask_check_to_yield",
        lambda state_dir, wait: {"pid": 7, "task": "verify_data", "stopped": False, "waited_seconds": 120},
    )
    report = _backup_job.JobReport()
    _backup_job.make_check_yield(make_config(tmp_path), report)
    assert "verify_data (pid 7) did not let go" in report.warnings[0]


# ---- metrics: yields, and the last complete check -------------------------------------------------------


def metrics_of(tmp_path, report, rc, now):
    metrics = _metrics.JobMetrics("check", str(tmp_path), clock=lambda: now, repository="/r")
    _backup_job.record_check(metrics, report, rc)
    metrics.finish(rc)
    return (tmp_path / "grus_backup_check.prom").read_text()


def last_complete(text):
    name = "grus_backup_check_last_complete_timestamp_seconds"
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_the_last_complete_check_survives_yields_and_starts_at_the_first_run(tmp_path):
    pytest.importorskip("prometheus_client")
    yielded = _backup_job.JobReport(check_yielded=True)
    text = metrics_of(tmp_path, yielded, 0, 1000.0)
    assert last_complete(text) == 1000.0  # none complete yet: counts from the first run
    assert 'grus_backup_check_yielded{repository="/r",task="check"} 1.0' in text
    text = metrics_of(tmp_path, yielded, 0, 5000.0)
    assert last_complete(text) == 1000.0
    text = metrics_of(tmp_path, _backup_job.JobReport(check_complete=True), 0, 9000.0)
    assert last_complete(text) == 9000.0
    text = metrics_of(tmp_path, _backup_job.JobReport(check_complete=True, errors=["e"]), 2, 9999.0)
    assert last_complete(text) == 9000.0  # a failed check is not complete


# ---- compaction: deferred for a backup about to start ---------------------------------------------------


def at(hour, minute):
    return time.struct_time((2026, 12, 6, hour, minute, 0, 6, 340, 0))


def test_backup_times_parse_and_bad_ones_are_named():
    assert _compaction_job.parse_backup_times("00:00, 4:00,20:30") == [(0, 0), (4, 0), (20, 30)]
    assert _compaction_job.parse_backup_times("") == []
    for bad in ("24:00", "4h", "12:60"):
        with pytest.raises(Exception, match=bad):
            _compaction_job.parse_backup_times(bad)


def test_minutes_to_the_next_backup_wrap_around_midnight():
    times = [(0, 0), (4, 0)]
    assert _compaction_job.minutes_to_next_backup(times, at(2, 0)) == 120
    assert _compaction_job.minutes_to_next_backup(times, at(23, 30)) == 30
    assert _compaction_job.minutes_to_next_backup(times, at(4, 0)) == 0
    assert _compaction_job.minutes_to_next_backup([], at(4, 0)) is None


def test_compaction_defers_only_inside_the_quiet_window():
    times = [(0, 0), (4, 0)]
    assert _compaction_job.defer_for_backup(times, 60, at(2, 0)) is None
    assert _compaction_job.defer_for_backup(times, 60, at(3, 30)) == 30
    assert _compaction_job.defer_for_backup(times, 0, at(3, 59)) is None
    assert _compaction_job.defer_for_backup([], 60, at(3, 59)) is None


def test_the_compaction_refuses_a_negative_quiet_window():
    with pytest.raises(SystemExit):
        _compaction_job.parse_scheduled(["/r", "7", "/s", "/k", "--quiet-minutes", "-1"])
