# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Borg failures: the one table that maps exit codes and message ids to causes, and ``BorgError``.

layer 1: may import _runner.

Borg gives a message id with ``--log-json``, borg >= 1.4 also a specific exit code
(``BORG_EXIT_CODES=modern``); ``classify_failure`` turns either into a stable ``cause``
and a message that names the repository. Text is redacted once, when a ``BorgError``
is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._runner import redact


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
        "key_import_mismatch",
        "the key file to import is not a borg key export of repository {repo} (another repository's key, "
        "or not a key export at all); nothing was imported",
        msgids=("RepoIdMismatch", "NotABorgKeyFile"),
        rcs=(43, 45),
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
        # ssh's own words (borg forwards them as "Remote: ..."); before connection_closed, which
        # is how borg ends such a session too.
        "host_key_changed",
        "host key verification failed (possible man-in-the-middle, or the repository host was reinstalled) "
        "for repository {repo}: ssh refused the host's key because it does not match the one pinned in "
        "known_hosts (or none is pinned); nothing was sent. Verify the new key out of band before pinning it",
        texts=("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed"),
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


# ---- damaged data: what borg extract only "warns" about -------------------------------------------
#
# After `borg check --repair` a chunk that was lost is replaced by zeros of the same length (the item keeps
# `chunks_healthy`). `borg extract` (also --dry-run) then writes such a file and goes on, exit 1 (a warning):
# the restored file is NOT the file that was backed up. Measured and read in borg's sources:
# - borg 1.2.x: "<path>: File has damaged (all-zero) chunks. Try running borg check --repair." and
#   "<path>: Size inconsistency detected: size N, chunks size M" (no msgid, rc 1);
# - borg 1.4.0: the same condition logs "<path>: backup error" (its BackupError loses the detail), msgid
#   BackupError, modern rc 102;
# - later borg (borg PR #10357): BackupDamagedChunksError, modern rc 113, and corrupted chunks replaced by
#   zeros during the extract itself instead of an IntegrityError.
# Only a restore calls this: at extract time these ids and words mean the data is not what was archived.
DAMAGE_MSGIDS = ("BackupError", "BackupDamagedChunksError")
DAMAGE_RCS = (102, 113)
DAMAGE_TEXTS = (
    "damaged (all-zero) chunks",
    "all-zero replacement",
    "all-zero chunk",
    "damaged chunk",
    "size inconsistency detected",
    ": backup error",
)


def _damaged_path(message: str) -> str:
    """The item path at the start of a damage warning (``<path>: <what>``)."""
    lowered = message.lower()
    for text in DAMAGE_TEXTS:
        at = lowered.find(text)
        if at <= 0:
            continue
        prefix = message[:at]
        if text.startswith(": "):
            return prefix.strip()
        return (prefix.rsplit(": ", 1)[0] if ": " in prefix else prefix).strip()
    return message.rsplit(": ", 1)[0].strip() if ": " in message else message.strip()


def damaged_items(rc, logs) -> list:
    """The paths an extract reported as damaged (zeros where data was lost, a size that does not add up).

    Empty when borg said nothing of the kind. A modern damage exit code without a line naming a file
    still counts (``["?"]``): a restore must never pass on it.
    """
    found = []
    for entry in logs:
        if entry.get("type") not in ("log_message", "text"):
            continue
        message = str(entry.get("message") or "")
        if entry.get("type") == "log_message" and entry.get("levelname") not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        lowered = message.lower()
        if entry.get("msgid") in DAMAGE_MSGIDS or any(text in lowered for text in DAMAGE_TEXTS):
            path = _damaged_path(message)
            if path not in found:
                found.append(path)
    if not found and rc in DAMAGE_RCS:
        found.append("?")
    return found
