"""The scheduled jobs run with exactly the module utilities their roles ship, and nothing else.

The file lists are read from the roles' YAML, so a role that forgets a file (or ships one the job
does not import) fails here, not on a host at 04:00.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[4]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
JOBS = [
    # (the role's vars file, the list variable in it, the entry point the systemd unit runs, its --help shows)
    (ROOT / "roles" / "key_holder" / "vars" / "main.yml", "__key_holder_module_utils", "_backup_job", "--config"),
    # The key holder ships one list for two entry points: the backup job and the sync receiver (a forced command).
    (ROOT / "roles" / "key_holder" / "vars" / "main.yml", "__key_holder_module_utils", "_sync_receive", "--quota"),
    (ROOT / "roles" / "sync_client" / "vars" / "main.yml", "__sync_client_module_utils", "_rsync", "--config"),
    (
        ROOT / "roles" / "repository_host" / "vars" / "main.yml",
        "__repository_host_module_utils",
        "_compaction_tools",
        "AUTHORIZED_KEYS",
    ),
]


def shipped_files(vars_file: Path, variable: str) -> list:
    """The files the role hands to the shared role's ``code`` tasks (``roles/common/tasks/code.yml``)."""
    return list(yaml.safe_load(vars_file.read_text())[variable])


def relative_imports(module: str) -> set:
    """The sibling modules ``module`` imports (``from ._x import ...``, ``from . import _x``)."""
    tree = ast.parse((MODULE_UTILS / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [alias.name for alias in node.names])
    return found


def import_closure(entry: str) -> set:
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(relative_imports(module))
    return seen


@pytest.mark.parametrize(("vars_file", "variable", "entry", "usage"), JOBS, ids=[job[2] for job in JOBS])
def test_the_role_ships_exactly_what_the_job_imports(vars_file, variable, entry, usage):
    shipped = {Path(name).stem for name in shipped_files(vars_file, variable)}
    # Everything the role's entry points import, and nothing else.
    entries = [job[2] for job in JOBS if job[0] == vars_file and job[1] == variable]
    assert shipped == set().union(*(import_closure(name) for name in entries))
    assert import_closure(entry) <= shipped


@pytest.mark.parametrize(("vars_file", "variable", "entry", "usage"), JOBS, ids=[job[2] for job in JOBS])
def test_the_job_runs_from_the_shipped_files_alone(tmp_path, vars_file, variable, entry, usage):
    package = tmp_path / "grus_backup"
    package.mkdir()
    (package / "__init__.py").write_text("# as the role writes it\n")
    for name in shipped_files(vars_file, variable):
        shutil.copy(MODULE_UTILS / name, package / name)
    # As the systemd unit runs it: the system python, only the package on the path, no collection.
    proc = subprocess.run(
        [sys.executable, "-s", "-m", f"grus_backup.{entry}", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert usage in proc.stdout
