# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shrink guard: hold the prune when the newest archive looks like destruction.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup, no borg; the backup job uses it. Why: the retention prunes by age. A
volume wiped by an intruder (``rsync --delete`` of an empty tree from a compromised sync client)
or encrypted in place by ransomware is archived like any other state, and fourteen days later the
prune would have removed every archive that still held the good data. So each run compares the
volumes it archives with the previous run's, and the archive's new data with its size; a sign of
destruction still gets its archive (more evidence, never less) but sets a hold that stops every
later prune until an operator has looked and released it. Nothing is deleted while the hold stands.

A volume is a directory two levels below a backed-up path (``<export>/<client>/<volume>``, the
layout the sync clients write), the excluded ones left out. The signs:

* a volume that was there last time is gone;
* a volume lost more than ``shrink_share`` of its files or of its bytes;
* most of the archive is new data (``rewrite_share`` of its size, deduplicated and compressed,
  after taking out the volumes seen for the first time): a mass rewrite, as encryption does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
import time

DEFAULT_SHRINK_SHARE = 0.5
DEFAULT_REWRITE_SHARE = 0.5
# Below this much data (bytes of the volumes seen before), a "mostly new" archive says nothing.
REWRITE_FLOOR_BYTES = 16 * 1024 * 1024
VOLUMES_FILE = "volumes.json"
HOLD_FILE = "prune-hold.json"
STATE_FORMAT = 1


def excluded(path: str, patterns) -> bool:
    """Whether borg's ``sh:`` (or ``fm:``) exclude patterns of the job leave ``path`` out."""
    for pattern in patterns:
        glob = pattern.split(":", 1)[1] if pattern[:3] in ("sh:", "fm:") else pattern
        if fnmatch.fnmatchcase(path, glob.rstrip("/")):
            return True
    return False


def _subdirs(path: str) -> list:
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _tally(path: str) -> dict:
    """Regular files and their bytes below ``path`` (symlinks not followed, like borg)."""
    files = size = 0
    pending = [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # vanished while walking (a live volume): counted as what was seen
    return {"files": files, "bytes": size}


def measure_volumes(paths, exclude=()) -> dict:
    """``{volume path: {"files": n, "bytes": n}}`` for every volume below ``paths``."""
    volumes = {}
    for top in paths:
        for client in _subdirs(top):
            for volume in _subdirs(client):
                if not excluded(volume, exclude):
                    volumes[volume] = _tally(volume)
    return volumes


def _lost_share(before: int, after: int) -> float:
    return (before - after) / before if before > 0 else 0.0


def shrink_signs(previous: dict, current: dict, share: float) -> list:
    """What vanished or shrank by more than ``share`` since the previous run, in words."""
    signs = []
    for volume, was in sorted(previous.items()):
        now = current.get(volume)
        if now is None:
            signs.append(f"volume {volume} vanished (it held {was['files']} files, {was['bytes']} bytes)")
            continue
        for what in ("files", "bytes"):
            lost = _lost_share(was[what], now[what])
            if lost > share:
                signs.append(
                    f"volume {volume} lost {lost:.0%} of its {what} ({was[what]} -> {now[what]}; limit {share:.0%})"
                )
    return signs


def rewrite_sign(previous: dict, current: dict, stats: dict, share: float) -> str | None:
    """A sign of a mass rewrite: most of the archive, volumes seen before only, is new data."""
    if not previous or not stats:
        return None  # the first run of the guard: everything is new
    first_seen = sum(v["bytes"] for name, v in current.items() if name not in previous)
    original = stats.get("original_size", 0) - first_seen
    new = stats.get("deduplicated_size", 0) - first_seen
    if original < REWRITE_FLOOR_BYTES:
        return None
    ratio = new / original
    if ratio <= share:
        return None
    return (
        f"{ratio:.0%} of the archive ({new} of {original} bytes, volumes seen before) is new data "
        f"(limit {share:.0%}): a mass rewrite, as ransomware encryption does?"
    )


# ---- state on disk --------------------------------------------------------------------------


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: str, data: dict) -> None:
    """Atomically (temp file, fsync, rename): a crash leaves the old state or the new one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def previous_volumes(state_dir: str) -> dict:
    data = _read_json(os.path.join(state_dir, VOLUMES_FILE)) or {}
    volumes = data.get("volumes")
    return volumes if isinstance(volumes, dict) else {}


def record_volumes(state_dir: str, archive: str, volumes: dict) -> None:
    _write_json(
        os.path.join(state_dir, VOLUMES_FILE),
        {"format": STATE_FORMAT, "archive": archive, "time": int(time.time()), "volumes": volumes},
    )


def read_hold(state_dir: str) -> dict | None:
    """The hold in force, or None. A hold file that cannot be read still holds."""
    path = os.path.join(state_dir, HOLD_FILE)
    if not os.path.lexists(path):
        return None
    return _read_json(path) or {"reasons": [f"{path} exists but cannot be read"]}


def set_hold(state_dir: str, archive: str, reasons) -> dict:
    """Add ``reasons`` to the hold (an existing one keeps its first archive and time)."""
    hold = read_hold(state_dir) or {"format": STATE_FORMAT, "since": int(time.time()), "archive": archive}
    hold["reasons"] = list(hold.get("reasons", [])) + [f"{archive}: {r}" for r in reasons]
    _write_json(os.path.join(state_dir, HOLD_FILE), hold)
    return hold


def release_hold(state_dir: str) -> bool:
    """Remove the hold; True if there was one."""
    try:
        os.unlink(os.path.join(state_dir, HOLD_FILE))
    except FileNotFoundError:
        return False
    return True
