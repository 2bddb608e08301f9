"""The model card's binary section: the operating point, its evidence and its trade-offs."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bounds import evidence
from .markdown import f4, pct, table
from .threshold import choose_threshold, confusion_at

TRADEOFF_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Cost scenarios for "what if the business changes the costs": (label, fp factor, fn factor).
COST_SCENARIOS = (
    ("a missed positive costs half as much", 1.0, 0.5),
    ("a missed positive costs twice as much", 1.0, 2.0),
    ("a missed positive costs 5 times as much", 1.0, 5.0),
    ("a false alarm costs twice as much", 2.0, 1.0),
    ("a false alarm costs 5 times as much", 5.0, 1.0),
)


def _rates(y_pos: np.ndarray, scores: np.ndarray, t: float, cfp: float, cfn: float) -> list[Any]:
    c = confusion_at(y_pos, scores, t)
    n = len(scores)
    fpr = c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else 0.0
    fnr = c["fn"] / (c["fn"] + c["tp"]) if c["fn"] + c["tp"] else 0.0
    cost = 1000 * (cfp * c["fp"] + cfn * c["fn"]) / n
    flagged = (c["tp"] + c["fp"]) / n
    return [fpr, fnr, cost, flagged]


def _target_check(
    ev: dict[str, Any], obj: dict[str, Any], n_pos: int, n_neg: int, pos_name: str
) -> list[str]:
    """A warning line per target the held-out cases already miss, with what one case weighs."""
    out = []
    for key, rate, n, what in (
        ("max_fnr", ev.get("fnr"), n_pos, f"{pos_name} cases"),
        ("max_fpr", ev.get("fpr"), n_neg, "other cases"),
    ):
        target = obj.get(key)
        if target is None or rate is None or rate <= target:
            continue
        step = f"; with {n} {what} held out, one case moves it by {pct(1 / n)}" if n else ""
        out.append(
            f"- **Warning**: the held-out {key[4:].upper()} {pct(rate)} is above the target "
            f"{pct(target)}{step}. Expect `Verdict{key[4:].upper()}AboveTarget` to fire in "
            "production unless more data or a lower-risk threshold closes the gap."
        )
    return out


def tradeoff_rows(
    y_pos: np.ndarray, scores: np.ndarray, chosen: float, cfp: float, cfn: float
) -> list[dict[str, Any]]:
    """Threshold -> FPR, FNR, expected cost per 1,000 predictions, share flagged."""
    # The chosen threshold exactly as the manifest has it, so its row matches the manifest.
    ts = sorted({*(t for t in TRADEOFF_THRESHOLDS if abs(t - chosen) > 1e-9), chosen})
    out = []
    for t in ts:
        fpr, fnr, cost, flagged = _rates(y_pos, scores, t, cfp, cfn)
        out.append(
            {
                "threshold": t,
                "fpr": fpr,
                "fnr": fnr,
                "cost_per_1000": cost,
                "flagged": flagged,
                "chosen": t == chosen,
            }
        )
    return out


def _rule(dec: dict[str, Any]) -> tuple[str, float]:
    return str(dec.get("meet_targets_on", "estimate")), float(
        (dec.get("confidence") or {}).get("level", 0.95)
    )


def _choose(
    sel: dict[str, Any], dec: dict[str, Any], obj: dict[str, Any], cfp: float, cfn: float, **kw: Any
) -> Any:
    """Re-choose the threshold on the scores it was chosen on, the manifest's way."""
    rule, level = _rule(dec)
    args = {"meet_targets_on": rule, "level": level, **kw}
    return choose_threshold(
        np.asarray(sel["y_pos"], dtype=bool),
        np.asarray(sel["scores"], dtype=np.float64),
        cfp,
        cfn,
        obj.get("max_fnr"),
        obj.get("max_fpr"),
        sel.get("source", ""),
        **args,
    )


def _evidence(
    manifest: dict[str, Any], sel: dict[str, Any] | None, pos_name: str, cfp: float, cfn: float
) -> list[str]:
    """How sure the chosen threshold's rates are, target by target, in plain words."""
    ev = manifest["evaluation"].get("threshold_evidence")
    dec, obj = manifest["decision"], manifest["objectives"]
    if not ev:
        return []
    level = ev["level"]
    lines = []
    for key, who, err in (
        ("fnr", f"{pos_name} cases", "missed"),
        ("fpr", "other cases", "wrongly flagged"),
    ):
        e = ev[key]
        text = (
            f"- **{key.upper()}, with its uncertainty**: {pct(e['estimate'])} ({e['errors']} of "
            f"{e['labelled']} {who} {err}, {ev['source']}); with {level:.0%} confidence at most "
            f"{pct(e['upper'])} (one-sided upper bound, Clopper–Pearson)"
        )
        target = e["target"]
        if target is None:
            lines.append(text + "; no target.")
        elif e["met_with_confidence"]:
            lines.append(text + f": the target {pct(target)} is shown with {level:.0%} confidence.")
        elif not e["enough_data"]:
            need = e["min_labelled"]
            lines.append(
                text + f". **{e['labelled']} {who} are too few to show the target {pct(target)} "
                f"with {level:.0%} confidence at any threshold**: "
                + (
                    f"that takes at least {need} labelled {who} with none {err}."
                    if need is not None
                    else "no number of cases shows a rate of exactly 0."
                )
            )
        elif e["met"]:
            alt = ""
            if sel and _rule(dec)[0] == "estimate":
                ch = _choose(sel, dec, obj, cfp, cfn, meet_targets_on="upper_bound")
                alt = (
                    f" Requiring it (`decision.meet_targets_on: upper_bound`) would move the "
                    f"threshold to {ch.threshold:.4f}, flagging {pct(ch.expected_fpr)} of the "
                    f"other cases wrongly, at {1000 * ch.expected_cost:.1f} per 1,000 instead of "
                    f"{1000 * dec['expected_cost_per_row']:.1f}."
                )
            lines.append(
                text + f": the target {pct(target)} is met on the estimate, **not shown with "
                f"{level:.0%} confidence**.{alt}"
            )
        else:
            lines.append(text + f": the target {pct(target)} is not met.")
    return lines


def _meets(sel: dict[str, Any], dec: dict[str, Any], obj: dict[str, Any], t: float) -> str:
    """Whether a threshold meets the targets on the selection scores, the way the choice asks."""
    if obj.get("max_fnr") is None and obj.get("max_fpr") is None:
        return "–"
    rule, level = _rule(dec)
    ev = evidence_at(np.asarray(sel["y_pos"], dtype=bool), np.asarray(sel["scores"]), t, obj, level)
    ok = True
    for e in ev.values():
        if e["target"] is not None:
            on_bound = rule == "upper_bound" and e["enough_data"]
            ok = ok and bool(e["met_with_confidence"] if on_bound else e["met"])
    return "yes" if ok else "no"


def _why_not_cheaper(
    rows: list[dict[str, Any]], n_pos: int, n: int, pos_name: str, cfn: float, sel_rows: str
) -> list[str]:
    """Why held-out rows that look cheaper than the chosen one are not the choice."""
    chosen = next(r for r in rows if r["chosen"])
    cheaper = [r for r in rows if not r["chosen"] and r["cost_per_1000"] < chosen["cost_per_1000"]]
    weight = (
        f"With {n_pos} {pos_name} cases among {n} held out, one missed case more or less moves "
        f"FNR by {pct(1 / n_pos) if n_pos else '–'} and the cost by {1000 * cfn / n:.0f} per 1,000."
    )
    if not cheaper or "cost_selection" not in chosen:
        return [f"These held-out figures are estimates from few cases. {weight}", ""]
    names = ", ".join(f"{r['threshold']:.2f} ({r['cost_per_1000']:.1f})" for r in cheaper)
    there = [
        f"{r['threshold']:.2f} breaks a target"
        if r["targets_met_selection"] == "no"
        else f"{r['threshold']:.2f} costs {r['cost_selection']:.1f}"
        for r in cheaper
    ]
    listed = ", ".join(there[:-1]) + (" and " if len(there) > 1 else "") + there[-1]
    return [
        f"**Why not a cheaper-looking row?** On the held-out cases, {names} per 1,000 look "
        f"cheaper than the chosen threshold ({chosen['cost_per_1000']:.1f}). {weight} The "
        f"threshold was chosen on {sel_rows}, where "
        f"{listed}, against {chosen['cost_selection']:.1f} for the chosen one. The held-out "
        "rows check the choice; choosing on them would fit the luck of a few cases.",
        "",
    ]


def evidence_at(
    y_pos: np.ndarray, scores: np.ndarray, t: float, obj: dict[str, Any], level: float
) -> dict[str, dict[str, Any]]:
    """The FNR and FPR evidence (estimate, upper bound, targets) at one threshold."""
    c = confusion_at(y_pos, scores, t)
    return {
        "fnr": evidence(c["fn"], c["fn"] + c["tp"], obj.get("max_fnr"), level),
        "fpr": evidence(c["fp"], c["fp"] + c["tn"], obj.get("max_fpr"), level),
    }


def operating_point(
    manifest: dict[str, Any], hold: dict[str, Any], name: str
) -> tuple[list[str], list[str]]:
    """The binary operating point section and the summary sentences it yields."""
    dec = manifest["decision"]
    costs = manifest["costs"]
    obj = manifest["objectives"]
    ev = manifest["evaluation"]["holdout"]
    cfp, cfn = float(costs["cost_fp"]), float(costs["cost_fn"])
    t = float(dec["threshold"])
    pos = int(hold["positive"])
    pos_name = hold["classes"][pos]
    y_pos = np.asarray(hold["y"]) == pos
    scores = np.asarray(hold["proba"])[:, pos]
    sel = hold.get("selection")
    targets = []
    if obj.get("max_fnr") is not None:
        targets.append(f"miss at most {pct(obj['max_fnr'])} of {pos_name} cases (max FNR)")
    if obj.get("max_fpr") is not None:
        targets.append(f"flag at most {pct(obj['max_fpr'])} of the other cases wrongly (max FPR)")
    rule, level = _rule(dec)
    lines = [
        "## The operating point in business terms",
        "",
        f"The model gives each case a **score**: its estimated probability of being "
        f"**{pos_name}**. A case is flagged {pos_name} when its score is at or above the "
        f"**threshold {t:.4f}**.",
        "",
        f"- **Costs** set at training time: a false alarm (false positive) costs {cfp:g}, a "
        f"missed {pos_name} case (false negative) costs {cfn:g}.",
        f"- **Targets**: {'; '.join(targets) if targets else 'none; costs alone decide'}"
        + (
            f", each held on its {level:.0%} upper confidence bound where the data allows"
            if targets and rule == "upper_bound"
            else ""
        )
        + ".",
        f"- **Why this threshold**: it {dec['reason']}.",
        f"- **Expected** (on the scores it was chosen on): FPR {pct(dec.get('expected_fpr'))}, "
        f"FNR {pct(dec.get('expected_fnr'))}"
        + ("" if dec.get("constraints_met", True) else "; **the targets could not all be met**")
        + ".",
        *_evidence(manifest, sel, pos_name, cfp, cfn),
        f"- **Measured on the held-out cases** ({ev['n']}): FPR {pct(ev['fpr'])} "
        f"(FPR {f4(ev['fpr'])}), FNR {pct(ev['fnr'])} (FNR {f4(ev['fnr'])}).",
        *_target_check(ev, obj, int(y_pos.sum()), int((~y_pos).sum()), pos_name),
        "",
        "FPR (false positive rate): the share of cases that are *not* "
        f"{pos_name} which the model flags anyway. FNR (false negative rate): the share of "
        f"{pos_name} cases the model lets through.",
        "",
        "### Trade-off table (held-out cases)",
        "",
        "What each threshold would have done on the held-out cases, with today's costs. "
        "Lower thresholds flag more cases: fewer misses, more false alarms."
        + (
            f" The last two columns are the same threshold on the {len(sel['scores'])} "
            f"{sel.get('source', '')} cases the threshold was chosen on."
            if sel
            else ""
        ),
        "",
    ]
    rows = tradeoff_rows(y_pos, scores, t, cfp, cfn)
    header = ["threshold", "FPR", "FNR", "expected cost per 1,000 predictions", "share flagged"]
    if sel:
        header += [f"cost per 1,000, {sel.get('source', '')}", "targets met there"]
        sy = np.asarray(sel["y_pos"], dtype=bool)
        ss = np.asarray(sel["scores"], dtype=np.float64)
        for r in rows:
            r["cost_selection"] = _rates(sy, ss, r["threshold"], cfp, cfn)[2]
            r["targets_met_selection"] = _meets(sel, dec, obj, r["threshold"])
    lines += table(
        header,
        [
            [
                (f"**{r['threshold']:.4f} (chosen)**" if r["chosen"] else f"{r['threshold']:.2f}"),
                pct(r["fpr"]),
                pct(r["fnr"]),
                f"{r['cost_per_1000']:.1f}",
                pct(r["flagged"]),
                *([f"{r['cost_selection']:.1f}", r["targets_met_selection"]] if sel else []),
            ]
            for r in rows
        ],
    )
    sel_rows = (
        f"the {len(sel['scores'])} {sel.get('source', '')} cases "
        f"({len(sel['scores']) / len(y_pos):.1f} times as many)"
        if sel
        else ""
    )
    lines += _why_not_cheaper(rows, int(y_pos.sum()), len(y_pos), pos_name, cfn, sel_rows)
    lines += ["![Error rates and cost against the threshold](cost_curve.png)", ""]
    if sel:
        lines += [
            "### If the business changes the costs",
            "",
            f"The threshold is re-chosen the same way (on the {sel.get('source', '')} scores, "
            "with the same targets) under other costs. Where a target binds, cost changes "
            "that would loosen it move nothing: the target wins.",
            "",
        ]
        scen_rows = []
        scenarios = [
            (f"{label} (FP {cfp * a:g}, FN {cfn * b:g})", cfp * a, cfn * b, obj)
            for label, a, b in COST_SCENARIOS
        ]
        if obj.get("max_fnr") is not None or obj.get("max_fpr") is not None:
            scenarios.append(
                (f"targets dropped, costs unchanged (FP {cfp:g}, FN {cfn:g})", cfp, cfn, {})
            )
        for label, c2fp, c2fn, o in scenarios:
            ch = _choose(sel, dec, o, c2fp, c2fn)
            scen_rows.append(
                [
                    label,
                    f"{ch.threshold:.4f}",
                    pct(ch.expected_fpr),
                    pct(ch.expected_fnr),
                    f"{1000 * ch.expected_cost:.1f}",
                ]
            )
        lines += table(
            ["scenario", "threshold", "FPR", "FNR", "expected cost per 1,000"], scen_rows
        )
    chosen = next(r for r in rows if r["chosen"])
    summary = [
        f"On {ev['n']} held-out cases it let through {pct(ev['fnr'])} of {pos_name} cases "
        f"(FNR) and wrongly flagged {pct(ev['fpr'])} of the others (FPR), flagging "
        f"{pct(chosen['flagged'])} of all cases; expected cost "
        f"{chosen['cost_per_1000']:.1f} per 1,000 predictions at today's costs.",
    ]
    return lines, summary
