"""Data throughput: cache build and cached batches (images/s) against a naive decode-per-sample DataLoader."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from support import write_nih_tree

from harness.bench import NaivePNGDataset
from harness.data import cache, loader, nih

pytestmark = pytest.mark.bench

CROP, BATCH = 224, 32
SIZE = loader.load_size(CROP)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """70 NIH-sized (1024x1024) PNGs."""
    root = write_nih_tree(tmp_path_factory.mktemp("bench") / "nih", image_px=1024, repeat=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nih.load(root)


def report(benchmark, images: int) -> None:
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = round(images / benchmark.stats.stats.mean, 1)


def test_cache_build(benchmark, tree, tmp_path):
    rows = np.arange(len(tree.table))
    target = tmp_path / "cache"

    def fresh():
        shutil.rmtree(target, ignore_errors=True)

    built = benchmark.pedantic(
        lambda: cache.build(tree, rows, size=SIZE, cache_dir=target, progress=False), setup=fresh, rounds=3
    )
    assert not built.reused and len(built.images) == len(rows)
    report(benchmark, len(rows))


def test_cached_batches(benchmark, tree, tmp_path):
    built = cache.build(tree, np.arange(len(tree.table)), size=SIZE, cache_dir=tmp_path, progress=False)
    batches = loader.Batches(built.images, tree.labels[built.rows], batch_size=BATCH, crop=CROP, train=True)

    def one_epoch():
        return sum(len(x) for x, _ in batches)

    assert benchmark(one_epoch) == len(built.images)
    report(benchmark, len(built.images))


def test_naive_decoding_dataloader(benchmark, tree):
    dataset = NaivePNGDataset(tree.table["path"].tolist(), size=SIZE, crop=CROP)
    data = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=os.cpu_count() or 1)

    def one_epoch():
        return sum(len(x) for x in data)

    assert benchmark.pedantic(one_epoch, rounds=3) == len(dataset)
    report(benchmark, len(dataset))


def test_read_gray_one_image(benchmark, tree):
    path = tree.table["path"][0]
    assert benchmark(cache.read_gray, path, SIZE).shape == (SIZE, SIZE)
    report(benchmark, 1)
