#!/usr/bin/python
# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nfs_sync
short_description: Guarded rsync of service volumes to the key holder, with lock and freshness marker
version_added: 0.1.0
description:
  - Copies the volumes (directories) under O(src) to O(dest) with rsync, the way a sync client pushes its
    local volumes to the key holder's NFS export before each backup. O(dest) is a local path (the NFS mount)
    or C(host:path) over SSH (the export directory on the key holder).
  - All volumes go in one rsync run as C(src/./volume) with C(--relative), so C(src/www) lands in
    C(dest/www). C(--delete) only acts inside the volumes that are sent; a volume directory that exists in
    O(dest) but is not sent (removed from O(src), excluded, or not listed in O(volumes)) is never deleted,
    and nothing else in O(dest) is touched.
  - "Guards: a missing O(src), a missing volume, or an empty O(src) or volume (the mount point of a disk that
    is not mounted) fails before rsync runs, unless O(allow_empty=true) (which lets empty ones through; a
    missing one always fails). A sync must never wipe the good copy."
  - Two syncs never overlap; the module holds an exclusive lock on O(lock) while it runs (the same lock file
    as the scheduled job installed by the C(grus.backup.sync_client) role) and waits up to O(lock_timeout)
    seconds for a running one.
  - A JSON marker in C(dest/<marker_name>) tells the key holder how the copy stands (see O(marker)); it is
    written atomically, over SSH with rsync through the same O(rsh), so the receiving key can be restricted
    to C(rrsync).
  - The rsync options are built in one place, the collection's private C(_rsync_options) module utility, which the
    C(grus.backup.sync_client) role ships beside its systemd job; scheduled syncs and this module run the
    same rsync command.
  - rsync exit 24 (source files vanished during the transfer, normal on live volumes) succeeds with a
    warning. Exit 23 (partial transfer), exit 25 (O(max_delete) exceeded) and every other code fail, each
    with its own message and RV(rsync_status).
author:
  - grus.backup developers (@grus-collective)
options:
  src:
    description:
      - Directory holding the volumes, one sub-directory per volume.
    type: path
    required: true
  dest:
    description:
      - Target directory, a local path (for example the NFS mount of the key holder's export) or
        C([user@]host:path) reached over SSH with O(rsh). The volumes land in C(dest/<volume>).
      - With a key restricted to C(rrsync) on the key holder, C(path) is relative to the directory the
        forced command allows.
    type: str
    required: true
  volumes:
    description:
      - Names of the volumes (directories directly under O(src)) to sync.
      - When omitted, every directory directly under O(src) is a volume, except C(lost+found), symbolic
        links and names matched by O(exclude).
      - A listed volume that is missing, a symbolic link or not a directory is refused.
    type: list
    elements: str
  exclude:
    description:
      - rsync exclude patterns (C(--exclude)), relative to O(src); C(/name) matches a volume.
      - A volume whose name matches a one-component pattern (C(connection-logs), C(/connection-logs),
        C(conn*)) is left out entirely, without the emptiness guard; what O(dest) already holds of an
        excluded path is kept (excluded files are never deleted).
    type: list
    elements: str
    default: []
  delete:
    description:
      - Mirror deletions (C(--delete)) inside each synced volume.
    type: bool
    default: true
  max_delete:
    description:
      - Refuse to delete more than this many files and directories in one run (C(--max-delete)).
      - When O(delete) is on, a dry run checks the limit first, so that an overflow fails before anything
        is changed; the real run still carries C(--max-delete). V(0) deletes nothing and fails when any
        deletion would be needed.
      - The default, V(1000) (the C(grus.backup.sync_client) role's default too), is far above what normal
        churn of service volumes deletes in one run, and stops a source that lost most of its files (a
        half-mounted disk, a wrong O(src)) from wiping the copy. There is no unlimited setting; give a higher
        number for a planned mass deletion.
    type: int
    default: 1000
  preserve_acls:
    description:
      - Preserve POSIX ACLs (C(--acls)). O(dest) must support them.
    type: bool
    default: true
  preserve_xattrs:
    description:
      - Preserve extended attributes (C(--xattrs)).
    type: bool
    default: true
  preserve_hardlinks:
    description:
      - Preserve hard links (C(--hard-links)).
    type: bool
    default: true
  numeric_ids:
    description:
      - Keep numeric owners and groups (C(--numeric-ids)) instead of mapping by name; service volumes
        belong to service uids that need not exist on the key holder.
    type: bool
    default: true
  bwlimit:
    description:
      - Bandwidth limit passed as C(--bwlimit), in KiB/s or with a suffix (V(500), V(1.5M)).
    type: str
  checksum:
    description:
      - Compare files by checksum rather than size and modification time (C(--checksum)); slower.
    type: bool
    default: false
  rsh:
    description:
      - The remote shell for C(host:path) destinations (C(--rsh)), for example
        C(ssh -i /etc/grus-backup/sync_ed25519 -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes).
      - rsync splits it into words itself; no shell is involved.
    type: str
  io_timeout:
    description:
      - rsync I/O timeout in seconds (C(--timeout)); a stalled connection fails instead of holding the
        lock forever.
      - The default, V(300), ends a sync after five minutes without any data moving; V(0) waits forever.
    type: int
    default: 300
  marker:
    description:
      - Write the marker C(dest/<marker_name>) on every sync that is not a check mode run. Before rsync starts
        it says C(state=running) (with the start time), so that the key holder's backup waits for a sync
        that overran its slot; if it cannot be written, nothing is synced. After a successful sync (rsync exit
        0 or 24) it says C(state=done) with the time (UTC, ISO 8601), the source host, the volumes, files and
        bytes, and the rsync exit code (the freshness the backup checks).
      - After a failed or partial sync it says C(state=failed) with the reason (best effort; when the link is
        down it stays C(running)); either way the key holder reports the sync and backs up the copy as it is.
      - The marker is rewritten on every run and does not count as a change, so a sync that transfers
        nothing reports RV(ignore:changed=false). It sits beside the volumes, outside what rsync sends,
        and C(/<marker_name>) is excluded, so C(--delete) never removes it.
    type: bool
    default: true
  marker_name:
    description:
      - File name of the marker, in O(dest). A plain name, no slash.
      - It must not be the name of a volume (that volume would never be synced, and the marker would overwrite
        its copy); such a name is refused before rsync runs.
    type: str
    default: .grus-sync.json
  lock:
    description:
      - Lock file held (C(flock)) for the whole sync, shared with the scheduled job.
      - An empty string disables locking.
    type: path
    default: /run/lock/grus-backup-nfs-sync.lock
  lock_timeout:
    description:
      - Seconds to wait for another sync holding O(lock) before failing.
    type: int
    default: 300
  allow_empty:
    description:
      - Sync an empty O(src) (no volume) or empty volumes instead of refusing. Only for volumes that are
        really meant to be empty; otherwise an unmounted disk would wipe the copy in O(dest).
    type: bool
    default: false
notes:
  - Check mode runs rsync with C(--dry-run); it changes nothing (no marker either) and reports what would
    change. Diff mode lists rsync's itemised changes (C(--itemize-changes)).
  - RV(ignore:changed) is true only when rsync changed (or would change) something in O(dest).
  - Needs rsync on both ends. Owners, groups and ACLs can only be kept when the receiving side runs as root.
seealso:
  - name: rsync manual
    description: Options, exit codes and the itemised change format.
    link: https://download.samba.org/pub/rsync/rsync.1
  - name: rrsync manual
    description: Restricting an SSH key to rsync in one directory.
    link: https://download.samba.org/pub/rsync/rrsync.1
attributes:
  check_mode:
    support: full
    description: Runs rsync with C(--dry-run).
  diff_mode:
    support: full
    description: Lists the itemised changes.
"""

EXAMPLES = r"""
- name: Sync the volumes to the key holder's NFS mount
  grus.backup.nfs_sync:
    src: /srv/volumes
    dest: /mnt/antigone/balearica
    exclude:
      - /connection-logs

- name: Sync two volumes over SSH, through a key restricted to rrsync on the key holder
  grus.backup.nfs_sync:
    src: /srv/volumes
    dest: sync-balearica@antigone.example.org:volumes
    volumes:
      - www
      - mail
    rsh: >-
      ssh -i /etc/grus-backup/sync_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes
      -o StrictHostKeyChecking=yes -o ServerAliveInterval=30
    max_delete: 1000
    bwlimit: 20M
    io_timeout: 300
  register: sync

- name: Show what a sync would change, without changing anything
  grus.backup.nfs_sync:
    src: /srv/volumes
    dest: /mnt/antigone/balearica
  check_mode: true
  diff: true
"""

RETURN = r"""
cmd:
  description: The rsync command line that ran (an argument list).
  returned: when rsync ran
  type: list
  elements: str
  sample: ["rsync", "--archive", "--hard-links", "--acls", "--xattrs", "--numeric-ids", "--relative",
           "--delete", "--itemize-changes", "--stats", "--no-human-readable", "--exclude=/.grus-sync.json",
           "/srv/volumes/./www", "/mnt/antigone/balearica/"]
volumes:
  description: The volumes synced.
  returned: always
  type: list
  elements: str
  sample: [mail, www]
excluded_volumes:
  description: Volumes left out because an O(exclude) pattern matches their name.
  returned: always
  type: list
  elements: str
  sample: [connection-logs]
rsync_rc:
  description:
    - rsync's exit code. Named so that Ansible does not read a tolerated exit 24 as a failure.
  returned: when rsync ran
  type: int
  sample: 0
rsync_status:
  description:
    - V(ok), V(vanished) (exit 24, a warning), V(partial) (exit 23), V(max_delete) (exit 25) or V(error).
  returned: when rsync ran
  type: str
  sample: ok
changes:
  description:
    - rsync's itemised changes (C(YXcstpoguax path)), at most 1000 of them; see RV(changes_count).
  returned: when rsync ran
  type: list
  elements: str
  sample: [">f+++++++++ www/index.html", "*deleting   www/old.html"]
changes_count:
  description: Number of itemised changes.
  returned: when rsync ran
  type: int
  sample: 2
stats:
  description: Transfer statistics from rsync's C(--stats), plus the elapsed time.
  returned: when rsync ran
  type: dict
  contains:
    files:
      description: Files, directories and links considered.
      type: int
    files_transferred:
      description: Regular files sent.
      type: int
    files_created:
      description: Entries created in O(dest).
      type: int
    files_deleted:
      description: Entries deleted in O(dest).
      type: int
    bytes_total:
      description: Total size of the files considered.
      type: int
    bytes_transferred:
      description: Total size of the files sent.
      type: int
    bytes_sent:
      description: Bytes rsync sent (after delta encoding).
      type: int
    bytes_received:
      description: Bytes rsync received.
      type: int
    elapsed_seconds:
      description: Wall time of the sync.
      type: float
  sample:
    files: 120
    files_transferred: 3
    bytes_total: 1048576
    bytes_sent: 4096
    elapsed_seconds: 0.42
marker:
  description: The freshness marker written (C(null) in check mode or with O(marker=false)).
  returned: always
  type: dict
  sample:
    format: 2
    writer: grus.backup.nfs_sync
    state: done
    time: "2026-11-23T11:45:02Z"
    started: "2026-11-23T11:45:01Z"
    source_host: balearica
    source: /srv/volumes
    volumes: [mail, www]
    files: 120
    files_transferred: 3
    files_deleted: 0
    bytes_total: 1048576
    bytes_sent: 4096
    rsync_exit_code: 0
marker_path:
  description: Where the marker was written.
  returned: when the marker was written
  type: str
  sample: /mnt/antigone/balearica/.grus-sync.json
kind:
  description:
    - Why the module failed; V(usage), V(guard) (refused before rsync ran), V(lock), V(max_delete),
      V(partial), V(error) (rsync failed) or V(marker) (the marker could not be written; before the sync,
      then nothing was synced, or after it).
    - Over SSH to a key holder deployed by C(grus.backup.key_holder), its receiving guard may refuse with V(quota)
      (this client's directory is over its quota; nothing transferred), V(key_holder_full) (the export's free space
      is below its reserve; refused, or the transfer stopped) or V(key_holder_setup) (its forced command is wrong).
  returned: on failure
  type: str
  sample: guard
stderr:
  description: The last lines of rsync's error output.
  returned: when rsync ran
  type: str
  sample: ""
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.grus.backup.plugins.module_utils._rsync import sync
from ansible_collections.grus.backup.plugins.module_utils._rsync_options import (
    DEFAULT_IO_TIMEOUT,
    DEFAULT_LOCK,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MARKER_NAME,
    DEFAULT_MAX_DELETE,
    SyncError,
    SyncOptions,
)

MAX_REPORTED_CHANGES = 1000

ARGUMENT_SPEC = dict(
    src=dict(type="path", required=True),
    dest=dict(type="str", required=True),
    volumes=dict(type="list", elements="str"),
    exclude=dict(type="list", elements="str", default=[]),
    delete=dict(type="bool", default=True),
    max_delete=dict(type="int", default=DEFAULT_MAX_DELETE),
    preserve_acls=dict(type="bool", default=True),
    preserve_xattrs=dict(type="bool", default=True),
    preserve_hardlinks=dict(type="bool", default=True),
    numeric_ids=dict(type="bool", default=True),
    bwlimit=dict(type="str"),
    checksum=dict(type="bool", default=False),
    rsh=dict(type="str"),
    io_timeout=dict(type="int", default=DEFAULT_IO_TIMEOUT),
    marker=dict(type="bool", default=True),
    marker_name=dict(type="str", default=DEFAULT_MARKER_NAME),
    lock=dict(type="path", default=DEFAULT_LOCK),
    lock_timeout=dict(type="int", default=DEFAULT_LOCK_TIMEOUT),
    allow_empty=dict(type="bool", default=False),
)


def result_fields(result) -> dict:
    # Read from the result directly: a first sync lists every file, and only the first
    # MAX_REPORTED_CHANGES are returned, so only those are turned into lines.
    out = {
        "changed": result.changed,
        "volumes": result.volumes,
        "excluded_volumes": result.excluded_volumes,
        "marker": result.marker,
        "stats": result.stats,
    }
    if result.argv:
        out.update(
            cmd=result.argv,
            rsync_rc=result.rsync_rc,
            rsync_status=result.rsync_status,
            changes=[change.line for change in result.changes[:MAX_REPORTED_CHANGES]],
            changes_count=len(result.changes),
            stderr=result.stderr,
        )
    if result.marker_path:
        out["marker_path"] = result.marker_path
    return out


def diff_of(result) -> dict:
    lines = [change.line for change in result.changes]
    return {"prepared": "".join(line + "\n" for line in lines)}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = {name: module.params[name] for name in ARGUMENT_SPEC}
    params["dry_run"] = module.check_mode
    try:
        options = SyncOptions.from_dict(params)
        result = sync(options)
    except SyncError as exc:
        extra = {"kind": exc.kind}
        if exc.result is not None:
            extra.update(result_fields(exc.result))
            if module._diff and exc.result.changes:
                extra["diff"] = diff_of(exc.result)
        else:
            extra["changed"] = False
        module.fail_json(msg=exc.message, **extra)
    for warning in result.warnings:
        module.warn(warning)
    out = result_fields(result)
    if module._diff and result.changes:
        out["diff"] = diff_of(result)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
