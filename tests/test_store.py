"""The results store: atomic writes, DONE as the commit point, failures, locking."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness import store
from harness.config import Trial


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "m.json"
    store.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), store.atomic_path(target) as tmp:
        tmp.write_text('{"a": 2, "partial')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


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


def test_done_marker_is_the_commit_point(tmp_path):
    st = store.Store(tmp_path / "grid")
    t = Trial(arch="alexnet")
    d = st.begin(t, "grid")
    store.write_json(d / store.METRICS_FILE, {"auc_macro": 0.7})
    assert not st.is_done(t) and st.results() == []  # metrics without DONE: an unfinished trial
    st.mark_done(t)
    assert st.is_done(t)
    (r,) = st.results()
    assert r.metrics["auc_macro"] == 0.7 and r.trial["key"] == t.key and r.trial["arch"] == "alexnet"


def test_failure_recorded_then_cleared_on_retry(tmp_path):
    st = store.Store(tmp_path / "grid")
    t = Trial(arch="alexnet")
    st.begin(t, "grid")
    st.mark_failed(t, "loss is nan at epoch 1")
    assert st.failure(t)["reason"] == "loss is nan at epoch 1"
    assert store.load_failures(st.root)[0]["label"] == t.label
    st.begin(t, "grid")  # a rerun starts clean
    assert st.failure(t) is None


def test_provenance_names_version_and_commit():
    p = store.provenance()
    assert p["harness_version"] and p["git_commit"] and "written" in p


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


def test_unwritable_results_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        st = store.Store(blocker / "grid")  # a path under a regular file can never be created
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        st = store.Store(ro / "grid")
    with pytest.raises(store.StoreError, match="not writable"):
        st.check_writable()


def test_npz_round_trip(tmp_path):
    store.write_npz(tmp_path / "p.npz", probs=np.eye(3, dtype=np.float32))
    with np.load(tmp_path / "p.npz") as z:
        assert z["probs"].shape == (3, 3)
