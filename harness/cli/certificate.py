"""`harness reproduce`: certify that stored trials come back from their recipes (registered in COMMANDS)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from harness.cli import COMMANDS, _runtime


@COMMANDS.register("reproduce")
def cmd_reproduce(args: argparse.Namespace) -> int:
    """One trial, or a seeded sample of a grid's done trials; exit 0 when every one is identical or within noise,
    1 when one is different, 2 (ConfigError) for bad input before anything trains."""
    from harness import reproduce

    runtime = dataclasses.replace(_runtime(args), progress=False)
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
