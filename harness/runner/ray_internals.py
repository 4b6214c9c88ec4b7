"""What the runner relies on in Ray beyond its documented interface, in one place, each checked by a contract test.

- ASHA's rungs are primed with a study's earlier curves through its public scheduler methods, fed a
  stand-in trial that carries only a trial_id: ASHA reads nothing else of a trial.
- What ended a trial's attempt is read from the error Tune pickles beside the trial's local state
  (Trial.pickled_error_file) as it happens: Trial.get_pickled_error reads the copy in storage, written later.
- Ray's and Tune's environment knobs and a logger of Tune's, each set here and nowhere else: what the
  harness's own summary and progress bar replace (banners, per-trial tracebacks, a SIGINT handler that
  points at Tuner.restore) and where a trial runs (the driver's working directory).
tests/test_search.py::test_ray_contract checks CONTRACT and the stand-in against the installed Ray and names
whatever an upgrade moved.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray import cloudpickle
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler

# What this module calls, for the contract test: (class, attribute).
CONTRACT = (
    (AsyncHyperBandScheduler, "on_trial_add"),
    (AsyncHyperBandScheduler, "on_trial_result"),
    (AsyncHyperBandScheduler, "on_trial_remove"),
    (Trial, "pickled_error_file"),
    (Trial, "get_pickled_error"),
)


def contract_problems() -> list[str]:
    """Every attribute this module relies on that the installed Ray lacks, one line each."""
    return [
        f"ray {ray.__version__}: {cls.__name__}.{name} is gone (harness/runner/ray_internals.py uses it)"
        for cls, name in CONTRACT
        if not (callable(attr := getattr(cls, name, None)) or isinstance(attr, property))
    ]


@dataclass(frozen=True)
class StandIn:
    """A past trial as ASHA sees it: an id, nothing more."""

    trial_id: str


def prime(scheduler: AsyncHyperBandScheduler, time_attr: str, metric: str, curves: Sequence[dict[int, float]]) -> None:
    """Replay earlier trials' per-epoch curves into ASHA, so its rungs start from them, not from zero.

    Each curve is added, reported epoch by epoch (ASHA records a trial at the first epoch at or past each
    milestone, as it does a live one) and removed again; its decisions are ignored.
    """
    for i, curve in enumerate(curves):
        past = StandIn(f"study-{i}")
        scheduler.on_trial_add(None, past)
        for epoch in sorted(curve):
            scheduler.on_trial_result(None, past, {time_attr: epoch, metric: curve[epoch]})
        scheduler.on_trial_remove(None, past)


def last_error(trial: Any) -> BaseException | None:
    """The error that ended a Tune trial's last attempt (in a Callback's on_trial_recover or on_trial_error)."""
    path = getattr(trial, "pickled_error_file", None)
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    return trial.get_pickled_error()


ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own: the cluster to join when none is given


def env_address() -> str | None:
    """The cluster RAY_ADDRESS names; None when unset. Set but empty it is removed: Ray would read "" as one."""
    if os.environ.get(ADDRESS_ENV) == "":
        del os.environ[ADDRESS_ENV]
    return os.environ.get(ADDRESS_ENV) or None


def driver_environment() -> None:
    """Before ray.init, what a user has not set otherwise: repeated worker lines folded into one, trials kept in
    the driver's working directory (relative paths in a grid mean what they meant), and no experiment banner on
    stdout (the progress bar and the summary say it)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """name=value for the length of the block, then as it was (unset if it was)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def quiet_tuner() -> Iterator[None]:
    """For a Tuner's fit: no traceback per failed trial (read when the Tuner starts its controller; the harness
    says each failure in one line) and no notes about result files the harness does not read."""
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _environment("TUNE_PRINT_ALL_TRIAL_ERRORS", "0"):
            yield
    finally:
        quiet.setLevel(level)


def without_tune_sigint_handler() -> contextlib.AbstractContextManager[None]:
    """Tune's own SIGINT handler off (it would point at Tuner.restore, not at rerunning the harness's command)."""
    return _environment("TUNE_DISABLE_SIGINT_HANDLER", "1")
