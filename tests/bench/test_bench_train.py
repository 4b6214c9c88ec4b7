"""pytest-benchmark: one CPU training step, and an augmented epoch of batches from images already in memory."""

import numpy as np
import pytest
import torch

from harness import hardware, losses, models, train
from harness.config import Trial
from harness.data import loader

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("arch", ["alexnet", "resnet50"])
def test_cpu_train_step(benchmark, arch):
    trial = Trial(arch=arch, image_size=64, batch_size=16)
    model = models.build(trial)
    loss_fn = losses.make_loss(trial, prevalence=np.full(14, 0.1))
    optimizer = train.OPTIMIZERS["adam"](model.parameters(), trial)
    x, y = torch.randn(16, 3, 64, 64), (torch.rand(16, 14) < 0.1).float()
    models.train_mode(model, trial)
    loss = benchmark(train.train_step, model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=torch.device("cpu"))
    assert torch.isfinite(loss)


def test_augmented_epoch_from_memory(benchmark):
    """512 images cropped, flipped and normalised in batches of 64, as a trial's process does it."""
    hardware.keep_freed_memory()
    images = np.random.default_rng(0).integers(0, 255, (512, 256, 256), dtype=np.uint8)
    labels = np.zeros((512, 14), np.float32)
    batches = loader.Batches(images, labels, batch_size=64, crop=224, train=True)

    def epoch():
        return sum(len(x) for x, _ in batches)

    assert benchmark(epoch) == 512
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = round(512 / benchmark.stats.stats.mean, 1)
