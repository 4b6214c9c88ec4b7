"""What a user hands the grid stage, read and checked: a grid or search file (a built-in one by name, or a
path) and its YAML with any problem as one line, a search space told apart from a grid, `--set KEY=VALUE`
items and `--seeds N`. Expanding them into trials is gridfile's job."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.config import TRIAL_FIELDS, ConfigError, coerce, unknown_key

BUILTIN_DIR = Path(__file__).with_name("grids")  # shipped inside the package: `harness run paper` works anywhere


def builtin_grids() -> dict[str, Path]:
    """The grids shipped with the package, by name (the file's stem)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def is_search(spec: Any) -> bool:
    """Whether a parsed file is a search space for `harness search`: it has a `space`, where a grid has axes.

    Told apart here by that key alone, so the grid stage never imports the search stage above it.
    """
    return isinstance(spec, Mapping) and "space" in spec


def locate(path: Path | str) -> Path:
    """The file a grid argument names: a file that exists wins, else a built-in grid.

    A built-in is named bare (`paper`), as a file name (`paper.yaml`), or as `grids/paper.yaml`, where
    the grids lived in the repository before they moved into the package, so commands written that way
    work from any folder.
    """
    path = Path(path)
    if path.is_file():
        return path
    builtin = builtin_grids()
    if path.parent in (Path("."), Path("grids")) and path.suffix in ("", ".yaml") and path.stem in builtin:
        return builtin[path.stem]
    if path.parent == Path(".") and path.suffix in ("", ".yaml"):  # reads as a name: say which names there are
        raise ConfigError(
            f"{path}: no such file or built-in grid; built-in: {', '.join(builtin)} (harness grids lists them)"
        )
    raise ConfigError(f"{path}: no such file")


def read_yaml(path: Path | str) -> Any:
    """Safe-load a YAML file (or a built-in grid, see locate); any problem is one ConfigError line naming the
    file and the place."""
    path = locate(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


_COUNT = re.compile(r"[0-9]+")


def seed_count(value: Any, where: str = "--seeds") -> int:
    """N from `--seeds N`: a whole number >= 1, meaning seeds 0..N-1."""
    text = str(value).strip()
    if isinstance(value, bool) or not _COUNT.fullmatch(text) or int(text) < 1:
        raise ConfigError(f"{where} {value!r}: expected a whole number >= 1 (runs seeds 0..N-1), e.g. --seeds 3")
    return int(text)


def parse_set(items: Sequence[str], *, groups: Collection[str] = ()) -> dict[str, Any]:
    """`--set key=value` pairs; values are YAML scalars (true, 1e-4, resnet50). A grouped axis takes a group name."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=5")
        if key in groups:
            out[key] = raw.strip()  # a group's name, checked against the axis when the grid expands
            continue
        if key not in TRIAL_FIELDS:
            raise unknown_key(key, [*TRIAL_FIELDS, *groups], f"--set {key}")
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        out[key] = coerce(key, value, f"--set {key}")
    return out
