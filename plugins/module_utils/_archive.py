# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The states of the ``borg_archive`` module: present, absent, extracted, pruned, listed.

layer 7: may import _borg_failures, _borg_validate, _borg_parse, _borg_version, _borg_repo, _prune, _restore.
Used by the module only (the scheduled job does not ship it).

Each state is two steps: an input check that runs before borg does (a typo never reaches a
repository), then the state itself, read -> decide -> act (never in check mode) -> re-read,
filling one result that ``run_state`` starts.
"""

from __future__ import annotations

import os

from ._borg_failures import BorgError
from ._borg_parse import diff_text
from ._borg_repo import (
    BorgRepo,
    archive_items,
    archive_named,
    create_archive,
    delete_archive,
    list_archives,
    repo_append_only,
    require_archive,
)
from ._borg_validate import (
    RETENTION_KEYS,
    check_restore_dest,
    has_placeholder,
    validate_compression,
    validate_count,
    validate_files_cache,
    validate_restore_paths,
    validate_retention,
    validate_timestamp,
)
from ._borg_version import cached_borg_version
from ._prune import guarded_prune
from ._restore import restore_archive

FILE_FIELDS = ("path", "type", "mode", "user", "group", "size", "mtime", "linktarget")


def append_only_warning(conn: BorgRepo, what: str) -> tuple[bool | None, str]:
    flag = repo_append_only(conn)
    if flag:
        return flag, (
            f"repository {conn.repo} is append-only: the {what} is only logical; the data stays in the "
            "repository (and can be recovered) until the repository host runs borg compact"
        )
    if flag is None:
        return flag, (
            f"if the repository host serves {conn.repo} append-only (borg serve --append-only), the {what} is "
            "only logical until the repository host runs borg compact"
        )
    return flag, ""


def literal_name(conn: BorgRepo, params: dict) -> str:
    name = checked_name(conn, params)
    if has_placeholder(name):
        raise conn.refuse(
            f"state={params['state']} needs a literal archive name, not a placeholder: {name}", "invalid_input"
        )
    return name


# ---------------------------------------------------------------------------- input checks (before borg runs)


# The explicit opt-in for a prune across every archive of the repository (every job's prefix).
MATCH_ALL_ARCHIVES = "*"


def checked_name(conn, params) -> str | None:
    """The archive name; an empty one is refused (borg would read ``REPO::`` as the repository)."""
    name = params.get("name")
    if name is not None and not str(name).strip():
        raise conn.refuse(
            f"name is empty: give an archive name (state={params['state']})"
            + ("; leave name out to list the archives" if params["state"] == "listed" else ""),
            "invalid_input",
        )
    return name


def check_present(conn, params) -> dict:
    checked_name(conn, params)
    try:
        validate_compression(params["compression"])
        validate_files_cache(params["files_cache"])
        validate_timestamp(params["timestamp"])
    except BorgError as exc:
        raise conn.refuse(exc.message, exc.cause) from exc
    paths = list(params["paths"])
    if not paths:
        raise conn.refuse(f"state=present needs paths to archive into {conn.repo}", "invalid_input")
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise conn.refuse(
            f"source path(s) missing, nothing written to repository {conn.repo}: {', '.join(missing)}",
            "source_missing",
        )
    return {"name": params["name"], "paths": paths}


def check_absent(conn, params) -> dict:
    return {"name": literal_name(conn, params)}


def check_extracted(conn, params) -> dict:
    name = literal_name(conn, params)
    paths = validate_restore_paths(params["paths"])
    if params["strip_components"] < 0:
        raise conn.refuse("strip_components must be 0 or more", "invalid_input")
    dest = check_restore_dest(params["dest"])
    return {"name": name, "paths": paths, "strip": params["strip_components"], "dest": dest, "force": params["force"]}


def check_pruned(conn, params) -> dict:
    retention = validate_retention({key: params[key] for key in RETENTION_KEYS if key in params})
    if params["max_deletions"] is None or params["max_deletions"] < 0:
        raise conn.refuse("max_deletions must be 0 or more", "invalid_input")
    if not (params.get("match_archives") or "").strip():
        raise conn.refuse(
            "state=pruned needs match_archives: without it the retention would apply to the archives of "
            "every job in the repository (every prefix) together; give this job's prefix (e.g. antigone-), "
            f"or match_archives='{MATCH_ALL_ARCHIVES}' to prune every archive on purpose",
            "invalid_input",
        )
    return {"retention": retention}


def check_listed(conn, params) -> dict:
    name = checked_name(conn, params)
    try:
        validate_count("max_files", params["max_files"], "0 (all) or more")
    except BorgError as exc:
        raise conn.refuse(exc.message, exc.cause) from exc
    return {"paths": validate_restore_paths(params["paths"]) if name else []}


# ---------------------------------------------------------------------------- states


def state_present(conn, params, checked, result, check_mode, diff):
    name, paths = checked["name"], checked["paths"]
    options = {
        key: params[key]
        for key in ("exclude", "exclude_if_present", "one_file_system", "compression", "files_cache", "comment")
    }
    options["timestamp"] = params["timestamp"]
    # Apply mode does not list the repository first: borg refuses an existing name before it
    # reads a single file (Archive.AlreadyExists), and one borg start-up less is what keeps a
    # module call as fast as borg itself (bench/).
    if check_mode and not has_placeholder(name):
        existing = archive_named(conn, name)
        if existing:
            result["archive"] = existing
            return
    result["changed"] = True
    if check_mode:
        result["archive"] = None
        if diff:
            planned = create_archive(conn, name, paths, dry_run=True, list_files=True, **options)
            result["warnings"] += planned["warnings"]
            after = diff_text(path for _status, path in planned["files"])
            result["diff"] = {"before": "", "after": after, "after_header": f"{conn.repo}::{name} (would archive)"}
        return
    try:
        created = create_archive(conn, name, paths, list_files=diff, list_filter="AME" if diff else None, **options)
    except BorgError as exc:
        if exc.cause != "archive_exists" or has_placeholder(name):
            raise
        result.update(changed=False, archive=archive_named(conn, name))
        return
    result["archive"] = created["archive"]
    result["warnings"] += created["warnings"]
    if diff:
        result["diff"] = {
            "before": "",
            "after": diff_text(f"{s} {p}" for s, p in created["files"]),
            "after_header": f"{conn.repo}::{created['archive']['name']} (added/modified)",
        }


def state_absent(conn, params, checked, result, check_mode, diff):
    name = checked["name"]
    existing = result["archive"] = archive_named(conn, name)
    result["append_only"], warning = append_only_warning(conn, "delete")
    if not existing:
        return
    result["changed"] = True
    if diff:
        result["diff"] = {"before": f"{name}\n", "after": "", "before_header": f"{conn.repo} archives"}
    if check_mode:
        return
    result["warnings"] += delete_archive(conn, name)
    if archive_named(conn, name):
        raise conn.refuse(
            f"archive {name} is still listed in repository {conn.repo} after borg delete", "delete_failed"
        )
    if warning:
        result["warnings"].append(warning)


def state_extracted(conn, params, checked, result, check_mode, diff):
    result.update(restore_archive(conn, checked, check_mode, diff))


def state_pruned(conn, params, checked, result, check_mode, diff):
    match = params["match_archives"]
    # The listing gives the result full archive times, and the diff its "before".
    archives = list_archives(conn, match_archives=match)
    plan = guarded_prune(
        conn,
        checked["retention"],
        match_archives=match,
        max_deletions=params["max_deletions"],
        dry_run=check_mode,
        archives=archives,
    )
    result["warnings"] += plan["warnings"]
    result.update(pruned=plan["pruned"], kept=plan["kept"], changed=bool(plan["pruned"]))
    result["append_only"], warning = append_only_warning(conn, "prune")
    if diff:
        doomed = {p["id"] for p in plan["pruned"]}
        result["diff"] = {
            "before": diff_text(a["name"] for a in archives),
            "after": diff_text(a["name"] for a in archives if a["id"] not in doomed),
            "before_header": f"{conn.repo} archives",
            "after_header": f"{conn.repo} archives",
        }
    if plan["pruned"] and not check_mode and warning:
        result["warnings"].append(warning)


def state_listed(conn, params, checked, result, check_mode, diff):
    name = params["name"]
    if not name:
        result["archives"] = list_archives(conn, match_archives=params["match_archives"])
        return
    archive = require_archive(conn, name)
    limit = params["max_files"]
    total = [0]

    def keep(item):
        total[0] += 1
        if limit and 0 < limit < total[0]:
            return None
        return {k: item.get(k) for k in FILE_FIELDS}

    shown = archive_items(conn, name, checked["paths"], keep=keep)
    result.update(archive=archive, files=shown, files_total=total[0], files_truncated=len(shown) < total[0])


# state: (input check, before borg runs; the state itself)
STATES = {
    "present": (check_present, state_present),
    "absent": (check_absent, state_absent),
    "extracted": (check_extracted, state_extracted),
    "pruned": (check_pruned, state_pruned),
    "listed": (check_listed, state_listed),
}


def run_state(conn: BorgRepo, params: dict, check_mode: bool, diff: bool) -> dict:
    """Check the inputs (no borg yet), check borg's version, then run the state."""
    check, state = STATES[params["state"]]
    checked = check(conn, params)
    result = {"borg_version": cached_borg_version(conn.borg), "changed": False, "warnings": []}
    state(conn, params, checked, result, check_mode, diff)
    return result
