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
