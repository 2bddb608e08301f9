"""The series of a model's lifecycle (docs/lifecycle.md): input capture for retraining, and the
shadow evaluation of a candidate version beside the primary.

The names and labels are the contract of docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.monitoring.quality_metrics import BINARY_OUTCOMES

# The paired outcomes of a multiclass model: each wrong class costs 1, as the promotion rule
# prices it, so the expected cost per row is wrong / (correct + wrong).
MULTICLASS_OUTCOMES = ("correct", "wrong")


class LifecycleMetrics:
    """Captured rows, the roles of served versions, and the shadow's rows and outcomes."""

    def __init__(self, registry: CollectorRegistry, multiproc: str | None = None) -> None:
        r = registry
        self.multiproc = multiproc
        self._roles: dict[str, list[tuple[str, str, str]]] = {}
        self.capture_rows = Counter(
            "verdict_capture_rows",
            "Sampled rows of input capture by what became of them: stored, dropped_full (the "
            "writer's queue was full), dropped_rate (rows/s cap), dropped_cap (stored-rows cap), "
            "failed (the store failed).",
            ["model", "outcome"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "verdict_shadow_rows",
            "Rows of primary requests sampled for a shadow version, by outcome (decided, "
            "dropped: its queue was full, failed: its run failed, unrecorded: the store "
            "refused the decisions).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_outcomes = Counter(
            "verdict_shadow_outcomes",
            "Outcomes of labelled rows that a shadow also decided, per version and role "
            "(primary: the answer sent; shadow: the shadow's decision): tp, fp, tn, fn for a "
            "binary model, correct, wrong for a multiclass one.",
            ["model", "version", "role", "outcome"],
            registry=r,
        )
        self.model_role = Gauge(
            "verdict_model_role",
            "Role of a served model version (primary, shadow), value 1.",
            ["model", "version", "role"],
            multiprocess_mode="livemax",
            registry=r,
        )

    def set_roles(
        self,
        model: str,
        primary: int,
        shadow: int | None,
        outcomes: Sequence[str] = BINARY_OUTCOMES,
    ) -> None:
        """The role series of a model: its primary, and its shadow if any, whose paired
        `outcomes` (BINARY_OUTCOMES or MULTICLASS_OUTCOMES) start at 0."""
        wanted = [(model, str(primary), "primary")]
        if shadow is not None:
            wanted.append((model, str(shadow), "shadow"))
            for role in ("primary", "shadow"):
                for outcome in outcomes:  # start at 0: the first is an increase
                    version = str(primary if role == "primary" else shadow)
                    self.shadow_outcomes.labels(model, version, role, outcome)
        for labels in self._roles.get(model, []):
            if labels not in wanted:
                if self.multiproc:
                    self.model_role.labels(*labels).set(0)
                else:
                    self.model_role.remove(*labels)
        for labels in wanted:
            self.model_role.labels(*labels).set(1)
        self._roles[model] = wanted

    def clear_roles(self, model: str) -> None:
        """Drop the role series of an unloaded model."""
        for labels in self._roles.pop(model, []):
            if self.multiproc:
                self.model_role.labels(*labels).set(0)
            else:
                self.model_role.remove(*labels)
