"""The report's figures (PNG): Figures 1-3 of the paper, ROC and calibration curves, the per-finding heat map, CAM."""

from __future__ import annotations

import re

import numpy as np

from harness import metrics, store
from harness.report.cells import Cell, Stat, describe, field_order, trial_name
from harness.report.context import Context
from harness.report.paper import PAPER_VALUES
from harness.report.tables import Table

# Past this many bars, curves or heat-map columns their labels overlap into an unreadable band (and drawing
# them costs most of a large report's figures): they are left off, and the tables name every row.
LABELLED_UP_TO = 30


def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot global state, no GUI backend, any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # one draw per save, unlike bbox "tight"
    FigureCanvasAgg(fig)
    return fig


def _save(ctx: Context, fig, stem: str) -> str:
    name = f"{stem}.png"
    with store.atomic_path(ctx.out_dir / name) as tmp:
        fig.savefig(tmp, format="png")
    return name


def _err(stats: list[Stat]) -> np.ndarray:
    lo = [s.value - s.ci[0] if s.ci and s.value is not None else 0.0 for s in stats]
    hi = [s.ci[1] - s.value if s.ci and s.value is not None else 0.0 for s in stats]
    return np.array([lo, hi]).clip(min=0)


def bar_figure(ctx: Context, cells: list[Cell], names: list[str], *, pretrained: bool, stem: str, title: str) -> str:
    """AUC and F1 per row with interval error bars; the paper's values beside ours on NIH only."""
    fig = _figure(min(18.0, max(6.0, 1.6 * len(cells) + 3)), 4.2)
    paper = PAPER_VALUES[pretrained] if ctx.is_nih else {}
    x = np.arange(len(cells))
    width = 0.4 if paper else 0.6
    for k, (metric, label) in enumerate((("auc_macro", "auc"), ("f1_macro", "f1"))):
        ax = fig.add_subplot(1, 2, k + 1)
        stats = [c.stat(metric) for c in cells]
        values = [s.value if s.value is not None else np.nan for s in stats]
        ax.bar(
            x - (width / 2 if paper else 0),
            values,
            width,
            yerr=_err(stats),
            capsize=3,
            label="this run",
            color="tab:blue",
        )
        if paper:
            pv = [paper.get(c.arch, {}).get(label) for c in cells]
            ax.bar(x + width / 2, [np.nan if v is None else v for v in pv], width, label="paper", color="0.7")
            ax.legend(fontsize=8)
        _label_x(ax, names, rotation=30, fontsize=8, what="rows of the table, in order")
        ax.set_ylabel("mean AUROC" if label == "auc" else "macro F1")
        ax.set_ylim(0, 1)
        if label == "auc":
            ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    fig.suptitle(title, fontsize=10)
    return _save(ctx, fig, stem)


def loss_figure(ctx: Context) -> tuple[str | None, list[str]]:
    """Figure 3: training loss per epoch per trial (validation loss dashed)."""
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    shown = ctx.axes
    skipped, drawn = [], 0
    for r in ctx.results:
        h = ctx.histories.get(r.key)
        if h is None:
            skipped.append(r.key)
            continue
        (line,) = ax.plot(
            h["epoch"], h["train_loss"], marker="o", ms=3, label=trial_name(r, shown, seeds="seed" in shown)
        )
        if "val_loss" in h:
            ax.plot(h["epoch"], h["val_loss"], ls="--", color=line.get_color(), lw=0.8)
        drawn += 1
    if not drawn:
        return None, skipped
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (solid: training, dashed: validation BCE)")
    if drawn <= LABELLED_UP_TO:
        ax.legend(fontsize=7, ncol=2 if drawn > 8 else 1)
    else:
        ax.set_title(f"{drawn} trials, too many to label", fontsize=8)
    fig.suptitle(f"Figure 3. Training loss per epoch ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "fig3_training_loss"), skipped


def _best_per_arch(ctx: Context) -> list[Cell]:
    best: dict[str, Cell] = {}
    for c in ctx.cells:
        v = c.stat("auc_macro").value
        held = best.get(c.arch)
        if held is None or (v is not None and v > (held.stat("auc_macro").value or -1)):
            best[c.arch] = c
    return [best[a] for a in sorted(best, key=lambda a: field_order("arch", a))]


def roc_figures(ctx: Context) -> list[str]:
    """ROC curves of every finding, one figure per arch (its best cell by mean AUROC, first seed)."""
    shown = [a for a in ctx.axes if a != "seed"]
    out = []
    for cell in _best_per_arch(ctx):
        r = cell.results[0]
        p = ctx.predictions(r)
        names = [str(n) for n in p["names"]]
        fig = _figure(6.5, 6.0)
        ax = fig.add_subplot(1, 1, 1)
        colors = _colors(len(names))
        for j, name in enumerate(names):
            y = p["labels"][:, j]
            if y.min() == y.max():
                continue  # ROC undefined without both classes
            fpr, tpr = metrics.roc_curve_points(p["probs"][:, j], y)
            auc = (r.metrics.get("per_finding") or {}).get(name, {}).get("auc")
            ax.plot(fpr, tpr, color=colors[j], lw=1, label=f"{name} ({auc:.2f})" if auc is not None else name)
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
        seed = f", seed {r.trial.get('seed')}" if len(cell.results) > 1 else ""
        fig.suptitle(f"ROC per finding: {describe(cell.fields, shown)}{seed} ({ctx.dataset_title})", fontsize=9)
        out.append(_save(ctx, fig, f"roc_{_slug(cell.arch)}"))
    return out


def calibration_figure(ctx: Context, n_bins: int = 10) -> str:
    """Reliability of the predicted probabilities, all findings pooled, for each arch's best cell."""
    shown = [a for a in ctx.axes if a != "seed"]
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8, label="perfect")
    for cell in _best_per_arch(ctx):
        p = ctx.predictions(cell.results[0])
        cal = metrics.calibration(p["probs"], p["labels"], n_bins=n_bins)
        x = np.array([np.nan if v is None else v for v in cal["mean_predicted"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in cal["observed"]], dtype=float)
        ece = f", ECE {cal['ece']:.3f}" if cal.get("ece") is not None else ""
        ax.plot(x, y, marker="o", ms=3, label=describe(cell.fields, shown) + ece)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.suptitle(f"Calibration, findings pooled ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "calibration")


def heatmap_figure(ctx: Context, table: Table, names: list[str]) -> str:
    """The per-finding AUROC table as a heat map."""
    cols = table.columns[1:]
    data = np.array(
        [[np.nan if s.value is None else s.value for s in (c.finding_stat(n) for c in ctx.cells)] for n in names],
        dtype=float,
    )
    fig = _figure(min(24.0, max(5.0, 0.9 * len(cols) + 3)), 0.38 * len(names) + 2.5)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.5, float(np.nanmin(data))) if np.isfinite(data).any() else 0.5
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(data) if len(cols) <= LABELLED_UP_TO else ():
        if np.isfinite(v):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < (lo + 1.0) / 2 else "black"
            )
    _label_x(ax, cols, rotation=35, fontsize=7, what="columns of the per-finding table, in order")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="AUROC")
    fig.suptitle(f"Per-finding AUROC ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "per_finding_auroc")


def _label_x(ax, names: list[str], *, rotation: int, fontsize: int, what: str) -> None:
    """Each x position named, or, past LABELLED_UP_TO of them, the axis says what they are."""
    if len(names) <= LABELLED_UP_TO:
        ax.set_xticks(range(len(names)), names, rotation=rotation, ha="right", fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names)} {what}", fontsize=fontsize)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


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
