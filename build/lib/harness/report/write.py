"""`harness report`: read a grid's results through the store, heal what can be healed, and write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import metrics, store
from harness.config import ConfigError
from harness.report.cells import field_order, group_cells, varied_fields
from harness.report.context import Context
from harness.report.page import build_sections, render_html, render_markdown


@dataclass
class Written:
    """What a report run wrote and what it left out."""

    index: Path
    broken: list[str] = field(default_factory=list)  # one line per trial left out: the trial and what is damaged
    healed: list[str] = field(default_factory=list)  # keys whose metrics were rebuilt from their predictions


def recompute_metrics(result: store.Result) -> store.Result:
    """metrics.json rebuilt from predictions.npz with metrics.evaluate and the trial's own seed and n_boot."""
    merged = _fresh_metrics(result.files, result.trial, result.metrics)
    result.files.replace_metrics(merged)
    return store.Result(trial=result.trial, metrics=merged, path=result.path)


def _fresh_metrics(files: store.TrialFiles, trial: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    p = files.read_predictions()
    kwargs: dict[str, Any] = {"seed": int(trial.get("seed", 0))}  # train.py evaluates with the trial seed
    if "n_boot" in old:
        kwargs["n_boot"] = int(old["n_boot"])
    fresh = metrics.evaluate(
        p["probs"],
        p["labels"],
        names=[str(n) for n in p["names"]],
        patient_ids=p["patient_id"],
        val_probs=p.get("val_probs"),
        val_labels=p.get("val_labels"),
        logits=p.get("logits"),  # as training scored it; None for predictions saved before logits were
        val_logits=p.get("val_logits"),
        **kwargs,
    )
    return {**old, **fresh}  # keep provenance, timings and the dataset actually used


def heal(grid_dir: Path, broken: store.Broken) -> store.Result | None:
    """A broken trial whose only damaged file is metrics.json, with its metrics rebuilt from its intact
    predictions; None when anything else is damaged."""
    files = store.TrialFiles(grid_dir / broken.key)
    if set(broken.damaged) != {files.METRICS}:
        return None
    try:
        trial = files.read_trial()
        try:
            old = files.read_metrics()
        except store.Unreadable:  # what train.py records beside the statistics, from the trial itself
            old = {"key": files.key, "label": trial.get("label", ""), "dataset": trial.get("dataset")}
        fresh = _fresh_metrics(files, trial, old)
    except store.Unreadable:
        return None
    files.replace_metrics(fresh)
    if files.problems(weights=False):  # predictions.npz changed since DONE too: still broken
        return None
    return store.Result(trial=trial, metrics=fresh, path=files.path)


def write_report(
    grid_dir: Path | str,
    out_dir: Path | str | None = None,
    *,
    recompute: bool = False,
    reference: str | None = None,
    n_boot: int = 1000,
    progress: bool = True,
) -> Written:
    """Write tables, figures and index.html for results/<grid>/ into out_dir (default reports/<grid>/).

    A trial whose files are damaged is left out and named in `broken`; with recompute, one whose only damage
    is its metrics.json is rebuilt from its predictions and kept.
    """
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise ConfigError(
            f"{grid_dir}: no such results directory; give results/<grid name> as written by `harness run GRID`"
        )
    scan = store.scan(grid_dir)
    results, broken = scan.results, scan.broken
    healed: list[store.Result] = []
    if not results and not scan.failures and not broken:
        raise ConfigError(f"{grid_dir}: no finished or failed trials here; run `harness run GRID` first")
    if n_boot < 1:
        raise ConfigError(f"n_boot={n_boot} is out of range; valid: an integer >= 1")
    ctx = Context(
        grid_dir=grid_dir,
        out_dir=Path(out_dir) if out_dir is not None else Path("reports") / grid_dir.name,
        results=results,
        failures=scan.failures,
        reference=reference,
        n_boot=n_boot,
        progress=progress,
    )
    if recompute and broken:
        with ctx.bar(total=len(broken), desc="healing broken trials", unit="trial") as bar:
            for b in broken:
                if (r := heal(grid_dir, b)) is not None:
                    healed.append(r)
                else:
                    ctx.broken.append(b)
                bar.update()
    else:
        ctx.broken = list(broken)
    archs = sorted({str(r.trial.get("arch")) for r in results + healed}, key=lambda a: field_order("arch", a))
    if reference is not None and reference not in archs:
        raise ConfigError(f"reference arch {reference!r} has no results in {grid_dir}; valid: {', '.join(archs)}")
    if recompute:
        with ctx.bar(total=len(results), desc="recomputing metrics", unit="trial") as bar:
            ctx.results = []
            for r in results:
                ctx.results.append(recompute_metrics(r))
                bar.update()
    if healed:
        ctx.results = sorted(ctx.results + healed, key=lambda r: (r.trial.get("label", ""), r.key))  # the store's order

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.axes = varied_fields(ctx.results)
    ctx.cells = group_cells(ctx.results, ctx.axes)
    ctx.read()
    sections = build_sections(ctx)
    store.write_bytes(ctx.out_dir / "report.md", render_markdown(ctx, sections).encode())
    index = ctx.out_dir / "index.html"
    store.write_bytes(index, render_html(ctx, sections).encode())
    return Written(index=index, broken=ctx.broken, healed=[r.key for r in healed])
