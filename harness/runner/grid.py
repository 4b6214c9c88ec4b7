"""A grid through Ray Tune: every trial not yet done, each in a worker, its files written into the store."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from tqdm.auto import tqdm

from harness import store as store_mod
from harness import train
from harness.config import Runtime, Trial
from harness.runner import placement
from harness.runner.attempt import attempt, needs_a_whole_gpu
from harness.runner.cluster import largest_node, start_ray, use_reserved_cpus, worker_logging
from harness.runner.intact import intact, redo
from harness.runner.stopping import Stop, resume_command, stoppable

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run left behind, read back from the store (the source of truth, not Ray's state)."""

    grid: str
    total: int
    done: list[str]
    failed: list[dict[str, Any]]  # key, label, reason
    pending: list[str]
    skipped: int  # already done before this run
    stopped: str | None = None  # the signal that stopped the run, if one did

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return 130  # as a shell reports a command ended by Ctrl-C
        return 0 if not self.failed and not self.pending else 1

    def lines(self) -> list[str]:
        out = [
            f"{self.grid}: {len(self.done)}/{self.total} trials done "
            f"({self.skipped} already done before this run), {len(self.failed)} failed, {len(self.pending)} not run"
        ]
        out += [f"  FAILED {f['label']} ({f['key']}): {f['reason']}" for f in self.failed]
        out += [f"  NOT RUN {k}" for k in self.pending]
        if self.stopped:
            out.append(f"stopped by {self.stopped}; every finished epoch is kept. Resume with: {resume_command()}")
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


def _trainable(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one trial, its files written straight into the store."""
    trial = Trial(**config["trial"])
    runtime: Runtime = config["runtime"]
    st = store_mod.Store(config["grid_dir"])
    use_reserved_cpus()
    worker_logging()
    where = {"ray_node_id": ray.get_runtime_context().get_node_id()}
    if attempt(
        st,
        trial,
        lambda: train.run_trial(
            trial, runtime, out_dir=st.trial_dir(trial), report=lambda row: tune.report(row), context=where
        ),
        tell_failed=lambda: tune.report({"failed": 1}),
    ):
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

    def again(self, n: int) -> None:
        """n trials counted as failed run once more."""
        self.failed -= n
        self.bar.n -= n
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def quiet_results() -> Iterator[None]:
    """Results come from the trials' last reports and the store; Ray's per-trial result files are off, and
    its notes about them (and about trials a stop left unstarted) say nothing a user needs."""
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def run_config(
    name: str, st: store_mod.Store, runtime: Runtime, progress: Progress | None, stop: Stop
) -> tune.RunConfig:
    """How every Tuner of the harness runs: its state under the grid's .tune/, retries, a stop, no chatter."""
    return tune.RunConfig(
        name=name,
        storage_path=str(st.tune_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=runtime.max_retries),
        stop=stop,
        verbose=0,
        callbacks=[progress] if progress else None,
        log_to_file=True,
    )


def _fit(
    name: str,
    trials: Sequence[Trial],
    runtime: Runtime,
    st: store_mod.Store,
    shape: Any,
    progress: Progress | None,
    stop: Stop,
) -> None:
    """One Tuner over the trials; shape(trial) gives a trial's resources."""
    # Resources per trial from its shape, so an AlexNet trial can share a GPU with a ResNet152 one.
    trainable = tune.with_resources(
        _trainable,
        lambda config: tune.PlacementGroupFactory([{k.upper(): v for k, v in shape(Trial(**config["trial"])).items()}]),
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "trial": tune.grid_search([t.to_dict() for t in trials]),
            "runtime": runtime,
            "grid_dir": str(st.root.resolve()),
        },
        # A finished trial's worker process runs the next trial of the same resources: no new
        # process, no second import of torch; run_trial resets seeds and peak-memory counts.
        tune_config=tune.TuneConfig(reuse_actors=runtime.reuse_workers),
        run_config=run_config(name, st, runtime, progress, stop),
    )
    with quiet_results():
        tuner.fit()


def _to_run(trials: Sequence[Trial], st: store_mod.Store) -> list[Trial]:
    """Trials not done, and done ones whose files are damaged beyond mending (their checkpoints dropped)."""
    out = []
    for t in trials:
        if not st.is_done(t):
            out.append(t)
        elif not intact(st.files(t)):
            redo(st.files(t))
            out.append(t)
    return out


def _run(
    grid: str, pending: Sequence[Trial], runtime: Runtime, st: store_mod.Store, progress: Progress | None, stop: Stop
) -> None:
    """The pending trials; then, each with a GPU to itself, those that ran out of GPU memory beside others."""
    node = largest_node()
    per_gpu = placement.per_gpu(pending, runtime, node)
    for t in pending:
        st.begin(t, grid)
    _fit(grid, pending, runtime, st, lambda t: placement.resources(t, runtime, node, per_gpu), progress, stop)
    alone = [t for t in pending if needs_a_whole_gpu(st, t)]
    if not alone or stop.signal:
        return
    log.warning("%d trial(s) ran out of GPU memory beside other trials; running each again alone", len(alone))
    if progress:
        progress.again(len(alone))
    for t in alone:
        st.begin(t, grid)  # its finished epochs stay: it resumes after the last
    whole = lambda t: placement.resources(t, runtime, node, per_gpu, alone=True)  # noqa: E731
    _fit(f"{grid}-alone", alone, runtime, st, whole, progress, stop)


def run_grid(grid: str, trials: Sequence[Trial], runtime: Runtime) -> Summary:
    """Run every trial not already done; return the summary read back from the store."""
    st = store_mod.Store(Path(runtime.results_dir) / grid)
    st.check_writable()
    with st.lock():
        pending = _to_run(trials, st)
        already = len(trials) - len(pending)
        stopped = None
        if pending:
            start_ray(runtime)  # first: ray.init sets a SIGTERM handler of its own, which stoppable() replaces
            progress = Progress(len(trials), already) if runtime.progress else None
            try:
                with stoppable() as stop:
                    _run(grid, pending, runtime, st, progress, stop)
            finally:
                if progress:
                    progress.close()
            stopped = stop.signal
        return replace(summarize(grid, trials, st, skipped=already), stopped=stopped)
