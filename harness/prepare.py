"""Data for trials: which dataset a grid runs on, every cache built once up front, one trial's three splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from harness import models
from harness.config import ConfigError, Runtime, Trial, file_sha256
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


def resolve(trials: list[Trial], runtime: Runtime) -> tuple[list[Trial], Path | None]:
    """The trials as a run will key them, without writing anything: the dataset the data root holds (the
    embedded synthetic set when there is none, said loudly) and, for pretrained trials, the SHA-256 of the
    published-weights file they will load. Returns them and the data root (None: the embedded set)."""
    root = nih.locate(runtime.data_root)
    if root is None:
        log.warning(
            "no NIH data root (--data-root or HARNESS_DATA_ROOT): using the embedded SYNTHETIC dataset; every "
            "result is labelled dataset=synthetic and is not an NIH number"
        )
        dataset = "synthetic"
    else:
        dataset = nih.load(root).dataset
    out = []
    for t in trials:
        if t.dataset == "synthetic" and dataset == "nih":
            raise ConfigError(
                f"{t.label}: dataset=synthetic but {root} holds the real NIH data; drop --data-root or set dataset: nih"
            )
        out.append(with_pretrained_file(t.replace(dataset=dataset)))
    if dataset == "synthetic" and any(t.dataset == "nih" for t in trials):
        log.warning("dataset=nih trials run on SYNTHETIC data and are recorded as dataset=synthetic")
    missing = sorted({t.arch for t in out if t.pretrained and not t.pretrained_sha256})
    for arch in missing:
        log.warning(
            "pretrained %s: no weights file at %s; its pretrained trials will fail (place the file, or run "
            "with --fetch-weights)",
            arch,
            models.weights_path(arch),
        )
    return out, root


def with_pretrained_file(trial: Trial) -> Trial:
    """A pretrained trial keyed by the weights file it will load (its SHA-256), when that file is there."""
    if not trial.pretrained:
        return trial
    path = models.weights_path(trial.arch)
    return trial.replace(pretrained_sha256=file_sha256(path)) if path.is_file() else trial


def resolve_dataset(trials: list[Trial], runtime: Runtime) -> tuple[list[Trial], Runtime]:
    """resolve(), then the data root a run reads: the embedded synthetic set is written on first use."""
    from harness.data import synthetic

    out, root = resolve(trials, runtime)
    if root is None:
        root = synthetic.default_root(runtime.cache_dir)
    return out, replace(runtime, data_root=str(root))


def prepare_all(trials: Sequence[Trial], runtime: Runtime) -> None:
    """Build every cache the trials need once, up front, with all cores (trials then only read them)."""
    seen = set()
    for t in trials:
        shape = (t.dataset, t.val_fraction, t.seed, t.subset_fraction, t.subset_test, models.image_size(t))
        if shape not in seen:
            seen.add(shape)
            prepare_data(t, runtime)
