# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Borg for grus.backup: version gate, environment, argv builders, output parsing.

Private to grus.backup and pure standard library: the modules import it, and the
roles ship the same file beside the scheduled backup job, so a create or prune
run by a playbook and one run by the systemd timer are built by the same code.

Layers, from pure to effectful:

* constants and validators (retention, sizes, restore paths, placeholders);
* ``*_argv`` builders: pure functions returning the full argument list;
* parsers for borg's ``--json`` output and ``--log-json`` log lines;
* ``FAILURES``: the one table that maps exit codes and message ids to causes;
* ``BorgRepo``: one repository plus how to reach it (environment, secrets),
  whose ``run`` executes an argv built above through ``_runner.run`` and turns
  failures into ``BorgError``; and small operations on top (``repo_info``,
  ``list_archives``, ``prune``...), each one borg call.

Borg never gets a chance to prompt: stdin is /dev/null, and every question borg
could ask has its answer set in the environment.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime

from ._runner import CommandNotFound, redact, run, stream

MIN_BORG_VERSION = (1, 2, 8)
DEFAULT_ENCRYPTION = "keyfile-blake2"
DEFAULT_COMPRESSION = "lz4"
DEFAULT_LOCK_WAIT = 60
MIN_STORAGE_QUOTA = 10 * 1000**2
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

# Order matters only for the command line we build (borg does not care).
RETENTION_OPTIONS = (
    ("keep_within", "--keep-within"),
    ("keep_last", "--keep-last"),
    ("keep_minutely", "--keep-minutely"),
    ("keep_hourly", "--keep-hourly"),
    ("keep_daily", "--keep-daily"),
    ("keep_weekly", "--keep-weekly"),
    ("keep_monthly", "--keep-monthly"),
    ("keep_yearly", "--keep-yearly"),
)
RETENTION_KEYS = tuple(option[0] for option in RETENTION_OPTIONS)

# What borg accepts for --keep-within (helpers.parseformat.interval).
_INTERVAL_RE = re.compile(r"^(?P<number>[0-9]+)(?P<unit>[Hdwmy])$")
# What borg accepts for --storage-quota (helpers.parseformat.parse_file_size).
_SIZE_RE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>[KMGTP]?)$")
_SIZE_FACTORS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5}
_PLACEHOLDER_RE = re.compile(r"\{[^{}]+\}")
_GLOB_CHARS = set("*?[")


# --------------------------------------------------------------------------
# errors


class BorgError(Exception):
    """A borg operation failed. ``message`` is redacted and names the repository.

    ``cause`` is a short, stable identifier from ``FAILURES`` (or
    ``invalid_input``, ``unsupported_version``...), for callers that branch on it.
    """

    def __init__(self, message, cause="error", rc=None, msgid=None, repo=None, details=None, secrets=()):
        message = redact(str(message), secrets)
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.rc = rc
        self.msgid = msgid
        self.repo = repo
        self.details = [redact(str(d), secrets) for d in (details or [])]

    def as_dict(self) -> dict:
        """The fields a module puts into its failure result."""
        return {
            "msg": self.message,
            "cause": self.cause,
            "rc": self.rc,
            "msgid": self.msgid,
            "borg_messages": self.details,
        }


@dataclass(frozen=True)
class Failure:
    """One row of the failure table."""

    cause: str
    message: str  # str.format template: {repo}, {archive}
    msgids: tuple = ()
    rcs: tuple = ()  # modern exit codes (BORG_EXIT_CODES=modern, borg >= 1.4)
    texts: tuple = ()  # fragments of borg's or ssh's own text, for causes without a msgid


# The one table. Borg gives a message id with --log-json; borg >= 1.4 also a
# specific exit code with BORG_EXIT_CODES=modern; a remote borg gives the id
# without its class prefix and rc 2. First matching row wins, so specific rows
# come before general ones (permission denied before connection closed: ssh
# refusing a key ends in "connection closed" too).
FAILURES = (
    Failure(
        "wrong_passphrase",
        "wrong passphrase for repository {repo}: borg rejected the passphrase or the passcommand's output",
        msgids=("PassphraseWrong",),
        rcs=(52,),
    ),
    Failure(
        "passcommand_failed", "the passcommand for repository {repo} failed", msgids=("PasscommandFailure",), rcs=(51,)
    ),
    Failure(
        "no_passphrase",
        "no passphrase for repository {repo}: set passphrase or passcommand",
        msgids=("NoPassphraseFailure", "PasswordRetriesExceeded"),
        rcs=(50, 53),
    ),
    Failure(
        "keyfile_missing",
        "no key for repository {repo} on this host (keyfile mode: the key lives in keys_dir "
        "or ~/.config/borg/keys of the user running borg)",
        msgids=("KeyfileNotFoundError", "RepoKeyNotFoundError"),
        rcs=(42, 44),
    ),
    Failure(
        "keyfile_mismatch",
        "the key file on this host does not belong to repository {repo}",
        msgids=("KeyfileMismatchError", "KeyfileInvalidError"),
        rcs=(40, 41),
    ),
    Failure(
        "archive_missing",
        "archive {archive} does not exist in repository {repo}",
        msgids=("Archive.DoesNotExist",),
        rcs=(31,),
    ),
    Failure(
        "archive_exists",
        "archive {archive} already exists in repository {repo}",
        msgids=("Archive.AlreadyExists",),
        rcs=(30,),
    ),
    Failure("repository_missing", "repository {repo} does not exist", msgids=("Repository.DoesNotExist",), rcs=(13,)),
    Failure(
        "parent_missing",
        "the parent directory of repository {repo} does not exist",
        msgids=("Repository.ParentPathDoesNotExist", "ParentPathDoesNotExist"),
        rcs=(18,),
    ),
    Failure(
        "not_a_repository",
        "{repo} exists but is not a borg repository; refusing to touch it",
        msgids=(
            "Repository.InvalidRepository",
            "InvalidRepository",
            "Repository.PathAlreadyExists",
            "PathAlreadyExists",
        ),
        rcs=(15, 19),
    ),
    Failure(
        "repository_exists",
        "a repository already exists at {repo}",
        msgids=("Repository.AlreadyExists", "AlreadyExists"),
        rcs=(10,),
    ),
    Failure(
        "lock_timeout",
        "repository {repo} is locked by another borg process (gave up after lock_wait seconds); "
        "if no borg runs any more, a crashed run left the lock: see `borg break-lock`",
        msgids=("LockTimeout", "LockError", "LockErrorT", "LockFailed"),
        rcs=(70, 71, 72, 73),
    ),
    Failure(
        "path_not_allowed",
        "the repository host refused the path of {repo} (borg serve --restrict-to-path/--restrict-to-repository)",
        msgids=("PathNotAllowed",),
        rcs=(83,),
    ),
    Failure(
        "permission_denied",
        "permission denied for repository {repo}",
        msgids=("Repository.PathPermissionDenied", "PathPermissionDenied"),
        rcs=(21,),
        texts=("Permission denied", "PermissionError"),
    ),
    Failure(
        "connection_closed",
        "connection to repository {repo} closed: the host is unreachable, ssh failed, "
        "or borg is not working on the server",
        msgids=("ConnectionClosed", "ConnectionClosedWithHint", "ConnectionBrokenWithHint"),
        rcs=(80, 81, 87),
        texts=("Connection closed by remote host",),
    ),
    Failure(
        "server_outdated",
        "the borg on the host of repository {repo} is too old",
        msgids=("RPCServerOutdated",),
        rcs=(84,),
    ),
    Failure(
        "quota_exceeded",
        "repository {repo} is over its storage quota",
        msgids=("Repository.StorageQuotaExceeded", "StorageQuotaExceeded"),
        rcs=(20,),
    ),
    Failure(
        "no_space",
        "not enough free space for repository {repo}",
        msgids=("Repository.InsufficientFreeSpaceError", "InsufficientFreeSpaceError"),
        rcs=(14,),
    ),
    Failure(
        "check_needed",
        "repository {repo} is inconsistent; run `borg check` on it",
        msgids=("Repository.CheckNeeded", "CheckNeeded", "Repository.ObjectNotFound", "ObjectNotFound"),
        rcs=(12, 17),
    ),
    Failure(
        "access_refused",
        "borg refused to access repository {repo}: it is unencrypted and unknown to this host, or it "
        "moved since this host last used it (relocated); the modules never answer such questions with yes",
        msgids=("RepositoryAccessAborted", "CacheInitAbortedError"),
        rcs=(60, 62),
    ),
    Failure(
        "encryption_changed",
        "the encryption of repository {repo} changed since this host last used it; refusing to continue",
        msgids=("EncryptionMethodMismatch",),
        rcs=(61,),
    ),
    Failure(
        "replay",
        "cache or security information on this host is newer than repository {repo}: either an attack "
        "or a rolled-back repository (after a deliberate rollback, drop this host's cache and security "
        "directory for the repository id)",
        msgids=("RepositoryReplay", "RepositoryIDNotUnique"),
        rcs=(63, 64),
    ),
    Failure("unencrypted", "repository {repo} is not encrypted: it has no key", msgids=("UnencryptedRepo",), rcs=(46,)),
    Failure(
        "integrity",
        "integrity error in repository {repo}; run `borg check` on it",
        msgids=(
            "IntegrityError",
            "FileIntegrityError",
            "DecompressionError",
            "TAMRequiredError",
            "ArchiveTAMRequiredError",
            "TAMInvalid",
            "ArchiveTAMInvalid",
        ),
        rcs=(90, 91, 92, 95, 96, 97, 98),
    ),
    Failure(
        "invalid_placeholder",
        "invalid placeholder in an archive name or comment for repository {repo}",
        msgids=("PlaceholderError", "InvalidPlaceholder"),
        rcs=(5, 6),
    ),
    Failure(
        "unsupported_repository",
        "repository {repo} needs a newer borg",
        msgids=(
            "MandatoryFeatureUnsupported",
            "UnsupportedPayloadError",
            "UnsupportedManifestError",
            "TAMUnsupportedSuiteError",
        ),
        rcs=(25, 27, 48, 99),
    ),
)
GENERIC_FAILURE = Failure("error", "borg failed on repository {repo}")


def exit_status(rc: int) -> str:
    """``ok``, ``warning`` or ``error`` for a borg exit code (legacy and modern codes)."""
    if rc == 0:
        return "ok"
    if rc == 1 or 100 <= rc <= 127:
        return "warning"
    return "error"


def classify_failure(rc=None, logs=(), stderr="") -> Failure:
    """The row of ``FAILURES`` that explains a failed borg run (``GENERIC_FAILURE`` if none)."""
    msgids = {entry.get("msgid") for entry in logs if entry.get("msgid")}
    for failure in FAILURES:
        if msgids.intersection(failure.msgids) or any(text in (stderr or "") for text in failure.texts):
            return failure
    # No message id we know (older borg, garbled output): the modern exit code alone.
    for failure in FAILURES:
        if rc is not None and rc in failure.rcs:
            return failure
    return GENERIC_FAILURE


# --------------------------------------------------------------------------
# versions


def parse_borg_version(text: str) -> tuple:
    """(major, minor, patch) from ``borg --version`` output such as ``borg 1.4.0``."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise BorgError(f"cannot tell the borg version from {text!r}", cause="unsupported_version")
    return tuple(int(part) for part in match.groups())


def check_borg_version(version: tuple) -> None:
    """Refuse a borg these modules must not drive."""
    shown = ".".join(str(part) for part in version)
    if version < MIN_BORG_VERSION:
        raise BorgError(
            f"borg {shown} is too old: grus.backup needs borg >= 1.2.8, which fixes CVE-2023-36811 "
            "(archive spoofing); on Debian bookworm install borgbackup from bookworm-backports",
            cause="unsupported_version",
        )
    if version[0] >= 2:
        raise BorgError(
            f"borg {shown} is not supported: grus.backup drives borg 1.x (>= 1.2.8)", cause="unsupported_version"
        )


# Where the version of each borg binary is remembered, so that a module call or a
# scheduled run does not pay a whole borg start-up (about 0.3 s) just to ask it.
# "": never cache (unit tests). Keyed by the binary's path, size, mtime and inode.
VERSION_CACHE = "~/.cache/grus-backup/borg-version.json"


def _binary_identity(borg: str):
    path = borg if os.sep in borg else shutil.which(borg)
    if not path:
        return None, None
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None, None
    return real, [st.st_size, st.st_mtime_ns, st.st_ino]


def cached_borg_version(borg: str = "borg", runner=None, cache=None) -> str:
    """``borg_version``, remembered per binary: asked again only when the binary changes.

    The check (>= 1.2.8, not 2.x) runs on every call, cached or not. A cache that
    cannot be read or written is ignored: the version is then asked of borg.
    """
    cache = VERSION_CACHE if cache is None else cache
    real, identity = _binary_identity(borg) if cache else (None, None)
    if not real:
        return borg_version(borg, runner=runner)
    path = os.path.expanduser(cache)
    known = {}
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as handle:
        known = json.load(handle)
    known = known if isinstance(known, dict) else {}
    entry = known.get(real)
    if isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("version"), str):
        version = parse_borg_version(entry["version"])
        check_borg_version(version)
        return ".".join(str(part) for part in version)
    shown = borg_version(borg, runner=runner)
    with contextlib.suppress(OSError):
        known[real] = {"identity": identity, "version": shown}
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".borg-version.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(known, handle)
        os.replace(tmp, path)
    return shown


def borg_version(borg: str = "borg", runner=None) -> str:
    """The installed borg's version string, after checking it is one we support."""
    runner = runner or run
    try:
        result = runner([borg, "--version"], env=borg_env())
    except CommandNotFound as exc:
        raise BorgError(f"borg is not installed: {exc}", cause="borg_missing") from exc
    if result.rc != 0:
        raise BorgError(
            f"`{borg} --version` failed: {(result.stderr or result.stdout).strip()}", cause="unsupported_version"
        )
    version = parse_borg_version(result.stdout or result.stderr)
    check_borg_version(version)
    return ".".join(str(part) for part in version)


# --------------------------------------------------------------------------
# environment


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


# --------------------------------------------------------------------------
# shared module options (the argument-spec half; the doc half is the
# grus.backup.borg doc fragment, and the two must stay in step)

BORG_COMMON_ARGUMENT_SPEC = {
    "repo": {"type": "str", "required": True},
    "passphrase": {"type": "str", "no_log": True},
    "passcommand": {"type": "str", "no_log": False},
    "rsh": {"type": "str"},
    "remote_path": {"type": "str"},
    "lock_wait": {"type": "int", "default": DEFAULT_LOCK_WAIT},
    "host_id": {"type": "str"},
    "keys_dir": {"type": "path"},
    "base_dir": {"type": "path"},
}
BORG_COMMON_MUTUALLY_EXCLUSIVE = [("passphrase", "passcommand")]


# --------------------------------------------------------------------------
# validators (no borg needed: run them before touching anything)


def has_placeholder(name: str) -> bool:
    """True when an archive name uses borg placeholders such as {hostname} or {now}."""
    return bool(_PLACEHOLDER_RE.search(name or ""))


def is_remote(repo: str) -> bool:
    """True for ``ssh://...`` and scp-style ``user@host:path`` locations."""
    if repo.startswith("ssh://"):
        return True
    if repo.startswith("file://") or repo.startswith("/") or repo.startswith("."):
        return False
    return bool(re.match(r"^(?:[^@/:]+@)?[^@/:]+:", repo))


def local_repo_path(repo: str) -> str | None:
    """The filesystem path of a local repository, ``None`` for a remote one."""
    if is_remote(repo):
        return None
    if repo.startswith("file://"):
        return repo[len("file://") :]
    return os.path.abspath(os.path.expanduser(repo))


def validate_retention(retention: dict) -> dict:
    """The retention rules that are set, checked as borg would, before borg runs.

    At least one rule is required: borg prune without one is an error, and a
    prune that keeps nothing must never be a typo away.
    """
    rules = {}
    for key in RETENTION_KEYS:
        value = (retention or {}).get(key)
        if value is None:
            continue
        if key == "keep_within":
            value = str(value).strip()
            match = _INTERVAL_RE.match(value)
            if not match or int(match.group("number")) <= 0:
                raise BorgError(
                    f"malformed retention keep_within={value!r}: expected a positive number and one of "
                    "H (hours), d (days), w (weeks), m (months), y (years), e.g. 14d or 48H",
                    cause="invalid_input",
                )
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BorgError(
                    f"malformed retention {key}={value!r}: expected a whole number >= 0", cause="invalid_input"
                )
            if value == 0:
                continue
        rules[key] = value
    if not rules:
        raise BorgError(
            f"no retention rule: set keep_within or at least one keep_* option above 0 ({', '.join(RETENTION_KEYS)})",
            cause="invalid_input",
        )
    return rules


def validate_storage_quota(value) -> int:
    """Bytes of a storage quota; 0 is none, anything else must be at least 10M (borg's own minimum)."""
    size = parse_size(value)
    if 0 < size < MIN_STORAGE_QUOTA:
        raise BorgError(
            f"storage quota {value!r} is too small: borg needs at least 10M (or 0 for none)", cause="invalid_input"
        )
    return size


def parse_size(value) -> int:
    """Bytes from a size in borg's notation (decimal units: 500M, 1.5T, 0)."""
    text = str(value).strip()
    match = _SIZE_RE.match(text)
    if not match:
        raise BorgError(
            f"malformed size {value!r}: expected a number with an optional K, M, G, T or P suffix",
            cause="invalid_input",
        )
    return int(float(match.group("number")) * _SIZE_FACTORS[match.group("suffix")])


def validate_restore_paths(paths) -> list:
    """Archive paths to restore: relative, without ``..`` components.

    Borg stores ``/srv/data`` as ``srv/data``; an absolute path or one that climbs
    out with ``..`` is a mistake or an attack, never something to pass on.
    """
    checked = []
    for path in paths or ():
        text = str(path)
        if not text or text.startswith("/"):
            raise BorgError(
                f"restore path {text!r} is absolute or empty: give paths as stored in the archive, "
                "without a leading / (e.g. srv/data)",
                cause="invalid_input",
            )
        if ".." in text.split("/"):
            raise BorgError(f"restore path {text!r} contains a '..' component; refusing", cause="invalid_input")
        checked.append(posixpath.normpath(text))
    return checked


def check_restore_dest(dest: str, force: bool = False) -> str:
    """The absolute restore target, after refusing the dangerous ones.

    Returns the normalised path. ``force`` allows a non-empty directory, never ``/``
    or a file.
    """
    if not dest:
        raise BorgError("dest is required to extract", cause="invalid_input")
    absolute = os.path.realpath(os.path.abspath(os.path.expanduser(dest)))
    if absolute == os.path.sep:
        raise BorgError(f"refusing to extract into {dest!r}: that is the root directory", cause="unsafe_dest")
    if os.path.lexists(absolute) and not os.path.isdir(absolute):
        raise BorgError(f"dest {dest!r} exists and is not a directory", cause="unsafe_dest")
    return absolute


def strip_path(path: str, strip_components: int) -> str | None:
    """Where borg --strip-components puts an archive path (None: not extracted)."""
    if not strip_components:
        return path
    parts = path.split("/")
    if len(parts) <= strip_components:
        return None
    return "/".join(parts[strip_components:])


def glob_for(match_archives: str | None) -> str | None:
    """The --glob-archives value for ``match_archives``: a glob, or a prefix without glob characters."""
    if not match_archives:
        return None
    if _GLOB_CHARS.intersection(match_archives):
        return match_archives
    return match_archives + "*"


# --------------------------------------------------------------------------
# argv builders: pure, shared with the scheduled jobs


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
    exclude_from=(),
    exclude_if_present=(),
    exclude_caches=False,
    one_file_system=False,
    compression=DEFAULT_COMPRESSION,
    files_cache=None,
    comment=None,
    timestamp=None,
    checkpoint_interval=None,
    dry_run=False,
    list_files=False,
    list_filter=None,
    json_output=True,
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
    if dry_run:
        command.append("--dry-run")
    elif json_output:
        command.append("--json")
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
    if exclude_caches:
        command.append("--exclude-caches")
    for pattern in exclude or ():
        command += ["--exclude", pattern]
    for path in exclude_from or ():
        command += ["--exclude-from", str(path)]
    for marker in exclude_if_present or ():
        command += ["--exclude-if-present", marker]
    if comment:
        command += ["--comment", comment]
    if timestamp:
        command += ["--timestamp", timestamp]
    if checkpoint_interval:
        command += ["--checkpoint-interval", str(int(checkpoint_interval))]
    command += ["--", archive_ref(repo, name)] + [str(p) for p in paths]
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


def prune_argv(
    repo, retention: dict, *, match_archives=None, dry_run=False, list_archives=True, borg="borg", lock_wait=None
) -> list:
    """``borg prune`` with the (validated) ``retention`` rules; never compacts."""
    rules = validate_retention(retention)
    command = ["prune"]
    if dry_run:
        command.append("--dry-run")
    if list_archives:
        command.append("--list")
    for key, option in RETENTION_OPTIONS:
        if key in rules:
            command += [option, str(rules[key])]
    glob = glob_for(match_archives)
    if glob:
        command += ["--glob-archives", glob]
    return borg_argv([*command, "--", repo], borg=borg, lock_wait=lock_wait)


def delete_argv(repo, name, *, dry_run=False, borg="borg", lock_wait=None) -> list:
    """``borg delete REPO::NAME``: one archive, never a whole repository."""
    if not name:
        raise BorgError("refusing to build a delete without an archive name", cause="invalid_input")
    command = ["delete"] + (["--dry-run"] if dry_run else [])
    return borg_argv([*command, "--", archive_ref(repo, name)], borg=borg, lock_wait=lock_wait)


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


def extract_argv(
    repo, name, paths=(), *, strip_components=0, dry_run=False, list_files=False, borg="borg", lock_wait=None
) -> list:
    """``borg extract`` (runs in the target directory: borg extracts into its cwd)."""
    command = ["extract"]
    if dry_run:
        command.append("--dry-run")
    if list_files:
        command.append("--list")
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


def config_argv(repo, key, value=None, *, delete=False, borg="borg", lock_wait=None) -> list:
    """``borg config`` to read (no value), set, or ``delete`` a repository setting."""
    command = ["config"] + (["--delete"] if delete else []) + ["--", repo, key]
    if value is not None and not delete:
        command.append(str(value))
    return borg_argv(command, borg=borg, lock_wait=lock_wait)


# --------------------------------------------------------------------------
# parsers


def parse_log_lines(stderr: str) -> list:
    """``--log-json`` lines as dicts; other lines (ssh, tracebacks) as ``{"type": "text"}``."""
    entries = []
    for raw in (stderr or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
                continue
        entries.append({"type": "text", "message": line})
    return entries


def parse_json_output(stdout: str) -> dict:
    """The single JSON document that ``--json`` prints on stdout."""
    try:
        data = json.loads(stdout or "{}")
    except ValueError as exc:
        raise BorgError(f"borg printed something that is not JSON: {exc}", cause="bad_output") from exc
    return data if isinstance(data, dict) else {}


def parse_json_line(raw: str):
    """One item of ``--json-lines`` output (``None`` for a blank line)."""
    line = raw.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError as exc:
        raise BorgError(f"borg printed a line that is not JSON: {exc}", cause="bad_output") from exc


def log_messages(logs, levels=("WARNING", "ERROR", "CRITICAL")) -> list:
    """Messages worth showing a person: log lines at these levels and non-JSON text."""
    messages = []
    for entry in logs:
        if entry.get("type") == "text" or (entry.get("type") == "log_message" and entry.get("levelname") in levels):
            message = str(entry.get("message", "")).strip()
            if message:
                messages.append(message)
    return messages


def summarize_message(message: str) -> str:
    """One line for a person: the exception line of a borg traceback, else the message itself."""
    if "Traceback (most recent call last)" not in message:
        return message
    found = [line.strip() for line in message.splitlines() if re.match(r"^\w+(?:Error|Exception|Exit)\b.*:", line)]
    return found[-1] if found else message.splitlines()[0]


def file_statuses(logs) -> list:
    """(status, path) pairs from ``--list`` with ``--log-json`` (create)."""
    return [(e.get("status"), e.get("path")) for e in logs if e.get("type") == "file_status"]


# borg 1.x prints "<action> <name padded to 36> <Day, YYYY-MM-DD HH:MM:SS> [<id>]" (local time).
_PRUNE_LINE_RE = re.compile(
    r"^(?P<action>Would prune:|Pruning archive \(\d+/\d+\):|Keeping checkpoint archive:|"
    r"Keeping archive \(rule: (?P<rule>[^)]*)\):)\s+(?P<name>.*?)\s+"
    r"(?:\w{3}, (?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+)?\[(?P<id>[0-9a-f]{64})\]\s*$"
)


def parse_prune_list(logs, archives=()) -> dict:
    """``{"pruned": [...], "kept": [...]}`` from ``borg prune --list --log-json``.

    Lines are matched by the archive id at their end; ``archives`` (from
    ``list_archives``), when given, supply names and times for the ids, else
    they are read from the line itself (time: local, to the second, ISO).
    """
    by_id = {a.get("id"): a for a in archives}
    plan = {"pruned": [], "kept": []}
    for entry in logs:
        if entry.get("type") != "log_message" or entry.get("name") != "borg.output.list":
            continue
        match = _PRUNE_LINE_RE.match(str(entry.get("message", "")).strip())
        if not match:
            continue
        if archives:
            archive = by_id.get(match.group("id"), {})
        else:
            when = match.group("time")
            archive = {"name": match.group("name"), "time": when.replace(" ", "T") if when else None}
        item = {"name": archive.get("name"), "time": archive.get("time"), "id": match.group("id")}
        if match.group("action").startswith(("Would prune", "Pruning")):
            plan["pruned"].append(item)
        else:
            item["rule"] = match.group("rule") or "checkpoint"
            plan["kept"].append(item)
    if archives:
        for item in plan["pruned"] + plan["kept"]:
            if item["name"] is None:
                raise BorgError(
                    f"prune reported archive id {item['id']} that the listing did not show", cause="bad_output"
                )
    return plan


def summarize_archive(archive: dict) -> dict:
    """The fields of an archive entry that results carry."""
    return {"name": archive.get("name"), "time": archive.get("time") or archive.get("start"), "id": archive.get("id")}


# --------------------------------------------------------------------------
# running


@dataclass
class BorgOutput:
    rc: int
    stdout: str
    logs: list
    warnings: list = field(default_factory=list)


@dataclass
class BorgRepo:
    """One repository and how to reach it; ``run`` executes borg against it."""

    repo: str
    passphrase: str | None = field(default=None, repr=False)
    passcommand: str | None = None
    rsh: str | None = None
    remote_path: str | None = None
    lock_wait: int | None = DEFAULT_LOCK_WAIT
    host_id: str | None = None
    keys_dir: str | None = None
    base_dir: str | None = None
    borg: str = "borg"
    timeout: float | None = None
    runner: object = field(default=None, repr=False)

    @classmethod
    def from_params(cls, params: dict, borg: str = "borg", runner=None) -> BorgRepo:
        """From a dict holding the ``BORG_COMMON_ARGUMENT_SPEC`` options."""
        return cls(
            repo=params["repo"],
            passphrase=params.get("passphrase"),
            passcommand=params.get("passcommand"),
            rsh=params.get("rsh"),
            remote_path=params.get("remote_path"),
            lock_wait=params.get("lock_wait", DEFAULT_LOCK_WAIT),
            host_id=params.get("host_id"),
            keys_dir=params.get("keys_dir"),
            base_dir=params.get("base_dir"),
            borg=borg,
            runner=runner,
        )

    @property
    def secrets(self) -> tuple:
        return (self.passphrase,) if self.passphrase else ()

    @property
    def remote(self) -> bool:
        return is_remote(self.repo)

    @property
    def local_path(self) -> str | None:
        return local_repo_path(self.repo)

    def env(self) -> dict:
        return borg_env(
            passphrase=self.passphrase,
            passcommand=self.passcommand,
            rsh=self.rsh,
            remote_path=self.remote_path,
            host_id=self.host_id,
            keys_dir=self.keys_dir,
            base_dir=self.base_dir,
        )

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def run(self, argv, *, cwd=None, archive=None, stdin_data=None) -> BorgOutput:
        """Run one argv from the builders above; raise ``BorgError`` unless rc is ok or a warning."""
        runner = self.runner or run
        return self._outcome(
            lambda: runner(
                argv, env=self.env(), cwd=cwd, timeout=self.timeout, stdin_data=stdin_data, secrets=self.secrets
            ),
            archive,
        )

    def stream(self, argv, on_line, *, cwd=None, archive=None) -> BorgOutput:
        """Like ``run``, but each stdout line goes to ``on_line`` as borg prints it (nothing kept)."""
        if self.runner is not None:  # a test double: replay its captured stdout
            out = self.run(argv, cwd=cwd, archive=archive)
            for line in out.stdout.splitlines(keepends=True):
                on_line(line)
            return BorgOutput(out.rc, "", out.logs, out.warnings)
        return self._outcome(
            lambda: stream(argv, on_line, env=self.env(), cwd=cwd, secrets=self.secrets),
            archive,
        )

    def _outcome(self, call, archive) -> BorgOutput:
        try:
            result = call()
        except CommandNotFound as exc:
            raise BorgError(
                f"borg is not installed ({exc}); needed for repository {self.repo}",
                cause="borg_missing",
                repo=self.repo,
            ) from exc
        except ValueError as exc:
            if "secret" not in str(exc):
                raise BorgError(
                    f"cannot run borg for repository {self.repo}: {exc}",
                    cause="invalid_input",
                    repo=self.repo,
                    secrets=self.secrets,
                ) from exc
            # _runner refuses an argv that contains the passphrase verbatim.
            raise BorgError(
                f"refusing to run borg for repository {self.repo}: the passphrase occurs in the command line "
                "(in the repository, an archive name or a path); use a longer passphrase",
                cause="secret_in_argv",
                repo=self.repo,
                secrets=self.secrets,
            ) from exc
        logs = parse_log_lines(result.stderr)
        if result.timed_out:
            raise BorgError(
                f"borg timed out on repository {self.repo} after {self.timeout} seconds",
                cause="timeout",
                repo=self.repo,
                details=log_messages(logs),
                secrets=self.secrets,
            )
        status = exit_status(result.rc)
        if status == "error":
            raise self.error(result.rc, logs, result.stderr, archive=archive)
        warnings = []
        if status == "warning":
            messages = log_messages(logs, levels=("WARNING", "ERROR", "CRITICAL")) or [f"borg exited {result.rc}"]
            warnings = [self.redact(f"borg warning on repository {self.repo}: {m}") for m in messages]
        return BorgOutput(result.rc, result.stdout, logs, warnings)

    def error(self, rc, logs, stderr="", archive=None) -> BorgError:
        failure = classify_failure(rc, logs, stderr)
        msgid = next((e.get("msgid") for e in logs if e.get("msgid") and e.get("levelname") == "ERROR"), None)
        details = log_messages(logs, levels=("ERROR", "CRITICAL", "WARNING"))
        message = failure.message.format(repo=self.repo, archive=archive if archive is not None else "?")
        said = "; ".join(summarize_message(d) for d in details[-3:] if d != "Local Exception")
        message = f"{message} (borg rc {rc}: {said})" if said else f"{message} (borg rc {rc})"
        return BorgError(
            message, cause=failure.cause, rc=rc, msgid=msgid, repo=self.repo, details=details, secrets=self.secrets
        )

    def argv_kwargs(self) -> dict:
        return {"borg": self.borg, "lock_wait": self.lock_wait}


# --------------------------------------------------------------------------
# operations: one borg call each


def repo_info(conn: BorgRepo, match_archives=None) -> dict:
    """Repository facts and its archives, from one ``borg list --json`` (no cache sync needed)."""
    out = conn.run(list_argv(conn.repo, match_archives=match_archives, **conn.argv_kwargs()))
    data = parse_json_output(out.stdout)
    repository = data.get("repository", {})
    encryption = data.get("encryption", {})
    return {
        "repo_id": repository.get("id"),
        "location": repository.get("location"),
        "last_modified": repository.get("last_modified"),
        "encryption": encryption.get("mode"),
        "keyfile": encryption.get("keyfile"),
        "archives": [summarize_archive(a) for a in data.get("archives", [])],
        "warnings": out.warnings,
    }


def list_archives(conn: BorgRepo, match_archives=None) -> list:
    """The archives (name, time, id), oldest first."""
    return repo_info(conn, match_archives=match_archives)["archives"]


def archive_items(conn: BorgRepo, name: str, paths=(), keep=None) -> list:
    """The items of one archive (optionally under ``paths``), from ``--json-lines``, streamed.

    ``keep(item)`` returns what to keep of each item (``None``: drop it); by default
    the whole item. Only what is kept stays in memory, whatever the archive's size.
    """
    kept = []

    def on_line(line):
        item = parse_json_line(line)
        value = item if keep is None or item is None else keep(item)
        if value is not None:
            kept.append(value)

    conn.stream(list_argv(conn.repo, name, paths, **conn.argv_kwargs()), on_line, archive=name)
    return kept


def init_repository(conn: BorgRepo, encryption=DEFAULT_ENCRYPTION, append_only=False, storage_quota=None) -> list:
    """``borg init``; returns warnings."""
    return conn.run(
        init_argv(conn.repo, encryption, append_only=append_only, storage_quota=storage_quota, **conn.argv_kwargs())
    ).warnings


def read_local_repo_config(path: str) -> dict | None:
    """The ``[repository]`` section of a local repository's config (no borg, no lock)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(os.path.join(path, "config"), encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    if not parser.has_section("repository"):
        return None
    return dict(parser.items("repository"))


def repo_append_only(conn: BorgRepo) -> bool | None:
    """The repository's own append_only flag; ``None`` when it cannot be read (remote)."""
    path = conn.local_path
    if path is None:
        return None
    config = read_local_repo_config(path)
    if config is None:
        return None
    return config.get("append_only", "0").strip() in ("1", "true", "True")


def create_archive(conn: BorgRepo, name: str, paths, **options) -> dict:
    """``borg create --json``: archive facts, stats, warnings and (with list_files) file statuses."""
    argv = create_argv(conn.repo, name, paths, **options, **conn.argv_kwargs())
    out = conn.run(argv, archive=name)
    result = {"warnings": out.warnings, "files": file_statuses(out.logs)}
    if options.get("dry_run"):
        result["archive"] = None
        return result
    data = parse_json_output(out.stdout).get("archive", {})
    result["archive"] = {
        "name": data.get("name"),
        "id": data.get("id"),
        "time": data.get("start"),
        "start": data.get("start"),
        "end": data.get("end"),
        "duration": data.get("duration"),
        "stats": data.get("stats", {}),
    }
    return result


def prune(conn: BorgRepo, retention: dict, match_archives=None, dry_run=False, archives=None) -> dict:
    """``borg prune --list``: ``{"pruned": [...], "kept": [...], "warnings": [...]}``."""
    if archives is None:
        archives = list_archives(conn, match_archives=match_archives)
    argv = prune_argv(conn.repo, retention, match_archives=match_archives, dry_run=dry_run, **conn.argv_kwargs())
    out = conn.run(argv)
    plan = parse_prune_list(out.logs, archives)
    plan["warnings"] = out.warnings
    return plan


def delete_archive(conn: BorgRepo, name: str) -> list:
    """``borg delete REPO::NAME``; returns warnings."""
    return conn.run(delete_argv(conn.repo, name, **conn.argv_kwargs()), archive=name).warnings


def delete_planned(conn: BorgRepo, plan: dict) -> list:
    """Delete the archives a prune dry run planned (``plan["pruned"]``); returns warnings.

    borg warns (rc 1) about a planned archive that is already gone, and deletes the rest.
    """
    names = [archive["name"] for archive in plan["pruned"]]
    return conn.run(delete_planned_argv(conn.repo, names, **conn.argv_kwargs())).warnings


def extract(conn: BorgRepo, name: str, dest: str, paths=(), strip_components=0, dry_run=False) -> list:
    """``borg extract`` into ``dest`` (its cwd); returns warnings."""
    argv = extract_argv(
        conn.repo, name, paths, strip_components=strip_components, dry_run=dry_run, **conn.argv_kwargs()
    )
    return conn.run(argv, cwd=dest, archive=name).warnings


def export_key(conn: BorgRepo, path: str) -> list:
    """``borg key export`` to ``path``; returns warnings."""
    return conn.run(key_export_argv(conn.repo, path, **conn.argv_kwargs())).warnings


def set_repo_config(conn: BorgRepo, key: str, value=None, delete=False) -> list:
    """``borg config REPO KEY VALUE`` or ``--delete`` (local repositories only: borg refuses remote ones)."""
    return conn.run(config_argv(conn.repo, key, value, delete=delete, **conn.argv_kwargs())).warnings


# --------------------------------------------------------------------------
# restore planning (what extract would write, and whether it is there already)


RESTORE_FIELDS = ("type", "size", "mtime", "linktarget")


def restore_entry(item: dict, strip_components=0) -> dict | None:
    """What a restore needs of one archive item (``None``: stripped away): small, so that
    the plan of an archive of millions of files fits in memory."""
    target = strip_path(item.get("path", ""), strip_components)
    if not target:
        return None
    entry = {"target": target}
    for key in RESTORE_FIELDS:
        if item.get(key) not in (None, ""):
            entry[key] = item[key]
    return entry


def restored_totals(dest: str) -> dict:
    """Files (every entry that is not a directory) and bytes (regular files) under ``dest``,
    counted on disk after a restore into an empty directory."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            files += 1
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
    return {"files": files, "bytes": size}


def restore_totals(plan) -> dict:
    """Files (everything that is not a directory) and bytes (regular files) a restore writes."""
    files = [i for i in plan if i.get("type") != "d"]
    return {
        "files": len(files),
        "bytes": sum(int(i.get("size") or 0) for i in files if i.get("type") == "-"),
        "entries": len(plan),
    }


def _mtime_seconds(text: str | None) -> float | None:
    """Seconds since the epoch of borg's ISO mtime (local time, microseconds)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    except ValueError:
        try:
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
        except ValueError:
            return None


def restore_differences(plan, dest: str, limit: int = 20) -> list:
    """Targets under ``dest`` that do not match the archive (type, size, mtime, link).

    Empty means a restore would change nothing that borg list can tell about
    (content is compared by size and mtime, as rsync does by default).
    """
    different = []
    for item in plan:
        path = os.path.join(dest, item["target"])
        kind = item.get("type")
        try:
            st = os.lstat(path)
        except OSError:
            different.append(item["target"])
        else:
            if kind == "d":
                same = stat.S_ISDIR(st.st_mode)
            elif kind == "l":
                same = stat.S_ISLNK(st.st_mode) and os.readlink(path) == item.get("linktarget")
            elif kind == "-":
                mtime = _mtime_seconds(item.get("mtime"))
                same = (
                    stat.S_ISREG(st.st_mode)
                    and st.st_size == int(item.get("size") or 0)
                    and (mtime is None or abs(st.st_mtime - mtime) < 0.001)
                )
            else:
                same = True
            if not same:
                different.append(item["target"])
        if len(different) >= limit:
            break
    return different
