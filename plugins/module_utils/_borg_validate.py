# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Borg input validators: retention, sizes, restore paths, repository locations, names, counts,
compression, files cache modes, archive timestamps.

layer 2: may import _borg_failures.

No borg needed: run them before touching anything, so that a typo fails before a
repository is read or written.
"""

from __future__ import annotations

import os
import posixpath
import re
from datetime import datetime, timedelta, timezone

from ._borg_failures import BorgError

MIN_STORAGE_QUOTA = 10 * 1000**2


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


_SSH_URL_RE = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]/]+\]|[^:/]+)(?::(?P<port>[0-9]+))?/")
_SCP_RE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+):")


def ssh_target(repo: str):
    """``(user_at_host, port)`` that borg hands to ssh for a remote repository; ``None`` for a local one."""
    match = _SSH_URL_RE.match(repo) if repo.startswith("ssh://") else (_SCP_RE.match(repo) if is_remote(repo) else None)
    if not match:
        return None
    host = match.group("host").strip("[]")
    user = match.group("user")
    port = match.groupdict().get("port")
    return (f"{user}@{host}" if user else host), (int(port) if port else None)


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
            if not match:
                raise BorgError(
                    f"malformed retention keep_within={value!r}: expected a positive number and one of "
                    "H (hours), d (days), w (weeks), m (months), y (years), e.g. 14d or 48H",
                    cause="invalid_input",
                )
            if int(match.group("number")) == 0:
                raise BorgError(
                    f"retention keep_within={value!r} is a zero interval: it keeps no archive by time and would let "
                    "a prune delete every archive it matches; give a positive interval such as 14d",
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


def check_restore_dest(dest: str) -> str:
    """The absolute restore target, after refusing the dangerous ones: ``/`` and a file.

    Returns the normalised path. Whether a non-empty directory may be restored into is decided
    later, against what the archive holds (``_restore``).
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


# ---- the common options and borg create's options, checked before borg runs


# Seconds a new archive's --timestamp may lie ahead of this host's clock: the same tolerance
# as the prune's clock guard (_prune.DEFAULT_CLOCK_TOLERANCE; a unit test keeps them equal).
TIMESTAMP_TOLERANCE = 300


# borg's --timestamp formats (borg.helpers.time.timestamp), UTC.
_TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S+00:00",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y-%j",
)


# borg's compression specifiers (borg help compression) and their level ranges; None: no level.
_COMPRESSION_LEVELS = {"none": None, "lz4": None, "zstd": (1, 22), "zlib": (0, 9), "lzma": (0, 9)}


# borg's --files-cache words and the combinations it accepts (helpers.parseformat.FilesCacheMode).
_FILES_CACHE_WORDS = ("ctime", "mtime", "size", "inode", "rechunk", "disabled")
_FILES_CACHE_MODES = (
    {"ctime", "size", "inode"},
    {"mtime", "size", "inode"},
    {"ctime", "size"},
    {"mtime", "size"},
    {"rechunk", "ctime"},
    {"rechunk", "mtime"},
    {"disabled"},
    {"size"},
)


def validate_repo(repo) -> str:
    """The repository location; an empty one is refused (borg would fall back to BORG_REPO)."""
    text = "" if repo is None else str(repo)
    if not text.strip():
        raise BorgError(
            "repo is empty: give the repository location (a path, ssh://user@host/path or user@host:path); "
            "an empty one is never replaced by an inherited BORG_REPO",
            cause="invalid_input",
        )
    return text


def validate_count(option: str, value, what: str = "0 or more") -> int | None:
    """A whole number >= 0 (``None`` stays ``None``): lock_wait, max_files, clock_tolerance..."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            value = None
        if value is None:
            raise BorgError(f"{option} must be a whole number, {what}", cause="invalid_input") from None
    if value < 0:
        raise BorgError(f"{option}={value} is negative: it must be {what}", cause="invalid_input")
    return value


def validate_common(params: dict) -> None:
    """The connection options every borg call shares (repo, lock_wait), before borg runs."""
    validate_repo(params.get("repo"))
    validate_count("lock_wait", params.get("lock_wait"), "0 or more seconds")


def _compression_base(parts: list, spec: str) -> None:
    name, levels = parts[0], _COMPRESSION_LEVELS.get(parts[0], False)
    if levels is False:
        raise BorgError(
            f"invalid compression {spec!r}: unknown algorithm {name!r}; borg knows none, lz4, zstd[,1-22], "
            "zlib[,0-9], lzma[,0-9], auto,<spec> and obfuscate,<1-6|110-123>,<spec>",
            cause="invalid_input",
        )
    if len(parts) == 1:
        return
    if levels is None or len(parts) > 2:
        raise BorgError(f"invalid compression {spec!r}: {name} takes no such level", cause="invalid_input")
    low, high = levels
    if not parts[1].isdigit() or not low <= int(parts[1]) <= high:
        raise BorgError(
            f"invalid compression {spec!r}: the {name} level must be a whole number from {low} to {high}",
            cause="invalid_input",
        )


def validate_compression(spec) -> str:
    """A borg compression specifier (``borg help compression``), checked before borg runs."""
    text = "" if spec is None else str(spec)
    parts = text.split(",")
    rest = parts
    if parts[0] == "obfuscate":
        level = parts[1] if len(parts) > 1 else ""
        if not level.isdigit() or not (1 <= int(level) <= 6 or 110 <= int(level) <= 123):
            raise BorgError(
                f"invalid compression {text!r}: obfuscate needs a level from 1 to 6 or 110 to 123, then a "
                "compression (e.g. obfuscate,3,zstd,3)",
                cause="invalid_input",
            )
        rest = parts[2:]
    if rest[:1] == ["auto"]:
        rest = rest[1:]
    if not rest or not rest[0]:
        raise BorgError(
            f"invalid compression {text!r}: expected none, lz4, zstd[,1-22], zlib[,0-9], lzma[,0-9], "
            "auto,<spec> or obfuscate,<1-6|110-123>,<spec>",
            cause="invalid_input",
        )
    _compression_base(rest, text)
    return text


def validate_files_cache(mode) -> str | None:
    """A borg --files-cache mode (``borg create --help``); ``None`` leaves borg's default."""
    if mode is None:
        return None
    text = str(mode)
    words = set(text.split(","))
    if not words.issubset(_FILES_CACHE_WORDS) or words not in _FILES_CACHE_MODES:
        raise BorgError(
            f"invalid files_cache {text!r}: borg accepts ctime,size,inode (its default), mtime,size,inode, "
            "ctime,size, mtime,size, rechunk,ctime, rechunk,mtime, size or disabled",
            cause="invalid_input",
        )
    return text


def parse_timestamp(value: str) -> datetime | None:
    """A --timestamp as borg reads it (UTC), ``None`` when borg could not read it either."""
    for fmt in _TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)  # noqa: UP017
        except ValueError:
            continue
    return None


def validate_timestamp(value, now: datetime | None = None, tolerance_seconds: int = TIMESTAMP_TOLERANCE):
    """A new archive's --timestamp: a UTC time or a reference file (its mtime), not in the future.

    An archive dated ahead of the clock stops every later prune: the prune's clock guard takes
    the newest archive in the future for a clock that went backwards.
    """
    if value is None:
        return None
    text = str(value)
    now = now or datetime.now(timezone.utc)  # noqa: UP017
    try:
        when = datetime.fromtimestamp(os.stat(text).st_mtime, tz=timezone.utc)  # noqa: UP017
        source = f"the modification time of {text}"
    except OSError:
        when = parse_timestamp(text)
        source = text
        if when is None:
            raise BorgError(
                f"invalid timestamp {text!r}: expected UTC as yyyy-mm-ddThh:mm:ss, or an existing file whose "
                "modification time to use",
                cause="invalid_input",
            ) from None
    if when > now + timedelta(seconds=tolerance_seconds):
        raise BorgError(
            f"timestamp {text!r} lies in the future ({source}: {when.isoformat()}, this host's clock says "
            f"{now.isoformat()}, tolerance {tolerance_seconds} s): an archive dated ahead of the clock would stop "
            "every later prune (clock guard); refusing",
            cause="invalid_input",
        )
    return text
