"""The report's figures, each as PNG for the page and PDF for print, with its number and caption: Figures 1-3
of the paper, then S1, S2, ...: the per-finding heat map, ROC and calibration curves; CAM figures are copied."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy.stats import rankdata

from harness import metrics, store
from harness.report.build import PaperPlan
from harness.report.cells import Cell, Stat, degenerate_record, describe, field_order, trial_name
from harness.report.context import Context
from harness.report.drawing import Drawn, encode, slug, styles
from harness.report.flags import mark
from harness.report.paper import DDAGGER, F1_VAL, PAPER_VALUES, arch_name
from harness.report.tables import Table

DEGENERATE_LABEL = f"{DDAGGER} degenerate output (see the table's notes)"

# Past this many bars, curves or heat-map columns their labels overlap into an unreadable band (and drawing
# them costs most of a large report's figures): they are left off, and the tables name every row.
LABELLED_UP_TO = 30
# The page's PNG; the PDF beside it is the print copy. 150 dpi: sharp on screen while a report's figures take
# a few seconds (300 dpi took twice as long again, for pixels the vector copy makes moot).
PNG_DPI = 150
# Figures 1-2's panels: (metrics key, axis label, the paper's column). F1 at the validation-chosen thresholds,
# not at 0.5: short training leaves most probabilities under 0.5, so F1 at 0.5 is 0 for nearly every row.
BAR_PANELS = (("auc_macro", "mean AUROC", "auc"), (F1_VAL, "macro F1 at validation thresholds", "f1"))
PAPER_F1 = "paper (F1 at 0.5)"  # the paper's F1 is at the fixed threshold (F1_NOTE), not at validation thresholds


def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot global state, no GUI backend, any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # one draw per save, unlike bbox "tight"
    FigureCanvasAgg(fig)
    return fig


def _save(ctx: Context, fig, stem: str) -> tuple[str, str]:
    """The figure as stem.png and stem.pdf (no creation date in it, so the same figure gives the same bytes)."""
    names = (f"{stem}.png", f"{stem}.pdf")
    for name, kw in zip(names, ({"dpi": PNG_DPI}, {"metadata": {"CreationDate": None}})):
        with store.atomic_path(ctx.out_dir / name) as tmp:
            fig.savefig(tmp, format=name[-3:], **kw)
        # The layout the first save settled serves the second: a quarter off the pair's time, same placement.
        fig.set_layout_engine("none")
    return names


def _err(stats: list[Stat]) -> np.ndarray:
    lo = [s.value - s.ci[0] if s.ci and s.value is not None else 0.0 for s in stats]
    hi = [s.ci[1] - s.value if s.ci and s.value is not None else 0.0 for s in stats]
    return np.array([lo, hi]).clip(min=0)


def bar_figure(ctx: Context, plan: PaperPlan) -> Drawn:
    """Figure 1 or 2: mean AUROC and F1 at validation thresholds per row of Table 1 or 2, with the table's
    intervals as error bars; the paper's values beside ours on NIH only."""
    cells, n = plan.cells, plan.number
    fig = _figure(min(18.0, max(6.0, 1.6 * len(cells) + 3)), 4.2)
    paper = PAPER_VALUES[plan.pretrained] if ctx.is_nih else {}
    x = np.arange(len(cells))
    width = 0.4 if paper else 0.6
    for k, (metric, label, column) in enumerate(BAR_PANELS):
        ax = fig.add_subplot(1, 2, k + 1)
        stats = [c.stat(metric) for c in cells]
        values = [s.value if s.value is not None else np.nan for s in stats]
        ours = "this run" + (" (validation thresholds)" if metric == F1_VAL and paper else "")
        offset = width / 2 if paper else 0
        err = _err(stats)
        err = err if err.any() else None  # no interval at all (F1 at validation thresholds): no empty caps either
        bars = ax.bar(x - offset, values, width, yerr=err, capsize=3, label=ours, color="tab:blue")
        for bar, c in zip(bars, cells):
            if c.degenerate:  # never read as a result: hatched, and named in the legend
                bar.set_hatch("//")
                bar.set_edgecolor("black")
                bar.set_facecolor("0.85")
        if paper:
            pv = [paper.get(c.arch, {}).get(column) for c in cells]
            theirs = PAPER_F1 if column == "f1" else "paper"
            ax.bar(x + width / 2, [np.nan if v is None else v for v in pv], width, label=theirs, color="0.7")
        handles = ax.get_legend_handles_labels()[0]
        if any(c.degenerate for c in cells):
            from matplotlib.patches import Patch

            handles.append(Patch(facecolor="0.85", hatch="//", edgecolor="black", label=DEGENERATE_LABEL))
        if paper or any(c.degenerate for c in cells):
            ax.legend(handles=handles, fontsize=8)
        marked = [mark(name, c.degenerate) for name, c in zip(plan.names, cells)]
        _label_x(ax, marked, rotation=30, fontsize=8, what="rows of the table, in order")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        if column == "auc":
            ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    what = "mean AUROC and macro F1 at validation thresholds"
    fig.suptitle(f"Figure {n}. {plan.what}: {what} ({ctx.dataset_title})", fontsize=10)
    trials = sum(len(c.results) for c in cells)
    seeds = "; a row of several seeds shows their mean" if trials > len(cells) else ""
    caption = (
        f"Figure {n}. {plan.what}: {what}, one bar per row of Table {n} ({len(cells)} rows, {trials} trials{seeds}). "
        "Error bars: the table's intervals; F1 at the thresholds chosen on each trial's validation split is a "
        "point value, without one."
    )
    if paper:
        caption += " Grey: the paper's values; its F1 is at the fixed 0.5 threshold, so the F1 bars differ in kind."
    if any(c.degenerate for c in cells):
        caption += f" Hatched bars ({DDAGGER}): degenerate output, see the table's notes."
    png, pdf = _save(ctx, fig, plan.fig_stem)
    return Drawn(png, caption, pdf)


def loss_figure(ctx: Context) -> tuple[Drawn | None, list[str]]:
    """Figure 3: loss per epoch of every trial with a history: training loss in one panel per loss function
    (focal loss runs some 40 times below BCE), validation loss (BCE whatever the training loss) in its own.
    Series are styled by the grid's axes (drawing.encode); every epoch is marked, so one-epoch runs show."""
    drawn = [(r, h) for r in ctx.results if (h := ctx.histories.get(r.key)) is not None]
    skipped = [r.key for r in ctx.results if ctx.histories.get(r.key) is None]
    if not drawn:
        return None, skipped
    enc = encode([r.trial for r, _ in drawn], ctx.axes)
    losses = sorted({str(r.trial.get("loss", "?")) for r, _ in drawn}, key=lambda v: field_order("loss", v))
    panels = [(f"training loss: {loss}", "train_loss", loss) for loss in losses]
    if any("val_loss" in h for _, h in drawn):
        panels.append(("validation loss: BCE", "val_loss", None))
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    labelled = len(drawn) <= LABELLED_UP_TO
    fig = _figure(3.6 * cols + (2.8 if labelled else 0), 3.0 * rows + 0.6)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    for k, (title, column, loss) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for (r, h), style in zip(drawn, enc.styles):
            if column in h and loss in (None, str(r.trial.get("loss", "?"))):
                ax.plot(h["epoch"], h[column], ms=4, lw=1.2, **style.kw())
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    seeds = "seed" in ctx.axes
    names = [mark(trial_name(r, ctx.axes, seeds=seeds), degenerate_record(r).get("degenerate")) for r, _ in drawn]
    if labelled:
        handles = [Line2D([], [], ms=4, lw=1.2, **s.kw()) for s in enc.styles]
        fig.legend(handles, names, loc="outside right upper", fontsize=7)
    fig.suptitle(f"Figure 3. Training and validation loss per epoch ({ctx.dataset_title})", fontsize=10)
    which = "every trial" if not skipped else "the trials with a history"
    val = (
        ", and validation loss (BCE on the validation split, whatever the training loss)"
        if panels[-1][2] is None
        else ""
    )
    caption = (
        f"Figure 3. Loss per epoch of {which} ({len(drawn)}): training loss in one panel per loss function, as "
        f"their scales differ{val}. {enc.words()}; every epoch is marked, so a one-epoch trial is a single point."
        + ("" if labelled else f" {len(drawn)} trials, too many to label: the grid table names them.")
    )
    png, pdf = _save(ctx, fig, "fig3_training_loss")
    return Drawn(png, caption, pdf), skipped


def _best_per_arch(ctx: Context) -> list[tuple[Cell, str]]:
    """Each arch's best cell by mean AUROC (a degenerate cell only where the arch has nothing else), with the
    words that say how it was picked."""

    def rank(c: Cell) -> tuple[bool, float]:
        v = c.stat("auc_macro").value
        return (not c.degenerate, -1.0 if v is None else v)

    by_arch: dict[str, list[Cell]] = {}
    for c in ctx.cells:
        by_arch.setdefault(c.arch, []).append(c)
    out = []
    for arch in sorted(by_arch, key=lambda a: field_order("arch", a)):
        cells = by_arch[arch]
        best = max(cells, key=rank)  # the first of equals, in the cells' order
        auc = best.stat("auc_macro").value
        score = "" if auc is None else f" ({auc:.3f})"
        if len(cells) == 1:
            how = f"the only {arch_name(arch)} configuration"
        elif best.degenerate:
            how = f"the highest mean AUROC{score} of {len(cells)} {arch_name(arch)} configurations, all degenerate"
        else:
            how = f"the highest mean AUROC{score} of {len(cells)} {arch_name(arch)} configurations"
        out.append((best, how))
    return out


def _shown(ctx: Context, cell: Cell) -> tuple[store.Result, str]:
    """The result a per-arch figure draws (the cell's first seed) and its name with key and seed."""
    r = cell.results[0]
    seed = f", seed {r.trial.get('seed')} of {len(cell.results)}" if len(cell.results) > 1 else ""
    name = mark(describe(cell.fields, [a for a in ctx.axes if a != "seed"]), cell.degenerate)
    return r, f"{name} (trial {r.key}{seed})"


def roc_figures(ctx: Context, numbers: Iterator[str]) -> list[Drawn]:
    """ROC curves of every finding, one figure per arch: its best cell by mean AUROC, first seed."""
    out = []
    for cell, how in _best_per_arch(ctx):
        r, name = _shown(ctx, cell)
        p = ctx.predictions(r)
        findings = [str(f) for f in p["names"]]
        fig = _figure(6.5, 6.0)
        ax = fig.add_subplot(1, 1, 1)
        for j, (finding, style) in enumerate(zip(findings, styles(len(findings)))):
            y = p["labels"][:, j]
            seen = y[np.isfinite(y)]  # a finding the dataset does not label is NaN throughout
            if seen.size == 0 or seen.min() == seen.max():
                continue  # ROC undefined without both classes
            # The curve depends on the order of the scores only: the logits' ranks keep what saturation ties.
            scores = p["probs"][:, j] if "logits" not in p else rankdata(p["logits"][:, j]) / len(y)
            fpr, tpr = metrics.roc_curve_points(scores, y)
            auc = (r.metrics.get("per_finding") or {}).get(finding, {}).get("auc")
            label = f"{finding} ({auc:.2f})" if auc is not None else finding
            ax.plot(fpr, tpr, lw=1.2, label=label, **style.kw(marker=False))  # curves of many points: no markers
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right", title="finding (AUROC)", title_fontsize=7)
        number = next(numbers)
        fig.suptitle(f"Figure {number}. ROC per finding: {name} ({ctx.dataset_title})", fontsize=9)
        caption = (
            f"Figure {number}. ROC curve of each finding on the test set for {name}: {how}. "
            "Each finding its own colour and line style; dotted: chance."
        )
        png, pdf = _save(ctx, fig, f"roc_{slug(cell.arch)}")
        out.append(Drawn(png, caption, pdf))
    return out


def calibration_figure(ctx: Context, number: str, n_bins: int = 10) -> Drawn:
    """Reliability of the predicted probabilities, all findings pooled, for each arch's best cell."""
    fig = _figure(7.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8, label="perfect")
    picked = _best_per_arch(ctx)
    names = []
    for (cell, _), style in zip(picked, styles(len(picked))):
        r, name = _shown(ctx, cell)
        names.append(name)
        p = ctx.predictions(r)
        cal = metrics.calibration(p["probs"], p["labels"], n_bins=n_bins)
        x = np.array([np.nan if v is None else v for v in cal["mean_predicted"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in cal["observed"]], dtype=float)
        ece = f", ECE {cal['ece']:.3f}" if cal.get("ece") is not None else ""
        ax.plot(x, y, ms=4, lw=1.2, label=name + ece, **style.kw())
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.suptitle(f"Figure {number}. Calibration, findings pooled ({ctx.dataset_title})", fontsize=10)
    caption = (
        f"Figure {number}. Reliability of the predicted probabilities on the test set, all findings pooled in "
        f"{n_bins} equal-width bins, for each arch's configuration with the highest mean AUROC (as in the ROC "
        "figures): " + "; ".join(names) + ". Dotted: perfect calibration; ECE: expected calibration error."
    )
    png, pdf = _save(ctx, fig, "calibration")
    return Drawn(png, caption, pdf)


def heatmap_figure(ctx: Context, table: Table, names: list[str], number: str) -> Drawn:
    """The per-finding AUROC table as a heat map; degenerate findings hatched and marked."""
    cols = table.columns[1:]
    data = np.array(
        [[np.nan if s.value is None else s.value for s in (c.finding_stat(n) for c in ctx.cells)] for n in names],
        dtype=float,
    )
    bad = [c.degenerate_findings() for c in ctx.cells]
    fig = _figure(min(24.0, max(5.0, 0.9 * len(cols) + 3)), 0.38 * len(names) + 2.5)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.5, float(np.nanmin(data))) if np.isfinite(data).any() else 0.5
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(data) if len(cols) <= LABELLED_UP_TO else ():
        if np.isfinite(v):
            text = mark(f"{v:.2f}", names[i] in bad[j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v < (lo + 1.0) / 2 else "black")
    if any(bad):
        from matplotlib.patches import Rectangle

        for j, findings in enumerate(bad):
            for i in (i for i, n in enumerate(names) if n in findings):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="red", lw=0))
        ax.set_title(f"hatched, {DDAGGER}: degenerate output (see the table's notes)", fontsize=8)
    _label_x(ax, cols, rotation=35, fontsize=7, what="columns of the per-finding table, in order")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="AUROC")
    fig.suptitle(f"Figure {number}. Per-finding AUROC ({ctx.dataset_title})", fontsize=10)
    trials = len(ctx.results)
    caption = (
        f"Figure {number}. Test AUROC per finding (rows) of every configuration (columns, as in the table above: "
        f"{len(ctx.cells)} configurations, {trials} trials"
        + ("; several seeds: their mean)." if trials > len(ctx.cells) else ").")
    )
    if any(bad):
        caption += f" Hatched, {DDAGGER}: degenerate output."
    png, pdf = _save(ctx, fig, "per_finding_auroc")
    return Drawn(png, caption, pdf)


def _label_x(ax, names: list[str], *, rotation: int, fontsize: int, what: str) -> None:
    """Each x position named, or, past LABELLED_UP_TO of them, the axis says what they are."""
    if len(names) <= LABELLED_UP_TO:
        ax.set_xticks(range(len(names)), names, rotation=rotation, ha="right", fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names)} {what}", fontsize=fontsize)


def cam_figures(ctx: Context) -> list[str]:
    """Figures `harness cam` left in each trial's cam folder, copied beside index.html."""
    names = []
    for r in ctx.results:
        cam_dir = r.files.cam_dir()
        for fig in sorted(cam_dir.glob("*.png")) if cam_dir.is_dir() else []:
            name = f"cam_{r.key}_{fig.name}"
            store.write_bytes(ctx.out_dir / name, fig.read_bytes())
            names.append(name)
    return names
