"""The report's tables of results: the paper's Tables 1-2 with their tests, per finding, the whole grid, Grad-CAM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.cells import Cell, describe, field_order, field_text, trial_name, varied_fields
from harness.report.context import ALPHA, Comparison, Context, holm
from harness.report.paper import (
    DAGGER,
    DASH,
    GRID_COLUMNS,
    PAPER_COLUMNS,
    PAPER_DIGITS,
    PAPER_SOURCE,
    PAPER_VALUES,
    PM,
    PUBLISHED_AUROC,
    SYNTHETIC_WARNING,
    WEIGHTS_WARNING,
    arch_name,
)
from harness.report.tables import Table

CAM_SCORES = (("pointing", "pointing game"), ("energy", "energy in box"), ("iou", "IoU"))


def ci_note(ctx: Context, cells: Sequence[Cell], *, losses: bool = False) -> str:
    m = ctx.results[0].metrics
    level = float(m.get("ci_level", 0.95))
    text = (
        f"[lo, hi]: {level:.0%} bootstrap interval over test {m.get('ci_unit', 'patient')}s "
        f"({m.get('n_boot', '?')} resamples)."
    )
    if any(len(c.results) > 1 for c in cells):
        text += (
            f" Several seeds: mean {PM} standard deviation over seeds; the AUROC interval combines "
            "test-set and seed variation (metrics.combine_seeds); other metrics have no combined interval."
        )
    if losses and any(r.metrics.get("bce_ci") is None for c in cells for r in c.results):
        text += " BCE and focal loss are point values: metrics.json holds no interval for them."
    return text


def synthetic_first(ctx: Context, notes: list[str]) -> list[str]:
    """A table's notes, led by the synthetic-data warning unless every result is on NIH."""
    return notes if ctx.is_nih else [SYNTHETIC_WARNING, *notes]


# --- Tables 1-2 ---------------------------------------------------------------------------------------


@dataclass
class PaperPlan:
    """Table 1 or 2 before its tests: its rows (cells), their names, the reference row and the ranking by AUC."""

    number: int
    pretrained: bool
    stem: str
    fig_stem: str
    what: str
    cells: list[Cell]
    names: list[str]
    ref: int
    ranked: list[int]  # rows with an AUC, best first

    @property
    def runner_up_test(self) -> bool:
        """Best against runner-up is a test of its own when the reference is neither of them."""
        return len(self.ranked) >= 2 and self.ref not in self.ranked[:2]

    def pairs(self) -> list[tuple[Cell, Cell]]:
        """The family Holm corrects: every row against the reference, plus best against runner-up."""
        out = [(c, self.cells[self.ref]) for i, c in enumerate(self.cells) if i != self.ref]
        if self.runner_up_test:
            out.append((self.cells[self.ranked[0]], self.cells[self.ranked[1]]))
        return out


def paper_plan(ctx: Context, *, number: int, pretrained: bool, stem: str, fig_stem: str, what: str) -> PaperPlan | None:
    cells = [c for c in ctx.cells if bool(c.fields.get("pretrained")) == pretrained]
    if not cells:
        return None
    shown = [a for a in varied_fields([r for c in cells for r in c.results]) if a not in ("pretrained", "seed")]
    # The reference arch may have no row here (e.g. only pretrained runs of it); the first row stands in.
    ref = next((i for i, c in enumerate(cells) if c.arch == ctx.reference), 0)
    aucs = [c.stat("auc_macro").value for c in cells]
    ranked = sorted((i for i in range(len(cells)) if aucs[i] is not None), key=lambda i: -aucs[i])
    names = [describe(c.fields, shown) for c in cells]
    return PaperPlan(number, pretrained, stem, fig_stem, what, cells, names, ref, ranked)


def paper_table(ctx: Context, plan: PaperPlan) -> Table:
    """Table 1 or 2: one row per cell with the paper's columns, significance marks and, on NIH, the paper's values."""
    cells, names, ref, ranked = plan.cells, plan.names, plan.ref, plan.ranked
    vs_ref: dict[int, Comparison] = {}
    for i, c in enumerate(cells):
        if i != ref and (cmp := ctx.compare(c, cells[ref], name_a=names[i], name_b=names[ref])):
            vs_ref[i] = cmp
    family = list(vs_ref.values())
    extra = None
    if plan.runner_up_test:
        best, runner = ranked[:2]
        extra = ctx.compare(cells[best], cells[runner], name_a=names[best], name_b=names[runner])
        family += [extra] if extra else []
    holm(family)
    top: Comparison | None = None  # best row minus runner-up, from the family above
    if len(ranked) >= 2:
        best, runner = ranked[:2]
        if ref == best:
            top = vs_ref[runner].flipped() if runner in vs_ref else None
        elif ref == runner:
            top = vs_ref.get(best)
        else:
            top = extra

    columns = ["Model"] + [c.header for c in PAPER_COLUMNS]
    paper = PAPER_VALUES[plan.pretrained] if ctx.is_nih else {}
    if paper:
        columns += [f"Paper {c.header}" for c in PAPER_COLUMNS]
    rows, records, bold = [], [], set()
    auc_col = 1 + [c.name for c in PAPER_COLUMNS].index("auc")
    for i, c in enumerate(cells):
        row = [names[i]]
        rec = {"model": names[i], "arch": c.arch, "seeds": len(c.results), "keys": " ".join(r.key for r in c.results)}
        for col in PAPER_COLUMNS:
            s = c.stat(col.metric)
            text = s.text(col.digits)
            if col.name == "auc" and i in vs_ref and vs_ref[i].p_holm < ALPHA:
                text += DAGGER
            row.append(text)
            rec.update(s.columns(col.name, std=True))
        cmp = vs_ref.get(i)
        rec.update(
            {
                "reference": i == ref,
                "auc_diff_vs_ref": cmp.diff if cmp else None,
                "p_vs_ref": cmp.p if cmp else None,
                "p_holm_vs_ref": cmp.p_holm if cmp else None,
                "sig_vs_ref": bool(cmp and cmp.p_holm < ALPHA),
            }
        )
        significant_best = top is not None and i == ranked[0] and top.diff > 0 and top.p_holm < ALPHA
        if significant_best:
            bold.add((i, auc_col))
        rec["auc_best_significant"] = significant_best
        if paper:
            published = paper.get(c.arch, {})
            for col in PAPER_COLUMNS:
                v = published.get(col.name)
                row.append(DASH if v is None else f"{v:.{PAPER_DIGITS[plan.pretrained]}f}")
                rec[f"paper_{col.name}"] = v
        rows.append(row)
        records.append(rec)

    title = f"Table {plan.number}. {plan.what} ({ctx.dataset_title})"
    notes = [
        ci_note(ctx, cells, losses=True) + " F1: macro over findings at the paper's fixed 0.5 threshold.",
        f"{DAGGER} mean AUROC differs from the reference row ({names[ref]}) at p < {ALPHA}: paired bootstrap "
        f"over test patients (both models scored on the same {ctx.n_boot} patient resamples), Holm-corrected "
        f"over the {len(family)} comparison(s) made in this table.",
        "Bold: best AUC, only where it beats the runner-up under that same test (Holm-adjusted p < "
        f"{ALPHA}); no bold means the best is not significantly better.",
    ]
    if any(len(c.results) > 1 for c in cells):
        notes.append("Cells with several seeds are tested through their seed-averaged probabilities.")
    differ = [names[i] for i, c in enumerate(cells) if c.seeds_differ]
    if differ:
        notes.append(
            f"Seeds scored on different test images, so no combined interval and no test: {', '.join(differ)}."
        )
    if ctx.reference is not None and cells[ref].arch != ctx.reference:
        notes.append(f"{arch_name(ctx.reference)} has no row in this table: the first row is the reference.")
    missing = [names[i] for i, c in enumerate(cells) if i != ref and i not in vs_ref and not c.seeds_differ]
    if missing:
        notes.append(f"Not tested (not the reference's test images, or no AUROC to compare): {', '.join(missing)}.")
    if paper:
        notes += [f"Paper: {PAPER_SOURCE}.", PUBLISHED_AUROC]
    else:
        notes.insert(0, SYNTHETIC_WARNING)
    if plan.pretrained and ctx.unverified_weights:
        notes.insert(0, WEIGHTS_WARNING.format(archs=", ".join(ctx.unverified_weights)))
    return Table(plan.stem, title, columns, rows, pd.DataFrame(records), bold, notes)


# --- the other tables ---------------------------------------------------------------------------------


def per_finding_table(ctx: Context, names: list[str]) -> Table:
    """Rows findings, columns cells: AUROC with its interval."""
    shown = [a for a in ctx.axes if a != "seed"]
    cols = [describe(c.fields, shown) for c in ctx.cells]
    rows, records = [], []
    for name in [*names, "Mean (macro)"]:
        stats = [c.stat("auc_macro") if name == "Mean (macro)" else c.finding_stat(name) for c in ctx.cells]
        rows.append([name] + [s.text(3) for s in stats])
        rec: dict[str, Any] = {"finding": name}
        for col, s in zip(cols, stats):
            rec.update(s.columns(col, sep=" "))
        records.append(rec)
    notes = [ci_note(ctx, ctx.cells), f"{DASH}: undefined (no positive or no negative test images for that finding)."]
    return Table(
        "per_finding_auroc",
        f"Per-finding AUROC ({ctx.dataset_title})",
        ["Finding", *cols],
        rows,
        pd.DataFrame(records),
        notes=synthetic_first(ctx, notes),
    )


def comparison_table(ctx: Context) -> Table:
    """Every result: the fields the grid varied, then the metrics with their intervals."""
    axes = ctx.axes
    columns = ["Trial"] + axes + [c.header for c in GRID_COLUMNS]
    rows, records = [], []
    results = sorted(ctx.results, key=lambda r: tuple(field_order(a, r.trial.get(a)) for a in axes))
    for r in results:
        cell = Cell.of(r)
        row = [r.key] + [field_text(r.trial.get(a)) for a in axes]
        rec: dict[str, Any] = {"key": r.key, "label": r.trial.get("label", ""), **{a: r.trial.get(a) for a in axes}}
        for col in GRID_COLUMNS:
            s = cell.stat(col.metric)
            row.append(s.text(col.digits))
            rec.update(s.columns(col.name))
        rows.append(row)
        records.append(rec)
    title = f"Results over the grid's axes ({ctx.dataset_title})"
    notes = [ci_note(ctx, [Cell.of(r) for r in ctx.results], losses=True)] if ctx.results else []
    if not axes:
        notes.append("Every result has the same settings: the grid varied nothing.")
    return Table("comparison", title, columns, rows, pd.DataFrame(records), notes=synthetic_first(ctx, notes))


def cam_table(ctx: Context) -> Table | None:
    """Grad-CAM scores against the boxes (trials run with cam: true), each beside its chance level."""
    scored = [r for r in ctx.results if (r.metrics.get("cam") or {}).get("overall")]
    if not scored:
        return None
    varied = varied_fields(scored)
    shown = [a for a in varied if a != "seed"] or ["arch"]
    columns = ["Model", "boxes"] + [f"{label} (chance)" for _, label in CAM_SCORES]
    rows, records = [], []
    for r in scored:
        overall = r.metrics["cam"]["overall"]
        name = trial_name(r, shown, seeds="seed" in varied)
        rows.append(
            [name, str(overall.get("n", 0))]
            + [
                f"{overall.get(k, float('nan')):.3f} ({overall.get(k + '_chance', float('nan')):.3f})"
                for k, _ in CAM_SCORES
            ]
        )
        records.append({"key": r.key, "model": name, **{k: overall.get(k) for k in overall}})
    notes = [
        f"Grad-CAM ({scored[0].metrics['cam'].get('method', 'gradcam')}) on every test image with a box; "
        "chance: what a map placed at random would score (box area over image area)."
    ]
    return Table(
        "cam_scores",
        f"Explainability: Grad-CAM against the boxes ({ctx.dataset_title})",
        columns,
        rows,
        pd.DataFrame(records),
        notes=synthetic_first(ctx, notes),
    )
