"""The Grafana provisioning and dashboard, and the metric names the dashboard and rules use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCE_YML = GRAFANA / "provisioning" / "datasources" / "datasource.yml"
DASHBOARDS_YML = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_DIR = GRAFANA / "dashboards"
RULES_FILE = REPO / "deploy" / "prometheus" / "rules" / "verdict.rules.yml"
DATASOURCE_UID = "verdict-prometheus"

# The metric names of the contract (docs/architecture.md, Metrics).
HISTOGRAMS = {
    "verdict_http_request_duration_seconds",
    "verdict_inference_duration_seconds",
    "verdict_batch_size",
    "verdict_prediction_score",
    "verdict_label_delay_seconds",
}
GAUGES = {
    "verdict_queue_depth",
    "verdict_model_info",
    "verdict_objective_ratio",
    "verdict_outcome_cost",
    "verdict_reference_bin_ratio",
    "verdict_objective_min_labeled",
    "verdict_conformance_max_abs_diff",
    "verdict_model_role",
}
COUNTERS = {
    "verdict_inference_requests_total",
    "verdict_predictions_total",
    "verdict_feedback_items_total",
    "verdict_labeled_predictions_total",
    "verdict_outcomes_total",
    "verdict_feature_bin_total",
    "verdict_model_refusals_total",
    "verdict_shadow_rows_total",
    "verdict_shadow_outcomes_total",
}
CONTRACT_NAMES = (
    GAUGES
    | COUNTERS
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*(?:\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names a PromQL expression selects.

    Strings, label matchers, ranges, grouping label lists and Grafana variables are removed
    first; what remains that is neither a number, a keyword nor a function call is a name.
    """
    text = _GRAFANA_VAR.sub("", _STRING.sub('""', expr))
    text = _OFFSET.sub(" ", _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", text))))
    names = set()
    for token in _TOKEN.findall(text):
        if token[0].isdigit() or token.endswith("("):
            continue
        if token.lower() in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def allowed_names() -> set[str]:
    return CONTRACT_NAMES | recorded_names() | {"up"}


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    paths = sorted(DASHBOARD_DIR.glob("*.json"))
    assert paths, "no dashboard JSON in deploy/grafana/dashboards"
    return [(path.name, json.loads(path.read_text())) for path in paths]


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in walk_panels(dashboard["panels"]) if p.get("type") != "row"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum(up{job="verdict"})', {"up"}),
        (
            "sum by (route, le) "
            '(rate(verdict_http_request_duration_seconds_bucket{code=~"5.."}[5m]))',
            {"verdict_http_request_duration_seconds_bucket"},
        ),
        (
            "model:verdict_fnr:ratio_rate1h > on (model) group_left () "
            "model:verdict_fnr_target:ratio",
            {"model:verdict_fnr:ratio_rate1h", "model:verdict_fnr_target:ratio"},
        ),
        (
            "histogram_quantile(0.99, "
            'sum(rate(x_bucket{model=~"$model"}[$__rate_interval])) by (le))',
            {"x_bucket"},
        ),
        ("clamp_min(a, 1e-4) / b offset 5m and bool_thing", {"a", "b", "bool_thing"}),
        ('topk(10, {__name__="ignored"}) * 2', set()),
    ],
)
def test_metric_names_parses_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_name_check_catches_an_unknown_metric() -> None:
    unknown = metric_names("sum(rate(verdict_fn_total[5m])) / sum(verdict_outcomes_total)")
    assert unknown - allowed_names() == {"verdict_fn_total"}


def test_datasource_is_provisioned_with_the_fixed_uid() -> None:
    config = yaml.safe_load(DATASOURCE_YML.read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    config = yaml.safe_load(DASHBOARDS_YML.read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_has_a_stable_uid_and_the_expected_sections() -> None:
    for name, dashboard in dashboards():
        assert dashboard["uid"], name
        titles = " ".join(p["title"].lower() for p in walk_panels(dashboard["panels"]))
        for topic in (
            "requests",
            "error",
            "latency",
            "batch size",
            "queue",
            "false negative rate",
            "false positive rate",
            "cost",
            "label coverage",
            "label delay",
            "score distribution",
            "drift",
        ):
            assert topic in titles, f"{name}: no panel about {topic}"
        ids = [p["id"] for p in walk_panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_every_panel_and_variable_uses_the_provisioned_datasource() -> None:
    for name, dashboard in dashboards():
        panels = data_panels(dashboard)
        assert panels, name
        for panel in panels:
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                uid = target.get("datasource", panel["datasource"])["uid"]
                assert uid == DATASOURCE_UID, (name, panel["title"])
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_UID, (name, variable["name"])


def test_every_dashboard_expression_names_only_known_series() -> None:
    allowed = allowed_names()
    for name, dashboard in dashboards():
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                used = metric_names(target["expr"])
                assert used, (name, panel["title"], target["expr"])
                unknown = used - allowed
                assert not unknown, f"{name} / {panel['title']}: unknown series {sorted(unknown)}"
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            for metric in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", text):
                assert metric in allowed, (name, variable["name"], metric)


def test_every_rule_expression_names_only_known_series() -> None:
    allowed = allowed_names()
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - allowed
            assert not unknown, f"{rule.get('record') or rule.get('alert')}: {sorted(unknown)}"


def test_every_recorded_series_is_used_by_an_alert_or_the_dashboard() -> None:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    used: set[str] = set()
    for group in groups:
        for rule in group["rules"]:
            used |= metric_names(rule["expr"])
    for _, dashboard in dashboards():
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                used |= metric_names(target["expr"])
    assert not recorded_names() - used, sorted(recorded_names() - used)


def _row_panels(dashboard: dict[str, Any], word: str) -> list[dict[str, Any]]:
    """The panels of the first (expanded) row whose title holds `word`."""
    panels = dashboard["panels"]
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    start = next(i for i in rows if word in panels[i]["title"].lower())
    end = next((i for i in rows if i > start), len(panels))
    assert not panels[start].get("collapsed"), "the row's panels are listed after it"
    return panels[start + 1 : end]


def test_shadow_row_shows_a_multiclass_error_rate_per_role() -> None:
    """The "Shadow evaluation" row draws the error rate of a multiclass model's primary and
    shadow side by side (from its correct/wrong outcomes), not only binary FNR and FPR."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    rules = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    wrong = "model_version_role:verdict_shadow_wrong:ratio_rate24h"
    assert 'outcome="wrong"' in rules[wrong]
    assert "model_version_role:verdict_shadow_labeled:increase24h" in rules[wrong]
    # The cost per row of a multiclass role is its error rate: the cost rule counts "wrong".
    assert 'outcome="wrong"' in rules["model_version_role:verdict_shadow_error_cost:avg_rate24h"]
    for name, dashboard in dashboards():
        panels = _row_panels(dashboard, "shadow")
        targets = [(p, t) for p in panels for t in p["targets"] if wrong in metric_names(t["expr"])]
        assert targets, f"{name}: no panel of the shadow row draws {wrong}"
        for panel, target in targets:
            assert "multiclass" in panel["title"] and "error rate" in panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
            # One line per role and version: never summed over them.
            assert "by (" not in target["expr"] and "sum(" not in target["expr"]
            assert "{{role}}" in target["legendFormat"]
            assert "{{version}}" in target["legendFormat"]
        counts = [
            t
            for p in panels
            for t in p["targets"]
            if "model_version_role_outcome:verdict_shadow_outcomes:increase24h" in t["expr"]
            and "correct|wrong" in t["expr"]
        ]
        assert counts, f"{name}: the shadow row shows no correct/wrong counts"
        assert all("{{role}}" in t["legendFormat"] for t in counts)
