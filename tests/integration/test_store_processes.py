"""The store against other processes: a write killed mid-way never exposes a partial file; a second run is refused by the lock; a trial's key is the same in a fresh interpreter."""

import subprocess
import sys

import pytest

from harness import store
from harness.config import Trial


def test_kill_during_write_never_exposes_partial_file(tmp_path):
    target = tmp_path / "big.npz"
    code = (
        f"import numpy as np, os, signal\nfrom harness import store\n"
        f"a = np.random.rand(2_000_000)\n"
        f"with store.atomic_path({str(target)!r}) as tmp:\n"
        f"    np.save(open(tmp, 'wb'), a)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode != 0
    assert not target.exists()


def test_second_run_is_refused_by_the_lock(tmp_path):
    st = store.Store(tmp_path / "grid")
    code = (
        "import time\nfrom harness import store\n"
        f"with store.Store({str(st.root)!r}).lock():\n    print('locked', flush=True)\n    time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(store.StoreError, match="in use by another run"), st.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with st.lock():  # released when the holder died
        pass


def test_keys_are_stable_across_processes():
    t = Trial(arch="alexnet", lr=3e-4, seed=7)
    code = "from harness.config import Trial; print(Trial(arch='alexnet', lr=3e-4, seed=7).key)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == t.key
    assert Trial(arch="alexnet", lr=3e-4, seed=8).key != t.key
