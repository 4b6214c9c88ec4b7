"""The command line: parse, then call one function. Heavy modules are imported inside each subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.parser import build_parser
from harness.config import ConfigError, Runtime, Trial, default_cache_dir
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.grid import Grid

COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("command")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _runtime(args: argparse.Namespace) -> Runtime:
    gpus = getattr(args, "gpus_per_trial", "auto")
    if gpus != "auto":
        try:
            gpus = float(gpus)
        except ValueError:
            raise ConfigError(f"--gpus-per-trial {gpus!r}: expected a number like 0.25 or 'auto'") from None
        if not 0 <= gpus <= 8:
            raise ConfigError(f"--gpus-per-trial {gpus}: expected a share in [0, 8]")
    cpus = getattr(args, "cpus_per_trial", 1.0)
    if not 1 <= cpus <= 1024:
        raise ConfigError(f"--cpus-per-trial {cpus}: expected a number of cores >= 1")
    device = getattr(args, "device", "auto")
    if device != "auto":
        from harness import hardware  # torch: only commands with --device come here, never `harness report`

        # On a cluster the trials run on its nodes: this machine's lack of a GPU says nothing about theirs.
        on_cluster = hasattr(args, "address") and bool(args.address or os.environ.get("RAY_ADDRESS"))
        hardware.check_device(device, here=not on_cluster)
    from harness.cli.transfer import data_roots

    data_root, roots = data_roots(getattr(args, "data_root", None))  # NIH's, and the others' by name
    # Absolute paths: Ray workers run in their own working directories.
    return Runtime(
        data_root=str(Path(data_root).resolve()) if data_root else None,
        data_roots=roots,
        results_dir=str(Path(getattr(args, "results", "results")).resolve()),
        cache_dir=str(Path(getattr(args, "cache_dir", None) or default_cache_dir()).resolve()),
        device=device,
        gpus_per_trial=gpus,
        cpus_per_trial=cpus,
        address=getattr(args, "address", None),
        max_retries=getattr(args, "retries", 2),
        compile=getattr(args, "compile", False),
        workers=getattr(args, "workers", 0),
        reuse_workers=not getattr(args, "fresh_workers", False),
        trackers=_trackers(getattr(args, "tracker", None)),
    )


def _trackers(values: list[str] | None) -> tuple[str, ...]:
    """--tracker names, checked (known, package installed) before anything runs; ray loads only when asked."""
    if not values:
        return ()
    from harness.runner import tracking

    return tracking.parse(values)


def _checked_grid(args: argparse.Namespace) -> tuple[Grid, Runtime]:
    """The grid and runtime of `harness run`, with every check a run makes before it touches data.

    A dry run and a real run both come through here, so they refuse the same inputs with the same line.
    """
    from harness import train
    from harness.grid import load_grid

    grid = load_grid(args.grid, profile=args.profile, overrides=args.set or [], seeds=args.seeds)
    for t in grid.trials:
        try:
            train.check_trial(t)
        except ConfigError as exc:
            raise ConfigError(f"{grid.path}: {exc}") from None
    for note in grid.notes:
        print(f"harness: note: {note}", file=sys.stderr)
    return grid, _runtime(args)


LABEL_FIELDS = ("arch", "pretrained", "weights", "loss", "freeze", "subset_fraction", "seed")  # what Trial.label shows


def _dry_run_line(grid: Grid, i: int) -> str:
    """Key and label, then the groups the trial came from and the varied fields its label leaves out."""
    t = grid.trials[i]
    extra = [f"{axis}={group}" for axis, group in (grid.choices[i] if grid.choices else {}).items()]
    extra += [f"{f}={getattr(t, f)}" for f in grid.axes if f not in LABEL_FIELDS]
    return f"{t.key}  {t.label}" + (f"  {' '.join(extra)}" if extra else "")


@COMMANDS.register("run")
def cmd_run(args: argparse.Namespace) -> int:
    grid, runtime = _checked_grid(args)
    from harness import prepare
    from harness.store import Store

    Store(Path(runtime.results_dir) / grid.name).check_usable()  # before data is prepared, in a dry run too

    if args.dry_run:
        # The keys a run will use: the dataset it will read and the weights files it will load, resolved the
        # same way (nothing is written; a missing weights file is warned about, as the run would).
        trials, root = prepare.resolve(list(grid.trials), runtime)
        grid = dataclasses.replace(grid, trials=tuple(trials))
        from harness.cli.transfer import data_words

        data = data_words(trials, root, runtime)
        print(
            f"# {grid.name}: {len(grid.trials)} trials (profile: {grid.profile or 'none'}; varied: "
            f"{', '.join(grid.axes) or 'nothing'}; {data})"
        )
        print("\n".join(_dry_run_line(grid, i) for i in range(len(grid.trials))))
        return EXIT_OK
    from harness.runner import tracking
    from harness.runner.grid import run_grid

    if args.fetch_weights:
        fetch_pretrained(grid.trials)
    trials, runtime = prepare.resolve_dataset(list(grid.trials), runtime)
    prepare.prepare_all(trials, runtime)
    summary = run_grid(grid.name, trials, runtime)
    print("\n".join(summary.lines()))
    if grid.evaluate_on:  # the grid's `evaluate_on`: every finished trial scored on those datasets too
        from harness.cli import transfer

        transfer.evaluate_grid(Path(runtime.results_dir) / grid.name, grid.evaluate_on, runtime)
    print(f"report: python -m harness report {Path(runtime.results_dir) / grid.name}")
    print("\n".join(tracking.dashboards(runtime.trackers, Store(Path(runtime.results_dir) / grid.name))))
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
        args.search, profile=args.profile, samples=args.samples, runtime=_runtime(args), dry_run=args.dry_run
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
        runtime=_runtime(args),
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

    return transfer.evaluate(args, _runtime(args))


@COMMANDS.register("data")
def cmd_data(args: argparse.Namespace) -> int:
    return DATA_COMMANDS[args.data_command](args)


DATA_COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("data command")


@DATA_COMMANDS.register("synth")
def cmd_data_synth(args: argparse.Namespace) -> int:
    from harness.cli import transfer

    return transfer.data_synth(args)


def _data_root(args: argparse.Namespace) -> Path:
    from harness.data import nih

    root = nih.locate(args.root)
    if root is None:
        raise ConfigError("no data root: give ROOT or set HARNESS_DATA_ROOT")
    return root


@DATA_COMMANDS.register("stats")
def cmd_data_stats(args: argparse.Namespace) -> int:
    from harness.cli import transfer

    return transfer.data_stats(args)


@DATA_COMMANDS.register("prepare")
def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Decode the official splits once at a size, so full-data trials at that size start from the cache."""
    import time

    from harness.data import cache, nih, readers

    data = readers.load(args.root) if args.root else nih.load(_data_root(args))  # a named root: any layout
    t0, total, skipped = time.perf_counter(), 0, 0
    for name, rows in nih.split(data, val_fraction=args.val_fraction, seed=args.seed).items():
        cached = cache.build(
            data, rows, size=args.size, cache_dir=args.cache_dir or default_cache_dir(), workers=args.workers
        )
        total, skipped = total + len(cached.rows), skipped + len(cached.skipped)
        print(f"{name}: {len(cached.rows)} images at {args.size}px" + (" (reused)" if cached.reused else ""))
    secs = time.perf_counter() - t0
    print(
        f"{total} images ready in {secs:.1f} s ({total / max(secs, 1e-9):.0f} images/s); skipped {skipped}. "
        f"Trials with image_size {round(args.size * 7 / 8)} (cache {args.size}px), subset_fraction 1 and "
        f"seed {args.seed} read these caches."
    )
    return EXIT_OK


@COMMANDS.register("weights")
def cmd_weights(args: argparse.Namespace) -> int:
    from harness import models

    if args.action == "from-xrv":
        from harness.models import xrv

        out = xrv.convert(args.src, args.out)
        print(
            f"{out}: {args.src} with its stem folded for 3-channel ImageNet-normalised input; start a densenet121 "
            f"trial from it with weights: {out}"
        )
        return EXIT_OK
    for arch in args.archs:
        models.spec(arch)  # an unknown name fails before anything is written
    if args.action == "fetch":
        for arch, path in zip(args.archs, models.fetch_weights(args.archs)):
            print(f"{arch}: {path}")
        return EXIT_OK
    for arch in args.archs:
        path = models.weights_path(arch)
        if args.action == "where":
            print(f"{arch}: {path} ({'present' if path.is_file() else 'missing'}; from {models.weights_url(arch)})")
        elif models.write_placeholder(arch) is None:
            print(f"{arch}: {path} exists; left as it is")
        else:
            print(f"{arch}: PLACEHOLDER weights (random init, NOT ImageNet) written to {path}")
    return EXIT_OK


@COMMANDS.register("grids")
def cmd_grids(args: argparse.Namespace) -> int:
    """List the built-in grids, then the search spaces, each with its first comment line; or print one."""
    from harness.grid import builtin_grids, is_search, read_yaml

    builtin = builtin_grids()
    if args.action == "show":
        if args.name not in builtin:
            given = f"{args.name!r} is not a built-in grid" if args.name else "name a grid"
            raise ConfigError(f"harness grids show: {given}; built-in: {', '.join(builtin)}")
        print(builtin[args.name].read_text(), end="")
        return EXIT_OK
    searches = {name for name, path in builtin.items() if is_search(read_yaml(path))}
    width = max(map(len, builtin), default=0)
    for heading, names in (
        ("grids (harness run NAME):", [n for n in builtin if n not in searches]),
        ("search spaces (harness search NAME):", [n for n in builtin if n in searches]),
    ):
        print(heading)
        for name in names:
            first = next((line for line in builtin[name].read_text().splitlines() if line.startswith("#")), "#")
            print(f"  {name:<{width}}  {' '.join(first.lstrip('#').split())}")
    print("copy one to edit: harness grids show NAME > my.yaml")
    return EXIT_OK


BENCH_COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("bench command")


@COMMANDS.register("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    return BENCH_COMMANDS[args.bench_command](args)


def _bench_runtime(args: argparse.Namespace) -> Runtime:
    from harness import prepare

    _, runtime = prepare.resolve_dataset([Trial()], _runtime(args))
    return runtime


def _print_bench(result: dict, as_json: bool, lines: list[str]) -> int:
    print(json.dumps(result, sort_keys=True) if as_json else "\n".join(lines))
    return EXIT_OK


@BENCH_COMMANDS.register("loader")
def cmd_bench_loader(args: argparse.Namespace) -> int:
    from harness import bench

    r = bench.bench_loader(_bench_runtime(args), crop=args.crop, batch_size=args.batch, n_images=args.images)
    return _print_bench(
        r,
        args.json,
        [
            f"{r['dataset']} data, {r['images']} images, crop {r['crop']} from {r['cache_size']}px, batch {r['batch_size']}, "
            f"device {r['device']}",
            f"cached loader     {r['cached_images_per_s']:10.0f} images/s",
            f"naive PNG loader  {r['naive_png_images_per_s']:10.0f} images/s ({r['naive_workers']} workers)",
            f"ratio             {r['ratio']:10.1f}x",
        ],
    )


@BENCH_COMMANDS.register("step")
def cmd_bench_step(args: argparse.Namespace) -> int:
    from harness import bench

    r = bench.bench_step(
        _bench_runtime(args),
        arch=args.arch,
        batch_size=args.batch,
        image_size=args.image_size,
        steps=args.steps,
        windows=args.windows,
        eval_batch_size=args.eval_batch,
    )
    return _print_bench(
        r,
        args.json,
        [
            f"{r['arch']} batch {r['batch_size']} at {r['image_size']}px on {r['device_name']}"
            + (" (compiled)" if r["compile"] else ""),
            f"first step        {r['first_step_seconds']:10.1f} s",
            f"trial step        {r['step_images_per_s']:10.0f} images/s (median of {r['windows']} windows "
            f"of {r['steps_per_window']} steps, taking turns with the bare loop)",
            f"bare PyTorch loop {r['bare_images_per_s']:10.0f} images/s",
            f"step / bare       {r['step_vs_bare']:10.2f}    (window pairs "
            f"{r['step_vs_bare_range'][0]:.2f}-{r['step_vs_bare_range'][1]:.2f})",
            f"trial end-to-end  {r['trial_images_per_s']:10.0f} images/s (one epoch from the cache)",
            f"trial / bare      {r['trial_vs_bare']:10.2f}",
            f"trial / step      {r['ratio']:10.2f}",
            f"evaluation        {r['eval_images_per_s']:10.0f} images/s (batch {r['eval_batch_size']})",
        ],
    )


@BENCH_COMMANDS.register("pack")
def cmd_bench_pack(args: argparse.Namespace) -> int:
    from harness import models
    from harness.runner import placement

    trial = Trial(arch=args.arch, batch_size=args.batch, image_size=args.image_size, freeze=args.freeze)
    models.check(trial)
    r = placement.measure_packing(trial, _runtime(args))
    probes = "\n".join(
        f"{p['copies']} side by side  {p['images_per_s']:10.0f} images/s together, peak {p['peak_gpu_mb']:,.0f} MB each"
        for p in r["probes"]
    )
    return _print_bench(
        r, args.json, [f"{r['shape']} on {r['gpu']}", probes, f"trials per GPU: {r['copies']} (kept in {r['file']})"]
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="harness: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("harness: interrupted; rerun the same command to resume", file=sys.stderr)  # as runner.stopping
        return 130
    except BrokenPipeError:  # `harness run ... --dry-run | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
