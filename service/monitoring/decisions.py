"""Rows of the shadow evaluation kept in the feedback store: a shadow's decision on a primary's
prediction, the labelled (primary, shadow, actual) cells they add up to, a promotion, and the
roles in force."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ShadowDecision:
    """What a shadow version decided for a row the primary answered (kept under the primary's
    prediction id; `predicted` is at the shadow's own threshold)."""

    prediction_id: str
    model: str
    version: int
    predicted: int
    score: float
    decided_at: float


@dataclass(frozen=True, slots=True)
class PairCell:
    """Labelled rows that the primary and a shadow both decided, per (primary's class,
    shadow's class, actual class)."""

    primary_predicted: int
    shadow_predicted: int
    actual: int
    count: int


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One promotion decision (promoted, refused) or rollback, with the figures it rested on
    (JSON text) and who asked; `id` is None until stored."""

    model: str
    primary_version: int
    shadow_version: int
    decided_at: float
    outcome: str
    requested_by: str
    figures: str
    id: int | None = None


@dataclass(frozen=True, slots=True)
class RolesRecord:
    """The roles of one model as the store keeps them for every process of a deployment:
    primary and shadow versions (None: not pinned, nothing shadowed), the shadow's sample
    rate, and `revision`, which each change raises by one (0 until stored)."""

    model: str
    primary: int | None
    shadow: int | None
    sample_rate: float
    revision: int = 0
    changed_at: float = 0.0
