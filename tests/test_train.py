"""train.py's own bookkeeping: per-trial peak memory in a worker process that ran trials before."""
import sys

import numpy as np
import pytest
import torch

from harness import train


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-trial host peaks need Linux's clear_refs")
def test_peak_host_memory_counts_from_the_reset_not_from_earlier_trials():
    cpu = torch.device("cpu")
    earlier = np.ones(400 << 20, dtype=np.uint8)  # an earlier trial in this process touched 400 MB
    del earlier
    before = train.peak_memory(cpu)["peak_host_mb"]
    train.reset_peak_memory(cpu)
    after = train.peak_memory(cpu)["peak_host_mb"]
    assert before - after > 300, (before, after)
    this_trial = np.ones(200 << 20, dtype=np.uint8)
    assert train.peak_memory(cpu)["peak_host_mb"] - after > 150
    del this_trial
