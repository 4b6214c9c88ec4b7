"""Grid YAML -> list[Trial]: base, profile, axes (cartesian), include/exclude, seeds, --set overrides."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import TRIAL_FIELDS, ConfigError, Trial, coerce, unknown_key

GRID_KEYS = ("name", "description", "base", "axes", "include", "exclude", "seeds", "profiles")


@dataclass(frozen=True)
class Grid:
    """A grid file expanded into trials."""

    name: str
    path: Path
    trials: tuple[Trial, ...]
    profile: str | None
    axes: tuple[str, ...]  # the fields that vary across its trials


def read_yaml(path: Path | str) -> Any:
    """Safe-load a YAML file; any problem is one ConfigError line naming the file and the place."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
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


def _fields(values: Any, where: str) -> dict[str, Any]:
    """Check and convert a mapping of Trial fields (unknown keys, types, ranges)."""
    return {k: coerce(str(k), v, f"{where}.{k}") for k, v in _mapping(values, where).items()}


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are YAML scalars (true, 1e-4, resnet50)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=5")
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = coerce(key.strip(), value, f"--set {key.strip()}")
    return out


def expand(
    spec: Mapping[str, Any], *, where: str, profile: str | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[list[Trial], tuple[str, ...]]:
    """Expand a parsed grid mapping into trials, in a stable order; return them and the varied fields."""
    for key in spec:
        if key not in GRID_KEYS:
            raise unknown_key(str(key), GRID_KEYS, where)
    base = _fields(spec.get("base"), f"{where}: base")

    profiles = _mapping(spec.get("profiles"), f"{where}: profiles")
    if profile is not None:
        if profile not in profiles:
            valid = ", ".join(profiles) or "none defined"
            raise ConfigError(f"{where}: unknown profile {profile!r}; valid: {valid}")
        base.update(_fields(profiles[profile], f"{where}: profiles.{profile}"))
    for name, values in profiles.items():  # a typo in an unused profile is still a typo
        _fields(values, f"{where}: profiles.{name}")

    axes_spec = _mapping(spec.get("axes"), f"{where}: axes")
    axes: dict[str, list[Any]] = {}
    for field, values in axes_spec.items():
        if field == "seed":
            raise ConfigError(f"{where}: axes.seed: list seeds under 'seeds:', not as an axis")
        if not isinstance(values, list):
            raise ConfigError(f"{where}: axes.{field}: expected a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"{where}: axes.{field} is empty; give at least one value")
        axes[str(field)] = [coerce(str(field), v, f"{where}: axes.{field}[{i}]") for i, v in enumerate(values)]

    overrides = dict(overrides or {})
    for field in overrides.keys() & axes.keys():
        axes[field] = [overrides[field]]  # --set collapses the axis it names to that one value
    cells = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else [{}]
    for i, extra in enumerate(spec.get("include") or []):
        cells.append(_fields(extra, f"{where}: include[{i}]"))
    excludes = [_fields(ex, f"{where}: exclude[{i}]") for i, ex in enumerate(spec.get("exclude") or [])]

    seeds_raw = spec.get("seeds", [base.get("seed", 0)])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise ConfigError(f"{where}: seeds: expected a non-empty list of integers, e.g. [0, 1, 2]")
    seeds = [coerce("seed", s, f"{where}: seeds[{i}]") for i, s in enumerate(seeds_raw)]

    trials: list[Trial] = []
    seen: dict[str, str] = {}
    for cell in cells:
        if any(all(cell.get(k, base.get(k)) == v for k, v in ex.items()) for ex in excludes):
            continue
        for seed in seeds:
            trial = Trial(**{**base, **cell, "seed": seed, **overrides})
            if trial.key in seen and overrides:
                continue  # an include cell that --set made equal to another cell
            if trial.key in seen:
                raise ConfigError(
                    f"{where}: duplicate trial {trial.label} (key {trial.key}); "
                    "check axes, include and --set for repeated settings"
                )
            seen[trial.key] = trial.label
            trials.append(trial)
    if not trials:
        raise ConfigError(f"{where}: the grid is empty (every trial was excluded)")
    varied = tuple(f for f in TRIAL_FIELDS if len({getattr(t, f) for t in trials}) > 1)
    return trials, varied


def load_grid(path: Path | str, *, profile: str | None = None, overrides: Sequence[str] = ()) -> Grid:
    """Read, validate and expand a grid file. Raises ConfigError with one line on any problem."""
    path = Path(path)
    spec = read_yaml(path)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{path}: name={name!r} must be letters, digits, '-' or '_' (it names the results directory)")
    trials, varied = expand(spec, where=str(path), profile=profile, overrides=parse_set(overrides))
    return Grid(name=name, path=path, trials=tuple(trials), profile=profile, axes=varied)
