"""The search space: one Param per searched Trial field, checked against the field's type and valid values, and
sampled define-by-run: a field that only some settings use (config.CONDITIONS) is drawn only under them."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna

from harness.config import CONDITIONS, TRIAL_FIELDS, ConfigError, coerce, unknown_key
from harness.registry import Registry

# Fields a search may not vary, and why.
FIXED = {
    "seed": "a search compares settings, not seeds; the exported grid reruns the best with several seeds",
    "dataset": "every trial of a study must see the same data",
    "epochs": "it is the pruner's max_t: set it in base",
}
RANGE_PROBES = 21  # points of a numeric range checked against the field's valid values


@dataclass(frozen=True)
class Param:
    """One searched Trial field."""

    field: str

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> Param:
        raise NotImplementedError

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this field's value for a trial of the study."""
        raise NotImplementedError

    def values(self) -> tuple[Any, ...]:
        """The values worth checking before anything starts: the ends of a range, every choice."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


PARAMS: Registry[type[Param]] = Registry("parameter type")


def check_keys(spec: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in spec:
        if key not in allowed:
            raise unknown_key(str(key), allowed, where)


# A field's type -> how to say it, and the parameter type that searches it.
_KINDS = {
    int: ("integers", "int"),
    float: ("numbers", "float"),
    bool: ("true or false", "categorical"),
    str: ("names", "categorical"),
}


def _field_kind(name: str) -> type:
    return type(TRIAL_FIELDS[name].default)


def _bounds(name: str, spec: Mapping[str, Any], where: str, kind: type) -> tuple[Any, Any, bool]:
    """low, high and log of a numeric range, each checked against the field's type and valid values."""
    if _field_kind(name) is not kind:
        words, use = _KINDS[_field_kind(name)]
        raise ConfigError(f"{where}: {name} takes {words}; use type: {use}")
    for end in ("low", "high"):
        if end not in spec:
            raise ConfigError(
                f"{where}: a {kind.__name__} range needs low and high, e.g. {{type: {kind.__name__}, low: 1, high: 4}}"
            )
    low, high = (coerce(name, spec[end], f"{where}.{end}") for end in ("low", "high"))
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log_scale!r}")
    if low == high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty; for a single value set {name} in base")
    if low > high:
        raise ConfigError(f"{where}: the range is inverted (low {low} > high {high})")
    if log_scale and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got low {low}")
    return low, high, log_scale


def _probe(name: str, points: Iterable[Any], where: str) -> None:
    """Every point must be a valid value of the field (a range may straddle an invalid gap, like focal_alpha's)."""
    for value in points:
        try:
            coerce(name, value, where)
        except ConfigError:
            raise ConfigError(
                f"{where}: the range includes {name}={value:g}, which is out of range for {name}; narrow the range"
            ) from None


@dataclass(frozen=True)
class _Range(Param):
    """A numeric range of a field, optionally on a log scale; the ends are what is checked up front."""

    low: Any = 0
    high: Any = 1
    log: bool = False
    FORMAT: ClassVar[str] = "g"

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.FORMAT == "d":
            return trial.suggest_int(self.field, self.low, self.high, log=self.log)
        return trial.suggest_float(self.field, self.low, self.high, log=self.log)

    def values(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def describe(self) -> str:
        kind, fmt = "float" if self.FORMAT == "g" else "int", self.FORMAT
        return f"{self.field}: {kind} in [{self.low:{fmt}}, {self.high:{fmt}}]{' (log)' if self.log else ''}"


@PARAMS.register("float")
@dataclass(frozen=True)
class FloatParam(_Range):
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> FloatParam:
        check_keys(spec, ("type", "low", "high", "log"), where)
        low, high, log_scale = _bounds(name, spec, where, float)
        if log_scale:
            points = [
                math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (RANGE_PROBES - 1))
                for i in range(RANGE_PROBES)
            ]
        else:
            points = [low + i * (high - low) / (RANGE_PROBES - 1) for i in range(RANGE_PROBES)]
        _probe(name, points[1:-1], where)
        return cls(field=name, low=low, high=high, log=log_scale)


@PARAMS.register("int")
@dataclass(frozen=True)
class IntParam(_Range):
    low: int = 0
    high: int = 1
    FORMAT: ClassVar[str] = "d"

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> IntParam:
        check_keys(spec, ("type", "low", "high", "log"), where)
        low, high, log_scale = _bounds(name, spec, where, int)
        step = max(1, (high - low) // (RANGE_PROBES - 1))
        _probe(name, range(low, high + 1, step), where)
        return cls(field=name, low=low, high=high, log=log_scale)


@PARAMS.register("categorical")
@dataclass(frozen=True)
class CategoricalParam(Param):
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> CategoricalParam:
        check_keys(spec, ("type", "choices"), where)
        raw = spec.get("choices")
        if not isinstance(raw, list) or not raw:
            raise ConfigError(
                f"{where}: a categorical needs a non-empty list of choices, e.g. {{type: categorical, choices: [a, b]}}"
            )
        choices = tuple(coerce(name, v, f"{where}.choices[{i}]") for i, v in enumerate(raw))
        if len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: choices {list(choices)} repeat a value")
        if len(choices) == 1:
            raise ConfigError(f"{where}: only one choice ({choices[0]!r}); for a single value set {name} in base")
        return cls(field=name, choices=choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.field, self.choices)

    def values(self) -> tuple[Any, ...]:
        return self.choices

    def describe(self) -> str:
        return f"{self.field}: one of {', '.join(map(str, self.choices))}"


def parse_space(spec: Any, where: str) -> dict[str, Param]:
    """The `space:` mapping -> one Param per Trial field; ConfigError with one line on any problem."""
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{where}: expected a non-empty mapping of field: {{type: float|int|categorical, ...}}")
    space: dict[str, Param] = {}
    for name, param in spec.items():
        name = str(name)
        here = f"{where}.{name}"
        if name not in TRIAL_FIELDS:
            raise unknown_key(name, list(TRIAL_FIELDS), where)
        if name in FIXED:
            raise ConfigError(f"{here}: {name} cannot be searched: {FIXED[name]}")
        if not isinstance(param, Mapping):
            raise ConfigError(
                f"{here}: expected a mapping like {{type: float, low: 1e-5, high: 1e-3, log: true}}, got {param!r}"
            )
        kind = param.get("type")
        if kind not in PARAMS:
            raise ConfigError(f"{here}.type: {PARAMS.unknown(kind)}")
        space[name] = PARAMS[kind].parse(name, param, here)
    return space


def order(space: Mapping[str, Param]) -> list[Param]:
    """The space's params, each conditional one after the field it depends on: the order they are drawn in."""
    left, ordered = dict(space), []
    while left:
        ready = [name for name in left if name not in CONDITIONS or CONDITIONS[name].on not in left]
        ordered += [left.pop(name) for name in ready]
    return ordered


def sample(trial: optuna.Trial, *, space: Mapping[str, Param], base: Mapping[str, Any]) -> dict[str, Any]:
    """One point, define-by-run: every searched field the values drawn so far (over the base's) use.

    A bce trial draws no focal_gamma: the study holds no value the training never read, TPE models the
    focal parameters on focal trials only, and the trial's key is the one of its settings alone.
    """
    values, params = dict(base), {}
    for param in order(space):
        condition = CONDITIONS.get(param.field)
        if condition is None or condition.active(values):
            params[param.field] = values[param.field] = param.suggest(trial)
    return params


def used(space: Mapping[str, Param], base: Mapping[str, Any], *, pinned: Collection[str], where: str):
    """The space without fields no point of it uses; a field pinned away by a profile takes its users with it.

    Searching focal_gamma while loss is fixed at bce would spend trials on a value nothing reads: that is
    refused, unless a profile pinned the loss (a smoke run at bce), where the field just leaves the space.
    """
    kept: dict[str, Param] = {}
    for name, param in space.items():
        condition = CONDITIONS.get(name)
        parent = space.get(condition.on) if condition else None
        options = parent.values() if parent else (base[condition.on],) if condition else ()
        if condition is None or any(condition.test(v) for v in options):
            kept[name] = param
        elif condition.on not in pinned:
            why = (
                f"space.{condition.on} never gives that"
                if parent
                else f"base sets {condition.on}={base[condition.on]!r}"
            )
            raise ConfigError(
                f"{where}.{name} is used only when {condition.when}, but {why}; "
                f"search {condition.on} over a value that uses {name}, or remove {name} from the space"
            )
    return kept
