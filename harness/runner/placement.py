"""Where trials run: each trial's CPUs and GPU share, the order they start in, and the Ray side of learning how
many trials share a GPU.

Nothing is measured before a grid: per_gpu looks up the remembered decision for each trial shape on this GPU
model (one tiny task asks which model it is), trials start at once, every epoch reports which GPU it ran on
(epoch_report), Observer collects those epochs in the driver, and Decisions.learn hands them to
harness.packing after the run. measured_per_gpu, behind `harness bench pack`, still measures copies of a
trial's model step side by side on one GPU, released together, when a user asks for it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from harness import models, packing
from harness.config import ConfigError, Runtime, Trial
from harness.runner.cluster import use_reserved_cpus

log = logging.getLogger(__name__)

# Share of one GPU a trial of each arch asks for with --gpus-per-trial auto until a decision for its shape is
# remembered (harness.packing): a guess from single-trial step throughput on an H200.
GPU_SHARE = {
    "alexnet": 0.25,
    "efficientnet_b0": 0.5,
    "resnet50": 0.5,
    "densenet121": 0.5,
    "inception_v3": 0.5,
    "resnet152": 1.0,
}


def uses_gpus(runtime: Runtime, node: dict[str, float]) -> bool:
    return runtime.device != "cpu" and node.get("GPU", 0.0) > 0


def resources(
    trial: Trial,
    runtime: Runtime,
    node: dict[str, float],
    per_gpu: dict[str, int] | None = None,
    *,
    alone: bool = False,
) -> dict[str, float]:
    """A trial's CPUs and GPU share: remembered trials per GPU for its shape (per_gpu), else GPU_SHARE.

    alone: the trial ran out of GPU memory beside others; it gets a whole GPU (packing.retry_alone).
    """
    gpus = node.get("GPU", 0.0)
    cpus = node.get("CPU", 1.0) or 1.0
    if not uses_gpus(runtime, node):
        # CPU only: one trial at a time using every core is faster than several sharing them.
        want_cpu = runtime.cpus_per_trial if runtime.cpus_per_trial > 1 else cpus
        return {"cpu": max(1.0, min(want_cpu, cpus)), "gpu": 0.0}
    if runtime.gpus_per_trial != "auto":
        share = float(runtime.gpus_per_trial)
    elif per_gpu and packing.shape_key(trial) in per_gpu:
        share = 1.0 / per_gpu[packing.shape_key(trial)]
    else:
        share = GPU_SHARE.get(trial.arch, 1.0)
    if alone:
        share = max(share, 1.0)
    sharing = max(1, round(1 / share)) if share > 0 else 1
    return {"cpu": max(1.0, min(runtime.cpus_per_trial, cpus / max(gpus * sharing, 1))), "gpu": share}


def longest_first(trials: Sequence[Trial]) -> list[Trial]:
    """The trials, costliest first (models.train_cost; ties keep their order), so that a grid does not end
    with one long trial alone on a GPU while the others idle. Tune starts a grid_search list in its order."""
    return sorted(trials, key=models.train_cost, reverse=True)


# --- learning trials per GPU from the trials' own epochs ----------------------------------------------------


def worker_gpu() -> str | None:
    """In a trial's worker: the physical GPU it was given (node and device ids), None without one."""
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return f"{ray.get_runtime_context().get_node_id()}/{','.join(ids)}" if ids else None


def epoch_report(row: dict[str, Any], gpu: str | None) -> dict[str, Any]:
    """An epoch's row as reported to Tune: with the GPU it ran on, when it ended and the trial's peak GPU memory,
    for Observer. A trial without a GPU reports its row as it is."""
    if gpu is None:
        return row
    import torch

    from harness import hardware

    peak = hardware.peak_memory(torch.device("cuda")).get("peak_gpu_mb", 0.0) if torch.cuda.is_available() else 0.0
    return {**row, "gpu_device": gpu, "epoch_end": time.time(), "peak_gpu_mb": peak}


def _gpu_model() -> dict[str, Any]:
    """The model of the GPU this task was given, from nvidia-smi (seconds: no torch import, no CUDA context);
    from torch where nvidia-smi is missing; Ray's GPUs are logical on a machine without CUDA (the tests)."""
    version = importlib.metadata.version("torch")
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits", "-i", ",".join(ids)]
    try:
        name, mb = (
            subprocess.run(query, capture_output=True, text=True, timeout=60, check=True)
            .stdout.splitlines()[0]
            .rsplit(",", 1)
        )
        return {"name": name.strip(), "memory_mb": float(mb), "torch": version}
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        import torch

        if not torch.cuda.is_available():
            return {"name": "logical GPU (no CUDA)", "memory_mb": 1e6, "torch": version}
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "memory_mb": props.total_memory / 2**20, "torch": version}


def gpu_model() -> dict[str, Any]:
    """The GPU model trials run on (one on a cluster of several: the first GPU Ray hands out)."""
    task = ray.remote(num_gpus=0.01, num_cpus=0, max_calls=1)(_gpu_model)
    return ray.get(task.remote(), timeout=120)


@dataclass
class Decisions:
    """This run's trials per GPU by shape (remembered; GPU_SHARE for the others) and what its epochs showed."""

    gpu: dict[str, Any] | None = None  # the GPU model; None: the trials use no GPU, or it is unknown
    per_gpu: dict[str, int] = field(default_factory=dict)
    path: Path | None = None  # the cache's packing.json
    epochs: list[packing.Epoch] = field(default_factory=list)
    out_of_memory: dict[str, int] = field(default_factory=dict)  # shape -> trials per GPU at which one ran out

    def sharing(self, trial: Trial) -> int:
        """Trials of this shape per GPU in this run."""
        return self.per_gpu.get(packing.shape_key(trial)) or max(1, round(1 / GPU_SHARE.get(trial.arch, 1.0)))

    def ran_out(self, trial: Trial) -> None:
        """The trial ran out of GPU memory beside others: its level is not worth trying again."""
        self.out_of_memory[packing.shape_key(trial)] = self.sharing(trial)

    def learn(self) -> dict[str, int]:
        """Hand what the run observed to packing.json; the next run's trials per GPU by shape."""
        if self.gpu is None or self.path is None:
            return {}
        seen = packing.side_by_side(self.epochs)
        for shape, copies in self.out_of_memory.items():
            seen[shape] = [p for p in seen.get(shape, []) if p.copies != copies] + [packing.ran_out(copies)]
        table = packing.Packing(self.path)
        learned = {shape: table.learn(self.gpu, shape, probes) for shape, probes in seen.items()}
        return {shape: copies for shape, copies in learned.items() if copies is not None}


class Observer(tune.Callback):
    """In the driver: every epoch a trial reports from a GPU (epoch_report), as packing.Epoch, into decisions."""

    def __init__(self, name: str, decisions: Decisions) -> None:
        self.name, self.decisions = name, decisions

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "gpu_device" not in result or not result.get("train_images_per_s"):
            return
        self.decisions.epochs.append(
            packing.Epoch(
                run=f"{self.name}/{trial.trial_id}",
                shape=packing.shape_key(Trial(**trial.config["trial"])),
                gpu=result["gpu_device"],
                start=result["epoch_end"] - result["seconds"],
                end=result["epoch_end"],
                images_per_s=result["train_images_per_s"],
                peak_gpu_mb=result.get("peak_gpu_mb", 0.0),
            )
        )


def per_gpu(trials: Sequence[Trial], runtime: Runtime, node: dict[str, float]) -> Decisions:
    """The remembered trials per GPU for each shape on this GPU model, in seconds: nothing is measured. A failed
    look-up falls back to GPU_SHARE, loudly, and never stops a run."""
    if runtime.gpus_per_trial != "auto" or not uses_gpus(runtime, node):
        return Decisions()
    path = Path(runtime.cache_dir) / packing.PACKING_FILE
    try:
        gpu = gpu_model()
    except Exception as exc:  # any failure here only costs packing quality
        log.warning("could not tell the GPU model (%s: %s); using the fixed per-arch shares", type(exc).__name__, exc)
        return Decisions()
    table = packing.Packing(path)
    shapes = {packing.shape_key(t) for t in trials}
    remembered = {shape: c for shape in sorted(shapes) if (c := table.copies(gpu, shape)) is not None}
    if remembered:
        log.info("trials per %s, remembered: %s", gpu["name"], ", ".join(f"{s} {c}" for s, c in remembered.items()))
    return Decisions(gpu=gpu, per_gpu=remembered, path=path)


@ray.remote(num_cpus=0)
class _Release:
    """Holds the copies of a measurement until all have warmed up, then lets them go together."""

    def __init__(self, copies: int) -> None:
        self.copies, self.arrived = copies, 0

    def arrive(self) -> None:
        self.arrived += 1

    def all_here(self) -> bool:
        return self.arrived >= self.copies


def _measure_copy(trial: dict[str, Any], seconds: float, release: Any, device: str) -> dict[str, float]:
    """One copy of a trial's model step on its share of a GPU (a Ray task)."""
    from harness import throughput

    def ready() -> None:
        ray.get(release.arrive.remote())
        while not ray.get(release.all_here.remote()):
            time.sleep(0.02)

    use_reserved_cpus()
    return throughput.step_window(Trial(**trial), device=device, seconds=seconds, ready=ready)


def _side_by_side(trial: Trial, copies: int, cpus: float, device: str) -> packing.Probe | None:
    """copies of the trial's model step together on one GPU; None when they do not fit in its memory."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if copies > cpus:
        return None  # a trial needs a CPU of its own to feed its share of the GPU
    group = placement_group([{"GPU": 1, "CPU": copies}], strategy="STRICT_PACK")  # one GPU, one node
    release = _Release.remote(copies)
    # max_calls=1: each copy's process exits when done, so no idle worker keeps GPU memory during the grid.
    task = ray.remote(max_calls=1)(_measure_copy).options(
        num_gpus=1 / copies,
        num_cpus=1,
        max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
    )
    try:
        ray.get(group.ready(), timeout=300)  # a GPU held by another job: give up, use the fixed shares
        windows = ray.get(
            [task.remote(trial.to_dict(), packing.WINDOW_S, release, device) for _ in range(copies)], timeout=600
        )  # a copy that never arrives: the others would wait for it forever
    except ray.exceptions.RayTaskError as exc:
        if packing.out_of_gpu_memory(exc):
            return None
        raise
    finally:
        ray.kill(release)
        remove_placement_group(group)
    return packing.Probe.from_windows(windows)


def measured_per_gpu(
    trials: Sequence[Trial], runtime: Runtime, cpus: float, device: str = "cuda", *, again: bool = False
) -> dict[str, int]:
    """Trials per GPU for each trial shape, measured now with copies released together (`harness bench pack`);
    a shape remembered from an earlier run or measurement on this GPU model is measured only when again."""
    table = packing.Packing(Path(runtime.cache_dir) / packing.PACKING_FILE)
    gpu = gpu_model()
    out: dict[str, int] = {}
    for trial in {packing.shape_key(t): t for t in trials}.values():
        copies = table.copies(gpu, trial)
        if copies is None or again:
            log.warning("measuring how many %s trials share one %s...", packing.shape_key(trial), gpu["name"])
            probes = packing.measure(lambda n, trial=trial: _side_by_side(trial, n, cpus, device), gpu["memory_mb"])
            if not probes:
                continue  # not even one copy fit: the trial itself will say so
            copies = table.record(gpu, trial, probes)
        out[packing.shape_key(trial)] = copies
    return out


def measure_packing(trial: Trial, runtime: Runtime) -> dict[str, Any]:
    """`harness bench pack`: the trial's shape measured anew on a GPU of the cluster (started or joined here),
    the decision remembered for later runs as theirs are."""
    from harness.runner.cluster import largest_node, start_ray

    if runtime.device != "cpu":
        start_ray(runtime)
    node = largest_node() if runtime.device != "cpu" else {}
    if not uses_gpus(runtime, node):
        raise ConfigError(
            f"bench pack measures trials side by side on a GPU; this Ray cluster has {node.get('GPU', 0):g} GPUs "
            f"(device {runtime.device}): run it where CUDA is, or join a cluster with GPUs (--address)"
        )
    measured_per_gpu([trial], runtime, node.get("CPU", 1.0), again=True)
    table = packing.Packing(Path(runtime.cache_dir) / packing.PACKING_FILE)
    gpu, shape = gpu_model(), packing.shape_key(trial)
    return {
        "bench": "pack",
        "shape": shape,
        "gpu": gpu["name"],
        "copies": table.copies(gpu, shape),
        "probes": [asdict(p) for p in table.probes(gpu, shape)],
        "file": str(table.path),
    }
