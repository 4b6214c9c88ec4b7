"""Ray workers as the runner starts them: a trial's thread reuses its large blocks instead of paging them in again
at every step. The setting is tested here (it reaches the worker; in a fresh process it has its effect); the page
faults in a real worker, which depend on what else the machine does, are measured in tests/bench."""

from __future__ import annotations

import os

from support import fresh_thread_step_faults

from harness.runner.cluster import WORKER_ENV

# The first classifier layer's gradient alone is 151 MB: 37,000 pages when it is mapped anew.
FRESH = 20_000


def test_a_trial_worker_starts_with_one_malloc_arena(local_ray):
    """glibc reads MALLOC_ARENA_MAX when a process starts: it must be in the worker's environment, from Ray."""
    probe = local_ray.remote(num_cpus=1, max_calls=1)(lambda: os.environ.get("MALLOC_ARENA_MAX"))
    assert local_ray.get(probe.remote(), timeout=120) == WORKER_ENV["MALLOC_ARENA_MAX"] == "1"


def test_with_one_arena_a_trial_thread_reuses_its_gradients_memory():
    """In a fresh process with the worker's setting and nothing else running in it: after the first steps, a step
    reuses its gradients' blocks instead of faulting 37,000 pages in again (the control, glibc's defaults, and the
    count in a real Ray worker are measured in tests/bench/test_bench_memory.py)."""
    faults = fresh_thread_step_faults(7, **WORKER_ENV)
    assert faults[0] > FRESH  # the first step maps everything: the count is real
    # Most later steps fault almost nothing. Not every one: on a loaded machine the kernel can reclaim a block
    # between two steps (seen: 17,784 faults at one step of five, under a parallel test run), where without the
    # setting every step maps its 37,000 pages anew.
    later = sorted(faults[2:])
    assert later[len(later) // 2] < FRESH // 20, faults
