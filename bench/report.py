"""Ratios within a round, medians over rounds, targets, and the Markdown results table."""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"

Record = dict[str, Any]

# With --baseline: each of verdict's servers and the baseline's server it is compared with.
BEFORE_OF = {"verdict": "before", "verdict-2w": "before-2w"}


def add_ratios(records: list[Record]) -> None:
    """Add ratio fields to the case records of one round (None where there is no baseline).

    - `ratio_vs_obvious_requests` / `_rows`: against the obvious server's JSON /predict case
      with the same model, rows per request and connections.
    - `ratio_vs_one_worker`: 2 workers against 1 worker, same case.
    - `ratio_vs_ceiling`: rows/s against in-process session.run rows/s at the same batch size.
    - `ratio_vs_rest_binary`: a gRPC case's requests/s against REST binary v2 (`v2-binary`),
      same model, rows and connections (gRPC cases have no obvious-server ratio: the
      obvious server speaks REST only).
    - `per_cpu_vs_one_worker`: 2 workers' requests/s per CPU left to them (2 less the share
      wrk used of the CPU it shares with a worker) against 1 worker's on its own CPU. An
      estimate of the scaling on free cores, shown beside the target, never instead of it.
    - only when the round has a baseline (`before` servers): `ratio_vs_before_requests` /
      `_rows`, verdict against `before` and verdict-2w against `before-2w`, same case.

    `verdict-2w` compares with `verdict` and `before-2w` with `before`, the same way.
    """
    cases = [r for r in records if r["kind"] == "case"]
    ceilings = {(r["model"], r["batch"]): r for r in records if r["kind"] == "ceiling"}

    def find(server: str, model: str, rows: int, conns: int, protocol: str) -> Record | None:
        for r in cases:
            if (
                r["server"],
                r["model"],
                r["rows_per_request"],
                r["connections"],
                r["protocol"],
            ) == (
                server,
                model,
                rows,
                conns,
                protocol,
            ):
                return r
        return None

    for r in cases:
        key = (r["model"], r["rows_per_request"], r["connections"])
        grpc = r["protocol"] == "grpc"
        obvious = find("obvious", *key, "json") if r["server"] != "obvious" and not grpc else None
        rest = find(r["server"], *key, "v2-binary") if grpc else None
        r["ratio_vs_rest_binary"] = _ratio(r["requests_per_s"], rest, "requests_per_s")
        two_workers = r["server"].endswith("-2w")
        one = find(r["server"].removesuffix("-2w"), *key, r["protocol"]) if two_workers else None
        ceiling = ceilings.get((r["model"], r["rows_per_request"]))
        r["ratio_vs_obvious_requests"] = _ratio(r["requests_per_s"], obvious, "requests_per_s")
        r["ratio_vs_obvious_rows"] = _ratio(r["rows_per_s"], obvious, "rows_per_s")
        r["ratio_vs_one_worker"] = _ratio(r["requests_per_s"], one, "requests_per_s")
        r["per_cpu_vs_one_worker"] = None
        share = r.get("wrk_cpu_share")
        if r["ratio_vs_one_worker"] is not None and share is not None and share < 1:
            r["per_cpu_vs_one_worker"] = r["ratio_vs_one_worker"] / (2 - share)
        r["ratio_vs_ceiling"] = _ratio(r["rows_per_s"], ceiling, "rows_per_s")
    if any(r["server"] in BEFORE_OF.values() for r in cases):
        for r in cases:
            name = BEFORE_OF.get(r["server"])
            shape = (r["model"], r["rows_per_request"], r["connections"], r["protocol"])
            before = find(name, *shape) if name else None
            r["ratio_vs_before_requests"] = _ratio(r["requests_per_s"], before, "requests_per_s")
            r["ratio_vs_before_rows"] = _ratio(r["rows_per_s"], before, "rows_per_s")


def _ratio(value: float, base: Record | None, field: str) -> float | None:
    if base is None or not base[field]:
        return None
    return float(value) / float(base[field])


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"


def _per_cpu_groups(records: list[Record]) -> dict[str, list[Record]]:
    """2-worker records by model; by model and server where there are several servers."""
    several = len({r["server"] for r in records}) > 1
    out: dict[str, list[Record]] = {}
    for r in records:
        label = f"{r['model']} {r['server']}" if several else r["model"]
        out.setdefault(label, []).append(r)
    return out


def _select(records: Iterable[Record], **match: Any) -> list[Record]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _values(records: Iterable[Record], field: str) -> list[float]:
    return [float(r[field]) for r in records if r.get(field) is not None]


@dataclass(frozen=True)
class Target:
    """One target of the issue: what is measured, how it is summarised, and the bound."""

    label: str
    bound: str
    values: list[float]
    summary: Callable[[list[float]], float]
    ok: Callable[[float], bool]
    fmt: str

    def cells(self) -> str:
        """`measured | PASS/MISS` (`– | n/a` without data)."""
        if not self.values:
            return "– | n/a"
        value = self.summary(self.values)
        verdict = "PASS" if self.ok(value) else "MISS"
        return f"{format(value, self.fmt)} | {verdict}"

    def row(self) -> str:
        """A Markdown table row: target, bound, measured, PASS/MISS (n/a without data)."""
        return f"| {self.label} | {self.bound} | {self.cells()} |"


def targets(records: list[Record], server: str = "verdict") -> list[Target]:
    """The issue's targets for `server` (and `<server>-2w`), per model where they depend on
    the model; the same list, in the same order, for `verdict` and `before`."""
    cases = _select(records, kind="case")
    servers = _select(records, kind="server")
    models = list(dict.fromkeys(r["model"] for r in cases))
    med = statistics.median
    found: list[Target] = []
    for m in models:
        c1 = _select(cases, server=server, model=m, case="1r-1c-json")
        c32 = _select(cases, server=server, model=m, case="1r-32c-json")
        b64 = _select(cases, server=server, model=m, case="64r-8c-json")
        bin64 = _select(cases, server=server, model=m, case="64r-8c-v2-binary")
        grpc64 = _select(cases, server=server, model=m, case="64r-8c-grpc")
        w2 = _select(cases, server=f"{server}-2w", model=m, case="1r-32c-json")
        found += [
            Target(
                f"{m}: 1 row, 1 conn, req/s vs obvious",
                "≥ 1.3×",
                _values(c1, "ratio_vs_obvious_requests"),
                med,
                lambda v: v >= 1.3,
                ".2f",
            ),
            Target(
                f"{m}: 1 row, 1 conn, p50 (ms)",
                "≤ 0.25",
                _values(c1, "p50_ms"),
                med,
                lambda v: v <= 0.25,
                ".3f",
            ),
            Target(
                f"{m}: 1 row, 32 conn, req/s vs obvious",
                "≥ 1.5×",
                _values(c32, "ratio_vs_obvious_requests"),
                med,
                lambda v: v >= 1.5,
                ".2f",
            ),
            Target(
                f"{m}: 1 row, 32 conn, p99 (ms)",
                "≤ 10",
                _values(c32, "p99_ms"),
                med,
                lambda v: v <= 10,
                ".2f",
            ),
            Target(
                f"{m}: 64 rows, 8 conn, JSON rows/s vs obvious",
                "≥ 3×",
                _values(b64, "ratio_vs_obvious_rows"),
                med,
                lambda v: v >= 3,
                ".2f",
            ),
            Target(
                f"{m}: 64 rows, 8 conn, binary v2 rows/s vs in-process ceiling",
                "≥ 10%",
                [100 * v for v in _values(bin64, "ratio_vs_ceiling")],
                med,
                lambda v: v >= 10,
                ".1f",
            ),
            Target(
                f"{m}: 64 rows, 8 conn, gRPC req/s vs REST binary v2",
                "≥ 1×",
                _values(grpc64, "ratio_vs_rest_binary"),
                med,
                lambda v: v >= 1,
                ".2f",
            ),
            Target(
                f"{m}: 2 workers vs 1 worker, 1 row, 32 conn req/s",
                "≥ 1.6×",
                _values(w2, "ratio_vs_one_worker"),
                med,
                lambda v: v >= 1.6,
                ".2f",
            ),
        ]
    verdict_servers = _select(servers, server=server)
    found += [
        Target(
            "peak RSS, both models loaded (MB, max over rounds)",
            "≤ 120",
            _values(verdict_servers, "rss_peak_mb"),
            max,
            lambda v: v <= 120,
            ".1f",
        ),
        Target(
            "startup to ready (s)",
            "≤ 1",
            _values(verdict_servers, "startup_s"),
            med,
            lambda v: v <= 1,
            ".3f",
        ),
    ]
    return found


def has_baseline(records: list[Record]) -> bool:
    """Whether the run measured a baseline checkout (`before` servers)."""
    return any(r.get("server") in BEFORE_OF.values() for r in records)


def shown_path(path: str, root: Path = ROOT) -> str:
    """A path as docs/benchmarks.md may show it, never naming this machine's folders: relative
    to the repository when inside it or beside it (`.`, `bench/results`, `../before`), else
    only its last part."""
    p = Path(path)
    if not p.is_absolute():
        return path
    if p.is_relative_to(root):
        return str(p.relative_to(root))
    if p.is_relative_to(root.parent):
        return str(Path("..") / p.relative_to(root.parent))
    return p.name or path


def shown_command(command: str, root: Path = ROOT) -> str:
    """The bench's command line with every absolute path in it as `shown_path` shows it."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shown = []
    for word in words:
        option, eq, value = word.partition("=")
        if eq and option.startswith("-"):
            shown.append(f"{option}={shown_path(value, root)}")
        else:
            shown.append(shown_path(word, root))
    return shlex.join(shown)


def _checkout(info: Record | None) -> str:
    if not info:
        return "?"
    path = shown_path(str(info.get("path", "?")))
    text = "this repository" if path == "." else f"`{path}`"
    if info.get("commit"):
        text += f" at `{str(info['commit'])[:12]}`"
        text += " with uncommitted changes" if info.get("dirty") else ""
    return text


def _targets_section(records: list[Record]) -> list[str]:
    """The targets table: one Measured/Result pair, or before and after with a baseline."""
    if not has_baseline(records):
        return [
            "| Target | Bound | Measured | Result |",
            "|---|---|---|---|",
            *(t.row() for t in targets(records)),
        ]
    pairs = zip(targets(records, "before"), targets(records, "verdict"), strict=True)
    return [
        "| Target | Bound | Before | Result | After | Result |",
        "|---|---|---|---|---|---|",
        *(f"| {a.label} | {a.bound} | {b.cells()} | {a.cells()} |" for b, a in pairs),
    ]


BEFORE_AFTER_FIELDS = (
    ("req/s", "requests_per_s", ".0f"),
    ("rows/s", "rows_per_s", ".0f"),
    ("p50 ms", "p50_ms", ".3f"),
    ("p99 ms", "p99_ms", ".3f"),
)


def _before_after_row(cases: list[Record], after: str, model: str, case: str) -> str:
    a = _select(cases, server=after, model=model, case=case)
    b = _select(cases, server=BEFORE_OF[after], model=model, case=case)
    cells = [model, case, str(a[0]["workers"])]
    for _, field, fmt in BEFORE_AFTER_FIELDS:
        cells += [_spread(_values(b, field), fmt), _spread(_values(a, field), fmt)]
    cells.append(_spread(_values(a, "ratio_vs_before_requests"), ".2f"))
    return "| " + " | ".join(cells) + " |"


def before_after(records: list[Record]) -> list[str]:
    """Per case, the baseline (`before`) beside this checkout (`after`): req/s, rows/s, p50,
    p99, and after/before req/s taken within each round."""
    meta = next((r for r in records if r["kind"] == "meta"), {})
    cases = _select(records, kind="case")
    header = ["Model", "Case", "Workers"]
    for label, _, _ in BEFORE_AFTER_FIELDS:
        header += [f"{label} before", f"{label} after"]
    header.append("after/before (req/s)")
    lines = [
        "### Before and after",
        "",
        f"Before: {_checkout(meta.get('baseline'))}; after: {_checkout(meta.get('checkout'))}. "
        "*after/before*: req/s of this checkout over the baseline's, taken within each round.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for after in BEFORE_OF:
        keys = dict.fromkeys((r["model"], r["case"]) for r in _select(cases, server=after))
        lines += [_before_after_row(cases, after, model, case) for model, case in keys]
    return [*lines, ""]


def render(records: list[Record]) -> str:
    """The results section: run facts, targets, per-case table, servers, ceiling; with a
    baseline, the targets for both and a before/after table."""
    meta = next((r for r in records if r["kind"] == "meta"), {})
    cases = _select(records, kind="case")
    lines = [
        f"Run `{shown_command(str(meta.get('command', '?')))}` on {meta.get('date', '?')} "
        f"({meta.get('mode', '?')}: {meta.get('rounds', '?')} round(s), "
        f"{meta.get('warmup_s', '?')} s warm-up + {meta.get('duration_s', '?')} s measured "
        "per case).",
        f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores; server on CPU "
        f"{meta.get('server_cpu', '?')}, wrk on CPU {meta.get('wrk_cpu', '?')} "
        "(2 workers: server on both, sharing with wrk); wrk's scheduling policy "
        f"`{meta.get('wrk_policy', 'normal')}` (auto: SCHED_BATCH only on a CPU it shares "
        "with the server).",
        "Cells: median over rounds [min–max].",
        "",
        "### Targets",
        "",
        *_targets_section(records),
        "",
        *(before_after(records) if has_baseline(records) else []),
        "### Cases",
        "",
        "| Model | Case | Server | req/s | rows/s | p50 ms | p90 ms | p99 ms | errors "
        "| × obvious (req/s) | wrk CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["model"], r["case"], r["server"]) for r in cases))
    for model, case, server in keys:
        rs = _select(cases, model=model, case=case, server=server)
        lines.append(
            f"| {model} | {case} | {server} "
            f"| {_spread(_values(rs, 'requests_per_s'), '.0f')} "
            f"| {_spread(_values(rs, 'rows_per_s'), '.0f')} "
            f"| {_spread(_values(rs, 'p50_ms'), '.3f')} "
            f"| {_spread(_values(rs, 'p90_ms'), '.3f')} "
            f"| {_spread(_values(rs, 'p99_ms'), '.3f')} "
            f"| {sum(int(r['errors']) for r in rs)} "
            f"| {_spread(_values(rs, 'ratio_vs_obvious_requests'), '.2f')} "
            f"| {_spread([100 * v for v in _values(rs, 'wrk_cpu_share')], '.0f')}% |"
        )
    two = [r for r in cases if r.get("per_cpu_vs_one_worker") is not None]
    if two:
        lines += [
            "",
            "2 workers share CPU 1 with wrk (the *wrk CPU* column: its share of that CPU). "
            "Their requests/s per CPU left to them (2 less wrk's share), against 1 worker's "
            "on a CPU of its own: "
            + "; ".join(
                f"{label} {_spread(_values(rs, 'per_cpu_vs_one_worker'), '.2f')}"
                for label, rs in _per_cpu_groups(two).items()
            )
            + " (1.00 = each CPU left does as much as one worker alone; an estimate, not the "
            "target above).",
        ]
    servers = _select(records, kind="server")
    lines += [
        "",
        "### Servers",
        "",
        "| Server | Workers | CPUs | Startup to ready (s) | Peak RSS (MB, VmHWM summed) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["server"] for r in servers):
        rs = _select(servers, server=name)
        lines.append(
            f"| {name} | {rs[0]['workers']} | {rs[0]['server_cpus']} "
            f"| {_spread(_values(rs, 'startup_s'), '.3f')} "
            f"| {_spread(_values(rs, 'rss_peak_mb'), '.1f')} |"
        )
    ceilings = _select(records, kind="ceiling")
    lines += [
        "",
        "### In-process ceiling (session.run, one thread, server CPU)",
        "",
        "| Model | Batch | rows/s |",
        "|---|---|---|",
    ]
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in ceilings):
        rs = _select(ceilings, model=model, batch=batch)
        lines.append(f"| {model} | {batch} | {_spread(_values(rs, 'rows_per_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def write_docs(path: Path, markdown: str) -> None:
    """Replace the text between the bench markers in `path` (append the markers if absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{START_MARKER}\n{markdown}{END_MARKER}"
    if START_MARKER in text and END_MARKER in text:
        head, rest = text.split(START_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
