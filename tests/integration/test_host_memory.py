"""Host memory as trials use it: a freed batch is reused instead of faulting its pages in again (in a fresh
process), and a worker that ran other trials gives a fresh one's numbers."""

import subprocess
import sys

import numpy as np
import pytest

from harness import train

_FAULTS = """
import ctypes, resource, sys
from harness import hardware
if sys.argv[1] == "keep":
    hardware.keep_freed_memory()  # before the first large block: glibc's choice for a size sticks once made
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
size = 48 << 20  # a float batch of 64 x 3 x 224 x 224 is 37 MB

def faults_of_a_fresh_batch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = libc.malloc(size)
    ctypes.memset(batch, 1, size)
    libc.free(batch)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_fresh_batch()  # the first one maps its pages
print(sorted(faults_of_a_fresh_batch() for _ in range(5))[2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_batches_are_reused_without_faulting_their_pages_in_again():
    """In a fresh process (a long test session's heap says nothing about a worker's): with the setting, glibc
    reuses a freed 48 MB block; without it, each new one faults in its 12,288 pages again. The blocks come from
    malloc itself: what else allocates between two of torch's 64-byte-aligned blocks decides whether the freed
    one fits the next, which makes a count of torch's own faults depend on the process's history."""

    def median_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    pages = (48 << 20) >> 12
    assert median_faults("keep") < pages // 10
    assert median_faults("default") > pages // 2  # the control: glibc unmaps and refaults without it


def test_a_worker_that_ran_other_trials_gives_the_same_numbers_as_a_fresh_one(small_synthetic_tree, tmp_path):
    """Worker processes run trial after trial: nothing a trial leaves behind may change the next one's result."""
    from harness.config import Runtime, Trial

    runtime = Runtime(
        data_root=str(small_synthetic_tree), cache_dir=str(tmp_path / "cache"), device="cpu", progress=False
    )
    base = Trial(dataset="synthetic", arch="efficientnet_b0", image_size=64, epochs=1, batch_size=16, lr=1e-3)
    other, probe = base.replace(loss="focal", seed=3), base.replace(seed=1)

    def run(trial, name):
        return train.run_trial(trial, runtime, out_dir=tmp_path / name)

    fresh = run(probe, "fresh")
    run(other, "other")
    again = run(probe, "again")
    assert again["auc_macro"] == fresh["auc_macro"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "again" / "predictions.npz")["probs"],
        np.load(tmp_path / "fresh" / "predictions.npz")["probs"],
    )
