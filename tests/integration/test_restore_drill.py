"""The restore drill against a real borg repository: the backup records a sample, the drill restores and compares.

Also real damaged data: a segment of the repository corrupted, `borg check --repair` replacing the lost chunk
with zeros; borg extract then only warns (rc 1), and both the drill and `borg_archive state=extracted` fail.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import job_config, passphrase_file, run_job, snapshot, write_export

PASSPHRASE = "integration-drill-passphrase-0042"  # noqa: S105 - a throw-away test value
BIG = "antigone/data/big.bin"  # a canary: 3 MB of random bytes, in a chunk of its own


@pytest.fixture
def job(tmp_path):
    """An export (a canary, small files, a logs volume), an append-only keyfile repository, a config."""
    export = write_export(
        tmp_path / "export",
        [(f"antigone/data/f{i:02d}.txt", f"file {i}\n" * (i + 1)) for i in range(30)]
        + [("balearica/app/b.bin", "beta" * 1000), ("balearica/connection-logs/huge.log", "log line\n" * 100)],
    )
    (export / BIG).write_bytes(os.urandom(3_000_000))
    secret = passphrase_file(tmp_path, PASSPHRASE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(BORG_PASSCOMMAND=f"cat {secret}", BORG_BASE_DIR=str(tmp_path / "borgbase"))
    env["BORG_KEYS_DIR"] = str(tmp_path / "keys")
    repo = tmp_path / "repo"
    borg(env, "init", "--encryption", "keyfile-blake2", "--append-only", str(repo))
    state = tmp_path / "state"
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    cfg = job_config(
        tmp_path,
        str(repo),
        export,
        secret,
        exclude=[f"sh:{export}/*/connection-logs"],
        state_dir=str(state),
        drill_canaries=[BIG],
        drill_sample_files=5,
        drill_sample_bytes=3_000_000 + 2000,
    )
    config_path = tmp_path / "backup.json"
    config_path.write_text(json.dumps(cfg))

    def run(*extra):
        proc = run_job(config_path, "--json", *extra)
        assert PASSPHRASE not in proc.stdout + proc.stderr
        return proc

    def drill():
        proc = run("--drill", "--metrics-dir", str(metrics))
        return proc, json.loads(proc.stdout.splitlines()[0])

    return {
        "run": run,
        "drill": drill,
        "env": env,
        "repo": repo,
        "export": export,
        "state": state,
        "metrics": metrics,
        "cfg": cfg,
        "tmp": tmp_path,
    }


def borg(env, *args, check=True, cwd=None):
    proc = subprocess.run(["borg", *args], env=env, capture_output=True, text=True, check=False, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"borg {args}: rc {proc.returncode}: {proc.stderr}")
    return proc


def records(job) -> list:
    return json.loads((job["state"] / "drill-records.json").read_text())["records"]


def write_records(job, data: list) -> None:
    (job["state"] / "drill-records.json").write_text(json.dumps({"format": 1, "records": data}))


def backup(job) -> dict:
    proc = job["run"]("--no-prune")
    assert proc.returncode in (0, 1), proc.stderr  # 1: no sync marker configured is fine, warnings are checked below
    report = json.loads(proc.stdout)
    assert report["errors"] == [], report
    return report


def scratch_left(job) -> list:
    return [p.name for p in job["state"].iterdir() if p.name.startswith("drill-scratch-")]


def corrupt_largest_segment(repo: Path) -> None:
    """Flip 16 bytes in the middle of the largest segment: the canary's chunk (3 MB of random data) is there."""
    segment = max((p for p in (repo / "data").rglob("*") if p.name.isdigit()), key=lambda p: p.stat().st_size)
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    segment.write_bytes(bytes(data))


def test_backup_records_a_bounded_sample_and_the_drill_passes(job):
    report = backup(job)
    (record,) = records(job)
    assert record["archive"] == report["archive"]["name"]
    assert record["export"] == str(job["export"])
    files = {f["path"]: f for f in record["files"]}
    # the canary is always in; random files only within the byte cap (the canary takes almost all of it)
    assert files[BIG]["canary"] is True and files[BIG]["size"] == 3_000_000
    assert sum(f["size"] for f in record["files"]) <= job["cfg"]["drill_sample_bytes"]
    assert 1 < len(files) <= 6 and not [p for p in files if "connection-logs" in p]
    for rel, entry in files.items():
        st = (job["export"] / rel).stat()
        assert (entry["size"], entry["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert len(entry["sha256"]) == 64
    assert report["drill_sample"] == {"files": len(files), "bytes": sum(f["size"] for f in record["files"])}
    mode = (job["state"] / "drill-records.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600

    # the export changes after the archive: the drill compares with the archive's record, not today's files
    (job["export"] / BIG).write_bytes(b"changed later")
    proc, drill = job["drill"]()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert drill["result"] == "passed" and drill["passed"] is True
    assert drill["archive"] == record["archive"]
    assert sorted(drill["verified"]) == sorted(files) and drill["changed"] == []
    assert drill["bytes"] == sum(f["size"] for f in record["files"]) and drill["duration_seconds"] > 0
    assert "PASSED" in proc.stdout and "MiB/s" in proc.stdout
    assert scratch_left(job) == []
    prom = (job["metrics"] / "grus_backup_drill.prom").read_text()
    repo = job["repo"]
    assert f'grus_backup_drill_result{{prefix="grus-",repository="{repo}",result="passed"}} 1.0' in prom
    assert f'grus_backup_drill_files{{prefix="grus-",repository="{job["repo"]}"}} {len(files)}.0' in prom
    assert "grus_backup_drill_last_success_timestamp_seconds{" in prom
    assert f'grus_backup_job_exit_status{{repository="{repo}",task="drill"}} 0.0' in prom
    if shutil.which("promtool"):
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=prom, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_tampered_record_fails_the_drill_and_a_changed_file_is_only_counted(job):
    backup(job)
    (record,) = records(job)
    first, second = record["files"][0], record["files"][1]
    first["sha256"] = "0" * 64  # same size and time, other bytes: a mismatch
    second["size"] += 1  # the file changed between sampling and archiving: counted, not a failure
    write_records(job, [record])
    proc, drill = job["drill"]()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert drill["result"] == "mismatch" and drill["mismatch"] == [first["path"]]
    assert drill["changed"] == [second["path"]]
    assert first["path"] in proc.stderr and "SHA-256" in proc.stderr
    assert scratch_left(job) == []
    prom = (job["metrics"] / "grus_backup_drill.prom").read_text()
    assert 'result="mismatch"} 1.0' in prom
    assert "grus_backup_drill_last_success_timestamp_seconds" not in prom  # never passed: nothing to keep


def test_a_sampled_file_missing_from_the_archive_fails(job):
    backup(job)
    (record,) = records(job)
    record["files"].append({"path": "antigone/data/never-there.txt", "size": 1, "mtime_ns": 1, "sha256": "0" * 64})
    write_records(job, [record])
    proc, drill = job["drill"]()
    assert proc.returncode == 2
    assert drill["result"] == "missing" and drill["missing"] == ["antigone/data/never-there.txt"]
    assert "never-there.txt" in proc.stderr


def test_no_record_fails_with_a_clear_message(job):
    proc, drill = job["drill"]()  # no backup yet: no record
    assert proc.returncode == 2
    assert drill["result"] == "no_record" and "no drill record" in proc.stderr and "run a backup first" in proc.stderr
    backup(job)
    (record,) = records(job)
    record["archive"] = "grus-1999-01-01T00:00:00Z"  # a record whose archive is gone (pruned)
    write_records(job, [record])
    proc, drill = job["drill"]()
    assert proc.returncode == 2 and drill["result"] == "no_record"
    assert "grus-1999-01-01T00:00:00Z" in proc.stderr


def test_the_drill_keeps_the_last_success_across_a_failure(job):
    backup(job)
    assert job["drill"]()[0].returncode == 0
    prom = (job["metrics"] / "grus_backup_drill.prom").read_text()
    kept = [line for line in prom.splitlines() if line.startswith("grus_backup_drill_last_success_timestamp_seconds")]
    write_records(job, [])
    assert job["drill"]()[0].returncode == 2
    again = (job["metrics"] / "grus_backup_drill.prom").read_text()
    assert kept and kept[0] in again.splitlines()
    assert 'result="no_record"} 1.0' in again


def test_damaged_data_fails_the_drill_and_state_extracted(job, run_module):
    report = backup(job)
    name = report["archive"]["name"]
    corrupt_largest_segment(job["repo"])
    # before a repair: borg extract itself fails (an integrity error), and so does the drill
    proc, drill = job["drill"]()
    assert proc.returncode == 2 and drill["result"] == "error"
    assert "integrity" in proc.stderr.lower()
    # the operator's repair on the repository host: append-only off for it, then borg check --repair
    borg(job["env"], "config", str(job["repo"]), "append_only", "0")
    repair_env = dict(job["env"], BORG_CHECK_I_KNOW_WHAT_I_AM_DOING="YES")
    repaired = borg(repair_env, "check", "--repair", str(job["repo"]), check=False)
    assert "Replacing with all-zero chunk" in repaired.stderr, repaired.stderr
    # after the repair: raw borg extract only warns (rc 1) and writes the file with zeros ...
    raw_dest = job["tmp"] / "raw"
    raw_dest.mkdir()
    raw = borg(job["env"], "extract", f"{job['repo']}::{name}", check=False, cwd=raw_dest)
    assert raw.returncode == 1, raw.stderr
    big_in_archive = str(job["export"] / BIG).lstrip("/")
    assert (raw_dest / big_in_archive).stat().st_size == 3_000_000
    # ... the drill fails, naming the damaged file
    proc, drill = job["drill"]()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert drill["result"] == "damaged" and big_in_archive in drill["damaged"]
    assert big_in_archive in proc.stderr
    assert scratch_left(job) == []
    # ... and so does an ad-hoc restore with borg_archive state=extracted (check mode too)
    args = {
        "repo": str(job["repo"]),
        "passcommand": job["cfg"]["passcommand"],
        "base_dir": job["cfg"]["base_dir"],
        "keys_dir": job["cfg"]["keys_dir"],
        "name": name,
        "state": "extracted",
        "dest": str(job["tmp"] / "restore"),
    }
    for check in (True, False):
        result = run_module("borg_archive", args, check=check)
        assert result.failed, result.result
        assert result.result["cause"] == "damaged_data", result.result
        assert big_in_archive in result.result["msg"] and "damaged data" in result.result["msg"]
    assert PASSPHRASE not in json.dumps(result.result)


def test_bad_drill_settings_are_refused(job):
    before = snapshot(job["repo"])
    for key, value in (
        ("drill_canaries", ["../etc/passwd"]),
        ("drill_canaries", ["/etc/passwd"]),
        ("drill_sample_bytes", -1),
    ):
        cfg = dict(job["cfg"], **{key: value})
        Path(job["tmp"] / "backup.json").write_text(json.dumps(cfg))
        proc = job["run"]()
        assert proc.returncode == 2 and key in proc.stderr, proc.stderr
    assert snapshot(job["repo"]) == before and not job["state"].exists()  # refused before anything ran


# Owners and modes the drill must see restored (issue 22): a setuid-root file, a setgid file of another group, a
# file only another user may read, a hard-linked pair. Run as root (borg restores owners only for root).
ATTRIBUTE_FILES = {
    "antigone/attrs/setuid-root": (0, 0, 0o4755),
    "antigone/attrs/setgid-4321": (0, 4321, 0o2750),
    "antigone/attrs/private-4321": (4321, 4321, 0o600),
    "antigone/attrs/linked-a": (4321, 0, 0o640),
}
LINKED = "antigone/attrs/linked-b"  # a hard link of linked-a


def plant_attribute_files(job) -> None:
    for rel, (uid, gid, mode) in ATTRIBUTE_FILES.items():
        path = job["export"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{rel}\n")
        os.chown(path, uid, gid)
        os.chmod(path, mode)  # after chown, which clears setuid and setgid
    os.link(job["export"] / "antigone/attrs/linked-a", job["export"] / LINKED)
    # All of them canaries: always in the sample, whatever the random draw.
    cfg = dict(job["cfg"], drill_canaries=[BIG, *ATTRIBUTE_FILES, LINKED], drill_sample_bytes=3_000_000 + 4000)
    (job["tmp"] / "backup.json").write_text(json.dumps(cfg))


@pytest.mark.skipif(os.geteuid() != 0, reason="borg restores owners only as root")
def test_owners_and_modes_are_recorded_restored_and_wrong_ones_fail_the_drill(job):
    plant_attribute_files(job)
    backup(job)
    (record,) = records(job)
    files = {f["path"]: f for f in record["files"]}
    for rel, (uid, gid, mode) in ATTRIBUTE_FILES.items():
        assert (files[rel]["uid"], files[rel]["gid"], files[rel]["mode"]) == (uid, gid, stat.S_IFREG | mode), rel
    assert files[LINKED]["uid"] == 4321 and files[LINKED]["mode"] == stat.S_IFREG | 0o640

    # Every sampled file comes back with its owner and mode, the setuid and setgid bits included: verified.
    proc, drill = job["drill"]()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert drill["result"] == "passed" and drill["attributes"] == [] and drill["changed"] == []
    assert set(ATTRIBUTE_FILES) | {LINKED} <= set(drill["verified"])

    # A restore that brings the bytes back under another owner or mode is a failed drill, cause `attributes`.
    files["antigone/attrs/private-4321"]["uid"] = 1234
    files["antigone/attrs/setuid-root"]["mode"] = stat.S_IFREG | 0o755
    write_records(job, [record])
    proc, drill = job["drill"]()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert drill["result"] == "attributes"
    assert sorted(drill["attributes"]) == ["antigone/attrs/private-4321", "antigone/attrs/setuid-root"]
    assert "uid 4321 (recorded 1234)" in proc.stderr and "mode 104755 (recorded 100755)" in proc.stderr
    assert 'result="attributes"} 1.0' in (job["metrics"] / "grus_backup_drill.prom").read_text()
    assert scratch_left(job) == []

    # A record from before owners and modes were recorded is compared on what it holds.
    for entry in record["files"]:
        for key in ("uid", "gid", "mode"):
            entry.pop(key)
    write_records(job, [record])
    proc, drill = job["drill"]()
    assert proc.returncode == 0 and drill["result"] == "passed", proc.stdout + proc.stderr
