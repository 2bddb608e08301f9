"""Every Prometheus metric of the service, owned by one object built on a given registry, and
the /metrics body (one process, or every worker's in multiprocess mode).

The series are defined by concern: `request_metrics` (latency, batches, outcomes,
predictions), `model_metrics` (served versions and their configuration), `quality_metrics`
(ground truth, drift) and `lifecycle_metrics` (capture, shadow). The names and labels are the
contract of docs/architecture.md: the alert rules and the dashboard in deploy/ use them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from service.monitoring.lifecycle_metrics import LifecycleMetrics
from service.monitoring.model_metrics import ModelMetrics
from service.monitoring.quality_metrics import QualityMetrics
from service.monitoring.request_metrics import RequestMetrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics(RequestMetrics, ModelMetrics, QualityMetrics, LifecycleMetrics):
    """The metrics of docs/architecture.md; one instance per app, on its own registry.

    The per-request series (inference outcomes, predictions by label, score, batch size,
    queue and compute time, queue depth, HTTP duration) are updated through buffers
    (`monitoring.buffers`), flushed before every collection.
    """

    def __init__(self, registry: CollectorRegistry, multiproc: str | None = None) -> None:
        self.registry = registry
        # The request series register the flush ahead of every metric.
        RequestMetrics.__init__(self, registry)
        ModelMetrics.__init__(self, registry, multiproc)
        QualityMetrics.__init__(self, registry)
        LifecycleMetrics.__init__(self, registry, multiproc)

    def set_model_config(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> None:
        """Series that carry a model version's configuration (info, objectives, costs, bins);
        a binary version's outcome counters start at 0."""
        self.set_version_config(model, version, providers, manifest)
        if manifest.get("task") == "binary":
            self.start_outcomes(model, version)


def multiproc_dir() -> str | None:
    """The prometheus_client multiprocess folder in use (PROMETHEUS_MULTIPROC_DIR), if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(registry: CollectorRegistry, multiproc: str | None) -> tuple[bytes, str]:
    """The /metrics body: this registry, or every process's values in multiprocess mode."""
    if multiproc:
        collected = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(collected, path=multiproc)
        return generate_latest(collected), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(multiproc: str | None) -> None:
    """Forget this process's live gauges when it exits (multiprocess mode)."""
    if multiproc:
        prom_multiprocess.mark_process_dead(os.getpid(), multiproc)
