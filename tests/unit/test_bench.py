"""`harness bench loader|step`: what each side of a comparison did, and the bare loop the trial step is held to."""

import json

import pytest
import torch
from support import REPO

from harness import bench as bench_mod
from harness import cli, models
from harness.config import Trial


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

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
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
    from harness.runner import driver as runner_grid

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
