# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The borg modules' common options: the argument-spec half (the doc half is the
``grus.backup.borg`` doc fragment; a unit test keeps the two in step).

layer 4: may import _borg_argv.

Used by the modules only.
"""

from __future__ import annotations

import copy

from ._borg_argv import DEFAULT_LOCK_WAIT

BORG_COMMON_ARGUMENT_SPEC = {
    "repo": {"type": "str", "required": True},
    "passphrase": {"type": "str", "no_log": True},
    "passcommand": {"type": "str", "no_log": False},
    "rsh": {"type": "str"},
    "remote_path": {"type": "str"},
    "lock_wait": {"type": "int", "default": DEFAULT_LOCK_WAIT},
    "host_id": {"type": "str"},
    "keys_dir": {"type": "path"},
    "base_dir": {"type": "path"},
}


BORG_COMMON_MUTUALLY_EXCLUSIVE = [("passphrase", "passcommand")]


def borg_argument_spec(**options) -> dict:
    """A borg module's argument spec: the common options plus its own ``options``."""
    spec = copy.deepcopy(BORG_COMMON_ARGUMENT_SPEC)
    spec.update(options)
    return spec
