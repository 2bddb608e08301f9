"""The series of the served model versions: what serves, what was refused at load, and each
version's configuration (objectives, costs, drift reference bins) from its manifest.

The names and labels are the contract of docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.monitoring.quality import alert_min_labelled


class ModelMetrics:
    """Model info, refusals and conformance at load, and the manifest's configuration as
    series, so the rules and the dashboard follow the manifest."""

    def __init__(self, registry: CollectorRegistry, multiproc: str | None = None) -> None:
        r = registry
        self.multiproc = multiproc
        self._info: set[tuple[str, ...]] = set()
        self.model_info = Gauge(
            "verdict_model_info",
            "Served model versions (value 1) with the providers in use and the threshold.",
            ["model", "version", "provider", "threshold"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.objective_ratio = Gauge(
            "verdict_objective_ratio",
            "Business targets from the manifest (max_fnr, max_fpr).",
            ["model", "objective"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.objective_min_labeled = Gauge(
            "verdict_objective_min_labeled",
            "Fewest labelled rows of the class in a window before an alert on the objective "
            "may fire (max_fnr: positives, max_fpr: negatives).",
            ["model", "objective"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.outcome_cost = Gauge(
            "verdict_outcome_cost",
            "Cost of one outcome from the manifest (fp, fn).",
            ["model", "outcome"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.reference_bin_ratio = Gauge(
            "verdict_reference_bin_ratio",
            "Reference proportion of each feature bin from the manifest (drift).",
            ["model", "version", "feature", "bin"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.model_refusals = Counter(
            "verdict_model_refusals",
            "Model versions refused at load, by the check that refused them (manifest, files, "
            "parity, graph, warmup, conformance).",
            ["model", "version", "check"],
            registry=r,
        )
        self.conformance_diff = Gauge(
            "verdict_conformance_max_abs_diff",
            "Largest |probability - expected| on the reference sample at the last load of a "
            "version, on the provider that serves it (a refused version's too).",
            ["model", "version", "provider"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

    def set_version_config(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> None:
        """A version's info series, and its manifest's objectives, costs and reference bins."""
        labels = self.model_info_labels(model, version, providers, manifest)
        self.model_info.labels(*labels).set(1)
        self._info.add(labels)
        for objective, value in (manifest.get("objectives") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.objective_ratio.labels(model, objective).set(value)
                self.objective_min_labeled.labels(model, objective).set(
                    alert_min_labelled(float(value))
                )
        for key, value in (manifest.get("costs") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                outcome = key.removeprefix("cost_")
                self.outcome_cost.labels(model, outcome).set(value)
        features = ((manifest.get("reference") or {}).get("features")) or {}
        for feature, ref in features.items():
            for i, proportion in enumerate((ref or {}).get("proportions") or []):
                self.reference_bin_ratio.labels(model, str(version), feature, str(i)).set(
                    proportion
                )

    def set_conformance(self, model: str, version: int, provider: str, max_abs_diff: float) -> None:
        """What a version's reference sample measured on the provider that would serve it."""
        self.conformance_diff.labels(model, str(version), provider).set(max_abs_diff)

    def clear_model_version(
        self, model: str, version: int, providers: list[str], keep: set[tuple[str, ...]]
    ) -> None:
        """Drop the info series of a retired version, except label sets still in use.

        In multiprocess mode prometheus_client cannot remove a series: it goes to 0."""
        for labels in list(self._info):
            if labels[:3] == (model, str(version), ",".join(providers)) and labels not in keep:
                self._info.discard(labels)
                if self.multiproc:
                    self.model_info.labels(*labels).set(0)
                else:
                    self.model_info.remove(*labels)

    def model_info_labels(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> tuple[str, ...]:
        """The label values of a version's info series."""
        threshold = (manifest.get("decision") or {}).get("threshold")
        return (
            model,
            str(version),
            ",".join(providers),
            "" if threshold is None else repr(float(threshold)),
        )
