"""The systemd units the roles template: every directive on a line of its own.

Ansible renders templates with ``trim_blocks``: a ``{% include %}`` at the end of a line eats that line's
newline, and Jinja drops the included file's last newline, so the next line was glued onto the include's
last directive (``UMask=0077# The backup reads ...``: systemd ignored the UMask, found by Molecule on
Debian 12's systemd, which logs it). systemd has no comments after a value, so a ``#`` on a directive line
is always such a join.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted(
    p for pattern in ("*.service.j2", "*.timer.j2", "*.mount.j2") for p in ROOT.glob(f"roles/*/templates/{pattern}")
)


class _AnyFilter(dict):
    """Ansible's filters are not plain Jinja's: here each one passes its value through."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        return lambda value, *args, **kwargs: value

    def get(self, name, default=None):
        return self[name]


def render(path: Path) -> str:
    env = jinja2.Environment(  # noqa: S701 - unit files, not HTML
        loader=jinja2.FileSystemLoader(str(path.parent)),
        trim_blocks=True,
        undefined=jinja2.ChainableUndefined,
    )
    env.filters = _AnyFilter(env.filters)
    env.tests = _AnyFilter(env.tests)
    return env.get_template(path.name).render()


def test_there_are_units_to_check():
    assert len(UNITS) >= 8, UNITS


@pytest.mark.parametrize("path", UNITS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_directive_is_on_a_line_of_its_own(path):
    text = render(path)
    glued = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";")) and "#" in line]
    assert glued == [], f"{path}: a directive joined with the next line: {glued}"
    assert re.search(r"^\[(Unit|Service|Timer|Mount|Install)\]$", text, re.M), text


def test_the_key_holders_borg_units_get_the_shared_sandbox():
    for name in ("grus-backup", "grus-backup-check", "grus-backup-verify", "grus-backup-drill"):
        text = render(ROOT / "roles" / "key_holder" / "templates" / f"{name}.service.j2")
        assert re.search(r"^UMask=0077$", text, re.M), f"{name}: {text}"
        assert re.search(r"^ProtectSystem=strict$", text, re.M), f"{name}: {text}"


def test_only_the_drill_unit_may_restore_owners_and_setuid_bits():
    """The drill restores owners and modes into its scratch directory (issue 22); the other borg units may not.

    systemd applies SystemCallFilter= lists and a later RestrictSUIDSGID= in order: the allow entry and the
    ``no`` must come after the shared sandbox's ``~@privileged`` and ``yes``, or they change nothing.
    """
    for name in ("grus-backup", "grus-backup-check", "grus-backup-verify", "grus-backup-drill"):
        lines = render(ROOT / "roles" / "key_holder" / "templates" / f"{name}.service.j2").splitlines()
        filters = [line for line in lines if line.startswith("SystemCallFilter=")]
        suid = [line for line in lines if line.startswith("RestrictSUIDSGID=")]
        caps = [line for line in lines if line.startswith("CapabilityBoundingSet=")]
        if name == "grus-backup-drill":
            assert filters == [
                "SystemCallFilter=@system-service",
                "SystemCallFilter=~@privileged @resources",
                "SystemCallFilter=@chown",
            ], filters
            assert suid == ["RestrictSUIDSGID=yes", "RestrictSUIDSGID=no"], suid
            assert set(caps[-1].split("=", 1)[1].split()) == {
                "CAP_DAC_OVERRIDE",
                "CAP_CHOWN",
                "CAP_FOWNER",
                "CAP_FSETID",
            }, caps
        else:
            assert "SystemCallFilter=@chown" not in filters and suid == ["RestrictSUIDSGID=yes"], (name, lines)
