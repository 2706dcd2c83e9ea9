# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus metrics of the scheduled jobs, for node_exporter's textfile collector.

layer 0: may import nothing of grus.backup (standard library only; prometheus_client when installed).

Private to grus.backup. Every scheduled job (sync, backup and prune, check, verify-data, restore drill) collects
its samples here in plain dicts and writes them at its end, in one file per job
(``<dir>/grus_backup_<task>.prom``), in ``prometheus_client``'s text format: a temporary file, made
0644 before it is renamed over the old one, so node_exporter (its own user) never reads half a file
and can read it whatever the unit's ``UMask=`` (the hardened units run with 0077). The library is imported
only when writing: a host without it (Debian: ``python3-prometheus-client``) still runs its
backups; the job logs a clear warning and its exit status is unchanged, and the
``GrusBackupMetricsStale`` alert sees the file age.

``METRICS`` is the one list of names the jobs may emit (the dashboard and the alert rules are
tested against it). Labels stay bounded: task, repository, archive prefix, client, volume, unit;
never an archive name. The last success time survives a failed run: it is read back from the
job's previous file.

``python3 -m <package>._metrics --unit-failed UNIT --metrics-dir DIR`` is what the
``grus-backup-alert@.service`` unit runs (``OnFailure=``): it writes
``grus_backup_unit_failed{unit="UNIT"} 1`` and the time, and says so in the journal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time

DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

JOB = ("task", "repository")  # repository "" (no label) for the sync
ARCHIVE = ("repository", "prefix")
VOLUME = ("client", "volume")

# name: (help, label names). Base units, Prometheus naming; every sample is a gauge.
METRICS = {
    "grus_backup_job_last_start_timestamp_seconds": ("When the job last started (Unix time).", JOB),
    "grus_backup_job_last_end_timestamp_seconds": ("When the job last ended (Unix time).", JOB),
    "grus_backup_job_last_success_timestamp_seconds": (
        "When the job last ended with exit status 0 or 1 (Unix time); kept across failed runs.",
        JOB,
    ),
    "grus_backup_job_duration_seconds": ("How long the job's last run took.", JOB),
    "grus_backup_job_exit_status": ("The job's last exit status: 0 ok, 1 done with warnings, 2 error.", JOB),
    "grus_backup_job_warnings": ("Warnings of the job's last run.", JOB),
    "grus_backup_check_yielded": (
        "1 when the check's last run let go of the repository for a backup (not complete, not an error).",
        JOB,
    ),
    "grus_backup_check_last_complete_timestamp_seconds": (
        "When a check last covered the whole repository (and every archive) and passed (Unix time); "
        "kept across runs, the first run's start while none completed yet.",
        JOB,
    ),
    "grus_backup_archives": ("Archives of this prefix in the repository after the last prune.", ARCHIVE),
    "grus_backup_archive_original_bytes": ("Original size of the last archive.", ARCHIVE),
    "grus_backup_archive_compressed_bytes": ("Compressed size of the last archive.", ARCHIVE),
    "grus_backup_archive_deduplicated_bytes": ("New (deduplicated) data the last archive added.", ARCHIVE),
    "grus_backup_archive_files": ("Files in the last archive.", ARCHIVE),
    "grus_backup_prune_planned_archives": ("Archives the last prune's plan would delete.", ARCHIVE),
    "grus_backup_prune_deleted_archives": ("Archives the last prune deleted.", ARCHIVE),
    "grus_backup_prune_held": ("1 while the shrink guard holds every prune (see --release-hold).", ARCHIVE),
    "grus_backup_volume_files": ("Files in the volume when the last backup measured it.", VOLUME),
    "grus_backup_volume_bytes": ("Bytes in the volume when the last backup measured it.", VOLUME),
    "grus_backup_sync_marker_age_seconds": ("Age of the sync client's marker when the backup read it.", ("client",)),
    "grus_backup_sync_marker_state": (
        "1 for the state the sync client's marker had at backup time.",
        ("client", "state"),
    ),
    "grus_backup_sync_clock_skew_seconds": (
        "Key holder's clock minus the sync client's when the client's marker landed.",
        ("client",),
    ),
    "grus_backup_sync_files_transferred": ("Files the last sync transferred.", ("client",)),
    "grus_backup_sync_transferred_bytes": ("Bytes the last sync sent.", ("client",)),
    "grus_backup_sync_deleted_files": ("Files the last sync deleted on the key holder.", ("client",)),
    "grus_backup_sync_volumes": ("Volumes the last sync sent.", ("client",)),
    # The restore drill (grus-backup-run --drill): the sample of the newest recorded archive, restored and compared.
    "grus_backup_drill_last_success_timestamp_seconds": (
        "When a restore drill last passed (Unix time); kept across failed drills.",
        ARCHIVE,
    ),
    "grus_backup_drill_result": (
        "1 for the result of the last restore drill (passed, mismatch, missing, attributes, damaged, no_record, "
        "error, nothing_verified).",
        ("repository", "prefix", "result"),
    ),
    "grus_backup_drill_files": ("Files in the sample the last restore drill checked.", ARCHIVE),
    "grus_backup_drill_verified_files": ("Files the last restore drill restored byte-identical (SHA-256).", ARCHIVE),
    "grus_backup_drill_changed_files": (
        "Sampled files that changed between sampling and archiving (not verified, not a failure).",
        ARCHIVE,
    ),
    "grus_backup_drill_bytes": ("Bytes the last restore drill restored and hashed.", ARCHIVE),
    "grus_backup_drill_duration_seconds": ("How long the last restore drill's extract and comparison took.", ARCHIVE),
    "grus_backup_drill_archive_timestamp_seconds": ("Time of the archive the last restore drill restored.", ARCHIVE),
    # The repository host (no key): the compaction job.
    "grus_backup_repository_size_bytes": ("Bytes the repository takes on disk.", ("repository",)),
    "grus_backup_repository_free_bytes": ("Free bytes on the repository's file system.", ("repository",)),
    "grus_backup_repository_last_write_timestamp_seconds": ("When the repository was last written.", ("repository",)),
    "grus_backup_repository_transactions_since_compaction": (
        "Transactions committed since the last compaction.",
        ("repository",),
    ),
    "grus_backup_repository_deleted_objects_since_compaction": (
        "Objects deleted (DEL entries) since the last compaction.",
        ("repository",),
    ),
    "grus_backup_repository_mass_deletion": (
        "1 when the key-free audit saw a deletion larger than a normal prune.",
        ("repository",),
    ),
    "grus_backup_compaction_held": ("1 while compaction is held.", ("repository",)),
    "grus_backup_compaction_deferred": (
        "1 when the last due compaction was deferred: a backup was about to start.",
        ("repository",),
    ),
    "grus_backup_authorized_keys_ok": ("1 when authorized_keys is what Ansible wrote, 0 when it differs.", ()),
    "grus_backup_unit_failed": ("1: the systemd unit failed (written by grus-backup-alert@).", ("unit",)),
    "grus_backup_unit_failed_timestamp_seconds": ("When the systemd unit last failed (Unix time).", ("unit",)),
}

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@-]")


def file_name(task: str, instance: str = "") -> str:
    """``grus_backup_<task>[_<instance>].prom`` (one file per job, per repository for the compaction)."""
    return f"grus_backup_{task}{'_' + _SAFE_NAME.sub('_', instance) if instance else ''}.prom"


def previous_value(path: str | None, name: str) -> float | None:
    """The first sample of ``name`` in the job's previous file (a gauge kept across runs), or None."""
    if not path:
        return None
    pattern = _sample_re(name)
    try:
        with open(path, encoding="utf-8") as handle:
            match = pattern.search(handle.read())
    except OSError:
        return None
    return float(match.group("value")) if match else None


def _sample_re(name: str):
    return re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (?P<value>[0-9.e+]+)$", re.MULTILINE)


class JobMetrics:
    """The samples of one run of one job; ``finish`` writes them. ``directory`` None: off."""

    def __init__(self, task: str, directory: str | None, clock=time.time, repository: str = "", instance: str = ""):
        self.task = task
        self.repository = repository
        self.instance = instance
        self.directory = directory
        self.clock = clock
        self.started = clock()
        self.samples: dict = {}

    def set(self, name: str, value, **labels) -> None:
        if name not in METRICS:
            raise KeyError(f"undeclared metric {name}")
        if value is None:
            return
        names = METRICS[name][1]
        if set(labels) != set(names):
            raise KeyError(f"{name} takes the labels {names}, not {sorted(labels)}")
        self.samples.setdefault(name, []).append(({k: str(labels[k]) for k in names}, float(value)))

    def set_kept(self, name: str, moment, first=None, **labels) -> None:
        """A time kept across runs: ``moment`` when this run sets it, else the previous file's, else ``first``."""
        if moment is None:
            moment = previous_value(self.path, name)
        self.set(name, first if moment is None else moment, **labels)

    @property
    def path(self) -> str | None:
        return os.path.join(self.directory, file_name(self.task, self.instance)) if self.directory else None

    def finish(self, exit_status: int, warnings: int = 0) -> list:
        """Add the job's own samples and write the file. Returns warnings (never raises)."""
        if not self.directory:
            return []
        ended = self.clock()
        job = {"task": self.task, "repository": self.repository}
        self.set("grus_backup_job_last_start_timestamp_seconds", self.started, **job)
        self.set("grus_backup_job_last_end_timestamp_seconds", ended, **job)
        self.set("grus_backup_job_duration_seconds", max(0.0, ended - self.started), **job)
        self.set("grus_backup_job_exit_status", exit_status, **job)
        self.set("grus_backup_job_warnings", warnings, **job)
        self.set_kept("grus_backup_job_last_success_timestamp_seconds", ended if exit_status in (0, 1) else None, **job)
        return write(self.path, self.samples)


def write(path: str, samples: dict) -> list:
    """Write ``samples`` ({name: [(labels, value)]}) atomically to ``path``, mode 0644; warnings, never raises."""
    try:
        from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: PLC0415
    except ImportError:
        return [
            f"no metrics written to {path}: the Python library prometheus_client is not installed "
            "(Debian: python3-prometheus-client); the job itself ran"
        ]
    registry = CollectorRegistry()
    for name, rows in sorted(samples.items()):
        description, labels = METRICS[name]
        gauge = Gauge(name, description, labels, registry=registry)
        for label_values, value in rows:
            (gauge.labels(**label_values) if labels else gauge).set(value)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
        with os.fdopen(fd, "wb") as handle:
            # node_exporter runs as its own user: readable by all, whatever the umask (UMask=0077 in the units).
            os.fchmod(handle.fileno(), 0o644)
            handle.write(generate_latest(registry))
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return [f"no metrics written to {path}: {exc}"]
    return []


def unit_failed(directory: str, unit: str, clock=time.time) -> tuple:
    """Record that ``unit`` failed; ``(path, warnings)``."""
    safe = _SAFE_NAME.sub("_", unit)
    path = os.path.join(directory, f"grus_backup_unit_failed_{safe}.prom")
    now = clock()
    samples = {
        "grus_backup_unit_failed": [({"unit": unit}, 1.0)],
        "grus_backup_unit_failed_timestamp_seconds": [({"unit": unit}, now)],
    }
    return path, write(path, samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="grus-backup-alert", description="record a failed grus.backup unit")
    parser.add_argument("--unit-failed", required=True, help="the failed unit's name (systemd %%i)")
    parser.add_argument("--metrics-dir", default=DEFAULT_TEXTFILE_DIR, help="node_exporter's textfile directory")
    args = parser.parse_args(argv)
    path, warnings = unit_failed(args.metrics_dir, args.unit_failed)
    sys.stderr.write(f"grus-backup-alert: the unit {args.unit_failed} FAILED; see journalctl -u {args.unit_failed}\n")
    for warning in warnings:
        sys.stderr.write(f"grus-backup-alert: WARNING: {warning}\n")
    if not warnings:
        sys.stderr.write(f"grus-backup-alert: recorded in {path}\n")
    return 2 if warnings else 0


if __name__ == "__main__":
    raise SystemExit(main())
