"""Throughput benchmarks: the cached loader against a naive PNG DataLoader, and a model step against a trial's."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness import hardware, models, train
from harness.config import Runtime, Trial
from harness.data import cache, loader, nih


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NaivePNGDataset(torch.utils.data.Dataset):
    """The baseline: a plain torchvision pipeline that decodes, resizes, crops, flips and normalises each PNG
    on every access (on one channel, then repeated: kinder to the baseline than converting to RGB first)."""

    def __init__(self, paths: list[str], *, size: int, crop: int) -> None:
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.Grayscale(1),
                transforms.Resize((size, size)),
                transforms.RandomCrop(crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )
        self.normalise = transforms.Normalize(loader.IMAGENET_MEAN, loader.IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            return self.normalise(self.transform(image).expand(3, -1, -1))


def _time_epochs(batches, device: torch.device, min_images: int, min_seconds: float = 1.0) -> float:
    """Images per second over whole passes, until both minimums are reached."""
    seen, epoch = 0, 0
    t0 = time.perf_counter()
    while seen < min_images or time.perf_counter() - t0 < min_seconds:
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        for x, *_ in batches:
            seen += len(x)
        epoch += 1
    _sync(device)
    return seen / (time.perf_counter() - t0)


def bench_loader(
    runtime: Runtime,
    *,
    crop: int = 224,
    batch_size: int = 64,
    n_images: int = 2048,
    naive_images: int = 512,
    device: str | None = None,
) -> dict[str, Any]:
    """Cached-loader images/s beside a per-sample PNG-decoding DataLoader's, same images, same output."""
    hardware.keep_freed_memory()  # as in a trial
    data = nih.load(runtime.data_root)
    rows = np.arange(min(n_images, len(data.table)))
    size = loader.load_size(crop)
    dev = hardware.pick_device(device or "auto")
    built = cache.build(
        data, rows, size=size, cache_dir=runtime.cache_dir, workers=runtime.workers, progress=runtime.progress
    )
    labels = data.labels[built.rows].astype(np.float32)
    cached = loader.Batches(built.images, labels, batch_size=batch_size, crop=crop, train=True, device=dev)
    _time_epochs(cached, dev, batch_size)  # warm-up: page cache, GPU upload
    cached_rate = _time_epochs(cached, dev, len(rows))
    workers = runtime.workers or os.cpu_count() or 1
    paths = data.table["path"].to_numpy()[rows[:naive_images]].tolist()
    naive = torch.utils.data.DataLoader(
        NaivePNGDataset(paths, size=size, crop=crop),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    seen = 0
    for x in naive:
        seen += len(x.to(dev, non_blocking=True))
    _sync(dev)
    naive_rate = seen / (time.perf_counter() - t0)
    return {
        "bench": "loader",
        "dataset": data.dataset,
        "images": len(rows),
        "crop": crop,
        "cache_size": size,
        "batch_size": batch_size,
        "device": str(dev),
        "naive_workers": workers,
        "cache_build_images_per_s": built.rate or None,
        "cached_images_per_s": cached_rate,
        "naive_png_images_per_s": naive_rate,
        "ratio": cached_rate / naive_rate,
    }


def _step_setup(trial: Trial, device: torch.device, prevalence: np.ndarray | None = None, compile: bool = False):
    """A trial's training set-up (train.training_setup) and a step of it on one random batch already on the
    device; returns the module that steps, the loss, the optimiser and the step."""
    prevalence = np.full(len(nih.FINDINGS), 0.1) if prevalence is None else prevalence
    model, step_model, loss_fn, optimizer = train.training_setup(trial, device, prevalence=prevalence, compile=compile)
    size = models.image_size(trial)
    x = torch.randn(trial.batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(trial.batch_size, len(nih.FINDINGS), device=device) < 0.1).float()
    models.train_mode(model, trial)

    def step() -> None:
        train.train_step(step_model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)

    return step_model, loss_fn, optimizer, step


def _step_rate(step: Callable[[], None], batch_size: int, *, device: torch.device, steps: int) -> float:
    """Model-step-only images/s: the same batch already on the device, forward + backward + step."""
    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def step_window(
    trial: Trial, *, device: str | torch.device, seconds: float, ready: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Model steps of the trial's shape on a random batch for `seconds`, after warm-up: images/s and peak memory.

    ready() is called after warm-up and returns when the measurement may start: copies of this function
    released together measure what a GPU gives trials side by side.
    """
    hardware.keep_freed_memory()
    dev = torch.device(device)
    *_, step = _step_setup(trial, dev)
    for _ in range(3):  # cuDNN autotuning and allocator growth happen here, not in the window
        step()
    _sync(dev)
    hardware.reset_peak_memory(dev)
    ready()
    start = time.time()
    steps = 0
    while time.time() - start < seconds:
        for _ in range(4):  # a few steps per clock check keeps the GPU's queue full
            step()
        steps += 4
        _sync(dev)
    end = time.time()
    return {
        "images": steps * trial.batch_size,
        "start": start,
        "end": end,
        "images_per_s": steps * trial.batch_size / (end - start),
        **hardware.peak_memory(dev),
    }


def bench_step(
    runtime: Runtime,
    *,
    arch: str,
    batch_size: int = 64,
    image_size: int = 0,
    steps: int = 20,
    pretrained: bool = False,
    eval_batch_size: int = 0,
) -> dict[str, Any]:
    """A trial's end-to-end training images/s (cache, augmentation, step) beside the model step alone, and its
    evaluation images/s at eval_batch_size (0: the size a trial uses).

    With runtime.compile both use torch.compile, as a trial does; first_step_seconds then holds the compile.
    """
    hardware.keep_freed_memory()
    trial = Trial(
        arch=arch,
        batch_size=batch_size,
        image_size=image_size,
        pretrained=pretrained,
        dataset=nih.load(runtime.data_root).dataset,
    )
    train.check_trial(trial)
    device = hardware.pick_device(runtime.device)
    td = train.prepare_data(trial.replace(subset_fraction=1.0), runtime)
    n = min(len(td.labels["train"]), batch_size * (steps + 3))
    model, loss_fn, optimizer, step = _step_setup(
        trial, device, prevalence=td.labels["train"].mean(0), compile=runtime.compile
    )
    t0 = time.perf_counter()
    step()  # cuDNN autotuning, and the whole compile when compiling
    _sync(device)
    first_step = time.perf_counter() - t0
    step_rate = _step_rate(step, batch_size, device=device, steps=steps)
    size = models.image_size(trial)

    batches = loader.Batches(
        td.images["train"][:n],
        td.labels["train"][:n],
        batch_size=batch_size,
        crop=size,
        train=True,
        device=device,
        drop_last=True,
    )
    train.train_one_epoch(
        model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device, epoch=0
    )  # warm-up, and the GPU upload of a resident cache
    _sync(device)
    t0 = time.perf_counter()
    _, seen = train.train_one_epoch(
        model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device, epoch=1
    )
    _sync(device)
    e2e_rate = seen / (time.perf_counter() - t0)

    evaluation = loader.Batches(
        td.images["train"][:n],
        td.labels["train"][:n],
        crop=size,
        train=False,
        batch_size=eval_batch_size or train.eval_batch_size(trial, device),
        device=device,
    )
    train.predict(model, evaluation, device=device)  # warm-up at this batch size
    t0 = time.perf_counter()
    train.predict(model, evaluation, device=device)
    eval_rate = n / (time.perf_counter() - t0)
    return {
        "bench": "step",
        "arch": arch,
        "batch_size": batch_size,
        "image_size": size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dataset": td.data.dataset,
        "compile": runtime.compile,
        "first_step_seconds": first_step,
        "step_images_per_s": step_rate,
        "trial_images_per_s": e2e_rate,
        "ratio": e2e_rate / step_rate,
        "eval_batch_size": evaluation.batch_size,
        "eval_images_per_s": eval_rate,
    }
