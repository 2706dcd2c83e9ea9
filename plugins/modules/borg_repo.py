#!/usr/bin/python
# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: borg_repo
short_description: Create a borg repository, export its key, and report on it
version_added: 0.1.0
description:
  - Creates (C(borg init)) a borg repository if it does not exist, idempotently, and reports its id,
    location, encryption mode and archives. This is also how to list the archives of a repository.
  - Never deletes a repository. O(state=absent) is refused on purpose; delete a repository by hand
    on the repository host.
  - An existing repository with another encryption mode, or a non-empty directory that is not a
    repository, is a failure; nothing is touched.
  - Can set the repository's own C(append_only) flag and storage quota (local repositories), and
    export the key to a file (idempotently, mode 0600) for escrow.
author:
  - grus.backup developers (@grus-collective)
extends_documentation_fragment:
  - grus.backup.borg
  - grus.backup.borg.attributes
  - grus.backup.borg.actiongroup_borg
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the repository's existence, encryption, append-only flag, storage quota and key export
        before and after.
options:
  state:
    description:
      - V(present) creates the repository when it does not exist.
      - V(absent) is refused with an explanation; this module never deletes a repository.
    type: str
    choices: [present, absent]
    default: present
  encryption:
    description:
      - The encryption mode of a new repository (C(borg init --encryption)).
      - An existing repository must have this mode; borg cannot change it, so a mismatch fails.
      - V(keyfile-blake2) keeps the key on this host only (not in the repository), which is what a
        key holder wants when the repository host must not be able to read the backups.
      - Every mode except V(none) needs O(passphrase) or O(passcommand) to create the repository.
    type: str
    choices: [none, authenticated, authenticated-blake2, repokey, repokey-blake2, keyfile, keyfile-blake2]
    default: keyfile-blake2
  append_only:
    description:
      - The repository's own C(append_only) flag. When V(true), deletes and prunes only add
        transactions; space is reclaimed and old data dropped only when the repository host compacts.
      - On a remote repository it can be set only when this module creates it (C(borg config) works on
        local repositories only); for an existing remote repository a warning says that it was not checked.
        The repository host enforces append-only for remote clients with C(borg serve --append-only).
      - Not set (the default) leaves the flag as it is.
    type: bool
  storage_quota:
    description:
      - The repository's storage quota, in borg's notation (decimal units, V(500G), V(2T)), at least V(10M);
        V(0) removes the quota.
      - Same rules as O(append_only) for remote repositories. Not set leaves the quota as it is.
    type: str
  key_export:
    description:
      - Export the repository key (C(borg key export)) to this file on the managed host, mode 0600.
      - Idempotent. The file is rewritten only when its content differs from the key.
      - The export is still protected by the passphrase; keep both, apart.
      - Fails for O(encryption=none), which has no key.
    type: path
  key_import:
    description:
      - A key export of this repository on the managed host (for example the key holder's escrow copy, brought
        back to a rebuilt host), imported with C(borg key import) when the repository exists and this host has
        no key for it (keyfile modes). Borg checks that the file belongs to this repository.
      - Nothing happens when this host has the key already, or when the repository does not exist yet (it is
        created as usual). An existing repository is never initialised again.
      - When this host has no key and the file does not exist, the module fails and names both.
      - The key export is still protected by the passphrase; the passphrase comes from O(passphrase) or
        O(passcommand), never from the file.
    type: path
notes:
  - Key material is never returned; only the path of the exported file.
seealso:
  - module: grus.backup.borg_archive
  - name: borg init
    description: Borg's documentation of repository creation and encryption modes.
    link: https://borgbackup.readthedocs.io/en/stable/usage/init.html
"""

EXAMPLES = r"""
- name: Create the repository on the repository host over SSH, key kept on this host
  grus.backup.borg_repo:
    repo: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
    encryption: keyfile-blake2
    passcommand: cat /root/.config/borg/passphrase
    rsh: ssh -i /root/.ssh/borg_ed25519 -o BatchMode=yes
    key_export: /root/borg-key-antigone.export

- name: List the archives of a repository
  grus.backup.borg_repo:
    repo: /srv/borg/local
    passcommand: cat /root/.config/borg/passphrase
  register: repo_facts

- name: Show them
  ansible.builtin.debug:
    msg: "{{ repo_facts.archives | map(attribute='name') | list }}"

- name: A local append-only repository with a quota
  grus.backup.borg_repo:
    repo: /srv/borg/local
    encryption: repokey-blake2
    passcommand: cat /root/.config/borg/passphrase
    append_only: true
    storage_quota: 500G

- name: Shared settings once, through the action group (module_defaults on a block or a play)
  module_defaults:
    group/grus.backup.borg:
      repo: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
      passcommand: cat /root/.config/borg/passphrase
      rsh: ssh -i /root/.ssh/borg_ed25519 -o BatchMode=yes
  block:
    - name: Make sure the repository exists
      grus.backup.borg_repo:
        encryption: keyfile-blake2

    - name: Back up /srv/nfs
      grus.backup.borg_archive:
        name: "{hostname}-{now:%Y-%m-%dT%H:%M}"
        paths:
          - /srv/nfs
"""

RETURN = r"""
repo:
  description: The repository, as given.
  returned: always
  type: str
  sample: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
repo_id:
  description: The repository id (null in check mode when the repository would be created).
  returned: always
  type: str
  sample: 3cee01773679fb79d662ad2531f50e89b9f3542ee922365a99c9452e0ce42051
location:
  description: The repository location as borg reports it.
  returned: always
  type: str
  sample: ssh://borg-antigone@sarus.example.net/srv/borg/antigone
encryption:
  description: The encryption mode of the repository (the requested one in check mode before creation).
  returned: always
  type: str
  sample: keyfile-blake2
borg_version:
  description: The version of borg on the managed host.
  returned: always
  type: str
  sample: 1.4.0
archives:
  description: The archives in the repository, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Archive name.
      type: str
      sample: antigone-2026-11-23T04:00:00
    time:
      description: Archive time (local time of the repository's archive metadata, ISO 8601).
      type: str
      sample: "2026-11-23T04:00:02.000000"
    id:
      description: Archive id.
      type: str
      sample: 26662c54191c9140c91bae35adb8c26da307c4c0f57d7c48e0a78c4bd5d2ea2f
created:
  description: Whether the repository was (or in check mode would be) created by this run.
  returned: always
  type: bool
  sample: false
append_only:
  description: The repository's own append-only flag; null when it cannot be read (remote repository).
  returned: always
  type: bool
  sample: true
storage_quota:
  description: The repository's storage quota in bytes (0 is none); null when it cannot be read (remote).
  returned: always
  type: int
  sample: 500000000000
key_export:
  description: The file the key was exported to, when O(key_export) is set.
  returned: when O(key_export) is set
  type: str
  sample: /root/borg-key-antigone.export
key_imported:
  description: Whether the key was (or in check mode would be) imported from O(key_import) by this run.
  returned: always
  type: bool
  sample: false
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.grus.backup.plugins.module_utils._argspec import (
    BORG_COMMON_MUTUALLY_EXCLUSIVE,
    borg_argument_spec,
)
from ansible_collections.grus.backup.plugins.module_utils._borg_argv import DEFAULT_ENCRYPTION, ENCRYPTION_MODES
from ansible_collections.grus.backup.plugins.module_utils._borg_failures import BorgError
from ansible_collections.grus.backup.plugins.module_utils._borg_parse import config_append_only
from ansible_collections.grus.backup.plugins.module_utils._borg_repo import (
    BorgRepo,
    export_key,
    import_key,
    init_repository,
    read_local_repo_config,
    repo_info,
    set_repo_config,
)
from ansible_collections.grus.backup.plugins.module_utils._borg_validate import validate_storage_quota
from ansible_collections.grus.backup.plugins.module_utils._borg_version import cached_borg_version

KEY_MODE = 0o600


def argument_spec() -> dict:
    return borg_argument_spec(
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        encryption={"type": "str", "choices": list(ENCRYPTION_MODES), "default": DEFAULT_ENCRYPTION},
        append_only={"type": "bool"},
        storage_quota={"type": "str"},
        key_export={"type": "path"},
        key_import={"type": "path"},
    )


def read_repository(conn: BorgRepo, warnings: list) -> dict | None:
    """Repository facts, or None when there is nothing (or an empty directory) at the location."""
    try:
        return repo_info(conn)
    except BorgError as exc:
        if exc.cause == "repository_missing":
            return None
        if exc.cause != "not_a_repository":
            raise
        path = conn.local_path
        if path is None:
            # Remote: borg init refuses a non-empty directory itself, with the same cause.
            warnings.append(
                f"{conn.repo} exists but is not a borg repository: creating one works only if it is an empty directory"
            )
            return None
        if os.path.isdir(path) and not os.listdir(path):
            return None
        raise conn.refuse(
            f"{conn.repo} is a non-empty directory that is not a borg repository; refusing to touch it",
            "not_a_repository",
        ) from exc


def read_or_import_key(conn: BorgRepo, params: dict, check_mode: bool, warnings: list, before: dict) -> tuple:
    """``(info, imported)``: the repository read; when it exists but this host has no key for it, the key
    imported from ``key_import`` first (``info`` None in check mode, where nothing is imported)."""
    path = params.get("key_import")
    try:
        return read_repository(conn, warnings), False
    except BorgError as exc:
        if exc.cause != "keyfile_missing" or not path:
            raise
        if not os.path.isfile(path):
            raise conn.refuse(
                f"repository {conn.repo} exists but this host has no key for it, and there is no key export to "
                f"import at {path}: bring the key back from escrow (a repository that exists is never initialised "
                "again)",
                "keyfile_missing",
            ) from exc
    before["key"] = "missing"
    if check_mode:
        return None, True
    warnings += import_key(conn, path)
    return repo_info(conn), True


def local_settings(conn: BorgRepo) -> dict:
    config = read_local_repo_config(conn.local_path) if conn.local_path else None
    if config is None:
        return {"append_only": None, "storage_quota": None}
    return {
        "append_only": config_append_only(config),
        "storage_quota": int(config.get("storage_quota", "0") or 0),
    }


def key_export_state(conn: BorgRepo, path: str) -> tuple[bytes, bool, bool]:
    """(exported key, content matches the file, mode is 0600)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise conn.refuse(
            f"cannot export the key of {conn.repo}: directory {directory} does not exist", "invalid_input"
        )
    scratch = tempfile.mkdtemp(prefix="grus-borg-key-")
    try:
        exported = os.path.join(scratch, "key")
        export_key(conn, exported)
        with open(exported, "rb") as handle:
            key = handle.read()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        with open(path, "rb") as handle:
            same = handle.read() == key
        mode_ok = (os.stat(path).st_mode & 0o7777) == KEY_MODE
    except FileNotFoundError:
        same, mode_ok = False, False
    return key, same, mode_ok


def write_key(path: str, key: bytes) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".borg-key-", dir=directory)
    try:
        os.fchmod(fd, KEY_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_or_check(conn: BorgRepo, params: dict, check_mode: bool, warnings: list, before: dict) -> tuple:
    """``(info, created, imported)``: the existing repository checked (its key imported from ``key_import``
    when this host has none), or a new one made (``info`` None in check mode)."""
    encryption = params["encryption"]
    info, imported = read_or_import_key(conn, params, check_mode, warnings, before)
    if imported:
        before["exists"] = True
        if info is None:  # check mode: the key would be imported; the repository cannot be read before that
            return None, False, True
    if info is None:
        if encryption != "none" and not (conn.passphrase or conn.passcommand):
            raise conn.refuse(
                f"cannot create repository {conn.repo} with encryption {encryption}: set passphrase or passcommand",
                "invalid_input",
            )
        before["exists"] = False
        if check_mode:
            return None, True, False
        warnings += init_repository(
            conn, encryption, append_only=bool(params["append_only"]), storage_quota=params["storage_quota"]
        )
        return repo_info(conn), True, False
    if info["encryption"] != encryption:
        raise conn.refuse(
            f"repository {conn.repo} exists with encryption {info['encryption']}, not {encryption}; "
            "borg cannot change the encryption of a repository: refusing",
            "encryption_mismatch",
        )
    before.update(exists=True, encryption=info["encryption"])
    return info, False, imported


def reconcile_settings(
    conn: BorgRepo, params: dict, quota_bytes, check_mode: bool, created: bool, before: dict
) -> tuple:
    """``(settings, changed)``: the repository's own append_only and storage_quota, set where asked."""
    append_only = params["append_only"]
    if created and check_mode:
        return {"append_only": bool(append_only), "storage_quota": quota_bytes or 0}, False
    if not conn.local_path:
        return {"append_only": None, "storage_quota": None}, False
    settings = local_settings(conn)
    if not created:
        before.update(settings)
    changed = False
    for key, value in {"append_only": append_only, "storage_quota": quota_bytes}.items():
        if value is None or settings[key] == value:
            continue
        changed = True
        if not check_mode:
            if key == "storage_quota" and not value:
                set_repo_config(conn, key, delete=True)
            else:
                set_repo_config(conn, key, int(value))
        settings[key] = value
    if changed and not check_mode:
        settings = local_settings(conn)
    return settings, changed


def reconcile_key_export(conn: BorgRepo, params: dict, info, created: bool, check_mode: bool, before: dict) -> bool:
    """Export the key to ``key_export`` (mode 0600) unless the file holds it already; returns changed."""
    key_path = params["key_export"]
    mode = (info or {}).get("encryption") or params["encryption"]
    if mode == "none":
        raise conn.refuse(f"repository {conn.repo} is not encrypted: there is no key to export", "unencrypted")
    if info is None:
        # Check mode, repository not created yet: the key would be exported.
        before["key_export"] = "absent"
        return True
    key, same, mode_ok = key_export_state(conn, key_path)
    if created:
        before["key_export"] = "absent"
    elif same:
        before["key_export"] = "current" if mode_ok else "wrong mode"
    else:
        before["key_export"] = "missing or different"
    if same and mode_ok:
        return False
    if not check_mode:
        if same:
            os.chmod(key_path, KEY_MODE)
        else:
            write_key(key_path, key)
    return True


def ensure_repository(conn: BorgRepo, params: dict, check_mode: bool) -> dict:
    encryption = params["encryption"]
    quota = params["storage_quota"]
    quota_bytes = validate_storage_quota(quota) if quota is not None else None  # before borg runs
    version = cached_borg_version(conn.borg)
    warnings = []
    before = {}
    info, created, imported = create_or_check(conn, params, check_mode, warnings, before)
    settings, settings_changed = reconcile_settings(conn, params, quota_bytes, check_mode, created, before)
    if (
        not conn.local_path
        and not created
        and (params["append_only"] is not None or params["storage_quota"] is not None)
    ):
        warnings.append(
            f"append_only and storage_quota of the remote repository {conn.repo} were not checked: borg can read "
            "and change them only on the repository host (which enforces append-only with borg serve --append-only)"
        )
    after = {"exists": True, "encryption": encryption}
    if imported:
        after["key"] = "imported"
    after.update({k: v for k, v in settings.items() if v is not None})
    changed = created or imported or settings_changed
    key_path = params["key_export"]
    if key_path:
        changed = reconcile_key_export(conn, params, info, created, check_mode, before) or changed
        after["key_export"] = "current"
    info = info or {}
    result = {
        "changed": changed,
        "repo": conn.repo,
        "repo_id": info.get("repo_id"),
        "location": info.get("location") or conn.repo,
        "encryption": info.get("encryption") or encryption,
        "borg_version": version,
        "archives": info.get("archives", []),
        "created": created,
        "key_imported": imported,
        "append_only": settings["append_only"],
        "storage_quota": settings["storage_quota"],
        "warnings": warnings + info.get("warnings", []),
        "diff": {"before": before, "after": after},
    }
    if key_path:
        result["key_export"] = key_path
    return result


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=BORG_COMMON_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "absent":
        module.fail_json(
            msg=f"state=absent is refused for repository {params['repo']}: grus.backup does not delete "
            "repositories; do it by hand on the repository host if you really mean it",
            repo=params["repo"],
        )
    try:
        conn = BorgRepo.from_params(params, borg=module.get_bin_path("borg", required=True))
    except BorgError as exc:  # an empty repo, a negative lock_wait: refused before borg runs
        module.fail_json(repo=params["repo"], **exc.as_dict())
    try:
        result = ensure_repository(conn, params, module.check_mode)
    except BorgError as exc:
        module.fail_json(repo=params["repo"], **conn.failure_result(exc))
    if not module._diff:
        result.pop("diff")
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
