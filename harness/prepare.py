"""Data for trials: which dataset a grid runs on, every cache built once up front, one trial's three splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from harness import models
from harness.config import ConfigError, Runtime, Trial
from harness.data import cache, loader, nih

log = logging.getLogger(__name__)


def eval_batch_size(trial: Trial, device: torch.device) -> int:
    """Evaluation needs no gradients: batches far larger than the paper's 32 keep a GPU busy (same outputs)."""
    return max(trial.eval_batch_size, 256 if device.type == "cuda" else 64)


@dataclass
class TrialData:
    """The three splits of one trial, cached at its resolution and ready to batch."""

    data: nih.NIHData
    labels: dict[str, np.ndarray]  # split -> (n, 14) float32
    images: dict[str, np.ndarray]  # split -> (n, S, S) uint8, memory-mapped
    rows: dict[str, np.ndarray]  # split -> row indices into data.table
    skipped: int

    def batches(self, split: str, trial: Trial, *, device: torch.device, train: bool) -> loader.Batches:
        return loader.Batches(
            self.images[split],
            self.labels[split],
            batch_size=trial.batch_size if train else eval_batch_size(trial, device),
            crop=models.image_size(trial),
            train=train,
            augment=trial.augment and train,
            device=device,
            seed=trial.seed,
            drop_last=train and len(self.labels[split]) > trial.batch_size,
        )


def prepare_data(trial: Trial, runtime: Runtime) -> TrialData:
    """Read the NIH-layout tree, split it by patient, and load (or build) the uint8 caches."""
    if runtime.data_root is None:
        raise ConfigError("no data root resolved for the trial")
    data = nih.load(runtime.data_root)
    if data.dataset != trial.dataset:
        raise ConfigError(
            f"{trial.label}: trial says dataset={trial.dataset} but {data.root} holds {data.dataset} data"
        )
    splits = nih.trial_splits(data, trial)
    size = loader.load_size(models.image_size(trial))
    out = TrialData(data=data, labels={}, images={}, rows={}, skipped=0)
    for name, rows in splits.items():
        cached = cache.build(
            data, rows, size=size, cache_dir=runtime.cache_dir, workers=runtime.workers, progress=runtime.progress
        )
        out.images[name] = cached.images
        out.rows[name] = cached.rows
        out.labels[name] = data.labels[cached.rows].astype(np.float32)
        out.skipped += len(cached.skipped)
    return out


def resolve_dataset(trials: list[Trial], runtime: Runtime) -> tuple[list[Trial], Runtime]:
    """Point trials at real NIH data when a root is given, else at the embedded synthetic set, loudly."""
    from harness.data import synthetic

    root = nih.locate(runtime.data_root)
    if root is None:
        root = synthetic.default_root(runtime.cache_dir)
        log.warning(
            "no NIH data root (--data-root or HARNESS_DATA_ROOT): using the embedded SYNTHETIC "
            "dataset at %s; every result is labelled dataset=synthetic and is not an NIH number",
            root,
        )
    dataset = nih.load(root).dataset
    out = []
    for t in trials:
        if t.dataset == "synthetic" and dataset == "nih":
            raise ConfigError(
                f"{t.label}: dataset=synthetic but {root} holds the real NIH data; drop --data-root or set dataset: nih"
            )
        out.append(t.replace(dataset=dataset))
    if dataset == "synthetic" and any(t.dataset == "nih" for t in trials):
        log.warning("dataset=nih trials run on SYNTHETIC data at %s and are recorded as dataset=synthetic", root)
    return out, replace(runtime, data_root=str(root))


def prepare_all(trials: Sequence[Trial], runtime: Runtime) -> None:
    """Build every cache the trials need once, up front, with all cores (trials then only read them)."""
    seen = set()
    for t in trials:
        shape = (t.dataset, t.val_fraction, t.seed, t.subset_fraction, t.subset_test, models.image_size(t))
        if shape not in seen:
            seen.add(shape)
            prepare_data(t, runtime)
