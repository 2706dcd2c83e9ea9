# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Borg command lines and environment: pure builders shared by the modules and the scheduled job.

layer 3: may import _borg_failures, _borg_validate.

Every ``*_argv`` returns the full argument list (never a shell string); positionals come
after ``--``. ``borg_env`` is the only place a passphrase goes. Borg never gets a chance
to prompt: stdin is /dev/null, and every question borg could ask is answered here.
"""

from __future__ import annotations

import shlex

from ._borg_failures import BorgError
from ._borg_validate import (
    RETENTION_OPTIONS,
    glob_for,
    ssh_target,
    validate_restore_paths,
    validate_retention,
    validate_storage_quota,
)

DEFAULT_ENCRYPTION = "keyfile-blake2"
DEFAULT_COMPRESSION = "lz4"
DEFAULT_LOCK_WAIT = 60
# BatchMode: ssh must fail rather than ask for a password or a host key on a
# terminal it may have inherited. Keepalives: a dead connection must end the
# borg process (and free the repository lock) instead of hanging for hours.
DEFAULT_RSH = "ssh -o BatchMode=yes -o ServerAliveInterval=30 -o ServerAliveCountMax=4"


ENCRYPTION_MODES = (
    "none",
    "authenticated",
    "authenticated-blake2",
    "repokey",
    "repokey-blake2",
    "keyfile",
    "keyfile-blake2",
)


# Every question borg may ask, answered. Borg reads stdin for these when unset;
# stdin is /dev/null, but an explicit "no" documents the choice and cannot be
# overridden by a stray variable in the caller's environment.
NO_PROMPT_ENV = {
    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
    "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
    "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
    "BORG_DISPLAY_PASSPHRASE": "no",
    "BORG_DEBUG_PASSPHRASE": "NO",
    # Specific exit codes (borg >= 1.4; older borg ignores it and says 2).
    "BORG_EXIT_CODES": "modern",
}


def borg_env(
    passphrase=None, passcommand=None, rsh=None, remote_path=None, host_id=None, keys_dir=None, base_dir=None
) -> dict:
    """Environment additions for a borg child (``None`` removes a variable).

    The passphrase goes here and nowhere else. With neither a passphrase nor a
    passcommand, both variables are removed so an inherited one cannot win.
    """
    env = dict(NO_PROMPT_ENV)
    env["BORG_PASSPHRASE"] = passphrase if passphrase is not None else None
    env["BORG_PASSCOMMAND"] = passcommand if (passcommand and passphrase is None) else None
    env["BORG_NEW_PASSPHRASE"] = None
    env["BORG_PASSPHRASE_FD"] = None
    env["BORG_RSH"] = rsh or DEFAULT_RSH
    env["BORG_REMOTE_PATH"] = remote_path or None
    env["BORG_HOST_ID"] = host_id or None
    env["BORG_KEYS_DIR"] = keys_dir or None
    env["BORG_BASE_DIR"] = base_dir or None
    return env


def borg_argv(command, *, borg: str = "borg", lock_wait: int | None = None, log_json: bool = True) -> list:
    """``borg [--log-json] [--lock-wait N] <command...>``."""
    argv = [borg]
    if log_json:
        argv.append("--log-json")
    if lock_wait is not None:
        argv += ["--lock-wait", str(int(lock_wait))]
    return argv + list(command)


def archive_ref(repo: str, name: str) -> str:
    return f"{repo}::{name}"


def init_argv(
    repo, encryption=DEFAULT_ENCRYPTION, *, append_only=False, storage_quota=None, borg="borg", lock_wait=None
) -> list:
    if encryption not in ENCRYPTION_MODES:
        raise BorgError(f"unknown encryption mode {encryption!r}", cause="invalid_input")
    command = ["init", "--encryption", encryption]
    if append_only:
        command.append("--append-only")
    if storage_quota and validate_storage_quota(storage_quota):
        command += ["--storage-quota", str(storage_quota)]
    return borg_argv([*command, "--", repo], borg=borg, lock_wait=lock_wait)


def create_argv(
    repo,
    name,
    paths,
    *,
    exclude=(),
    exclude_if_present=(),
    one_file_system=False,
    compression=DEFAULT_COMPRESSION,
    files_cache=None,
    comment=None,
    timestamp=None,
    dry_run=False,
    list_files=False,
    list_filter=None,
    borg="borg",
    lock_wait=None,
) -> list:
    """``borg create`` for one archive of ``paths``.

    ``files_cache`` is passed through (e.g. ``ctime,size`` or ``mtime,size`` for
    NFS sources, whose inode numbers are not stable).
    """
    if not paths:
        raise BorgError("nothing to archive: paths is empty", cause="invalid_input")
    command = ["create"]
    # borg refuses --json with --dry-run
    command.append("--dry-run" if dry_run else "--json")
    if list_files:
        command.append("--list")
        if list_filter:
            command += ["--filter", list_filter]
    if compression:
        command += ["--compression", compression]
    if files_cache:
        command += ["--files-cache", files_cache]
    if one_file_system:
        command.append("--one-file-system")
    for pattern in exclude or ():
        command += ["--exclude", pattern]
    for marker in exclude_if_present or ():
        command += ["--exclude-if-present", marker]
    if comment:
        command += ["--comment", comment]
    if timestamp:
        command += ["--timestamp", timestamp]
    command += ["--", archive_ref(repo, name)] + [str(p) for p in paths]
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


def prune_argv(repo, retention: dict, *, match_archives=None, dry_run=False, borg="borg", lock_wait=None) -> list:
    """``borg prune --list`` (the list is what the plan is read from) with the (validated) ``retention``
    rules; never compacts."""
    rules = validate_retention(retention)
    command = ["prune"]
    if dry_run:
        command.append("--dry-run")
    command.append("--list")
    for key, option in RETENTION_OPTIONS:
        if key in rules:
            command += [option, str(rules[key])]
    glob = glob_for(match_archives)
    if glob:
        command += ["--glob-archives", glob]
    return borg_argv([*command, "--", repo], borg=borg, lock_wait=lock_wait)


def check_argv(
    repo, *, verify_data=False, repository_only=False, archives_only=False, max_duration=0, borg="borg", lock_wait=None
) -> list:
    """``borg check [--verify-data] REPO``: the repository and every archive's metadata (and data).

    ``max_duration`` (seconds, borg >= 1.2, repository part only): a partial segment check that
    stops after that time and resumes where it stopped at the next run.
    """
    if max_duration and (verify_data or archives_only or not repository_only):
        raise BorgError("max_duration applies to a repository-only check without --verify-data", cause="invalid_input")
    command = ["check"]
    if verify_data:
        command.append("--verify-data")
    if repository_only:
        command.append("--repository-only")
    if archives_only:
        command.append("--archives-only")
    if max_duration:
        # --info: borg says whether the pass reached the last segment (borg serve forwards it too).
        command += ["--info", "--max-duration", str(int(max_duration))]
    return borg_argv([*command, "--", repo], borg=borg, lock_wait=lock_wait)


def delete_argv(repo, name, *, borg="borg", lock_wait=None) -> list:
    """``borg delete REPO::NAME``: one archive, never a whole repository."""
    if not name:
        raise BorgError("refusing to build a delete without an archive name", cause="invalid_input")
    return borg_argv(["delete", "--", archive_ref(repo, name)], borg=borg, lock_wait=lock_wait)


def delete_planned_argv(repo, names, *, borg="borg", lock_wait=None) -> list:
    """``borg delete -- REPO NAME...`` (borg >= 1.2): exactly these archives, in one transaction.

    What a prune's dry run planned, and nothing else: a second ``borg prune`` would apply the
    retention again, and an archive that crossed its boundary in between would go too. Never
    without a name: ``borg delete REPO`` alone deletes the whole repository.
    """
    names = [str(n) for n in names]
    if not names or not all(names):
        raise BorgError("refusing to build a delete without archive names", cause="invalid_input")
    return borg_argv(["delete", "--", repo, *names], borg=borg, lock_wait=lock_wait)


def extract_argv(repo, name, paths=(), *, strip_components=0, dry_run=False, borg="borg", lock_wait=None) -> list:
    """``borg extract`` (runs in the target directory: borg extracts into its cwd)."""
    command = ["extract"]
    if dry_run:
        command.append("--dry-run")
    if strip_components:
        command += ["--strip-components", str(int(strip_components))]
    command += ["--", archive_ref(repo, name), *validate_restore_paths(paths)]
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


def list_argv(repo, name=None, paths=(), *, match_archives=None, borg="borg", lock_wait=None) -> list:
    """``borg list --json`` (archives) or ``--json-lines`` (an archive's items)."""
    if name:
        command = ["list", "--json-lines", "--", archive_ref(repo, name)] + [str(p) for p in paths or ()]
    else:
        command = ["list", "--json"]
        glob = glob_for(match_archives)
        if glob:
            command += ["--glob-archives", glob]
        command += ["--", repo]
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


def key_export_argv(repo, path, *, borg="borg", lock_wait=None) -> list:
    return borg_argv(["key", "export", "--", repo, str(path)], borg=borg, lock_wait=lock_wait)


def key_import_argv(repo, path, *, borg="borg", lock_wait=None) -> list:
    """``borg key import REPO PATH``: a key export (of this repository: borg checks its id) into the keys dir."""
    return borg_argv(["key", "import", "--", repo, str(path)], borg=borg, lock_wait=lock_wait)


def config_argv(repo, key, value=None, *, delete=False, borg="borg", lock_wait=None) -> list:
    """``borg config`` to read (no value), set, or ``delete`` a repository setting."""
    command = ["config"] + (["--delete"] if delete else []) + ["--", repo, key]
    if value is not None and not delete:
        command.append(str(value))
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


# ssh that stops after the host key check: no authentication method is offered, so it never logs
# in (no borg serve starts on the repository host); the first value of an option wins in ssh,
# so these come before the operator's own.
_NO_LOGIN = (
    "BatchMode=yes",
    "ConnectTimeout=10",
    "PubkeyAuthentication=no",
    "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no",
    "HostbasedAuthentication=no",
    "GSSAPIAuthentication=no",
)


def host_key_probe_argv(repo: str, rsh=None) -> list | None:
    """The ssh command borg would run for ``repo`` (``BORG_RSH`` + ``-p`` + ``user@host``), made to stop
    after the host key check. ``None`` for a local repository."""
    target = ssh_target(repo)
    if target is None:
        return None
    user_at_host, port = target
    words = shlex.split(rsh or DEFAULT_RSH)
    argv = [words[0]]
    for option in _NO_LOGIN:
        argv += ["-o", option]
    argv += words[1:]
    if port:
        argv += ["-p", str(port)]
    return [*argv, "--", user_at_host, "true"]
