"""hardware: per-trial peak memory in a reused worker, reuse of freed host memory; a reused worker gives fresh numbers."""

import mmap
import sys

import numpy as np
import pytest
import torch

from harness import hardware


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-trial host peaks need Linux's clear_refs")
def test_peak_host_memory_counts_from_the_reset_not_from_earlier_trials():
    cpu = torch.device("cpu")

    def touch(mb: int) -> None:
        """Make mb of resident memory and give it back to the system (mapped directly: whatever the allocator keeps)."""
        with mmap.mmap(-1, mb << 20) as region:
            pages = np.frombuffer(region, dtype=np.uint8)
            pages[:] = 1
            del pages

    touch(400)  # an earlier trial in this process
    before = hardware.peak_memory(cpu)["peak_host_mb"]
    hardware.reset_peak_memory(cpu)
    after = hardware.peak_memory(cpu)["peak_host_mb"]
    assert before - after > 300, (before, after)
    touch(200)  # this trial
    assert hardware.peak_memory(cpu)["peak_host_mb"] - after > 150
