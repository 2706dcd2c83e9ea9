# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key holder's scheduled backup run: guards, one archive, guarded prune.

layer 7: may import _config, _marker, _metrics, _ping, _unexpected, _volume_guard, _drill_sample, _check_yield,
_borg_argv, _borg_failures, _borg_validate, _borg_parse, _borg_version, _borg_repo, _prune, _restore_drill

Private to grus.backup and pure standard library. The ``key_holder`` role ships
this file with the module utilities it imports (and nothing else) as a plain
package beside the systemd job, which runs:

    python3 -m <package>._backup_job --config /etc/grus-backup/backup.json

The configuration is a JSON object (see :class:`JobConfig`); it holds no secret:
the passphrase reaches borg through ``passcommand`` (a root-only file).

How a run goes, and why:

1. Guards. Every declared source exists, is a directory, is not empty (an
   unmounted disk shows an empty mount point), and is a mount point where one is
   declared. A failed guard stops the run before borg starts (exit 2).
2. Freshness. Each sync client's marker is read. The sync writes it with
   ``state: running`` before rsync starts and ``state: done`` (with the time) after
   a successful run, ``state: failed`` after a failed one. A sync still running is
   waited for, at most ``sync_wait_minutes``. A missing, stale, failed or still
   running sync is a WARNING: the copy there is still backed up (the last good
   data is better than none, and the archive of the previous run keeps the one
   before) but the run exits 1 so the alert fires.
3. ONE ``borg create`` of every path (the export), with one exclude list (the
   connection-logs volume). ``--files-cache mtime,size``: a sync that rewrites a
   file with the same content and mtime gives it a new inode and ctime, and the
   NFS server's inode numbers are not stable; rsync itself decides by size and
   mtime, so the copy changes exactly when these do.
4. Prune, only after a successful create (rc 0 or 1), through the one guarded prune
   (``_prune.guarded_prune``, which the borg_archive module uses too): ``borg prune
   --dry-run --list`` first, which also lists every archive of this job with its time,
   then ``borg delete`` of exactly the archives it planned, then a listing to verify.
   Clock sanity, two ways: if the newest archive lies in the future, this host's
   clock went backwards; if this host's clock and a sync client's disagreed when
   the client's marker landed (the marker's time against the file's ctime), one of
   them jumped. Either way the ``--keep-within`` window would slide: nothing is
   pruned and the run fails. If the prune would delete more than ``max_deletions`` archives (a
   clock jump forwards, a typo in the retention) nothing is pruned and the run
   fails. Space is never reclaimed here (no compact: the repository host does
   that, late).
5. The shrink guard (``_volume_guard``): the volumes are measured (files, bytes)
   before the create and compared with the previous run's; a volume that vanished
   or lost more than ``shrink_share`` of its files or bytes, or an archive whose
   new data is more than ``rewrite_share`` of its size, still gets its archive but
   sets a hold (``<state_dir>/prune-hold.json``) that stops every prune, and the
   run exits 1, until an operator has looked and released it (``--release-hold``).
   The retention must never eat the last good archives of a wiped or encrypted
   volume.

6. The restore drill's sample (``_drill_sample``): right before the create, the canaries
   (``drill_canaries``, relative to the export) and up to ``drill_sample_files`` random regular files,
   within ``drill_sample_bytes``, are hashed (SHA-256); once the archive exists they are recorded
   under its name in ``<state_dir>/drill-records.json``. A canary that is missing is a warning. A
   sampling failure never stops the backup (a warning: the drill then has an older record or none).

7. Noticing. With ``--metrics-dir`` the run writes its metrics for node_exporter's textfile
   collector (``_metrics``: times, exit status, the archive's sizes, each volume, each sync
   marker, the prune's plan, deletions and hold); with ``GRUS_BACKUP_PING_URL`` in the
   environment it pings a dead man's switch (``_ping``). Neither can fail the run.

``--check`` and ``--verify-data`` run ``borg check`` (the weekly and monthly units) with the same
metrics and pings, as the tasks ``check`` and ``verify_data``. ``--drill`` runs the restore drill
(``_restore_drill``, the weekly drill unit) as the task ``drill``: exit 0 when it passed, 2 otherwise.
Backups come first (``_check_yield``): a backup makes a running check or verify let go of the
repository lock before its ``borg create``; the check says it yielded and exits 0, and a check waits
for a running backup before it starts. With ``check_max_duration`` the check's repository part is a partial, resumable
``borg check --repository-only --max-duration`` (the archives' metadata are checked every run); a
check is "complete" when its repository pass reached the end and the archives passed, and the
metric ``grus_backup_check_last_complete_timestamp_seconds`` says when that last happened.

Exit status: 0 ok, 1 done with warnings, 2 error or refusal.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import _check_yield, _drill_sample, _marker, _metrics, _ping, _unexpected, _volume_guard
from ._borg_argv import DEFAULT_COMPRESSION, DEFAULT_LOCK_WAIT, check_argv
from ._borg_failures import BorgError
from ._borg_parse import parse_archive_time
from ._borg_repo import BorgRepo, create_archive
from ._borg_validate import (
    validate_compression,
    validate_count,
    validate_files_cache,
    validate_repo,
    validate_retention,
    validate_timestamp,
)
from ._borg_version import cached_borg_version
from ._config import dataclass_kwargs
from ._prune import DEFAULT_CLOCK_TOLERANCE, DEFAULT_MAX_DELETIONS, guarded_prune
from ._restore_drill import DrillReport, run_drill

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2

DEFAULT_RETENTION = {"keep_within": "14d"}
DEFAULT_FILES_CACHE = "mtime,size"
DEFAULT_MARKER_MAX_AGE = 270  # 4 h between syncs, and a margin
DEFAULT_SYNC_WAIT = 30  # minutes to wait for a sync still running when the backup starts
DEFAULT_STATE_DIR = "/var/lib/grus-backup"
SYNC_POLL_SECONDS = 5
BACKUP_WAIT_SECONDS = 6 * 3600  # a check waits this long at most for a running backup (its TimeoutStartSec)
ARCHIVE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class JobError(Exception):
    """The run was refused or failed; ``message`` is safe to log (no secret)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class JobConfig:
    """One backup job. Field names follow the borg modules' options where they overlap."""

    repo: str
    paths: list
    passcommand: str | None = None
    rsh: str | None = None
    remote_path: str | None = None
    lock_wait: int = DEFAULT_LOCK_WAIT
    host_id: str | None = None
    keys_dir: str | None = None
    base_dir: str | None = None
    archive_prefix: str = "grus-"
    exclude: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    marker_max_age_minutes: int = DEFAULT_MARKER_MAX_AGE
    sync_wait_minutes: float = DEFAULT_SYNC_WAIT
    compression: str = DEFAULT_COMPRESSION
    files_cache: str = DEFAULT_FILES_CACHE
    one_file_system: bool = False
    retention: dict = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    max_deletions: int = DEFAULT_MAX_DELETIONS
    prune: bool = True
    clock_tolerance: int = DEFAULT_CLOCK_TOLERANCE
    state_dir: str = DEFAULT_STATE_DIR
    shrink_share: float = _volume_guard.DEFAULT_SHRINK_SHARE
    rewrite_share: float = _volume_guard.DEFAULT_REWRITE_SHARE
    drill_canaries: list = field(default_factory=list)
    drill_sample_files: int = _drill_sample.DEFAULT_SAMPLE_FILES
    drill_sample_bytes: int = _drill_sample.DEFAULT_SAMPLE_BYTES
    check_max_duration: int = 0
    yield_wait: int = _check_yield.DEFAULT_YIELD_WAIT
    borg: str = "borg"

    @classmethod
    def from_dict(cls, data: dict) -> JobConfig:
        if not isinstance(data, dict):
            raise JobError("usage", "the configuration must be a JSON object")
        if "passphrase" in data:
            raise JobError("usage", "never put the passphrase in the configuration; use passcommand")
        try:
            config = cls(**dataclass_kwargs(cls, data, ("repo", "paths"), "configuration key"))
        except ValueError as exc:
            raise JobError("usage", str(exc)) from exc
        config.validate()
        return config

    def validate(self) -> None:
        self.paths = [str(p) for p in self.paths]
        self.exclude = [str(p) for p in self.exclude or []]
        self.max_deletions = int(self.max_deletions)
        if self.max_deletions < 0:
            raise JobError("usage", "max_deletions must be 0 or more")
        self.sync_wait_minutes = float(self.sync_wait_minutes)
        if self.sync_wait_minutes < 0:
            raise JobError("usage", "sync_wait_minutes must be 0 or more")
        if not self.archive_prefix or "/" in self.archive_prefix or "{" in self.archive_prefix:
            raise JobError("usage", f"invalid archive_prefix {self.archive_prefix!r}")
        for share in ("shrink_share", "rewrite_share"):
            value = float(getattr(self, share))
            if not 0 < value <= 1:
                raise JobError("usage", f"{share} must be above 0 and at most 1 (a share), not {value}")
            setattr(self, share, value)
        self.validate_drill()
        if not os.path.isabs(self.state_dir):
            raise JobError("usage", f"state_dir must be an absolute path, not {self.state_dir!r}")
        try:
            self.retention = validate_retention(self.retention)
            # Bad input fails here, before the run starts (and before borg could misread it).
            validate_repo(self.repo)
            self.lock_wait = validate_count("lock_wait", self.lock_wait, "0 or more seconds")
            self.clock_tolerance = validate_count("clock_tolerance", self.clock_tolerance, "0 or more seconds")
            self.check_max_duration = validate_count(
                "check_max_duration", self.check_max_duration, "0 (a full check) or more seconds"
            )
            self.yield_wait = validate_count("yield_wait", self.yield_wait, "0 or more seconds")
            validate_compression(self.compression)
            validate_files_cache(self.files_cache)
        except BorgError as exc:
            raise JobError("usage", exc.message) from exc
        normalised = []
        for given in self.sources:
            source = {"path": given} if isinstance(given, str) else dict(given)
            if not source.get("path"):
                raise JobError("usage", f"a source needs a path: {source!r}")
            normalised.append(
                {
                    "path": str(source["path"]),
                    "mountpoint": bool(source.get("mountpoint", False)),
                    "allow_empty": bool(source.get("allow_empty", False)),
                }
            )
        self.sources = normalised
        markers = []
        for given in self.markers:
            marker = {"path": given} if isinstance(given, str) else dict(given)
            marker.setdefault("max_age_minutes", self.marker_max_age_minutes)
            if not marker.get("path") or not marker.get("max_age_minutes"):
                raise JobError("usage", f"a marker needs a path and max_age_minutes > 0: {given!r}")
            markers.append({"path": str(marker["path"]), "max_age_minutes": int(marker["max_age_minutes"])})
        self.markers = markers

    def validate_drill(self) -> None:
        """The restore drill's sample: whole numbers of files and bytes, canaries relative to the export."""

        for name in ("drill_sample_files", "drill_sample_bytes"):
            value = getattr(self, name)
            try:
                number = int(value) if not isinstance(value, (bool, float)) else None
            except (TypeError, ValueError):
                number = None
            if number is None or number < 0:
                raise JobError("usage", f"{name} must be a whole number, 0 or more, not {value!r}")
            setattr(self, name, number)
        if not isinstance(self.drill_canaries, list):
            raise JobError("usage", "drill_canaries must be a list of paths relative to the export")
        try:
            self.drill_canaries = [_drill_sample.check_relative(c) for c in self.drill_canaries]
        except _drill_sample.SampleError as exc:
            raise JobError("usage", f"drill_canaries: {exc}") from exc

    def connection(self, runner=None) -> BorgRepo:
        # The configuration's field names are the modules' option names: one way to connect.
        return BorgRepo.from_params(vars(self), borg=self.borg, runner=runner)


@dataclass
class JobReport:
    archive: dict | None = None
    pruned: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    markers: list = field(default_factory=list)
    sync_waited_seconds: float = 0.0
    volumes: dict = field(default_factory=dict)
    prune_hold: dict | None = None
    pruned_run: bool = False
    drill_sample: dict | None = None
    yielded_by: dict | None = None  # the backup made this running check let go
    check_yielded: bool = False  # the check let go of the repository for a backup
    check_complete: bool = False  # the check covered the whole repository and every archive, and passed
    check_notes: list = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_WARNING if self.warnings else EXIT_OK

    def to_dict(self) -> dict:
        return {
            "archive": self.archive,
            "pruned": self.pruned,
            "kept": self.kept,
            "warnings": self.warnings,
            "errors": self.errors,
            "markers": self.markers,
            "sync_waited_seconds": self.sync_waited_seconds,
            "volumes": self.volumes,
            "prune_hold": self.prune_hold,
            "drill_sample": self.drill_sample,
            "yielded_by": self.yielded_by,
            "check_yielded": self.check_yielded,
            "check_complete": self.check_complete,
            "check_notes": self.check_notes,
            "exit_status": self.exit_status,
        }


# ---- pure helpers -------------------------------------------------------------------------


def archive_name(prefix: str, moment: datetime) -> str:
    """``<prefix><UTC time>``: sortable, and unique per second (the job runs once at a time)."""
    return prefix + moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


def check_sources(sources, is_mount=os.path.ismount) -> None:
    """Every source exists, is a directory, is a mount point where declared, and is not empty."""
    problems = []
    for source in sources:
        path = source["path"]
        if not os.path.exists(path):
            problems.append(f"{path} does not exist")
        elif not os.path.isdir(path):
            problems.append(f"{path} is not a directory")
        elif source.get("mountpoint") and not is_mount(path):
            problems.append(f"{path} is not mounted (declared a mount point)")
        elif not source.get("allow_empty") and not any(True for _entry in os.scandir(path)):
            problems.append(f"{path} is empty (unmounted disk?)")
    if problems:
        raise JobError("guard", "refusing to back up: " + "; ".join(problems))


def wait_for_syncs(markers, wait_seconds: float, clock=time.monotonic, sleep=time.sleep) -> float:
    """Wait (at most ``wait_seconds``) while a sync client's marker says it is still running.

    Returns the seconds waited. A sync that overran its slot is waited for rather than
    archived half-way; one that never finishes (it died) costs at most the wait.
    """
    start = clock()
    while True:
        running = [m for m in markers if _marker.is_running(m["path"])]
        waited = clock() - start
        if not running or waited >= wait_seconds:
            return waited
        sleep(min(SYNC_POLL_SECONDS, max(0.1, wait_seconds - waited)))


def check_clock_skew(markers, tolerance_seconds: int) -> None:
    """Refuse to prune when this host's clock and a sync client's disagreed when its marker landed.

    An independent clock: a jump of this host's clock (forwards: the retention window slides and
    deletes archives early; backwards) shows as a skew at the next sync, 15 minutes before the run,
    however small the jump is beyond the tolerance. Which clock is wrong cannot be told; pruning
    waits until they agree.
    """
    for marker in markers:
        skew = marker.get("clock_skew_seconds")
        if skew is not None and abs(skew) > tolerance_seconds:
            raise JobError(
                "clock",
                f"refusing to prune: this host's clock and the sync client's disagreed by {skew:+d} s when the "
                f"marker {marker['path']} was written (it says {marker['time']}; tolerance {tolerance_seconds} s). "
                "A clock that jumped makes the retention delete the wrong archives; fix the clocks (NTP) first. "
                "This run's archive was made",
            )


# ---- the run --------------------------------------------------------------------------------


def run_job(config: JobConfig, *, now=None, timestamp=None, runner=None, do_prune=None) -> JobReport:
    """One backup run. Returns a report; refusals and failures are in ``report.errors``."""
    report = JobReport()
    with _check_yield.BackupRegistration(config.state_dir):
        _run_job(config, report, now, timestamp, runner, do_prune)
    return report


def _run_job(config: JobConfig, report: JobReport, now, timestamp, runner, do_prune) -> None:
    conn = config.connection(runner=runner)
    try:
        cached_borg_version(config.borg, runner=runner)
        check_sources(config.sources)
        report.sync_waited_seconds = round(wait_for_syncs(config.markers, config.sync_wait_minutes * 60), 1)
        now = now or datetime.now(timezone.utc)  # noqa: UP017
        for marker in config.markers:
            marker_report, warning = _marker.judge(marker["path"], marker["max_age_minutes"], now)
            report.markers.append(marker_report)
            if warning:
                report.warnings.append(warning)
        moment = now
        borg_timestamp = None
        if timestamp:
            moment = datetime.strptime(timestamp, ARCHIVE_TIME_FORMAT).replace(tzinfo=timezone.utc)  # noqa: UP017
            borg_timestamp = timestamp
        report.volumes = _volume_guard.measure_volumes(config.paths, config.exclude)
        sample = sample_for_drill(config, report)
        make_check_yield(config, report)
        created = create_named_by_second(config, conn, moment, borg_timestamp)
        report.archive = created["archive"]
        report.warnings.extend(created["warnings"])
        record_for_drill(config, report, sample)
        guard_volumes(config, report)
        if (config.prune if do_prune is None else do_prune) and not report.prune_hold:
            check_clock_skew(report.markers, config.clock_tolerance)
            prune_guarded(conn, config, report, now=now)
    except JobError as exc:
        report.errors.append(f"{exc.kind}: {exc.message}")
    except BorgError as exc:
        report.errors.append(f"borg ({exc.cause}): {exc.message}")
    except Exception as exc:  # in the report: the metrics still say what was made before it
        done = f"archive {report.archive} was created, " if report.archive else "no archive was created, "
        report.errors.append(f"{_unexpected.describe(exc)}; {done}nothing was pruned after that point")


def make_check_yield(config: JobConfig, report: JobReport) -> None:
    """A running check or verify lets go of the repository before this run's ``borg create``."""
    report.yielded_by = _check_yield.ask_check_to_yield(config.state_dir, config.yield_wait)
    if report.yielded_by and not report.yielded_by["stopped"]:
        report.warnings.append(
            f"a running {report.yielded_by['task'] or 'check'} (pid {report.yielded_by['pid']}) did not let go of "
            f"the repository within {config.yield_wait} s; the backup waits for the repository lock "
            f"(lock_wait {config.lock_wait} s)"
        )


def create_named_by_second(config: JobConfig, conn: BorgRepo, moment: datetime, borg_timestamp=None) -> dict:
    """``borg create`` of the archive named after ``moment``, to the second.

    A run that ended within the second this one started (``backup_now`` right after the timer, a
    drill) holds that name: borg refuses it before reading any file, and this run takes the next
    second's name instead of failing. An explicit ``--timestamp`` names one archive: a clash there
    is an error.
    """

    def create(at: datetime) -> dict:
        return create_archive(
            conn,
            archive_name(config.archive_prefix, at),
            config.paths,
            exclude=config.exclude,
            compression=config.compression,
            files_cache=config.files_cache,
            one_file_system=config.one_file_system,
            timestamp=borg_timestamp,
            comment=f"grus.backup scheduled run on {socket.gethostname()}",
        )

    try:
        return create(moment)
    except BorgError as exc:
        if exc.cause != "archive_exists" or borg_timestamp:
            raise
    time.sleep(1.0 - time.time() % 1.0)  # into the next second
    return create(max(datetime.now(timezone.utc), moment + timedelta(seconds=1)))  # noqa: UP017


def sample_for_drill(config: JobConfig, report: JobReport) -> dict | None:
    """The restore drill's sample of the export, taken right before the create (``None``: none taken).

    Only the first path (the export) is sampled: the drill's canaries are relative to it.
    """
    export = config.paths[0] if config.paths else None
    if not export:
        return None
    try:
        sample = _drill_sample.take_sample(
            export,
            config.drill_canaries,
            config.drill_sample_files,
            config.drill_sample_bytes,
            skip=lambda path: _volume_guard.excluded(path, config.exclude),
        )
    except (OSError, _drill_sample.SampleError) as exc:
        report.warnings.append(f"no restore drill sample taken of {export}: {exc}")
        return None
    report.warnings.extend(sample["problems"])
    return sample


def record_for_drill(config: JobConfig, report: JobReport, sample: dict | None) -> None:
    """Record the sample under the archive's name (after the create: only an archive that exists gets one)."""
    name = (report.archive or {}).get("name")
    if sample is None or not name:
        return
    try:
        _drill_sample.record_sample(config.state_dir, name, sample)
    except OSError as exc:
        report.warnings.append(f"the restore drill sample of {name} was not recorded in {config.state_dir}: {exc}")
        return
    report.drill_sample = {"files": len(sample["files"]), "bytes": sample["bytes"]}


def guard_volumes(config: JobConfig, report: JobReport) -> None:
    """Compare the archived volumes with the previous run's; hold the prune on a sign of destruction.

    The new measure becomes the baseline either way; a hold stays until it is released.
    """
    previous = _volume_guard.previous_volumes(config.state_dir)
    stats = (report.archive or {}).get("stats") or {}
    signs = _volume_guard.shrink_signs(previous, report.volumes, config.shrink_share)
    rewrite = _volume_guard.rewrite_sign(previous, report.volumes, stats, config.rewrite_share)
    signs += [rewrite] if rewrite else []
    name = (report.archive or {}).get("name") or "?"
    _volume_guard.record_volumes(config.state_dir, name, report.volumes)
    if signs:
        _volume_guard.set_hold(config.state_dir, name, signs)
    report.prune_hold = _volume_guard.read_hold(config.state_dir)
    if report.prune_hold:
        hold_file = os.path.join(config.state_dir, _volume_guard.HOLD_FILE)
        report.warnings.append(
            "prune held: "
            + "; ".join(report.prune_hold.get("reasons", []))
            + f". Nothing is pruned until an operator has checked the volumes and the archives and released the"
            f" hold (grus-backup-run --release-hold, which removes {hold_file})"
        )


def prune_guarded(conn: BorgRepo, config: JobConfig, report: JobReport, now=None) -> None:
    """The one guarded prune (``_prune.guarded_prune``) with this job's retention and limits.

    A refusal (clock, max_deletions) becomes a ``JobError`` that says this run's archive was made.
    """
    try:
        plan = guarded_prune(
            conn,
            config.retention,
            match_archives=config.archive_prefix,
            max_deletions=config.max_deletions,
            clock_tolerance=config.clock_tolerance,
            now=now,
        )
    except BorgError as exc:
        if exc.cause not in ("clock", "max_deletions"):
            raise
        raise JobError(exc.cause, f"{exc.message}. This run's archive was made") from exc
    report.warnings.extend(plan["warnings"])
    report.pruned_run = True
    report.pruned = [a["name"] for a in plan["pruned"]]
    report.kept = [a["name"] for a in plan["kept"]]


# ---- noticing: metrics ----------------------------------------------------------------------


def record_backup(metrics: _metrics.JobMetrics, config: JobConfig, report: JobReport) -> None:
    """The backup run's own samples (the job's times and status are added by ``finish``)."""
    where = {"repository": config.repo, "prefix": config.archive_prefix}
    stats = (report.archive or {}).get("stats") or {}
    for name, key in (
        ("grus_backup_archive_original_bytes", "original_size"),
        ("grus_backup_archive_compressed_bytes", "compressed_size"),
        ("grus_backup_archive_deduplicated_bytes", "deduplicated_size"),
        ("grus_backup_archive_files", "nfiles"),
    ):
        metrics.set(name, stats.get(key), **where)
    if report.pruned_run:
        metrics.set("grus_backup_archives", len(report.kept), **where)
        metrics.set("grus_backup_prune_planned_archives", len(report.pruned), **where)
        metrics.set("grus_backup_prune_deleted_archives", len(report.pruned), **where)
    if report.archive:
        metrics.set("grus_backup_prune_held", 1 if report.prune_hold else 0, **where)
    for path, measure in sorted(report.volumes.items()):
        labels = {"client": os.path.basename(os.path.dirname(path)), "volume": os.path.basename(path)}
        metrics.set("grus_backup_volume_files", measure.get("files"), **labels)
        metrics.set("grus_backup_volume_bytes", measure.get("bytes"), **labels)
    for marker in report.markers:
        client = os.path.basename(os.path.dirname(marker["path"]))
        age = marker.get("age_minutes")
        metrics.set("grus_backup_sync_marker_age_seconds", None if age is None else age * 60, client=client)
        metrics.set("grus_backup_sync_marker_state", 1, client=client, state=marker.get("state") or "unreadable")
        metrics.set("grus_backup_sync_clock_skew_seconds", marker.get("clock_skew_seconds"), client=client)


def run_check(config: JobConfig, verify_data: bool, runner=None, yielder=None) -> JobReport:
    """``borg check`` (``--verify-data``): the weekly and monthly units' run, as a report.

    It registers (one check at a time), waits while a backup runs, and gives way to a backup
    (``yielder``: SIGTERM stops its borg; the run then reports that it yielded, not an error).
    """
    report = JobReport()
    yielder = yielder or _check_yield.Yielder()
    conn = config.connection(runner=runner or yielder.run)
    task = "verify_data" if verify_data else "check"
    try:
        with _check_yield.Registration(config.state_dir, task):
            wait_for_backups(config.state_dir, yielder)
            if not yielder.requested:
                check_repository(config, conn, verify_data, report)
    except _check_yield.CheckBusy as exc:
        report.check_notes.append(f"skipped: {exc}")
    except BorgError as exc:
        if not yielder.requested:
            report.errors.append(f"borg check ({exc.cause}): {exc.message}")
    if yielder.requested:
        report.check_yielded = True
        report.check_complete = False
        report.check_notes.append("yielded: stopped for a backup (SIGTERM); the next run starts again")
    return report


def record_drill(metrics: _metrics.JobMetrics, config: JobConfig, report: DrillReport) -> None:
    """The drill's samples; its last success survives a failed drill (read back from the previous file)."""
    where = {"repository": config.repo, "prefix": config.archive_prefix}
    metrics.set("grus_backup_drill_result", 1, result=report.result, **where)
    if report.archive:
        metrics.set("grus_backup_drill_files", report.files, **where)
        metrics.set("grus_backup_drill_verified_files", len(report.verified), **where)
        metrics.set("grus_backup_drill_changed_files", len(report.changed), **where)
        metrics.set("grus_backup_drill_bytes", report.bytes, **where)
        metrics.set("grus_backup_drill_duration_seconds", report.duration_seconds, **where)
        archive_time = parse_archive_time(report.archive_time)
        metrics.set("grus_backup_drill_archive_timestamp_seconds", archive_time and archive_time.timestamp(), **where)
    passed = metrics.clock() if report.passed else None
    metrics.set_kept("grus_backup_drill_last_success_timestamp_seconds", passed, **where)


def drill(config: JobConfig, as_json: bool, runner=None) -> DrillReport:
    """``--drill``: the restore drill, told in the journal (and as JSON with ``--json``)."""
    report = run_drill(config.connection(runner=runner), config.state_dir, config.archive_prefix)
    if as_json:
        _say(json.dumps(report.to_dict()))
    named = f"{config.repo}::{report.archive}" if report.archive else config.repo
    mib = report.bytes / 1024**2
    _say(
        f"grus-backup: restore drill of {named}: {'PASSED' if report.passed else 'FAILED (' + report.result + ')'}: "
        f"{len(report.verified)} of {report.files} sampled file(s) verified by SHA-256, {mib:.1f} MiB in "
        f"{report.duration_seconds:.1f} s ({report.throughput / 1024**2:.1f} MiB/s); "
        f"{len(report.changed)} changed between sampling and archiving"
    )
    for warning in report.warnings:
        _say(f"grus-backup: WARNING: {warning}", sys.stderr)
    for error in report.errors:
        _say(f"grus-backup: FAILED: restore drill: {error}", sys.stderr)
    return report


def wait_for_backups(state_dir: str, yielder, limit=BACKUP_WAIT_SECONDS, clock=time.monotonic, sleep=time.sleep):
    """Wait while a backup runs (it comes first), at most ``limit`` seconds or until told to yield."""
    start = clock()
    while not yielder.requested and _check_yield.backup_running(state_dir) and clock() - start < limit:
        sleep(_check_yield.POLL_SECONDS * 5)


def check_repository(config: JobConfig, conn: BorgRepo, verify_data: bool, report: JobReport) -> None:
    """The check itself: full, or a partial repository pass (``check_max_duration``) plus the archives."""
    kwargs = conn.argv_kwargs()
    if verify_data or not config.check_max_duration:
        out = conn.run(check_argv(config.repo, verify_data=verify_data, **kwargs))
        report.warnings.extend(out.warnings)
        report.check_complete = True
        return
    started = time.monotonic()
    out = conn.run(check_argv(config.repo, repository_only=True, max_duration=config.check_max_duration, **kwargs))
    report.warnings.extend(out.warnings)
    complete = repository_pass_complete(out.logs, time.monotonic() - started, config.check_max_duration)
    told = "borg said so" if pass_said(out.logs) is not None else "by the time it took"
    report.check_notes.append(
        f"repository: the pass reached the last segment ({told})"
        if complete
        else f"repository: partial pass ({config.check_max_duration} s, {told}), the next run resumes where it stopped"
    )
    out = conn.run(check_argv(config.repo, archives_only=True, **kwargs))
    report.warnings.extend(out.warnings)
    report.check_complete = complete


def repository_pass_complete(logs, elapsed: float, max_duration: int) -> bool:
    """Did ``borg check --repository-only --max-duration`` reach the last segment this run?

    Borg says so at INFO level ("finished segment check" against "finished partial segment
    check"), locally and, prefixed "Remote: ", through ``borg serve`` under the forced command
    (measured with borg 1.4.0). Without either line (another borg, a lost log line) the time tells:
    borg stops a pass only once ``max_duration`` has passed, so a run that took less reached the
    end; one that took longer counts as partial (never claim a pass that may not have been).
    """
    said = pass_said(logs)
    return elapsed < max_duration if said is None else said


def pass_said(logs) -> bool | None:
    """What borg's INFO line said: True (the last segment), False (partial), None (no such line)."""
    for entry in logs or ():
        message = str(entry.get("message", "")).lower()
        if "finished partial segment check" in message:
            return False
        if "finished segment check" in message:
            return True
    return None


def record_check(metrics: _metrics.JobMetrics, report: JobReport, rc: int) -> None:
    """The check's samples: whether it yielded, and when a check last completed (kept across runs).

    A check that has not completed yet counts from its first run, so that one that always yields
    still ages into the alert.
    """
    job = {"task": metrics.task, "repository": metrics.repository}
    metrics.set("grus_backup_check_yielded", 1 if report.check_yielded else 0, **job)
    complete = metrics.clock() if report.check_complete and rc in (EXIT_OK, EXIT_WARNING) else None
    metrics.set_kept("grus_backup_check_last_complete_timestamp_seconds", complete, first=metrics.started, **job)


def _finish(metrics: _metrics.JobMetrics, pinger: _ping.Pinger, rc: int, warnings=0) -> None:
    pinger.finish(rc)
    for warning in metrics.finish(rc, warnings) + pinger.warnings:
        _say(f"grus-backup: WARNING: {warning}", sys.stderr)


# ---- entry point ----------------------------------------------------------------------------


def _say(text: str, stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    stream.write(text + "\n")
    stream.flush()


def release_hold(config: JobConfig) -> int:
    hold = _volume_guard.read_hold(config.state_dir)
    if not _volume_guard.release_hold(config.state_dir):
        _say(f"grus-backup: no prune hold in {config.state_dir}")
        return EXIT_OK
    for reason in (hold or {}).get("reasons", []):
        _say(f"grus-backup: released the prune hold: {reason}")
    _say("grus-backup: the next run prunes again")
    return EXIT_OK


def check_timestamp(timestamp: str, tolerance_seconds: int) -> None:
    """Refuse a --timestamp ahead of the clock: that archive would hold every later prune (clock guard)."""
    try:
        validate_timestamp(timestamp, tolerance_seconds=tolerance_seconds)
    except BorgError as exc:
        raise JobError("usage", f"--timestamp: {exc.message}") from exc


def main(argv=None, runner=None) -> int:
    parser = argparse.ArgumentParser(prog="grus-backup-run", description="guarded borg backup run (grus.backup)")
    parser.add_argument("--config", required=True, help="JSON file with the job configuration")
    parser.add_argument("--timestamp", help="archive time (UTC, YYYY-MM-DDTHH:MM:SS), for tests and drills")
    parser.add_argument("--no-prune", action="store_true", help="create the archive, prune nothing")
    parser.add_argument("--max-deletions", type=int, help="override the configured max_deletions")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--release-hold", action="store_true", help="release the shrink guard's prune hold (after checking), then exit"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="run borg check (repository and archives) instead")
    mode.add_argument("--verify-data", action="store_true", help="run borg check --verify-data instead")
    mode.add_argument(
        "--drill", action="store_true", help="run the restore drill (the newest recorded archive's sample) instead"
    )
    parser.add_argument("--metrics-dir", help="write Prometheus metrics here (node_exporter's textfile directory)")
    args = parser.parse_args(argv)
    task = "verify_data" if args.verify_data else "check" if args.check else "drill" if args.drill else "backup"
    metrics = _metrics.JobMetrics(task, args.metrics_dir)
    pinger = _ping.Pinger.from_env()
    if not args.release_hold:
        pinger.start()
    yielder = _check_yield.Yielder()
    if task in ("check", "verify_data"):
        yielder.install()  # SIGTERM (a backup, or systemctl stop): let go of the repository and say so
    try:
        rc, warnings, config, report = _run(args, runner, yielder)
    except Exception as exc:  # the metrics, the ping and one line still follow, never a bare traceback
        rc, warnings, config, report = _unexpected.report(PROG, exc, NOT_DONE[task]), 0, None, None
    if config is not None:
        metrics.repository = config.repo
    if not args.release_hold:
        try:
            _record(task, metrics, config, report, rc)
        except Exception as exc:  # measuring must not hide the run's own result
            _say(f"{PROG}: WARNING: some metrics could not be measured: {type(exc).__name__}: {exc}", sys.stderr)
        _finish(metrics, pinger, rc, warnings)
    return rc


PROG = "grus-backup"
# What an unexpected failure of each task leaves undone; what was done before it is in the journal above.
NOT_DONE = {
    "backup": "the run stopped there: no archive or prune after that point (the next timer run tries again)",
    "check": "the check did not finish: the repository was not fully checked",
    "verify_data": "the data verification did not finish: the archives' data was not fully read",
    "drill": "the restore drill did not finish: no restore was verified",
}


def _record(task: str, metrics: _metrics.JobMetrics, config, report, rc: int) -> None:
    if config is None or report is None:
        return
    if task == "backup":
        record_backup(metrics, config, report)
    elif task == "drill":
        record_drill(metrics, config, report)
    else:
        record_check(metrics, report, rc)


def _run(args, runner, yielder=None) -> tuple:
    """``(exit status, warnings, config, report)`` of the run ``args`` ask for (None where none)."""
    try:
        with open(args.config, encoding="utf-8") as handle:
            data = json.load(handle)
        config = JobConfig.from_dict(data)
        if args.max_deletions is not None:
            config.max_deletions = args.max_deletions
        if args.timestamp:
            datetime.strptime(args.timestamp, ARCHIVE_TIME_FORMAT)
            check_timestamp(args.timestamp, config.clock_tolerance)
    except JobError as exc:
        _say(f"grus-backup: FAILED ({exc.kind}): {exc.message}", sys.stderr)
        return EXIT_ERROR, 0, None, None
    except (OSError, ValueError, TypeError) as exc:
        _say(f"grus-backup: FAILED: bad configuration or arguments: {exc}", sys.stderr)
        return EXIT_ERROR, 0, None, None
    try:
        return _dispatch(args, config, runner, yielder)
    except Exception as exc:  # keeps the configuration: the metrics name the repository
        task = "verify_data" if args.verify_data else "check" if args.check else "drill" if args.drill else "backup"
        return _unexpected.report(PROG, exc, NOT_DONE[task]), 0, config, None


def _dispatch(args, config: JobConfig, runner, yielder) -> tuple:
    if args.release_hold:
        return release_hold(config), 0, config, None
    if args.drill:
        report = drill(config, args.json, runner=runner)
        return (EXIT_OK if report.passed else EXIT_ERROR), len(report.warnings), config, report
    if args.check or args.verify_data:
        return _run_check(args, config, runner, yielder)
    return _run_backup(args, config, runner)


def _run_check(args, config: JobConfig, runner, yielder) -> tuple:
    """``--check`` / ``--verify-data``: the check, told in the journal."""
    report = run_check(config, args.verify_data, runner=runner, yielder=yielder)
    what = "borg check --verify-data" if args.verify_data else "borg check"
    outcome = "FAILED" if report.errors else "yielded" if report.check_yielded else "ok"
    if outcome == "ok" and not report.check_complete:
        outcome = "ok (not complete)"
    _say(f"grus-backup: {what} of {config.repo}: {outcome}")
    for note in report.check_notes:
        _say(f"grus-backup: {note}")
    return _tell(report, args.json), len(report.warnings), config, report


def _run_backup(args, config: JobConfig, runner) -> tuple:
    """The backup and its prune, told in the journal (or as JSON)."""
    report = run_job(config, timestamp=args.timestamp, runner=runner, do_prune=False if args.no_prune else None)
    if args.json:
        _say(json.dumps(report.to_dict()))
    else:
        archive = report.archive or {}
        if report.yielded_by:
            yielded = report.yielded_by
            _say(
                f"grus-backup: a running {yielded['task'] or 'check'} (pid {yielded['pid']}) "
                f"{'let go of' if yielded['stopped'] else 'still holds'} the repository "
                f"(waited {yielded['waited_seconds']} s)"
            )
        if archive:
            _say(f"grus-backup: archive {archive.get('name')} created in {config.repo}")
        _say(f"grus-backup: pruned {len(report.pruned)} archive(s): {', '.join(report.pruned) or 'none'}")
    return _tell(report, False), len(report.warnings), config, report


def _tell(report: JobReport, as_json: bool) -> int:
    if as_json:
        _say(json.dumps(report.to_dict()))
    for warning in report.warnings:
        _say(f"grus-backup: WARNING: {warning}", sys.stderr)
    for error in report.errors:
        _say(f"grus-backup: FAILED: {error}", sys.stderr)
    return report.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
