"""Unit tests of the restore drill: the sample (cap in bytes, canaries always in, excludes, record format), the
record on disk, the comparison after a restore, borg extract's damaged-data warnings, and the drill's decisions.

Borg is replaced by a fake runner here; tests/integration/test_restore_drill.py runs the real thing.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
from ansible_collections.grus.backup.plugins.module_utils import (
    _borg_failures,
    _borg_repo,
    _drill_sample,
    _restore_drill,
)
from ansible_collections.grus.backup.plugins.module_utils._backup_job import JobConfig, JobError
from test_borg import FakeRunner, conn, log_line, result


@pytest.fixture
def export(tmp_path) -> Path:
    root = tmp_path / "export"
    for i in range(40):
        path = root / "client" / "vol" / f"f{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (100 * (i + 1)))  # 100 .. 4000 bytes
    (root / "client" / "connection-logs").mkdir()
    (root / "client" / "connection-logs" / "huge.log").write_bytes(b"x" * 10)
    (root / "client" / "canary.txt").write_text("always in the sample\n")
    (root / "client" / "vol" / "link").symlink_to("f00.bin")
    return root


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - seeded: the same draw every run


def skip_logs(path: str) -> bool:
    return path.endswith("/connection-logs")


# ---- the sample ------------------------------------------------------------------------------------------


def test_the_sample_holds_the_canaries_and_random_files_within_the_byte_cap(export):
    sample = _drill_sample.take_sample(
        str(export), ["client/canary.txt"], max_files=10, max_bytes=5000, skip=skip_logs, rng=seeded(7)
    )
    files = {f["path"]: f for f in sample["files"]}
    assert files["client/canary.txt"]["canary"] is True
    assert sample["bytes"] == sum(f["size"] for f in sample["files"]) <= 5000
    assert 1 < len(files) <= 11
    assert not [p for p in files if "connection-logs" in p or p.endswith("link")]
    assert sample["problems"] == []
    for rel, entry in files.items():
        data = (export / rel).read_bytes()
        st = (export / rel).stat()
        assert entry["size"] == len(data) and entry["mtime_ns"] == st.st_mtime_ns
        assert entry["sha256"] == _drill_sample.file_digest(str(export / rel))[0]
        assert set(entry) <= {"path", "size", "mtime_ns", "sha256", "uid", "gid", "mode", "canary"}


def test_canaries_are_in_even_beyond_the_cap_and_random_files_stop_at_the_count(export):
    sample = _drill_sample.take_sample(
        str(export), ["client/vol/f39.bin"], max_files=0, max_bytes=10, skip=skip_logs, rng=seeded(1)
    )
    assert [f["path"] for f in sample["files"]] == ["client/vol/f39.bin"]
    many = _drill_sample.take_sample(str(export), [], max_files=3, max_bytes=10**9, skip=skip_logs)
    assert len(many["files"]) == 3 and not any(f.get("canary") for f in many["files"])


def test_random_files_are_random(export):
    picks = {
        tuple(f["path"] for f in _drill_sample.take_sample(str(export), [], 5, 10**9, rng=seeded(s))["files"])
        for s in range(5)
    }
    assert len(picks) > 1


def test_a_missing_or_excluded_canary_is_a_problem_not_an_exception(export):
    sample = _drill_sample.take_sample(
        str(export), ["client/gone.txt", "client/connection-logs/huge.log", "client/vol"], 2, 10**6, skip=skip_logs
    )
    assert len(sample["problems"]) == 3
    assert "client/gone.txt" in sample["problems"][0] and "connection-logs" in sample["problems"][1]
    assert len(sample["files"]) == 2


@pytest.mark.parametrize("bad", ["/etc/passwd", "../etc/passwd", "a/../../b", "", ".", None])
def test_canaries_must_be_relative_to_the_export(bad):
    with pytest.raises(_drill_sample.SampleError):
        _drill_sample.check_relative(bad)
    with pytest.raises(JobError, match="drill_canaries"):
        JobConfig.from_dict({"repo": "/r", "paths": ["/e"], "drill_canaries": [bad]})


@pytest.mark.parametrize(
    ("key", "value"), [("drill_sample_files", -1), ("drill_sample_bytes", "lots"), ("drill_sample_files", 1.5)]
)
def test_sample_sizes_must_be_whole_numbers(key, value):
    with pytest.raises(JobError, match=key):
        JobConfig.from_dict({"repo": "/r", "paths": ["/e"], key: value})


def test_config_defaults():
    config = JobConfig.from_dict({"repo": "/r", "paths": ["/e"], "drill_sample_files": "7"})
    assert (config.drill_canaries, config.drill_sample_files, config.drill_sample_bytes) == ([], 7, 64 * 1024**2)


# ---- the record on disk ------------------------------------------------------------------------------------


def test_records_are_written_atomically_root_only_keyed_by_archive_and_only_the_last_kept(tmp_path, export):
    state = tmp_path / "state"
    sample = _drill_sample.take_sample(str(export), ["client/canary.txt"], 2, 10**6)
    for i in range(_drill_sample.RECORDS_KEPT + 2):
        _drill_sample.record_sample(str(state), f"grus-{i}", sample, now=1_700_000_000 + i)
    path = state / _drill_sample.RECORDS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["format"] == 1
    names = [r["archive"] for r in data["records"]]
    assert names == [f"grus-{i}" for i in range(2, _drill_sample.RECORDS_KEPT + 2)]
    assert data["records"][0]["export"] == str(export) and data["records"][0]["files"] == sample["files"]
    assert data["records"][0]["recorded"] == "2023-11-14T22:13:22Z"
    assert [p.name for p in state.iterdir()] == [_drill_sample.RECORDS_FILE]  # no temporary file left
    # the same archive again replaces its record
    _drill_sample.record_sample(str(state), "grus-3", {"export": "/x", "files": []})
    assert [r["archive"] for r in _drill_sample.read_records(str(state))][-1] == "grus-3"


def test_a_garbled_record_file_is_an_error_to_read_and_replaced_by_the_next_backup(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / _drill_sample.RECORDS_FILE).write_text("{not json")
    with pytest.raises(_drill_sample.SampleError, match="cannot read"):
        _drill_sample.read_records(str(state))
    _drill_sample.record_sample(str(state), "grus-1", {"export": "/x", "files": []})
    assert [r["archive"] for r in _drill_sample.read_records(str(state))] == ["grus-1"]


# ---- the comparison -------------------------------------------------------------------------------------------


def restored(tmp_path, export, record) -> Path:
    """A copy of the sampled files where borg extract puts them (scratch/<export without />/<path>)."""
    root = tmp_path / "scratch"
    for entry in record["files"]:
        source = export / entry["path"]
        target = root / _drill_sample.archive_path(str(export), entry["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        os.utime(target, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    return root


def test_compare_verifies_counts_changed_and_finds_mismatch_and_missing(tmp_path, export):
    sample = _drill_sample.take_sample(str(export), ["client/canary.txt"], 4, 10**6, skip=skip_logs)
    record = {"export": str(export), "files": sample["files"]}
    root = restored(tmp_path, export, record)
    outcome = _drill_sample.compare(record, str(root))
    assert sorted(outcome["verified"]) == sorted(f["path"] for f in sample["files"])
    assert outcome["bytes"] == sample["bytes"] and _drill_sample.verdict(outcome) == "passed"

    changed, mismatched, missing = record["files"][1], record["files"][2], record["files"][3]
    changed["mtime_ns"] += 1  # changed between sampling and archiving
    mismatched["sha256"] = "0" * 64  # same size and time, other bytes
    (root / _drill_sample.archive_path(str(export), missing["path"])).unlink()
    outcome = _drill_sample.compare(record, str(root))
    assert outcome["changed"] == [changed["path"]]
    assert outcome["mismatch"] == [mismatched["path"]]
    assert outcome["missing"] == [missing["path"]]
    assert _drill_sample.verdict(outcome) == "missing"
    assert _drill_sample.verdict(dict(outcome, missing=[])) == "mismatch"


def test_owners_and_modes_are_recorded_and_compared(tmp_path, export):
    sample = _drill_sample.take_sample(str(export), ["client/canary.txt"], 2, 10**6, skip=skip_logs)
    record = {"export": str(export), "files": sample["files"]}
    for entry in record["files"]:
        st = (export / entry["path"]).stat()
        assert (entry["uid"], entry["gid"], entry["mode"]) == (st.st_uid, st.st_gid, st.st_mode)
    root = restored(tmp_path, export, record)
    for entry in record["files"]:
        (root / _drill_sample.archive_path(str(export), entry["path"])).chmod(stat.S_IMODE(entry["mode"]))
    assert _drill_sample.verdict(_drill_sample.compare(record, str(root))) == "passed"

    # Restored with the setuid bit lost and under another owner: not `changed`, a failed drill.
    first, second = record["files"][0], record["files"][1]
    first["mode"] |= stat.S_ISUID
    second["uid"] += 1
    second["mtime_ns"] += 1  # a restore that could not set the mode leaves the time unset too: still attributes
    outcome = _drill_sample.compare(record, str(root))
    assert outcome["attributes"] == [first["path"], second["path"]] and outcome["changed"] == []
    assert (
        f"{first['path']}: mode {first['mode'] & ~stat.S_ISUID:o} (recorded {first['mode']:o})"
        in (outcome["attribute_details"])
    )
    assert _drill_sample.verdict(outcome) == "attributes"
    assert _drill_sample.verdict(dict(outcome, missing=["x"])) == "missing"

    # A record from before owners and modes were recorded: compared on what it holds.
    for entry in record["files"]:
        for key in _drill_sample.ATTRIBUTES:
            entry.pop(key)
    outcome = _drill_sample.compare(record, str(root))
    assert outcome["attributes"] == [] and outcome["changed"] == [second["path"]]


def test_nothing_verified_is_not_a_pass():
    outcome = {"verified": [], "changed": ["a", "b"], "mismatch": [], "missing": [], "bytes": 0}
    assert _drill_sample.verdict(outcome) == "nothing_verified"


def test_a_tampered_record_path_cannot_leave_the_scratch_directory(tmp_path):
    record = {"export": "/srv/export", "files": [{"path": "../../etc/passwd", "size": 1, "mtime_ns": 1, "sha256": ""}]}
    with pytest.raises(_drill_sample.SampleError):
        _drill_sample.compare(record, str(tmp_path))


# ---- borg extract's damaged-data warnings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "lines", "damaged"),
    [
        # borg 1.2.x
        (
            1,
            [log_line("srv/e/a: File has damaged (all-zero) chunks. Try running borg check --repair.", "WARNING")],
            ["srv/e/a"],
        ),
        (1, [log_line("srv/e/b: Size inconsistency detected: size 10, chunks size 8", "WARNING")], ["srv/e/b"]),
        # borg 1.4.0 (measured): the detail is lost, the msgid and rc 102 remain
        (102, [log_line("srv/e/c: backup error", "WARNING", "BackupError")], ["srv/e/c"]),
        # later borg: its own msgid and rc 113
        (113, [log_line("srv/e/d: file has damaged chunks", "WARNING", "BackupDamagedChunksError")], ["srv/e/d"]),
        (113, [], ["?"]),
        # not damage: a pattern that matched nothing, a changed file
        (1, [log_line("Include pattern 'x' never matched.", "WARNING", "IncludePatternNeverMatchedWarning")], []),
        (0, [log_line("srv/e/z: backup error", "INFO")], []),
    ],
)
def test_damaged_items(rc, lines, damaged):
    logs = [json.loads(line) for line in lines]
    assert _borg_failures.damaged_items(rc, logs) == damaged


def test_extract_fails_on_damaged_data_naming_the_files(tmp_path):
    lines = [log_line(f"srv/e/f{i}: backup error", "WARNING", "BackupError") for i in range(25)]
    runner = FakeRunner(result(102, "", lines))
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.extract(conn(runner), "a", str(tmp_path), ["srv"])
    assert err.value.cause == "damaged_data" and err.value.rc == 102
    assert "srv/e/f0" in err.value.message and "(and 5 more)" in err.value.message
    assert "damaged data in" in err.value.message and str(tmp_path) in err.value.message
    assert err.value.details[:25] == [f"srv/e/f{i}" for i in range(25)]
    # an ordinary warning stays a warning
    runner = FakeRunner(
        result(1, "", [log_line("Include pattern 'x' never matched.", "WARNING", "IncludePatternNeverMatchedWarning")])
    )
    assert len(_borg_repo.extract(conn(runner), "a", str(tmp_path), ["x"])) == 1


# ---- the drill's decisions (borg faked) ------------------------------------------------------------------------


def listing(*names) -> str:
    return json.dumps({"archives": [{"name": n, "id": n, "time": "2026-12-01T00:00:00.000000"} for n in names]})


def test_the_drill_takes_the_newest_recorded_archive():
    records = [{"archive": "grus-1"}, {"archive": "grus-2"}]
    archives = [{"name": n} for n in ("grus-1", "grus-2", "grus-3")]
    assert _restore_drill.pick(records, archives)[1]["name"] == "grus-2"
    assert _restore_drill.pick(records, [{"name": "grus-9"}]) == (None, None)


def test_no_record_and_unknown_archives_fail_clearly(tmp_path):
    report = _restore_drill.run_drill(conn(FakeRunner()), str(tmp_path / "state"), "grus-")
    assert report.result == "no_record" and not report.passed and "no drill record" in report.errors[0]
    _drill_sample.record_sample(str(tmp_path / "state"), "grus-old", {"export": "/e", "files": []})
    report = _restore_drill.run_drill(
        conn(FakeRunner(result(0, listing("grus-new")))), str(tmp_path / "state"), "grus-"
    )
    assert report.result == "no_record" and "grus-old" in report.errors[0]
    report = _restore_drill.run_drill(
        conn(FakeRunner(result(0, listing("grus-old")))), str(tmp_path / "state"), "grus-"
    )
    assert report.result == "no_record" and "holds no file" in report.errors[0]


def test_the_scratch_directory_goes_also_when_the_extract_fails(tmp_path, export):
    state = tmp_path / "state"
    sample = _drill_sample.take_sample(str(export), ["client/canary.txt"], 1, 10**6)
    _drill_sample.record_sample(str(state), "grus-1", sample)
    damaged = result(
        102, "", [log_line(f"{str(export).lstrip('/')}/client/canary.txt: backup error", "WARNING", "BackupError")]
    )
    runner = FakeRunner(result(0, listing("grus-1")), damaged)
    report = _restore_drill.run_drill(conn(runner), str(state), "grus-")
    assert report.result == "damaged" and report.damaged == [f"{str(export).lstrip('/')}/client/canary.txt"]
    assert "canary.txt" in report.errors[0]
    extract_call = runner.calls[1]
    assert extract_call["argv"][-len(sample["files"]) :] == [
        _drill_sample.archive_path(str(export), f["path"]) for f in sample["files"]
    ]
    assert extract_call["cwd"].startswith(str(state / "drill-scratch-"))
    assert not os.path.exists(extract_call["cwd"])
    assert [p.name for p in state.iterdir()] == [_drill_sample.RECORDS_FILE]
    runner = FakeRunner(
        result(0, listing("grus-1")), result(2, "", [log_line("Data integrity error", msgid="IntegrityError")])
    )
    report = _restore_drill.run_drill(conn(runner), str(state), "grus-")
    assert report.result == "error" and "integrity" in report.errors[0]
    assert [p.name for p in state.iterdir()] == [_drill_sample.RECORDS_FILE]
