"""Hyperparameter search: a search file -> a persistent Optuna study (TPE) run through Ray Tune with ASHA.

The only module that imports optuna. A search file names a base trial, the space of Trial fields to vary,
the metric (validation only: trials run with test=False and never see the test split), the pruner, and
where the study lives. Each invocation adds `samples` NEW trials to the study: the study persists
(SQLite at results/<name>/study.db unless `storage:` names a database URL), so running the same command
again continues it, and a search killed half-way keeps every finished trial. The best configuration is
exported as a grid file that reruns it with three seeds and evaluates on the test split.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from harness import grid as grid_mod
from harness import store as store_mod
from harness.config import TRIAL_FIELDS, ConfigError, Runtime, Trial, coerce, trial_from_dict, unknown_key
from harness.registry import Registry

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise; the summary says it all

SEARCH_KEYS = (
    "name",
    "description",
    "base",
    "profiles",
    "space",
    "metric",
    "direction",
    "samples",
    "concurrency",
    "pruner",
    "sampler",
    "storage",
)
# What run_trial reports every epoch, and the direction that improves each (all on the validation split).
METRICS = {"val_auc": "maximize", "val_loss": "minimize", "train_loss": "minimize"}
DIRECTIONS = {"maximize": "max", "minimize": "min"}  # Optuna's words -> Ray's
# Fields a search may not vary, and why.
FIXED = {
    "seed": "a search compares settings, not seeds; the exported grid reruns the best with several seeds",
    "dataset": "every trial of a study must see the same data",
    "epochs": "it is the pruner's max_t: set it in base",
}
# Fields that shape the decoded-image cache (arch through its native size): their categorical choices are
# cached up front, once, with every core.
CACHE_FIELDS = ("arch", "image_size", "subset_fraction", "subset_test", "val_fraction")
CHECK_LIMIT = 4096  # corner combinations checked against the registries before anything starts
RANGE_PROBES = 21  # points of a numeric range checked against the field's valid values


# --- the search space ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched Trial field."""

    field: str

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> Param:
        raise NotImplementedError

    def distribution(self) -> optuna.distributions.BaseDistribution:
        raise NotImplementedError

    def values(self) -> tuple[Any, ...]:
        """The values worth checking before anything starts: the ends of a range, every choice."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


PARAMS: Registry[type[Param]] = Registry("parameter type")


def _check_keys(spec: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
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


@PARAMS.register("float")
@dataclass(frozen=True)
class FloatParam(Param):
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> FloatParam:
        _check_keys(spec, ("type", "low", "high", "log"), where)
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

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def values(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def describe(self) -> str:
        return f"{self.field}: float in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


@PARAMS.register("int")
@dataclass(frozen=True)
class IntParam(Param):
    low: int = 0
    high: int = 1
    log: bool = False

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> IntParam:
        _check_keys(spec, ("type", "low", "high", "log"), where)
        low, high, log_scale = _bounds(name, spec, where, int)
        step = max(1, (high - low) // (RANGE_PROBES - 1))
        _probe(name, range(low, high + 1, step), where)
        return cls(field=name, low=low, high=high, log=log_scale)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)

    def values(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def describe(self) -> str:
        return f"{self.field}: int in [{self.low}, {self.high}]{' (log)' if self.log else ''}"


@PARAMS.register("categorical")
@dataclass(frozen=True)
class CategoricalParam(Param):
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> CategoricalParam:
        _check_keys(spec, ("type", "choices"), where)
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

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.choices)

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


# --- the search file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruner:
    """ASHA: stops a trial at a rung (grace_period * reduction_factor^k epochs) when it is below the top 1/rf."""

    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class Search:
    """A search file, validated; `base` has the profile applied."""

    name: str
    path: Path
    profile: str | None
    base: Trial
    space: dict[str, Param]
    metric: str = "val_auc"
    direction: str = "maximize"
    samples: int = 20  # NEW trials per invocation (a rerun adds as many again)
    concurrency: int = 1
    pruner: Pruner | None = Pruner()  # None: every trial runs all its epochs
    seed: int = 0  # the TPE sampler's
    startup_trials: int = 10  # random trials before TPE models the space (Optuna's default)
    storage: str | None = None  # a database URL; None: SQLite at results/<name>/study.db

    @property
    def study_name(self) -> str:
        """One study per search and profile: a smoke run never mixes with the full one."""
        return f"{self.name}-{self.profile}" if self.profile else self.name

    def trial(self, params: Mapping[str, Any]) -> Trial:
        """The trial of one point of the space."""
        return trial_from_dict({**self.base.to_dict(), **params}, where=f"{self.path}: trial")

    def describe(self) -> list[str]:
        pruning = (
            f"ASHA grace {self.pruner.grace_period}, reduction {self.pruner.reduction_factor:g}, "
            f"max_t {self.base.epochs}"
            if self.pruner
            else "off"
        )
        return [
            f"# {self.study_name}: {self.samples} new trials, {self.metric} ({self.direction}), "
            f"concurrency {self.concurrency}, pruning {pruning}, TPE seed {self.seed}",
            f"base {self.base.label} ({self.base.epochs} epochs, image_size {self.base.image_size})",
            *(f"  {p.describe()}" for p in self.space.values()),
        ]


def _int(value: Any, where: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: expected an integer >= {low}, got {value!r}")
    return value


def _parse_pruner(spec: Any, *, epochs: int, declared: int, where: str) -> Pruner | None:
    """ASHA's settings; `epochs` are the trials' (profile applied), `declared` the base's as written."""
    if spec is None or spec in ("none", "off", False):
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{grace_period, reduction_factor, max_t}} or none")
    _check_keys(spec, ("grace_period", "reduction_factor", "max_t"), where)
    grace = _int(spec.get("grace_period", 1), f"{where}.grace_period", low=1)
    rf = spec.get("reduction_factor", 3)
    if isinstance(rf, str):
        with contextlib.suppress(ValueError):
            rf = float(rf)
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not rf > 1:
        raise ConfigError(f"{where}.reduction_factor: expected a number > 1, got {rf!r}")
    # ASHA runs to the end of training: a profile that changes epochs moves max_t with it.
    if "max_t" in spec and spec["max_t"] != declared:
        raise ConfigError(
            f"{where}.max_t={spec['max_t']!r} must equal base epochs ({declared}): "
            "ASHA's last rung is the end of training"
        )
    if grace >= epochs and "grace_period" not in spec:
        return None  # a one-epoch trial has no epoch to stop at: the default pruner steps aside
    if grace >= epochs:
        raise ConfigError(
            f"{where}.grace_period={grace} leaves no epoch to stop at before the last ({epochs}); "
            f"valid: 1..{epochs - 1}, or pruner: none"
        )
    return Pruner(grace_period=grace, reduction_factor=float(rf))


def parse_search(spec: Any, *, path: Path, profile: str | None = None, samples: int | None = None) -> Search:
    """Validate a parsed search file; every problem is one ConfigError line naming the file and the key."""
    where = str(path)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(SEARCH_KEYS)}")
    for key in spec:
        if key not in SEARCH_KEYS:
            raise unknown_key(str(key), SEARCH_KEYS, where)
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"{where}: name={name!r} must be letters, digits, '-' or '_' (it names the results directory)"
        )
    # The base and its profile are a grid's: the same keys, types, ranges and messages.
    trial_spec = {k: spec[k] for k in ("base", "profiles") if k in spec}
    base = grid_mod.expand(trial_spec, where=where, profile=profile)[0][0]
    declared = grid_mod.expand(trial_spec, where=where)[0][0].epochs if profile else base.epochs
    space = parse_space(spec.get("space"), f"{where}: space")
    if profile is not None:
        # A profile pins what it sets: a smoke profile's arch is not searched over.
        pinned = set(spec["profiles"][profile] or {})
        space = {k: p for k, p in space.items() if k not in pinned}
        if not space:
            raise ConfigError(f"{where}: profile {profile!r} pins every searched field; nothing is left to search")

    metric = spec.get("metric", "val_auc")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ConfigError(
            f"{where}: metric={metric!r} is not reported by trials; valid: {', '.join(METRICS)} "
            "(validation only: a search never sees the test split)"
        )
    direction = spec.get("direction", METRICS[metric])
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ConfigError(f"{where}: direction={direction!r}; valid: {', '.join(DIRECTIONS)}")
    if direction != METRICS[metric]:
        raise ConfigError(
            f"{where}: direction={direction} would favour the worst {metric}; {metric} improves by {METRICS[metric]}"
        )

    samples = _int(
        samples if samples is not None else spec.get("samples", 20),
        "--samples" if samples is not None else f"{where}: samples",
        low=1,
    )
    concurrency = _int(spec.get("concurrency", 1), f"{where}: concurrency", low=1)
    pruner = _parse_pruner(spec.get("pruner", {}), epochs=base.epochs, declared=declared, where=f"{where}: pruner")

    sampler = spec.get("sampler") or {}
    if not isinstance(sampler, Mapping):
        raise ConfigError(f"{where}: sampler: expected a mapping {{seed, startup_trials}}, got {sampler!r}")
    _check_keys(sampler, ("seed", "startup_trials"), f"{where}: sampler")
    seed = _int(sampler.get("seed", 0), f"{where}: sampler.seed", low=0)
    startup = _int(sampler.get("startup_trials", 10), f"{where}: sampler.startup_trials", low=0)

    storage = spec.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(
            f"{where}: storage={storage!r}: expected a database URL such as "
            "sqlite:///path/study.db or postgresql://user@host/db, or leave it out "
            f"for results/{name}/{store_mod.Store.STUDY}"
        )
    return Search(
        name=name,
        path=path,
        profile=profile,
        base=base,
        space=space,
        metric=metric,
        direction=direction,
        samples=samples,
        concurrency=concurrency,
        pruner=pruner,
        seed=seed,
        startup_trials=startup,
        storage=storage,
    )


def load_search(path: Path | str, *, profile: str | None = None, samples: int | None = None) -> Search:
    """Read and validate a search file (samples overrides the file's: --samples)."""
    path = Path(path)
    return parse_search(grid_mod.read_yaml(path), path=path, profile=profile, samples=samples)


def check_search(search: Search) -> None:
    """Check the base and the corners of the space against the registries (arch, loss, freeze depth, sizes)."""
    from harness import train  # torch: only when a search is about to run

    params = list(search.space.values())
    combos = itertools.islice(itertools.product(*(p.values() for p in params)), CHECK_LIMIT)
    for combo in combos:
        trial = search.base.replace(**{p.field: v for p, v in zip(params, combo)})
        try:
            train.check_trial(trial)
        except ConfigError as exc:
            raise ConfigError(f"{search.path}: space: {exc}") from None


# --- the study ------------------------------------------------------------------------------------------

_STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}


def finish(
    study: optuna.Study, trial: optuna.Trial, *, outcome: str, value: float | None, attrs: Mapping[str, Any]
) -> None:
    """Tell the study how a trial ended. Called by tune's searcher, in the driver.

    pruned: PRUNED, and Optuna takes the last reported epoch's value as the trial's value.
    complete: COMPLETE with `value` (the best epoch's); without a finite value it is a FAIL.
    """
    for key, v in attrs.items():
        trial.set_user_attr(key, v)
    state = _STATES[outcome]
    if state is optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        trial.set_user_attr("reason", f"no finite value ({value})")
        state = optuna.trial.TrialState.FAIL
    study.tell(trial, value if state is optuna.trial.TrialState.COMPLETE else None, state=state)


def _storage(search: Search, grid_dir: Path) -> optuna.storages.BaseStorage:
    url = search.storage or f"sqlite:///{store_mod.Store(grid_dir).study_path.resolve()}"
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server: all user-fixable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        shown = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # never print a password
        raise ConfigError(f"{search.path}: storage {shown}: {first}") from None


def _open_study(search: Search, storage: optuna.storages.BaseStorage, base: Trial) -> optuna.Study:
    """Create or load the study; refuse one that was run with another metric or base trial."""
    study = optuna.create_study(
        storage=storage, study_name=search.study_name, direction=search.direction, load_if_exists=True
    )
    fixed = {k: v for k, v in base.to_dict().items() if k not in search.space}
    attrs = study.user_attrs
    if "metric" not in attrs:
        study.set_user_attr("metric", search.metric)
        study.set_user_attr("base", fixed)
        study.set_user_attr("search_file", str(search.path))
    elif attrs["metric"] != search.metric:
        raise ConfigError(
            f"{search.path}: study {search.study_name} was run with metric {attrs['metric']}, "
            f"not {search.metric}; rename the search (name:) to start a new study"
        )
    if study.direction.name.lower() != search.direction:
        raise ConfigError(
            f"{search.path}: study {search.study_name} was run to {study.direction.name.lower()}; "
            "rename the search (name:) to start a new study"
        )
    if attrs.get("base", fixed) != fixed:
        before = attrs["base"]
        changed = ", ".join(
            f"{k}: {before.get(k)!r} -> {fixed.get(k)!r}"
            for k in sorted(fixed.keys() | before.keys())
            if fixed.get(k) != before.get(k)
        )
        raise ConfigError(
            f"{search.path}: study {search.study_name} was run with other fixed settings "
            f"({changed}); "
            "trials would not be comparable; rename the search (name:) to start a new study"
        )
    return study


def fail_stale(study: optuna.Study) -> int:
    """Mark RUNNING trials FAIL: under the results lock, only a killed earlier run can have left them."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted: the search was stopped")
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def _prior(study: optuna.Study) -> list[dict[int, float]]:
    """Per-epoch curves of the study's finished trials: ASHA's rungs start from them on a rerun."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return [{int(k): float(v) for k, v in t.intermediate_values.items() if math.isfinite(v)} for t in done]


# --- outputs --------------------------------------------------------------------------------------------


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances over completed trials, most important first, or why there are none."""
    complete = _finished(study)
    if len(complete) < 2:
        return {}, f"needs >= 2 completed trials, have {len(complete)}"
    varied = {p for t in complete for p in t.params if len({repr(u.params.get(p)) for u in complete}) > 1}
    if not varied:
        return {}, "no parameter varies across the completed trials"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ranked = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return {}, f"optuna could not rank them: {exc}"
    for w in caught:
        if "too small" in str(w.message):  # PED-ANOVA then calls every parameter equally important
            return {}, f"too few completed trials ({len(complete)}) to rank: {w.message}"
    return dict(sorted(ranked.items(), key=lambda kv: -kv[1])), None


PLOTS = {  # file stem -> optuna.visualization(.matplotlib) function name
    "history": "plot_optimization_history",
    "importance": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
    "curves": "plot_intermediate_values",  # per-epoch values: shows where ASHA stopped each trial
}


def _plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optuna's standard plots as PNG (matplotlib), and as HTML where plotly is installed; stem -> file or reason."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    html = importlib.util.find_spec("plotly") is not None
    written: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API notes, and empty legends of a young study's plots
        for stem, fn in PLOTS.items():
            try:
                ax = getattr(ovm, fn)(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.set_size_inches(9, 5.5)
                fig.tight_layout()
                with store_mod.atomic_path(out / f"{stem}.png") as tmp:
                    fig.savefig(tmp, format="png", dpi=110)
                plt.close(fig)
                written[stem] = f"{stem}.png"
                if html:
                    import optuna.visualization as ov

                    with store_mod.atomic_path(out / f"{stem}.html") as tmp:
                        getattr(ov, fn)(study).write_html(str(tmp))
            except (ValueError, RuntimeError, KeyError, IndexError) as exc:  # too few trials for this plot
                plt.close("all")
                written[stem] = f"skipped: {exc}"
    return written


def best_grid(search: Search, study: optuna.Study, trial: Trial, runtime: Runtime, path: Path) -> str:
    """A grid file that reruns the best trial with seeds 0-2 and evaluates each on the test split."""
    best = study.best_trial
    command = f"python -m harness run {path}"
    if runtime.results_dir != "results":
        command += f" --results {runtime.results_dir}"
    if trial.dataset == "nih" and runtime.data_root:
        command += f" --data-root {runtime.data_root}"
    name = f"{search.study_name}-best"
    header = [
        f"# {command}",
        f"# python -m harness report {Path(runtime.results_dir) / name}",
        "#",
        f"# The best trial (#{best.number}) of study {search.study_name} from {search.path}: "
        f"{search.metric} {best.value:.4f} on the validation split.",
        "# Reruns it with three seeds and evaluates each on the official test split.",
    ]
    base = {k: v for k, v in trial.to_dict().items() if k != "seed"}
    body = yaml.safe_dump({"name": name, "base": base, "seeds": [0, 1, 2]}, sort_keys=False)
    return "\n".join(header) + "\n" + body


def export(search: Search, study: optuna.Study, runtime: Runtime) -> dict[str, Any]:
    """Write the study's outputs under results/<name>/search/<study>/ and return what was written."""
    out = store_mod.Store(Path(runtime.results_dir) / search.name).search_dir(search.study_name)
    out.mkdir(parents=True, exist_ok=True)
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    summary: dict[str, Any] = {
        "study": search.study_name,
        "metric": search.metric,
        "direction": search.direction,
        "trials": counts,
        "out": str(out),
    }
    ranked, why = importances(study)
    summary["importance"] = ranked or {"skipped": why}
    store_mod.write_json(out / "importance.json", summary["importance"])
    if _finished(study):
        best = study.best_trial
        trial = trial_from_dict({**study.user_attrs["base"], **best.params}, where=f"study {search.study_name}")
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "key": trial.key,
            "trial": trial.to_dict(),
        }
        store_mod.write_json(out / "best.json", summary["best"])
        grid_path = out / "best.yaml"
        store_mod.write_bytes(grid_path, best_grid(search, study, trial, runtime, grid_path).encode())
        summary["grid"] = str(grid_path)
    else:
        summary["best"] = None
    frame = study.trials_dataframe()
    with store_mod.atomic_path(out / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    summary["plots"] = _plots(study, out)
    store_mod.write_json(out / "summary.json", summary)
    return summary


# --- running --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One invocation: what its new trials did, and the study as it stands after it."""

    search: Search
    new: dict[str, int]  # complete / pruned / failed among this invocation's trials
    failures: list[str]  # one line per failed trial
    summary: dict[str, Any]  # from export()

    @property
    def exit_code(self) -> int:
        return 1 if self.new.get("failed") else 0

    def lines(self) -> list[str]:
        s, counts = self.summary, self.summary["trials"]
        out = [
            f"{self.search.study_name}: {sum(self.new.values())} new trials: {self.new['complete']} complete, "
            f"{self.new['pruned']} pruned, {self.new['failed']} failed; the study now holds "
            f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
        ]
        out += [f"  FAILED {line}" for line in self.failures]
        if s["best"]:
            params = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["best"]["params"].items()
            )
            out.append(f"best: trial #{s['best']['number']} {self.search.metric} {s['best']['value']:.4f} ({params})")
            out.append(f"rerun it with 3 seeds on the test split: python -m harness run {s['grid']}")
        if "skipped" in s["importance"]:
            out.append(f"importance: skipped ({s['importance']['skipped']})")
        else:
            out.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importance"].items()))
        out.append(f"outputs: {s['out']}")
        return out


def _cache_trials(search: Search, base: Trial) -> list[Trial]:
    """The base and every combination of the categorical choices that shape the image cache."""
    shaping = [p for p in search.space.values() if p.field in CACHE_FIELDS and isinstance(p, CategoricalParam)]
    return [
        base.replace(**{p.field: v for p, v in zip(shaping, combo)})
        for combo in itertools.product(*(p.choices for p in shaping))
    ]


def run(search: Search, runtime: Runtime) -> Outcome:
    """Add search.samples new trials to the study, then write its outputs. Validation happens before Ray starts."""
    from harness import train, tune

    check_search(search)
    grid_dir = Path(runtime.results_dir) / search.name
    st = store_mod.Store(grid_dir)
    st.check_writable()
    storage = _storage(search, grid_dir)  # a bad URL fails here, before any data is generated or cached
    trials, runtime = train.resolve_dataset([search.base], runtime)
    base = trials[0]
    with st.lock():
        study = _open_study(search, storage, base)
        stale = fail_stale(study)
        if stale:
            log.warning(
                "%s: %d trial(s) of an interrupted run marked failed; their finished trials are kept",
                search.study_name,
                stale,
            )
        train.prepare_all(_cache_trials(search, base), runtime)
        already = len(study.trials)
        # Offset by the trials so far: a rerun with the seed alone would draw the first run's startup points again.
        sampler = optuna.samplers.TPESampler(
            seed=search.seed + already, n_startup_trials=search.startup_trials, constant_liar=search.concurrency > 1
        )
        plan = tune.SearchPlan(
            name=search.name,
            study_name=search.study_name,
            base=base,
            space={k: p.distribution() for k, p in search.space.items()},
            sampler=sampler,
            storage=storage,
            finish=finish,
            metric=search.metric,
            mode=DIRECTIONS[search.direction],
            samples=search.samples,
            concurrency=search.concurrency,
            grace_period=search.pruner.grace_period if search.pruner else None,
            reduction_factor=search.pruner.reduction_factor if search.pruner else 3.0,
            prior=_prior(study),
        )
        result = tune.run_search(plan, runtime)
        fail_stale(study)  # trials an interruption left unfinished
        summary = export(search, study, runtime)
    return Outcome(search=search, new=result.counts(), failures=result.failure_lines(), summary=summary)


def main_search(
    path: Path | str, *, profile: str | None = None, samples: int | None = None, runtime: Runtime, dry_run: bool = False
) -> int:
    """`harness search SEARCH_YAML`: run the search, print its summary; the exit code is the CLI's."""
    search = load_search(path, profile=profile, samples=samples)
    if dry_run:
        check_search(search)
        print("\n".join(search.describe()))
        return 0
    outcome = run(search, runtime)
    print("\n".join(outcome.lines()))
    return outcome.exit_code
