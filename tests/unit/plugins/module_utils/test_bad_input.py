"""Issue 16 item 7: bad input that used to pass silently (or fail unclearly) is refused, clearly, before
anything runs: validators, the runner's environment, the backup job's configuration and --timestamp,
the sync's options, and ssh's host key failure in the failure table."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _backup_job, _prune, _runner
from ansible_collections.grus.backup.plugins.module_utils._backup_job import JobConfig, JobError
from ansible_collections.grus.backup.plugins.module_utils._borg_argv import borg_env
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError, classify_failure
from ansible_collections.grus.backup.plugins.module_utils._borg_repo import BorgRepo
from ansible_collections.grus.backup.plugins.module_utils._borg_validate import (
    TIMESTAMP_TOLERANCE,
    validate_common,
    validate_compression,
    validate_count,
    validate_files_cache,
    validate_retention,
    validate_timestamp,
)
from ansible_collections.grus.backup.plugins.module_utils._rsync import select_volumes
from ansible_collections.grus.backup.plugins.module_utils._rsync_options import SyncError, SyncOptions

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)  # noqa: UP017


# ---- 2: an empty repo, and BORG_* from the parent environment ----------------------------------


@pytest.mark.parametrize("repo", ["", "   ", None])
def test_an_empty_repo_is_refused_before_borg_can_fall_back_to_borg_repo(repo):
    with pytest.raises(BorgError) as err:
        BorgRepo.from_params({"repo": repo})
    assert err.value.cause == "invalid_input"
    assert "repo is empty" in err.value.message and "BORG_REPO" in err.value.message


def test_no_borg_variable_of_the_parent_reaches_a_child(monkeypatch):
    for name in (
        "BORG_REPO",
        "BORG_PASSPHRASE",
        "BORG_PASSCOMMAND",
        "BORG_KEY_FILE",
        "BORG_CACHE_DIR",
        "BORG_SECURITY_DIR",
        "BORG_LOGGING_CONF",
        "BORG_BASE_DIR",
        "BORG_RSH",
    ):
        monkeypatch.setenv(name, "/from/the/operator/shell")
    monkeypatch.setenv("GRUS_UNRELATED", "kept")
    child = _runner.build_env(borg_env(passcommand="cat /p", base_dir="/var/lib/grus"))
    inherited = {k: v for k, v in child.items() if v == "/from/the/operator/shell"}
    assert inherited == {}
    assert "BORG_REPO" not in child and "BORG_KEY_FILE" not in child and "BORG_PASSPHRASE" not in child
    assert child["BORG_BASE_DIR"] == "/var/lib/grus" and child["BORG_PASSCOMMAND"] == "cat /p"
    assert child["GRUS_UNRELATED"] == "kept"
    assert "BORG_REPO" in _runner._SCRUBBED_FROM_PARENT


# ---- 4: a timestamp in the future --------------------------------------------------------------


def test_a_future_timestamp_is_refused_beyond_the_clock_tolerance():
    assert TIMESTAMP_TOLERANCE == _prune.DEFAULT_CLOCK_TOLERANCE
    within = (NOW + timedelta(seconds=TIMESTAMP_TOLERANCE - 1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert validate_timestamp(within, now=NOW) == within
    assert validate_timestamp("2020-01-01T04:00:00", now=NOW) == "2020-01-01T04:00:00"
    with pytest.raises(BorgError) as err:
        validate_timestamp("2099-01-01T00:00:00", now=NOW)
    assert err.value.cause == "invalid_input"
    assert "'2099-01-01T00:00:00' lies in the future" in err.value.message and "prune" in err.value.message


def test_a_reference_file_in_the_future_and_a_garbled_timestamp_are_refused(tmp_path):
    ref = tmp_path / "ref"
    ref.write_text("")
    future = (NOW + timedelta(days=1)).timestamp()
    os.utime(ref, (future, future))
    with pytest.raises(BorgError, match="modification time of"):
        validate_timestamp(str(ref), now=NOW)
    with pytest.raises(BorgError, match="invalid timestamp 'yesterday'"):
        validate_timestamp("yesterday", now=NOW)


# ---- 5: negative counts ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["lock_wait", "max_files", "clock_tolerance"])
def test_negative_counts_are_refused_naming_the_option(option):
    with pytest.raises(BorgError) as err:
        validate_count(option, -1)
    assert err.value.message.startswith(f"{option}=-1 is negative")
    assert validate_count(option, 0) == 0 and validate_count(option, None) is None


def test_a_negative_lock_wait_is_refused_for_every_connection():
    with pytest.raises(BorgError, match="lock_wait=-5 is negative"):
        validate_common({"repo": "/srv/borg/r", "lock_wait": -5})


# ---- 6: compression and files_cache ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        *("none", "lz4", "zstd", "zstd,1", "zstd,22", "zlib,0", "zlib,9", "lzma", "lzma,9"),
        *("auto,zstd,10", "auto,lz4", "obfuscate,1,zstd,3", "obfuscate,110,none", "obfuscate,6,auto,lz4"),
    ],
)
def test_borgs_compression_specs_pass(spec):
    assert validate_compression(spec) == spec


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("zstd,23", "from 1 to 22"),
        ("zstd,0", "from 1 to 22"),
        ("zlib,10", "from 0 to 9"),
        ("gzip", "unknown algorithm 'gzip'"),
        ("ZSTD", "unknown algorithm"),
        ("", "expected none, lz4"),
        ("auto", "expected none, lz4"),
        ("auto,obfuscate,1,lz4", "unknown algorithm 'obfuscate'"),
        ("obfuscate,7,lz4", "obfuscate needs a level"),
        ("obfuscate,1", "expected none, lz4"),
        ("lz4,3", "lz4 takes no such level"),
        ("zstd,3,", "zstd takes no such level"),
    ],
)
def test_bad_compression_is_refused(spec, fragment):
    with pytest.raises(BorgError) as err:
        validate_compression(spec)
    assert err.value.cause == "invalid_input" and fragment in err.value.message


@pytest.mark.parametrize(
    "mode", ["ctime,size,inode", "inode,size,mtime", "ctime,size", "mtime,size", "rechunk,ctime", "disabled", "size"]
)
def test_borgs_files_cache_modes_pass(mode):
    assert validate_files_cache(mode) == mode


@pytest.mark.parametrize(
    "mode", ["ctime", "mtime,inode", "ctime,mtime,size", "disabled,size", "nfs", "", "ctime, size"]
)
def test_bad_files_cache_is_refused(mode):
    with pytest.raises(BorgError, match=f"invalid files_cache {mode!r}"):
        validate_files_cache(mode)


# ---- 9: a zero retention -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0d", "0H", "00w"])
def test_a_zero_keep_within_is_refused_by_name(value):
    with pytest.raises(BorgError) as err:
        validate_retention({"keep_within": value})
    assert f"keep_within={value!r} is a zero interval" in err.value.message


# ---- the backup job's configuration and --timestamp (items 4, 5, 6) ------------------------------


def job_config(**extra):
    data = {"repo": "/srv/repo", "paths": ["/srv/export"], "passcommand": "cat /etc/pw"}
    data.update(extra)
    return JobConfig.from_dict(data)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"repo": "  "}, "repo is empty"),
        ({"lock_wait": -1}, "lock_wait=-1 is negative"),
        ({"clock_tolerance": -300}, "clock_tolerance=-300 is negative"),
        ({"compression": "zstd,99"}, "invalid compression 'zstd,99'"),
        ({"files_cache": "mtime"}, "invalid files_cache 'mtime'"),
        ({"retention": {"keep_within": "0d"}}, "zero interval"),
    ],
)
def test_job_config_refuses_bad_input(extra, fragment):
    with pytest.raises(JobError) as err:
        job_config(**extra)
    assert err.value.kind == "usage" and fragment in err.value.message


def test_job_refuses_a_future_timestamp_before_borg_runs(tmp_path, capsys):
    path = tmp_path / "backup.json"
    path.write_text(json.dumps({"repo": str(tmp_path / "repo"), "paths": [str(tmp_path)]}))
    calls = []

    def runner(argv, **_kw):
        calls.append(argv)
        raise AssertionError(f"borg must not run: {argv}")

    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: UP017
    assert _backup_job.main(["--config", str(path), "--timestamp", future], runner=runner) == 2
    err = capsys.readouterr().err
    assert f"FAILED (usage): --timestamp: timestamp '{future}' lies in the future" in err
    assert calls == []


# ---- 7, 8: the sync's defaults and its marker name ------------------------------------------------


def test_marker_name_of_a_listed_volume_is_refused():
    with pytest.raises(SyncError) as err:
        SyncOptions(src="/srv/volumes", dest="/mnt/copy", volumes=["www", "db"], marker_name="db")
    assert err.value.kind == "usage"
    assert "marker_name 'db' is also the name of a volume" in err.value.message
    # without a marker there is nothing to clash with
    SyncOptions(src="/srv/volumes", dest="/mnt/copy", volumes=["www", "db"], marker_name="db", marker=False)


def test_marker_name_of_a_discovered_volume_is_refused(tmp_path):
    src = tmp_path / "volumes"
    for name in ("www", "state"):
        (src / name).mkdir(parents=True)
        (src / name / "f").write_text("x")
    options = SyncOptions(src=str(src), dest=str(tmp_path / "copy"), marker_name="state", lock=None)
    with pytest.raises(SyncError, match="marker_name 'state' is also the name of a volume"):
        select_volumes(options)


# ---- 10: a changed host key ----------------------------------------------------------------------


def test_a_changed_host_key_has_its_own_cause_not_connection_closed():
    stderr = (
        '{"type": "log_message", "levelname": "ERROR", "message": "Remote: @@@@ WARNING: REMOTE HOST '
        'IDENTIFICATION HAS CHANGED! @@@@"}\n'
        '{"type": "log_message", "levelname": "ERROR", "message": "Remote: Host key verification failed."}\n'
        '{"type": "log_message", "levelname": "ERROR", "msgid": "ConnectionClosed", "message": "Connection closed '
        'by remote host"}\n'
    )
    logs = [json.loads(line) for line in stderr.splitlines()]
    failure = classify_failure(2, logs, stderr)
    assert failure.cause == "host_key_changed"
    assert failure.message.startswith(
        "host key verification failed (possible man-in-the-middle, or the repository host was reinstalled)"
    )
    # without ssh's words it stays a closed connection
    assert classify_failure(2, logs[2:], stderr.splitlines()[2]).cause == "connection_closed"


def test_a_closed_connection_asks_ssh_alone_whether_it_refused_the_host_key():
    """borg loses ssh's stderr now and then: the probe is the same ssh, stopped before any login."""
    calls = []

    def runner(argv, **_kw):
        calls.append(argv)
        if argv[0] == "borg":
            closed = '{"type": "log_message", "levelname": "ERROR", "msgid": "ConnectionClosed", "message": "x"}\n'
            return _runner.Result(argv, 80, "", closed)
        return _runner.Result(
            argv, 255, "", "Host key for [h]:2222 has changed and you have requested strict checking.\n"
        )

    conn = BorgRepo.from_params(
        {"repo": "ssh://borg@sarus.example.net:2222/srv/borg/a", "rsh": "ssh -i /k -p 22"}, runner=runner
    )
    with pytest.raises(BorgError) as err:
        conn.run(["borg", "list", "--", conn.repo])
    assert err.value.cause == "host_key_changed" and "has changed" in err.value.message
    probe = calls[1]
    assert probe[:2] == ["ssh", "-o"] and "PubkeyAuthentication=no" in probe and "BatchMode=yes" in probe
    assert probe[-5:] == ["-p", "2222", "--", "borg@sarus.example.net", "true"]
    assert probe.index("PubkeyAuthentication=no") < probe.index("-i")  # ours first: ssh takes the first value

    # ssh connects (a key problem elsewhere): still a closed connection; local repositories are never probed
    conn.runner = lambda argv, **_kw: (
        runner(argv) if argv[0] == "borg" else _runner.Result(argv, 255, "", "Permission denied (publickey).\n")
    )
    with pytest.raises(BorgError) as err:
        conn.run(["borg", "list", "--", conn.repo])
    assert err.value.cause == "connection_closed"
    local = BorgRepo.from_params({"repo": "/srv/borg/a"}, runner=runner)
    calls.clear()
    with pytest.raises(BorgError):
        local.run(["borg", "list", "--", local.repo])
    assert [c[0] for c in calls] == ["borg"]
