"""Profile a trial's training step beside the bare PyTorch loop's (harness.bench.step_pair) on one batch.

What the harness adds per step, host side: torch.profiler's ops (calls and self CPU time per step, each
side), the host time outside any op (Python), and the harness's own Python functions (cProfile). Each side
is profiled twice, in the order A B B A, so that drift falls on both. On a loaded machine compare calls
first: they do not depend on the load; times do.

    PYTHONPATH=. python scripts/profile_step.py --arch resnet50 --size 64 --batch 8 --steps 10 [--epoch]

--epoch adds the trial's epoch (train_one_epoch over loader batches) against its one-batch step.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import statistics
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from harness import bench, hardware, train
from harness.config import Trial
from harness.data import loader


def op_profile(step, steps: int) -> tuple[dict[str, list[float]], float, str]:
    """{op: [calls, self CPU us]} over `steps` steps, their wall seconds, and torch's own table."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    ops = {e.key: [e.count, e.self_cpu_time_total] for e in averages}
    return ops, wall, averages.table(sort_by="self_cpu_time_total", row_limit=15)


def python_profile(step, steps: int) -> pstats.Stats:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    return pstats.Stats(prof)


def epoch_rates(pair: bench.StepPair, trial: Trial, steps: int, rounds: int = 4) -> dict[str, list[float]]:
    """images/s of the trial's step on its one batch, the bare loop's, the trial's steps over loader batches
    made beforehand, and train_one_epoch over the same batches (the loader's threads cutting them meanwhile),
    in rounds whose order reverses each time. Random uint8 images stand in for the cache."""
    size = trial.image_size
    rng = np.random.default_rng(0)
    n = trial.batch_size * steps
    images = rng.integers(0, 255, (n, loader.load_size(size), loader.load_size(size)), dtype=np.uint8)
    labels = (rng.random((n, 14)) < 0.1).astype(np.float32)
    batches = loader.Batches(images, labels, batch_size=trial.batch_size, crop=size, train=True, drop_last=True)
    made = list(batches)  # epoch 0's batches, as train_one_epoch below sees them
    cpu = torch.device("cpu")

    def fixed() -> None:
        for _ in range(steps):
            pair.step()

    def bare() -> None:
        for _ in range(steps):
            pair.bare()

    def loop() -> None:
        for x, y in made:
            train.train_step(pair.model, x, y, loss_fn=pair.loss_fn, optimizer=pair.optimizer, device=cpu)

    def epoch() -> None:
        train.train_one_epoch(
            pair.model, batches, trial=trial, loss_fn=pair.loss_fn, optimizer=pair.optimizer, device=cpu, epoch=0
        )

    runs = {
        "trial step, one batch": fixed,
        "bare loop, one batch": bare,
        "trial step, loader batches made first": loop,
        "train_one_epoch, loader threads running": epoch,
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t0 = time.perf_counter()
            runs[name]()
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="profiled steps per side and round")
    p.add_argument("--epoch", action="store_true", help="also time the trial's epoch against its step")
    args = p.parse_args(argv)

    hardware.keep_freed_memory()
    torch.manual_seed(0)
    trial = Trial(arch=args.arch, image_size=args.size, batch_size=args.batch)
    pair = bench.step_pair(trial, torch.device("cpu"))
    sides = {"trial": pair.step, "bare": pair.bare}
    for _ in range(3):
        for step in sides.values():
            step()

    ops: dict[str, collections.Counter] = {name: collections.Counter() for name in sides}
    calls: dict[str, collections.Counter] = {name: collections.Counter() for name in sides}
    wall = dict.fromkeys(sides, 0.0)
    tables = {}
    for name in ("trial", "bare", "bare", "trial"):
        found, seconds, tables[name] = op_profile(sides[name], args.steps)
        wall[name] += seconds
        for key, (count, self_us) in found.items():
            calls[name][key] += count
            ops[name][key] += self_us
    n = 2 * args.steps

    print(
        f"# {args.arch} at {args.size} px, batch {args.batch}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"# command: PYTHONPATH=. python scripts/profile_step.py {' '.join(sys.argv[1:])}")
    print(f"# {n} profiled steps per side, in rounds trial, bare, bare, trial of {args.steps} steps\n")
    print(f"{'per step':<40}{'trial':>12}{'bare':>12}")
    print(f"{'wall ms':<40}{1e3 * wall['trial'] / n:12.1f}{1e3 * wall['bare'] / n:12.1f}")
    op_ms = {name: sum(ops[name].values()) / 1e3 / n for name in sides}
    print(f"{'self CPU in ops, ms':<40}{op_ms['trial']:12.1f}{op_ms['bare']:12.1f}")
    print(
        f"{'wall outside ops (Python, waits), ms':<40}{1e3 * wall['trial'] / n - op_ms['trial']:12.1f}"
        f"{1e3 * wall['bare'] / n - op_ms['bare']:12.1f}"
    )
    print(f"{'op calls':<40}{sum(calls['trial'].values()) / n:12.1f}{sum(calls['bare'].values()) / n:12.1f}")

    print("\n## ops whose calls per step differ (trial - bare)")
    differ = sorted(k for k in calls["trial"].keys() | calls["bare"].keys() if calls["trial"][k] != calls["bare"][k])
    print(f"{'op':<44}{'trial':>8}{'bare':>8}")
    for key in differ:
        print(f"{key[:43]:<44}{calls['trial'][key] / n:8.1f}{calls['bare'][key] / n:8.1f}")
    if not differ:
        print("(none: both sides run the same ops the same number of times)")

    print("\n## largest differences in self CPU time per step (trial - bare), us")
    print(f"{'op':<44}{'trial':>10}{'bare':>10}{'diff':>10}")
    keys = ops["trial"].keys() | ops["bare"].keys()
    for key in sorted(keys, key=lambda k: -abs(ops["trial"][k] - ops["bare"][k]))[:15]:
        t, b = ops["trial"][key] / n, ops["bare"][key] / n
        print(f"{key[:43]:<44}{t:10.0f}{b:10.0f}{t - b:10.0f}")

    for name in sides:
        print(f"\n## torch.profiler, {name} step, last round ({args.steps} steps), by self CPU time")
        print(tables[name])

    print("## Python function calls per step (cProfile, one round of each side)")
    stats = {name: python_profile(step, args.steps).stats for name, step in sides.items()}

    for name, found in stats.items():
        total = sum(ncalls for _, ncalls, _, _, _ in found.values())
        print(f"{name}: {total / args.steps:.0f} function calls")

    def where(file: str, line: int, func: str) -> str:
        return func if file == "~" else f"{func} ({'/'.join(file.split('/')[-2:])}:{line})"

    def counts(found) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for (file, line, func), (_, ncalls, _, _, _) in found.items():
            out[where(file, line, func)] += ncalls
        return out

    ours, theirs = counts(stats["trial"]), counts(stats["bare"])
    print("\n## functions called a different number of times per step (trial, bare)")
    for key in sorted(ours.keys() | theirs.keys()):
        if ours[key] != theirs[key]:
            print(f"{key[:90]:<92}{ours[key] / args.steps:6.1f}{theirs[key] / args.steps:6.1f}")
    if args.epoch:
        print(f"\n## images/s, {args.steps} steps a run, 4 runs in turn (order reversed each round)")
        for name, rates in epoch_rates(pair, trial, args.steps).items():
            print(f"{name:<44}{statistics.median(rates):8.1f}   runs {' '.join(f'{r:.1f}' for r in rates)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
