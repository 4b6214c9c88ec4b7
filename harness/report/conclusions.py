"""The report's summary: its headline findings in a few sentences, one or two per axis, largest effect first.

Built from the same tests as 'Paired comparisons' (one family, one verdict per pair), so it cannot say what a
table does not: a finding is a group of significant tests along one axis between the same two values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.report.cells import Cell, describe, field_order, field_text
from harness.report.context import Comparison, Context
from harness.report.flags import above_chance, mark
from harness.report.paired import signed
from harness.report.paper import arch_name

# How an axis is named in a sentence; any other field goes by its own name.
AXIS_WORDS = {"arch": "Architecture", "pretrained": "Initialisation", "loss": "Loss"}


def value_text(axis: str, value: Any) -> str:
    """One value of an axis as the tables name it: ResNet152, pretrained or scratch, loss=focal."""
    if axis == "arch":
        return arch_name(str(value))
    if axis == "pretrained":
        return "pretrained" if value else "scratch"
    return f"{axis}={field_text(value, axis)}"


def setting_text(cell: Cell, axes: Sequence[str]) -> str:
    """The fields a test held fixed, e.g. 'scratch, loss=bce' ('' where nothing else varies); the init and the
    arch first, as the tables name a cell."""
    first = [a for a in ("pretrained", "arch") if a in axes]
    return ", ".join(value_text(a, cell.fields.get(a)) for a in [*first, *(a for a in axes if a not in first)])


def _p(p: float) -> str:
    return "adjusted p < 0.001" if p < 0.001 else f"adjusted p = {p:.3f}"


@dataclass
class Finding:
    """The significant tests along one axis in which `winner` beats `loser`, each read as winner minus loser."""

    axis: str
    winner: Any
    loser: Any
    tests: list[Comparison]  # significant, diff > 0, largest first
    compared: int  # tests of these two values along the axis, significant or not (degenerate ones aside)

    @property
    def effect(self) -> float:
        return self.tests[0].diff

    def clause(self, fixed: Sequence[str]) -> str:
        top = self.tests[0]
        words = f"{value_text(self.axis, self.winner)} beats {value_text(self.axis, self.loser)}"
        band = f"{signed(top.diff)} [{signed(top.ci[0])}, {signed(top.ci[1])}], {_p(top.p_holm)}"
        where = setting_text(top.a, fixed)
        if len(self.tests) == 1:
            of = f"1 of {self.compared} settings" if self.compared > 1 else ""
            inside = "; ".join(w for w in (where, of) if w)
            return f"{words}{f' ({inside})' if inside else ''}: {band}"
        spread = f"by {self.tests[-1].diff:.3f} to {top.diff:.3f} mean AUROC"
        return f"{words} in {len(self.tests)} of {self.compared} settings, {spread} (largest: {where}, {band})"


@dataclass
class AxisSummary:
    axis: str
    fixed: list[str]  # the other axes, which each test of this one held fixed
    findings: list[Finding] = field(default_factory=list)
    null: list[Comparison] = field(default_factory=list)  # tested, not significant, neither side degenerate
    followers: list[str] = field(default_factory=list)  # fields that vary with this axis (cells.lockstep)

    @property
    def effect(self) -> float:
        return max((f.effect for f in self.findings), default=0.0)

    def sentences(self) -> list[str]:
        # Fields that change with the axis change with every one of its tests: the name says so, or a reader
        # would credit the axis alone (in the smoke profile, AlexNet also trains longer and larger).
        name = AXIS_WORDS.get(self.axis, self.axis) + (f" (with {', '.join(self.followers)})" if self.followers else "")
        out = []
        if self.findings:
            out.append(f"{name}: " + "; ".join(f.clause(self.fixed) for f in self.findings) + ".")
        if len(self.null) == 1:
            c = self.null[0]
            out.append(
                f"{name}: no significant difference between {c.name_a} and {c.name_b} "
                f"({signed(c.diff)} [{signed(c.ci[0])}, {signed(c.ci[1])}], {_p(c.p_holm)})."
            )
        elif self.null:
            diffs = [c.diff for c in self.null]
            other = "the other " if self.findings else ""
            out.append(
                f"{name}: no significant difference in {other}{len(self.null)} pairs (A - B from {signed(min(diffs))} "
                f"to {signed(max(diffs))}; smallest adjusted p {min(c.p_holm for c in self.null):.3f})."
            )
        return out


@dataclass
class Summary:
    """What the report concludes: the lead, the axes' sentences in order of effect, then what names no winner."""

    lead: list[str]
    axes: list[AxisSummary]
    tail: list[str]

    def sentences(self) -> list[str]:
        return [*self.lead, *(s for a in self.axes for s in a.sentences()), *self.tail]


def _axis_summary(axis: str, fixed: list[str], tests: list[Comparison], followers: list[str]) -> AxisSummary:
    out = AxisSummary(axis, fixed, followers=list(followers))

    def values(c: Comparison) -> tuple[str, str]:
        return repr(c.a.fields.get(axis)), repr(c.b.fields.get(axis))

    groups: dict[tuple[str, str], list[Comparison]] = {}  # (winner, loser) -> its significant tests
    compared = Counter(frozenset(values(c)) for c in tests if not c.degenerate)
    for c in tests:
        if c.degenerate:
            continue
        if not c.significant:
            out.null.append(c)
            continue
        c = c if c.diff > 0 else c.flipped()
        groups.setdefault(values(c), []).append(c)
    for pair, group in groups.items():
        group.sort(key=lambda c: -c.diff)
        winner, loser = group[0].a.fields.get(axis), group[0].b.fields.get(axis)
        out.findings.append(Finding(axis, winner, loser, group, compared[frozenset(pair)]))
    out.findings.sort(key=lambda f: (-f.effect, field_order(axis, f.winner)))
    return out


def summarise(ctx: Context, tests: list[Comparison]) -> Summary:
    """The summary of a report whose family of tests is `tests` (paired.family_comparisons)."""
    shown = [a for a in ctx.axes if a != "seed"]
    lead = []
    if ctx.results:
        significant = sum(c.significant for c in tests)
        placeholder = (
            " (pretrained: unverified weights, not ImageNet's; nothing here is a claim about ImageNet pretraining)"
            if "pretrained" in shown and ctx.unverified_weights
            else ""
        )
        cells = f"{len(ctx.results)} trial{'s' if len(ctx.results) != 1 else ''} in {len(ctx.cells)} settings"
        mixed = [c for c in tests if c.axis not in shown and not c.degenerate]  # a table row against its reference
        across = (
            f" ({len(mixed)} between table rows that differ in more than one field, "
            f"{sum(c.significant for c in mixed)} of them significant; see 'Paired comparisons')"
            if mixed
            else ""
        )
        lead.append(
            f"{cells}{placeholder}; {len(tests)} paired test{'s' if len(tests) != 1 else ''} of mean AUROC, "
            f"Holm-adjusted as one family: {significant} significant{across}."
            if tests
            else f"{cells}{placeholder}; no paired test could be made (no two settings differ in one field only "
            "and share their test images)."
        )
        best = _best(ctx.cells)
        if best is not None:
            stat = best.stat("auc_macro")
            lead.append(f"Highest mean AUROC: {describe(best.fields, shown)}, {stat.text(3)}.")
    axes = []
    for axis in shown:
        along = [c for c in tests if c.axis == axis]
        if along:
            axes.append(_axis_summary(axis, [a for a in shown if a != axis], along, ctx.followers.get(axis, [])))
    axes.sort(key=lambda a: -a.effect)  # stable: axes without a finding keep the grid's order
    tail = []
    low = _not_learned(ctx.cells)
    if low:
        tail.append(
            f"Not above chance (mean AUROC interval reaches 0.5), too little training to judge the model: {low} "
            "(the tables' notes give each one's budget and the least that taught another)."
        )
    bad = [c for c in tests if c.degenerate]
    if bad:
        names = sorted({mark(n, True) for c in bad for n, x in ((c.name_a, c.a), (c.name_b, c.b)) if x.degenerate})
        tail.append(
            f"{len(bad)} test{'s' if len(bad) != 1 else ''} involving {', '.join(names)} (degenerate output) "
            f"name{'s' if len(bad) == 1 else ''} no winner."
        )
    return Summary(lead, axes, tail)


def _best(cells: Sequence[Cell]) -> Cell | None:
    scored = [(c.stat("auc_macro").value, c) for c in cells if not c.degenerate]
    scored = [(v, c) for v, c in scored if v is not None and math.isfinite(v)]
    return max(scored, key=lambda vc: vc[0])[1] if scored else None


def _not_learned(cells: Sequence[Cell]) -> str:
    """The settings that did not learn, counted per arch: 'every ResNet152 setting (4), 3 of 4 InceptionV3 ...'."""
    parts = []
    for arch in dict.fromkeys(c.arch for c in cells):
        mine = [c for c in cells if c.arch == arch]
        low = [c for c in mine if not c.degenerate and above_chance(c) is False]
        if low:
            name = arch_name(arch)
            n = len(mine)
            parts.append(f"every {name} setting ({n})" if len(low) == n else f"{len(low)} of {n} {name} settings")
    return ", ".join(parts)
