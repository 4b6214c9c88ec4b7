"""How a subcommand's --help reads: the formatter, the examples that end it, and argparse's number types.

parser.py holds the grammar itself; this is what every part of it is written with.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence

# A command line as a user types it, and what it is for. Every one is parsed by a test, so none can rot.
Example = tuple[str, str]


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped, examples kept line by line, and each option's default after its help.

    argparse's ArgumentDefaultsHelpFormatter would also print "(default: None)" and "(default: False)";
    here an option without a value of its own, or whose help already states its default, is left as it is.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # the examples: one command line per line, lined up as written
            return "".join(indent + line for line in text.splitlines(keepends=True))
        # A paragraph: wrapped, but never inside a name such as ChestX-ray14.
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        takes_default = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        no_value = any(action.default is v for v in (None, False, argparse.SUPPRESS))  # `is`: 0 == False
        if not takes_default or no_value or "(default" in text:
            return text
        return f"{text} (default: %(default)s)"


def epilog(lines: Sequence[Example]) -> str:
    """The examples section: each command line with its purpose as a shell comment, so it pastes as it is."""
    width = max(len(line) for line, _ in lines)
    return "examples:\n" + "\n".join(f"  {line:<{width}}  # {why}" for line, why in lines)


def command(
    sub: argparse._SubParsersAction, name: str, *, help: str, examples: Sequence[Example]
) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with what it does and ends with examples."""
    return sub.add_parser(name, help=help, description=help, epilog=epilog(examples), formatter_class=HelpFormatter)


def count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= least (argparse turns the ValueError into one line and exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise ValueError(text)
        return value

    parse.__name__ = f"whole number >= {least}"  # argparse names the type in its message
    return parse
