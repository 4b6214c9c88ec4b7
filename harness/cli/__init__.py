"""The command line: parse, then call one function. Heavy modules are imported inside each subcommand.

commands      the COMMANDS registry, exit codes, the Runtime from the options
experiments   run, report, search, cam, reproduce
tools         data, weights, grids, bench
parser        the grammar, with examples in every --help
helptext      how a --help reads: its formatter, its examples section, argparse number types
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from harness.cli import experiments, tools
from harness.cli.commands import COMMANDS, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from harness.cli.parser import build_parser
from harness.config import ConfigError
from harness.store.writes import WriteFailed

__all__ = ["COMMANDS", "experiments", "main", "tools"]  # importing the two command modules registers them


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one subcommand, and turn the ways a command can end into its exit code."""
    # Every command imports torch, ray or optuna inside itself, not here: `harness --help` and a bad option answer
    # in about 0.1 s, where importing torch alone takes 1.3 s and ray 0.3 s (python -X importtime, 2-core host).
    # Log lines go to stderr, so stdout holds only a command's answer (a dry run's trials pipe cleanly).
    logging.basicConfig(level=logging.INFO, format="harness: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, WriteFailed) as exc:  # bad input; or a full disk outside a trial (a cache, a report)
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, WriteFailed) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("harness: interrupted; rerun the same command to resume", file=sys.stderr)  # as runner.stopping
        return 130
    except BrokenPipeError:  # `harness run ... --dry-run | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
