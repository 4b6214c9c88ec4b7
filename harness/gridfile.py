"""Grid YAML -> list[Trial]: base, profile (and its `when` rules), axes (cartesian), include/exclude, seeds, --set.

An axis is either a Trial field with a list of values (``loss: [bce, focal]``) or a new name with a
mapping of named groups, each setting several fields together (``init: {scratch: {pretrained: false},
imagenet: {pretrained: true, freeze: 2}}``). Groups are only a way of writing cells: a trial's key
depends on its final fields, so a grid written with groups and its equivalent plain grid share keys.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from harness.config import (
    CONDITIONS,
    DATASETS,
    TRIAL_FIELDS,
    ConfigError,
    Trial,
    close_match,
    coerce,
    unknown_key,
    with_weights_file,
)

BUILTIN_DIR = Path(__file__).with_name("grids")  # shipped inside the package: `harness run paper` works anywhere
GRID_KEYS = ("name", "description", "base", "axes", "include", "exclude", "seeds", "profiles", "evaluate_on")
EVALUATE_ON = tuple(d for d in DATASETS if not d.startswith("synthetic"))  # `harness evaluate --on` names
_DEFAULTS = {name: f.default for name, f in TRIAL_FIELDS.items()}


@dataclass(frozen=True)
class Grid:
    """A grid file expanded into trials."""

    name: str
    path: Path
    trials: tuple[Trial, ...]
    profile: str | None
    axes: tuple[str, ...]  # the Trial fields that vary across its trials (a grouped axis counts by its fields)
    choices: tuple[Mapping[str, str], ...] = ()  # per trial: grouped axis -> the group it came from
    notes: tuple[str, ...] = ()  # what expansion did that a user should hear of (cells collapsed into one trial)
    evaluate_on: tuple[str, ...] = ()  # datasets every trial is scored on after training; not a Trial field


class Expansion(NamedTuple):
    trials: list[Trial]
    axes: tuple[str, ...]
    choices: list[dict[str, str]]
    notes: list[str]  # one line each, for the user: cells collapsed into the trial they repeat


# A choice on an axis: the group's name (None on a plain field axis) and the fields it sets.
Choice = tuple[str | None, dict[str, Any]]


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


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of field: value, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of cells, e.g. [{{arch: alexnet, loss: focal}}]")
    return value


def _fields(values: Any, where: str) -> dict[str, Any]:
    """Check and convert a mapping of Trial fields (unknown keys, types, ranges)."""
    return {k: coerce(str(k), v, f"{where}.{k}") for k, v in _mapping(values, where).items()}


_COUNT = re.compile(r"[0-9]+")


def seed_count(value: Any, where: str = "--seeds") -> int:
    """N from `--seeds N`: a whole number >= 1, meaning seeds 0..N-1."""
    text = str(value).strip()
    if isinstance(value, bool) or not _COUNT.fullmatch(text) or int(text) < 1:
        raise ConfigError(f"{where} {value!r}: expected a whole number >= 1 (runs seeds 0..N-1), e.g. --seeds 3")
    return int(text)


def _seeds(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{where}: expected a non-empty list of integers, e.g. [0, 1, 2] (on the command line, --seeds 3)"
        )
    return [coerce("seed", s, f"{where}[{i}]") for i, s in enumerate(value)]


class Rule(NamedTuple):
    """A profile's `when` entry: cells matching `labels` (grouped axis -> group) and `match` get `fields`."""

    labels: dict[str, str]
    match: dict[str, Any]
    fields: dict[str, Any]


def _profile(values: Any, where: str) -> tuple[dict[str, Any], list[int] | None, list[Any]]:
    """A profile's fields, its seeds when it lists some (`seeds: [0, 1, 2]`) and its `when` rules (unparsed)."""
    values = dict(_mapping(values, where))
    seeds = _seeds(values.pop("seeds"), f"{where}.seeds") if "seeds" in values else None
    when = _list(values.pop("when", None), f"{where}.when")
    return _fields(values, where), seeds, when


def _rules(entries: list[Any], groups: Mapping[str, Mapping[str, dict[str, Any]]], where: str) -> list[Rule]:
    """`when: [{match: {arch: resnet152}, set: {epochs: 1}}]`: overrides for the cells a match selects."""
    rules = []
    for i, entry in enumerate(entries):
        at = f"{where}.when[{i}]"
        entry = _mapping(entry, at)
        for key in entry:
            if key not in ("match", "set"):
                raise unknown_key(str(key), ["match", "set"], at)
        if not entry.get("match") or not entry.get("set"):
            raise ConfigError(f"{at}: expected {{match: {{FIELD: VALUE}}, set: {{FIELD: VALUE}}}}, both non-empty")
        labels, match = _cell(entry["match"], groups, f"{at}.match", include=False)
        fields = _fields(entry["set"], f"{at}.set")
        if "seed" in fields:
            raise ConfigError(f"{at}.set.seed: list seeds under 'seeds:', not in a rule")
        rules.append(Rule(labels, match, fields))
    return rules


def _matches(labels: Mapping[str, str], values: Mapping[str, Any], want: Mapping[str, str], fields: Mapping[str, Any]):
    """Whether a cell (its groups and its field values) is selected by an exclude entry or a rule's match."""
    return all(labels.get(a) == g for a, g in want.items()) and all(
        values.get(k, _DEFAULTS[k]) == v for k, v in fields.items()
    )


def _group_axis(name: str, groups: Mapping[Any, Any], where: str) -> list[Choice]:
    at = f"{where}: axes.{name}"
    if name in TRIAL_FIELDS:
        raise ConfigError(
            f"{at}: the axis of a field is a list of its values, e.g. {name}: [...]; an axis of groups "
            "needs a name that is not a field (e.g. init)"
        )
    if name == "seeds":
        raise ConfigError(f"{at}: list seeds under 'seeds:', not as an axis")
    if not groups:
        raise ConfigError(f"{at} is empty; give at least one group, e.g. imagenet: {{pretrained: true}}")
    choices: list[Choice] = []
    for label, fields in groups.items():
        if not isinstance(label, str) or not label:
            raise ConfigError(f"{at}: group name {label!r} must be text, e.g. imagenet")
        values = _fields(fields, f"{at}.{label}")
        if "seed" in values:
            raise ConfigError(f"{at}.{label}.seed: list seeds under 'seeds:', not in a group")
        choices.append((label, values))
    return choices


def _axes(spec: Any, where: str) -> dict[str, list[Choice]]:
    """Each axis as its list of choices; a field varies on one axis only."""
    axes: dict[str, list[Choice]] = {}
    owner: dict[str, str] = {}  # field -> the axis that sets it
    for name, values in _mapping(spec, f"{where}: axes").items():
        name = str(name)
        if isinstance(values, Mapping):
            axes[name] = _group_axis(name, values, where)
        elif name not in TRIAL_FIELDS:
            raise unknown_key(name, list(TRIAL_FIELDS), f"{where}: axes.{name}")
        elif name == "seed":
            raise ConfigError(f"{where}: axes.seed: list seeds under 'seeds:', not as an axis")
        elif not isinstance(values, list):
            raise ConfigError(f"{where}: axes.{name}: expected a list of values, got {values!r}")
        elif not values:
            raise ConfigError(f"{where}: axes.{name} is empty; give at least one value")
        else:
            axes[name] = [(None, {name: coerce(name, v, f"{where}: axes.{name}[{i}]")}) for i, v in enumerate(values)]
        for label, fields in axes[name]:
            for field in fields:
                other = owner.setdefault(field, name)
                if other != name:
                    place = f"axes.{name}.{label}" if label is not None else f"axes.{name}"
                    raise ConfigError(
                        f"{where}: {place} sets {field}, which axis {other!r} also sets; "
                        "a field varies on one axis only"
                    )
    return axes


def _pick(axis: str, label: Any, groups: Mapping[str, dict[str, Any]], where: str) -> dict[str, Any]:
    """The fields of one named group, or a ConfigError listing the groups there are."""
    if not isinstance(label, str) or label not in groups:
        names = list(groups)
        hint = close_match(label, names)
        raise ConfigError(f"{where}: unknown group {label!r} of axis {axis}{hint}; valid: {', '.join(names)}")
    return groups[label]


def _cell(
    entry: Any, groups: Mapping[str, Mapping[str, dict[str, Any]]], where: str, *, include: bool
) -> tuple[dict[str, str], dict[str, Any]]:
    """An include or exclude entry: groups it names (axis -> group) and the fields it sets or matches."""
    labels: dict[str, str] = {}
    fields: dict[str, Any] = {}
    entry = _mapping(entry, where)
    for key, value in entry.items():  # groups first: a field written out must not repeat one of theirs
        if key in groups:
            labels[key] = value
            picked = _pick(key, value, groups[key], f"{where}.{key}")
            if include:
                fields.update(picked)
    for key, value in entry.items():
        key = str(key)
        if key in groups:
            continue
        if key not in TRIAL_FIELDS:
            raise unknown_key(key, [*TRIAL_FIELDS, *groups], f"{where}.{key}")
        if include and key in fields:
            axis = next(a for a in labels if key in groups[a][labels[a]])
            raise ConfigError(f"{where}: {key} is set both by {axis}={labels[axis]} and directly; keep one")
        fields[key] = coerce(key, value, f"{where}.{key}")
    return labels, fields


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


def expand(
    spec: Mapping[str, Any],
    *,
    where: str,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seeds: int | None = None,
) -> Expansion:
    """Expand a parsed grid mapping into trials, in a stable order, with the varied fields and group choices.

    `overrides` are `--set` values (a grouped axis's name picks one of its groups); `seeds` = N runs
    seeds 0..N-1 in place of the grid's and the profile's.
    """
    for key in spec:
        if key not in GRID_KEYS:
            raise unknown_key(str(key), GRID_KEYS, where)
    base = _fields(spec.get("base"), f"{where}: base")
    seed_list = _seeds(spec["seeds"], f"{where}: seeds") if "seeds" in spec else [base.get("seed", 0)]

    profiles = _mapping(spec.get("profiles"), f"{where}: profiles")
    if profile is not None and profile not in profiles:
        valid = ", ".join(map(str, profiles)) or "none defined"
        raise ConfigError(f"{where}: unknown profile {profile!r}; valid: {valid}")
    parsed_profiles = {}
    for name, values in profiles.items():  # a typo in an unused profile is still a typo
        parsed_profiles[name] = _profile(values, f"{where}: profiles.{name}")
        if name == profile:
            fields, profile_seeds, _ = parsed_profiles[name]
            base.update(fields)
            seed_list = profile_seeds or seed_list
    if seeds is not None:
        seed_list = list(range(seed_count(seeds)))

    axes = _axes(spec.get("axes"), where)
    groups = {name: dict(choices) for name, choices in axes.items() if choices[0][0] is not None}
    rules: list[Rule] = []
    for name, (_, _, when) in parsed_profiles.items():
        parsed = _rules(when, groups, f"{where}: profiles.{name}")
        rules = parsed if name == profile else rules
    overrides = dict(overrides or {})
    forced = bool(overrides)  # --set can make two cells equal; that is no mistake in the file
    for name in overrides.keys() & groups.keys():  # --set AXIS=GROUP keeps that one group
        label = overrides.pop(name)
        axes[name] = [(label, _pick(name, label, groups[name], f"--set {name}"))]
    for key in overrides.keys() - TRIAL_FIELDS.keys():
        raise unknown_key(key, [*TRIAL_FIELDS, *groups], f"--set {key}")
    for field in overrides.keys() & axes.keys():
        axes[field] = [(None, {field: overrides[field]})]  # --set collapses the axis it names to that one value

    cells: list[tuple[dict[str, str], dict[str, Any]]] = []
    for combo in itertools.product(*axes.values()):
        labels = {name: label for name, (label, _) in zip(axes, combo) if label is not None}
        cells.append((labels, {k: v for _, fields in combo for k, v in fields.items()}))
    for i, extra in enumerate(_list(spec.get("include"), f"{where}: include")):
        cells.append(_cell(extra, groups, f"{where}: include[{i}]", include=True))
    excludes = [
        _cell(ex, groups, f"{where}: exclude[{i}]", include=False)
        for i, ex in enumerate(_list(spec.get("exclude"), f"{where}: exclude"))
    ]

    trials: list[Trial] = []
    choices: list[dict[str, str]] = []
    written: set[str] = set()  # keys of the cells as written
    seen: dict[str, Trial] = {}  # key of a trial -> the first cell, as written, that became it
    collapsed: dict[str, set[int]] = {}  # a field its settings leave unused -> cells that repeat a trial without it
    for cell, (labels, fields) in enumerate(cells):
        values = {**base, **fields}
        if any(_matches(labels, values, ex_labels, ex_fields) for ex_labels, ex_fields in excludes):
            continue
        for rule in rules:  # matched on the cell as written; a later rule wins over an earlier one
            if _matches(labels, {**base, **fields}, rule.labels, rule.match):
                values.update(rule.fields)
        for seed in seed_list:
            as_written = with_weights_file(Trial(**{**values, "seed": seed, **overrides}), where)
            trial = as_written.canonical()
            if as_written.key in written and not forced:  # forced: an include cell that --set made equal
                raise ConfigError(
                    f"{where}: duplicate trial {trial.label} (key {as_written.key}); "
                    "check axes, include and --set for repeated settings"
                )
            written.add(as_written.key)
            if trial.key in seen:
                # A cell that differs from another only in fields its settings leave unused: one trial.
                for name in CONDITIONS:
                    if getattr(seen[trial.key], name) != getattr(as_written, name):
                        collapsed.setdefault(name, set()).add(cell)
                continue
            seen[trial.key] = as_written
            trials.append(trial)
            choices.append(labels)
    if not trials:
        raise ConfigError(f"{where}: the grid is empty (every trial was excluded)")
    # A weights file's digest varies exactly where its path does: the path names the axis.
    varied = tuple(f for f in TRIAL_FIELDS if f != "weights_sha256" and len({getattr(t, f) for t in trials}) > 1)
    return Expansion(trials, varied, choices, _collapse_notes(collapsed, where))


def _collapse_notes(collapsed: Mapping[str, set[int]], where: str) -> list[str]:
    """One line: how many cells ran as a trial they repeat, and which unused fields made them differ."""
    if not collapsed:
        return []
    cells = len(set().union(*collapsed.values()))
    why = "; ".join(f"{name} is used only when {CONDITIONS[name].when}" for name in collapsed)
    return [f"{where}: {cells} cell(s) collapsed into the trial they repeat ({why}); each setting runs once"]


def _group_axis_names(spec: Mapping[str, Any]) -> list[str]:
    axes = spec.get("axes")
    return [str(k) for k, v in axes.items() if isinstance(v, Mapping)] if isinstance(axes, Mapping) else []


def load_grid(
    path: Path | str, *, profile: str | None = None, overrides: Sequence[str] = (), seeds: int | str | None = None
) -> Grid:
    """Read, validate and expand a grid file. Raises ConfigError with one line on any problem.

    `overrides` are `--set KEY=VALUE` items; `seeds` is `--seeds N` (seeds 0..N-1 for every cell).
    """
    given, path = path, locate(path)
    spec = read_yaml(path)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    if is_search(spec):  # one line with the command that does run it, not "unknown key 'space'"
        again = f"harness search {shlex.quote(str(given))}" + (f" --profile {shlex.quote(profile)}" if profile else "")
        raise ConfigError(f"{path}: a search space, not a grid; run it with: {again}")
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{path}: name={name!r} must be letters, digits, '-' or '_' (it names the results directory)")
    count = seed_count(seeds) if seeds is not None else None
    parsed = parse_set(overrides, groups=_group_axis_names(spec))
    trials, varied, choices, notes = expand(spec, where=str(path), profile=profile, overrides=parsed, seeds=count)
    return Grid(
        name=name,
        path=path,
        trials=tuple(trials),
        profile=profile,
        axes=varied,
        choices=tuple(choices),
        notes=tuple(notes),
        evaluate_on=_evaluate_on(spec.get("evaluate_on", []), path),
    )


def _evaluate_on(value: Any, path: Path) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(n not in EVALUATE_ON for n in names):
        raise ConfigError(f"{path}: evaluate_on={value!r}; valid: a list of {', '.join(EVALUATE_ON)}")
    return tuple(dict.fromkeys(names))
