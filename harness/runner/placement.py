"""Where trials run: each trial's CPUs and GPU share, and the Ray side of measuring how many share a GPU.

harness.packing decides from measurements; this module runs them: copies of a trial's model step side by
side on one GPU, released together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from harness import packing
from harness.config import Runtime, Trial
from harness.runner.cluster import use_reserved_cpus

log = logging.getLogger(__name__)

# Share of one GPU a trial of each arch asks for with --gpus-per-trial auto when the measurement (below,
# and harness.packing) could not be made: a guess from single-trial step throughput on an H200.
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
    """A trial's CPUs and GPU share: measured trials per GPU for its shape (per_gpu), else GPU_SHARE.

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
    from harness import bench

    def ready() -> None:
        ray.get(release.arrive.remote())
        while not ray.get(release.all_here.remote()):
            time.sleep(0.02)

    use_reserved_cpus()
    return bench.step_window(Trial(**trial), device=device, seconds=seconds, ready=ready)


def _gpu_info(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda":  # Ray's GPUs are logical: the copies can run on the CPU (the plumbing's own test)
        return {"name": f"{device} (logical GPU)", "memory_mb": 1e6, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_mb": props.total_memory / 2**20, "torch": torch.__version__}


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


def measured_per_gpu(trials: Sequence[Trial], runtime: Runtime, cpus: float, device: str = "cuda") -> dict[str, int]:
    """Trials per GPU for each trial shape: remembered from an earlier run on this GPU model, else measured now."""
    table = packing.Packing(Path(runtime.cache_dir) / packing.PACKING_FILE)
    gpu = ray.get(ray.remote(num_gpus=1, num_cpus=0, max_calls=1)(_gpu_info).remote(device), timeout=300)
    out: dict[str, int] = {}
    for trial in {packing.shape_key(t): t for t in trials}.values():
        copies = table.copies(gpu, trial)
        if copies is None:
            log.warning(
                "measuring how many %s trials share one %s (once per GPU model)...",
                packing.shape_key(trial),
                gpu["name"],
            )
            probes = packing.measure(lambda n, trial=trial: _side_by_side(trial, n, cpus, device), gpu["memory_mb"])
            if not probes:
                continue  # not even one copy fit: the trial itself will say so
            copies = table.record(gpu, trial, probes)
        out[packing.shape_key(trial)] = copies
    return out


def per_gpu(trials: Sequence[Trial], runtime: Runtime, node: dict[str, float]) -> dict[str, int]:
    """Measured packing when it applies; a failed measurement falls back to GPU_SHARE, loudly, never stops a run."""
    if runtime.gpus_per_trial != "auto" or not uses_gpus(runtime, node):
        return {}
    try:
        return measured_per_gpu(trials, runtime, node.get("CPU", 1.0))
    except Exception as exc:  # any failure here only costs packing quality
        log.warning("could not measure GPU packing (%s: %s); using the fixed per-arch shares", type(exc).__name__, exc)
        return {}
