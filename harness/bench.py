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

from harness import hardware, models, prepare, train
from harness.config import ConfigError, Runtime, Trial
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
        "naive_images": seen,
        "naive_png_images_per_s": naive_rate,
        "ratio": cached_rate / naive_rate,
    }


def _batch(trial: Trial, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One random training batch of the trial's shape, already on the device (channels_last on CUDA)."""
    size = models.image_size(trial)
    x = torch.randn(trial.batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(trial.batch_size, len(nih.FINDINGS), device=device) < 0.1).float()
    return x, y


def _step_setup(
    trial: Trial,
    device: torch.device,
    prevalence: np.ndarray | None = None,
    compile: bool = False,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """A trial's training set-up (train.training_setup) and a step of it on one batch already on the device
    (random unless given); returns the module that steps, the loss, the optimiser and the step."""
    prevalence = np.full(len(nih.FINDINGS), 0.1) if prevalence is None else prevalence
    model, step_model, loss_fn, optimizer = train.training_setup(trial, device, prevalence=prevalence, compile=compile)
    x, y = _batch(trial, device) if batch is None else batch
    models.train_mode(model, trial)

    def step() -> torch.Tensor:
        return train.train_step(step_model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)

    return step_model, loss_fn, optimizer, step


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
    x, y = _batch(trial, device)
    model, loss_fn, optimizer, step = _step_setup(trial, device, prevalence, compile, batch=(x, y))
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
            _sync(device)
            timed[name].append((images, time.perf_counter() - t0))
    return timed


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


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    trial = Trial(
        arch=arch,
        batch_size=batch_size,
        image_size=image_size,
        pretrained=pretrained,
        dataset=nih.load(runtime.data_root).dataset,
    )
    train.check_trial(trial)
    device = hardware.pick_device(runtime.device)
    td = prepare.prepare_data(trial.replace(subset_fraction=1.0), runtime)
    n = min(len(td.labels["train"]), batch_size * (steps + 3))
    if n < batch_size:  # the epoch would hold no whole batch and time nothing
        raise ConfigError(
            f"bench step needs a batch of {batch_size} training images; the train split of {td.data.root} "
            f"holds {n}: use a larger data set or a smaller --batch"
        )
    pair = step_pair(trial, device, prevalence=td.labels["train"].mean(0), compile=runtime.compile)
    model, loss_fn, optimizer, step, bare = pair.model, pair.loss_fn, pair.optimizer, pair.step, pair.bare
    t0 = time.perf_counter()
    step()  # cuDNN autotuning, and the whole compile when compiling
    _sync(device)
    first_step = time.perf_counter() - t0
    for _ in range(3):
        bare()
        step()
    _sync(device)
    timed = interleaved(
        {"step": step, "bare": bare}, batch_size=batch_size, device=device, per_window=steps, windows=windows
    )
    rates = {name: [images / seconds for images, seconds in w] for name, w in timed.items()}
    pairs = [s / b for s, b in zip(rates["step"], rates["bare"])]
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
        batch_size=eval_batch_size or prepare.eval_batch_size(trial, device),
        device=device,
    )
    train.predict(model, evaluation, device=device)  # warm-up at this batch size
    t0 = time.perf_counter()
    train.predict(model, evaluation, device=device)
    eval_rate = n / (time.perf_counter() - t0)
    step_rate, bare_rate = statistics.median(rates["step"]), statistics.median(rates["bare"])
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
        "step_images": sum(images for images, _ in timed["step"]),
        "bare_images": sum(images for images, _ in timed["bare"]),
        "params": _params(model),
        "bare_params": _params(pair.bare_model),
        "step_window_images_per_s": rates["step"],
        "bare_window_images_per_s": rates["bare"],
        "step_images_per_s": step_rate,
        "bare_images_per_s": bare_rate,
        "step_vs_bare": statistics.median(pairs),
        "step_vs_bare_range": [min(pairs), max(pairs)],
        "trial_images_per_s": e2e_rate,
        "trial_vs_bare": e2e_rate / bare_rate,
        "ratio": e2e_rate / step_rate,
        "eval_batch_size": evaluation.batch_size,
        "eval_images_per_s": eval_rate,
    }
