"""No job of ours ends in a bare traceback: every entry point a unit (or a forced command) runs, made to raise
an exception its own error types do not cover, still writes its metrics with exit status 2, sends the fail
ping, logs one line naming what failed and what was not done, and exits 2.

The exception is injected with monkeypatch (unit tests only); the real unit's failure (a PermissionError at
the stamp, no CAP_FOWNER) is reproduced in tests/integration/test_compact_guard.py.
"""

from __future__ import annotations

import json
import re

import pytest
from ansible_collections.grus.backup.plugins.module_utils import (
    _backup_job,
    _compaction_job,
    _compaction_tools,
    _ping,
    _rsync,
    _sync_receive,
    _unexpected,
)

STAMP_ERROR = PermissionError(1, "Operation not permitted", "/srv/borg/antigone/.cache/grus-last-compact")


@pytest.fixture
def pings(monkeypatch):
    """Every URL the jobs' Pinger opens (a real Pinger, its opener faked)."""
    calls = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, _size):
            return b""

    def opener(request, timeout):
        calls.append(request.full_url)
        return Response()

    def from_env(cls, environ=None):
        return cls("https://hc.example.invalid/check", opener=opener)

    monkeypatch.setattr(_ping.Pinger, "from_env", classmethod(from_env))
    return calls


def raiser(exc: BaseException):
    def boom(*_args, **_kwargs):
        raise exc

    return boom


def exit_status(metrics_dir, task: str) -> float:
    (path,) = metrics_dir.glob(f"grus_backup_{task}*.prom")
    sample = r'^grus_backup_job_exit_status\{[^}]*task="' + task + r'"[^}]*\} (\S+)$'
    (value,) = re.findall(sample, path.read_text(), re.MULTILINE)
    return float(value)


def assert_one_line(err: str, prog: str, kind: str, not_done: str) -> str:
    lines = err.strip().splitlines()
    failed = [line for line in lines if line.startswith(f"{prog}: FAILED: unexpected {kind}: ")]
    assert len(failed) == 1, err
    assert not_done in failed[0] and " at " in failed[0]
    assert "Traceback" not in err and lines[-1].startswith(f"{prog}: "), err
    return failed[0]


def test_the_line_names_the_type_the_message_and_where(monkeypatch):
    monkeypatch.delenv(_unexpected.TRACEBACK_ENV, raising=False)

    def inner():
        raise STAMP_ERROR

    with pytest.raises(PermissionError) as caught:
        inner()
    line = _unexpected.line("grus-borg-compact", caught.value, "nothing more was done")
    assert line.startswith(
        "grus-borg-compact: FAILED: unexpected PermissionError: [Errno 1] Operation not permitted: "
        "'/srv/borg/antigone/.cache/grus-last-compact' (at test_unexpected.py:"
    )
    assert "in inner" in line and line.endswith("; nothing more was done") and "\n" not in line


def test_a_traceback_only_when_asked_and_the_line_stays_last(capsys):
    try:
        raise ValueError("multi\nline")
    except ValueError as exc:
        assert _unexpected.report("job", exc, "x", environ={}) == 2
        assert capsys.readouterr().err.count("\n") == 1
        _unexpected.report("job", exc, "x", environ={_unexpected.TRACEBACK_ENV: "1"})
    err = capsys.readouterr().err
    assert err.startswith("Traceback")
    assert err.splitlines()[-1].startswith("job: FAILED: unexpected ValueError: multi line")


def compaction_argv(tmp_path) -> list[str]:
    repo = tmp_path / "antigone" / "repo"
    repo.mkdir(parents=True)
    return [str(repo), "7", str(tmp_path / "stamp"), str(tmp_path / "keys"), "--metrics-dir", str(tmp_path / "m")]


def test_the_compaction_job_fails_with_metrics_ping_and_one_line(tmp_path, monkeypatch, capsys, pings):
    (tmp_path / "m").mkdir()
    monkeypatch.setattr(_compaction_job, "scheduled_run", raiser(STAMP_ERROR))

    assert _compaction_tools.main(compaction_argv(tmp_path)) == 2  # what the unit's ExecStart= runs

    assert exit_status(tmp_path / "m", "compaction") == 2
    assert pings == ["https://hc.example.invalid/check/start", "https://hc.example.invalid/check/fail"]
    line = assert_one_line(capsys.readouterr().err, "grus-borg-compact", "PermissionError", "nothing was compacted")
    assert "grus-last-compact" in line


def test_the_compaction_job_says_when_the_compaction_itself_ran(tmp_path, monkeypatch, capsys, pings):
    (tmp_path / "m").mkdir()

    def compacted_then_boom(args, observed):
        observed["compacted"] = True
        raise STAMP_ERROR

    monkeypatch.setattr(_compaction_job, "scheduled_run", compacted_then_boom)
    assert _compaction_job.main(compaction_argv(tmp_path)) == 2
    assert_one_line(capsys.readouterr().err, "grus-borg-compact", "PermissionError", "was compacted, but")
    assert pings[-1].endswith("/fail")


@pytest.mark.parametrize(
    ("mode", "target", "not_done"),
    [
        ("--restore-flag", (_compaction_job, "restore_flag"), "append_only = 1 may not be restored"),
        ("--audit-json", (_compaction_tools, "candidates"), "no audit was listed"),
        ("--audit", (_compaction_tools, "candidates"), "no audit was listed"),
        ("--rollback", (_compaction_tools, "candidates"), "the rollback did not finish"),
    ],
)
def test_the_compaction_tools_modes_fail_with_one_line(tmp_path, monkeypatch, capsys, mode, target, not_done):
    monkeypatch.setattr(*target, raiser(KeyError("segment")))
    repo = tmp_path / "antigone" / "repo"
    repo.mkdir(parents=True)
    argv = [mode, str(repo), "--state-dir", str(tmp_path / "state")]
    assert _compaction_tools.main([*argv, "--to-ordinal", "1"] if mode == "--rollback" else argv) == 2
    assert_one_line(capsys.readouterr().err, "grus-borg-compact", "KeyError", not_done)


def backup_config(tmp_path) -> str:
    path = tmp_path / "backup.json"
    data = {"repo": "/srv/repo", "paths": [str(tmp_path)], "passcommand": "true", "state_dir": str(tmp_path / "s")}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("flag", "task", "target", "not_done"),
    [
        ([], "backup", "run_job", "no archive or prune after that point"),
        (["--check"], "check", "run_check", "the repository was not fully checked"),
        (["--verify-data"], "verify_data", "run_check", "the archives' data was not fully read"),
        (["--drill"], "drill", "drill", "no restore was verified"),
    ],
)
def test_each_key_holder_task_fails_with_metrics_ping_and_one_line(
    tmp_path, monkeypatch, capsys, pings, flag, task, target, not_done
):
    metrics = tmp_path / "m"
    metrics.mkdir()
    monkeypatch.setattr(_backup_job, target, raiser(STAMP_ERROR))

    rc = _backup_job.main(["--config", backup_config(tmp_path), *flag, "--metrics-dir", str(metrics)])

    assert rc == 2
    assert exit_status(metrics, task) == 2
    assert 'repository="/srv/repo"' in next(metrics.glob("*.prom")).read_text()  # the configuration was kept
    assert pings == ["https://hc.example.invalid/check/start", "https://hc.example.invalid/check/fail"]
    assert_one_line(capsys.readouterr().err, "grus-backup", "PermissionError", not_done)


def test_inside_the_backup_the_report_keeps_what_was_done(tmp_path, monkeypatch, capsys, pings):
    metrics = tmp_path / "m"
    metrics.mkdir()
    monkeypatch.setattr(_backup_job, "cached_borg_version", lambda *a, **k: None)
    monkeypatch.setattr(_backup_job, "check_sources", raiser(STAMP_ERROR))

    assert _backup_job.main(["--config", backup_config(tmp_path), "--metrics-dir", str(metrics)]) == 2

    assert exit_status(metrics, "backup") == 2 and pings[-1].endswith("/fail")
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "unexpected PermissionError" in x]
    assert line.startswith("grus-backup: FAILED: unexpected PermissionError: ")
    assert "no archive was created, nothing was pruned after that point" in line and "Traceback" not in err


def test_the_scheduled_sync_fails_with_metrics_ping_and_one_line(tmp_path, monkeypatch, capsys, pings):
    metrics = tmp_path / "m"
    metrics.mkdir()
    (tmp_path / "volumes" / "db").mkdir(parents=True)
    config = tmp_path / "sync.json"
    config.write_text(json.dumps({"src": str(tmp_path / "volumes"), "dest": str(tmp_path / "copy"), "lock": None}))
    monkeypatch.setattr(_rsync, "sync", raiser(KeyError("volumes")))  # an OSError is a FAILED line of its own

    assert _rsync.main(["--config", str(config), "--metrics-dir", str(metrics)]) == 2

    assert exit_status(metrics, "sync") == 2
    assert pings == ["https://hc.example.invalid/check/start", "https://hc.example.invalid/check/fail"]
    assert_one_line(capsys.readouterr().err, "nfs-sync", "KeyError", "did not finish")


def test_the_sync_receiver_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_sync_receive, "receive", raiser(STAMP_ERROR))
    assert _sync_receive.main(["--dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is rsync's protocol
    assert_one_line(captured.err, "grus-sync-receive", "PermissionError", "nothing more was received")
