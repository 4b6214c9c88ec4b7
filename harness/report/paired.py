"""Paired tests along each axis the grid varied, their table, and the conclusions they support."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations, pairwise

import pandas as pd

from harness import metrics
from harness.report.build import lockstep_notes, warnings_first
from harness.report.cells import Cell, describe, field_order, hashable
from harness.report.context import ALPHA, Comparison, Context, holm
from harness.report.flags import degenerate_note, mark
from harness.report.paper import DASH, DDAGGER
from harness.report.tables import Table

# Settings equal in every other field are all compared pairwise up to this many values of an axis (15 tests);
# beyond it, as in a learning-rate sweep, each value is compared with the next, so the tests grow linearly.
ALL_PAIRS_UP_TO = 6


@dataclass
class AxisPlan:
    """The tests along the axes: (axis, a, b) in order, and the axes tested between neighbouring values only."""

    pairs: list[tuple[str, Cell, Cell]] = field(default_factory=list)
    neighbours_only: list[str] = field(default_factory=list)


def axis_plan(ctx: Context) -> AxisPlan:
    """Pairs of cells equal in every field but one varied axis, ordered along that axis."""
    plan = AxisPlan()
    for axis in (a for a in ctx.axes if a != "seed"):
        together = {axis, *ctx.followers.get(axis, ())}  # fields that vary with this axis are part of it
        groups: dict[str, list[Cell]] = {}
        for c in ctx.cells:
            rest = {k: v for k, v in c.fields.items() if k not in together}
            groups.setdefault(hashable(rest), []).append(c)
        for group in groups.values():
            group = sorted(group, key=lambda c: field_order(axis, c.fields.get(axis)))
            if len(group) <= ALL_PAIRS_UP_TO:
                plan.pairs += [(axis, a, b) for a, b in combinations(group, 2)]
            else:
                plan.pairs += [(axis, a, b) for a, b in pairwise(group)]
                plan.neighbours_only += [axis] if axis not in plan.neighbours_only else []
    return plan


def axis_comparisons(ctx: Context, plan: AxisPlan) -> list[Comparison]:
    """The planned tests that could be made (same test images), Holm-corrected together."""
    shown = [a for a in ctx.axes if a != "seed"]
    out: list[Comparison] = []
    for axis, a, b in plan.pairs:
        cmp = ctx.compare(a, b, name_a=describe(a.fields, shown), name_b=describe(b.fields, shown), axis=axis)
        if cmp is not None:
            out.append(cmp)
    holm(out)
    return out


def _signed(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0 turns a rounded -0.0 into 0.0


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def paired_table(ctx: Context, tests: list[Comparison], plan: AxisPlan) -> Table:
    columns = ["Axis", "A", "B", "AUROC A - B [95% CI]", "p", "p (Holm)"]
    rows = [
        [
            c.axis,
            mark(c.name_a, c.a.degenerate),
            mark(c.name_b, c.b.degenerate),
            f"{_signed(c.diff)} [{_signed(c.ci[0])}, {_signed(c.ci[1])}]",
            _p_text(c.p),
            _p_text(c.p_holm),
        ]
        for c in tests
    ]
    frame = pd.DataFrame(
        [
            {
                "axis": c.axis,
                "a": c.name_a,
                "b": c.name_b,
                "keys_a": c.a.id,
                "keys_b": c.b.id,
                "diff": c.diff,
                "lo": c.ci[0],
                "hi": c.ci[1],
                "p": c.p,
                "p_holm": c.p_holm,
                "unit": c.unit,
                "degenerate": c.degenerate,
            }
            for c in tests
        ],
        columns=["axis", "a", "b", "keys_a", "keys_b", "diff", "lo", "hi", "p", "p_holm", "unit", "degenerate"],
    )
    notes = [
        f"Paired bootstrap of mean AUROC over test patients ({ctx.n_boot} resamples), between settings equal "
        f"in every other field; Holm-corrected over all {len(tests)} tests in this table."
    ]
    if any(c.unit != "patient" for c in tests):
        notes.append(
            "Where a cell has several seeds the test is at the seed level: each resample draws each cell's seeds "
            "with replacement, then the test patients (metrics.paired_seed_bootstrap); the difference is that "
            "of the seed-mean AUROCs, as the tables show them."
        )
    notes += lockstep_notes(ctx)
    seen: dict[str, Cell] = {}
    for c in tests:
        seen.update({c.name_a: c.a, c.name_b: c.b})
    if any(c.degenerate for c in tests):
        notes += degenerate_note(list(seen.items()))
        notes.append(f"Rows with a {DDAGGER} cell are tested and counted in Holm's correction, but name no winner.")
    if plan.neighbours_only:
        notes.append(
            f"Where more than {ALL_PAIRS_UP_TO} values of an axis share every other field, each is tested against "
            f"the next value only: {', '.join(plan.neighbours_only)}."
        )
    return Table(
        "paired_tests",
        f"Paired comparisons along each axis ({ctx.dataset_title})",
        columns,
        rows,
        frame,
        notes=warnings_first(ctx, notes),
    )


def _degenerate_sentence(c: Comparison) -> str:
    bad = [mark(n, True) for n, cell in ((c.name_a, c.a), (c.name_b, c.b)) if cell.degenerate]
    return (
        f"No conclusion from {c.name_a} against {c.name_b} ({_signed(c.diff)} AUROC): the output of "
        f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} degenerate (see the paired comparisons' notes)"
    )


def conclusions(ctx: Context, tests: list[Comparison]) -> tuple[str, str]:
    """A paragraph of one metrics.summary_sentence per paired test (significant ones first), and how it was tested.
    A test involving a degenerate cell names no winner: it says why instead, after the others."""
    ordered = sorted(tests, key=lambda c: (c.degenerate, not c.p_holm < ALPHA, -abs(c.diff)))
    text = " ".join(
        _sentence(
            _degenerate_sentence(c)
            if c.degenerate
            else metrics.summary_sentence(c.name_a, c.name_b, c.result(), alpha=ALPHA)
        )
        for c in ordered
    )
    if not tests:
        text = (
            "No paired comparison could be made: the grid has no two settings that differ in one field only "
            "and share their test images."
        )
    seeded = (
        " (seeds, then patients, where a cell has several seeds)" if any(c.unit != "patient" for c in tests) else ""
    )
    method = (
        f"Differences are in mean AUROC; p-values from a paired patient-level bootstrap{seeded} ({ctx.n_boot} "
        f"resamples), Holm-corrected over all {len(tests)} tests in 'Paired comparisons'; a winner is named "
        f"only where the adjusted p < {ALPHA} and the interval excludes 0, and never for a degenerate "
        f"({DDAGGER}) model."
    )
    return text, method
