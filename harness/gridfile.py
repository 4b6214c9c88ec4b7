"""Grid YAML -> list[Trial]: base, profile (and its `when` rules), axes (cartesian), include/exclude, seeds, --set.

An axis is either a Trial field with a list of values (``loss: [bce, focal]``) or a new name with a
mapping of named groups, each setting several fields together (``init: {scratch: {pretrained: false},
imagenet: {pretrained: true, freeze: 2}}``). Groups are only a way of writing cells: a trial's key
depends on its final fields, so a grid written with groups and its equivalent plain grid share keys.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
from harness.gridinput import is_search, locate, parse_set, read_yaml, seed_count

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


def _field_axis(name: str, values: Any, where: str) -> list[Choice]:
    """A plain axis (`loss: [bce, focal]`): the field's values, each checked and converted."""
    if name not in TRIAL_FIELDS:
        raise unknown_key(name, list(TRIAL_FIELDS), f"{where}: axes.{name}")
    if name == "seed":
        raise ConfigError(f"{where}: axes.seed: list seeds under 'seeds:', not as an axis")
    if not isinstance(values, list):
        raise ConfigError(f"{where}: axes.{name}: expected a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{where}: axes.{name} is empty; give at least one value")
    return [(None, {name: coerce(name, v, f"{where}: axes.{name}[{i}]")}) for i, v in enumerate(values)]


def _claim_fields(owner: dict[str, str], name: str, choices: list[Choice], where: str) -> None:
    """Record axis `name` as the one that sets its fields (owner: field -> axis); a second axis is an error."""
    for label, fields in choices:
        for field in fields:
            other = owner.setdefault(field, name)
            if other != name:
                place = f"axes.{name}.{label}" if label is not None else f"axes.{name}"
                raise ConfigError(
                    f"{where}: {place} sets {field}, which axis {other!r} also sets; a field varies on one axis only"
                )


def _axes(spec: Any, where: str) -> dict[str, list[Choice]]:
    """Each axis as its list of choices; a field varies on one axis only."""
    axes: dict[str, list[Choice]] = {}
    owner: dict[str, str] = {}  # field -> the axis that sets it
    for name, values in _mapping(spec, f"{where}: axes").items():
        name = str(name)
        grouped = isinstance(values, Mapping)
        axes[name] = _group_axis(name, values, where) if grouped else _field_axis(name, values, where)
        _claim_fields(owner, name, axes[name], where)
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
    profiles, seed_list = _apply_profile(spec, profile, base, seed_list, where)
    if seeds is not None:
        seed_list = list(range(seed_count(seeds)))
    axes = _axes(spec.get("axes"), where)
    groups = {name: dict(choices) for name, choices in axes.items() if choices[0][0] is not None}
    rules = _profile_rules(profiles, profile, groups, where)
    forced = bool(overrides)  # --set can make two cells equal; that is no mistake in the file
    fixed = _apply_overrides(axes, groups, overrides or {})
    cells, excludes = _cells(spec, axes, groups, where)
    trials, choices, collapsed = _trials(cells, excludes, rules, base, seed_list, fixed, forced=forced, where=where)
    if not trials:
        raise ConfigError(f"{where}: the grid is empty (every trial was excluded)")
    # A weights file's digest varies exactly where its path does: the path names the axis.
    varied = tuple(f for f in TRIAL_FIELDS if f != "weights_sha256" and len({getattr(t, f) for t in trials}) > 1)
    return Expansion(trials, varied, choices, _collapse_notes(collapsed, where))


def _apply_profile(
    spec: Mapping[str, Any], profile: str | None, base: dict[str, Any], seed_list: list[int], where: str
) -> tuple[dict[str, tuple[dict[str, Any], list[int] | None, list[Any]]], list[int]]:
    """Profiles step: every profile parsed, the chosen one's fields laid over `base` (in place); returns the
    parsed profiles and the seeds (the chosen profile's, when it lists some)."""
    profiles = _mapping(spec.get("profiles"), f"{where}: profiles")
    if profile is not None and profile not in profiles:
        valid = ", ".join(map(str, profiles)) or "none defined"
        raise ConfigError(f"{where}: unknown profile {profile!r}; valid: {valid}")
    parsed = {}
    for name, values in profiles.items():  # a typo in an unused profile is still a typo
        parsed[name] = _profile(values, f"{where}: profiles.{name}")
        if name == profile:
            fields, profile_seeds, _ = parsed[name]
            base.update(fields)
            seed_list = profile_seeds or seed_list
    return parsed, seed_list


def _profile_rules(
    profiles: Mapping[str, tuple[Any, Any, list[Any]]], profile: str | None, groups, where
) -> list[Rule]:
    """`when` step: every profile's rules checked against the axes' groups; the chosen profile's returned."""
    rules: list[Rule] = []
    for name, (_, _, when) in profiles.items():
        parsed = _rules(when, groups, f"{where}: profiles.{name}")
        rules = parsed if name == profile else rules
    return rules


def _apply_overrides(
    axes: dict[str, list[Choice]], groups: Mapping[str, Mapping[str, dict[str, Any]]], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """--set step: AXIS=GROUP keeps that one group, FIELD=VALUE collapses the field's axis to that value (both
    change `axes` in place); returns the field values every trial takes."""
    overrides = dict(overrides)
    for name in overrides.keys() & groups.keys():  # --set AXIS=GROUP keeps that one group
        label = overrides.pop(name)
        axes[name] = [(label, _pick(name, label, groups[name], f"--set {name}"))]
    for key in overrides.keys() - TRIAL_FIELDS.keys():
        raise unknown_key(key, [*TRIAL_FIELDS, *groups], f"--set {key}")
    for field in overrides.keys() & axes.keys():
        axes[field] = [(None, {field: overrides[field]})]  # --set collapses the axis it names to that one value
    return overrides


Cell = tuple[dict[str, str], dict[str, Any]]  # the groups a cell picks (axis -> group) and the fields it sets


def _cells(
    spec: Mapping[str, Any], axes: Mapping[str, list[Choice]], groups: Mapping[str, Any], where: str
) -> tuple[list[Cell], list[Cell]]:
    """Cells step: the cartesian product of the axes, then the include entries; and the exclude entries."""
    cells: list[Cell] = []
    for combo in itertools.product(*axes.values()):
        labels = {name: label for name, (label, _) in zip(axes, combo) if label is not None}
        cells.append((labels, {k: v for _, fields in combo for k, v in fields.items()}))
    for i, extra in enumerate(_list(spec.get("include"), f"{where}: include")):
        cells.append(_cell(extra, groups, f"{where}: include[{i}]", include=True))
    excludes = [
        _cell(ex, groups, f"{where}: exclude[{i}]", include=False)
        for i, ex in enumerate(_list(spec.get("exclude"), f"{where}: exclude"))
    ]
    return cells, excludes


def _with_rules(labels: Mapping[str, str], fields: Mapping[str, Any], base: Mapping[str, Any], rules: list[Rule]):
    """A cell's values over the base, with each rule that matches the cell as written applied in order."""
    values = {**base, **fields}
    for rule in rules:  # matched on the cell as written; a later rule wins over an earlier one
        if _matches(labels, {**base, **fields}, rule.labels, rule.match):
            values.update(rule.fields)
    return values


def _trials(
    cells: list[Cell],
    excludes: list[Cell],
    rules: list[Rule],
    base: Mapping[str, Any],
    seed_list: list[int],
    fixed: Mapping[str, Any],
    *,
    forced: bool,
    where: str,
) -> tuple[list[Trial], list[dict[str, str]], dict[str, set[int]]]:
    """Trials step: each cell not excluded, with its rules, once per seed; a cell that repeats a trial only in
    fields its settings leave unused runs once, and is counted (field -> cells) for the note."""
    trials: list[Trial] = []
    choices: list[dict[str, str]] = []
    written: set[str] = set()  # keys of the cells as written
    seen: dict[str, Trial] = {}  # key of a trial -> the first cell, as written, that became it
    collapsed: dict[str, set[int]] = {}  # a field its settings leave unused -> cells that repeat a trial without it
    for cell, (labels, fields) in enumerate(cells):
        if any(_matches(labels, {**base, **fields}, ex_labels, ex_fields) for ex_labels, ex_fields in excludes):
            continue
        values = _with_rules(labels, fields, base, rules)
        for seed in seed_list:
            as_written = with_weights_file(Trial(**{**values, "seed": seed, **fixed}), where)
            trial = as_written.canonical()
            if as_written.key in written and not forced:  # forced: an include cell that --set made equal
                raise ConfigError(
                    f"{where}: duplicate trial {trial.label} (key {as_written.key}); "
                    "check axes, include and --set for repeated settings"
                )
            written.add(as_written.key)
            if trial.key in seen:  # differs from another cell only in fields its settings leave unused: one trial
                for name in (n for n in CONDITIONS if getattr(seen[trial.key], n) != getattr(as_written, n)):
                    collapsed.setdefault(name, set()).add(cell)
                continue
            seen[trial.key] = as_written
            trials.append(trial)
            choices.append(labels)
    return trials, choices, collapsed


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
