"""Throughput benchmarks: the cached loader against a naive PNG DataLoader, a trial's step against a bare loop's."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from harness import hardware, models, prepare, throughput, train
from harness.config import ConfigError, Runtime, Trial
from harness.data import cache, loader, nih


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
    throughput.sync(device)
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
    throughput.sync(dev)
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
        "naive_images": seen,
        "naive_png_images_per_s": naive_rate,
        "ratio": cached_rate / naive_rate,
    }


def _torchvision_net(arch: str, *, size: int, num_classes: int) -> torch.nn.Module:
    # InceptionV3: torchvision's auxiliary head only fits inputs of 299 px and more; it trains, weighted
    # 0.4 as in torchvision's reference recipe, wherever it is built.
    options = {"aux_logits": size >= 299, "init_weights": True} if arch == "inception_v3" else {}
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)


def _timm_net(arch: str, *, size: int, num_classes: int) -> torch.nn.Module:
    import timm  # the optional extra: only its archs get here

    fixed = {"img_size": size} if models.spec(arch).fixed_size else {}  # ViT and Swin are built for one size
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **fixed)


# How a plain script builds each family's network, with no harness code in between.
BARE_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {"torchvision": _torchvision_net, "timm": _timm_net}


def bare_loop(
    arch: str, x: torch.Tensor, y: torch.Tensor, *, lr: float, compile: bool = False
) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """The baseline a trial's step is held to: what a plain PyTorch script does with no harness in between.

    torchvision's model built directly with y.shape[1] logits, Adam at lr, BCE with logits, bf16 autocast
    and channels_last on CUDA, on the batch x, y already on the device. Returns the model and one step,
    which returns the detached loss.
    """
    device = x.device
    cuda = device.type == "cuda"
    model = BARE_BUILDERS[models.spec(arch).family](arch, size=x.shape[-1], num_classes=y.shape[1]).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = torch.nn.BCEWithLogitsLoss()
    forward = torch.compile(model) if compile else model

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = forward(x)
            if isinstance(out, tuple):
                loss = criterion(out[0], y) + 0.4 * criterion(out[1], y)
            else:
                loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return model, step


@dataclass
class StepPair:
    """A trial's step and the bare loop's, each on the same batch already on the device."""

    model: torch.nn.Module  # the module the trial steps (its torch.compile when compiling)
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], torch.Tensor]  # train.train_step on the batch; returns the detached loss
    bare_model: torch.nn.Module
    bare: Callable[[], torch.Tensor]  # bare_loop's step on the batch; returns the detached loss


def step_pair(
    trial: Trial, device: torch.device, *, prevalence: np.ndarray | None = None, compile: bool = False
) -> StepPair:
    """The trial's training set-up and step beside bare_loop's, both on one random batch of its shape."""
    x, y = throughput.random_batch(trial, device)
    model, loss_fn, optimizer, step = throughput.step_setup(trial, device, prevalence, compile, batch=(x, y))
    bare_model, bare = bare_loop(trial.arch, x, y, lr=trial.lr, compile=compile)
    return StepPair(model, loss_fn, optimizer, step, bare_model, bare)


def interleaved(
    steps: dict[str, Callable[[], object]], *, batch_size: int, device: torch.device, per_window: int, windows: int
) -> dict[str, list[tuple[int, float]]]:
    """(images, seconds) of each step function over `windows` windows of per_window steps, the functions
    taking turns (A B, B A, A B, ...) so that drift (clocks, heat, other work on the machine) falls on each
    alike and neither always goes first."""
    timed: dict[str, list[tuple[int, float]]] = {name: [] for name in steps}
    names = list(steps)
    for w in range(windows):
        for name in names if w % 2 == 0 else names[::-1]:
            images = 0
            t0 = time.perf_counter()
            for _ in range(per_window):
                steps[name]()
                images += batch_size
            throughput.sync(device)
            timed[name].append((images, time.perf_counter() - t0))
    return timed


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _step_data(runtime: Runtime, trial: Trial, *, batch_size: int, steps: int) -> tuple[prepare.TrialData, int]:
    """Step 1: the data set's cache at the trial's size, and how many training images the epochs use."""
    td = prepare.prepare_data(trial.replace(subset_fraction=1.0), runtime)
    n = min(len(td.labels["train"]), batch_size * (steps + 3))
    if n < batch_size:  # the epoch would hold no whole batch and time nothing
        raise ConfigError(
            f"bench step needs a batch of {batch_size} training images; the train split of {td.data.root} "
            f"holds {n}: use a larger data set or a smaller --batch"
        )
    return td, n


def _time_step_and_bare(
    pair: StepPair, device: torch.device, *, batch_size: int, steps: int, windows: int
) -> tuple[float, dict[str, list[tuple[int, float]]]]:
    """Step 2: the trial's first step (autotuning, or the whole compile), warm-up, then alternating windows."""
    t0 = time.perf_counter()
    pair.step()  # cuDNN autotuning, and the whole compile when compiling
    throughput.sync(device)
    first_step = time.perf_counter() - t0
    for _ in range(3):
        pair.bare()
        pair.step()
    throughput.sync(device)
    timed = interleaved(
        {"step": pair.step, "bare": pair.bare}, batch_size=batch_size, device=device, per_window=steps, windows=windows
    )
    return first_step, timed


def _epoch_rate(pair: StepPair, batches: loader.Batches, trial: Trial, device: torch.device) -> float:
    """Step 3: the trial's end-to-end training images/s (cache, augmentation, step) over one epoch, after one."""
    model, loss_fn, optimizer = pair.model, pair.loss_fn, pair.optimizer
    train.train_one_epoch(
        model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device, epoch=0
    )  # warm-up, and the GPU upload of a resident cache
    throughput.sync(device)
    t0 = time.perf_counter()
    _, seen = train.train_one_epoch(
        model, batches, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device, epoch=1
    )
    throughput.sync(device)
    return seen / (time.perf_counter() - t0)


def _eval_rate(model: torch.nn.Module, evaluation: loader.Batches, n: int, device: torch.device) -> float:
    """Step 4: evaluation images/s at the evaluation batch size, after a warm-up pass."""
    train.predict(model, evaluation, device=device)  # warm-up at this batch size
    t0 = time.perf_counter()
    train.predict(model, evaluation, device=device)
    return n / (time.perf_counter() - t0)


def _window_figures(timed: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """The alternating windows' figures: images, images/s per window and their medians, step over bare."""
    rates = {name: [images / seconds for images, seconds in w] for name, w in timed.items()}
    pairs = [s / b for s, b in zip(rates["step"], rates["bare"])]
    return {
        "step_images": sum(images for images, _ in timed["step"]),
        "bare_images": sum(images for images, _ in timed["bare"]),
        "step_window_images_per_s": rates["step"],
        "bare_window_images_per_s": rates["bare"],
        "step_images_per_s": statistics.median(rates["step"]),
        "bare_images_per_s": statistics.median(rates["bare"]),
        "step_vs_bare": statistics.median(pairs),
        "step_vs_bare_range": [min(pairs), max(pairs)],
    }


def bench_step(
    runtime: Runtime,
    *,
    arch: str,
    batch_size: int = 64,
    image_size: int = 0,
    steps: int = 20,
    windows: int = 5,
    pretrained: bool = False,
    eval_batch_size: int = 0,
) -> dict[str, Any]:
    """A trial's model step beside a bare PyTorch loop's (bare_loop) on the same batch, timed in alternating
    windows of `steps` steps in one process; then the trial's end-to-end training images/s (cache,
    augmentation, step) and its evaluation images/s at eval_batch_size (0: the size a trial uses).

    step_vs_bare, the median over window pairs of trial step / bare step, is the figure that carries from
    machine to machine; images/s are medians over windows. With runtime.compile the trial, the bare loop
    and the epoch all use torch.compile; first_step_seconds then holds the trial's compile.
    """
    hardware.keep_freed_memory()  # process-wide: the bare loop gets it too
    dataset = nih.load(runtime.data_root).dataset
    trial = Trial(arch=arch, batch_size=batch_size, image_size=image_size, pretrained=pretrained, dataset=dataset)
    train.check_trial(trial)
    device = hardware.pick_device(runtime.device)
    td, n = _step_data(runtime, trial, batch_size=batch_size, steps=steps)
    pair = step_pair(trial, device, prevalence=td.labels["train"].mean(0), compile=runtime.compile)
    first_step, timed = _time_step_and_bare(pair, device, batch_size=batch_size, steps=steps, windows=windows)
    figures = _window_figures(timed)
    size = models.image_size(trial)
    images, labels = td.images["train"][:n], td.labels["train"][:n]
    batches = loader.Batches(
        images, labels, batch_size=batch_size, crop=size, train=True, device=device, drop_last=True
    )
    e2e_rate = _epoch_rate(pair, batches, trial, device)
    eval_bs = eval_batch_size or prepare.eval_batch_size(trial, device)
    evaluation = loader.Batches(images, labels, crop=size, train=False, batch_size=eval_bs, device=device)
    eval_rate = _eval_rate(pair.model, evaluation, n, device)
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
        "windows": windows,
        "steps_per_window": steps,
        "params": _params(pair.model),
        "bare_params": _params(pair.bare_model),
        **figures,
        "trial_images_per_s": e2e_rate,
        "trial_vs_bare": e2e_rate / figures["bare_images_per_s"],
        "ratio": e2e_rate / figures["step_images_per_s"],
        "eval_batch_size": evaluation.batch_size,
        "eval_images_per_s": eval_rate,
    }
