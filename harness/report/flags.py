"""Degenerate output in the report: the mark on a value, and the footnote that says what was found and what to try."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness import metrics, store
from harness.report.cells import Cell, degenerate_record
from harness.report.paper import DDAGGER, DEGENERATE_ADVICE

RULE_SHORT = (
    f"at least {metrics.DEGENERATE_TRIAL_SHARE:.0%} of its findings have {metrics.DEGENERATE_SATURATED_SHARE:.0%} "
    f"or more of their test outputs saturated (float32 sigmoid exactly 0 or 1) or fewer than "
    f"{metrics.DEGENERATE_MIN_DISTINCT} distinct values"
)


def mark(text: str, flagged: Any) -> str:
    """text with the degenerate mark when flagged (a Cell's degenerate seeds, a bool)."""
    return text + DDAGGER if flagged else text


def _logit(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}"


def what_was_found(result: store.Result) -> str:
    """One trial's degenerate record in words, e.g. '95% of test outputs saturated (median |logit| 700), ...'."""
    d = degenerate_record(result)
    per = d.get("per_finding") or {}
    parts = []
    if d.get("saturated_share") is not None:
        text = f"{d['saturated_share']:.0%} of test outputs saturated"
        if d.get("median_abs_logit") is not None:
            text += f" (median |logit| {_logit(d['median_abs_logit'])})"
        parts.append(text)
    constant = [n for n, f in per.items() if f.get("n_distinct", 2) < metrics.DEGENERATE_MIN_DISTINCT]
    if constant:
        parts.append(f"{len(constant)} finding(s) with one output value for every image")
    parts.append(f"{len(d.get('findings') or [])} of {len(per)} findings degenerate")
    if d.get("scores") == "logits":
        parts.append("its AUROC ranks the logits")
    else:
        parts.append("no logits saved: its AUROC ranks float32 probabilities, tied wherever saturated")
    return ", ".join(parts[:-1]) + "; " + parts[-1]


def advice(results: Sequence[store.Result]) -> str:
    """What to try: precise BatchNorm first, unless these trials already had it."""
    used = sorted({int(r.trial.get("bn_recalibrate") or 0) for r in results})
    if 0 in used:
        return DEGENERATE_ADVICE
    done = ", ".join(map(str, used))
    return f"These trials recalibrated BatchNorm already (bn_recalibrate: {done}): try a lower learning rate or more steps."


def degenerate_note(named: Sequence[tuple[str, Cell]]) -> list[str]:
    """The footnote for the degenerate rows among (name, cell): what was found in each, the rule, what to try;
    [] when none is degenerate."""
    found, bad = [], []
    for name, cell in named:
        for r in cell.degenerate:
            seed = f" (seed {r.trial.get('seed')} of {len(cell.results)})" if len(cell.results) > 1 else ""
            found.append(f"{name}{seed}: {what_was_found(r)}")
            bad.append(r)
    if not found:
        return []
    return [
        f"{DDAGGER} degenerate output, left out of every 'best' claim: " + "; ".join(found) + ". "
        f"A trial is degenerate when {RULE_SHORT}. " + advice(bad)
    ]


def finding_note() -> str:
    return (
        f"{DDAGGER} on a value: that finding's output is degenerate ({metrics.DEGENERATE_SATURATED_SHARE:.0%} or "
        f"more of its test outputs saturated, or fewer than {metrics.DEGENERATE_MIN_DISTINCT} distinct values) "
        f"in the trial (in a seed of it): its AUROC describes ties. {DDAGGER} on a column: the whole trial is."
    )
