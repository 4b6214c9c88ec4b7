"""`harness bench loader|step`: what they measure, reported as the ratios the README's table quotes."""

import json

import pytest

from harness import cli


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from harness.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth") / "nih", n=96, size=96, seed=2, progress=False)


def bench(capsys, *args):
    assert cli.main(["bench", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_loader_compares_the_cache_with_per_sample_png_decoding(tree, tmp_path, capsys):
    r = bench(
        capsys,
        "loader",
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path,
        "--crop",
        64,
        "--batch",
        16,
        "--images",
        64,
        "--device",
        "cpu",
    )
    assert r["images"] == 64 and r["crop"] == 64 and r["cache_size"] == 73 and r["dataset"] == "synthetic"
    assert r["cached_images_per_s"] > 0 and r["naive_png_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["cached_images_per_s"] / r["naive_png_images_per_s"])


def test_bench_step_puts_a_trial_epoch_beside_the_model_step(tree, tmp_path, capsys):
    r = bench(
        capsys,
        "step",
        "--arch",
        "efficientnet_b0",
        "--image-size",
        64,
        "--batch",
        8,
        "--steps",
        2,
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path,
        "--device",
        "cpu",
    )
    assert r["arch"] == "efficientnet_b0" and r["image_size"] == 64 and r["device"] == "cpu"
    assert not r["compile"] and r["first_step_seconds"] > 0
    assert r["ratio"] == pytest.approx(r["trial_images_per_s"] / r["step_images_per_s"])
    assert r["eval_batch_size"] == 64 and r["eval_images_per_s"] > 0  # a trial's evaluation batch on the CPU
    small = bench(
        capsys,
        "step",
        "--arch",
        "efficientnet_b0",
        "--image-size",
        64,
        "--batch",
        8,
        "--steps",
        2,
        "--eval-batch",
        4,
        "--data-root",
        tree,
        "--cache-dir",
        tmp_path,
        "--device",
        "cpu",
    )
    assert small["eval_batch_size"] == 4


def test_naive_baseline_gives_what_the_cached_loader_gives(tree):
    """Same image, same output: a (3, crop, crop) ImageNet-normalised float tensor of a crop of the resized PNG."""
    import numpy as np
    import torch

    from harness.bench import NaivePNGDataset
    from harness.data import cache, loader, nih

    data = nih.load(tree)
    path = data.table["path"].iloc[0]
    x = NaivePNGDataset([path], size=73, crop=64)[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    mean, std = torch.tensor(loader.IMAGENET_MEAN)[:, None, None], torch.tensor(loader.IMAGENET_STD)[:, None, None]
    gray = (x * std + mean)[0].numpy() * 255
    full = cache.read_gray(path, 73).astype(np.float64)

    def window(r, c, flip):
        w = full[r : r + 64, c : c + 64]
        return np.fliplr(w) if flip else w

    best = min(np.abs(window(r, c, f) - gray).mean() for r in range(10) for c in range(10) for f in (0, 1))
    assert best < 3  # within a few gray levels: torchvision's resize against the cache's box-then-bilinear


@pytest.mark.parametrize(
    "args, message",
    [
        (["step", "--arch", "alexnet", "--batch", "0"], "--batch: invalid whole number >= 1 value: '0'"),
        (["loader", "--images", "-5"], "--images: invalid whole number >= 1"),
        (["step", "--arch", "alexnet", "--eval-batch", "x"], "--eval-batch: invalid whole number >= 0"),
    ],
)
def test_bad_bench_arguments_are_one_line_and_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err
