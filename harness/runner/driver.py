"""A grid through Ray Tune: every trial not yet done, each in a worker, its files written into the store."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune
from tqdm.auto import tqdm

from harness import store as store_mod
from harness import train
from harness.config import ConfigError, Runtime, Trial
from harness.runner import placement, ray_internals, tracking
from harness.runner.attempt import attempt, needs_a_whole_gpu
from harness.runner.cluster import (
    largest_node,
    ray_reachable,
    start_ray,
    trial_running,
    use_reserved_cpus,
    worker_logging,
)
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


def summarize(
    grid: str,
    trials: Sequence[Trial],
    store: store_mod.Store,
    skipped: int = 0,
    unrecorded: Mapping[str, str] | None = None,
) -> Summary:
    """What the store says of each trial; `unrecorded` holds the reasons of failures no failed.json could hold."""
    done, failed, pending = [], [], []
    unrecorded = unrecorded or {}
    for t in trials:
        if store.is_done(t):
            done.append(t.key)
        elif (f := store.failure(t)) is not None:
            failed.append({"key": t.key, "label": t.label, "reason": f.get("reason", "unknown")})
        elif t.key in unrecorded:
            failed.append({"key": t.key, "label": t.label, "reason": unrecorded[t.key]})
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
    gpu = placement.worker_gpu()
    with trial_running():
        if attempt(
            st,
            trial,
            lambda: train.run_trial(
                trial,
                runtime,
                out_dir=st.trial_dir(trial),
                report=lambda row: tune.report(placement.epoch_report(row, gpu)),
                context=where,
            ),
            tell_failed=lambda reason: tune.report({"failed": 1, "reason": reason}),
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

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.running.pop(trial.trial_id, None)  # its dead attempt's epoch; the retry reports its own
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


def _grid_trial(config: dict[str, Any]) -> Trial:
    """The Trial a grid's Tune trial runs: its config carries the whole trial."""
    return Trial(**config["trial"])


class Retries(tune.Callback):
    """A failed attempt in one line, in place of Tune's traceback. The worker records what it can (failed.json,
    with the traceback); a worker that died at once (a lost node, the kernel's OOM killer) records nothing, so a
    trial whose last retry ends so is recorded here, with Ray's reason."""

    def __init__(
        self,
        st: store_mod.Store,
        retries: int,
        trial_of: Callable[[dict[str, Any]], Trial] = _grid_trial,
        unrecorded: dict[str, str] | None = None,
    ) -> None:
        self.st, self.retries, self.trial_of = st, retries, trial_of
        # key -> reason of a failure that no failed.json could hold (a disk still full): the summary reads it
        self.unrecorded = {} if unrecorded is None else unrecorded

    def _trial(self, trial: Any) -> Trial | None:
        try:
            return self.trial_of(trial.config)
        except (ConfigError, KeyError):  # a search point its trial refused: the trial recorded why
            return None

    def _label(self, trial: Any) -> str:
        t = self._trial(trial)
        return t.label if t else f"trial {trial.trial_id}"

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        n = trial.num_failures
        log.warning(
            "%s: attempt %d failed (%s); Ray runs it again, after its last finished epoch (retry %d of %d)",
            self._label(trial),
            n,
            _why(trial),
            n,
            self.retries,
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        t, why = self._trial(trial), _why(trial)
        log.warning(
            "%s: attempt %d failed (%s); no retries left (--retries %d)",
            t.label if t else f"trial {trial.trial_id}",
            trial.num_failures,
            why,
            self.retries,
        )
        if t is not None:
            self._record(t, f"{why} (attempt {trial.num_failures} of {self.retries + 1})")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = self._trial(trial) if result.get("failed") and result.get("reason") else None
        if t is not None:  # the worker reports its reason too: its own failed.json may not have fitted on disk
            self._record(t, str(result["reason"]))

    def _record(self, t: Trial, reason: str) -> None:
        if self.st.failure(t) is not None or self.st.is_done(t):
            return
        try:
            self.st.mark_failed(t, reason)
        except OSError as exc:  # a full disk ends this trial, not the run: the summary still names it
            log.warning("%s: could not record its failure (%s)", t.label, exc)
            self.unrecorded[t.key] = reason


def _why(trial: Any) -> str:
    """What ended a Tune trial's attempt, in a line: the trial's own exception, or its worker's death."""
    try:
        exc = ray_internals.last_error(trial)
    except Exception:  # unreadable: Tune keeps it in the trial's error file; only this line lacks it
        exc = None
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"its worker died or its node was lost: {type(exc).__name__}"
    exc = getattr(exc, "cause", None) or exc  # a RayTaskError carries the trial's own exception
    if exc is None:
        return "unknown error"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def quiet_tune() -> contextlib.AbstractContextManager[None]:
    """What a Tuner of the harness says, trimmed to what a user needs. Results come from the trials' last reports
    and the store, so Ray's per-trial result files are off and its notes about them (and about trials a stop left
    unstarted) are silenced; a trial's failure is said in one line by Retries, not as Tune's traceback."""
    return ray_internals.quiet_tuner()


def run_config(
    name: str,
    st: store_mod.Store,
    runtime: Runtime,
    progress: Progress | None,
    stop: Stop,
    callbacks: Sequence[tune.Callback] = (),
) -> tune.RunConfig:
    """How every Tuner of the harness runs: its state under the grid's .tune/, retries, a stop, no chatter,
    TensorBoard files and the chosen trackers (runner/tracking.py)."""
    return tune.RunConfig(
        name=name,
        storage_path=str(st.tune_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=runtime.max_retries),
        stop=stop,
        verbose=0,
        callbacks=[*([progress] if progress else []), *callbacks, *tracking.callbacks(runtime.trackers, st)],
        log_to_file=True,
    )


def _run_name(ray_trial: Any) -> str:
    """The trial's label and key, in Ray's logs, its .tune/ folder and every tracker (Ray's default spells
    out the whole config)."""
    return tracking.run_name(Trial(**ray_trial.config["trial"]))


def _fit(
    name: str,
    trials: Sequence[Trial],
    runtime: Runtime,
    st: store_mod.Store,
    shape: Any,
    progress: Progress | None,
    stop: Stop,
    decisions: placement.Decisions,
    unrecorded: dict[str, str],
) -> None:
    """One Tuner over the trials, started in their order; shape(trial) gives a trial's resources."""
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
        tune_config=tune.TuneConfig(
            reuse_actors=runtime.reuse_workers, trial_name_creator=_run_name, trial_dirname_creator=_run_name
        ),
        run_config=run_config(
            name,
            st,
            runtime,
            progress,
            stop,
            [Retries(st, runtime.max_retries, unrecorded=unrecorded), placement.Observer(name, decisions)],
        ),
    )
    with quiet_tune():
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
    grid: str,
    pending: Sequence[Trial],
    runtime: Runtime,
    st: store_mod.Store,
    progress: Progress | None,
    stop: Stop,
    unrecorded: dict[str, str],
) -> None:
    """The pending trials, costliest first; then, each with a GPU to itself, those that ran out of GPU memory beside
    others. What their epochs showed about sharing a GPU is remembered for the next run, even after a stop."""
    node = largest_node()
    decisions = placement.per_gpu(pending, runtime, node)
    pending = placement.longest_first(pending)
    try:
        for t in pending:
            st.begin(t, grid)
        share = lambda t: placement.resources(t, runtime, node, decisions.per_gpu)  # noqa: E731
        _fit(grid, pending, runtime, st, share, progress, stop, decisions, unrecorded)
        alone = [t for t in pending if needs_a_whole_gpu(st, t)]
        for t in alone:
            decisions.ran_out(t)
        if not alone or stop.signal:
            return
        log.warning("%d trial(s) ran out of GPU memory beside other trials; running each again alone", len(alone))
        if progress:
            progress.again(len(alone))
        for t in alone:
            st.begin(t, grid)  # its finished epochs stay: it resumes after the last
        whole = lambda t: placement.resources(t, runtime, node, decisions.per_gpu, alone=True)  # noqa: E731
        _fit(f"{grid}-alone", alone, runtime, st, whole, progress, stop, decisions, unrecorded)
    finally:
        _learn(decisions)


def _learn(decisions: placement.Decisions) -> None:
    """Remember what the run's epochs showed about sharing a GPU (packing.json), loudly if that fails."""
    try:
        decisions.learn()
    except Exception as exc:  # remembering costs only the next run's packing, never this run's results
        log.warning("could not remember GPU packing (%s: %s)", type(exc).__name__, exc)


def run_grid(grid: str, trials: Sequence[Trial], runtime: Runtime) -> Summary:
    """Run every trial not already done; return the summary read back from the store."""
    st = store_mod.Store.of(runtime.results_dir, grid)
    st.check_writable()
    with st.lock():
        pending = _to_run(trials, st)
        already = len(trials) - len(pending)
        stopped = None
        unrecorded: dict[str, str] = {}
        if pending:
            own_ray = start_ray(runtime)  # first: ray.init sets a SIGTERM handler, which stoppable() replaces
            progress = Progress(len(trials), already) if runtime.progress else None

            def last_words(stop: Stop) -> None:  # Ray went down with the driver: the store says what was done
                if progress:
                    progress.close()
                summary = summarize(grid, trials, st, skipped=already, unrecorded=unrecorded)
                print("\n".join(replace(summary, stopped=stop.cause).lines()))

            try:
                with stoppable(ray_reachable, last_words, own_ray=own_ray) as stop:
                    _run(grid, pending, runtime, st, progress, stop, unrecorded)
            finally:
                if progress:
                    progress.close()
            stopped = stop.signal
        return replace(summarize(grid, trials, st, skipped=already, unrecorded=unrecorded), stopped=stopped)
