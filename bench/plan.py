"""What a run measures: the cases (rows, connections, protocol) and each mode's timings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

MODELS = ("breast-cancer", "digits")
TARGETS = ("all", "verdict", "obvious")


@dataclass(frozen=True)
class Case:
    """One measured load shape: rows per request, connections, protocol, server kind."""

    model: str
    rows: int
    connections: int
    protocol: str
    # "single": verdict (1 worker) and the obvious server; "workers": verdict with 2 workers.
    group: str = "single"
    # Requests in flight on each connection (HTTP/2 streams; gRPC only).
    streams: int = 1

    @property
    def name(self) -> str:
        """A stable case name, e.g. `64r-8c-v2-binary`, `1r-1c-32s-grpc`."""
        streams = f"{self.streams}s-" if self.streams > 1 else ""
        return f"{self.rows}r-{self.connections}c-{streams}{self.protocol}"


@dataclass(frozen=True)
class Plan:
    """How long and how often: the mode's settings."""

    mode: str
    rounds: int
    warmup_s: int
    duration_s: int
    ceiling_s: float
    cases: tuple[Case, ...]


def full_cases(models: tuple[str, ...], subset: bool = False) -> tuple[Case, ...]:
    """Every case for `models`; `subset` keeps only the 64-row cases for all but the first."""
    cases: list[Case] = []
    for index, model in enumerate(models):
        keep_all = not subset or index == 0
        if keep_all:
            cases.append(Case(model, 1, 1, "json"))
            cases.append(Case(model, 1, 32, "json"))
            # gRPC as its clients use it: one channel (connection), requests multiplexed.
            cases.append(Case(model, 1, 1, "grpc"))
            cases.append(Case(model, 1, 1, "grpc", streams=32))
        for protocol in ("json", "v2-json", "v2-binary", "grpc"):
            cases.append(Case(model, 64, 8, protocol))
        if keep_all:
            cases.append(Case(model, 1, 32, "json", group="workers"))
    return tuple(cases)


def make_plan(args: argparse.Namespace) -> Plan:
    """Pick the mode's defaults, then apply explicit overrides."""
    models = tuple(args.models.split(",")) if args.models else MODELS
    if args.smoke:
        smoke = (Case(models[0], 1, 1, "json"), Case(models[0], 1, 1, "grpc"))
        plan = Plan("smoke", 1, 1, 1, 0.2, smoke)
    elif args.quick:
        plan = Plan("quick", 1, 2, 4, 1.0, full_cases(models, subset=True))
    else:
        plan = Plan("full", 3, 3, 8, 2.0, full_cases(models))
    return Plan(
        plan.mode,
        args.rounds or plan.rounds,
        args.warmup or plan.warmup_s,
        args.duration or plan.duration_s,
        plan.ceiling_s,
        plan.cases,
    )
