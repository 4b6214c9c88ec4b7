"""The search file: its keys, the base trial and profile, the metric, the pruner and the sampler, validated."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import store as store_mod
from harness.config import CONDITIONS, ConfigError, Trial, trial_from_dict, unknown_key, with_weights_file
from harness.gridfile import expand
from harness.gridinput import read_yaml
from harness.search.space import Param, check_keys, parse_space, used

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
# Fields that shape the decoded-image cache (arch through its native size): their categorical choices are
# cached up front, once, with every core.
CACHE_FIELDS = ("arch", "image_size", "subset_fraction", "subset_test", "val_fraction")
CHECK_LIMIT = 4096  # corner combinations checked against the registries before anything starts


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
            *(
                f"  {p.describe()}"
                + (f" (drawn only when {CONDITIONS[p.field].when})" if p.field in CONDITIONS else "")
                for p in self.space.values()
            ),
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
    check_keys(spec, ("grace_period", "reduction_factor", "max_t"), where)
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
    name = _search_name(spec, path)
    base, declared, space = _base_and_space(spec, profile, where)
    metric, direction = _objective(spec, where)
    samples = _int(
        samples if samples is not None else spec.get("samples", 20),
        "--samples" if samples is not None else f"{where}: samples",
        low=1,
    )
    concurrency = _int(spec.get("concurrency", 1), f"{where}: concurrency", low=1)
    pruner = _parse_pruner(spec.get("pruner", {}), epochs=base.epochs, declared=declared, where=f"{where}: pruner")
    seed, startup = _sampler(spec, where)
    storage = _storage(spec, name, where)
    return Search(
        name=name,
        path=path,
        profile=profile,
        base=with_weights_file(base, f"{where}: base"),
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


def _search_name(spec: Any, path: Path) -> str:
    """Keys step: the file is a mapping of known keys; its name (else the file's stem) can name a folder."""
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
    return name


def _base_and_space(spec: Mapping[str, Any], profile: str | None, where: str) -> tuple[Trial, int, dict[str, Param]]:
    """Base and space step: the base trial with its profile, the epochs the base declares, and the space less the
    fields the profile pins."""
    # The base and its profile are a grid's: the same keys, types, ranges and messages.
    trial_spec = {k: spec[k] for k in ("base", "profiles") if k in spec}
    base = expand(trial_spec, where=where, profile=profile)[0][0]
    declared = expand(trial_spec, where=where)[0][0].epochs if profile else base.epochs
    space = parse_space(spec.get("space"), f"{where}: space")
    # A profile pins what it sets: a smoke profile's arch is not searched over.
    pinned = set(spec["profiles"][profile] or {}) if profile is not None else set()
    space = used(
        {k: p for k, p in space.items() if k not in pinned}, base.to_dict(), pinned=pinned, where=f"{where}: space"
    )
    if profile is not None and not space:
        raise ConfigError(f"{where}: profile {profile!r} pins every searched field; nothing is left to search")
    return base, declared, space


def _objective(spec: Mapping[str, Any], where: str) -> tuple[str, str]:
    """Objective step: the metric (one trials report, validation only) and the direction that improves it."""
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
    return metric, direction


def _sampler(spec: Mapping[str, Any], where: str) -> tuple[int, int]:
    """Sampler step: TPE's seed and its random startup trials."""
    sampler = spec.get("sampler") or {}
    if not isinstance(sampler, Mapping):
        raise ConfigError(f"{where}: sampler: expected a mapping {{seed, startup_trials}}, got {sampler!r}")
    check_keys(sampler, ("seed", "startup_trials"), f"{where}: sampler")
    seed = _int(sampler.get("seed", 0), f"{where}: sampler.seed", low=0)
    startup = _int(sampler.get("startup_trials", 10), f"{where}: sampler.startup_trials", low=0)
    return seed, startup


def _storage(spec: Mapping[str, Any], name: str, where: str) -> str | None:
    """Storage step: a database URL, or None for the SQLite file in the search's results folder."""
    storage = spec.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(
            f"{where}: storage={storage!r}: expected a database URL such as "
            "sqlite:///path/study.db or postgresql://user@host/db, or leave it out "
            f"for results/{name}/{store_mod.Store.STUDY}"
        )
    return storage


def load_search(path: Path | str, *, profile: str | None = None, samples: int | None = None) -> Search:
    """Read and validate a search file (samples overrides the file's: --samples)."""
    path = Path(path)
    return parse_search(read_yaml(path), path=path, profile=profile, samples=samples)


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
