"""Ray workers as the runner starts them: a trial's thread reuses its large blocks instead of paging them in
again at every step."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

from harness.config import Runtime


def _faults_per_step(steps: int) -> list[int]:
    """Minor page faults of each AlexNet training step in a fresh thread (as Tune runs a trial), with the
    allocator set up as run_trial sets it."""
    import torch
    import torchvision

    from harness import hardware

    hardware.keep_freed_memory()
    faults: list[int] = []

    def work() -> None:
        torch.manual_seed(0)
        model = torchvision.models.alexnet(num_classes=14)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x, y = torch.randn(4, 3, 64, 64), torch.rand(4, 14)
        for _ in range(steps):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            optimizer.zero_grad(set_to_none=True)  # as train_step: each step allocates its gradients anew
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            optimizer.step()
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return faults


# The first classifier layer's gradient alone is 151 MB: 37,000 pages when it is mapped anew.
FRESH = 20_000


def test_a_trial_thread_reuses_its_gradients_memory_in_a_ray_worker(tmp_path, monkeypatch):
    import ray

    from harness.runner.cluster import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start_ray(Runtime(cache_dir=str(tmp_path), progress=False))
    try:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # a worker cannot import a test module
        faults = ray.get(ray.remote(num_cpus=1, max_calls=1)(_faults_per_step).remote(5), timeout=120)
    finally:
        ray.shutdown()
    assert faults[0] > FRESH  # the first step maps everything: the count is real
    assert max(faults[3:]) < FRESH // 20, faults


def test_with_glibc_defaults_a_thread_pages_its_gradients_in_at_every_step():
    """The control, in a fresh process with glibc's defaults: every step faults its large blocks in again. Not in
    this process: after a long test session a new thread may share an older arena, whose history says nothing."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_workers as t; print(t._faults_per_step(4))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    faults = json.loads(proc.stdout.strip().splitlines()[-1])
    assert min(faults[1:]) > FRESH, faults
