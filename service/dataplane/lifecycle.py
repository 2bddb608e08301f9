"""Shadow evaluation and promotion: a model's roles, the paired comparison of its primary and
its shadow on the same labelled rows, and the promotion and rollback decisions, each kept in
the feedback store with the figures it rested on and who asked (docs/lifecycle.md).

The rule: the shadow is promoted only when at least `min_labels` labelled rows were decided
by both versions, and the one-sided upper confidence bound (at `confidence`) of the mean
difference in cost per row, shadow minus primary, is below zero: the shadow costs less, and
chance alone is unlikely to explain it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from service.dataplane.roles import SharedRoles
from service.errors import BadRequestError, ConflictError, VerdictError
from service.models.repository import Repository
from service.models.roles import Roles, check_rate
from service.monitoring.comparison import compare
from service.monitoring.decisions import PairCell, PromotionRecord
from service.monitoring.stores import LabelStore

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]
ManifestOf = Callable[[str, int], Mapping[str, Any] | None]

PROMOTED, REFUSED, ROLLED_BACK, FAILED = "promoted", "refused", "rolled_back", "failed"
MAX_REQUESTED_BY = 200

log = logging.getLogger(__name__)


def key_identity(admin_key: str | None) -> str:
    """How the promotions table names the admin key that asked (never the key itself)."""
    if not admin_key:
        return "no admin key"
    return "admin-key:" + hashlib.sha256(admin_key.encode("utf-8")).hexdigest()[:12]


def _record(r: PromotionRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "model": r.model,
        "primary_version": r.primary_version,
        "shadow_version": r.shadow_version,
        "decided_at": r.decided_at,
        "outcome": r.outcome,
        "requested_by": r.requested_by,
        "figures": orjson.loads(r.figures),
    }


class Lifecycle:
    """Roles, comparison, promotion and rollback of the models of one server."""

    def __init__(
        self,
        repository: Repository,
        store: LabelStore,
        run: Run,
        shared: SharedRoles,
        *,
        min_labels: int,
        confidence: float,
        admin_identity: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.store = store
        self.run = run
        self.shared = shared
        self.min_labels = min_labels
        self.confidence = confidence
        self.admin_identity = admin_identity
        self.clock = clock
        # One role change of a model at a time in this process: two promotions asked at once
        # must not both read the same roles and swap twice (across processes, the store's
        # compare-and-set refuses the second; see SharedRoles).
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def roles(self, model: str) -> dict[str, Any]:
        """The roles in force: the primary, the shadow and its sample rate."""
        return {"name": model, **self.repository.roles(model).record()}

    async def set_shadow(self, model: str, body: Any) -> dict[str, Any]:
        """Mark a version shadow (`{"version": 2, "sample_rate": 0.1}`) or stop shadowing
        (`{"version": null}`); the primary in force is pinned, so it stays primary."""
        # Bad input and an unknown model or version are answered before the store is asked:
        # a 4xx whether it answers or not.
        version, rate = _shadow_body(body)
        self.repository.resolve(model)
        if version is not None:
            await self.shared.check(model, Roles(None, version))
        async with self._lock(model):
            # Decide on the roles in force in the whole deployment, at the revision read.
            revision = (await self.shared.sync()).get(model)
            return await self._set_shadow(model, version, rate, revision)

    async def _set_shadow(
        self, model: str, version: int | None, rate: float | None, revision: int | None
    ) -> dict[str, Any]:
        current = self.repository.roles(model)
        if rate is None:
            rate = current.sample_rate
        primary = self.repository.pinned_primary(model)
        if primary is None:
            # Nothing pinned yet: the latest other served version answers (so a new version
            # that arrived in the repository can be made shadow before it answers anyone).
            others = [v for v in self.repository.versions(model) if v != version]
            if not others:
                raise ConflictError(
                    f"model {model!r} serves no other version to be primary", "no_primary"
                )
            primary = current.primary if current.primary != version else max(others)
        if version is not None and version == primary:
            raise ConflictError(
                f"version {version} is the primary of {model!r}; a shadow must be another version",
                "shadow_is_primary",
            )
        await self.shared.change(model, Roles(primary, version, rate), revision)
        log.info("model %s: shadow %s at %.3g of the primary's requests", model, version, rate)
        return self.roles(model)

    def _settings(self, body: Any) -> tuple[float, int, str]:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequestError("the body must be a JSON object")
        unknown = set(body) - {"confidence", "min_labels", "requested_by"}
        if unknown:
            raise BadRequestError(f"unexpected fields: {sorted(unknown)}")
        confidence = body.get("confidence", self.confidence)
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not 0.5 < confidence < 1
        ):
            raise BadRequestError(f"confidence must be a number in (0.5, 1); got {confidence!r}")
        min_labels = body.get("min_labels", self.min_labels)
        if isinstance(min_labels, bool) or not isinstance(min_labels, int) or min_labels < 2:
            raise BadRequestError(f"min_labels must be an integer >= 2; got {min_labels!r}")
        who = body.get("requested_by", "")
        if not isinstance(who, str) or len(who) > MAX_REQUESTED_BY:
            raise BadRequestError(
                f"requested_by must be text of at most {MAX_REQUESTED_BY} characters"
            )
        return float(confidence), min_labels, who

    def _who(self, requested_by: str, header: str | None) -> str:
        asked = requested_by.strip() or (header or "").strip()[:MAX_REQUESTED_BY] or "unnamed"
        return f"{asked} ({self.admin_identity})"

    async def comparison(
        self, model: str, confidence: float | None = None, min_labels: int | None = None
    ) -> dict[str, Any]:
        """The primary and the shadow in force, compared on the labelled rows both decided."""
        roles = self.repository.roles(model)
        answer: dict[str, Any] = {"name": model, "roles": roles.record()}
        if roles.shadow is None or roles.primary is None:
            answer["comparison"] = None
            return answer
        manifest = self.repository.manifest(model, roles.primary) or {}
        cells, decided = await self.run(self._read, model, roles.primary, roles.shadow)
        answer["shadow_decisions"] = decided
        answer["comparison"] = compare(
            roles.primary,
            roles.shadow,
            cells,
            manifest,
            self.confidence if confidence is None else confidence,
            self.min_labels if min_labels is None else min_labels,
        )
        return answer

    def _read(self, model: str, primary: int, shadow: int) -> tuple[list[PairCell], int]:
        return (
            self.store.paired_cells(model, primary, shadow),
            self.store.shadow_decided(model, shadow),
        )

    async def promote(self, model: str, body: Any, header: str | None) -> dict[str, Any]:
        """Make the shadow primary when the rule allows it (see `_promote`)."""
        confidence, min_labels, who = self._settings(body)
        who = self._who(who, header)
        self.repository.resolve(model)
        async with self._lock(model):
            revision = (await self.shared.sync()).get(model)
            return await self._promote(model, confidence, min_labels, who, revision)

    async def _promote(
        self, model: str, confidence: float, min_labels: int, who: str, revision: int | None
    ) -> dict[str, Any]:
        """Make the shadow primary when the rule allows it (the old primary becomes the
        shadow); otherwise ConflictError (409) with the figures. Either way the decision is
        kept in the store and logged. The roles change only if they are still at `revision`
        in the store (the one they were read at before deciding)."""
        roles = self.repository.roles(model)
        if roles.shadow is None or roles.primary is None:
            raise ConflictError(f"model {model!r} has no shadow to promote", "no_shadow")
        manifest = self.repository.manifest(model, roles.primary) or {}
        cells, _ = await self.run(self._read, model, roles.primary, roles.shadow)
        figures = compare(roles.primary, roles.shadow, cells, manifest, confidence, min_labels)
        outcome = PROMOTED if figures["promotable"] else REFUSED
        record = PromotionRecord(
            model,
            roles.primary,
            roles.shadow,
            self.clock(),
            outcome,
            who,
            orjson.dumps(figures).decode(),
        )
        record_id = await self.run(self.store.record_promotion, record)
        log.info(
            "promotion of %s v%d over v%d %s; asked by %s; figures %s",
            model,
            roles.shadow,
            roles.primary,
            outcome,
            who,
            record.figures,
        )
        if outcome == REFUSED:
            p, s = figures["primary"], figures["shadow"]
            raise ConflictError(
                f"promotion of {model!r} v{roles.shadow} over v{roles.primary} refused "
                f"(decision {record_id}): "
                + "; ".join(figures["reasons"])
                + f". Cost per row on {figures['paired_labels']} paired labels: shadow "
                f"{_fmt(s['cost_per_row'])}, primary {_fmt(p['cost_per_row'])}",
                "promotion_refused",
            )
        await self._swap(
            model, Roles(roles.shadow, roles.primary, roles.sample_rate), revision, record
        )
        return {
            **_record(replace(record, id=record_id)),
            "roles": self.roles(model),
        }

    async def rollback(self, model: str, body: Any, header: str | None) -> dict[str, Any]:
        """Undo the last promotion of a model (see `_rollback`)."""
        if body is not None and (not isinstance(body, dict) or set(body) - {"requested_by"}):
            raise BadRequestError('the body may only hold {"requested_by": "<who>"}')
        asked = (body or {}).get("requested_by") or ""
        if not isinstance(asked, str) or len(asked) > MAX_REQUESTED_BY:
            raise BadRequestError(
                f"requested_by must be text of at most {MAX_REQUESTED_BY} characters"
            )
        who = self._who(asked, header)
        self.repository.resolve(model)
        async with self._lock(model):
            revision = (await self.shared.sync()).get(model)
            return await self._rollback(model, who, revision)

    async def _rollback(self, model: str, who: str, revision: int | None) -> dict[str, Any]:
        """Undo the last promotion of a model: the version it replaced is primary again, and
        the promoted one its shadow. Kept in the store like a promotion; the roles change only
        if they are still at `revision` in the store."""
        roles = self.repository.roles(model)
        history = await self.run(self.store.promotions, model, 100)
        last = next((r for r in history if r.outcome in (PROMOTED, ROLLED_BACK)), None)
        if last is None or last.outcome != PROMOTED or roles.primary != last.shadow_version:
            raise ConflictError(
                f"model {model!r} has no promotion to roll back (its primary v{roles.primary} "
                "was not made primary by the last promotion)",
                "nothing_to_roll_back",
            )
        if last.primary_version not in self.repository.versions(model):
            raise ConflictError(
                f"version {last.primary_version} of {model!r}, which the last promotion "
                "replaced, is not served; load it (make it the shadow) first",
                "rollback_target_not_served",
            )
        figures = {"rolls_back": last.id, "restored": last.primary_version}
        record = PromotionRecord(
            model,
            roles.primary or 0,
            last.primary_version,
            self.clock(),
            ROLLED_BACK,
            who,
            orjson.dumps(figures).decode(),
        )
        record_id = await self.run(self.store.record_promotion, record)
        log.info(
            "rollback of %s to v%d (undoes decision %s); asked by %s",
            model,
            last.primary_version,
            last.id,
            who,
        )
        await self._swap(
            model,
            Roles(last.primary_version, last.shadow_version, roles.sample_rate),
            revision,
            record,
        )
        return {
            **_record(replace(record, id=record_id)),
            "roles": self.roles(model),
        }

    async def _swap(
        self, model: str, roles: Roles, revision: int | None, decided: PromotionRecord
    ) -> None:
        """Apply the roles a kept decision grants, if the stored roles are still at the
        `revision` it was decided on; when that fails (another process changed the roles
        meanwhile, a version vanished, the store fails), keep a `failed` row beside the
        decision."""
        try:
            await self.shared.change(model, roles, revision)
        except VerdictError as exc:
            log.error(
                "model %s: the roles of decision %s were not applied: %s",
                model,
                decided.outcome,
                exc.message,
            )
            failed = replace(
                decided,
                outcome=FAILED,
                decided_at=self.clock(),
                figures=orjson.dumps({"error": exc.message}).decode(),
            )
            try:
                await self.run(self.store.record_promotion, failed)
            except VerdictError:
                log.exception("model %s: the failed swap could not be kept", model)
            raise

    async def history(self, model: str, limit: int = 100) -> dict[str, Any]:
        """A model's promotion decisions and rollbacks, newest first."""
        rows = await self.run(self.store.promotions, model, limit)
        return {"name": model, "decisions": [_record(r) for r in rows]}


def _shadow_body(body: Any) -> tuple[int | None, float | None]:
    """The version and the sample rate (None: the one in force) a shadow call asks for, or
    BadRequestError."""
    if not isinstance(body, dict) or "version" not in body:
        raise BadRequestError('body must be {"version": <n> | null, "sample_rate": <0..1>}')
    unknown = set(body) - {"version", "sample_rate"}
    if unknown:
        raise BadRequestError(f"unexpected fields: {sorted(unknown)}")
    version = body["version"]
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise BadRequestError(f"version must be a version number or null; got {version!r}")
    if "sample_rate" not in body:
        return version, None
    try:
        return version, check_rate(body["sample_rate"])
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"
