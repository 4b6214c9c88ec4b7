"""Throughput benchmarks: the cached loader against a naive PNG DataLoader, and a model step against a trial's."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness import losses, models, train
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
        self.transform = transforms.Compose([
            transforms.Grayscale(1), transforms.Resize((size, size)), transforms.RandomCrop(crop),
            transforms.RandomHorizontalFlip(), transforms.ToTensor()])
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


def bench_loader(runtime: Runtime, *, crop: int = 224, batch_size: int = 64, n_images: int = 2048,
                 naive_images: int = 512, device: str | None = None) -> dict[str, Any]:
    """Cached-loader images/s beside a per-sample PNG-decoding DataLoader's, same images, same output."""
    train.keep_freed_memory()  # as in a trial
    data = nih.load(runtime.data_root)
    rows = np.arange(min(n_images, len(data.table)))
    size = loader.load_size(crop)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built = cache.build(data, rows, size=size, cache_dir=runtime.cache_dir, workers=runtime.workers,
                        progress=runtime.progress)
    labels = data.labels[built.rows].astype(np.float32)
    cached = loader.Batches(built.images, labels, batch_size=batch_size, crop=crop, train=True, device=dev)
    _time_epochs(cached, dev, batch_size)  # warm-up: page cache, GPU upload
    cached_rate = _time_epochs(cached, dev, len(rows))
    workers = runtime.workers or os.cpu_count() or 1
    paths = data.table["path"].to_numpy()[rows[:naive_images]].tolist()
    naive = torch.utils.data.DataLoader(NaivePNGDataset(paths, size=size, crop=crop), batch_size=batch_size,
                                        shuffle=True, num_workers=workers, pin_memory=dev.type == "cuda",
                                        persistent_workers=False)
    t0 = time.perf_counter()
    seen = 0
    for x in naive:
        seen += len(x.to(dev, non_blocking=True))
    _sync(dev)
    naive_rate = seen / (time.perf_counter() - t0)
    return {"bench": "loader", "dataset": data.dataset, "images": int(len(rows)), "crop": crop,
            "cache_size": size, "batch_size": batch_size, "device": str(dev), "naive_workers": workers,
            "cache_build_images_per_s": built.rate or None, "cached_images_per_s": cached_rate,
            "naive_png_images_per_s": naive_rate, "ratio": cached_rate / naive_rate}


def _step_rate(model, trial: Trial, loss_fn, optimizer, x, y, *, device: torch.device, steps: int) -> float:
    """Model-step-only images/s: the same batch already on the device, forward + backward + step."""
    models.train_mode(model, trial)

    def step() -> None:
        train.train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * len(x) / (time.perf_counter() - t0)


def bench_step(runtime: Runtime, *, arch: str, batch_size: int = 64, image_size: int = 0, steps: int = 20,
               pretrained: bool = False) -> dict[str, Any]:
    """A trial's end-to-end training images/s (cache, augmentation, step) beside the model step alone."""
    train.keep_freed_memory()
    trial = Trial(arch=arch, batch_size=batch_size, image_size=image_size, pretrained=pretrained,
                  dataset=nih.load(runtime.data_root).dataset)
    train.check_trial(trial)
    device = train.pick_device(runtime)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    td = train.prepare_data(trial.replace(subset_fraction=1.0), runtime)
    n = min(len(td.labels["train"]), batch_size * (steps + 3))
    model = models.build(trial).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = losses.make_loss(trial, prevalence=td.labels["train"].mean(0)).to(device)
    optimizer = train.OPTIMIZERS[trial.optimizer]([p for p in model.parameters() if p.requires_grad], trial)
    size = models.image_size(trial)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch_size, len(nih.FINDINGS), device=device) < 0.1).float()
    step_rate = _step_rate(model, trial, loss_fn, optimizer, x, y, device=device, steps=steps)

    batches = loader.Batches(td.images["train"][:n], td.labels["train"][:n], batch_size=batch_size, crop=size,
                             train=True, device=device, drop_last=True)
    train.train_one_epoch(model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device,
                          epoch=0)  # warm-up, and the GPU upload of a resident cache
    _sync(device)
    t0 = time.perf_counter()
    _, seen = train.train_one_epoch(model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer,
                                    device=device, epoch=1)
    _sync(device)
    e2e_rate = seen / (time.perf_counter() - t0)
    return {"bench": "step", "arch": arch, "batch_size": batch_size, "image_size": size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dataset": td.data.dataset, "step_images_per_s": step_rate, "trial_images_per_s": e2e_rate,
            "ratio": e2e_rate / step_rate}
