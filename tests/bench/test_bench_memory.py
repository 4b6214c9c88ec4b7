"""Page faults per training step in a trial's thread: with glibc's defaults (the control) and in a real Ray worker
as the runner starts it. Counts, not times, kept in extra_info: a worker's count depends on what else the machine
and Ray's own threads do, so it is measured here rather than asserted in the default suite."""

from __future__ import annotations

import pytest
import support

pytestmark = pytest.mark.bench

PAGES = 37_000  # AlexNet's first classifier gradient (151 MB) mapped anew


def test_faults_per_step_with_glibc_defaults(benchmark):
    faults = benchmark.pedantic(support.fresh_thread_step_faults, args=(5,), rounds=1, iterations=1)
    benchmark.extra_info["faults_per_step"] = faults
    assert faults[0] > PAGES // 2  # the first step maps everything: the count is real


def test_faults_per_step_in_a_ray_worker(benchmark, tmp_path, monkeypatch):
    import ray

    from harness.config import Runtime
    from harness.runner.cluster import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = start_ray(Runtime(cache_dir=str(tmp_path), progress=False))
    try:
        ray.cloudpickle.register_pickle_by_value(support)  # a worker cannot import the tests' modules
        remote = ray.remote(num_cpus=1, max_calls=1)(support.thread_step_faults)
        faults = benchmark.pedantic(lambda: ray.get(remote.remote(5), timeout=300), rounds=1, iterations=1)
    finally:
        if started:
            ray.shutdown()
    benchmark.extra_info["faults_per_step"] = faults
    assert faults[0] > PAGES // 2
