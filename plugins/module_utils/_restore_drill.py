# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scheduled restore drill: extract the recorded sample of the newest recorded archive and compare.

layer 6: may import _borg_failures, _borg_repo, _drill_sample.

Private to grus.backup; the key holder's ``grus-backup-run --drill`` (``_backup_job``) runs it weekly.
It takes the newest archive of the job's prefix that has a drill record (``_drill_sample``), runs
``borg extract`` of exactly the sampled paths into a scratch directory (``mkdtemp`` in the state
directory: root only; removed afterwards, also when anything fails), and compares owner, mode, size,
modification time and SHA-256 with the record. It fails on: no record for any archive, a borg error, damaged
data (borg's "all-zero chunks" and size warnings, see ``_borg_failures.damaged_items``), a missing file, a
hash mismatch, a wrong owner or mode (``attributes``), or a sample where nothing could be verified. Never a
silent pass.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from . import _drill_sample
from ._borg_failures import BorgError
from ._borg_repo import BorgRepo, extract, list_archives


@dataclass
class DrillReport:
    result: str = "error"
    archive: str | None = None
    archive_time: str | None = None
    files: int = 0
    bytes: int = 0
    duration_seconds: float = 0.0
    verified: list = field(default_factory=list)
    attributes: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    mismatch: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    damaged: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result == _drill_sample.PASSED and not self.errors

    @property
    def throughput(self) -> float:
        """Bytes a second of extract and comparison together (0 when nothing was timed)."""
        return self.bytes / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = dict(vars(self))
        data["throughput_bytes_per_second"] = round(self.throughput, 1)
        data["passed"] = self.passed
        return data

    def fail(self, result: str, message: str) -> DrillReport:
        self.result = result
        self.errors.append(message)
        return self


def pick(records: list, archives: list) -> tuple:
    """``(record, archive)`` of the newest archive (``archives`` oldest first) that has a record."""
    by_name = {r["archive"]: r for r in records}
    for archive in reversed(archives):
        if archive.get("name") in by_name:
            return by_name[archive["name"]], archive
    return None, None


class DrillFailed(Exception):
    """The drill failed before a comparison: ``result`` (one of ``_drill_sample.RESULTS``) and why."""

    def __init__(self, result: str, message: str):
        super().__init__(message)
        self.result = result
        self.message = message


def recorded_archive(conn: BorgRepo, state_dir: str, prefix: str) -> tuple:
    """``(record, archive)``: the newest archive of ``prefix`` with a drill record, or ``DrillFailed``."""
    where = _drill_sample.records_path(state_dir)
    try:
        records = _drill_sample.read_records(state_dir)
    except _drill_sample.SampleError as exc:
        raise DrillFailed("no_record", str(exc)) from exc
    if not records:
        raise DrillFailed(
            "no_record",
            f"no drill record in {where}: the backup job records a sample right before each borg create; "
            "without one there is nothing to compare a restore with (run a backup first)",
        )
    try:
        archives = list_archives(conn, match_archives=prefix)
    except BorgError as exc:
        raise DrillFailed("error", f"borg ({exc.cause}): {exc.message}") from exc
    record, archive = pick(records, archives)
    if record is None:
        raise DrillFailed(
            "no_record",
            f"none of the archives recorded in {where} ({', '.join(r['archive'] for r in records)}) is in "
            f"{conn.repo} (prefix {prefix}): they were pruned or deleted, or the backups stopped recording; "
            "run a backup first",
        )
    return record, archive


def restore_and_compare(conn: BorgRepo, record: dict, archive: dict, scratch: str, report: DrillReport) -> dict:
    """``borg extract`` of the recorded paths into ``scratch``, compared with the record; or ``DrillFailed``."""
    try:
        paths = [
            _drill_sample.archive_path(record["export"], _drill_sample.check_relative(f["path"]))
            for f in record["files"]
        ]
        report.warnings += extract(conn, archive["name"], scratch, paths)
        return _drill_sample.compare(record, scratch)
    except BorgError as exc:
        if exc.cause == "damaged_data":
            report.damaged = [d for d in exc.details if not d.startswith("borg warning")]
            raise DrillFailed(
                "damaged",
                f"damaged data in {conn.repo}::{archive['name']}: borg extract restored {len(report.damaged)} "
                f"sampled file(s) with zeros where data was lost, or with a size that does not add up (borg rc "
                f"{exc.rc}): {_few(report.damaged)}. Run `borg check --verify-data`; a new backup of the same data "
                "heals the chunks (`borg check --repair` afterwards), older archives stay damaged",
            ) from exc
        raise DrillFailed("error", f"borg ({exc.cause}): {exc.message}") from exc
    except (_drill_sample.SampleError, KeyError, TypeError) as exc:
        raise DrillFailed("error", f"the drill record of {archive['name']} is not usable: {exc}") from exc
    except OSError as exc:
        raise DrillFailed("error", f"the drill could not read its scratch directory {scratch}: {exc}") from exc


def run_drill(conn: BorgRepo, state_dir: str, prefix: str, clock=time.monotonic) -> DrillReport:
    """One drill. The report's ``result`` is one of ``_drill_sample.RESULTS``; ``errors`` say why it failed."""
    report = DrillReport()
    try:
        record, archive = recorded_archive(conn, state_dir, prefix)
        report.archive, report.archive_time = archive["name"], archive.get("time")
        report.files = len(record.get("files") or [])
        if not report.files:
            raise DrillFailed("no_record", f"the drill record of {archive['name']} holds no file (an empty export?)")
        scratch = tempfile.mkdtemp(prefix="drill-scratch-", dir=_scratch_parent(state_dir))
        started = clock()
        try:
            outcome = restore_and_compare(conn, record, archive, scratch, report)
        finally:
            report.duration_seconds = round(clock() - started, 3)
            shutil.rmtree(scratch, ignore_errors=True)
    except DrillFailed as exc:
        return report.fail(exc.result, exc.message)
    report.bytes = outcome["bytes"]
    for key in ("verified", "attributes", "changed", "mismatch", "missing"):
        setattr(report, key, outcome[key])
    report.result = _drill_sample.verdict(outcome)
    named = f"{conn.repo}::{archive['name']}"
    if report.missing:
        report.errors.append(f"{len(report.missing)} sampled file(s) not restored from {named}: {_few(report.missing)}")
    if report.mismatch:
        report.errors.append(
            f"{len(report.mismatch)} file(s) restored from {named} differ from their SHA-256 recorded when the "
            f"archive was made (same size and time): {_few(report.mismatch)}"
        )
    if report.attributes:
        report.errors.append(
            f"{len(report.attributes)} file(s) restored from {named} with another owner or mode than recorded "
            f"when the archive was made (a restore that cannot set owners or modes, e.g. a sandbox without chown "
            f"or the setuid bit): {_few(outcome['attribute_details'])}"
        )
    if report.result == "nothing_verified":
        report.errors.append(
            f"nothing verified: every one of the {report.files} sampled file(s) of {named} changed between "
            "sampling and archiving, so no restored byte could be compared"
        )
    return report


def _scratch_parent(state_dir: str) -> str:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    return state_dir


def _few(paths, shown=10) -> str:
    return ", ".join(paths[:shown]) + (f" (and {len(paths) - shown} more)" if len(paths) > shown else "")
