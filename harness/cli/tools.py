"""The subcommands that set up and measure: data (synth, stats, prepare), weights, grids, bench."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from harness.cli.commands import COMMANDS, EXIT_OK, runtime_of
from harness.config import ConfigError, Runtime, Trial, default_cache_dir
from harness.registry import Registry


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
    from harness.gridinput import builtin_grids, is_search, read_yaml

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

    _, runtime = prepare.resolve_dataset([Trial()], runtime_of(args))
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
    r = placement.measure_packing(trial, runtime_of(args))
    probes = "\n".join(
        f"{p['copies']} side by side  {p['images_per_s']:10.0f} images/s together, peak {p['peak_gpu_mb']:,.0f} MB each"
        for p in r["probes"]
    )
    return _print_bench(
        r, args.json, [f"{r['shape']} on {r['gpu']}", probes, f"trials per GPU: {r['copies']} (kept in {r['file']})"]
    )
