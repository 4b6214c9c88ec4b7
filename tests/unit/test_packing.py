"""Trials per GPU: the decision from throughput side by side, learned from the trials' own epochs over runs (no
measurement before a grid), remembering it, its use by the runner, the costliest trials first, the measurement on
demand, and the retry alone of a trial that ran out of GPU memory beside others."""

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


@pytest.mark.parametrize(
    "probes, plan",
    [
        ([probe(1, 1000)], (2, False)),  # one level seen: try the next
        ([probe(1, 1000), probe(2, 1800)], (4, False)),  # two paid: try four
        ([probe(1, 1000), probe(2, 1100)], (1, True)),  # two did not pay: settled at one
        ([probe(1, 1000), probe(2, 1800), probe(4, 2600)], (4, True)),
        ([probe(2, 1800), probe(4, 2600)], (4, True)),  # the best's step down was seen
        ([probe(2, 1800), probe(4, 1900)], (1, False)),  # the guess of two was never compared with one
        ([probe(4, 2600)], (2, False)),  # a first run at four: try two
        ([probe(2, 1800, mb=60_000)], (1, False)),  # four would not fit: down instead
        ([probe(1, 1000), packing.ran_out(2)], (1, True)),  # two ran out of memory: not tried again
        ([packing.ran_out(2)], (1, False)),
        ([probe(3, 3000)], None),  # only a level outside COPIES: nothing to decide from
    ],
)
def test_next_run_explores_the_level_next_to_the_best_until_settled(probes, plan):
    if plan is None:
        with pytest.raises(ValueError):
            packing.next_copies(probes, H200["memory_mb"])
    else:
        assert packing.next_copies(probes, H200["memory_mb"]) == plan


def epoch(run, gpu, start, end, rate, shape="S"):
    return packing.Epoch(
        run=run, shape=shape, gpu=gpu, start=start, end=end, images_per_s=rate, peak_gpu_mb=int(run[-1])
    )


def test_epochs_count_at_the_level_of_same_shape_trials_that_shared_their_gpu_throughout():
    epochs = [
        # GPU a: two trials of S in step: four epochs at level 2
        epoch("a1", "a", 0, 10, 100),
        epoch("a1", "a", 10, 20, 110),
        epoch("a2", "a", 0.5, 10, 90),
        epoch("a2", "a", 10, 19.5, 100),
        # GPU b: one trial alone
        epoch("b3", "b", 0, 10, 300),
        # GPU c: beside a trial of another shape, then alone: only the second epoch counts (level 1)
        epoch("c4", "c", 0, 10, 150),
        epoch("c4", "c", 10, 20, 200),
        epoch("c5", "c", 0, 10, 500, shape="T"),
        # GPU d: a neighbour came mid-epoch: only that neighbour's epoch counts (level 2)
        epoch("d6", "d", 0, 10, 50),
        epoch("d6", "d", 10, 20, 50),
        epoch("d7", "d", 5, 15, 60),
    ]
    seen = packing.side_by_side(epochs)
    assert list(seen) == ["S"]  # T's only epoch had an S trial beside it
    one, two = seen["S"]
    assert (one.copies, one.epochs, one.images_per_s) == (1, 2, pytest.approx((300 + 200) / 2))
    assert (two.copies, two.epochs) == (2, 5)
    assert two.images_per_s == pytest.approx(2 * (100 + 110 + 90 + 100 + 60) / 5)  # both trials together
    assert two.overlap == 1.0 and two.peak_gpu_mb == 7


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
    assert entry["copies"] == 2 and entry["settled"] and [p["copies"] for p in entry["probes"]] == [1, 2, 4]


def test_what_runs_observe_is_merged_over_runs(tmp_path):
    table = packing.Packing(tmp_path / packing.PACKING_FILE)
    shape = packing.shape_key(Trial(arch="alexnet"))
    assert table.learn(H200, shape, []) is None and not (tmp_path / packing.PACKING_FILE).exists()
    assert table.learn(H200, shape, [probe(4, 2600)]) == 2  # a first run at the guess of four: try two
    assert table.learn(H200, shape, [probe(2, 1800)]) == 4  # four paid over two: settled
    again = packing.Packing(tmp_path / packing.PACKING_FILE)  # from the file
    assert again.copies(H200, shape) == 4
    assert again.learn(H200, shape, [probe(1, 1000)]) == 4  # a run alone adds the level below
    entry = json.loads((tmp_path / packing.PACKING_FILE).read_text())["NVIDIA H200 | torch 2.11.0"][shape]
    assert entry["settled"] and [p["copies"] for p in entry["probes"]] == [1, 2, 4]
    assert again.learn(H200, shape, [probe(1, 2500)]) == 1  # a level seen anew replaces what was remembered


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
    on_cpu = placement.per_gpu([resnet], Runtime(device="cpu"), node)  # nothing to look up: no Ray call
    assert on_cpu.per_gpu == {} and on_cpu.gpu is None and on_cpu.learn() == {}


def test_the_costliest_trials_start_first():
    placement = pytest.importorskip("harness.runner.placement")
    base = Trial(arch="alexnet", epochs=20)
    trials = [
        base,
        base.replace(arch="resnet50", subset_fraction=0.1),  # a tenth of the images
        base.replace(arch="resnet152"),
        base.replace(arch="inception_v3"),  # at its native 299 px
        base.replace(arch="resnet50"),
        base.replace(arch="densenet121"),
        base.replace(arch="efficientnet_b0"),
        base.replace(image_size=448),  # four times the pixels of its native size
        base.replace(seed=1),  # a tie keeps its place
    ]
    order = [(t.arch, t.image_size, t.subset_fraction, t.seed) for t in placement.longest_first(trials)]
    assert order == [
        ("resnet152", 0, 1.0, 0),
        ("inception_v3", 0, 1.0, 0),
        ("resnet50", 0, 1.0, 0),
        ("densenet121", 0, 1.0, 0),
        ("alexnet", 448, 1.0, 0),
        ("efficientnet_b0", 0, 1.0, 0),
        ("alexnet", 0, 1.0, 0),
        ("alexnet", 0, 1.0, 1),
        ("resnet50", 0, 0.1, 0),
    ]


def test_step_window_warms_up_then_measures_from_the_release():
    from harness import throughput

    events = []
    trial = Trial(arch="efficientnet_b0", image_size=64, batch_size=4)
    result = throughput.step_window(trial, device="cpu", seconds=0.5, ready=lambda: events.append("released"))
    assert events == ["released"]
    assert result["images"] % (4 * trial.batch_size) == 0 and result["images"] > 0
    assert result["end"] - result["start"] >= 0.5
    assert result["images_per_s"] == pytest.approx(result["images"] / (result["end"] - result["start"]))
    alone = Probe.from_windows([result])
    assert result["peak_host_mb"] > 0 and alone.copies == 1 and alone.overlap == 1.0


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
    assert attempt.attempt(st, trial, runs_out, tell_failed=told.append) is False  # Ray does not retry
    assert told == [st.failure(trial)["reason"]] and attempt.needs_a_whole_gpu(st, trial)
    assert "on a 0.25 share of a GPU, beside other trials" in st.failure(trial)["reason"]

    monkeypatch.setattr(attempt, "assigned", lambda: {"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(torch.cuda.OutOfMemoryError):  # alone on its GPU: recorded, and Ray's retries decide
        attempt.attempt(st, trial, runs_out, tell_failed=told.append)
    assert len(told) == 1 and not attempt.needs_a_whole_gpu(st, trial)
    assert st.failure(trial)["reason"].startswith("OutOfMemoryError: CUDA out of memory")
