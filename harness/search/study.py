"""The Optuna study: its storage, opening it safely, asking and telling this run's trials, and stale trials.

Only Optuna's public interface: ask and tell (skip_if_finished), the storage's heartbeat and
fail_stale_trials; the one call Optuna keeps for itself is in optuna_internals.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from harness import store as store_mod
from harness.config import ConfigError, Trial
from harness.search import optuna_internals
from harness.search.spec import Search

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise; the summary says it all

HEARTBEAT_S = 30  # how often a running search tells the storage its trials are alive
GRACE_S = 120  # a RUNNING trial silent this long was left by a search that is gone (killed, its machine lost)

STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
    "interrupted": optuna.trial.TrialState.FAIL,  # Optuna has no state for it: the attrs say, and a rerun resumes it
}
INTERRUPTED = "interrupted: the search was stopped"


def storage(
    search: Search, grid_dir: Path, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> optuna.storages.RDBStorage:
    """The study's database: SQLite in the results folder unless the search names a URL; with heartbeats."""
    url = search.storage or f"sqlite:///{store_mod.Store(grid_dir).study_path.resolve()}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: since Optuna 2.9
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s)
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server: all user-fixable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        shown = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # never print a password
        raise ConfigError(f"{search.path}: storage {shown}: {first}") from None


def open_study(search: Search, storage: optuna.storages.BaseStorage, base: Trial) -> optuna.Study:
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


def _running(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}


def fail_stale(study: optuna.Study) -> int:
    """Fail RUNNING trials whose heartbeat stopped GRACE_S ago; a live search elsewhere keeps its own."""
    before = _running(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return len(before - _running(study))


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial a stop signal cut short (told so), or one whose search died under it (failed as stale)."""
    if trial.state is not optuna.trial.TrialState.FAIL:
        return False
    return trial.user_attrs.get("outcome", "interrupted") == "interrupted"


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue each interrupted trial's point once more, to be asked before any new one: its settings (so its key
    and folder) are the same, and the trial resumes from its last finished epoch. Returns the numbers queued."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumes") for t in trials}
    queued = [t.number for t in trials if interrupted(t) and t.number not in taken and t.params]
    for number in queued:
        study.enqueue_trial(trials[number].params, user_attrs={"resumes": number})
    return queued


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state, interrupted ones apart from failed ones (Optuna files both as FAIL); `resumed`: the
    interrupted ones a later trial took up (queued or run)."""
    trials = study.get_trials(deepcopy=False)
    out = {s.name.lower(): sum(t.state is s for t in trials) for s in optuna.trial.TrialState}
    cut = {t.number for t in trials if interrupted(t)}
    out["interrupted"] = len(cut)
    out["resumed"] = len(cut & {t.user_attrs.get("resumes") for t in trials})
    out["fail"] -= out["interrupted"]
    return out


def prior(study: optuna.Study) -> list[dict[int, float]]:
    """Per-epoch curves of the study's finished trials: ASHA's rungs start from them on a rerun."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return [{int(k): float(v) for k, v in t.intermediate_values.items() if math.isfinite(v)} for t in done]


class LiveTrials:
    """This run's trials, by the runner's trial id: asked from the study, reported per epoch, told how they ended.

    `sample` draws a new trial's point define-by-run (space.sample), so a field is drawn only where it is used.
    The study learns what really happened. Intermediate values are stepped by epoch, each once (a replayed
    or retried epoch is not reported twice). `finish` tells PRUNED (Optuna then takes the last epoch's
    value), COMPLETE with the best epoch's value (run_trial keeps the best weights; without a finite value
    it is a FAIL), or FAIL. While the run lasts a thread records each live trial's heartbeat, so that
    another search on the same storage never takes them for stale; `close` fails what was never told.
    Optuna's own pruners are not used: the runner's ASHA prunes.
    """

    def __init__(
        self,
        study: optuna.Study,
        sample: Callable[[optuna.Trial], Mapping[str, Any]],
        *,
        storage: optuna.storages.BaseStorage,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.study, self.sample, self.storage = study, sample, storage
        self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self._asked: dict[str, optuna.Trial] = {}
        self._curves: dict[str, dict[int, float]] = {}
        self._told: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat_every, args=(heartbeat_s,), daemon=True)
        self._beats.start()

    def ask(self, trial_id: str) -> dict[str, Any]:
        """The point of the space for a new trial (the same point when asked again)."""
        with self._lock:
            if trial_id not in self._asked:
                with warnings.catch_warnings():
                    # Optuna's heartbeat note is for optimize(); this object beats for ask-and-tell trials itself.
                    warnings.simplefilter("ignore", UserWarning)
                    trial = self.study.ask()
                self._asked[trial_id] = trial
                self.sample(trial)
                self._beat([trial])
            return dict(self._asked[trial_id].params)

    def report(self, trial_id: str, epoch: int, value: float) -> None:
        """One epoch's value of a live trial."""
        if trial_id in self._told or trial_id not in self._asked:
            return
        curve = self._curves.setdefault(trial_id, {})
        if epoch not in curve:
            curve[epoch] = value
            self._asked[trial_id].report(value, epoch)

    def epochs(self, trial_id: str) -> int:
        return len(self._curves.get(trial_id, {}))

    def finish(self, trial_id: str, *, outcome: str, attrs: Mapping[str, Any]) -> None:
        """Tell the study how a trial ended (complete, pruned or failed); later calls change nothing."""
        with self._lock:
            if trial_id in self._told or trial_id not in self._asked:
                return
            self._told.add(trial_id)
        trial = self._asked[trial_id]
        values = [v for v in self._curves.get(trial_id, {}).values() if math.isfinite(v)]
        best = (max if self.maximize else min)(values) if values else None
        for key, v in {**attrs, "outcome": outcome, "epochs_run": self.epochs(trial_id)}.items():
            trial.set_user_attr(key, v)
        if outcome == "interrupted":
            trial.set_user_attr("reason", INTERRUPTED)
        state = STATES[outcome]
        if state is optuna.trial.TrialState.COMPLETE and best is None:
            trial.set_user_attr("reason", "no finite value")
            state = optuna.trial.TrialState.FAIL
        value = best if state is optuna.trial.TrialState.COMPLETE else None
        self.study.tell(trial, value, state=state, skip_if_finished=True)

    def close(self) -> None:
        """Stop the heartbeat; a trial asked but never told (the run was stopped) is interrupted, saying so."""
        self._stop.set()
        self._beats.join()
        for trial_id in list(self._asked):
            if trial_id not in self._told:
                self.finish(trial_id, outcome="interrupted", attrs={"ray_trial_id": trial_id})

    def _live(self) -> list[optuna.Trial]:
        with self._lock:
            return [t for tid, t in self._asked.items() if tid not in self._told]

    def _beat(self, trials: list[optuna.Trial]) -> None:
        for trial in trials:
            optuna_internals.record_heartbeat(self.storage, self.study.study_name, trial.number)

    def _beat_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self._beat(self._live())
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("could not record the search's heartbeat (%s: %s)", type(exc).__name__, exc)
