# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guarded volume sync: one rsync argv, guards, lock, freshness marker.

layer 3: may import _runner, _marker, _metrics, _ping, _unexpected, _rsync_output, _rsync_options, _sync_lock.

Private to grus.backup and pure standard library. The ``nfs_sync`` module and the
scheduled job that the ``sync_client`` role installs both call :func:`sync`, so a
timer-driven sync and an Ansible-driven one run the very same rsync command:

    python3 -m <package>._rsync --config /etc/grus-backup/nfs-sync.json

(the configuration file holds the module's option names; see :func:`main`).

How a run goes, and why:

* Every volume is a directory directly under ``src`` and lands in ``dest/<volume>``.
  All volumes go in ONE rsync, as ``src/./<volume>`` with ``--relative``: one
  process, one lock, one marker, and ``--delete`` only acts inside the volumes
  that were sent. A volume that disappeared from ``src`` is never removed from
  ``dest`` (it is refused as missing when listed, and simply not sent when
  ``volumes`` is discovered), and anything else in ``dest`` (the marker, other
  clients' directories) is out of rsync's reach.
* Guards run under the lock, right before rsync: a missing ``src``, a missing
  volume or an empty one (the mount point of a disk that is not mounted) stops
  the run, because mirroring an empty directory with ``--delete`` would wipe
  the good copy. ``allow_empty`` lets an intentionally empty volume through.
* With ``max_delete`` and ``delete``, a dry run goes first: rsync's own
  ``--max-delete`` would delete up to the limit before stopping; the dry run
  lets us refuse before a single file is touched. The real run still carries
  ``--max-delete`` in case the source changed in between.
* The JSON marker ``dest/<marker_name>`` tells the key holder's backup how the
  copy stands: ``state: running`` is written before rsync starts, ``state: done``
  (with the time) after a successful run (exit 0 or 24), ``state: failed`` (best
  effort) after a failed one. The backup waits for a running sync and reports
  a failed or unfinished one. Each is written atomically; over SSH it is sent
  with rsync through the same ``rsh``, so the receiving key can stay restricted
  to ``rrsync``.
* Over SSH the key holder's receiving guard (``_sync_receive``, the key's forced command) may refuse a
  sync (the client's directory over its quota: kind ``quota``) or stop it (the export's free space below
  its reserve: kind ``key_holder_full``); its one stderr line is turned into a failure of that kind.
* Noticing: with ``--metrics-dir`` the scheduled run writes its metrics (``_metrics``: times,
  exit status, files and bytes sent, deletions, labelled with the client's directory on the key
  holder); with ``GRUS_BACKUP_PING_URL`` in its environment it pings a dead man's switch
  (``_ping``). Neither can fail the sync.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from . import _marker, _metrics, _ping, _unexpected
from ._rsync_options import (
    SyncError,
    SyncOptions,
    build_rsync_argv,
    check_marker_not_a_volume,
    dest_dir,
    is_excluded,
    split_remote,
)
from ._rsync_output import (
    STATUS_ERROR,
    STATUS_MAX_DELETE,
    STATUS_OK,
    STATUS_PARTIAL,
    STATUS_VANISHED,
    SyncResult,
    classify_exit,
    parse_itemized,
    parse_stats,
    receiver_refusal,
    stderr_tail,
)
from ._runner import CommandNotFound, run
from ._sync_lock import hold_lock

# Directories that exist on a freshly made file system and are never volumes.
NOT_VOLUMES = frozenset({"lost+found"})


def _is_empty_dir(path: str) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _overlaps(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def select_volumes(options: SyncOptions):
    """Check the source and return ``(volumes, excluded_volumes)``; raise SyncError('guard').

    Refuses: a missing ``src``; a listed volume that is missing, not a directory or a
    symlink (rsync would copy the link, not the data); an ``src`` without volumes or an
    empty volume (an unmounted disk) unless ``allow_empty``; a local ``dest`` that overlaps
    ``src``. Volumes matched by an exclude pattern are left out (and reported).
    """
    _check_source(options)
    names = _discovered_volumes(options) if options.volumes is None else _listed_volumes(options)
    check_marker_not_a_volume(options, names)
    excluded = [n for n in names if is_excluded(n, options.exclude)]
    volumes = [n for n in names if n not in excluded]
    if not options.allow_empty:
        _refuse_empty(options.src, names, volumes)
    return volumes, excluded


def _check_source(options: SyncOptions) -> None:
    src = options.src
    if not os.path.exists(src):
        raise SyncError("guard", f"refusing to sync: source directory {src} does not exist")
    if not os.path.isdir(src):
        raise SyncError("guard", f"refusing to sync: source {src} is not a directory")
    host, _path = split_remote(options.dest)
    if host is None and _overlaps(src, options.dest):
        raise SyncError("guard", f"refusing to sync: dest {options.dest} and src {src} overlap")


def _discovered_volumes(options: SyncOptions) -> list:
    with os.scandir(options.src) as entries:
        names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name not in NOT_VOLUMES)
    if not names and not options.allow_empty:
        raise SyncError(
            "guard",
            f"refusing to sync: source {options.src} holds no volume (is its disk mounted?); "
            "set allow_empty to sync an empty source",
        )
    return names


def _listed_volumes(options: SyncOptions) -> list:
    src, names = options.src, list(options.volumes)
    if not names and not options.allow_empty:
        raise SyncError("guard", "refusing to sync: volumes is an empty list; set allow_empty to sync nothing")
    missing = [n for n in names if not os.path.lexists(os.path.join(src, n))]
    if missing:
        raise SyncError(
            "guard",
            f"refusing to sync: volume(s) {', '.join(missing)} missing under {src} (is the disk mounted?)",
        )
    for name in names:
        path = os.path.join(src, name)
        if os.path.islink(path):
            raise SyncError("guard", f"refusing to sync: volume {path} is a symlink; list its target instead")
        if not os.path.isdir(path):
            raise SyncError("guard", f"refusing to sync: volume {path} is not a directory")
    return names


def _refuse_empty(src: str, names: list, volumes: list) -> None:
    """An unmounted disk shows as an empty directory: mirroring it would wipe the copy."""
    if not volumes and names:
        raise SyncError("guard", f"refusing to sync: every volume under {src} is excluded; nothing to sync")
    empty = [n for n in volumes if _is_empty_dir(os.path.join(src, n))]
    if empty:
        raise SyncError(
            "guard",
            f"refusing to sync: volume(s) {', '.join(empty)} under {src} are empty (unmounted disk?); "
            "syncing would wipe the copy in dest. Set allow_empty if this is intended",
        )


def build_marker(options: SyncOptions, volumes, stats: dict, rsync_rc: int, started: float, finished: float) -> dict:
    """The marker of a successful sync of ``volumes``. No secrets, no rsh."""
    return _marker.build_done(started, finished, options.src, options.source_host, volumes, stats, rsync_rc)


def build_progress_marker(options: SyncOptions, state: str, started: float, error: str | None = None) -> dict:
    """The marker of a sync under way (``running``) or one that ``failed``."""
    return _marker.build_progress(state, started, options.src, options.source_host, error)


def marker_path(options: SyncOptions) -> str:
    host, path = split_remote(options.dest)
    if host is not None:
        return f"{host}:{path.rstrip('/') + '/' if path.rstrip('/') else path}{options.marker_name}"
    return os.path.join(options.dest, options.marker_name)


def write_marker(options: SyncOptions, marker: dict, runner=run) -> str:
    """Write ``marker`` atomically as ``dest/<marker_name>``; return where it went.

    Locally: ``_marker.write_local``. Over SSH: rsync of a local temporary file into ``dest``
    through the same ``rsh`` (rsync writes a temporary file beside the target and renames it),
    which a key limited to ``rrsync`` allows.
    """
    host, _path = split_remote(options.dest)
    if host is None:
        return _marker.write_local(options.dest, marker, options.marker_name)

    def send(local: str) -> None:
        # Into the directory, not onto the file name: rrsync (3.5) pins an existing target file
        # by descriptor and then cannot replace it. --ignore-times: a marker of the same size
        # written within the same second must still be sent.
        argv = [options.rsync, "--perms", "--times", "--ignore-times"]
        if options.io_timeout:
            argv.append(f"--timeout={options.io_timeout}")
        if options.rsh:
            argv.append(f"--rsh={options.rsh}")
        result = runner([*argv, local, dest_dir(options.dest)])
        if result.rc != 0:
            _raise_if_refused(result.stderr)
            _status, meaning = classify_exit(result.rc)
            raise OSError(f"rsync exit {result.rc} ({meaning}): {stderr_tail(result.stderr, 5)}")

    _marker.write_through(send, marker, options.marker_name)
    return marker_path(options)


def _run_rsync(argv, runner):
    try:
        return runner(argv)
    except CommandNotFound as exc:
        raise SyncError("error", f"rsync not found ({exc.program}): install rsync") from exc


def sync(options: SyncOptions, runner=run) -> SyncResult:
    """Run one guarded sync. Returns a SyncResult, or raises SyncError (with ``.result``).

    Exit 24 (source files vanished during the transfer) is a success with a warning;
    23 (partial), 25 (max_delete) and every other code are failures, each with its own
    ``kind``. The marker is written only after a successful, real (not dry) run, and
    does not count as a change: it is rewritten on every run, by design.
    """
    with hold_lock(options.lock, options.lock_timeout):
        volumes, excluded = select_volumes(options)
        result = SyncResult(
            changed=False,
            dry_run=options.dry_run,
            volumes=volumes,
            excluded_volumes=excluded,
            argv=[],
            rsync_rc=None,
            rsync_status=STATUS_OK,
        )
        started = time.time()
        clock = time.monotonic()
        if volumes:
            argv = build_rsync_argv(options, volumes)
            result.argv = argv
            if options.delete and options.max_delete is not None and not options.dry_run:
                _preflight_deletions(options, volumes, result, runner)
            tracked = options.marker and not options.dry_run
            if tracked:
                _write_progress_marker(options, _marker.RUNNING, started, runner, result)
            try:
                proc = _run_rsync(argv, runner)
                result.rsync_rc = proc.rc
                result.stderr = stderr_tail(proc.stderr)
                result.changes = parse_itemized(proc.stdout)
                result.changed = bool(result.changes)
                result.stats = parse_stats(proc.stdout)
                status, meaning = classify_exit(proc.rc)
                result.rsync_status = status
                _raise_for_status(options, status, meaning, proc.rc, result)
            except SyncError as exc:
                if tracked:
                    # Best effort: when the link is down this fails too, and the marker
                    # stays "running", which the backup reports as an unfinished sync.
                    with contextlib.suppress(OSError, CommandNotFound, SyncError):
                        reason = f"{exc.kind}: {exc.message}"[:300]
                        failed = build_progress_marker(options, _marker.FAILED, started, reason)
                        write_marker(options, failed, runner=runner)
                raise
        result.stats["elapsed_seconds"] = round(time.monotonic() - clock, 3)
        if options.marker and not options.dry_run:
            marker = build_marker(options, volumes, result.stats, result.rsync_rc or 0, started, time.time())
            try:
                result.marker_path = write_marker(options, marker, runner=runner)
            except (OSError, CommandNotFound) as exc:
                raise SyncError(
                    "marker", f"synced, but could not write the marker {marker_path(options)}: {exc}", result
                ) from exc
            result.marker = marker
        return result


def _write_progress_marker(options, state, started, runner, result) -> None:
    try:
        write_marker(options, build_progress_marker(options, state, started), runner=runner)
    except (OSError, CommandNotFound) as exc:
        raise SyncError(
            "marker",
            f"could not write the marker {marker_path(options)} before syncing: {exc}; nothing was synced",
            result,
        ) from exc


def _preflight_deletions(options, volumes, result, runner) -> None:
    """A dry run first, so that a max_delete overflow refuses before anything is deleted."""
    proc = _run_rsync(build_rsync_argv(options, volumes, preflight=True), runner)
    status, meaning = classify_exit(proc.rc)
    if status == STATUS_MAX_DELETE:
        result.changes = parse_itemized(proc.stdout)
        would = [c for c in result.changes if c.is_deletion]
        result.rsync_rc = proc.rc
        result.rsync_status = status
        result.stderr = stderr_tail(proc.stderr)
        raise SyncError(
            "max_delete",
            f"refusing to sync: more than max_delete={options.max_delete} deletions needed in "
            f"{options.dest} (dry run listed {len(would)} before stopping); nothing was changed",
            result,
        )
    if status == STATUS_ERROR:
        result.rsync_rc = proc.rc
        result.rsync_status = status
        result.stderr = stderr_tail(proc.stderr)
        _raise_for_status(options, status, meaning, proc.rc, result)


def _raise_if_refused(stderr: str, result=None) -> None:
    """The key holder's receiving guard (``_sync_receive``) refused or stopped the sync: say why, by name."""
    refused = receiver_refusal(stderr)
    if refused:
        cause, why = refused
        raise SyncError(cause, f"the key holder refused the sync ({cause}): {why}", result)


def _raise_for_status(options, status, meaning, rc, result) -> None:
    where = f"{options.src} -> {options.dest}"
    detail = f": {result.stderr}" if result.stderr else ""
    if status == STATUS_OK:
        return
    _raise_if_refused(result.stderr, result)
    if status == STATUS_VANISHED:
        result.warnings.append(
            f"rsync exit 24: some source files vanished during the transfer ({where}); normal on live volumes"
        )
        return
    if status == STATUS_PARTIAL:
        raise SyncError(
            "partial",
            f"partial transfer {where}: some files could not be transferred (rsync exit 23){detail}",
            result,
        )
    if status == STATUS_MAX_DELETE:
        raise SyncError(
            "max_delete",
            f"rsync stopped deleting at max_delete={options.max_delete} ({where}, rsync exit 25){detail}",
            result,
        )
    raise SyncError("error", f"rsync failed {where}: exit {rc} ({meaning}){detail}", result)


EXIT_OK = 0


EXIT_WARNING = 1


EXIT_ERROR = 2


def _say(text: str, stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    stream.write(text + "\n")
    stream.flush()


def client_label(dest: str) -> str:
    """The client's directory on the key holder (``dest``'s last part): the key holder labels it so."""
    _host, path = split_remote(dest)
    return os.path.basename(path.rstrip("/")) or "unknown"


def record_sync(metrics: _metrics.JobMetrics, dest: str, result: SyncResult | None) -> None:
    if result is None or result.dry_run:
        return
    client = client_label(dest)
    stats = result.stats or {}
    metrics.set("grus_backup_sync_files_transferred", stats.get("files_transferred"), client=client)
    metrics.set("grus_backup_sync_transferred_bytes", stats.get("bytes_sent"), client=client)
    metrics.set("grus_backup_sync_deleted_files", sum(1 for c in result.changes if c.is_deletion), client=client)
    metrics.set("grus_backup_sync_volumes", len(result.volumes), client=client)


def main(argv=None, runner=run) -> int:
    """``python3 -m <package>._rsync --config FILE``: the scheduled sync.

    The configuration is a JSON object with the nfs_sync module's option names. Exit 0
    on success, 1 on success with warnings (rsync 24), 2 on failure or refusal.
    """
    parser = argparse.ArgumentParser(prog="grus-nfs-sync", description="guarded volume sync (grus.backup)")
    parser.add_argument("--config", required=True, help="JSON file with the nfs_sync options")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--print-argv", action="store_true", help="print the rsync argv as JSON and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--metrics-dir", help="write Prometheus metrics here (node_exporter's textfile directory)")
    args = parser.parse_args(argv)
    measured = not (args.print_argv or args.dry_run)
    metrics = _metrics.JobMetrics("sync", args.metrics_dir if measured else None)
    pinger = _ping.Pinger.from_env() if measured else _ping.Pinger(None)
    pinger.start()
    rc, warnings, dest, result = _run(args, runner)
    if dest is not None:
        try:
            record_sync(metrics, dest, result)
        except Exception as exc:  # measuring must not hide the run's own result
            _say(f"nfs-sync: WARNING: some metrics could not be measured: {type(exc).__name__}: {exc}", sys.stderr)
    pinger.finish(rc)
    for warning in metrics.finish(rc, warnings) + pinger.warnings:
        _say(f"nfs-sync: WARNING: {warning}", sys.stderr)
    return rc


def _run(args, runner) -> tuple:
    """``(exit status, warnings, dest, result)`` of one run (None where there is none)."""
    dest = None
    try:
        with open(args.config, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise SyncError("usage", f"{args.config}: expected a JSON object")
        if args.dry_run:
            data["dry_run"] = True
        options = SyncOptions.from_dict(data)
        dest = options.dest
        if args.print_argv:
            volumes, _excluded = select_volumes(options)
            _say(json.dumps(build_rsync_argv(options, volumes)))
            return EXIT_OK, 0, None, None
        result = sync(options, runner=runner)
    except SyncError as exc:
        _say(f"nfs-sync: FAILED ({exc.kind}): {exc.message}", sys.stderr)
        if args.json and exc.result is not None:
            _say(json.dumps({"failed": True, "kind": exc.kind, "msg": exc.message, **exc.result.to_dict()}))
        return EXIT_ERROR, 0, dest, exc.result
    except (OSError, ValueError) as exc:
        _say(f"nfs-sync: FAILED: {exc}", sys.stderr)
        return EXIT_ERROR, 0, dest, None
    except Exception as exc:  # the metrics, the ping and one line still follow, never a bare traceback
        not_done = f"the sync to {dest or 'its destination'} did not finish; the key holder backs up its last copy"
        return _unexpected.report("nfs-sync", exc, not_done), 0, dest, None
    if args.json:
        _say(json.dumps({"failed": False, **result.to_dict()}))
    else:
        stats = result.stats
        _say(
            f"nfs-sync: {'dry run, ' if result.dry_run else ''}{len(result.changes)} change(s) in "
            f"{', '.join(result.volumes) or 'no volume'} -> {options.dest}; "
            f"{stats.get('files_transferred', 0)} file(s) sent, {stats.get('bytes_sent', 0)} bytes, "
            f"{stats.get('elapsed_seconds', 0)} s; marker {result.marker_path or 'not written'}"
        )
    for warning in result.warnings:
        _say(f"nfs-sync: WARNING: {warning}", sys.stderr)
    return (EXIT_WARNING if result.warnings else EXIT_OK), len(result.warnings), dest, result


if __name__ == "__main__":
    raise SystemExit(main())
