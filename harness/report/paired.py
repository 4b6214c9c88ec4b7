"""Paired tests along each axis the grid varied, their table, and the conclusions they support."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import combinations, pairwise

import pandas as pd

from harness.report.build import family_words, warnings_first
from harness.report.cells import Cell, describe, field_order, hashable, lockstep_notes
from harness.report.context import ALPHA, Comparison, Context
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


def family_comparisons(ctx: Context) -> list[Comparison]:
    """Every test of the report's one family (Context.settle), named by the grid's axes: the axis tests in
    plan order, then the tables' tests against their reference that differ in more than one axis."""
    shown = [a for a in ctx.axes if a != "seed"]
    out = []
    for c in ctx.family.values():
        axis = c.axis or "+".join(a for a in shown if c.a.fields.get(a) != c.b.fields.get(a))
        out.append(replace(c, name_a=describe(c.a.fields, shown), name_b=describe(c.b.fields, shown), axis=axis))
    return out


def signed(x: float) -> str:
    """A difference to 3 places with its sign, e.g. +0.012 (the summary's too)."""
    return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0 turns a rounded -0.0 into 0.0


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# The CSV's columns: the first ten are the claim, the rest say which trials and how. Named even when there are no
# tests, so that an empty paired_tests.csv still has its header.
PAIRED_COLUMNS = [
    "a",
    "b",
    "axis",
    "diff",
    "ci_low",
    "ci_high",
    "p",
    "p_adjusted",
    "family",
    "significant",
    "keys_a",
    "keys_b",
    "unit",
    "degenerate",
]


def paired_table(ctx: Context, tests: list[Comparison], plan: AxisPlan) -> Table:
    """The paired comparisons: one row per test of the report's family, with its adjusted p and its verdict."""
    columns = ["Axis", "A", "B", "AUROC A - B [95% CI]", "p", "p (adjusted)", "Significant"]
    rows = [
        [
            c.axis,
            mark(c.name_a, c.a.degenerate),
            mark(c.name_b, c.b.degenerate),
            f"{signed(c.diff)} [{signed(c.ci[0])}, {signed(c.ci[1])}]",
            _p_text(c.p),
            _p_text(c.p_holm),
            "yes" if c.significant else "no",
        ]
        for c in tests
    ]
    return Table(
        "paired_tests",
        f"Paired comparisons along each axis ({ctx.dataset_title})",
        columns,
        rows,
        _paired_frame(tests),
        notes=warnings_first(ctx, _paired_notes(ctx, tests, plan)),
    )


def _paired_frame(tests: list[Comparison]) -> pd.DataFrame:
    """paired_tests.csv: one row per pair, its numbers unrounded."""
    records = [
        {
            "a": c.name_a,
            "b": c.name_b,
            "axis": c.axis,
            "diff": c.diff,
            "ci_low": c.ci[0],
            "ci_high": c.ci[1],
            "p": c.p,
            "p_adjusted": c.p_holm,
            "family": c.family,
            "significant": c.significant,
            "keys_a": c.a.id,
            "keys_b": c.b.id,
            "unit": c.unit,
            "degenerate": c.degenerate,
        }
        for c in tests
    ]
    return pd.DataFrame(records, columns=PAIRED_COLUMNS)


def _paired_notes(ctx: Context, tests: list[Comparison], plan: AxisPlan) -> list[str]:
    """The notes under the paired table: the test, seed-level tests, degenerate cells, neighbour-only axes."""
    notes = [
        f"Paired bootstrap of mean AUROC over test patients ({ctx.n_boot} resamples), between settings equal "
        "in every other field and between each table row and its reference; p from the bootstrap test (the "
        f"difference over the SD of its resampled values, normal reference, as pROC's roc.test), Holm-adjusted "
        f"over {family_words(ctx)}. Significant: adjusted p < {ALPHA} and an interval that excludes 0; every "
        "table, figure and sentence of this report gives a pair this verdict."
    ]
    if any(c.unit != "patient" for c in tests):
        notes.append(
            "Where a cell has several seeds the test is at the seed level: each resample draws each cell's seeds "
            "with replacement, then the test patients (metrics.paired_seed_bootstrap), the same seed values for "
            "both cells where they ran the same seeds (seed s shares split, start and batch order); the difference "
            "is that of the seed-mean AUROCs, as the tables show them."
        )
    notes += lockstep_notes(ctx.followers, ctx.cells)
    seen: dict[str, Cell] = {}
    for c in tests:
        seen.update({c.name_a: c.a, c.name_b: c.b})
    if any(c.degenerate for c in tests):
        notes += degenerate_note(list(seen.items()))
        notes.append(
            f"Rows with a {DDAGGER} cell are tested and counted in Holm's correction, but are never significant."
        )
    if plan.neighbours_only:
        notes.append(
            f"Where more than {ALL_PAIRS_UP_TO} values of an axis share every other field, each is tested against "
            f"the next value only: {', '.join(plan.neighbours_only)}."
        )
    return notes


def method_note(ctx: Context, tests: list[Comparison]) -> str:
    """How the summary's tests were made: the statistic, the resampling, the correction and the verdict's rule."""
    seeded = (
        " (seeds, then patients, where a cell has several seeds)" if any(c.unit != "patient" for c in tests) else ""
    )
    return (
        f"Differences are in mean AUROC (A - B, with its 95% interval); p-values from a paired patient-level "
        f"bootstrap test{seeded} ({ctx.n_boot} resamples), Holm-adjusted over {family_words(ctx)}, the tests of "
        f"'Paired comparisons'; a winner is named only where the adjusted p < {ALPHA} and the interval excludes 0, "
        f"and never for a degenerate ({DDAGGER}) model."
    )
