# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore planning: what ``borg extract`` would write, whether it is there already, and totals.

layer 6: may import _borg_failures, _borg_validate, _borg_parse, _borg_repo.

Used by the modules only (the scheduled job restores only in its drill, ``_restore_drill``, and does
not ship this file).
"""

from __future__ import annotations

import contextlib
import os
import stat

from ._borg_failures import BorgError
from ._borg_parse import diff_text, parse_archive_time
from ._borg_repo import BorgRepo, archive_items, extract, require_archive
from ._borg_validate import strip_path

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
                mtime = parse_archive_time(item.get("mtime"))
                same = (
                    stat.S_ISREG(st.st_mode)
                    and st.st_size == int(item.get("size") or 0)
                    and (mtime is None or abs(st.st_mtime - mtime.timestamp()) < 0.001)
                )
            else:
                same = True
            if not same:
                different.append(item["target"])
        if len(different) >= limit:
            break
    return different


def nothing_matched(conn: BorgRepo, name, paths, strip) -> BorgError:
    return conn.refuse(
        f"nothing to restore from {conn.repo}::{name}: paths {paths} (strip_components={strip}) match no item",
        "nothing_matched",
    )


def restore_archive(conn: BorgRepo, request: dict, check_mode: bool, diff: bool) -> dict:
    """state=extracted: restore ``request["name"]`` (``paths``, ``strip``) into ``request["dest"]``.

    Into an empty directory (outside check and diff mode) borg extract runs alone. Otherwise the
    archive's items are read first: a ``dest`` that holds them already is unchanged, one that
    differs is refused without ``force``, and after the restore what differs still is a warning.
    """
    name, paths, strip, dest = request["name"], request["paths"], request["strip"], request["dest"]
    result = {"changed": False, "warnings": [], "restore_dir": dest}
    occupied = os.path.isdir(dest) and bool(os.listdir(dest))
    if not occupied and not check_mode and not diff:
        return restore_into_empty(conn, request, result)
    result["archive"] = require_archive(conn, name)
    plan = archive_items(conn, name, paths, keep=lambda item: restore_entry(item, strip))
    if not plan:
        raise nothing_matched(conn, name, paths, strip)
    totals = restore_totals(plan)
    result.update(files_restored=totals["files"], bytes_restored=totals["bytes"])
    if occupied and not restore_differences(plan, dest, limit=1):
        result.update(files_restored=0, bytes_restored=0)
        return result
    if occupied and not request["force"]:
        raise conn.refuse(
            f"dest {dest} is not empty and differs from {conn.repo}::{name}; refusing to restore over it "
            "(use an empty directory, or force=true to overwrite)",
            "dest_not_empty",
        )
    result["changed"] = True
    if diff:
        result["diff"] = {
            "before": "",
            "after": diff_text(i["target"] for i in plan),
            "after_header": f"{dest} (restored from {conn.repo}::{name})",
        }
    if check_mode:
        # Reads every chunk: proves the archive can be restored, writes nothing.
        result["warnings"] += extract(conn, name, dest if os.path.isdir(dest) else "/", paths, strip, dry_run=True)
        return result
    os.makedirs(dest, mode=0o700, exist_ok=True)
    result["warnings"] += extract(conn, name, dest, paths, strip)
    left = restore_differences(plan, dest)
    if left:
        result["warnings"].append(f"after the restore into {dest} these differ from the archive: {', '.join(left)}")
    return result


def restore_into_empty(conn: BorgRepo, request: dict, result: dict) -> dict:
    """The plain restore into an empty (or new) directory: one borg call, as fast as borg extract.

    Nothing to compare against, so the repository is not listed first; an unknown archive or paths
    that match nothing fail with borg's own answer, and a directory this call made is removed again.
    Borg checks every chunk it restores (id hash and MAC); the totals are counted on disk.
    """
    name, paths, strip, dest = request["name"], request["paths"], request["strip"], request["dest"]
    made = not os.path.isdir(dest)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    try:
        warnings = extract(conn, name, dest, paths, strip)
        totals = restored_totals(dest)
        if not totals["files"] and not os.listdir(dest):
            raise nothing_matched(conn, name, paths, strip)
    except BorgError:
        if made and not os.listdir(dest):
            os.rmdir(dest)
        raise
    result["warnings"] += warnings
    result.update(changed=True, archive={"name": name}, files_restored=totals["files"], bytes_restored=totals["bytes"])
    return result
