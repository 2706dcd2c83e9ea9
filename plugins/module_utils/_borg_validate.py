# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Borg input validators: retention, sizes, restore paths, repository locations, names.

layer 2: may import _borg_failures.

No borg needed: run them before touching anything, so that a typo fails before a
repository is read or written.
"""

from __future__ import annotations

import os
import posixpath
import re

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
