"""Transfer: each trial's AUROC on its own test split beside its AUROC on other datasets (`harness evaluate`),
over the findings both label, with patient-bootstrap intervals; a table and a figure, never in Tables 1-2."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness import store
from harness.config import DATASETS, TRIAL_FIELDS
from harness.metrics import MetricsError, holm
from harness.metrics.masked import paired_bootstrap_masked
from harness.report.cells import trial_name, varied_fields
from harness.report.context import Context
from harness.report.drawing import Drawn, styles
from harness.report.paper import DASH, DATASET_TITLES
from harness.report.tables import Table

EXTERNAL_NOTE = (
    "AUROC on the trial's own test split and on another dataset's (its official test split, or all its frontal "
    "films where it has none), both over the findings the two datasets label (k), macro-averaged; uncertain and "
    "blank labels left out; 95% intervals resample patients. Scores on other datasets never enter Tables 1-2."
)
SYNTHETIC_EXTERNAL = (
    "SYNTHETIC DATA: {names} are rendered phantoms written in those datasets' layouts, not the datasets "
    "themselves; these scores show the pipeline, not transfer to real films."
)


def records(ctx: Context) -> list[tuple[store.Result, dict[str, Any]]]:
    """(result, external record) for every intact external score of every trial, trials in report order."""
    out = []
    for r in ctx.results:
        for name in r.files.external_datasets():
            out.append((r, r.files.read_external(name)))
    return out


def _auc(block: dict[str, Any]) -> str:
    value, ci = block.get("auc_macro"), block.get("auc_macro_ci") or [None, None]
    if value is None:
        return DASH
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if None not in ci else f"{value:.3f}"


def _title(name: str) -> str:
    return DATASET_TITLES.get(name, name)


def transfer_table(ctx: Context, found: list[tuple[store.Result, dict[str, Any]]]) -> Table:
    varied = varied_fields([r for r, _ in found])
    shown = [a for a in varied if a != "seed"] or ["arch"]
    columns = ["Model", "trained on", "scored on", "k", "own test AUROC", "other dataset AUROC", "change"]
    rows, frame = [], []
    for r, rec in found:
        home, ext = rec["home"], rec["external"]
        change = (
            f"{ext['auc_macro'] - home['auc_macro']:+.3f}"
            if ext.get("auc_macro") is not None and home.get("auc_macro") is not None
            else DASH
        )
        name = trial_name(r, shown, seeds="seed" in varied)
        rows.append(
            [
                name,
                _title(home["dataset"]),
                _title(rec["dataset"]),
                str(len(rec["findings"])),
                _auc(home),
                _auc(ext),
                change,
            ]
        )
        frame.append(
            {
                "key": r.key, "model": name, "trained_on": home["dataset"], "scored_on": rec["dataset"],
                "findings": " ".join(rec["findings"]), "n_images": ext.get("n"), "home_auc": home.get("auc_macro"),
                "home_auc_ci": home.get("auc_macro_ci"), "external_auc": ext.get("auc_macro"),
                "external_auc_ci": ext.get("auc_macro_ci"), "split": rec.get("split"),
            }
        )  # fmt: skip
    notes = [*_synthetic_note(found), EXTERNAL_NOTE]
    return Table(
        "transfer", "Transfer: own test split against other datasets", columns, rows, pd.DataFrame(frame), notes=notes
    )


_REAL = {d for d in DATASETS if not d.startswith("synthetic")}


def _synthetic_note(found: list[tuple[store.Result, dict[str, Any]]]) -> list[str]:
    synthetic = sorted({n for _, rec in found for n in (rec["dataset"], rec["home"]["dataset"]) if n not in _REAL})
    return [SYNTHETIC_EXTERNAL.format(names=", ".join(synthetic))] if synthetic else []


def _point(ax, block: dict[str, Any], y: float, color: str, marker: str) -> None:
    if block.get("auc_macro") is None:
        return
    value, ci = block["auc_macro"], block.get("auc_macro_ci") or [None, None]
    err = None if None in ci else np.array([[value - ci[0]], [ci[1] - value]])
    ax.errorbar(value, y, xerr=err, ls="none", capsize=2, color=color, marker=marker)


def transfer_figure(ctx: Context, found: list[tuple[store.Result, dict[str, Any]]], number: str) -> Drawn:
    """One row per (trial, other dataset): the trial's own-test AUROC (black) above its AUROC there (coloured),
    both over the findings the two datasets label, with intervals."""
    from harness.report.figures import _figure, _save

    varied = varied_fields([r for r, _ in found])
    shown = [a for a in varied if a != "seed"] or ["arch"]
    others = sorted({rec["dataset"] for _, rec in found})
    look = dict(zip(others, styles(len(others))))
    fig = _figure(7.5, 0.5 * len(found) + 1.8)
    ax = fig.add_subplot(1, 1, 1)
    labels = []
    for i, (r, rec) in enumerate(found):
        _point(ax, rec["home"], i - 0.15, "black", "o")
        _point(ax, rec["external"], i + 0.15, look[rec["dataset"]].color, look[rec["dataset"]].marker)
        labels.append(f"{trial_name(r, shown, seeds='seed' in varied)} (k={len(rec['findings'])})")
    ax.axvline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_yticks(range(len(found)), labels, fontsize=7)
    ax.set_ylim(len(found) - 0.5, -0.5)
    ax.set_xlabel("mean AUROC over the k findings both datasets label")
    handles = [ax.errorbar([], [], color="black", marker="o", ls="none")]
    handles += [ax.errorbar([], [], color=look[o].color, marker=look[o].marker, ls="none") for o in others]
    ax.legend(handles, ["own test split", *(_title(o) for o in others)], fontsize=7, loc="best")
    fig.suptitle(f"Figure {number}. Own test split against other datasets", fontsize=10)
    caption = (
        f"Figure {number}. Mean AUROC of each trial on its own test split (black) and on "
        f"{', '.join(_title(o) for o in others)} (coloured), each pair over the k findings both datasets label, "
        "with 95% patient-bootstrap intervals; dotted: chance."
    )
    png, pdf = _save(ctx, fig, "transfer")
    return Drawn(png, caption, pdf)


# Fields that follow another (a weights file's digest, its path) never make a pair on their own.
_FOLLOWERS = {"pretrained_sha256", "weights_sha256", "weights"}
PAIRS_NOTE = (
    "Trials that differ in one field, both scored on the same films of another dataset: paired bootstrap of the "
    "difference in mean AUROC over the findings both datasets label, the same patient resamples for both ({n} "
    "resamples), each finding on the films that label it; p from the bootstrap test (the difference over the SD "
    "of its resampled values). Holm-adjusted over this table's {k} tests, a family of its own: these are claims "
    "about other datasets, apart from the report's family. Significant: adjusted p < 0.05 and an interval that "
    "excludes 0."
)


def _pairs(found: list[tuple[store.Result, dict[str, Any]]]) -> list[tuple[str, str, tuple, tuple]]:
    """(dataset, the field that differs, (result, record) of A, of B) for trials one field apart."""
    out = []
    for i, (ra, rec_a) in enumerate(found):
        for rb, rec_b in found[i + 1 :]:
            if rec_a["dataset"] != rec_b["dataset"]:
                continue
            fields = (set(ra.trial) | set(rb.trial)) & set(TRIAL_FIELDS) - _FOLLOWERS
            differ = [f for f in sorted(fields) if ra.trial.get(f) != rb.trial.get(f)]
            if len(differ) == 1:
                out.append((rec_a["dataset"], differ[0], (ra, rec_a), (rb, rec_b)))
    return out


def transfer_pairs_table(ctx: Context, found: list[tuple[store.Result, dict[str, Any]]]) -> Table | None:
    """Paired tests between trials on the same other dataset (metrics.masked.paired_bootstrap_masked)."""
    pairs, tests, skipped = _pairs(found), [], 0
    for dataset, axis, (ra, rec), (rb, _) in pairs:
        pa, pb = (r.files.read_external_predictions(dataset) for r in (ra, rb))
        if not np.array_equal(pa["image_index"], pb["image_index"]):
            skipped += 1  # scored on different films (a changed root): no paired test
            continue
        idx = [list(pa["names"]).index(f) for f in rec["findings"]]
        try:
            result = paired_bootstrap_masked(
                probs_a=pa["probs"][:, idx], probs_b=pb["probs"][:, idx], labels=pa["labels"][:, idx],
                patient_ids=pa["patient_id"], logits_a=pa["logits"][:, idx], logits_b=pb["logits"][:, idx],
                n_boot=ctx.n_boot,
            )  # fmt: skip
        except MetricsError:
            skipped += 1  # no finding with both classes among its known labels
            continue
        tests.append((dataset, axis, ra, rb, result))
    if not tests:
        return None
    adjusted = holm([t[4]["p"] if t[4]["p"] is not None else 1.0 for t in tests])
    columns = ["Scored on", "Field", "A", "B", "AUROC A - B [95% CI]", "p", "p (adjusted)", "Significant"]
    rows, frame = [], []
    for (dataset, axis, ra, rb, r), adj in zip(tests, adjusted):
        lo, hi = r["ci"]
        significant = adj < 0.05 and lo is not None and (lo > 0 or hi < 0)
        a, b = (f"{axis}={x.trial.get(axis)} ({x.key})" for x in (ra, rb))
        ci = DASH if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"
        rows.append(
            [
                _title(dataset),
                axis,
                a,
                b,
                f"{r['diff']:+.3f} {ci}",
                f"{r['p']:.3g}",
                f"{adj:.3g}",
                "yes" if significant else "no",
            ]
        )
        frame.append({"dataset": dataset, "field": axis, "a": ra.key, "b": rb.key, **r, "p_adjusted": float(adj)})
    notes = [*_synthetic_note(found), PAIRS_NOTE.format(n=ctx.n_boot, k=len(tests))]
    if skipped:
        notes.append(f"{skipped} pair(s) left out: scored on different films, or no finding with both classes.")
    return Table(
        "transfer_paired", "Paired comparisons on other datasets", columns, rows, pd.DataFrame(frame), notes=notes
    )
