"""What the runner relies on in Ray beyond its documented interface, in one place, each checked by a contract test.

- ASHA's rungs are primed with a study's earlier curves through its public scheduler methods, fed a
  stand-in trial that carries only a trial_id: ASHA reads nothing else of a trial.
tests/test_search.py::test_ray_contract checks CONTRACT and the stand-in against the installed Ray and names
whatever an upgrade moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.tune.schedulers import AsyncHyperBandScheduler

# What this module calls, for the contract test: (class, attribute).
CONTRACT = (
    (AsyncHyperBandScheduler, "on_trial_add"),
    (AsyncHyperBandScheduler, "on_trial_result"),
    (AsyncHyperBandScheduler, "on_trial_remove"),
)


def contract_problems() -> list[str]:
    """Every attribute this module relies on that the installed Ray lacks, one line each."""
    return [
        f"ray {ray.__version__}: {cls.__name__}.{name} is gone (harness/runner/ray_internals.py uses it)"
        for cls, name in CONTRACT
        if not callable(getattr(cls, name, None))
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
