"""The Ray half of a search: new points of the space as trials, a searcher that tells the study, ASHA."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from harness import store as store_mod
from harness import train
from harness.config import ConfigError, Runtime, Trial, trial_from_dict
from harness.runner import placement, ray_internals, tracking
from harness.runner.attempt import attempt
from harness.runner.cluster import ray_reachable, start_ray, trial_running, use_reserved_cpus, worker_logging
from harness.runner.driver import Progress, Retries, quiet_tune, run_config
from harness.runner.stopping import Stop, resume_command, stoppable

log = logging.getLogger(__name__)

# interrupted: cut short by a stop signal, not by the scheduler; its checkpoint is kept and the next run resumes it
OUTCOMES = ("complete", "pruned", "failed", "interrupted")


@dataclass
class SearchPlan:
    """One invocation of a search, as harness.search builds it; the study is opaque here."""

    name: str  # results/<name>/ holds the trials, as a grid's do
    study_name: str
    base: Trial
    fields: list[str]  # the searched Trial fields
    archs: Sequence[str]  # every arch the space can draw: the trials' resources fit the largest
    study: Any  # ask(trial_id) -> params; report(trial_id, epoch, value); finish(trial_id, outcome=, attrs=);
    # close(): trials asked but never finished are failed, saying so
    metric: str
    mode: str  # "max" or "min"
    samples: int  # new trials
    concurrency: int
    grace_period: int | None  # None: no early stopping
    reduction_factor: float
    prior: list[dict[int, float]]  # per-epoch metric curves of the study's earlier trials


@dataclass
class SearchRun:
    """What this invocation's trials did, from Ray's results and the store."""

    trials: list[dict[str, Any]]  # key, label, outcome, epochs_run, reason
    stopped: str | None = None  # the signal that stopped the search, if one did

    def counts(self) -> dict[str, int]:
        return {o: sum(t["outcome"] == o for t in self.trials) for o in OUTCOMES}

    def failure_lines(self) -> list[str]:
        return [f"{t['label']} ({t['key']}): {t['reason']}" for t in self.trials if t["outcome"] == "failed"]


def outcome(result: dict[str, Any] | None, epochs: int, *, stopped: bool = False) -> str:
    """complete: trained every epoch; pruned: stopped by the scheduler; interrupted: cut short by a stop signal
    (`stopped`: one had come), or never started for it; failed: the trial said so, or no epoch."""
    if result and result.get("failed"):
        return "failed"
    if result and result.get("epoch", 0) >= epochs:
        return "complete"
    if stopped:
        return "interrupted"
    return "pruned" if result and "epoch" in result else "failed"


def _drawn(config: dict[str, Any]) -> dict[str, Any]:
    """The searched fields the study drew for this trial; one its settings do not use was not drawn (base's)."""
    return {f: config[f] for f in config["fields"] if f in config}


def _search_trainable(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one point of the space as a trial, its files written into the store.

    Every epoch's row goes to history.csv as it is reported, so a trial the scheduler stops keeps its curve.
    Settings already trained (a search can draw the same point twice) replay their stored curve instead.
    """
    metric, grid = config["metric"], config["grid"]
    try:
        trial = _trial_of(config, where="search trial")
    except ConfigError as exc:
        tune.report({"failed": 1, "reason": str(exc), metric: math.nan})
        return
    runtime: Runtime = config["runtime"]
    st = store_mod.Store(config["grid_dir"])
    files = st.files(trial)
    use_reserved_cpus()
    worker_logging()
    if st.is_done(trial):
        for row in files.read_history():
            tune.report({**row, "key": trial.key})
        return
    st.begin(trial, grid)
    history: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        history.append(row)
        files.write_history(history)
        tune.report({**row, "key": trial.key})

    resumed = files.load_resume()  # the epochs a killed attempt finished: run_trial reports only the rest
    for row in resumed["history"] if resumed else []:
        emit(row)
    # Ray's report() raises SystemExit in a trial the scheduler (or a stop signal) stopped: attempt lets it
    # through, no failure. Which of the two it was only the driver knows: it drops a pruned trial's weights.
    with trial_running():
        done = attempt(
            st,
            trial,
            lambda: train.run_trial(trial, runtime, out_dir=files.path, report=emit, test=False),
            tell_failed=lambda reason: tune.report({"failed": 1, "reason": reason, "key": trial.key, metric: math.nan}),
        )
    if done:
        st.mark_done(trial)


def _trial_of(config: dict[str, Any], where: str = "trial") -> Trial:
    """The Trial a point of the space stands for: the base with the searched fields set."""
    return trial_from_dict({**config["base"], **_drawn(config)}, where=where)


def _run_name(ray_trial: Any) -> str:
    """Label, key and Ray's trial id (the study can draw one point twice); Ray's default spells out every field."""
    try:
        return f"{tracking.run_name(_trial_of(ray_trial.config))}-{ray_trial.trial_id}"
    except (ConfigError, KeyError):  # a point the trial itself will refuse, with the reason
        return f"trial_{ray_trial.trial_id}"


class StudySearcher(Searcher):
    """Ray's side of the study: suggests the study's points and tells it each epoch and each ending.

    Ray skips on_trial_result for the result at which a scheduler stops a trial; on_trial_complete
    reports it, so a pruned trial's curve is whole. How a trial ended is decided from its last result, and
    from whether a stop signal had come (`stopping`): then a trial short of its epochs was interrupted.
    """

    def __init__(
        self, study: Any, *, metric: str, mode: str, epochs: int, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.study, self.epochs, self.stopping = study, epochs, stopping

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.study.ask(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not result.get("failed") and "epoch" in result:
            self.study.report(trial_id, int(result["epoch"]), float(result[self.metric]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        result = result or {}
        self.on_trial_result(trial_id, result)
        ended = "failed" if error else outcome(result, self.epochs, stopped=self.stopping())
        try:
            self.study.finish(trial_id, outcome=ended, attrs={"key": result.get("key"), "ray_trial_id": trial_id})
        except Exception:  # the study must not take the whole search down; the trial is failed when the run ends
            log.exception("could not tell the study how trial %s ended", trial_id)

    # The study persists itself and a search never restores Ray's experiment: Ray's copies of the searcher
    # (its experiment checkpoints, the Tuner's pickled settings) leave the study, with its heartbeat thread, out.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "study": None}


def _asha(plan: SearchPlan, epochs: int) -> ASHAScheduler | None:
    """ASHA over epochs, its rungs primed with the study's earlier curves; None without early stopping."""
    if plan.grace_period is None or epochs <= plan.grace_period:
        return None
    # Rungs end before the last epoch: a trial stopped at its final report would lose the files run_trial
    # writes after it, and stopping work that is done saves nothing.
    asha = ASHAScheduler(
        time_attr="epoch",
        metric=plan.metric,
        mode=plan.mode,
        max_t=epochs - 1,
        grace_period=plan.grace_period,
        reduction_factor=plan.reduction_factor,
        stop_last_trials=False,
    )
    ray_internals.prime(asha, "epoch", plan.metric, plan.prior)
    return asha


class _SearchProgress(Progress):
    """Progress, labelled by the searched fields of each running trial."""

    def __init__(self, total: int, *, metric: str, epochs: int, fields: Sequence[str]) -> None:
        super().__init__(total, 0)
        self.metric, self.epochs, self.fields = metric, epochs, tuple(fields)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch" in result:
            params = " ".join(
                f"{f}={trial.config[f]:.3g}" if isinstance(trial.config[f], float) else f"{f}={trial.config[f]}"
                for f in self.fields
                if f in trial.config
            )
            self.running[trial.trial_id] = (
                f"{params} ep {result['epoch']}/{self.epochs} {self.metric} {result[self.metric]:.3f}"
            )
        if result.get("failed"):
            self.failed += 1
        self._show()


def _search_resources(plan: SearchPlan, runtime: Runtime, cluster: dict[str, float]) -> dict[str, float]:
    """One shape for every trial of the search: the largest any arch in the space asks for."""
    shapes = [placement.resources(plan.base.replace(arch=a), runtime, cluster) for a in plan.archs]
    return max(shapes, key=lambda r: (r["gpu"], r["cpu"]))


def _trial_row(r: Any, plan: SearchPlan, st: store_mod.Store, epochs: int, stopped: bool) -> dict[str, Any]:
    """One of Ray's results as this run's record of it; a pruned trial's weights are dropped, its curve kept; an
    interrupted one keeps its checkpoint for the next run."""
    config = r.config or {}
    try:
        trial = _trial_of(config)
    except (ConfigError, KeyError) as exc:
        return {"key": "-", "label": "?", "outcome": "failed", "epochs_run": 0, "reason": str(exc)}
    metrics = r.metrics or {}
    ended = "failed" if r.error else outcome(metrics, epochs, stopped=stopped)
    files = st.files(trial)
    reason = ""
    if ended == "failed":
        failure = st.failure(trial)
        reason = (failure or {}).get("reason") or metrics.get("reason") or f"{type(r.error).__name__}: {r.error}"
    elif ended == "interrupted":
        reason = "interrupted: the search was stopped; the next run resumes it"
    if ended == "pruned" and not st.is_done(trial):
        files.drop_checkpoints()  # weights of a trial stopped early are not a result; its history.csv is
    # Epochs from the store: Ray's last result can trail the history a stopped trial wrote.
    history = files.read_history() if files.path.is_dir() else []
    row = {
        "key": trial.key,
        "label": trial.label,
        "outcome": ended,
        "epochs_run": max(len(history), int(metrics.get("epoch", 0) or 0)),
        "reason": reason,
    }
    if files.path.is_dir():
        files.write_search(
            {
                **row,
                "study": plan.study_name,
                "metric": plan.metric,
                "last_value": metrics.get(plan.metric),
                "ray_trial_id": metrics.get("trial_id"),
            },
        )
    return row


def stopped_line(signal: str) -> str:
    """The search summary's last line after a stop: how to continue the study."""
    return f"stopped by {signal}; the study keeps every finished trial. Continue it with: {resume_command()}"


def run_search(plan: SearchPlan, runtime: Runtime) -> SearchRun:
    """Run plan.samples new trials: the study suggests them through StudySearcher, ASHA stops weak ones per epoch.

    Trials run with test=False (the validation split only) and write into results/<plan.name>/<key>/ like
    a grid's. A pruned trial keeps trial.json, history.csv and search.json; its weights are removed.
    The caller holds the store's lock.
    """
    st = store_mod.Store.of(runtime.results_dir, plan.name)
    own_ray = start_ray(runtime)  # first: ray.init sets a SIGTERM handler of its own, which stoppable() replaces

    def last_words(stop: Stop) -> None:  # Ray went down with the driver: the study has every finished trial
        try:
            plan.study.close()  # the trials Ray was running are failed now, not left "running" until a rerun
        except Exception as exc:  # the study's heartbeat check fails them on the next run instead
            log.warning("could not close the study (%s: %s)", type(exc).__name__, exc)
        print(stopped_line(stop.cause))

    with stoppable(ray_reachable, last_words, own_ray=own_ray) as stop:
        return _fit(plan, runtime, st, stop)


def _fit(plan: SearchPlan, runtime: Runtime, st: store_mod.Store, stop: Stop) -> SearchRun:
    """One Tuner over plan.samples new points, stopped early by ASHA or by a stop signal."""
    import ray

    epochs = plan.base.epochs
    progress = (
        _SearchProgress(plan.samples, metric=plan.metric, epochs=epochs, fields=plan.fields)
        if runtime.progress
        else None
    )
    tuner = tune.Tuner(
        tune.with_resources(_search_trainable, _search_resources(plan, runtime, ray.cluster_resources())),
        param_space={
            "base": plan.base.to_dict(),
            "fields": list(plan.fields),
            "runtime": runtime,
            "grid_dir": str(st.root.resolve()),
            "grid": plan.name,
            "metric": plan.metric,
        },
        tune_config=tune.TuneConfig(
            search_alg=StudySearcher(
                plan.study, metric=plan.metric, mode=plan.mode, epochs=epochs, stopping=stop.stop_all
            ),
            scheduler=_asha(plan, epochs),
            num_samples=plan.samples,
            max_concurrent_trials=plan.concurrency,
            reuse_actors=False,
            trial_name_creator=_run_name,
            trial_dirname_creator=_run_name,
        ),
        run_config=run_config(
            f"{plan.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            st,
            runtime,
            progress,
            stop,
            [Retries(st, runtime.max_retries, trial_of=_trial_of)],
        ),
    )
    try:
        with quiet_tune():
            results = tuner.fit()
    finally:
        if progress:
            progress.close()
    return SearchRun(
        trials=[_trial_row(r, plan, st, epochs, stopped=stop.stop_all()) for r in results], stopped=stop.signal
    )
