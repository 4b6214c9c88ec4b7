"""Packing for real under Ray: grids on a logical GPU learn trials per GPU and keep results as they were, copies released together (-m slow), and measured packing on a real GPU (-m gpu)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import packing
from harness.config import Runtime, Trial
from harness.packing import Probe


def probe(copies, rate, mb=10_000.0, overlap=1.0):
    return Probe(copies=copies, images_per_s=rate, peak_gpu_mb=mb, overlap=overlap)


@pytest.fixture(scope="module")
def logical_gpu():
    """A private Ray with one logical GPU and two CPUs: what runs on the GPU runs on the CPU (no CUDA needed). The
    session's shared Ray, when it is up, makes way for it and comes back after."""
    import ray

    from harness.runner.cluster import start_ray

    shared = ray.is_initialized()
    if shared:
        ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()
            if shared:
                start_ray(Runtime(progress=False))


@pytest.mark.slow  # two grids under a logical GPU: over a minute on a 2-core CPU
def test_a_grid_on_logical_gpus_starts_at_once_and_learns_trials_per_gpu(logical_gpu, nih_tree, tmp_path, monkeypatch):
    """--gpus-per-trial auto: no measurement before the trials; what their epochs showed is in packing.json after
    the run, and the next run uses it; a remembered decision is used as it is; the costliest trial starts first."""
    from ray import tune

    from harness import prepare
    from harness.runner import driver as runner

    placement = pytest.importorskip("harness.runner.placement")

    measured = []

    def measuring(*args, **kwargs):
        measured.append(args)
        raise AssertionError("copies were measured before the grid")

    monkeypatch.setattr(placement, "_side_by_side", measuring)
    monkeypatch.setattr(packing, "measure", measuring)
    shares, handed = {}, []
    resources, grid_search = placement.resources, tune.grid_search
    monkeypatch.setattr(placement, "resources", lambda t, *a, **k: shares.setdefault(t.label, resources(t, *a, **k)))
    monkeypatch.setattr(tune, "grid_search", lambda values: handed.append(values) or grid_search(values))
    runtime = Runtime(
        data_root=str(nih_tree), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / "r"), progress=False
    )
    table = Path(runtime.cache_dir) / packing.PACKING_FILE

    def run(name, *trials):
        trials, rt = prepare.resolve_dataset(list(trials), runtime)
        prepare.prepare_all(trials, rt)
        summary = runner.run_grid(name, trials, rt)
        assert summary.exit_code == 0, summary.lines()
        assert summary.done == [t.key for t in trials]  # read back in the grid's order, whatever ran first
        return json.loads(table.read_text())

    first = Trial(arch="alexnet", image_size=64, epochs=2, batch_size=8, lr=1e-3)
    shape = packing.shape_key(first)
    saved = run("first", first)
    assert shares[first.label]["gpu"] == placement.GPU_SHARE["alexnet"]  # nothing remembered: the fixed guess
    ((gpu_key, entries),) = saved.items()
    assert "logical GPU" in gpu_key
    (alone,) = entries[shape]["probes"]  # both epochs ran with no other trial on the GPU
    assert alone["copies"] == 1 and alone["epochs"] == 2 and alone["images_per_s"] > 0
    assert entries[shape]["copies"] == 2 and not entries[shape]["settled"]  # the next run tries two

    again = first.replace(seed=1)
    other = first.replace(batch_size=4, epochs=3)  # another shape, remembered by hand; and the costlier trial
    gpu = {"name": gpu_key.split(" | torch ")[0], "torch": gpu_key.split(" | torch ")[1], "memory_mb": 1e6}
    packing.Packing(table).record(gpu, other, [probe(1, 1000), probe(2, 1050)])  # sharing did not pay
    shares.clear()
    run("second", again, other)
    assert shares[again.label]["gpu"] == 0.5  # what the first run learned
    assert shares[other.label]["gpu"] == 1.0  # remembered
    assert [v["batch_size"] for v in handed[-1]] == [4, 8]  # the costlier trial was handed to Tune first
    assert measured == []


@pytest.mark.slow  # two grids under a logical GPU
def test_on_the_cpu_the_costliest_first_order_changes_no_result(logical_gpu, nih_tree, tmp_path, monkeypatch):
    """A CPU run hands Tune the costliest trial first; each trial's predictions are those of the grid's own order."""
    import numpy as np
    from ray import tune

    from harness import prepare, store
    from harness.runner import driver as runner

    placement = pytest.importorskip("harness.runner.placement")
    handed = []
    grid_search = tune.grid_search
    monkeypatch.setattr(tune, "grid_search", lambda values: handed.append(values) or grid_search(values))
    short = Trial(arch="alexnet", image_size=64, epochs=1, batch_size=8, lr=1e-3)
    trials = [short, short.replace(epochs=2, seed=1)]

    def run(name):
        runtime = Runtime(
            data_root=str(nih_tree), cache_dir=str(tmp_path / "cache"), results_dir=str(tmp_path / name), device="cpu"
        )
        ts, rt = prepare.resolve_dataset(list(trials), replace(runtime, progress=False))
        prepare.prepare_all(ts, rt)
        assert runner.run_grid("g", ts, rt).exit_code == 0
        st = store.Store(tmp_path / name / "g")
        return [st.files(t).read_predictions()["probs"] for t in ts]

    sorted_run = run("longest_first")
    assert [v["epochs"] for v in handed[-1]] == [2, 1]
    monkeypatch.setattr(placement, "longest_first", list)  # the order the grid lists them in, as before
    as_listed = run("as_listed")
    assert [v["epochs"] for v in handed[-1]] == [1, 2]
    for a, b in zip(sorted_run, as_listed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # three rounds of probe processes
def test_copies_are_released_together_on_one_logical_gpu(logical_gpu, tmp_path, monkeypatch):
    """`harness bench pack`'s measurement, on the CPU: Ray's GPUs are logical, so its copies can run anywhere."""
    placement = pytest.importorskip("harness.runner.placement")
    monkeypatch.setattr(packing, "WINDOW_S", 1.5)
    trial = Trial(arch="efficientnet_b0", image_size=64, batch_size=4)
    per_gpu = placement.measured_per_gpu(
        [trial, trial.replace(seed=1)], Runtime(cache_dir=str(tmp_path)), cpus=2, device="cpu"
    )
    assert list(per_gpu) == [packing.shape_key(trial)] and per_gpu[packing.shape_key(trial)] in (1, 2)
    (entry,) = json.loads((tmp_path / packing.PACKING_FILE).read_text()).values()
    probes = entry[packing.shape_key(trial)]["probes"]
    assert [p["copies"] for p in probes] == [1, 2]  # four copies would need four CPUs: not tried
    assert all(p["images_per_s"] > 0 for p in probes)
    assert probes[1]["overlap"] > 0.8  # the two copies were released together


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measured_packing_on_a_real_gpu(tmp_path):
    placement = pytest.importorskip("harness.runner.placement")
    from harness.runner.cluster import start_ray

    runtime = Runtime(cache_dir=str(tmp_path), progress=False)
    start_ray(runtime)
    trial = Trial(arch="alexnet", batch_size=64, image_size=128)
    per_gpu = placement.measured_per_gpu([trial], runtime, cpus=4)
    assert per_gpu[packing.shape_key(trial)] in packing.COPIES
    saved = json.loads((tmp_path / packing.PACKING_FILE).read_text())
    (entry,) = [v[packing.shape_key(trial)] for v in saved.values()]
    assert entry["probes"][0]["copies"] == 1 and entry["probes"][0]["images_per_s"] > 0
