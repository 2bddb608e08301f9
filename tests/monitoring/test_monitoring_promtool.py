"""promtool checks of the Prometheus config and rules, and the rules' unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_YML = PROM_DIR / "prometheus.yml"
RULES_FILE = PROM_DIR / "rules" / "verdict.rules.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# level:metric:operations, e.g. model:verdict_fnr:ratio_rate1h
RECORD_NAME = re.compile(r"^[a-z][a-z_]*:verdict_[a-z0-9_]+:[a-z0-9_]+$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool and fail the test with its output on a non-zero exit."""
    result = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_rule_tests() -> list[dict[str, Any]]:
    return [case for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]]


def test_shipped_config_is_valid() -> None:
    promtool("check", "config", str(PROMETHEUS_YML))


def test_shipped_config_scrapes_verdict_and_loads_the_mounted_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["verdict"]["static_configs"] == [{"targets": ["verdict:8000"]}]
    assert jobs["verdict"].get("metrics_path", "/metrics") == "/metrics"


def test_config_with_the_rules_at_their_repository_path_is_valid(tmp_path: Path) -> None:
    # The shipped rule_files glob only matches inside the container; point it at the
    # repository so that `check config` loads and checks the rules as well.
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["rule_files"] = [str(RULES_FILE.parent / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert "SUCCESS" in result.stdout + result.stderr
    assert str(RULES_FILE) in result.stdout + result.stderr


def test_rules_are_valid() -> None:
    promtool("check", "rules", str(RULES_FILE))


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    # Guard against a unit-test file that promtool would accept whatever the rules do.
    fn = 'verdict_outcomes_total{model="m",version="1",outcome="fn"}'
    tp = 'verdict_outcomes_total{model="m",version="1",outcome="tp"}'
    wrong = {"labels": 'model:verdict_fnr:ratio_rate1h{model="m"}', "value": 0.4}
    case = {
        "interval": "1m",
        "input_series": [
            {"series": fn, "values": "0+1x60"},
            {"series": tp, "values": "0+1x60"},
        ],
        "promql_expr_test": [
            {"expr": "model:verdict_fnr:ratio_rate1h", "eval_time": "1h", "exp_samples": [wrong]}
        ],
    }
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES_FILE)], "tests": [case]}))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "5E-01" in result.stdout + result.stderr  # the real FNR, 1/2


def test_recording_rules_follow_the_naming_convention() -> None:
    names = [rule["record"] for rule in load_rules() if "record" in rule]
    assert names
    bad = [name for name in names if not RECORD_NAME.match(name)]
    assert not bad, f"not level:metric:operations: {bad}"
    assert len(names) == len(set(names)), "a recorded series is defined twice"


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    expected = {
        "VerdictServiceDown",
        "VerdictFNRAboveTarget",
        "VerdictFPRAboveTarget",
        "VerdictRecallBudgetFastBurn",
        "VerdictRecallBudgetSlowBurn",
        "VerdictLatencyHigh",
        "VerdictHTTPErrorsHigh",
        "VerdictInferenceErrorsHigh",
        "VerdictFeatureDrift",
        "VerdictModelVersionRefused",
    }
    assert alerts == expected
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load_rule_tests():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert not alerts - firing, f"alerts without a firing case: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts without a silent case: {sorted(alerts - silent)}"


@pytest.mark.parametrize(
    "record",
    ["model:verdict_fnr:ratio_rate1h", "model:verdict_fpr:ratio_rate1h"],
)
def test_fnr_and_fpr_values_are_checked_on_a_hand_computed_case(record: str) -> None:
    checked = [
        sample
        for case in load_rule_tests()
        for check in case.get("promql_expr_test", [])
        if check["expr"] == record
        for sample in check["exp_samples"]
        if float(sample["value"]) not in (0.0, 1.0)
    ]
    assert checked, f"no exp_samples with a non-trivial value for {record}"


def test_every_alert_carries_severity_summary_and_runbook() -> None:
    docs = (REPO / "docs" / "monitoring.md").read_text().lower()
    for rule in load_rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f"### {rule['alert'].lower()}" in docs, f"docs/monitoring.md lacks {rule['alert']}"
