"""The subcommands that train trials or read them back: run, report, search, cam, reproduce."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.commands import COMMANDS, EXIT_FAILED, EXIT_OK, runtime_of
from harness.config import ConfigError, Runtime, Trial

if TYPE_CHECKING:
    from harness.gridfile import Grid


def checked_grid(args: argparse.Namespace) -> tuple[Grid, Runtime]:
    """The grid and runtime of `harness run`, with every check a run makes before it touches data.

    A dry run and a real run both come through here, so they refuse the same inputs with the same line.
    """
    from harness import train
    from harness.gridfile import load_grid

    grid = load_grid(args.grid, profile=args.profile, overrides=args.set or [], seeds=args.seeds)
    for t in grid.trials:
        try:
            train.check_trial(t)
        except ConfigError as exc:
            raise ConfigError(f"{grid.path}: {exc}") from None
    for note in grid.notes:
        print(f"harness: note: {note}", file=sys.stderr)
    return grid, runtime_of(args)


LABEL_FIELDS = ("arch", "pretrained", "weights", "loss", "freeze", "subset_fraction", "seed")  # what Trial.label shows


def _dry_run_line(grid: Grid, i: int) -> str:
    """Key and label, then the groups the trial came from and the varied fields its label leaves out."""
    t = grid.trials[i]
    extra = [f"{axis}={group}" for axis, group in (grid.choices[i] if grid.choices else {}).items()]
    extra += [f"{f}={getattr(t, f)}" for f in grid.axes if f not in LABEL_FIELDS]
    return f"{t.key}  {t.label}" + (f"  {' '.join(extra)}" if extra else "")


@COMMANDS.register("run")
def cmd_run(args: argparse.Namespace) -> int:
    grid, runtime = checked_grid(args)
    from harness import prepare
    from harness.store import Store

    Store.of(runtime.results_dir, grid.name).check_usable()  # before data is prepared, in a dry run too

    if args.dry_run:
        # The keys a run will use: the dataset it will read and the weights files it will load, resolved the
        # same way (nothing is written; a missing weights file is warned about, as the run would).
        trials, root = prepare.resolve(list(grid.trials), runtime)
        grid = dataclasses.replace(grid, trials=tuple(trials))
        from harness.cli.transfer import data_words

        data = data_words(trials, root, runtime)
        if grid.evaluate_on:  # scored there after the run: `harness evaluate` reads these roots then
            data += f"; then scored on {', '.join(grid.evaluate_on)}"
        print(
            f"# {grid.name}: {len(grid.trials)} trials (profile: {grid.profile or 'none'}; varied: "
            f"{', '.join(grid.axes) or 'nothing'}; {data})"
        )
        print("\n".join(_dry_run_line(grid, i) for i in range(len(grid.trials))))
        return EXIT_OK
    from harness.runner import tracking
    from harness.runner.driver import run_grid

    if args.fetch_weights:
        fetch_pretrained(grid.trials)
    trials, runtime = prepare.resolve_dataset(list(grid.trials), runtime)
    prepare.prepare_all(trials, runtime)
    summary = run_grid(grid.name, trials, runtime)
    print("\n".join(summary.lines()))
    if grid.evaluate_on:  # the grid's `evaluate_on`: every finished trial scored on those datasets too
        from harness.cli import transfer

        transfer.evaluate_grid(Store.of(runtime.results_dir, grid.name).root, grid.evaluate_on, runtime)
    print(f"report: python -m harness report {Store.of(runtime.results_dir, grid.name).root}")
    print("\n".join(tracking.dashboards(runtime.trackers, Store.of(runtime.results_dir, grid.name))))
    return summary.exit_code


def fetch_pretrained(trials: Sequence[Trial]) -> None:
    """Download the ImageNet weights of every arch the pretrained trials use, each once (models.fetch_weights)."""
    from harness import models

    archs = list(dict.fromkeys(t.arch for t in trials if t.pretrained))
    for arch, path in zip(archs, models.fetch_weights(archs)):
        print(f"weights: {arch}: {path}", file=sys.stderr)


@COMMANDS.register("report")
def cmd_report(args: argparse.Namespace) -> int:
    from harness import report

    grid_dir = Path(args.results_dir)
    if not grid_dir.is_dir():
        raise ConfigError(f"{grid_dir}: no such results directory; run a grid first (harness run GRID)")
    if args.n_boot < report.MIN_N_BOOT:
        raise ConfigError(
            f"--n-boot {args.n_boot}: too few resamples for a 95% interval's tails; valid: an integer >= "
            f"{report.MIN_N_BOOT} (default 1000)"
        )
    written = report.write_report(
        grid_dir,
        Path(args.out) if args.out else None,
        recompute=args.recompute,
        reference=args.reference,
        n_boot=args.n_boot,
    )
    for key in written.healed:
        print(f"harness: healed {key}: metrics recomputed from its predictions", file=sys.stderr)
    for line in written.broken:
        print(f"harness: broken trial left out of the report: {line}", file=sys.stderr)
    print(f"report: {written.index}")
    if written.broken:
        print(
            f"harness: {len(written.broken)} broken trial(s) left out; `harness run` redoes them "
            "(--recompute rebuilds a damaged metrics.json from intact predictions)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


@COMMANDS.register("search")
def cmd_search(args: argparse.Namespace) -> int:
    from harness import search

    return search.main_search(
        args.search, profile=args.profile, samples=args.samples, runtime=runtime_of(args), dry_run=args.dry_run
    )


@COMMANDS.register("cam")
def cmd_cam(args: argparse.Namespace) -> int:
    from harness import cam

    out = cam.run_cam(
        Path(args.trial_dir),
        findings=tuple(args.finding or ("Atelectasis", "Effusion")),
        images=args.images,
        out_dir=Path(args.out) if args.out else None,
        method=args.method,
        layer=args.layer,
        runtime=runtime_of(args),
        max_images=args.max_images,
    )
    for fig in out["figures"]:
        print(fig)
    overall = out["scores"].get("overall") or {}
    if overall:
        print(
            f"pointing game {overall.get('pointing', float('nan')):.3f} (chance {overall.get('pointing_chance', float('nan')):.3f}) "
            f"over {overall.get('n', 0)} boxes"
        )
    return EXIT_OK


@COMMANDS.register("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.cli import transfer

    return transfer.evaluate(args, runtime_of(args))


@COMMANDS.register("reproduce")
def cmd_reproduce(args: argparse.Namespace) -> int:
    """One trial, or a seeded sample of a grid's done trials; exit 0 when every one is identical or within noise,
    1 when one is different, 2 (ConfigError) for bad input before anything trains."""
    from harness import reproduce

    runtime = dataclasses.replace(runtime_of(args), progress=False)
    trials = [Path(args.path)] if args.sample is None else reproduce.grid_sample(args.path, args.sample, seed=args.seed)
    for path in trials:
        reproduce.stored_trial(path)
    verdicts = []
    for path in trials:
        certificate = reproduce.certify(path, runtime)
        print("\n".join(reproduce.lines(certificate, path)), flush=True)
        verdicts.append(certificate["verdict"])
    if len(trials) > 1:
        print("reproduced: " + ", ".join(f"{verdicts.count(v)} {v}" for v in reproduce.EXIT_CODES if v in verdicts))
    return max(reproduce.EXIT_CODES[v] for v in verdicts)
