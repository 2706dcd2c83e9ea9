"""Every command the README shows is exercised somewhere in ``make test`` (issue 17 item 1).

Each command of the README's console blocks, and its YAML example, maps to the file of ``make test`` that runs
it and a line of that file that does. A command the README gains without a test that runs it fails here.
The example inventory and ``site.yml`` (the checkout's command) are run here, with ``--list-hosts``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# README command (its start) -> (file under ROOT that runs it in `make test`, a string of that file).
EXERCISED = {
    # The molecule gate runs `make demo` as one of its lanes (tests/testbed/molecule.sh).
    "make demo": ("Makefile", "$(filter full_bookworm,$(SCENARIOS)) demo"),
    "make test": (".ci/run", "make test"),
    # Galaxy is not reachable from the test machines: the same command installs the built tarball.
    "ansible-galaxy collection install grus.backup": ("Makefile", "ansible-galaxy collection install --offline"),
    "ansible-playbook -i inventories/production grus.backup.site": (
        "molecule/full/converge.yml",
        "import_playbook: grus.backup.site",
    ),
    "ansible-playbook -i inventories/example site.yml": ("tests/unit/test_readme_commands.py", '"site.yml"'),
    "ansible-playbook site.yml --limit": ("molecule/full/verify.yml", "'--limit='"),
    "ansible antigone -m grus.backup.borg_archive": (
        "molecule/full/verify_installed.yml",
        "- grus.backup.borg_archive",
    ),
    # The vault is the test's own extra-vars file; the playbook is the same.
    "ansible-playbook -i inventories/production playbooks/rotate_passphrase.yml": (
        "tests/integration/test_rotate_passphrase.py",
        "rotate_passphrase.yml",
    ),
    "group/grus.backup.borg": ("molecule/full/verify_installed.yml", "group/grus.backup.borg:"),
}


def readme_commands() -> list[str]:
    """The commands of the README: `$ ` lines of console blocks, inline `make`/`ansible*` commands, the action group."""
    text = README.read_text(encoding="utf-8")
    commands = [line[2:].strip() for line in text.splitlines() if line.startswith("$ ")]
    commands += [m.strip() for m in re.findall(r"^# (make \w+)", text, re.M)]
    commands += re.findall(r"`(ansible-playbook [^`]+)`", text)
    commands += re.findall(r"(group/grus\.backup\.\w+):", text)
    return commands


def test_readme_has_the_commands_this_test_knows():
    commands = readme_commands()
    assert len(commands) >= len(EXERCISED)
    for known in EXERCISED:
        assert any(command.startswith(known) for command in commands), f"README no longer shows {known!r}"


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_is_run_by_make_test(command):
    matches = [known for known in EXERCISED if command.startswith(known)]
    assert matches, f"README command {command!r}: no test runs it (add it to a test and to EXERCISED)"
    path, needle = EXERCISED[matches[0]]
    assert needle in (ROOT / path).read_text(encoding="utf-8"), f"{path} no longer runs {command!r} ({needle!r})"


@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible-playbook missing")
def test_example_inventory_and_site_yml_from_the_checkout():
    result = subprocess.run(
        ["ansible-playbook", "-i", "inventories/example", "site.yml", "--list-hosts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for host in ("sarus", "antigone", "balearica"):
        assert re.search(rf"^\s+{host}$", result.stdout, re.M), result.stdout
