"""The shipped Prometheus alert rules and Grafana dashboard: valid, tested, and about metrics that exist.

* ``promtool check rules`` and ``promtool test rules`` pass, and every alert has a test where it fires;
* every ``grus_backup_*`` name in a rule or a panel is one the jobs emit (``_metrics.METRICS``);
* every panel's query parses: each goes into a rule file that ``promtool check rules`` reads;
* the dashboard takes its datasource from the ``${datasource}`` variable, with no hard-coded UID.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.grus.backup.plugins.module_utils._metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "extensions" / "prometheus" / "grus_backup.rules.yml"
RULE_TESTS = sorted((ROOT / "extensions" / "prometheus").glob("grus_backup.rules*.test.yml"))
DASHBOARD = ROOT / "extensions" / "grafana" / "grus_backup.dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: make host-deps installs prometheus")
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARS = {"$instance": ".*", "$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m"}


def rules() -> list:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def panel_exprs() -> list:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set:
    """The grus_backup_* names in a PromQL expression (strings and label matchers left out)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    return set(re.findall(r"\bgrus_backup_[a-z0-9_]+", bare))


def promtool(*args, cwd=None):
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=cwd)


@needs_promtool
def test_rules_are_valid_and_their_tests_pass():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(RULE_TESTS) == 2
    tested = promtool("test", "rules", *[t.name for t in RULE_TESTS], cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_test_where_it_fires():
    tests = [test for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {rule["alert"] for rule in rules()} - fired == set()


def test_rules_and_panels_name_only_metrics_the_jobs_emit():
    used = set()
    for expr in [rule["expr"] for rule in rules()] + [expr for _title, expr in panel_exprs()]:
        used |= metric_names(expr)
    assert used - set(METRICS) == set()
    assert len(used) > 20


@needs_promtool
def test_every_panel_query_parses(tmp_path):
    exprs = panel_exprs()
    assert exprs
    recording = []
    for index, (title, expr) in enumerate(exprs):
        plain = expr
        for variable, value in GRAFANA_VARS.items():
            plain = plain.replace(variable, value)
        assert "$" not in plain, f"{title}: an unknown Grafana variable in {expr}"
        recording.append({"record": f"grus_dashboard:panel_{index}", "expr": plain})
    rule_file = tmp_path / "panels.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": recording}]}))
    checked = promtool("check", "rules", str(rule_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_takes_its_datasource_from_a_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    assert dashboard.get("uid") is None
    text = DASHBOARD.read_text()
    assert not re.search(r'"uid":\s*"(?!\$\{datasource\})', text), "a hard-coded UID"
