"""`harness bench loader|step` on a synthetic tree: what each side of a comparison did, on equal work."""

import json

import pytest
import torch

from harness import bench as bench_mod
from harness import cli


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    from harness.data import synthetic

    # 91 train, 11 validation, 26 test images: a whole batch to train on (seed 2 at 96 images puts one image in train)
    return synthetic.generate(tmp_path_factory.mktemp("synth") / "nih", n=128, size=96, seed=0, progress=False)


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
    assert r["naive_images"] == 64  # the baseline decoded every image it was given, none dropped or repeated
    assert r["cached_images_per_s"] > 0 and r["naive_png_images_per_s"] > 0


# The shape of `bench step --json`'s output (AlexNet at 64 px, batch 16, on a CPU; figures illustrative).
STEP_RESULT = {
    "bench": "step",
    "arch": "alexnet",
    "batch_size": 16,
    "image_size": 64,
    "device": "cpu",
    "device_name": "cpu",
    "dataset": "synthetic",
    "compile": False,
    "first_step_seconds": 0.4,
    "windows": 5,
    "steps_per_window": 20,
    "step_images": 1600,
    "bare_images": 1600,
    "params": 57061198,
    "bare_params": 57061198,
    "step_window_images_per_s": [61.0, 64.2, 60.3, 62.9, 63.5],
    "bare_window_images_per_s": [62.2, 63.8, 61.0, 63.1, 62.7],
    "step_images_per_s": 62.9,
    "bare_images_per_s": 62.7,
    "step_vs_bare": 0.99,
    "step_vs_bare_range": [0.98, 1.01],
    "trial_images_per_s": 58.1,
    "trial_vs_bare": 0.93,
    "ratio": 0.92,
    "eval_batch_size": 64,
    "eval_images_per_s": 240.0,
}


STEP_KEYS = set(STEP_RESULT)


COUNTS = (
    "batch_size",
    "image_size",
    "windows",
    "steps_per_window",
    "step_images",
    "bare_images",
    "params",
    "bare_params",
)


def test_bench_step_times_the_trial_step_and_the_bare_loop_on_equal_work(tree, tmp_path, capsys):
    common = ["step", "--arch", "alexnet", "--image-size", 64, "--batch", 4, "--steps", 1, "--windows", 2]
    common += ["--data-root", tree, "--cache-dir", tmp_path, "--device", "cpu"]
    r = bench(capsys, *common)
    assert set(r) == STEP_KEYS
    assert all(type(r[k]) is int for k in COUNTS), {k: r[k] for k in COUNTS}
    assert r["arch"] == "alexnet" and r["image_size"] == 64 and r["device"] == "cpu" and not r["compile"]
    # Each side stepped the same batch the same number of times, with the same network.
    assert r["step_images"] == r["bare_images"] == 2 * 1 * 4
    assert len(r["step_window_images_per_s"]) == len(r["bare_window_images_per_s"]) == 2
    assert r["params"] == r["bare_params"] > 0
    assert r["first_step_seconds"] > 0 and r["step_vs_bare"] > 0 and r["trial_vs_bare"] > 0
    assert r["eval_batch_size"] == 64 and r["eval_images_per_s"] > 0  # a trial's evaluation batch on the CPU


def test_bench_step_text_names_both_sides_and_passes_the_options(tree, monkeypatch, capsys):
    asked = {}

    def fake(runtime, **kwargs):
        asked.update(kwargs)
        return {**STEP_RESULT, "eval_batch_size": kwargs["eval_batch_size"]}

    monkeypatch.setattr(bench_mod, "bench_step", fake)
    args = [
        "step",
        "--arch",
        "alexnet",
        "--steps",
        "7",
        "--windows",
        "9",
        "--eval-batch",
        "4",
        "--data-root",
        str(tree),
    ]
    assert cli.main(["bench", *args]) == 0
    assert asked == {
        "arch": "alexnet",
        "batch_size": 64,
        "image_size": 0,
        "steps": 7,
        "windows": 9,
        "eval_batch_size": 4,
    }
    text = capsys.readouterr().out
    assert "bare PyTorch loop" in text and "step / bare" in text and "(batch 4)" in text


def test_bench_step_refuses_a_train_split_smaller_than_a_batch(tree, tmp_path, capsys):
    args = ["bench", "step", "--arch", "alexnet", "--image-size", "64", "--batch", "128"]
    assert cli.main([*args, "--data-root", str(tree), "--cache-dir", str(tmp_path), "--device", "cpu"]) == 2
    assert "needs a batch of 128 training images" in capsys.readouterr().err


def test_naive_baseline_gives_what_the_cached_loader_gives(tree):
    """Same image, same output: a (3, crop, crop) ImageNet-normalised float tensor of a crop of the resized PNG."""
    import numpy as np

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
