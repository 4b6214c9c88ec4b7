"""Batches: shapes, normalisation, exact crops and flips, seeded shuffles, eval order, and the CUDA paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data import cache, loader, nih
from harness.data.loader import IMAGENET_MEAN, IMAGENET_STD, Batches
from harness.data.nih import DataWarning

N, S, CROP = 37, 20, 16


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (N, S, S), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # Each row spells its index in binary, so a batch's y says which image each sample came from.
    return ((np.arange(N)[:, None] >> np.arange(14)) & 1).astype(np.uint8)


def source_index(y: torch.Tensor) -> np.ndarray:
    return (y.cpu().numpy().astype(np.int64) << np.arange(14)).sum(axis=1)


def pixels_of(x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of channel 0 back to 0..255."""
    return (x[:, 0].cpu().double().numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255


def epoch(batches: Batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches)


def test_load_size():
    assert loader.load_size(224) == 256 and loader.load_size(299) == 342 and loader.load_size(64) == 73


def test_shapes_dtypes_and_length(images, labels):
    batches = Batches(images, labels, batch_size=8, crop=CROP, train=True)
    out = epoch(batches)
    assert len(batches) == len(out) == 5
    assert [len(x) for x, _ in out] == [8, 8, 8, 8, 5]
    x, y = out[0]
    assert x.shape == (8, 3, CROP, CROP) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (8, 14) and y.dtype == torch.float32
    dropped = Batches(images, labels, batch_size=8, crop=CROP, train=True, drop_last=True)
    assert len(dropped) == 4 and [len(x) for x, _ in dropped] == [8] * 4


def test_normalisation_and_gray_to_three_channels(labels):
    flat = np.full((N, S, S), 200, dtype=np.uint8)
    x, _ = next(iter(Batches(flat, labels, batch_size=4, crop=CROP, train=False)))
    for c in range(3):
        expected = (200 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[:, c], torch.full_like(x[:, c], expected))


def test_eval_is_the_center_crop_in_order(images, labels):
    out = epoch(Batches(images, labels, batch_size=10, crop=CROP, train=False, augment=True))
    x = torch.cat([b[0] for b in out])
    y = torch.cat([b[1] for b in out])
    np.testing.assert_array_equal(source_index(y), np.arange(N))
    start = (S - CROP) // 2
    np.testing.assert_allclose(pixels_of(x), images[:, start : start + CROP, start : start + CROP], atol=1e-3)


def test_train_without_augment_is_center_crop_shuffled(images, labels):
    x, y = next(iter(Batches(images, labels, batch_size=N, crop=CROP, train=True, augment=False)))
    index = source_index(y)
    assert sorted(index) == list(range(N))
    np.testing.assert_allclose(pixels_of(x), images[index, 2:18, 2:18], atol=1e-3)


def test_augmented_samples_are_crops_or_mirrored_crops(images, labels):
    batches = Batches(images, labels, batch_size=8, crop=CROP, train=True, seed=1)
    seen_offsets, flips = set(), []
    for x, y in batches:
        for got, i in zip(pixels_of(x), source_index(y)):
            matches = [
                (r, c, f)
                for r in range(S - CROP + 1)
                for c in range(S - CROP + 1)
                for f in (0, 1)
                if np.allclose(
                    got, (lambda w: w[:, ::-1] if f else w)(images[i, r : r + CROP, c : c + CROP]), atol=1e-3
                )
            ]
            assert len(matches) == 1, f"sample of image {i} is no crop of it"
            seen_offsets.add(matches[0][:2])
            flips.append(matches[0][2])
    assert len(seen_offsets) > 5 and 0 < sum(flips) < len(flips)


def test_flip_mirrors_columns(labels):
    ramp = np.tile(np.arange(S, dtype=np.uint8) * 10, (N, S, 1))  # (N, S, S), rising left to right
    x, _y = next(iter(Batches(ramp, labels, batch_size=N, crop=S, train=True, seed=2)))
    rows = pixels_of(x)[:, 0, :]
    rising = np.allclose(rows, ramp[0, 0], atol=1e-3, rtol=0)
    per_sample = [np.allclose(r, ramp[0, 0], atol=1e-3) for r in rows]
    mirrored = [np.allclose(r, ramp[0, 0, ::-1], atol=1e-3) for r in rows]
    assert not rising and all(a != b for a, b in zip(per_sample, mirrored))
    assert 5 < sum(mirrored) < N - 5


def test_shuffle_repeats_for_seed_and_epoch(images, labels):
    def run(seed, at):
        batches = Batches(images, labels, batch_size=8, crop=CROP, train=True, seed=seed)
        batches.set_epoch(at)
        return epoch(batches)

    def same(a, b):
        return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))

    first = run(0, 3)
    assert same(first, run(0, 3))
    assert not same(first, run(0, 4)) and not same(first, run(1, 3))
    batches = Batches(images, labels, batch_size=8, crop=CROP, train=True)
    batches.set_epoch(3)
    assert same(first, epoch(batches)) and same(first, epoch(batches))  # the epoch, not the call count
    order = np.concatenate([source_index(y) for _, y in first])
    assert sorted(order) == list(range(N)) and list(order) != list(range(N))


@pytest.mark.parametrize("options", [{"resident": True}, {"channels_last": True}])
def test_cpu_variants_give_the_same_batches(images, labels, options):
    plain = epoch(Batches(images, labels, batch_size=8, crop=CROP, train=True, seed=5))
    other = epoch(Batches(images, labels, batch_size=8, crop=CROP, train=True, seed=5, **options))
    for (xa, ya), (xb, yb) in zip(plain, other):
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)
    if options.get("channels_last"):
        assert other[0][0].is_contiguous(memory_format=torch.channels_last)


def test_stopping_early_and_empty(images, labels):
    batches = Batches(images, labels, batch_size=4, crop=CROP, train=False)
    for i, _ in enumerate(batches):
        if i == 1:
            break
    assert len(epoch(batches)) == len(batches)
    assert epoch(Batches(images[:0], labels[:0], batch_size=4, crop=CROP, train=True)) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop": S + 1}, "does not fit"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(images, labels, kwargs, message):
    args = {"batch_size": 4, "crop": CROP, "train": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        Batches(images, labels, **args)


def test_reads_a_memory_mapped_cache(nih_tree, tmp_path):
    with pytest.warns(DataWarning):
        data = nih.load(nih_tree)
    built = cache.build(
        data, np.arange(len(data.table)), size=loader.load_size(28), cache_dir=tmp_path, workers=1, progress=False
    )
    batches = Batches(built.images, data.labels[built.rows], batch_size=16, crop=28, train=True)
    out = epoch(batches)
    assert sum(len(x) for x, _ in out) == len(data.table)
    assert all(torch.isfinite(x).all() for x, _ in out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_cuda_matches_cpu(images, labels, resident, train):
    cpu = epoch(Batches(images, labels, batch_size=8, crop=CROP, train=train, seed=7))
    gpu = Batches(images, labels, batch_size=8, crop=CROP, train=train, seed=7, device="cuda", resident=resident)
    out = epoch(gpu)
    assert gpu.resident is resident
    for (xc, yc), (xg, yg) in zip(cpu, out):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc)
        torch.testing.assert_close(yg.cpu(), yc)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident_by_default_when_small(images, labels):
    assert Batches(images, labels, batch_size=8, crop=CROP, train=True, device="cuda").resident
