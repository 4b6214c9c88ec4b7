"""The only module that imports ray: trials -> a Ray Tune experiment, resources, resume, cluster address."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import ray
from ray import tune
from tqdm.auto import tqdm

from harness import store as store_mod, train
from harness.config import ConfigError, Runtime, Trial

log = logging.getLogger(__name__)

# Share of one GPU a trial of each arch asks for with --gpus-per-trial auto: small models leave most of
# a GPU idle, so several run side by side (measured on an H200; see the README's performance table).
GPU_SHARE = {"alexnet": 0.25, "efficientnet_b0": 0.5, "resnet50": 0.5, "densenet121": 0.5,
             "inception_v3": 0.5, "resnet152": 1.0}


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
        out = [f"{self.grid}: {len(self.done)}/{self.total} trials done "
               f"({self.skipped} already done before this run), {len(self.failed)} failed, {len(self.pending)} not run"]
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


def _trainable(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one trial, its files written straight into the store."""
    trial = Trial(**config["trial"])
    runtime: Runtime = config["runtime"]
    st = store_mod.Store(config["grid_dir"])
    out_dir = st.trial_dir(trial)
    cpus = int(config.get("cpus", 0))
    if cpus > 0:
        import torch

        torch.set_num_threads(cpus)
    try:
        train.run_trial(trial, runtime, out_dir=out_dir, report=lambda row: tune.report(row))
    except (train.TrialFailed, ConfigError) as exc:
        # Deterministic: recorded and not retried.
        st.mark_failed(trial, str(exc), detail=traceback.format_exc())
        tune.report({"failed": 1})
        return
    except BaseException as exc:
        # Possibly transient (out of memory, a dying node): recorded, then Ray retries it (FailureConfig).
        st.mark_failed(trial, f"{type(exc).__name__}: {exc}", detail=traceback.format_exc())
        raise
    st.mark_done(trial)


class Progress(tune.Callback):
    """A live view: trials done / running / failed and each running trial's epoch."""

    def __init__(self, total: int, already: int) -> None:
        self.bar = tqdm(total=total, initial=already, desc="trials", unit="trial", dynamic_ncols=True,
                        file=sys.stderr)
        self.running: dict[str, str] = {}
        self.failed = 0

    def _show(self) -> None:
        self.bar.set_postfix_str(f"running {len(self.running)}, failed {self.failed} | "
                                 + "; ".join(sorted(self.running.values()))[:160])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = trial.config["trial"]
        if "epoch" in result:
            self.running[trial.trial_id] = (f"{t['arch']}{'/pt' if t['pretrained'] else ''}/{t['loss']} "
                                            f"ep {result['epoch']}/{t['epochs']} auc {result['val_auc']:.3f}")
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


def _resources(trial: Trial, runtime: Runtime, cluster: dict[str, float]) -> dict[str, float]:
    gpus = cluster.get("GPU", 0.0)
    cpus = cluster.get("CPU", 1.0)
    if runtime.device == "cpu" or gpus == 0:
        # CPU only: one trial at a time using every core is faster than several sharing them.
        want_cpu = runtime.cpus_per_trial if runtime.cpus_per_trial > 1 else cpus
        return {"cpu": max(1.0, min(want_cpu, cpus)), "gpu": 0.0}
    share = GPU_SHARE.get(trial.arch, 1.0) if runtime.gpus_per_trial == "auto" else float(runtime.gpus_per_trial)
    per_gpu = max(1, round(1 / share)) if share > 0 else 1
    return {"cpu": max(1.0, min(runtime.cpus_per_trial, cpus / max(gpus * per_gpu, 1))), "gpu": share}


def start_ray(runtime: Runtime) -> None:
    """Join the cluster at runtime.address (or RAY_ADDRESS), else start a private local Ray."""
    if ray.is_initialized():
        return
    address = runtime.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our store holds the results
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "logging_level": logging.WARNING, "configure_logging": True}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}; start it with `ray start --head` "
                          "or leave out --address to run locally") from None


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
            cluster = ray.cluster_resources()
            progress = Progress(len(trials), already) if runtime.progress else None
            try:
                # One Tune experiment per resource shape keeps with_resources static and simple.
                by_shape: dict[tuple, list[Trial]] = {}
                for t in pending:
                    by_shape.setdefault(tuple(sorted(_resources(t, runtime, cluster).items())), []).append(t)
                for shape, group in by_shape.items():
                    res = dict(shape)
                    for t in group:
                        st.begin(t, grid)
                    trainable = tune.with_resources(_trainable, res)
                    tuner = tune.Tuner(
                        trainable,
                        param_space={"trial": tune.grid_search([t.to_dict() for t in group]),
                                     "runtime": runtime, "grid_dir": str(grid_dir.resolve()),
                                     "cpus": res["cpu"]},
                        tune_config=tune.TuneConfig(reuse_actors=False),
                        run_config=tune.RunConfig(
                            name=f"{grid}-cpu{res['cpu']:g}-gpu{res['gpu']:g}",
                            storage_path=str((grid_dir / ".tune").resolve()),
                            failure_config=tune.FailureConfig(max_failures=runtime.max_retries),
                            verbose=0, callbacks=[progress] if progress else None,
                            log_to_file=True))
                    tuner.fit()
            finally:
                if progress:
                    progress.close()
        return summarize(grid, trials, st, skipped=already)
