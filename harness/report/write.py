"""`harness report`: read a grid's results through the store, heal what can be healed, and write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import rescore, store
from harness.config import ConfigError
from harness.report.cells import field_order, group_cells, lockstep, varied_fields
from harness.report.context import Context
from harness.report.page import draw_sections, render_html, render_markdown, write_tables

# The fewest resamples `harness report --n-boot` takes: a 95% interval's tails are its 2.5% extremes, 2-3
# resamples each at 100. Tests call write_report with fewer to stay fast.
MIN_N_BOOT = 100


@dataclass
class Written:
    """What a report run wrote and what it left out."""

    index: Path
    broken: list[str] = field(default_factory=list)  # one line per trial left out: the trial and what is damaged
    healed: list[str] = field(default_factory=list)  # keys whose metrics were rebuilt from their predictions


def recompute_metrics(result: store.Result) -> store.Result:
    """metrics.json rebuilt from predictions.npz with the trial's own seed and bootstrap size (rescore)."""
    merged = rescore.rebuilt_metrics(result.files)
    result.files.replace_metrics(merged)
    return store.Result(trial=result.trial, metrics=merged, path=result.path)


def heal(grid_dir: Path, broken: store.Broken) -> store.Result | None:
    """A broken trial whose only damaged file is metrics.json, with its metrics rebuilt from its intact
    predictions; None when anything else is damaged."""
    files = store.TrialFiles(grid_dir / broken.key)
    if not rescore.heal(files, broken.damaged, weights=False):
        return None
    return store.Result(trial=files.read_trial(), metrics=files.read_metrics(), path=files.path)


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
    scan = _scan(grid_dir, n_boot)
    ctx = Context(
        grid_dir=grid_dir,
        out_dir=Path(out_dir) if out_dir is not None else Path("reports") / grid_dir.name,
        results=scan.results,
        failures=scan.failures,
        reference=reference,
        n_boot=n_boot,
        progress=progress,
    )
    if recompute and scan.broken:
        healed = _heal_broken(ctx, scan.broken)
    else:
        healed, ctx.broken = [], list(scan.broken)
    archs = sorted({str(r.trial.get("arch")) for r in scan.results + healed}, key=lambda a: field_order("arch", a))
    if reference is not None and reference not in archs:
        raise ConfigError(f"reference arch {reference!r} has no results in {grid_dir}; valid: {', '.join(archs)}")
    if recompute:
        with ctx.bar(total=len(scan.results), desc="recomputing metrics", unit="trial") as bar:
            ctx.results = []
            for r in scan.results:
                ctx.results.append(recompute_metrics(r))
                bar.update()
    if healed:
        ctx.results = sorted(ctx.results + healed, key=lambda r: (r.trial.get("label", ""), r.key))  # the store's order
    index = _write_pages(ctx)
    return Written(index=index, broken=ctx.broken, healed=[r.key for r in healed])


def _scan(grid_dir: Path, n_boot: int) -> store.Scan:
    """Check step: the grid folder exists and holds trials, and n_boot is usable; then what the store found."""
    if not grid_dir.is_dir():
        raise ConfigError(
            f"{grid_dir}: no such results directory; give results/<grid name> as written by `harness run GRID`"
        )
    scan = store.scan(grid_dir)
    if not scan.results and not scan.failures and not scan.broken:
        raise ConfigError(f"{grid_dir}: no finished or failed trials here; run `harness run GRID` first")
    if n_boot < 1:
        raise ConfigError(f"n_boot={n_boot} is out of range; valid: an integer >= 1")
    return scan


def _heal_broken(ctx: Context, broken: list[store.Broken]) -> list[store.Result]:
    """Heal step (--recompute): each broken trial rebuilt where only its metrics.json is damaged; the rest go to
    ctx.broken, to be named in the report."""
    healed: list[store.Result] = []
    with ctx.bar(total=len(broken), desc="healing broken trials", unit="trial") as bar:
        for b in broken:
            if (r := heal(ctx.grid_dir, b)) is not None:
                healed.append(r)
            else:
                ctx.broken.append(b)
            bar.update()
    return healed


def _write_pages(ctx: Context) -> Path:
    """Page step: the cells and axes of the results, every section (figures and tables written), report.md and
    index.html; returns the index's path."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.varied = varied_fields(ctx.results)
    ctx.followers = lockstep(ctx.results, ctx.varied)
    ctx.axes = [a for a in ctx.varied if not any(a in f for f in ctx.followers.values())]
    ctx.cells = group_cells(ctx.results, ctx.varied)
    ctx.read()
    sections = draw_sections(ctx)
    write_tables(ctx.out_dir, sections)
    store.write_bytes(ctx.out_dir / "report.md", render_markdown(ctx, sections).encode())
    index = ctx.out_dir / "index.html"
    store.write_bytes(index, render_html(ctx, sections).encode())
    return index
