# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading borg's output: ``--log-json`` lines, ``--json`` documents, prune lines, archive times.

layer 2: may import _borg_failures.

Pure functions of text; also the few shapers that turn what borg printed into what
results carry (``summarize_archive``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from ._borg_failures import BorgError


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


def parse_archive_time(text: str | None) -> datetime | None:
    """Borg's archive or item time (local time, naive ISO, optional microseconds) as an aware datetime.

    The one reader of borg's times: the prune guard's clock check and the restore comparison use it.
    """
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, layout).astimezone()
        except ValueError:
            continue
    return None


def config_append_only(config: dict | None) -> bool | None:
    """The ``append_only`` flag of a repository's ``[repository]`` config section (``None``: unknown).

    Borg writes ``0`` or ``1``; a hand-edited config may say ``true``.
    """
    if config is None:
        return None
    return config.get("append_only", "0").strip() in ("1", "true", "True")


DIFF_LINES = 1000


def diff_text(lines) -> str:
    """One side of a module's diff: a line per entry, at most ``DIFF_LINES`` and a count of the rest."""
    lines = list(lines)
    shown = lines[:DIFF_LINES]
    if len(lines) > DIFF_LINES:
        shown.append(f"... and {len(lines) - DIFF_LINES} more")
    return "".join(f"{line}\n" for line in shown)
