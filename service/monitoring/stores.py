"""Which feedback store a URL names (`sqlite:///...` or `postgresql://...`), what both stores
offer, and the way to open one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from service.monitoring.decisions import PairCell, PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.records import (
    CaptureRecord,
    CellCount,
    LabelledExample,
    LabelRecord,
    RecordResult,
)
from service.monitoring.store import FeedbackStore

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


class LabelStore(Protocol):
    """The feedback store the data plane uses: the SQLite file or the shared PostgreSQL
    database. Every method blocks (call it off the event loop, from at most `threads`
    threads) and raises `StoreUnavailableError` when the store cannot answer."""

    threads: int

    def migrate(self) -> int: ...
    def schema_version(self) -> int: ...
    def use_as_is(self) -> None: ...
    def record(self, items: Sequence[LabelRecord]) -> list[RecordResult]: ...
    def cell_counts(
        self, model: str, now: float, time_basis: str = "received"
    ) -> list[CellCount]: ...
    def conflict_counts(self, model: str) -> dict[int, int]: ...
    def labelled_since(self, model: str, version: int, issued_since: float) -> int: ...
    def conflicts(self, prediction_id: str) -> list[tuple[int, int, float]]: ...
    def label_of(self, prediction_id: str) -> int | None: ...
    def capture(self, rows: Sequence[CaptureRecord], max_rows: int) -> int: ...
    def prune_captures(self, before: float, model: str | None = None) -> int: ...
    def captured(self, model: str) -> int: ...
    def labelled_examples(
        self,
        model: str,
        version: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[LabelledExample]: ...
    def models(self) -> Iterable[str]: ...
    def close(self) -> None: ...
    def record_shadow_decisions(self, items: Sequence[ShadowDecision]) -> int: ...
    def shadow_decisions_of(self, prediction_ids: Sequence[str]) -> list[ShadowDecision]: ...
    def paired_cells(self, model: str, primary: int, shadow: int) -> list[PairCell]: ...
    def shadow_decided(self, model: str, version: int) -> int: ...
    def record_promotion(self, record: PromotionRecord) -> int: ...
    def promotions(self, model: str, limit: int = 100) -> list[PromotionRecord]: ...
    def stored_roles(self) -> list[RolesRecord]: ...
    def keep_roles(self, record: RolesRecord, revision: int | None) -> int | None: ...
    def clear_roles(self, model: str) -> bool: ...


def is_postgres(url: str) -> bool:
    """Whether the URL names a PostgreSQL database."""
    return url.startswith(POSTGRES)


def sqlite_target(url: str) -> str:
    """What SQLite opens for a `sqlite:///` URL: `sqlite:///var/f.db` is the relative path
    `var/f.db`, `sqlite:////data/f.db` the absolute `/data/f.db`; parameters make a SQLite
    URI (`sqlite:////data/f.db?mode=ro` -> `file:/data/f.db?mode=ro`)."""
    if not url.startswith(SQLITE):
        raise ValueError(f"not a SQLite URL: {url!r}")
    path, _, query = url.removeprefix(SQLITE).partition("?")
    return f"file:{path}?{query}" if query else path


def sqlite_path(url: str) -> str:
    """The file a `sqlite:///` URL names, without its parameters."""
    return url.removeprefix(SQLITE).partition("?")[0]


def sqlite_folder(url: str) -> Path:
    """The folder that holds the SQLite file of a `sqlite:///` URL."""
    return Path(sqlite_path(url)).resolve().parent


def missing_sqlite_file(url: str) -> str | None:
    """The path a `sqlite:///` URL names when no file is there, else None (also for
    PostgreSQL): a command that reads a store as it is refuses such a URL rather than let
    SQLite create an empty file at a mistyped path."""
    if is_postgres(url):
        return None
    path = sqlite_path(url)
    return None if Path(path).is_file() else path


def open_store(url: str) -> LabelStore:
    """The store a URL names; nothing is connected until its first call."""
    if is_postgres(url):
        from service.monitoring.postgres import PostgresStore

        return PostgresStore(url)
    return FeedbackStore(sqlite_target(url))


def describe(url: str) -> str:
    """The URL as logs may show it (no password)."""
    if is_postgres(url):
        from service.monitoring.postgres_connection import redact

        return redact(url)
    return url
