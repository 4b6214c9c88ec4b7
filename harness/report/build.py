"""The report's tables of results: the paper's Tables 1-2 with their tests, per finding, the whole grid, Grad-CAM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from harness import metrics
from harness.report.cells import (
    Cell,
    Stat,
    describe,
    field_order,
    field_text,
    lockstep_notes,
    trial_name,
    varied_fields,
)
from harness.report.context import ALPHA, Comparison, Context, focal_params
from harness.report.flags import chance_note, degenerate_note, finding_note, mark
from harness.report.paper import (
    DAGGER,
    DASH,
    DDAGGER,
    F1_NOTE,
    F1_VAL_COLUMN,
    GRID_COLUMNS,
    PAPER_BCE_NOTE,
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
SEEDS_HINT = "run the grid with --seeds 5 (grids/paper.yaml: --profile publish) for claims about the setting."


def ci_note(ctx: Context, cells: Sequence[Cell], *, losses: bool = False) -> str:
    """How the intervals were made: over test patients for one seed, over seeds then patients for several."""
    m = ctx.results[0].metrics
    level = float(m.get("ci_level", 0.95))
    seeded = sorted({len(c.results) for c in cells if c.combined})
    patients = (
        f"{level:.0%} bootstrap interval over test {m.get('ci_unit', 'patient')}s ({m.get('n_boot', '?')} resamples)"
    )
    # One seed's interval says how the number would move on other test patients, not with another training run.
    one_seed = (
        f" One seed: these intervals and tests cover test-set sampling only, not seed-to-seed variation; {SEEDS_HINT}"
    )
    if not seeded:
        text = f"[lo, hi]: {patients}." + (one_seed if any(len(c.results) == 1 for c in cells) else "")
    elif any(len(c.results) == 1 for c in cells):
        text = f"[lo, hi]: {patients} for single-seed cells." + one_seed
    else:
        text = ""
    if seeded:
        k = " or ".join(map(str, seeded))
        text += (
            f" Cells with {k} seeds: mean {PM} standard deviation over seeds; [lo, hi] for AUROC and F1: a "
            f"{level:.0%} interval for the mean over {k} seeds that holds both seed-to-seed and test-set variation "
            f"(mean {PM} t {PM} SE, SE^2 = seed variance / seeds + the all-seed mean's variance over {ctx.n_boot} "
            "patient resamples, Welch-Satterthwaite degrees of freedom; metrics.seed_interval); other metrics "
            "have no interval over seeds."
        )
    elif any(len(c.results) > 1 for c in cells):
        text += f" Several seeds: mean {PM} standard deviation over seeds."
    if losses and any(r.metrics.get("bce_ci") is None for c in cells for r in c.results):
        text += " BCE and focal loss are point values: metrics.json holds no interval for them."
    return text.lstrip()


def focal_note(named: Sequence[tuple[str, Cell]]) -> str:
    """Which focal parameters the focal column used: each trial's own, read from trial.json."""
    rows: dict[tuple[float, float], list[str]] = {}
    for name, cell in named:
        for r in cell.results:
            rows.setdefault(focal_params(r.trial), []).append(name)

    def params(g: float, a: float) -> str:
        return f"gamma {g:g}, alpha {a:g}" + (" (off)" if a == -1 else "")

    text = "Focal loss: mean over images and findings at each trial's own focal_gamma and focal_alpha (trial.json)"
    if len(rows) == 1:
        return f"{text}: {params(*next(iter(rows)))} in every row."
    return f"{text}: " + "; ".join(f"{params(*k)} for {', '.join(dict.fromkeys(v))}" for k, v in rows.items()) + "."


def constant_bce_note(ctx: Context, plan: PaperPlan) -> str:
    """What constant prediction would score each of the paper's BCE values on this test split."""
    data = ctx.cell_data(plan.cells[plan.ref])
    if data is None:
        return ""
    published = PAPER_VALUES[plan.pretrained]
    found = [
        (arch, v, metrics.constant_for_bce(data.labels, v))
        for arch, v in ((a, published.get(a, {}).get("bce")) for a in published)
        if v is not None
    ]
    parts = [f"{arch_name(a)} {v:g} at c = {c:.3f}" for a, v, c in found if c is not None]
    if not parts:
        return ""
    return (
        f" On this test split (positive rate {float(data.labels.mean()):.3f}) a constant prediction c for every "
        f"finding of every image scores the paper's BCE: {'; '.join(parts)}. The paper's values match "
        "near-constant outputs."
    )


def family_words(ctx: Context) -> str:
    """What every adjusted p in the report is adjusted over."""
    n = len(ctx.family)
    return f"the report's one family of {n} test{'s' if n != 1 else ''} (Holm)"


def warnings_first(ctx: Context, notes: list[str]) -> list[str]:
    """A table's notes, led by the synthetic-data warning unless every result is on NIH, and by the warning
    about starting weights that may have seen NIH test images when any result started from such."""
    lead = [SYNTHETIC_WARNING] if ctx.synthetic else []
    nih = ctx.nih_warning()
    return [*lead, *([nih] if nih else []), *notes]


# --- Tables 1-2 ---------------------------------------------------------------------------------------


@dataclass
class PaperPlan:
    """Table 1 or 2 before its tests: its rows (cells), their names, the reference row and the ranking by AUROC."""

    number: int
    pretrained: bool
    stem: str
    fig_stem: str
    what: str
    cells: list[Cell]
    names: list[str]
    ref: int
    ranked: list[int]  # rows with an AUROC and no degenerate output, best first

    def pairs(self) -> list[tuple[Cell, Cell, str]]:
        """The table's tests, each row against the reference (they join the report's one family)."""
        return [(c, self.cells[self.ref], "") for i, c in enumerate(self.cells) if i != self.ref]


def paper_plan(ctx: Context, *, number: int, pretrained: bool, stem: str, fig_stem: str, what: str) -> PaperPlan | None:
    # Trials started from a weights file are neither Table 1's scratch nor Table 2's ImageNet rows.
    cells = [c for c in ctx.cells if bool(c.fields.get("pretrained")) == pretrained and not c.fields.get("weights")]
    if not cells:
        return None
    shown = [a for a in varied_fields([r for c in cells for r in c.results]) if a in ctx.axes]
    shown = [a for a in shown if a not in ("pretrained", "seed")]
    # The reference arch may have no row here (e.g. only pretrained runs of it); the first row stands in.
    ref = next((i for i, c in enumerate(cells) if c.arch == ctx.reference), 0)
    aucs = [c.stat("auc_macro").value for c in cells]
    # Degenerate rows are tested and shown, never ranked: no "best" claim may rest on one.
    ok = [i for i in range(len(cells)) if aucs[i] is not None and not cells[i].degenerate]
    ranked = sorted(ok, key=lambda i: -aucs[i])
    names = [describe(c.fields, shown) for c in cells]
    return PaperPlan(number, pretrained, stem, fig_stem, what, cells, names, ref, ranked)


# Our columns: the paper's, with F1 at validation-chosen thresholds beside its F1.
OUR_COLUMNS = [*PAPER_COLUMNS[:3], F1_VAL_COLUMN, *PAPER_COLUMNS[3:]]
AUC_COLUMN = 1 + [c.name for c in OUR_COLUMNS].index("auc")  # after "Model"


def paper_table(ctx: Context, plan: PaperPlan) -> Table:
    """Table 1 or 2: one row per cell with the paper's columns, significance marks and, on NIH, the paper's values."""
    vs_ref: dict[int, Comparison] = {}
    for i, c in enumerate(plan.cells):
        name_a, name_b = plan.names[i], plan.names[plan.ref]
        if i != plan.ref and (cmp := ctx.compare(c, plan.cells[plan.ref], name_a=name_a, name_b=name_b)):
            vs_ref[i] = cmp
    # "Best" as a probability: the share of resamples in which a row ranks first (degenerate rows never rank).
    ranked = plan.ranked
    p_best = dict(zip(ranked, ctx.p_best([plan.cells[i] for i in ranked]))) if len(ranked) >= 2 else {}

    columns = ["Model"] + [c.header for c in OUR_COLUMNS] + ["P(best)"]
    paper = PAPER_VALUES[plan.pretrained] if ctx.is_nih else {}
    if paper:
        columns += [f"Paper {c.header.removeprefix('Test ')}" for c in PAPER_COLUMNS]  # the paper's own losses
    rows, records, bold = [], [], set()
    for i in range(len(plan.cells)):
        row, rec = _paper_row(plan, i, vs_ref.get(i), p_best.get(i), paper)
        if rec["auc_best_confident"]:
            bold.add((i, AUC_COLUMN))
        rows.append(row)
        records.append(rec)
    title = f"Table {plan.number}. {plan.what} ({ctx.dataset_title})"
    notes = _paper_notes(ctx, plan, vs_ref, paper)
    return Table(plan.stem, title, columns, rows, pd.DataFrame(records), bold, notes)


def _paper_row(
    plan: PaperPlan, i: int, cmp: Comparison | None, best: float | None, paper: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Row i of Table 1 or 2 as shown (marks, P(best), the paper's values) and as its CSV record."""
    c, name = plan.cells[i], plan.names[i]
    row = [mark(name, c.degenerate)]
    rec = {"model": name, "arch": c.arch, "seeds": len(c.results), "keys": " ".join(r.key for r in c.results)}
    for col in OUR_COLUMNS:
        s = c.stat(col.metric)
        text = mark(s.text(col.digits), c.degenerate and s.value is not None)
        if col.name == "auc" and cmp is not None and cmp.significant:
            text += DAGGER
        row.append(text)
        rec.update(s.columns(col.name, std=True))
    row.append(DASH if best is None or best != best else f"{best:.2f}")  # best != best: NaN
    rec.update(
        {
            "reference": i == plan.ref,
            "auc_diff_vs_ref": cmp.diff if cmp else None,
            "p_vs_ref": cmp.p if cmp else None,
            "p_adjusted_vs_ref": cmp.p_holm if cmp else None,
            "significant_vs_ref": bool(cmp and cmp.significant),
            "p_best": best,
        }
    )
    rec["auc_best_confident"] = best is not None and best >= 1 - ALPHA
    if paper:
        published = paper.get(c.arch, {})
        for col in PAPER_COLUMNS:
            v = published.get(col.name)
            row.append(DASH if v is None else f"{v:.{PAPER_DIGITS[plan.pretrained]}f}")
            rec[f"paper_{col.name}"] = v
    rec.update({"degenerate": bool(c.degenerate), "test_unit": cmp.unit if cmp else None})
    return row, rec


def _paper_notes(
    ctx: Context, plan: PaperPlan, vs_ref: Mapping[int, Comparison], paper: Mapping[str, Any]
) -> list[str]:
    """The notes under Table 1 or 2: intervals, marks, P(best), and every row that was left untested and why."""
    cells, names, ref = plan.cells, plan.names, plan.ref
    named = list(zip(names, cells))
    notes = [
        ci_note(ctx, cells, losses=True) + " " + F1_NOTE + " " + focal_note(named),
        f"{DAGGER} mean AUROC differs from the reference row ({names[ref]}): paired bootstrap over test patients "
        f"(both models scored on the same {ctx.n_boot} patient resamples), Holm-adjusted p < {ALPHA} over "
        f"{family_words(ctx)}; the same verdict as in 'Paired comparisons'. Never on a {DDAGGER} row.",
        f"P(best): the share of those resamples in which the row has the highest mean AUROC among the rows "
        f"not marked {DDAGGER}; bold AUROC where it is at least {1 - ALPHA:.2f}. Choosing the best row on the test "
        "set and then testing it against the runner-up would ignore that the choice was made on the same data.",
        *degenerate_note(named),
        *chance_note(named, ctx.cells),
    ]
    if any(c.combined for c in cells):
        notes.append(
            "Cells with several seeds are tested at the seed level: every resample draws each cell's seeds with "
            "replacement, then the test patients (metrics.paired_seed_bootstrap)."
        )
    differ = [names[i] for i, c in enumerate(cells) if c.seeds_differ]
    if differ:
        notes.append(
            f"Seeds scored on different test images, so no combined interval and no test: {', '.join(differ)}."
        )
    notes += lockstep_notes(ctx.followers, ctx.cells)
    if ctx.reference is not None and cells[ref].arch != ctx.reference:
        notes.append(f"{arch_name(ctx.reference)} has no row in this table: the first row is the reference.")
    missing = [names[i] for i, c in enumerate(cells) if i != ref and i not in vs_ref and not c.seeds_differ]
    if missing:
        notes.append(f"Not tested (not the reference's test images, or no AUROC to compare): {', '.join(missing)}.")
    if paper:
        notes += [f"Paper: {PAPER_SOURCE}.", PAPER_BCE_NOTE + constant_bce_note(ctx, plan), PUBLISHED_AUROC]
    else:
        notes.insert(0, SYNTHETIC_WARNING)
    if plan.pretrained and ctx.unverified_weights:
        notes.insert(0, WEIGHTS_WARNING.format(archs=", ".join(ctx.unverified_weights)))
    return notes


# --- the other tables ---------------------------------------------------------------------------------


def per_finding_table(ctx: Context, names: list[str]) -> Table:
    """Rows findings, columns cells: AUROC with its interval; degenerate findings and trials marked."""
    shown = [a for a in ctx.axes if a != "seed"]
    cols = [describe(c.fields, shown) for c in ctx.cells]
    bad = [c.degenerate_findings() for c in ctx.cells]
    rows, records, compact = [], [], []
    for name in [*names, "Mean (macro)"]:
        stats = [c.stat("auc_macro") if name == "Mean (macro)" else c.finding_stat(name) for c in ctx.cells]
        flags = [bool(c.degenerate) if name == "Mean (macro)" else name in b for c, b in zip(ctx.cells, bad)]
        rows.append([name] + [mark(s.text(3), flag and s.value is not None) for s, flag in zip(stats, flags)])
        compact.append(
            [name] + [mark(Stat(s.value).text(3), flag and s.value is not None) for s, flag in zip(stats, flags)]
        )
        rec: dict[str, Any] = {"finding": name}
        for col, s in zip(cols, stats):
            rec.update(s.columns(col, sep=" "))
        rec.update({f"{col} degenerate": flag for col, flag in zip(cols, flags)})
        records.append(rec)
    notes = [ci_note(ctx, ctx.cells), f"{DASH}: undefined (no positive or no negative test images for that finding)."]
    if any(bad):
        notes.append(finding_note())
    notes += degenerate_note(list(zip(cols, ctx.cells)))
    table = Table(
        "per_finding_auroc",
        f"Per-finding AUROC ({ctx.dataset_title})",
        ["Finding", *(mark(col, c.degenerate) for col, c in zip(cols, ctx.cells))],
        rows,
        pd.DataFrame(records),
        notes=warnings_first(ctx, notes),
    )
    # A page holds one column per trial only as a number: LaTeX numbers the columns and leaves the intervals out.
    numbered = [f"T{j}" for j in range(1, len(cols) + 1)]
    key = "; ".join(f"{t}: {col}" for t, col in zip(numbered, cols))
    table.compact = replace(
        table,
        columns=["Finding", *(mark(t, c.degenerate) for t, c in zip(numbered, ctx.cells))],
        rows=compact,
        notes=warnings_first(ctx, [f"{key}. AUROC alone: the intervals are in per_finding_auroc.csv.", *notes]),
    )
    return table


def comparison_table(ctx: Context) -> Table:
    """Every result: the fields the grid varied, then the metrics with their intervals."""
    axes = ctx.varied  # every varied field, those that vary together with an axis too: this is the full record
    columns = ["Trial", "Label"] + axes + [c.header for c in GRID_COLUMNS]
    rows, records = [], []
    results = sorted(ctx.results, key=lambda r: tuple(field_order(a, r.trial.get(a)) for a in axes))
    for r in results:
        cell = Cell.of(r)
        row = [mark(r.key, cell.degenerate), str(r.trial.get("label", ""))] + [
            field_text(r.trial.get(a), a) for a in axes
        ]
        rec: dict[str, Any] = {"key": r.key, "label": r.trial.get("label", ""), **{a: r.trial.get(a) for a in axes}}
        for col in GRID_COLUMNS:
            s = cell.stat(col.metric)
            row.append(mark(s.text(col.digits), cell.degenerate and s.value is not None))
            rec.update(s.columns(col.name))
        rec["degenerate"] = bool(cell.degenerate)
        rows.append(row)
        records.append(rec)
    title = f"Results over the grid's axes ({ctx.dataset_title})"
    named = [(r.key, Cell.of(r)) for r in results]
    notes = []
    if ctx.results:
        cells = [c for _, c in named]
        notes = [
            ci_note(ctx, cells, losses=True) + " " + focal_note(named),
            *degenerate_note(named),
            *chance_note(named, ctx.cells),
        ]
    if not axes:
        notes.append("Every result has the same settings: the grid varied nothing.")
    notes = warnings_first(ctx, notes)
    # The labels repeat the axes' values at a width no page column holds: the .tex keeps the keys only.
    keys_only = Table(
        "comparison", title, columns[:1] + columns[2:], [r[:1] + r[2:] for r in rows], pd.DataFrame(), notes=notes
    )
    return Table("comparison", title, columns, rows, pd.DataFrame(records), notes=notes, compact=keys_only)


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
            [mark(name, Cell.of(r).degenerate), str(overall.get("n", 0))]
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
        notes=warnings_first(ctx, notes),
    )
