# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a scheduled job's JSON configuration into its dataclass.

layer 0: may import nothing of grus.backup (standard library only).

Shipped with both scheduled jobs.
"""

from __future__ import annotations

from dataclasses import fields


def dataclass_kwargs(cls, data: dict, required, what: str) -> dict:
    """The keyword arguments for the dataclass ``cls`` from ``data``; ``None`` means the default.

    Raises ``ValueError`` for keys ``cls`` does not know (a typo must not be ignored silently)
    and for ``required`` keys that are missing or empty; ``what`` names a key in the message
    (``configuration key``, ``sync option``).
    """
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what}(s): {', '.join(unknown)}")
    for name in required:
        if not data.get(name):
            raise ValueError(f"the {what} {name!r} is required")
    return {k: v for k, v in data.items() if v is not None}
