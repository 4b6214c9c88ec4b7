"""Data for trials: which dataset a grid runs on, every cache built once up front, one trial's three splits."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from harness import models
from harness.config import ConfigError, Runtime, Trial, file_sha256
from harness.data import cache, loader, nih, readers

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
    digests: dict[str, str | None] = field(default_factory=dict)  # split -> its cache's pixels_sha256, if known

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

    def prevalence(self) -> np.ndarray:
        """Each finding's positive share among the training images that label it (0 where none does)."""
        y = self.labels["train"]
        if not np.isnan(y).any():
            return y.mean(axis=0)
        known = np.isfinite(y)
        return np.nansum(y, axis=0) / np.maximum(known.sum(axis=0), 1)

    def stored_labels(self, split: str) -> np.ndarray:
        """A split's labels as predictions.npz keeps them: uint8, or float32 with NaN where unknown."""
        y = self.labels[split]
        return y.astype(np.float32) if np.isnan(y).any() else y.astype(np.uint8)


def prepare_data(trial: Trial, runtime: Runtime) -> TrialData:
    """Read the trial's dataset, split it by patient, and load (or build) the uint8 caches."""
    data = load_dataset(trial, runtime)
    if data.dataset != trial.dataset:
        raise ConfigError(
            f"{trial.label}: trial says dataset={trial.dataset} but {data.root} holds {data.dataset} data"
        )
    splits = nih.trial_splits(data, trial)
    out = TrialData(data=data, labels={}, images={}, rows={}, skipped=0)
    targets = readers.label_targets(data, trial.uncertain)  # NIH: its labels as float32
    for name, rows in splits.items():
        cached = cache.build(
            data,
            rows,
            size=cache_size(trial, name),
            cache_dir=runtime.cache_dir,
            workers=runtime.workers,
            progress=runtime.progress,
        )
        out.images[name] = cached.images
        out.rows[name] = cached.rows
        out.digests[name] = cached.sha256
        out.labels[name] = targets[cached.rows]
        out.skipped += len(cached.skipped)
    return out


def cache_size(trial: Trial, split: str) -> int:
    """The side a split is decoded at: load_size for training's random crops, loader.eval_load_size for the
    validation and test films (the trial's eval_resize)."""
    size = models.image_size(trial)
    return loader.load_size(size) if split == "train" else loader.eval_load_size(size, trial.eval_resize)


def load_dataset(trial: Trial, runtime: Runtime) -> nih.NIHData:
    """The trial's data: the NIH root for nih and synthetic, the named root for chexpert, mimic, padchest."""
    layout = readers.layout_for(trial.dataset)
    if layout == "nih":
        if runtime.data_root is None:
            raise ConfigError("no data root resolved for the trial")
        return nih.load(runtime.data_root)
    return readers.load(dataset_root(layout, runtime), layout=layout)


def dataset_root(layout: str, runtime: Runtime) -> Path:
    """A non-NIH dataset's root: --data-root NAME=PATH, else $HARNESS_NAME_ROOT; a ConfigError when neither."""
    env = readers.registered()[layout].env
    root = runtime.data_roots.get(layout) or os.environ.get(env)
    if not root:
        raise ConfigError(f"no {layout} data root: pass --data-root {layout}=PATH or set ${env}")
    return readers.check_root(root, f"{layout} data root")


def other_datasets(trials: Sequence[Trial], runtime: Runtime) -> tuple[dict[str, str], dict[str, str]]:
    """For trials on a non-NIH dataset: {dataset as written: as its root holds it} and {layout: root}. A synthetic
    tree is recorded as synthetic-<layout>, never as the real dataset (said loudly, as for NIH)."""
    names, roots = {}, {}
    for written in sorted({t.dataset for t in trials} - {"nih", "synthetic"}):
        layout = readers.layout_for(written)
        root = dataset_root(layout, runtime)
        reader = readers.registered()[layout]
        if not all(readers.find_file(root, f) for f in reader.files):
            raise ConfigError(
                f"{layout} data root {str(root)!r} is not the {layout} layout; it needs {', '.join(reader.files)}"
            )
        found = readers.dataset_name(layout, (root / nih.SYNTHETIC_MARKER).is_file())
        if readers.is_synthetic(written) and not readers.is_synthetic(found):
            raise ConfigError(f"dataset={written} but {root} holds the real {layout} data; set dataset: {layout}")
        if found != written:
            log.warning(
                "dataset=%s trials run on SYNTHETIC data (%s) and are recorded as dataset=%s", written, root, found
            )
        names[written], roots[layout] = found, str(root)
    return names, roots


def resolve(trials: list[Trial], runtime: Runtime) -> tuple[list[Trial], Path | None]:
    """The trials as a run will key them, without writing anything: the dataset the data root holds (the
    embedded synthetic set when there is none, said loudly) and, for pretrained trials, the SHA-256 of the
    published-weights file they will load. Returns them and the data root (None: the embedded set)."""
    others, roots = other_datasets(trials, runtime)
    for written, found in others.items():
        if found != written:
            where = roots[readers.layout_for(found)]
            log.warning(
                "dataset=%s trials run on SYNTHETIC data (%s) and are recorded as dataset=%s", written, where, found
            )
    root = nih.locate(runtime.data_root)
    if root is None and len(others) < len({t.dataset for t in trials}):
        log.warning(
            "no NIH data root (--data-root or HARNESS_DATA_ROOT): using the embedded SYNTHETIC dataset; every "
            "result is labelled dataset=synthetic and is not an NIH number"
        )
    dataset = "synthetic" if root is None else nih.load(root).dataset
    out = []
    for t in trials:
        if t.dataset in others:
            out.append(with_pretrained_file(t.replace(dataset=others[t.dataset])))
            continue
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
    if root is None and any(readers.layout_for(t.dataset) == "nih" for t in out):
        root = synthetic.default_root(runtime.cache_dir)
    _, roots = other_datasets(trials, runtime)  # made explicit: Ray workers may not see this environment
    data_root = None if root is None else str(root)
    return out, replace(runtime, data_root=data_root, data_roots={**runtime.data_roots, **roots})


def prepare_all(trials: Sequence[Trial], runtime: Runtime) -> None:
    """Build every cache the trials need once, up front, with all cores (trials then only read them)."""
    seen = set()
    for t in trials:
        shape = (
            t.dataset,
            t.val_fraction,
            t.seed,
            t.subset_fraction,
            t.subset_test,
            models.image_size(t),
            t.eval_resize,
        )
        if shape not in seen:
            seen.add(shape)
            prepare_data(t, runtime)
