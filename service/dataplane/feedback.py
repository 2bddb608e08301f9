"""Ground truth: checks labels against signed prediction ids, stores them once, counts outcomes,
and reads labelled quality back from the store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service.dataplane.feedback_items import parse_time, resolve_label
from service.errors import InvalidFeedbackError, ModelNotFoundError, StoreUnavailableError
from service.monitoring.decisions import ShadowDecision
from service.monitoring.ids import PredictionIds, PredictionRef
from service.monitoring.quality import (
    CONFIDENCE,
    confusion_matrix,
    summarise,
    training_figures,
)
from service.monitoring.records import TIME_COLUMNS, CellCount, LabelRecord, RecordResult
from service.monitoring.stores import LabelStore

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_ITEMS = 1000
# A clock a little ahead of ours is tolerated; a label "observed" later than that is refused.
FUTURE_TOLERANCE_S = 300.0
# Label value for items whose model cannot be told (no valid id): keeps the series bounded.
NO_MODEL = ""
WINDOWS = ("last_hour", "last_day", "all_time")

ManifestOf = Callable[[str, int], Mapping[str, Any] | None]
VersionsOf = Callable[[str], list[int]]
# (predictions this process has issued for a model version, since when) or None when unknown.
PredictionsIssued = Callable[[str, int], tuple[int, float] | None]


class _Family(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any: ...


class FeedbackMetrics(Protocol):
    """The metric families the feedback side updates (owned by service.metrics)."""

    @property
    def feedback_items(self) -> _Family:
        """verdict_feedback_items_total{model,result}"""

    @property
    def labeled_predictions(self) -> _Family:
        """verdict_labeled_predictions_total{model,version,predicted,actual}"""

    @property
    def outcomes(self) -> _Family:
        """verdict_outcomes_total{model,version,outcome}"""

    @property
    def label_delay(self) -> _Family:
        """verdict_label_delay_seconds{model}"""

    @property
    def shadow_outcomes(self) -> _Family:
        """verdict_shadow_outcomes_total{model,version,role,outcome}"""


@dataclass(slots=True)
class _Checked:
    """One item after checking: a record for the store, or an answer already decided."""

    record: LabelRecord | None
    ref: PredictionRef | None
    answer: dict[str, Any]

    @classmethod
    def refuse(
        cls, pid: str | None, result: str, message: str, ref: PredictionRef | None = None
    ) -> _Checked:
        return cls(None, ref, {"prediction_id": pid, "result": result, "message": message})


class FeedbackService:
    """Takes ground-truth labels, records each exactly once, and keeps the quality metrics.

    Nothing is kept in memory between requests: the store is the state, so a restart (or
    another replica sharing the store) loses nothing, and quality is read from the store.
    """

    def __init__(
        self,
        store: LabelStore,
        ids: PredictionIds,
        manifest_of: ManifestOf,
        metrics: FeedbackMetrics,
        *,
        max_items: int = MAX_ITEMS,
        versions_of: VersionsOf | None = None,
        predictions_issued: PredictionsIssued | None = None,
        clock: Callable[[], float] = time.time,
        shadowed: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.ids = ids
        self.manifest_of = manifest_of
        self.metrics = metrics
        self.max_items = max_items
        self.versions_of = versions_of
        self.predictions_issued = predictions_issued
        self.clock = clock
        # Whether a model has a shadow now: then an accepted label also scores the shadow's
        # decision on the same prediction (read from the store: any replica may have made it).
        self.shadowed = shadowed
        self._executor = ThreadPoolExecutor(
            max_workers=store.threads, thread_name_prefix="feedback-store"
        )

    async def open(self) -> None:
        """Create or migrate the store schema (off the event loop)."""
        await self._run(self.store.migrate)

    async def close(self) -> None:
        """Close the store and stop its thread."""
        await self._run(self.store.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the store's own threads, off the event loop.

        Dedicated threads, as many as the store can use (one for SQLite, which serialises on
        its lock anyway; one per pooled connection for PostgreSQL): a store that blocks
        (locked file, slow disk, unreachable server) then holds no thread inference needs.
        """
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call_store(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the store's threads (for the shadow evaluation)."""
        return await self._run(fn, *args)

    def rebuild(self) -> None:
        """Nothing to rebuild: quality is computed from the store on each read."""

    # -- labels ----------------------------------------------------------------------------

    def _check(self, item: Any, now: float) -> _Checked:
        """Verify one item; the answer is filled in unless the item goes to the store."""
        if not isinstance(item, dict):
            return _Checked.refuse(None, "invalid", "an item must be an object")
        pid = item.get("prediction_id")
        if not isinstance(pid, str):
            return _Checked.refuse(None, "invalid", "prediction_id must be a string")
        # Parsed first so that even a malformed item is counted under its model.
        ref = self.ids.parse(pid)
        label = item.get("label")
        extra = set(item) - {"prediction_id", "label", "observed_at"}
        if label is None:
            return _Checked.refuse(pid, "invalid", "label is required", ref)
        if isinstance(label, bool) or not isinstance(label, str | int):
            message = "label must be a class name or a class index"
            return _Checked.refuse(pid, "invalid", message, ref)
        if extra:
            fields = ", ".join(sorted(map(str, extra)))
            return _Checked.refuse(pid, "invalid", f"unexpected fields: {fields}", ref)
        if ref is None:
            return _Checked.refuse(pid, "unknown", "not a prediction id issued by this service")
        manifest = self.manifest_of(ref.model, ref.version)
        classes = list(manifest["output"]["classes"]) if manifest is not None else []
        if manifest is None or ref.class_index >= len(classes):
            message = f"model {ref.model!r} version {ref.version} is unknown"
            return _Checked.refuse(pid, "unknown", message, ref)
        actual = resolve_label(label, classes)
        if actual is None:
            message = (
                f"label {label!r:.80} is not a class of model {ref.model!r} "
                f"version {ref.version}: {classes}"
            )
            return _Checked.refuse(pid, "invalid", message, ref)
        observed_at = now
        if item.get("observed_at") is not None:
            parsed = parse_time(item["observed_at"])
            if parsed is None:
                message = "observed_at must be RFC 3339 with an offset, or epoch seconds"
                return _Checked.refuse(pid, "invalid", message, ref)
            if parsed > now + FUTURE_TOLERANCE_S:
                return _Checked.refuse(pid, "invalid", "observed_at is in the future", ref)
            observed_at = parsed
        record = LabelRecord(
            prediction_id=pid,
            model=ref.model,
            version=ref.version,
            predicted=ref.class_index,
            actual=actual,
            score=ref.score,
            issued_at=ref.issued_at,
            observed_at=observed_at,
            received_at=now,
        )
        return _Checked(record, ref, {"prediction_id": pid})

    async def submit(self, items: Any) -> list[dict[str, Any]]:
        """An answer per item, in order. Accepted labels are committed before this returns.

        Raises InvalidFeedbackError for a body that is not a list or holds too many items, and
        StoreUnavailableError when the store cannot commit (then nothing is acknowledged).
        """
        if not isinstance(items, list):
            raise InvalidFeedbackError("items must be a list")
        if not items:
            raise InvalidFeedbackError("items must not be empty")
        if len(items) > self.max_items:
            raise InvalidFeedbackError(
                f"{len(items)} items in one request; at most {self.max_items}", "too_many_items"
            )
        now = self.clock()
        checked = [self._check(item, now) for item in items]
        records = [c.record for c in checked if c.record is not None]
        results, decisions = await self._run(self._record, records) if records else ([], {})
        stored = iter(results)

        answers = []
        for record, ref, answer in ((c.record, c.ref, c.answer) for c in checked):
            if record is not None:
                answer["result"] = next(stored)
                if answer["result"] == "accepted":
                    self._count_accepted(record)
                    for decision in decisions.get(record.prediction_id, ()):
                        self._count_paired(record, decision)
                elif answer["result"] == "conflict":
                    answer["message"] = "this prediction already has a different label; kept it"
            model = ref.model if ref is not None else NO_MODEL
            self.metrics.feedback_items.labels(model=model, result=answer["result"]).inc()
            answers.append(answer)
        return answers

    def _record(
        self, records: list[LabelRecord]
    ) -> tuple[list[RecordResult], dict[str, list[ShadowDecision]]]:
        """Record labels; then read the shadow decisions of the accepted ones (of models with
        a shadow). Labels are committed first: a failed read only leaves the shadow's
        outcome metrics short (the store, which promotion reads, has every row)."""
        results = self.store.record(records)
        wanted = [
            r.prediction_id
            for r, result in zip(records, results, strict=True)
            if result == "accepted" and self.shadowed is not None and self.shadowed(r.model)
        ]
        decisions: dict[str, list[ShadowDecision]] = {}
        if wanted:
            try:
                for d in self.store.shadow_decisions_of(wanted):
                    decisions.setdefault(d.prediction_id, []).append(d)
            except StoreUnavailableError as exc:
                log.warning("shadow decisions of %d labels not read: %s", len(wanted), exc)
        return results, decisions

    def _count_paired(self, record: LabelRecord, decision: ShadowDecision) -> None:
        """The outcomes of a labelled row that a shadow also decided, for both roles: tp, fp,
        tn, fn for a binary model; correct, wrong for a multiclass one (each wrong class
        costs 1, as the promotion rule prices it)."""
        manifest = self.manifest_of(record.model, record.version)
        if manifest is None:
            return
        positive: int | None = None
        if manifest.get("task") == "binary":
            classes = list(manifest["output"]["classes"])
            if manifest["output"].get("positive_class") not in classes:
                return
            positive = classes.index(manifest["output"]["positive_class"])
        for role, version, predicted in (
            ("primary", record.version, record.predicted),
            ("shadow", decision.version, decision.predicted),
        ):
            if positive is None:
                outcome = "correct" if predicted == record.actual else "wrong"
            else:
                said, was = predicted == positive, record.actual == positive
                outcome = ("t" if said == was else "f") + ("p" if said else "n")
            self.metrics.shadow_outcomes.labels(
                model=record.model, version=str(version), role=role, outcome=outcome
            ).inc()

    def _count_accepted(self, record: LabelRecord) -> None:
        manifest = self.manifest_of(record.model, record.version)
        if manifest is None:  # unloaded between the check and now: the store has it anyway
            return
        classes = list(manifest["output"]["classes"])
        version = str(record.version)
        self.metrics.labeled_predictions.labels(
            model=record.model,
            version=version,
            predicted=classes[record.predicted],
            actual=classes[record.actual],
        ).inc()
        positive = manifest["output"].get("positive_class")
        if manifest.get("task") == "binary" and positive in classes:
            k = classes.index(positive)
            said, was = record.predicted == k, record.actual == k
            outcome = ("t" if said == was else "f") + ("p" if said else "n")
            self.metrics.outcomes.labels(model=record.model, version=version, outcome=outcome).inc()
        delay = max(0.0, record.observed_at - record.issued_at)
        self.metrics.label_delay.labels(model=record.model).observe(delay)

    # -- quality ---------------------------------------------------------------------------

    def _read(
        self, model: str, now: float, time_basis: str
    ) -> tuple[list[CellCount], dict[int, int]]:
        return (
            self.store.cell_counts(model, now, time_basis),
            self.store.conflict_counts(model),
        )

    async def quality(self, model: str, time_basis: str = "received") -> dict[str, Any]:
        """Confusion matrix, rates, objectives, cost and coverage per version, from the store."""
        if time_basis not in TIME_COLUMNS:
            raise InvalidFeedbackError(
                f"time_basis must be one of {sorted(TIME_COLUMNS)}", "invalid_query"
            )
        now = self.clock()
        cells, conflicts = await self._run(self._read, model, now, time_basis)
        versions = {c.version for c in cells}
        if self.versions_of is not None:
            versions.update(self.versions_of(model))
        if not versions:
            raise ModelNotFoundError(f"model {model!r} is neither served nor labelled")
        answers = []
        for version in sorted(versions, reverse=True):
            mine = [c for c in cells if c.version == version]
            answers.append(await self._version_quality(model, version, mine, conflicts))
        return {
            "model": model,
            "generated_at": now,
            "time_basis": time_basis,
            "windows": {"last_hour": 3600, "last_day": 86400, "all_time": None},
            "confidence": CONFIDENCE,
            "versions": answers,
        }

    async def _version_quality(
        self,
        model: str,
        version: int,
        cells: list[CellCount],
        conflicts: dict[int, int],
    ) -> dict[str, Any]:
        manifest = self.manifest_of(model, version)
        loaded = manifest is not None
        needed = 1 + max((max(c.predicted, c.actual) for c in cells), default=0)
        if manifest is None or len(manifest["output"]["classes"]) < needed:
            # labelled once, no longer served (or not as this manifest says): classes by index
            loaded = False
            manifest = {"task": None, "output": {"classes": [str(i) for i in range(needed)]}}
        n_classes = len(manifest["output"]["classes"])
        windows = {
            name: summarise(
                confusion_matrix(
                    ((c.predicted, c.actual, getattr(c, name)) for c in cells), n_classes
                ),
                manifest,
            )
            for name in WINDOWS
        }
        return {
            "version": version,
            "manifest_loaded": loaded,
            "task": manifest.get("task"),
            "classes": list(manifest["output"]["classes"]),
            "positive_class": manifest["output"].get("positive_class"),
            "objectives": manifest.get("objectives"),
            "costs": manifest.get("costs"),
            "training": training_figures(manifest),
            "conflicts": conflicts.get(version, 0),
            "coverage": await self._coverage(model, version, windows["all_time"]["labelled"]),
            "windows": windows,
        }

    async def _coverage(self, model: str, version: int, labelled: int) -> dict[str, Any]:
        issued = self.predictions_issued(model, version) if self.predictions_issued else None
        if issued is None:
            return {
                "labelled": labelled,
                "predictions_issued": None,
                "ratio": None,
                "basis": "labelled count only: the service keeps no log of predictions",
            }
        count, since = issued
        labelled_since = await self._run(self.store.labelled_since, model, version, since)
        return {
            "labelled": labelled,
            "predictions_issued": count,
            "since": since,
            "ratio": labelled_since / count if count else None,
            "basis": "labels for predictions issued since `since` over the predictions this "
            "process counted since then (other replicas' predictions are not counted)",
        }
