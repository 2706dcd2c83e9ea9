"""Every systemd service the roles install is proven by a Molecule verify that starts it through systemd (issue 22).

``molecule/unit_proofs.yml`` maps each service template (``roles/*/templates/*.service.j2``) to the verify steps
that prove its main path: the task that starts the deployed unit as its timer does (``systemctl start`` or
``systemd_service`` with ``state: started``/``restarted``), then a later task of the same file that reads its
``Result=``. A unit the roles gain without an entry fails here, and so does an entry whose step is gone or no
longer starts that unit and reads its result. The tests that ran a job's script directly, as root, outside its
sandbox, are what let a unit fail on every deployed host while every test passed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "molecule" / "unit_proofs.yml"
TEMPLATES = sorted(ROOT.glob("roles/*/templates/*.service.j2"))

SYSTEMD_MODULES = {
    "ansible.builtin.systemd_service",
    "ansible.builtin.systemd",
    "systemd_service",
    "systemd",
}
COMMAND_MODULES = {"ansible.builtin.command", "ansible.builtin.shell", "command", "shell"}
TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")
BLOCK_LISTS = ("block", "rescue", "always")


def unit_name(template: Path) -> str:
    return template.name.removesuffix(".j2")


def unit_pattern(unit: str) -> str:
    """A regex for the unit's name in a task: a template (``x@.service``) with any instance, Jinja included."""
    stem, _at, suffix = unit.partition("@")
    if _at:
        instance = r"(?:\{\{.*?\}\}|[^\s'\"{}])*?"  # a name, Jinja included
        return rf"(?<![\w@.-]){re.escape(stem)}@{instance}{re.escape(suffix)}(?![\w.-])"
    return rf"(?<![\w@.-]){re.escape(unit)}(?![\w.-])"


def load_registry() -> dict:
    with open(REGISTRY, encoding="utf-8") as fd:
        return yaml.safe_load(fd) or {}


def flatten(items) -> list[dict]:
    """Every task of a playbook or task file, in file order (blocks opened)."""
    found = []
    for item in items or []:
        if not isinstance(item, dict):
            continue
        lists = [key for key in (*TASK_LISTS, *BLOCK_LISTS) if key in item]
        if lists:
            for key in lists:
                found += flatten(item[key])
        elif "hosts" not in item and "import_playbook" not in item:
            found.append(item)
    return found


def module_of(task: dict) -> tuple[str, object]:
    for key, value in task.items():
        if key in SYSTEMD_MODULES or key in COMMAND_MODULES:
            return key, value
    return "", None


def text_of(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6)


def starts(task: dict, pattern: str) -> bool:
    """The task starts (or restarts) a unit matching ``pattern`` through systemd."""
    module, args = module_of(task)
    if module in SYSTEMD_MODULES and isinstance(args, dict):
        named = re.search(pattern, str(args.get("name", ""))) is not None
        return named and args.get("state") in ("started", "restarted")
    if module in COMMAND_MODULES:
        if isinstance(args, dict):
            args = args.get("cmd") or args.get("argv") or ""
        command = " ".join(args) if isinstance(args, list) else str(args)
        return re.search(rf"systemctl\s+(-\S+\s+)*(start|restart)\s+(\S+\s+)*?{pattern}", command) is not None
    return False


def tolerates_failure(task: dict) -> bool:
    return "failed_when" in task or bool(task.get("ignore_errors"))


def is_oneshot(unit: str) -> bool:
    for template in TEMPLATES:
        if unit_name(template) == unit:
            return re.search(r"^Type=oneshot\s*$", template.read_text(encoding="utf-8"), re.M) is not None
    return False


def reads_result(later: list[dict], pattern: str) -> bool:
    """A later task reads the unit's Result=: ``systemctl show -p Result`` of it, or a status read then asserted."""
    for index, task in enumerate(later):
        text = text_of({k: v for k, v in task.items() if k != "name"})
        module, args = module_of(task)
        if module in COMMAND_MODULES and re.search(pattern, text) and re.search(r"\bResult\b", text):
            return True
        if (
            module in SYSTEMD_MODULES
            and isinstance(args, dict)
            and "state" not in args
            and re.search(pattern, str(args.get("name", "")))
            and task.get("register")
        ):
            registered = re.escape(task["register"])
            if any(re.search(rf"{registered}\.status\.Result\b", text_of(after)) for after in later[index + 1 :]):
                return True
    return False


def units_started_by(task: dict) -> list[str]:
    return [unit_name(t) for t in TEMPLATES if starts(task, unit_pattern(unit_name(t)))]


def entry_problem(unit: str, entry: dict) -> str | None:
    """What is wrong with an entry's form (None when nothing is)."""
    if not entry.get("verify") or not entry.get("task"):
        return f"{unit}: an entry needs `verify` and `task`: {entry}"
    if entry.get("started_by") not in (None, "OnFailure"):
        return f"{unit}: started_by must be OnFailure, not {entry['started_by']!r}"
    path = ROOT / str(entry["verify"])
    if not path.is_file() or path.relative_to(ROOT).parts[0] != "molecule":
        return f"{unit}: {entry['verify']} is not a file under molecule/"
    return None


def proves(unit: str, task: dict, later: list[dict], via: str | None) -> bool:
    pattern = unit_pattern(unit)
    if via == "OnFailure":
        callers = [u for u in units_started_by(task) if is_started_on_failure_of(unit, u)]
        return bool(callers) and reads_result(later, pattern)
    if not starts(task, pattern):
        return False
    return reads_result(later, pattern) or (not tolerates_failure(task) and is_oneshot(unit))


def proof_problem(unit: str, entry: dict) -> str | None:
    """None when the entry's step starts the unit through systemd and reads its Result; else what is wrong."""
    problem = entry_problem(unit, entry)
    if problem:
        return problem
    tasks = flatten(yaml.safe_load((ROOT / entry["verify"]).read_text(encoding="utf-8")))
    named = [i for i, task in enumerate(tasks) if task.get("name") == entry["task"]]
    if not named:
        return f"{unit}: {entry['verify']} has no task named {entry['task']!r}"
    if any(proves(unit, tasks[i], tasks[i + 1 :], entry.get("started_by")) for i in named):
        return None
    what = (
        "start a unit whose OnFailure= starts it"
        if entry.get("started_by")
        else "start it through systemd (systemctl start, or systemd_service state started)"
    )
    return f"{unit}: the task {entry['task']!r} of {entry['verify']} does not {what}, with its Result read after"


def is_started_on_failure_of(unit: str, caller: str) -> bool:
    stem = unit.split("@", 1)[0]
    for template in TEMPLATES:
        if unit_name(template) == caller:
            text = template.read_text(encoding="utf-8")
            return re.search(rf"^OnFailure=.*\b{re.escape(stem)}@", text, re.M) is not None
    return False


def test_there_are_units_and_a_registry():
    assert TEMPLATES, "no roles/*/templates/*.service.j2 found"
    assert isinstance(load_registry(), dict)


@pytest.mark.parametrize("unit", [unit_name(t) for t in TEMPLATES])
def test_every_service_has_a_proof(unit):
    entries = load_registry().get(unit)
    assert entries, (
        f"{unit} has no entry in {REGISTRY.relative_to(ROOT)}: add the Molecule verify step that starts it through "
        "systemd on its main path and reads its Result="
    )
    problems = [proof_problem(unit, entry) for entry in entries]
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_the_registry_names_only_units_that_exist():
    unknown = set(load_registry()) - {unit_name(t) for t in TEMPLATES}
    assert not unknown, f"entries for units no role installs: {sorted(unknown)}"


# The checker itself, on small examples: it must refuse what does not prove a unit.
@pytest.mark.parametrize(
    ("task", "later", "expected"),
    [
        # started, and its Result read through systemctl show
        (
            {"ansible.builtin.systemd_service": {"name": "grus-x.service", "state": "started"}, "failed_when": False},
            [{"ansible.builtin.command": "systemctl show -p Result --value grus-x.service"}],
            True,
        ),
        # started with a command, Result read through a status read and an assert
        (
            {"ansible.builtin.command": "systemctl start grus-x.service"},
            [
                {"ansible.builtin.systemd_service": {"name": "grus-x.service"}, "register": "r"},
                {"ansible.builtin.assert": {"that": "r.status.Result == 'success'"}},
            ],
            True,
        ),
        # started, failure tolerated, Result never read
        (
            {"ansible.builtin.systemd_service": {"name": "grus-x.service", "state": "started"}, "failed_when": False},
            [{"ansible.builtin.command": "cat /var/lib/x"}],
            False,
        ),
        # the Result of another unit
        (
            {"ansible.builtin.systemd_service": {"name": "grus-x.service", "state": "started"}, "failed_when": False},
            [{"ansible.builtin.command": "systemctl show -p Result --value grus-x-other.service"}],
            False,
        ),
        # stopped, not started
        (
            {"ansible.builtin.systemd_service": {"name": "grus-x.service", "state": "stopped"}},
            [{"ansible.builtin.command": "systemctl show -p Result --value grus-x.service"}],
            False,
        ),
        # the job's script run directly, not the unit
        (
            {"ansible.builtin.command": "/usr/local/sbin/grus-x"},
            [{"ansible.builtin.command": "systemctl show -p Result --value grus-x.service"}],
            False,
        ),
    ],
)
def test_the_checker(task, later, expected):
    pattern = unit_pattern("grus-x.service")
    assert (starts(task, pattern) and reads_result(later, pattern)) is expected


def test_the_checker_matches_template_instances_and_nothing_around_them():
    pattern = unit_pattern("grus-borg-compact@.service")
    assert re.search(pattern, "grus-borg-compact@{{ incident_repository }}.service")
    assert re.search(pattern, "systemctl start grus-borg-compact@antigone.service")
    assert not re.search(pattern, "grus-backup-alert@grus-borg-compact-antigone.service")
    plain = unit_pattern("grus-backup.service")
    assert not re.search(plain, "grus-backup-alert@grus-backup.service")
    assert not re.search(plain, "grus-backup.service.d")
    assert not re.search(plain, "grus-backup-drill.service")


def test_an_entry_whose_step_is_gone_or_runs_the_script_fails(tmp_path, monkeypatch):
    (tmp_path / "molecule").mkdir()
    (tmp_path / "molecule" / "verify.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "a play",
                    "hosts": "all",
                    "tasks": [
                        {"name": "Run the job's script", "ansible.builtin.command": "/usr/local/sbin/grus-backup-run"},
                        {"name": "Read", "ansible.builtin.shell": "systemctl show -p Result grus-backup.service"},
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    gone = proof_problem("grus-backup.service", {"verify": "molecule/verify.yml", "task": "Run the backup unit"})
    assert "has no task named" in gone
    script = proof_problem("grus-backup.service", {"verify": "molecule/verify.yml", "task": "Run the job's script"})
    assert "does not start it through systemd" in script
    outside = proof_problem("grus-backup.service", {"verify": "verify.yml", "task": "Run the job's script"})
    assert "not a file under molecule/" in outside
