"""`harness bench loader|step`: what each side of a comparison did, and the bare loop the trial step is held to."""

import json

import pytest
import torch

from harness import bench as bench_mod
from harness import cli, models
from harness.config import Trial


@pytest.fixture(scope="module")
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


@pytest.mark.parametrize("arch", sorted(models.MODELS))
def test_bare_loop_builds_the_network_a_trial_trains(arch):
    """Same layers, same shapes, same head (InceptionV3's auxiliary one included at its native size)."""
    pair = bench_mod.step_pair(Trial(arch=arch, batch_size=2), torch.device("cpu"))

    def shapes(model):
        return sorted(tuple(p.shape) for p in model.parameters())

    assert shapes(pair.bare_model) == shapes(pair.model)


def test_bare_loop_trains():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 14) < 0.1).float()
    model, step = bench_mod.bare_loop("alexnet", x, y, lr=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step().item() for _ in range(6)]
    assert losses[-1] < losses[0] - 0.1  # the same batch six times: learned, not just run
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_interleaved_windows_take_turns_and_count_every_image():
    calls = []
    timed = bench_mod.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        batch_size=5,
        device=torch.device("cpu"),
        per_window=2,
        windows=3,
    )
    assert "".join(calls) == "aabb" + "bbaa" + "aabb"  # neither side always goes first
    assert [images for images, _ in timed["a"]] == [images for images, _ in timed["b"]] == [10, 10, 10]
    assert all(seconds > 0 for w in timed.values() for _, seconds in w)


def test_bench_step_refuses_a_train_split_smaller_than_a_batch(tree, tmp_path, capsys):
    args = ["bench", "step", "--arch", "alexnet", "--image-size", "64", "--batch", "128"]
    assert cli.main([*args, "--data-root", str(tree), "--cache-dir", str(tmp_path), "--device", "cpu"]) == 2
    assert "needs a batch of 128 training images" in capsys.readouterr().err


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
        (["pack", "--arch", "alexnet", "--freeze", "-1"], "--freeze: invalid whole number >= 0"),
    ],
)
def test_bad_bench_arguments_are_one_line_and_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "alexnet", "--device", "cpu"], "bench pack measures trials side by side on a GPU"),
        (["--arch", "alexnet", "--freeze", "9", "--device", "cpu"], "freeze=9 is deeper than alexnet's 5 stages"),
        (["--arch", "vgg", "--device", "cpu"], "unknown arch 'vgg'"),
    ],
)
def test_bench_pack_without_a_gpu_or_with_a_bad_shape_is_one_line_and_exit_2(capsys, args, message):
    assert cli.main(["bench", "pack", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("harness: error: ") and err.strip().count("\n") == 0


def _script(name: str):
    """A module of scripts/ (they are run as files, not imported as a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grid_work(tmp_path, phases, *, end=None, util=None):
    """A gpu_check grid work folder: start at t=1000, the phases file, and GPU samples util(t) each second."""
    (tmp_path / "start").write_text("1000.0")
    (tmp_path / "phases.json").write_text(json.dumps({"phases": phases, "not_timed": []}))
    if end is not None:
        (tmp_path / "end").write_text(str(end))
        (tmp_path / "rc").write_text("0")
    if util is not None:
        lines = [f"{t}.2,0,{util(t)},{4000 + t - 1000}" for t in range(1000, 1100)]
        (tmp_path / "gpu.csv").write_text("\n".join([*lines, "1099.9,0,5"]))  # the last line cut short
    return tmp_path


def _phase(name, start, end):
    return {"phase": name, "start": start, "end": end}


def test_grid_summary_times_each_phase_and_the_gpu_use_within_it(tmp_path):
    rows = [
        _phase("run", 1000.5, 1090.0),
        _phase("data", 1001.0, 1011.0),
        _phase("grid_runner", 1011.0, 1090.0),
        _phase("ray_start", 1011.0, 1015.0),
        _phase("packing", 1015.0, 1030.0),
        _phase("report", 1090.0, 1095.0),
    ]
    work = _grid_work(tmp_path, rows, end=1096.0, util=lambda t: 100 if 1030 <= t < 1090 else 0)
    s = _script("gpu_summary").grid_summary(work, {"epochs": 2})
    seconds = {name: p["seconds"] for name, p in s["phases"].items()}
    assert seconds == {"data": 10, "ray_start": 4, "packing": 15, "trials": 60, "report": 5}
    assert s["phases"]["trials"]["start_s"] == 30 and not s["phases"]["trials"]["running"]
    assert s["phases"]["trials"]["gpu"]["mean_percent"] == 100 and s["phases"]["packing"]["gpu"]["mean_percent"] == 0
    assert s["gpu"]["samples"] == 96 and s["gpu"]["share_at_or_above_90"] == round(60 / 96, 3)
    assert s["finished"] and s["rc"] == 0 and s["grid_seconds"] == 96 and s["other_seconds"] == 2 and s["epochs"] == 2


def test_grid_summary_of_a_grid_still_deciding_its_packing_without_nvidia_smi(tmp_path):
    rows = [_phase("data", 1001.0, 1011.0), _phase("grid_runner", 1011.0, None), _phase("packing", 1015.0, None)]
    s = _script("gpu_summary").grid_summary(_grid_work(tmp_path, rows), {}, now=1050.0)
    assert not s["finished"] and s["rc"] is None and s["grid_seconds"] == 50
    assert set(s["phases"]) == {"data", "packing"}  # no trials yet: they start once packing is decided
    assert s["phases"]["packing"]["running"] and s["phases"]["packing"]["seconds"] == 35
    assert s["gpu"]["samples"] == 0 and "nvidia-smi" in s["gpu"]["note"]


def test_grid_phases_records_a_command_and_appends_the_next(tmp_path, capsys):
    from harness import prepare
    from harness.runner import grid as runner_grid

    prepare_all, run_grid = prepare.prepare_all, runner_grid.run_grid
    phases = _script("grid_phases")
    path = tmp_path / "phases.json"
    assert phases.main([str(path), "run", "--", "run", "grids/paper.yaml", "--dry-run"]) == 0
    assert phases.main([str(path), "again", "--", "run", "grids/paper.yaml", "--dry-run"]) == 0
    rows = json.loads(path.read_text())["phases"]
    assert [(r["phase"], r["rc"]) for r in rows] == [("run", 0), ("again", 0)]  # a dry run builds no caches
    assert all(r["start"] < r["end"] for r in rows)
    assert prepare_all is prepare.prepare_all and run_grid is runner_grid.run_grid  # the timers are gone afterwards


def test_gpu_sampler_without_nvidia_smi_writes_nothing_and_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _script("gpu_sample").main([str(tmp_path / "gpu.csv")]) == 0
    assert not (tmp_path / "gpu.csv").exists() and "no nvidia-smi" in capsys.readouterr().err
