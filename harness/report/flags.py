"""Flags on a row: degenerate output (its mark and footnote: what was found, what to try), and a row that did not
learn in its budget (its footnote: how much training it had, and how much taught the rows that did learn)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harness import metrics, store
from harness.report.cells import Cell, degenerate_record
from harness.report.paper import DDAGGER, DEGENERATE_ADVICE, arch_name

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


def optimizer_steps(result: store.Result) -> int | None:
    """About how many optimizer steps a trial took: epochs run times its training images over the batch size."""
    n, epochs, batch = result.metrics.get("n_train"), result.metrics.get("epochs_run"), result.trial.get("batch_size")
    if not (n and epochs and batch):
        return None
    return int(epochs) * math.ceil(int(n) / int(batch))


def _budget(result: store.Result) -> str:
    steps = optimizer_steps(result)
    epochs = int(result.metrics.get("epochs_run") or 0)
    size = f"{result.trial['image_size']} px" if result.trial.get("image_size") else "the arch's own size"
    what = f"{epochs} epoch{'s' if epochs != 1 else ''} of {result.metrics.get('n_train', '?')} images at {size}"
    return f"{steps} optimizer steps ({what})" if steps else what


def above_chance(cell: Cell) -> bool | None:
    """Whether the cell's mean-AUROC interval lies above 0.5 (None: no interval to tell)."""
    stat = cell.stat("auc_macro")
    return None if stat.ci is None else stat.ci[0] > 0.5


def chance_note(named: Sequence[tuple[str, Cell]], everyone: Sequence[Cell]) -> list[str]:
    """The footnote for the rows among (name, cell) that did not learn: a mean-AUROC interval that reaches 0.5
    (degenerate rows have their own). It gives the training each had and the least that taught a row of this
    report: the budget these rows would need at the least. [] when every row learned."""
    low = [(n, c) for n, c in named if not c.degenerate and above_chance(c) is False]
    if not low:
        return []
    by_budget: dict[str, list[str]] = {}  # rows trained alike share one clause
    for n, c in low:
        by_budget.setdefault(_budget(c.results[0]), []).append(f"{n} {c.stat('auc_macro').text(3)}")
    found = "; ".join(f"{', '.join(rows)} after {budget}" for budget, rows in by_budget.items())
    taught: dict[str, int] = {}  # per arch, the fewest steps of a row that learned
    for c in everyone:
        steps = [s for r in c.results if (s := optimizer_steps(r))]
        if above_chance(c) and not c.degenerate and steps:
            taught[c.arch] = min(taught.get(c.arch, min(steps)), min(steps))
    need = (
        "rows here learned with "
        + ", ".join(f"{arch_name(a)} {s}" for a, s in taught.items())
        + " optimizer steps or more; these need more than they had (epochs, subset_fraction) or a GPU"
        if taught
        else "no row of this report learned: give them more epochs or data, or run them on a GPU"
    )
    return [
        f"Not above chance (mean AUROC interval reaches 0.5): {found}. Too little training to tell the models "
        f"apart, not evidence against them: {need}."
    ]
