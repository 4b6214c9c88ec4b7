"""Trials per GPU from measurement: combining copies' windows, the decision, remembering it, its use by the runner,
and the retry alone of a trial that ran out of GPU memory beside others."""

import json

import pytest
import torch

from harness import packing
from harness.config import Runtime, Trial
from harness.packing import Probe

H200 = {"name": "NVIDIA H200", "memory_mb": 140_000.0, "torch": "2.11.0"}


def probe(copies, rate, mb=10_000.0, overlap=1.0):
    return Probe(copies=copies, images_per_s=rate, peak_gpu_mb=mb, overlap=overlap)


def test_windows_of_copies_add_up_and_say_how_much_they_overlapped():
    together = Probe.from_windows(
        [
            {"start": 0.0, "end": 5.0, "images_per_s": 900.0, "peak_gpu_mb": 8000.0},
            {"start": 1.0, "end": 5.5, "images_per_s": 700.0, "peak_gpu_mb": 9000.0},
        ]
    )
    assert together.copies == 2 and together.images_per_s == 1600.0 and together.peak_gpu_mb == 9000.0
    assert together.overlap == pytest.approx(4.0 / 5.5)


@pytest.mark.parametrize(
    "probes, copies",
    [
        ([probe(1, 1000)], 1),
        ([probe(1, 1000), probe(2, 1800), probe(4, 2600)], 4),  # each doubling paid off
        ([probe(1, 1000), probe(2, 1100)], 1),  # time-slicing gave nothing: one trial per GPU
        ([probe(1, 1000), probe(2, 1800), probe(4, 1900)], 2),  # four no better than two
        ([probe(1, 1000), probe(2, 1100), probe(4, 3000)], 1),  # no skipping past a step that did not pay
        ([probe(1, 1000, mb=60_000), probe(2, 1900, mb=60_000)], 1),  # two would not fit in 85% of 140 GB
        ([probe(1, 1000), probe(2, 1900, overlap=0.5)], 1),  # the copies barely ran together: no evidence
    ],
)
def test_choose_copies(probes, copies):
    assert packing.choose_copies(probes, H200["memory_mb"]) == copies


def test_measure_stops_at_the_first_step_that_does_not_pay_or_does_not_fit():
    asked = []

    def run(rates):
        asked.clear()

        def side_by_side(n):
            asked.append(n)
            return None if rates[n] is None else probe(n, rates[n])

        return [p.copies for p in packing.measure(side_by_side, H200["memory_mb"])]

    assert run({1: 1000, 2: 1800, 4: 2600}) == [1, 2, 4] and asked == [1, 2, 4]
    assert run({1: 1000, 2: 1050, 4: 9999}) == [1, 2] and asked == [1, 2]  # 4 never started
    assert run({1: 1000, 2: None, 4: 9999}) == [1] and asked == [1, 2]  # 2 ran out of memory
    assert run({1: None, 2: 1, 4: 1}) == []


def test_decisions_are_remembered_per_gpu_model_and_torch_version(tmp_path):
    path = tmp_path / "cache" / packing.PACKING_FILE
    small = Trial(arch="alexnet", batch_size=64)
    assert packing.Packing(path).copies(H200, small) is None
    assert packing.Packing(path).record(H200, small, [probe(1, 1000), probe(2, 1800), probe(4, 2000)]) == 2
    again = packing.Packing(path)
    assert again.copies(H200, small) == 2
    assert again.copies(H200, small.replace(loss="focal", seed=3)) == 2  # same shape: same footprint
    assert again.copies(H200, small.replace(batch_size=256)) is None  # another shape is measured anew
    assert again.copies({**H200, "torch": "2.14.1"}, small) is None
    assert again.copies({**H200, "name": "NVIDIA H100"}, small) is None
    saved = json.loads(path.read_text())
    entry = saved["NVIDIA H200 | torch 2.11.0"][packing.shape_key(small)]
    assert entry["copies"] == 2 and [p["copies"] for p in entry["probes"]] == [1, 2, 4]


def test_runner_gives_a_trial_its_measured_share_else_the_fixed_one():
    placement = pytest.importorskip("harness.runner.placement")
    node = {"CPU": 16.0, "GPU": 1.0}
    auto = Runtime(gpus_per_trial="auto", cpus_per_trial=4)
    resnet, alexnet = Trial(arch="resnet152"), Trial(arch="alexnet")
    measured = {packing.shape_key(resnet): 2}
    assert placement.resources(resnet, auto, node, measured)["gpu"] == 0.5
    assert placement.resources(alexnet, auto, node, measured)["gpu"] == placement.GPU_SHARE["alexnet"]  # not measured
    assert placement.resources(alexnet, auto, node, measured, alone=True)["gpu"] == 1.0  # ran out beside others
    assert placement.resources(resnet, Runtime(gpus_per_trial=1.0), node, measured)["gpu"] == 1.0  # asked for
    assert placement.resources(resnet, auto, {"CPU": 2.0, "GPU": 0.0}, measured)["gpu"] == 0.0
    assert placement.per_gpu([resnet], Runtime(device="cpu"), node) == {}  # nothing to measure: no Ray call


def test_step_window_warms_up_then_measures_from_the_release():
    from harness import bench

    events = []
    trial = Trial(arch="efficientnet_b0", image_size=64, batch_size=4)
    result = bench.step_window(trial, device="cpu", seconds=0.5, ready=lambda: events.append("released"))
    assert events == ["released"]
    assert result["images"] % (4 * trial.batch_size) == 0 and result["images"] > 0
    assert result["end"] - result["start"] >= 0.5
    assert result["images_per_s"] == pytest.approx(result["images"] / (result["end"] - result["start"]))
    alone = Probe.from_windows([result])
    assert result["peak_host_mb"] > 0 and alone.copies == 1 and alone.overlap == 1.0


def test_copies_are_released_together_on_one_logical_gpu(tmp_path, monkeypatch):
    """The Ray side of measuring, on the CPU: Ray's GPUs are logical, so its copies can run anywhere."""
    import ray

    placement = pytest.importorskip("harness.runner.placement")
    monkeypatch.setattr(packing, "WINDOW_S", 1.5)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        trial = Trial(arch="efficientnet_b0", image_size=64, batch_size=4)
        per_gpu = placement.measured_per_gpu(
            [trial, trial.replace(seed=1)], Runtime(cache_dir=str(tmp_path)), cpus=2, device="cpu"
        )
    finally:
        ray.shutdown()
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


# --- out of GPU memory beside other trials: one more attempt with the GPU to itself ------------------------------

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 139.8 GiB total capacity)"


def test_out_of_gpu_memory_while_sharing_is_retried_alone():
    oom = torch.cuda.OutOfMemoryError(OOM)
    assert packing.retry_alone(oom, gpu_share=0.25)
    assert not packing.retry_alone(oom, gpu_share=1.0)  # it had the GPU to itself: a real failure
    assert not packing.retry_alone(oom, gpu_share=0.0)  # not on a GPU at all
    assert not packing.retry_alone(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), gpu_share=0.25)
    assert not packing.retry_alone(MemoryError(), gpu_share=0.25)  # the host's memory, not the GPU's
    relayed = RuntimeError("the trial's worker failed")
    relayed.__cause__ = oom  # as Ray relays a worker's exception
    assert packing.retry_alone(relayed, gpu_share=0.5)


def test_attempt_records_the_retry_alone_and_only_when_sharing(tmp_path, monkeypatch):
    attempt = pytest.importorskip("harness.runner.attempt")
    from harness import store

    st = store.Store(tmp_path)
    trial = Trial(arch="alexnet")
    st.begin(trial, "g")
    told = []

    def runs_out():
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(attempt, "assigned", lambda: {"CPU": 1.0, "GPU": 0.25})
    assert attempt.attempt(st, trial, runs_out, tell_failed=lambda: told.append(1)) is False  # Ray does not retry
    assert told == [1] and attempt.needs_a_whole_gpu(st, trial)
    assert "on a 0.25 share of a GPU, beside other trials" in st.failure(trial)["reason"]

    monkeypatch.setattr(attempt, "assigned", lambda: {"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(torch.cuda.OutOfMemoryError):  # alone on its GPU: recorded, and Ray's retries decide
        attempt.attempt(st, trial, runs_out, tell_failed=lambda: told.append(1))
    assert told == [1] and not attempt.needs_a_whole_gpu(st, trial)
    assert st.failure(trial)["reason"].startswith("OutOfMemoryError: CUDA out of memory")
