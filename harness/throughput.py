"""A trial's training step measured on a random batch: the set-up and timing windows bench and placement share.

`harness bench step` (bench.py) times it beside a bare loop; the runner's placement (runner/placement.py) runs
copies of step_window side by side on one GPU to learn how many trials it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from harness import hardware, models, train
from harness.config import Trial
from harness.data import nih


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(trial: Trial, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One random training batch of the trial's shape, already on the device (channels_last on CUDA)."""
    size = models.image_size(trial)
    x = torch.randn(trial.batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(trial.batch_size, len(nih.FINDINGS), device=device) < 0.1).float()
    return x, y


def step_setup(
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
    x, y = random_batch(trial, device) if batch is None else batch
    models.train_mode(model, trial)

    def step() -> torch.Tensor:
        return train.train_step(step_model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)

    return step_model, loss_fn, optimizer, step


def step_window(
    trial: Trial, *, device: str | torch.device, seconds: float, ready: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Model steps of the trial's shape on a random batch for `seconds`, after warm-up: images/s and peak memory.

    ready() is called after warm-up and returns when the measurement may start: copies of this function
    released together measure what a GPU gives trials side by side.
    """
    hardware.keep_freed_memory()
    dev = torch.device(device)
    *_, step = step_setup(trial, dev)
    for _ in range(3):  # cuDNN autotuning and allocator growth happen here, not in the window
        step()
    sync(dev)
    hardware.reset_peak_memory(dev)
    ready()
    start = time.time()
    steps = 0
    while time.time() - start < seconds:
        for _ in range(4):  # a few steps per clock check keeps the GPU's queue full
            step()
        steps += 4
        sync(dev)
    end = time.time()
    return {
        "images": steps * trial.batch_size,
        "start": start,
        "end": end,
        "images_per_s": steps * trial.batch_size / (end - start),
        **hardware.peak_memory(dev),
    }
