"""The command line teaches: every command's help ends with examples that parse and name real grids, profiles and
archs; every option says what it is and its default; grids and search spaces are listed apart, and a search space
given to `harness run` is one line naming the command that runs it."""

from __future__ import annotations

import argparse
import shlex

import pytest

from harness import cli
from harness.cli.helptext import HelpFormatter
from harness.cli.parser import build_parser
from harness.gridinput import BUILTIN_DIR, builtin_grids, is_search, read_yaml

SHELL = {">", ">>", "|", "&&", ";"}  # an example may redirect its output; the command ends there


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) for the program and every subcommand under it, however deep."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


COMMANDS = dict(commands(build_parser()))
IDS = [" ".join(("harness", *path)) for path in COMMANDS]


def example_lines(parser: argparse.ArgumentParser) -> list[str]:
    return [line.strip() for line in (parser.epilog or "").splitlines() if line.strip().startswith("harness ")]


EXAMPLES = [(path, line) for path, parser in COMMANDS.items() for line in example_lines(parser)]


def argv_of(line: str) -> list[str]:
    """The arguments after the program's name, up to any redirection; `python -m harness` is the same program."""
    tokens = shlex.split(line, comments=True)
    tokens = tokens[: next((i for i, t in enumerate(tokens) if t in SHELL), len(tokens))]
    prefix = 3 if tokens[:3] == ["python", "-m", "harness"] else 1
    assert tokens[prefix - 1] == "harness", line
    return tokens[prefix:]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_every_help_ends_with_examples(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    tail = out.rstrip("\n").split("\nexamples:\n")[-1].splitlines()
    assert all(line.startswith("  harness ") for line in tail), tail  # the examples are the last thing
    assert (len(tail) >= 3) if not path else (2 <= len(tail) <= 3), tail
    assert "(default: None)" not in out and "(default: False)" not in out


def test_the_programs_help_shows_the_usual_flow():
    flow = [argv_of(line)[0] for line in example_lines(build_parser())]
    assert {"run", "report", "search"} <= set(flow)
    assert flow.index("run") < flow.index("report")


@pytest.mark.parametrize("path", list(COMMANDS), ids=IDS)
def test_every_option_has_help_and_shows_its_default(path):
    parser = COMMANDS[path]
    formatter = HelpFormatter(parser.prog)
    for action in options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{' '.join(path)} {name}: no help"
        valued = action.default is not None and action.default is not False
        if valued and (action.option_strings or action.nargs == "?"):
            assert "(default: " in formatter._get_help_string(action), f"{' '.join(path)} {name}: no default shown"


def check_names(args: argparse.Namespace) -> None:
    """What an example names exists: its grid and profile, search space, arch, CAM method (as a run checks them)."""
    if args.command == "run":
        cli.experiments.checked_grid(args)
    elif args.command == "search":
        from harness import search

        search.check_search(search.load_search(args.search, profile=args.profile, samples=args.samples))
    elif args.command == "grids" and args.action == "show":
        assert args.name in builtin_grids()
    from harness import models

    for arch in [*(getattr(args, "archs", None) or []), getattr(args, "arch", None), getattr(args, "reference", None)]:
        if arch is not None:
            models.spec(arch)
    if args.command == "cam":
        from harness.cam import METHODS

        METHODS[args.method]


@pytest.mark.parametrize("path, line", EXAMPLES, ids=[line.split("  #")[0] for _, line in EXAMPLES])
def test_every_example_parses_and_names_what_exists(path, line, capsys):
    argv = argv_of(line)
    assert tuple(argv[: len(path)]) == path, f"{line!r} is not an example of harness {' '.join(path)}"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{line!r} does not parse: {capsys.readouterr().err.strip()}")
    check_names(args)


def listing(capsys) -> dict[str, list[str]]:
    """`harness grids` as heading -> the names under it."""
    assert cli.main(["grids"]) == 0
    sections: dict[str, list[str]] = {}
    names: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  "):
            names.append(line.split()[0])
        elif line.endswith(":"):
            names = sections.setdefault(line, [])
    return sections


def test_grids_lists_runnable_grids_and_search_spaces_apart(capsys):
    sections = listing(capsys)
    grids = next(names for heading, names in sections.items() if heading.startswith("grids (harness run"))
    spaces = next(names for heading, names in sections.items() if heading.startswith("search spaces (harness search"))
    assert "paper" in grids and "search" in spaces
    assert sorted(grids + spaces) == sorted(builtin_grids())
    assert all(is_search(read_yaml(builtin_grids()[name])) for name in spaces)
    assert not any(is_search(read_yaml(builtin_grids()[name])) for name in grids)


@pytest.mark.parametrize(
    "argv",
    [
        ["search"],
        ["grids/search.yaml", "--dry-run"],
        [str(BUILTIN_DIR / "search.yaml")],
        ["search", "--profile", "smoke", "--dry-run"],
    ],
)
def test_run_given_a_search_space_says_how_to_run_it(argv, capsys):
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "unknown key" not in err
    hint = err.split("run it with: ")[1].strip()
    profile = ["--profile", "smoke"] if "--profile" in argv else []
    assert shlex.split(hint) == ["harness", "search", argv[0], *profile]
    args = build_parser().parse_args(argv_of(hint))  # the command it names is one that works
    check_names(args)


def test_a_search_file_of_ones_own_is_told_apart_too(tmp_path, capsys):
    mine = tmp_path / "my search.yaml"
    mine.write_text((BUILTIN_DIR / "search.yaml").read_text())
    assert cli.main(["run", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run it with: harness search {shlex.quote(str(mine))}" in err
