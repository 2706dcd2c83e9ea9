# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The borg version gate (>= 1.4.0, not 2.x), remembered per binary on disk.

layer 4: may import _runner, _borg_failures, _borg_argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile

from ._borg_argv import borg_env
from ._borg_failures import BorgError
from ._runner import CommandNotFound, run

# The oldest borg the tests run: Debian 13, and bookworm-backports on Debian 12 (fixes CVE-2023-36811).
MIN_BORG_VERSION = (1, 4, 0)


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
            f"borg {shown} is too old: grus.backup needs borg >= 1.4.0, the oldest it is tested with "
            "(it fixes CVE-2023-36811); on Debian bookworm install borgbackup from bookworm-backports",
            cause="unsupported_version",
        )
    if version[0] >= 2:
        raise BorgError(
            f"borg {shown} is not supported: grus.backup drives borg 1.x (>= 1.4.0)", cause="unsupported_version"
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

    The check (>= 1.4.0, not 2.x) runs on every call, cached or not. A cache that
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
