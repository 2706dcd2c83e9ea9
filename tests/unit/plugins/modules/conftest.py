"""What the module unit tests share: running a module's main() in-process, and reading borg argv.

Mocks belong here only (unit tests of module logic): AnsibleModule's exit, fail and warn are
replaced so that a test gets the result dict back instead of a process exit.
"""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    def __init__(self, result, failed):
        super().__init__(result)
        self.result = result
        self.failed = failed


@pytest.fixture
def call_module(monkeypatch):
    """``call_module(main, args, check=False, diff=False, secret=None)``: the module's result dict,
    with ``failed`` and the ``warnings`` it issued; ``secret`` must appear nowhere in it."""
    warnings = []

    def exit_json(self, **result):
        raise ModuleExit(result, failed=False)

    def fail_json(self, **result):
        raise ModuleExit(result, failed=True)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, w, **k: warnings.append(w))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, *a, **k: "/usr/bin/borg")

    def call(main, args, check=False, diff=False, secret=None):
        warnings.clear()
        args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
        with patch_module_args(args), pytest.raises(ModuleExit) as exc:
            main()
        result = dict(exc.value.result, failed=exc.value.failed, warnings=list(warnings))
        if secret:
            assert secret not in json.dumps(result)
        return result

    return call


def borg_subcommand(argv):
    """The borg subcommand of an argv built by _borg_argv (``key export`` as two words), or None."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "--log-json":
            continue
        if arg == "--lock-wait":
            next(args)
            continue
        if arg == "key":
            return "key " + next(args)
        return arg
    return None


def borg_log_line(message, msgid=None, levelname="ERROR", name="borg.archiver"):
    """One line of borg's --log-json output."""
    entry = {"type": "log_message", "message": message, "levelname": levelname, "name": name}
    if msgid:
        entry["msgid"] = msgid
    return json.dumps(entry) + "\n"
