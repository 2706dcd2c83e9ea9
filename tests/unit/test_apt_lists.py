"""Every read of the package lists with an age limit goes through ``roles/common/tasks/apt_lists.yml``.

Ansible's apt module takes the mtime of ``/var/lib/apt/lists`` for the time of the last update, so a
``cache_valid_time`` on a host without any package list (an image built minutes ago) skipped the update and
the install that followed found no package (issue 22: CI on a fresh machine). The shared task file counts
"no list at all" as stale; a ``cache_valid_time`` anywhere else brings the failure back.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1].parent
SHARED = ROOT / "roles" / "common" / "tasks" / "apt_lists.yml"


def _yaml_files():
    for top in ("roles", "molecule", "playbooks"):
        yield from sorted((ROOT / top).rglob("*.yml"))


def _apt_tasks(node):
    """Every ``apt`` task's arguments in a parsed YAML document (blocks and nested lists included)."""
    if isinstance(node, list):
        for item in node:
            yield from _apt_tasks(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("ansible.builtin.apt", "apt") and isinstance(value, dict):
                yield value
            else:
                yield from _apt_tasks(value)


def test_no_cache_valid_time_outside_the_shared_task_file():
    offenders = []
    for path in _yaml_files():
        if path == SHARED:
            continue
        for task in _apt_tasks(yaml.safe_load(path.read_text(encoding="utf-8"))):
            if "cache_valid_time" in task:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"use include_role grus.backup.common tasks_from: apt_lists instead: {offenders}"


def test_the_shared_task_file_treats_no_lists_as_stale():
    tasks = yaml.safe_load(SHARED.read_text(encoding="utf-8"))
    find, read = tasks
    assert find["ansible.builtin.find"]["paths"] == "/var/lib/apt/lists"
    assert find["ansible.builtin.find"]["patterns"] == "*_Packages*"
    apt = read["ansible.builtin.apt"]
    assert apt["update_cache"] is True
    # No list found: the age limit is left out, and apt's default (0) always updates.
    assert "else omit" in apt["cache_valid_time"] and f"{find['register']}.matched > 0" in apt["cache_valid_time"]
    # Check mode reads them too: without them a check run cannot tell what it would install.
    assert read["check_mode"] is False
    assert read["changed_when"] is False
