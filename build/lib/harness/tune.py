"""The only module that imports ray: trials -> a Ray Tune experiment, resources, resume, cluster address."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from tqdm.auto import tqdm

from harness import hardware, packing, train
from harness import store as store_mod
from harness.config import ConfigError, Runtime, Trial, trial_from_dict

log = logging.getLogger(__name__)

# Share of one GPU a trial of each arch asks for with --gpus-per-trial auto when the measurement (below,
# and harness.packing) could not be made: a guess from single-trial step throughput on an H200.
GPU_SHARE = {
    "alexnet": 0.25,
    "efficientnet_b0": 0.5,
    "resnet50": 0.5,
    "densenet121": 0.5,
    "inception_v3": 0.5,
    "resnet152": 1.0,
}


@dataclass
class Summary:
    """What a run left behind, read back from the store (the source of truth, not Ray's state)."""

    grid: str
    total: int
    done: list[str]
    failed: list[dict[str, Any]]  # key, label, reason
    pending: list[str]
    skipped: int  # already done before this run

    @property
    def exit_code(self) -> int:
        return 0 if not self.failed and not self.pending else 1

    def lines(self) -> list[str]:
        out = [
            f"{self.grid}: {len(self.done)}/{self.total} trials done "
            f"({self.skipped} already done before this run), {len(self.failed)} failed, {len(self.pending)} not run"
        ]
        out += [f"  FAILED {f['label']} ({f['key']}): {f['reason']}" for f in self.failed]
        out += [f"  NOT RUN {k}" for k in self.pending]
        return out


def summarize(grid: str, trials: Sequence[Trial], store: store_mod.Store, skipped: int = 0) -> Summary:
    done, failed, pending = [], [], []
    for t in trials:
        if store.is_done(t):
            done.append(t.key)
        elif (f := store.failure(t)) is not None:
            failed.append({"key": t.key, "label": t.label, "reason": f.get("reason", "unknown")})
        else:
            pending.append(t.key)
    return Summary(grid=grid, total=len(trials), done=done, failed=failed, pending=pending, skipped=skipped)


def _use_reserved_cpus() -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this trial reserved."""
    import torch

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))


def _trainable(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one trial, its files written straight into the store."""
    trial = Trial(**config["trial"])
    runtime: Runtime = config["runtime"]
    st = store_mod.Store(config["grid_dir"])
    out_dir = st.trial_dir(trial)
    _use_reserved_cpus()
    try:
        where = {"ray_node_id": ray.get_runtime_context().get_node_id()}
        train.run_trial(trial, runtime, out_dir=out_dir, report=lambda row: tune.report(row), context=where)
    except (train.TrialFailed, ConfigError) as exc:
        # Deterministic: recorded and not retried.
        st.mark_failed(trial, str(exc), detail=traceback.format_exc())
        tune.report({"failed": 1})
        return
    except SystemExit:
        raise  # Ray stopping the trial (Ctrl-C, a scheduler): not a failure
    except BaseException as exc:
        # Possibly transient (out of memory, a dying node): recorded, then Ray retries it (FailureConfig).
        st.mark_failed(trial, f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
        raise
    finally:
        hardware.hand_back_gpu_memory()
    st.mark_done(trial)


class Progress(tune.Callback):
    """A live view: trials done / running / failed and each running trial's epoch."""

    def __init__(self, total: int, already: int) -> None:
        self.bar = tqdm(total=total, initial=already, desc="trials", unit="trial", dynamic_ncols=True, file=sys.stderr)
        self.running: dict[str, str] = {}
        self.failed = 0

    def _show(self) -> None:
        self.bar.set_postfix_str(
            f"running {len(self.running)}, failed {self.failed} | " + "; ".join(sorted(self.running.values()))[:160]
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = trial.config["trial"]
        if "epoch" in result:
            self.running[trial.trial_id] = (
                f"{t['arch']}{'/pt' if t['pretrained'] else ''}/{t['loss']} "
                f"ep {result['epoch']}/{t['epochs']} auc {result['val_auc']:.3f}"
            )
        if result.get("failed"):
            self.failed += 1
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.pop(trial.trial_id, None)
        self.bar.update(1)
        self._show()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.pop(trial.trial_id, None)
        self.failed += 1
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()


def _largest_node() -> dict[str, float]:
    """CPUs and GPUs of the largest live node: a trial runs on one node, so it can ask for no more."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {k: max((r.get(k, 0.0) for r in nodes), default=0.0) for k in ("CPU", "GPU")}


def _uses_gpus(runtime: Runtime, node: dict[str, float]) -> bool:
    return runtime.device != "cpu" and node.get("GPU", 0.0) > 0


def _resources(
    trial: Trial, runtime: Runtime, node: dict[str, float], per_gpu: dict[str, int] | None = None
) -> dict[str, float]:
    """A trial's CPUs and GPU share: measured trials per GPU for its shape (per_gpu), else GPU_SHARE."""
    gpus = node.get("GPU", 0.0)
    cpus = node.get("CPU", 1.0) or 1.0
    if not _uses_gpus(runtime, node):
        # CPU only: one trial at a time using every core is faster than several sharing them.
        want_cpu = runtime.cpus_per_trial if runtime.cpus_per_trial > 1 else cpus
        return {"cpu": max(1.0, min(want_cpu, cpus)), "gpu": 0.0}
    if runtime.gpus_per_trial != "auto":
        share = float(runtime.gpus_per_trial)
    elif per_gpu and packing.shape_key(trial) in per_gpu:
        share = 1.0 / per_gpu[packing.shape_key(trial)]
    else:
        share = GPU_SHARE.get(trial.arch, 1.0)
    sharing = max(1, round(1 / share)) if share > 0 else 1
    return {"cpu": max(1.0, min(runtime.cpus_per_trial, cpus / max(gpus * sharing, 1))), "gpu": share}


# --- measured packing: how many trials of a shape share one GPU (harness.packing decides) ---


@ray.remote(num_cpus=0)
class _Release:
    """Holds the copies of a measurement until all have warmed up, then lets them go together."""

    def __init__(self, copies: int) -> None:
        self.copies, self.arrived = copies, 0

    def arrive(self) -> None:
        self.arrived += 1

    def all_here(self) -> bool:
        return self.arrived >= self.copies


def _measure_copy(trial: dict[str, Any], seconds: float, release: Any, device: str) -> dict[str, float]:
    """One copy of a trial's model step on its share of a GPU (a Ray task)."""
    from harness import bench

    def ready() -> None:
        ray.get(release.arrive.remote())
        while not ray.get(release.all_here.remote()):
            time.sleep(0.02)

    _use_reserved_cpus()
    return bench.step_window(Trial(**trial), device=device, seconds=seconds, ready=ready)


def _gpu_info(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda":  # Ray's GPUs are logical: the copies can run on the CPU (the plumbing's own test)
        return {"name": f"{device} (logical GPU)", "memory_mb": 1e6, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_mb": props.total_memory / 2**20, "torch": torch.__version__}


def _side_by_side(trial: Trial, copies: int, cpus: float, device: str) -> packing.Probe | None:
    """copies of the trial's model step together on one GPU; None when they do not fit in its memory."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if copies > cpus:
        return None  # a trial needs a CPU of its own to feed its share of the GPU
    group = placement_group([{"GPU": 1, "CPU": copies}], strategy="STRICT_PACK")  # one GPU, one node
    release = _Release.remote(copies)
    # max_calls=1: each copy's process exits when done, so no idle worker keeps GPU memory during the grid.
    task = ray.remote(max_calls=1)(_measure_copy).options(
        num_gpus=1 / copies,
        num_cpus=1,
        max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
    )
    try:
        ray.get(group.ready(), timeout=300)  # a GPU held by another job: give up, use the fixed shares
        windows = ray.get(
            [task.remote(trial.to_dict(), packing.WINDOW_S, release, device) for _ in range(copies)], timeout=600
        )  # a copy that never arrives: the others would wait for it forever
    except ray.exceptions.RayTaskError as exc:
        if "OutOfMemoryError" in str(exc) or "out of memory" in str(exc):
            return None
        raise
    finally:
        ray.kill(release)
        remove_placement_group(group)
    return packing.Probe.from_windows(windows)


def _measured_per_gpu(trials: Sequence[Trial], runtime: Runtime, cpus: float, device: str = "cuda") -> dict[str, int]:
    """Trials per GPU for each trial shape: remembered from an earlier run on this GPU model, else measured now."""
    table = packing.Packing(Path(runtime.cache_dir) / packing.PACKING_FILE)
    gpu = ray.get(ray.remote(num_gpus=1, num_cpus=0, max_calls=1)(_gpu_info).remote(device), timeout=300)
    out: dict[str, int] = {}
    for trial in {packing.shape_key(t): t for t in trials}.values():
        copies = table.copies(gpu, trial)
        if copies is None:
            log.warning(
                "measuring how many %s trials share one %s (once per GPU model)...",
                packing.shape_key(trial),
                gpu["name"],
            )
            probes = packing.measure(lambda n, trial=trial: _side_by_side(trial, n, cpus, device), gpu["memory_mb"])
            if not probes:
                continue  # not even one copy fit: the trial itself will say so
            copies = table.record(gpu, trial, probes)
        out[packing.shape_key(trial)] = copies
    return out


def _per_gpu(trials: Sequence[Trial], runtime: Runtime, node: dict[str, float]) -> dict[str, int]:
    """Measured packing when it applies; a failed measurement falls back to GPU_SHARE, loudly, never stops a run."""
    if runtime.gpus_per_trial != "auto" or not _uses_gpus(runtime, node):
        return {}
    try:
        return _measured_per_gpu(trials, runtime, node.get("CPU", 1.0))
    except Exception as exc:  # any failure here only costs packing quality
        log.warning("could not measure GPU packing (%s: %s); using the fixed per-arch shares", type(exc).__name__, exc)
        return {}


def _probe(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a HOST:PORT address (Ray retries for long)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "local", "auto": Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
            "`ray start --head` there, or leave out --address to run locally"
        ) from None


def start_ray(runtime: Runtime) -> None:
    """Join the cluster at runtime.address (or RAY_ADDRESS), else start a private local Ray."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS") == "":
        del os.environ["RAY_ADDRESS"]  # set but empty: Ray would read it as an address
    # "local": without an address, a private Ray for this run, never a cluster someone left running here.
    address = runtime.address or os.environ.get("RAY_ADDRESS") or "local"
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    if os.environ.get("TORCH_HOME"):  # local workers inherit the environment; a relative path would move
        os.environ["TORCH_HOME"] = os.path.abspath(os.environ["TORCH_HOME"])
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    _probe(address)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc}; start it with `ray start --head` "
            "or leave out --address to run locally"
        ) from None


def run_grid(grid: str, trials: Sequence[Trial], runtime: Runtime) -> Summary:
    """Run every trial not already done; return the summary read back from the store."""
    grid_dir = Path(runtime.results_dir) / grid
    st = store_mod.Store(grid_dir)
    st.check_writable()
    with st.lock():
        pending = [t for t in trials if not st.is_done(t)]
        already = len(trials) - len(pending)
        if pending:
            start_ray(runtime)
            node = _largest_node()
            per_gpu = _per_gpu(pending, runtime, node)
            progress = Progress(len(trials), already) if runtime.progress else None
            try:
                for t in pending:
                    st.begin(t, grid)
                # Resources per trial from its shape, so an AlexNet trial can share a GPU with a ResNet152 one.
                trainable = tune.with_resources(
                    _trainable,
                    lambda config: tune.PlacementGroupFactory(
                        [
                            {
                                k.upper(): v
                                for k, v in _resources(Trial(**config["trial"]), runtime, node, per_gpu).items()
                            }
                        ]
                    ),
                )
                tuner = tune.Tuner(
                    trainable,
                    param_space={
                        "trial": tune.grid_search([t.to_dict() for t in pending]),
                        "runtime": runtime,
                        "grid_dir": str(grid_dir.resolve()),
                    },
                    # A finished trial's worker process runs the next trial of the same resources: no new
                    # process, no second import of torch; run_trial resets seeds and peak-memory counts.
                    tune_config=tune.TuneConfig(reuse_actors=runtime.reuse_workers),
                    run_config=tune.RunConfig(
                        name=grid,
                        storage_path=str(st.tune_dir.resolve()),
                        failure_config=tune.FailureConfig(max_failures=runtime.max_retries),
                        verbose=0,
                        callbacks=[progress] if progress else None,
                        log_to_file=True,
                    ),
                )
                tuner.fit()
            finally:
                if progress:
                    progress.close()
        return summarize(grid, trials, st, skipped=already)


# --- hyperparameter search: one invocation of a study (harness.search builds the plan and the study) ---

OUTCOMES = ("complete", "pruned", "failed")


@dataclass
class SearchPlan:
    """One invocation of a search, as harness.search builds it; the Optuna objects are opaque here."""

    name: str  # results/<name>/ holds the trials, as a grid's do
    study_name: str
    base: Trial
    space: dict[str, Any]  # Trial field -> Optuna distribution
    sampler: Any  # a seeded Optuna sampler
    storage: Any  # an Optuna storage holding the study
    finish: Callable[..., None]  # finish(study, ot_trial, outcome=, value=, attrs=): tells the study how a trial ended
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

    def counts(self) -> dict[str, int]:
        return {o: sum(t["outcome"] == o for t in self.trials) for o in OUTCOMES}

    def failure_lines(self) -> list[str]:
        return [f"{t['label']} ({t['key']}): {t['reason']}" for t in self.trials if t["outcome"] == "failed"]


def _outcome(result: dict[str, Any] | None, epochs: int) -> str:
    """complete: trained every epoch; pruned: stopped by the scheduler; failed: no epoch, or the trial said so."""
    if not result or result.get("failed") or "epoch" not in result:
        return "failed"
    return "complete" if result["epoch"] >= epochs else "pruned"


def _search_trainable(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one point of the space as a trial, its files written into the store.

    Every epoch's row goes to history.csv as it is reported, so a trial the scheduler stops keeps its curve.
    Settings already trained (a search can draw the same point twice) replay their stored curve instead.
    """
    metric, grid = config["metric"], config["grid"]
    try:
        trial = trial_from_dict({**config["base"], **{f: config[f] for f in config["fields"]}}, where="search trial")
    except ConfigError as exc:
        tune.report({"failed": 1, "reason": str(exc), metric: math.nan})
        return
    runtime: Runtime = config["runtime"]
    st = store_mod.Store(config["grid_dir"])
    files = st.files(trial)
    _use_reserved_cpus()
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
    try:
        train.run_trial(trial, runtime, out_dir=files.path, report=emit, test=False)
    except (train.TrialFailed, ConfigError) as exc:
        st.mark_failed(trial, str(exc), detail=traceback.format_exc())
        tune.report({"failed": 1, "key": trial.key, metric: math.nan})
        return
    except SystemExit:
        raise  # Ray's report() exits the trial's thread this way when the scheduler stops it: not a failure
    except BaseException as exc:
        st.mark_failed(trial, f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
        raise
    st.mark_done(trial)


def _short_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default spells out the whole config: every Trial field


class _StudySearch(OptunaSearch):
    """Ray's OptunaSearch, telling the study what really happened to each trial.

    Ray 2.60's OptunaSearch tells a trial that ASHA stopped as COMPLETE with the value of the epoch it
    stopped at (Ray skips on_trial_result for that last result), and a trial that failed without
    reporting the metric as PRUNED. Here intermediate values are stepped by epoch, the stopping epoch is
    reported too, and `finish` tells the study PRUNED (value: the last epoch's), COMPLETE (value: the best
    epoch's, as run_trial keeps the best weights) or FAIL. Optuna's own pruners are not used: ASHA prunes.
    """

    def __init__(self, *, finish: Callable[..., None], epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._finish = finish
        self._epochs = epochs
        self._curves: dict[str, dict[int, float]] = {}

    def _record(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("failed") or "epoch" not in result or trial_id not in self._ot_trials:
            return
        curve = self._curves.setdefault(trial_id, {})
        epoch = int(result["epoch"])
        if epoch not in curve:  # a replayed or retried epoch is reported once
            curve[epoch] = float(result[self._metric])
            self._ot_trials[trial_id].report(curve[epoch], epoch)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._completed_trials:
            self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        self._record(trial_id, result)
        outcome = "failed" if error else _outcome(result, self._epochs)
        values = [v for v in self._curves.get(trial_id, {}).values() if math.isfinite(v)]
        best = (max if self._mode == "max" else min)(values) if values else None
        try:
            self._finish(
                self._ot_study,
                self._ot_trials[trial_id],
                outcome=outcome,
                value=best,
                attrs={
                    "key": result.get("key"),
                    "outcome": outcome,
                    "ray_trial_id": trial_id,
                    "epochs_run": len(self._curves.get(trial_id, {})),
                },
            )
        except Exception:  # the study must not take the whole search down; the trial stays RUNNING, then FAIL
            log.exception("could not tell the study how trial %s ended", trial_id)
        self._completed_trials.add(trial_id)


class _ResumedASHA(ASHAScheduler):
    """ASHA whose rungs start with the study's earlier curves, so a rerun prunes against them, not from zero."""

    def __init__(self, *, prior: Sequence[dict[int, float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        sign = 1.0 if kwargs["mode"] == "max" else -1.0
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:
                for i, curve in enumerate(prior):
                    # A live trial is recorded at its first epoch at or past the milestone; so is a past one.
                    reached = [e for e in curve if e >= milestone]
                    if reached:
                        recorded[f"study-{i}"] = sign * curve[min(reached)]


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
            )
            self.running[trial.trial_id] = (
                f"{params} ep {result['epoch']}/{self.epochs} {self.metric} {result[self.metric]:.3f}"
            )
        if result.get("failed"):
            self.failed += 1
        self._show()


def _search_resources(plan: SearchPlan, runtime: Runtime, cluster: dict[str, float]) -> dict[str, float]:
    """One shape for every trial of the search: the largest any arch in the space asks for."""
    archs = getattr(plan.space.get("arch"), "choices", None) or (plan.base.arch,)
    shapes = [_resources(plan.base.replace(arch=a), runtime, cluster) for a in archs]
    return max(shapes, key=lambda r: (r["gpu"], r["cpu"]))


def run_search(plan: SearchPlan, runtime: Runtime) -> SearchRun:
    """Run plan.samples new trials: Optuna suggests through OptunaSearch, ASHA stops weak ones per epoch.

    Trials run with test=False (the validation split only) and write into results/<plan.name>/<key>/ like
    a grid's. A pruned trial keeps trial.json, history.csv and search.json; its weights are removed.
    The caller holds the store's lock.
    """
    grid_dir = Path(runtime.results_dir) / plan.name
    st = store_mod.Store(grid_dir)
    start_ray(runtime)
    res = _search_resources(plan, runtime, ray.cluster_resources())
    epochs = plan.base.epochs
    searcher = _StudySearch(
        space=plan.space,
        metric=plan.metric,
        mode=plan.mode,
        sampler=plan.sampler,
        study_name=plan.study_name,
        storage=plan.storage,
        finish=plan.finish,
        epochs=epochs,
    )
    scheduler = None
    if plan.grace_period is not None and epochs > plan.grace_period:
        # Rungs end before the last epoch: a trial stopped at its final report would lose the files run_trial
        # writes after it, and stopping work that is done saves nothing.
        scheduler = _ResumedASHA(
            prior=plan.prior,
            time_attr="epoch",
            metric=plan.metric,
            mode=plan.mode,
            max_t=epochs - 1,
            grace_period=plan.grace_period,
            reduction_factor=plan.reduction_factor,
            stop_last_trials=False,
        )
    progress = (
        _SearchProgress(plan.samples, metric=plan.metric, epochs=epochs, fields=list(plan.space))
        if runtime.progress
        else None
    )
    tuner = tune.Tuner(
        tune.with_resources(_search_trainable, res),
        param_space={
            "base": plan.base.to_dict(),
            "fields": list(plan.space),
            "runtime": runtime,
            "grid_dir": str(grid_dir.resolve()),
            "grid": plan.name,
            "metric": plan.metric,
        },
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=plan.samples,
            max_concurrent_trials=plan.concurrency,
            reuse_actors=False,
            trial_name_creator=_short_name,
            trial_dirname_creator=_short_name,
        ),
        run_config=tune.RunConfig(
            name=f"{plan.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(st.tune_dir.resolve()),
            failure_config=tune.FailureConfig(max_failures=runtime.max_retries),
            verbose=0,
            callbacks=[progress] if progress else None,
            log_to_file=True,
        ),
    )
    # Results come from the trials' last reports; Ray's per-trial result files are off (the store holds them).
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        results = tuner.fit()
    finally:
        quiet.setLevel(level)
        if progress:
            progress.close()

    trials = []
    for r in results:
        config = r.config or {}
        try:
            trial = trial_from_dict({**config["base"], **{f: config[f] for f in config["fields"]}})
        except (ConfigError, KeyError) as exc:
            trials.append({"key": "-", "label": "?", "outcome": "failed", "epochs_run": 0, "reason": str(exc)})
            continue
        metrics = r.metrics or {}
        outcome = "failed" if r.error else _outcome(metrics, epochs)
        files = st.files(trial)
        reason = ""
        if outcome == "failed":
            failure = st.failure(trial)
            stopped = f"{type(r.error).__name__}: {r.error}" if r.error else "did not run (the search was stopped)"
            reason = (failure or {}).get("reason") or metrics.get("reason") or stopped
        if outcome == "pruned" and not st.is_done(trial):
            # Weights of a trial stopped early are not a result; its curve (history.csv) is.
            files.drop_checkpoints()
        row = {
            "key": trial.key,
            "label": trial.label,
            "outcome": outcome,
            "epochs_run": int(metrics.get("epoch", 0) or 0),
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
        trials.append(row)
    return SearchRun(trials=trials)
