# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one guarded prune, used by the ``borg_archive`` module (state=pruned) and the scheduled job.

layer 6: may import _borg_failures, _borg_parse, _borg_repo.

Plan, guard, delete exactly the plan, verify:

1. ``borg prune --dry-run --list`` plans, and names every matching archive with its time.
2. Guards, before anything is deleted: the newest archive must not lie in the future (this
   host's clock went backwards, so the ``--keep-within`` window would slide), and the plan
   must not delete more than ``max_deletions`` archives (a clock that jumped forward, a typo
   in the retention). ``match_archives`` limits both the plan and the deletion to one source.
3. ``borg delete`` of exactly the planned names, in one transaction: a second ``borg prune``
   would apply the retention again, and an archive that crossed its boundary in between
   would go too.
4. A listing afterwards proves the planned archives are gone.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ._borg_failures import BorgError
from ._borg_parse import parse_archive_time
from ._borg_repo import BorgRepo, delete_planned, list_archives, prune

DEFAULT_MAX_DELETIONS = 12  # two days of six runs: more in one run is not a normal 14-day retention
DEFAULT_CLOCK_TOLERANCE = 300  # seconds an archive may lie in the future (clocks of two hosts, NTP)


def check_clock(archives, now: datetime, tolerance_seconds: int) -> None:
    """Refuse when the newest archive lies in the future: this host's clock went backwards."""
    times = [t for t in (parse_archive_time(a.get("time")) for a in archives) if t is not None]
    if not times:
        return
    newest = max(times)
    if newest > now + timedelta(seconds=tolerance_seconds):
        raise BorgError(
            f"refusing to prune: the newest archive ({newest.isoformat()}) is later than this "
            f"host's clock ({now.isoformat()}); fix the clock (NTP) first",
            cause="clock",
        )


def check_max_deletions(plan: dict, max_deletions: int) -> None:
    """Refuse a plan that deletes more archives than one run plausibly may."""
    doomed = plan["pruned"]
    if len(doomed) <= max_deletions:
        return
    names = ", ".join(str(a["name"]) for a in doomed[:10]) + (", ..." if len(doomed) > 10 else "")
    raise BorgError(
        f"refusing to prune: the retention would delete {len(doomed)} archives, more than "
        f"max_deletions={max_deletions} ({names}); nothing was deleted. A clock that jumped forward or a "
        "changed retention? Check, then prune with a higher max_deletions",
        cause="max_deletions",
    )


def verify_pruned(conn: BorgRepo, plan: dict, match_archives=None) -> None:
    """Fail when a planned archive is still listed after the delete."""
    remaining = {a["id"] for a in list_archives(conn, match_archives=match_archives)}
    still = [a["name"] for a in plan["pruned"] if a["id"] in remaining]
    if still:
        raise conn.refuse(f"archives still listed in {conn.repo} after prune: {', '.join(still)}", "prune_failed")


def guarded_prune(
    conn: BorgRepo,
    retention: dict,
    *,
    match_archives=None,
    max_deletions: int = DEFAULT_MAX_DELETIONS,
    clock_tolerance: int = DEFAULT_CLOCK_TOLERANCE,
    now: datetime | None = None,
    dry_run: bool = False,
    archives=(),
) -> dict:
    """Plan, guard, delete exactly the plan, verify (see the module docstring).

    Returns the plan: ``{"pruned": [...], "kept": [...], "warnings": [...]}``. With ``dry_run``
    nothing is deleted (the guards still run). ``archives`` (from ``list_archives``) supplies the
    archives' full times for the result; by default names and times come from borg's prune lines,
    so a run with nothing due costs one borg call. A refusal raises ``BorgError`` with cause
    ``clock`` or ``max_deletions`` before anything is deleted.
    """
    if max_deletions is None or max_deletions < 0:
        raise conn.refuse("max_deletions must be 0 or more", "invalid_input")
    now = now or datetime.now(timezone.utc)  # noqa: UP017 - targets may run Python < 3.11
    plan = prune(conn, retention, match_archives=match_archives, dry_run=True, archives=archives)
    check_clock(plan["pruned"] + plan["kept"], now, clock_tolerance)
    check_max_deletions(plan, max_deletions)
    if dry_run or not plan["pruned"]:
        return plan
    plan["warnings"] += delete_planned(conn, plan)
    verify_pruned(conn, plan, match_archives)
    return plan
