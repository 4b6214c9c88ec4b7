"""Live tracking through Ray Tune's logger callbacks: TensorBoard for every run, MLflow and W&B on request.

Each trial is one run named by its label and key (run_name), in every tracker alike. TensorBoard event files
go to results/<grid>/tensorboard/<run name>/, one folder per trial that a resumed or retried trial writes
on into, scalars stepped by epoch. `--tracker mlflow` logs to results/<grid>/mlflow.db (experiment: the
grid's name); `--tracker wandb` to the W&B project $WANDB_PROJECT or the grid's name, offline runs under
results/<grid>/wandb/.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils import flatten_dict

from harness import store as store_mod
from harness.config import ConfigError, Trial
from harness.registry import Registry

# A reported row's key -> its TensorBoard tag; the part before the slash is the dashboard's section, so the
# training and validation losses are drawn side by side.
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_auc": "auroc/val",
    "lr": "optim/lr",
    "train_images_per_s": "speed/train_images_per_s",
    "seconds": "speed/epoch_seconds",
}
HPARAM_TYPES = (str, bool, int, float)  # what TensorBoard's hparams plugin takes; the Runtime object is left out


def run_name(trial: Trial) -> str:
    """The trial's label and key as one filesystem-safe name: alexnet-scratch-focal-freeze0-sub0.5-seed0-<key>."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{trial.label}/{trial.key}".replace("/", "-"))


class TensorBoard(TBXLoggerCallback):
    """Ray's TensorBoard logger, one run per trial under a folder of the results, per epoch, with named tags.

    Being a TBXLoggerCallback keeps Ray from adding its default one, which would write into .tune/ under
    ray/tune/* tags stepped by report count (which restarts when a stopped grid resumes; the epoch does not).
    """

    def __init__(self, root: Path) -> None:
        super().__init__()  # ImportError without tensorboardX, as Ray's own
        from tensorboardX import SummaryWriter

        self.root, self._writer_cls = root, SummaryWriter
        self._writers: dict[Any, Any] = {}
        self._last: dict[Any, dict[str, float]] = {}  # the trial's latest value of each tag: its hparams metrics

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._writers:
            self._writers[trial].close()
        # A file of its own each time: tensorboardX names it by the second, and a trial resumed within that
        # second (a quick retry) would truncate the first.
        self._writers[trial] = self._writer_cls(
            str(self.root / str(trial)), flush_secs=30, filename_suffix=f".{uuid.uuid4().hex[:8]}"
        )
        self._last[trial] = {}

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if (row := epoch_row(result)) is None:
            return
        if trial not in self._writers:
            self.log_trial_start(trial)
        writer, step = self._writers[trial], int(row["epoch"])
        for key, tag in SCALARS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):  # an undefined AUROC is a gap, not a point
                writer.add_scalar(tag, float(value), global_step=step)
                self._last[trial][tag] = float(value)
        writer.flush()  # a dashboard follows the run epoch by epoch

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        writer, last = self._writers.pop(trial, None), self._last.pop(trial, {})
        if writer is None:
            return
        # What the grid or the searcher chose for this trial, as Ray's own TBX logger takes it
        varied = getattr(trial, "evaluated_params", None) or {}
        params = {k: v for k, v in flatten_dict(varied).items() if isinstance(v, HPARAM_TYPES)}
        if params and last:
            from tensorboardX.summary import hparams

            for summary in hparams(hparam_dict=params, metric_dict=last):
                writer.file_writer.add_summary(summary)
        writer.close()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for writer in self._writers.values():  # trials a stop left running
            writer.close()
        self._writers.clear()


@dataclass(frozen=True)
class Tracker:
    """An optional tracker: the package it needs, the extra that installs it, and its callback's factory."""

    package: str
    extra: str
    make: Callable[[store_mod.Store], Callback]
    dashboard: Callable[[store_mod.Store], str]  # where to look, printed after a run
    check: Callable[[], None] = lambda: None  # set-up a run needs, checked before any trial starts


TRACKERS: Registry[Tracker] = Registry("tracker")


def epoch_row(result: dict[str, Any]) -> dict[str, Any] | None:
    """What a tracker logs of one of Ray's results: the trial's epoch row, not Ray's bookkeeping (pid, config/*,
    time_*); None for a result that is no epoch (a failure notice)."""
    if "epoch" not in result:
        return None
    return {k: result[k] for k in ("epoch", *SCALARS) if k in result}


class MLflow(MLflowLoggerCallback):
    """Ray's MLflow logger, given each epoch's row stepped by epoch (Ray's default step restarts on a resume)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if (row := epoch_row(result)) is not None:
            super().log_trial_result(iteration, trial, {**row, TRAINING_ITERATION: row["epoch"]})


class Wandb(WandbLoggerCallback):
    """Ray's W&B logger, given each epoch's row (W&B charts it against `epoch`)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        if (row := epoch_row(result)) is not None:
            super().log_trial_result(iteration, trial, row)


def _mlflow(st: store_mod.Store) -> Callback:
    # Its notes on creating the database's tables would read as the harness's own (harness: ...) lines.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    return MLflow(tracking_uri=mlflow_uri(st), experiment_name=st.root.name)


def mlflow_uri(st: store_mod.Store) -> str:
    return f"sqlite:///{st.mlflow_db.resolve()}"


def _wandb(st: store_mod.Store) -> Callback:
    return Wandb(
        project=os.environ.get("WANDB_PROJECT") or st.root.name,
        group=st.root.name,  # Ray's default, the Tuner's name, splits a grid's retried trials off
        dir=str(st.root.resolve()),  # offline runs stay with the results: results/<grid>/wandb/
        settings={"silent": True, "console": "off"},  # its banners would cut through the progress bar
        reinit="finish_previous",  # Ray's reinit=True is deprecated; each run has a logging process of its own
    )


def _wandb_login() -> None:
    """W&B needs a key unless offline; Ray would find that out only once the trials have started."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return
    import wandb

    if not wandb.login(prompt=False, verify=False):  # a stored login (`wandb login`) counts; never asks
        raise ConfigError(
            "--tracker wandb: no W&B login; set WANDB_API_KEY, run `wandb login`, or set WANDB_MODE=offline"
        )


def _wandb_where(st: store_mod.Store) -> str:
    offline = f"; offline runs: wandb sync {st.root / 'wandb'}/offline-run-*" if os.environ.get("WANDB_MODE") else ""
    return f"wandb: project {os.environ.get('WANDB_PROJECT') or st.root.name}, group {st.root.name}{offline}"


TRACKERS.register("mlflow")(
    Tracker(
        package="mlflow",
        extra="mlflow",
        make=_mlflow,
        dashboard=lambda st: f"mlflow: mlflow ui --backend-store-uri {mlflow_uri(st)}",
    )
)
TRACKERS.register("wandb")(
    Tracker(package="wandb", extra="wandb", make=_wandb, dashboard=_wandb_where, check=_wandb_login)
)


def parse(values: Iterable[str] | None) -> tuple[str, ...]:
    """--tracker values (repeated, or comma lists) -> names in order, each once, each checked (check())."""
    names = [n.strip() for v in values or () for n in v.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    check(names)
    return tuple(names)


def check(names: Sequence[str]) -> None:
    """Refuse, in one line, a tracker that is unknown or whose package is missing, before anything runs."""
    for name in names:  # every name first: a typo is the likelier mistake, and the cheaper to say
        if name not in TRACKERS:
            raise ConfigError(f"--tracker: {TRACKERS.unknown(name)} (TensorBoard files are always written)")
    for name in names:
        tracker = TRACKERS[name]
        try:
            importlib.import_module(tracker.package)
        except ImportError:
            raise ConfigError(
                f"--tracker {name}: the {tracker.package} package is not installed; "
                f"install it with: pip install 'harness[{tracker.extra}]'"
            ) from None
        tracker.check()


def callbacks(names: Sequence[str], st: store_mod.Store) -> list[Callback]:
    """TensorBoard, then the chosen trackers, for a Tuner writing the grid at st."""
    return [TensorBoard(st.tensorboard_dir.resolve()), *(TRACKERS[n].make(st) for n in names)]


def dashboards(names: Sequence[str], st: store_mod.Store) -> list[str]:
    """How to look at a run's tracking: one line per dashboard."""
    return [f"tensorboard: tensorboard --logdir {st.tensorboard_dir}", *(TRACKERS[n].dashboard(st) for n in names)]
