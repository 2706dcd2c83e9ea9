#!/usr/bin/python
# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: borg_archive
short_description: Create, delete, restore, prune and list borg archives
version_added: 0.1.0
description:
  - Runs borg itself on the managed host to manage the archives of one repository.
  - V(present) creates an archive from O(paths) (C(borg create)).
  - V(absent) deletes one named archive (C(borg delete)).
  - V(extracted) restores an archive, or some paths of it, into O(dest) (C(borg extract)).
  - V(pruned) applies a retention policy (C(borg prune)), behind a O(max_deletions) guard.
  - V(listed) lists the archives of the repository, or the files of one archive.
  - C(changed) is exact. Every state supports check mode; diff mode shows what a create would add, what a
    prune would remove, and what a restore would write.
author:
  - grus.backup developers (@grus-collective)
extends_documentation_fragment:
  - grus.backup.borg
  - grus.backup.borg.attributes
  - grus.backup.borg.actiongroup_borg
attributes:
  check_mode:
    support: full
    details:
      - V(present) and V(extracted) run borg with C(--dry-run) in diff mode (create) or always (extract),
        which reads the repository but writes nothing.
      - V(pruned) runs C(borg prune --dry-run --list) and deletes nothing.
  diff_mode:
    support: full
    details:
      - V(present) lists the paths that go into the archive (in check mode, every path borg would
        visit; otherwise the added and modified ones).
      - V(pruned) shows the matching archives before and the kept ones after.
      - V(absent) and V(extracted) show the archive or the restored paths.
options:
  name:
    description:
      - The archive name.
      - Borg placeholders such as V({hostname}-{now}) are allowed with O(state=present). Such a name
        cannot be checked for existence beforehand, so every run creates a new archive.
      - Required for V(present), V(absent) and V(extracted); with V(listed) it lists that archive's files.
      - An empty name is refused (leave O(name) out to list the archives).
    type: str
  state:
    description:
      - What to do; see the description.
    type: str
    choices: [present, absent, extracted, pruned, listed]
    default: present
  paths:
    description:
      - With V(present), the files and directories to archive, best given as absolute paths (a relative path
        is relative to the module's working directory, and C(~) is not expanded). Every one must exist; a
        missing path fails before anything is written (borg itself would only warn and save a partial archive).
      - With V(extracted) and V(listed), the archive paths to restore or list, as stored in the archive
        (without a leading V(/), for example V(srv/data)). Absolute paths and V(..) components are refused.
    type: list
    elements: str
    default: []
  exclude:
    description:
      - Exclude patterns for V(present) (C(borg create --exclude)), in borg's pattern syntax
        (C(fm:) by default, C(sh:), C(re:), C(pp:)).
    type: list
    elements: str
    default: []
  exclude_if_present:
    description:
      - Exclude directories that contain a file of one of these names (C(--exclude-if-present)).
    type: list
    elements: str
    default: []
  one_file_system:
    description:
      - Stay on the file system of each path (C(--one-file-system)).
    type: bool
    default: false
  compression:
    description:
      - Compression for new data (C(--compression)), in borg's notation (V(lz4), V(zstd,3), V(auto,zstd,10)).
      - Checked before borg runs, as C(borg help compression) describes it - V(none), V(lz4), V(zstd[,1-22]),
        V(zlib[,0-9]), V(lzma[,0-9]), V(auto,<spec>), V(obfuscate,<1-6|110-123>,<spec>) - anything else is refused.
    type: str
    default: lz4
  files_cache:
    description:
      - Borg's files cache mode (C(--files-cache)). Use V(ctime,size) or V(mtime,size) for NFS and other
        sources whose inode numbers are not stable, so that unchanged files are not read again.
      - Not set leaves borg's default (V(ctime,size,inode)).
      - One of the modes borg accepts (in any order), checked before borg runs - V(ctime,size,inode),
        V(mtime,size,inode), V(ctime,size), V(mtime,size), V(rechunk,ctime), V(rechunk,mtime), V(size), V(disabled).
    type: str
  comment:
    description:
      - A comment stored with a new archive.
    type: str
  timestamp:
    description:
      - The archive time of a new archive (C(--timestamp)), UTC as V(yyyy-mm-ddThh:mm:ss), or a file whose
        mtime to use. Defaults to now.
      - A time (or file modification time) more than five minutes ahead of the managed host's clock is refused
        before borg runs, because an archive dated in the future stops every later V(pruned) (clock guard).
    type: str
  dest:
    description:
      - With V(extracted), the directory to restore into. Created (mode 0700) when missing.
      - V(/) is refused. A non-empty directory is refused unless O(force=true), except when it already
        holds exactly what would be restored (same types, sizes, modification times and link targets),
        which is reported as unchanged.
    type: path
  strip_components:
    description:
      - With V(extracted), remove this many leading path elements (C(--strip-components)); paths with
        fewer elements are not restored.
    type: int
    default: 0
  force:
    description:
      - With V(extracted), restore into a non-empty O(dest), overwriting files of the same names.
    type: bool
    default: false
  keep_within:
    description:
      - With V(pruned), keep every archive younger than this interval, given as a number and one of V(H) (hours),
        V(d) (days), V(w) (weeks), V(m) (months), V(y) (years); for example V(14d).
    type: str
  keep_last:
    description:
      - With V(pruned), keep this many most recent archives.
    type: int
  keep_hourly:
    description:
      - With V(pruned), number of hourly archives to keep.
    type: int
  keep_daily:
    description:
      - With V(pruned), number of daily archives to keep.
    type: int
  keep_weekly:
    description:
      - With V(pruned), number of weekly archives to keep.
    type: int
  keep_monthly:
    description:
      - With V(pruned), number of monthly archives to keep.
    type: int
  keep_yearly:
    description:
      - With V(pruned), number of yearly archives to keep.
    type: int
  match_archives:
    description:
      - With V(pruned) and V(listed), consider only archives whose names match this shell glob
        (C(--glob-archives)). A value without glob characters is a prefix (V(antigone-) is V(antigone-*)).
      - Prune archives of different sources separately, each with its own prefix.
      - Required with V(pruned), so that one job's retention never deletes another job's archives. V(*) is the
        explicit opt-in to prune every archive of the repository under one retention.
    type: str
  max_deletions:
    description:
      - With V(pruned), the most archives one run may delete. When the plan (a C(--dry-run) first) would
        delete more, the module fails and deletes nothing.
      - Otherwise exactly the planned archives are deleted (C(borg delete) of their names, one transaction),
        so an archive that crosses the retention boundary after the plan is left for the next run, and a
        listing afterwards verifies that they are gone.
      - The same guard, with the same default, holds the key holder's scheduled prune. The default, V(12), is
        two days of six runs a day (more in one run is not what a normal 14-day retention deletes).
    type: int
    default: 12
  max_files:
    description:
      - With V(listed) and O(name), return at most this many files (0 returns all). A negative number is refused.
    type: int
    default: 1000
notes:
  - V(absent) and V(pruned) do not compact the repository (borg >= 1.2 separates C(borg compact)), so
    space is reclaimed when the repository host compacts. On an append-only repository the deletion is
    only logical until then; the module says so in a warning.
  - Restores compare an existing O(dest) by size and modification time, as rsync does by default, to
    decide that nothing needs restoring.
  - A restore into an empty O(dest) runs C(borg extract) alone (borg checks every chunk it restores) and
    counts the restored files and bytes on disk; into a non-empty O(dest) the archive's item list is read
    first (streamed, a few fields per item) to compare and, afterwards, to verify what was written.
  - V(extracted) fails (C(cause=damaged_data)), also in check mode, when borg reports damaged data, which borg
    itself treats only as a warning (rc 1) - a file whose lost chunks a C(borg check --repair) replaced with
    zeros (borg 1.2 logs "File has damaged (all-zero) chunks", borg 1.4.0 only "backup error"), or a size
    inconsistency. The message names the damaged files (the first 20; all in C(borg_messages)). Borg has
    written them into O(dest) with zeros where data was lost, so they must not be trusted; run
    C(borg check --verify-data), and restore those files from an older archive if one holds them intact.
  - V(pruned) refuses (and deletes nothing) when the newest matching archive lies more than five minutes in
    the future, because then this host's clock went backwards and a O(keep_within) window would slide.
  - V(present) does not list the repository before creating; borg itself refuses an existing archive
    name before reading any file, and the module reports that as unchanged.
  - The borg version is checked on every call and remembered per borg binary in
    C(~/.cache/grus-backup/borg-version.json) (asked again when the binary changes).
seealso:
  - module: grus.backup.borg_repo
  - name: borg create
    description: Borg's documentation of archive creation, patterns and placeholders.
    link: https://borgbackup.readthedocs.io/en/stable/usage/create.html
  - name: borg prune
    description: Borg's documentation of the retention rules.
    link: https://borgbackup.readthedocs.io/en/stable/usage/prune.html
"""

EXAMPLES = r"""
# Ad hoc restore, as an operator types it (on the key holder, as root):
#   BORG='repo=/srv/borg/local passcommand="cat /root/.config/borg/passphrase"'
#   ansible antigone -b -m grus.backup.borg_archive \
#     -a "$BORG name=antigone-2026-11-23T04:00 state=extracted dest=/srv/restore"

- name: Back up the NFS export (one archive per run)
  grus.backup.borg_archive:
    repo: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
    passcommand: cat /root/.config/borg/passphrase
    rsh: ssh -i /root/.ssh/borg_ed25519 -o BatchMode=yes
    name: "antigone-{now:%Y-%m-%dT%H:%M}"
    paths:
      - /srv/nfs/volumes
    exclude:
      - /srv/nfs/volumes/connection-logs
    exclude_if_present:
      - .nobackup
    files_cache: ctime,size
    compression: zstd,3

- name: Restore one directory of an archive into an empty directory
  grus.backup.borg_archive:
    repo: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
    passcommand: cat /root/.config/borg/passphrase
    name: antigone-2026-11-23T04:00
    state: extracted
    paths:
      - srv/nfs/volumes/www
    strip_components: 3
    dest: /srv/restore

- name: Keep 14 days of this job's archives, deleting at most 10 in one run
  grus.backup.borg_archive:
    repo: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
    passcommand: cat /root/.config/borg/passphrase
    state: pruned
    keep_within: 14d
    match_archives: antigone-
    max_deletions: 10

- name: Delete one archive
  grus.backup.borg_archive:
    repo: /srv/borg/local
    passcommand: cat /root/.config/borg/passphrase
    name: antigone-2026-11-01T04:00
    state: absent

- name: List the files of an archive
  grus.backup.borg_archive:
    repo: /srv/borg/local
    passcommand: cat /root/.config/borg/passphrase
    name: antigone-2026-11-23T04:00
    state: listed
    max_files: 100
  register: listing
"""

RETURN = r"""
repo:
  description: The repository, as given.
  returned: always
  type: str
  sample: /srv/borg/local
borg_version:
  description: The version of borg on the managed host.
  returned: always
  type: str
  sample: 1.4.0
archive:
  description:
    - The archive concerned. For V(present) the new or existing archive; null in check mode when it
      would be created.
    - For V(extracted) into an empty O(dest) (outside check and diff mode) only its C(name), as that restore
      runs borg once, without listing the repository first.
  returned: when O(state) is V(present), V(absent), V(extracted), or V(listed) with O(name)
  type: dict
  contains:
    name:
      description: Archive name (placeholders expanded).
      type: str
      sample: antigone-2026-11-23T04:00
    id:
      description: Archive id.
      type: str
      sample: 26662c54191c9140c91bae35adb8c26da307c4c0f57d7c48e0a78c4bd5d2ea2f
    time:
      description: Archive time (ISO 8601).
      type: str
      sample: "2026-11-23T04:00:02.000000"
    stats:
      description: Sizes of a new archive (original, compressed, deduplicated, number of files).
      type: dict
      returned: when O(state=present) created the archive
      sample: {"original_size": 1048576, "compressed_size": 1049000, "deduplicated_size": 1049000, "nfiles": 3}
archives:
  description: The archives (filtered by O(match_archives)), oldest first.
  returned: when O(state=listed) without O(name)
  type: list
  elements: dict
  sample: [{"name": "antigone-2026-11-23T04:00", "time": "2026-11-23T04:00:02.000000", "id": "26662c54..."}]
files:
  description: Files of the archive (path, type, mode, size, mtime), at most O(max_files).
  returned: when O(state=listed) with O(name)
  type: list
  elements: dict
  sample: [{"path": "srv/data/a.txt", "type": "-", "mode": "-rw-r--r--", "size": 6,
            "mtime": "2026-11-23T04:00:00.000000"}]
files_total:
  description: How many files the archive (under O(paths)) holds.
  returned: when O(state=listed) with O(name)
  type: int
  sample: 3
files_truncated:
  description: Whether O(max_files) cut the list.
  returned: when O(state=listed) with O(name)
  type: bool
  sample: false
pruned:
  description: The archives that were (in check mode, would be) deleted by the prune.
  returned: when O(state=pruned)
  type: list
  elements: dict
  sample: [{"name": "antigone-2026-11-01T04:00", "time": "2026-11-01T04:00:02.000000", "id": "ec72..."}]
kept:
  description: The archives the retention keeps, each with the rule that keeps it.
  returned: when O(state=pruned)
  type: list
  elements: dict
  sample: [{"name": "antigone-2026-11-23T04:00", "time": "2026-11-23T04:00:02.000000", "id": "2666...",
            "rule": "within #1"}]
restore_dir:
  description:
    - The absolute restore directory (named so, not C(dest), because Ansible would add the directory's file
      attributes to a result key named C(dest)).
  returned: when O(state=extracted)
  type: str
  sample: /srv/restore
files_restored:
  description: Files (every entry that is not a directory) written by the restore (in check mode, that would be).
  returned: when O(state=extracted)
  type: int
  sample: 3
bytes_restored:
  description: Bytes of regular files written by the restore (in check mode, that would be).
  returned: when O(state=extracted)
  type: int
  sample: 1048576
append_only:
  description: The repository's own append-only flag (null when it cannot be read, for remote repositories).
  returned: when O(state) is V(absent) or V(pruned)
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.grus.backup.plugins.module_utils._archive import run_state
from ansible_collections.grus.backup.plugins.module_utils._argspec import (
    BORG_COMMON_MUTUALLY_EXCLUSIVE,
    borg_argument_spec,
)
from ansible_collections.grus.backup.plugins.module_utils._borg_argv import DEFAULT_COMPRESSION
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._borg_repo import BorgRepo
from ansible_collections.grus.backup.plugins.module_utils._prune import DEFAULT_MAX_DELETIONS


def argument_spec() -> dict:
    return borg_argument_spec(
        name={"type": "str"},
        state={"type": "str", "choices": ["present", "absent", "extracted", "pruned", "listed"], "default": "present"},
        paths={"type": "list", "elements": "str", "default": []},
        exclude={"type": "list", "elements": "str", "default": []},
        exclude_if_present={"type": "list", "elements": "str", "default": []},
        one_file_system={"type": "bool", "default": False},
        compression={"type": "str", "default": DEFAULT_COMPRESSION},
        files_cache={"type": "str"},
        comment={"type": "str"},
        timestamp={"type": "str"},
        dest={"type": "path"},
        strip_components={"type": "int", "default": 0},
        force={"type": "bool", "default": False},
        keep_within={"type": "str"},
        keep_last={"type": "int"},
        keep_hourly={"type": "int"},
        keep_daily={"type": "int"},
        keep_weekly={"type": "int"},
        keep_monthly={"type": "int"},
        keep_yearly={"type": "int"},
        match_archives={"type": "str"},
        max_deletions={"type": "int", "default": DEFAULT_MAX_DELETIONS},
        max_files={"type": "int", "default": 1000},
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=BORG_COMMON_MUTUALLY_EXCLUSIVE,
        required_if=[
            ("state", "present", ("name", "paths")),
            ("state", "absent", ("name",)),
            ("state", "extracted", ("name", "dest")),
        ],
        supports_check_mode=True,
    )
    params = module.params
    try:
        conn = BorgRepo.from_params(params, borg=module.get_bin_path("borg", required=True))
    except BorgError as exc:  # an empty repo, a negative lock_wait: refused before borg runs
        module.fail_json(repo=params["repo"], **exc.as_dict())
    try:
        result = run_state(conn, params, module.check_mode, module._diff)
    except BorgError as exc:
        module.fail_json(repo=params["repo"], **conn.failure_result(exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(repo=params["repo"], **result)


if __name__ == "__main__":
    main()
