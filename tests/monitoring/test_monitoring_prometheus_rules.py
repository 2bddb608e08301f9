"""End to end through a real Prometheus: scrape a static /metrics, check recorded series, alerts."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# Outcome counts per (model, version) once the exporter is "released" (all 0 before, as a
# service that initialises its counters at load would export them).
OUTCOMES = {
    ("bc", "1"): {"tp": 20, "fn": 5, "fp": 4, "tn": 40},
    ("bc", "2"): {"tp": 25, "fn": 10, "fp": 6, "tn": 50},
    # Far above its target, but only 4 labelled positives: under the alert's volume guard.
    ("quiet", "1"): {"tp": 2, "fn": 2, "fp": 0, "tn": 10},
}
OBJECTIVES = [("bc", "max_fnr", 0.02), ("bc", "max_fpr", 0.05), ("quiet", "max_fnr", 0.02)]
COSTS = [("bc", "fp", 1.0), ("bc", "fn", 20.0)]
REFERENCE = {"0": 0.25, "1": 0.75}
RECENT_BINS = {"0": 50, "1": 50}

# Hand-computed from the counts above.
EXPECTED_FNR = {"bc": 15 / 60, "quiet": 2 / 4}
EXPECTED_FPR = {"bc": 10 / 100, "quiet": 0.0}
EXPECTED_COST_BC = (1.0 * 10 + 20.0 * 15) / 160
EXPECTED_PSI = sum((p - q) * math.log(p / q) for p, q in [(0.5, 0.25), (0.5, 0.75)])


def exposition(released: bool) -> str:
    """The /metrics text: counters at 0 until released, then at their final values."""
    lines = ["# TYPE verdict_outcomes_total counter"]
    for (model, version), counts in OUTCOMES.items():
        for outcome, count in counts.items():
            value = count if released else 0
            labels = f'model="{model}",version="{version}",outcome="{outcome}"'
            lines.append(f"verdict_outcomes_total{{{labels}}} {value}")
    lines.append("# TYPE verdict_objective_ratio gauge")
    for model, objective, ratio in OBJECTIVES:
        lines.append(f'verdict_objective_ratio{{model="{model}",objective="{objective}"}} {ratio}')
    lines.append("# TYPE verdict_outcome_cost gauge")
    for model, outcome, cost in COSTS:
        lines.append(f'verdict_outcome_cost{{model="{model}",outcome="{outcome}"}} {cost}')
    lines.append("# TYPE verdict_model_info gauge")
    labels = 'model="bc",version="2",provider="CPUExecutionProvider",threshold="0.12"'
    lines.append(f"verdict_model_info{{{labels}}} 1")
    lines.append("# TYPE verdict_reference_bin_ratio gauge")
    for bin_, ratio in REFERENCE.items():
        labels = f'model="bc",version="2",feature="mean radius",bin="{bin_}"'
        lines.append(f"verdict_reference_bin_ratio{{{labels}}} {ratio}")
    lines.append("# TYPE verdict_feature_bin_total counter")
    for bin_, count in RECENT_BINS.items():
        labels = f'model="bc",version="2",feature="mean radius",bin="{bin_}"'
        lines.append(f"verdict_feature_bin_total{{{labels}}} {count if released else 0}")
    return "\n".join(lines) + "\n"


class StaticExporter:
    """A tiny HTTP server on 127.0.0.1 serving `exposition()` at /metrics, counting scrapes."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.scrapes = 0
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = exposition(exporter.released.is_set()).encode()
                with exporter._lock:
                    exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def exporter() -> Iterator[StaticExporter]:
    with StaticExporter() as exp:
        yield exp


def test_exposition_is_zero_until_released() -> None:
    before, after = exposition(False), exposition(True)
    assert 'verdict_outcomes_total{model="bc",version="2",outcome="fn"} 0\n' in before
    assert 'verdict_outcomes_total{model="bc",version="2",outcome="fn"} 10\n' in after


def test_recorded_rates_and_alerts_through_a_real_prometheus(
    prometheus: Callable[[list[str]], Any], exporter: StaticExporter
) -> None:
    prom = prometheus([exporter.target])
    prom.wait_for_targets_up(1)
    # Two scrapes of the zeros: Prometheus holds a 0 sample of every counter, so increase()
    # over the window is exactly the final count times one extrapolation factor shared by all
    # series of the scrape, and the ratios are exact.
    prom.wait_for(lambda: exporter.scrapes >= 2, "two scrapes of the initial zeros")
    exporter.released.set()

    def recorded_fnr() -> dict[str, float] | None:
        fnr = prom.values("model:verdict_fnr:ratio_rate1h", by="model")
        return fnr if set(fnr) == set(EXPECTED_FNR) else None

    fnr = prom.wait_for(recorded_fnr, "model:verdict_fnr:ratio_rate1h for bc and quiet")
    assert fnr == pytest.approx(EXPECTED_FNR, rel=1e-9)

    fpr = prom.wait_for(
        lambda: prom.values("model:verdict_fpr:ratio_rate1h", by="model") or None,
        "model:verdict_fpr:ratio_rate1h",
    )
    assert fpr == pytest.approx(EXPECTED_FPR, rel=1e-9)
    for window in ("6h", "24h"):
        assert prom.values(f"model:verdict_fnr:ratio_rate{window}", by="model") == pytest.approx(
            EXPECTED_FNR, rel=1e-9
        )

    cost = prom.wait_for(
        lambda: prom.values("model:verdict_error_cost:avg_rate1h", by="model") or None,
        "model:verdict_error_cost:avg_rate1h",
    )
    # quiet has no costs in its "manifest": no series.
    assert cost == pytest.approx({"bc": EXPECTED_COST_BC}, rel=1e-9)

    psi = prom.wait_for(
        lambda: prom.values("model_version_feature:verdict_psi:rate1h", by="feature") or None,
        "model_version_feature:verdict_psi:rate1h",
    )
    assert psi == pytest.approx({"mean radius": EXPECTED_PSI}, rel=1e-9)

    def pending_target_alerts() -> list[dict[str, object]] | None:
        names = {"VerdictFNRAboveTarget", "VerdictFPRAboveTarget"}
        alerts = [a for a in prom.alerts() if a["labels"]["alertname"] in names]
        return alerts if len(alerts) >= 2 else None

    alerts = prom.wait_for(pending_target_alerts, "VerdictFNRAboveTarget and FPR to be pending")
    seen = {(a["labels"]["alertname"], a["labels"]["model"], a["state"]) for a in alerts}
    # `for: 30m`: pending, not firing; quiet stays out under the volume guard.
    assert seen == {
        ("VerdictFNRAboveTarget", "bc", "pending"),
        ("VerdictFPRAboveTarget", "bc", "pending"),
    }
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "VerdictServiceDown"]
