"""Faults for real: a run killed with SIGKILL resumes without loss or double counting; Ctrl-C and SIGTERM stop it
cleanly; a successful run prints no traceback; damaged results are mended or redone; a two-node Ray cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import store
from harness.config import Trial

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from harness.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth") / "nih", n=200, size=64, seed=5, progress=False)


@pytest.fixture
def env(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_ROOT", "RAY_ADDRESS")}
    return {
        **base,
        "HARNESS_CACHE_DIR": str(tmp_path / "cache"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def grid_file(tmp_path, name, epochs, seeds):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: {name}
        base: {{arch: alexnet, image_size: 64, epochs: {epochs}, batch_size: 32, lr: 1e-3}}
        seeds: {seeds}
    """)
    )
    return path


def done_dirs(grid_dir):
    return sorted(d for d in grid_dir.iterdir() if (d / "DONE").is_file()) if grid_dir.is_dir() else []


def mid_trial(grid_dir):
    """Trial folders with a finished epoch's resume state and no DONE: a trial part-way through."""
    return [d for d in grid_dir.iterdir() if (d / "last.pt").is_file() and not (d / "DONE").exists()]


def finished_epochs(trial_dir):
    import torch

    return torch.load(trial_dir / "last.pt", weights_only=True)["epoch"] + 1


def test_kill_9_then_rerun_keeps_finished_trials_and_counts_each_once(tree, env, tmp_path):
    grid = grid_file(tmp_path, "killed", epochs=3, seeds=[0, 1, 2])
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "run", grid, "--data-root", tree, "--results", results]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    grid_dir = results / "killed"
    try:
        # On a CPU the trials run one after another: wait for one done and the next part-way through.
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not (done_dirs(grid_dir) and mid_trial(grid_dir)):
            time.sleep(0.2)
        assert done_dirs(grid_dir) and mid_trial(grid_dir), "no trial finished and none was part-way by the deadline"
        assert proc.poll() is None, "the run ended before it could be killed; make the grid longer"
    finally:
        # Pre-emption: the driver and every process it started (its local Ray) die at once.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done_dirs(grid_dir)}
    resumed = {d.name: finished_epochs(d) for d in mid_trial(grid_dir)}

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"3/3 trials done ({len(first)} already done before this run), 0 failed" in again.stdout
    for key, epochs in resumed.items():  # the resume path ran, from the last epoch the killed run finished
        label = json.loads((grid_dir / key / "trial.json").read_text())["label"]
        assert f"{label}: resuming after epoch {epochs}" in again.stderr, again.stderr[-3000:]
    finished = done_dirs(grid_dir)
    assert len(finished) == 3
    for d in finished:
        if d.name in first:  # kept as it was, not retrained
            assert (d / "metrics.json").stat().st_mtime_ns == first[d.name]
        history = pd.read_csv(d / "history.csv")
        assert history["epoch"].tolist() == [1, 2, 3]  # a resumed trial does not repeat or skip an epoch
        assert not (d / "last.pt").exists()
        json.loads((d / "metrics.json").read_text())
    # The rerun leaves no temporary file. One the kill cut off mid-write may remain beside the intact file: it is
    # older than the trial.json the rerun wrote when it began that trial again.
    leftovers = [
        p
        for p in grid_dir.rglob("*.tmp")
        if ".tune" not in p.parts and p.stat().st_mtime_ns >= (p.parent / "trial.json").stat().st_mtime_ns
    ]
    assert leftovers == []


def harness_run(grid, tree, results):
    return [sys.executable, "-m", "harness", "run", str(grid), "--data-root", str(tree), "--results", str(results)]


def start_then_signal(cmd, env, grid_dir, signals, *, gap=1.0):
    """Start a run; once a trial is done and the next is part-way, send the signals: SIGINT to its process group,
    as a terminal's Ctrl-C does, SIGTERM to the driver, as `kill PID`, `docker stop` or Kubernetes do.
    Returns the finished process, its output, how long it took to stop, and the epochs of the part-way trial."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not (done_dirs(grid_dir) and mid_trial(grid_dir)):
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be stopped; make the grid longer"
        assert done_dirs(grid_dir) and mid_trial(grid_dir), "no trial finished and none was part-way by the deadline"
        resumable = {d.name: finished_epochs(d) for d in mid_trial(grid_dir)}
        start = time.time()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        return proc, out, err, time.time() - start, resumable
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_successful_run_prints_no_traceback(tree, env, tmp_path):
    grid = grid_file(tmp_path, "quiet", epochs=1, seeds=[0, 1])
    proc = subprocess.run(harness_run(grid, tree, tmp_path / "r"), cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "SystemExit" not in proc.stderr, proc.stderr[-3000:]
    assert "Configuration for experiment" not in proc.stdout  # Ray's banner: the harness's summary says it all


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_the_run_in_seconds_and_a_rerun_resumes(tree, env, tmp_path, sig):
    grid = grid_file(tmp_path, "stopped", epochs=3, seeds=[0, 1, 2])
    cmd = harness_run(grid, tree, tmp_path / "results")
    grid_dir = tmp_path / "results" / "stopped"
    proc, out, err, took, resumable = start_then_signal(cmd, env, grid_dir, [sig])
    assert proc.returncode == 130, out + err[-3000:]
    assert took < 60, f"took {took:.0f} s to stop"
    name = signal.Signals(sig).name
    assert f"stopped by {name}; every finished epoch is kept. Resume with: python -m harness run {grid}" in out
    assert "Tuner.restore" not in out + err and "Traceback" not in err and "SIGABRT" not in err, err[-3000:]
    kept = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done_dirs(grid_dir)}
    for key, n in resumable.items():  # its finished epochs are kept (and maybe the one it was in, had it ended)
        if key not in kept:
            resumable[key] = finished_epochs(grid_dir / key)
            assert resumable[key] >= n

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"3/3 trials done ({len(kept)} already done before this run)" in again.stdout
    for key, n in resumable.items():
        label = json.loads((grid_dir / key / "trial.json").read_text())["label"]
        assert key in kept or f"{label}: resuming after epoch {n}" in again.stderr, again.stderr[-3000:]
    assert {k: (grid_dir / k / "metrics.json").stat().st_mtime_ns for k in kept} == kept


def test_a_second_ctrl_c_stops_at_once(tree, env, tmp_path):
    grid = grid_file(tmp_path, "twice", epochs=3, seeds=[0, 1, 2])
    proc, _, err, took, _ = start_then_signal(
        harness_run(grid, tree, tmp_path / "r"), env, tmp_path / "r" / "twice", [signal.SIGINT, signal.SIGINT]
    )
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err[-3000:]
    assert took < 30, f"took {took:.0f} s to stop"


# --- done means intact: a damaged result is mended from its predictions, or trained again -----------------------


def finished_trial(grid_dir, seed=0):
    """A trial folder as the runner leaves it, written through the store, with made-up predictions."""
    import torch

    from harness import metrics
    from harness.data import nih

    rng = np.random.default_rng(seed)
    trial = Trial(arch="alexnet", image_size=64, epochs=2, seed=seed)
    st = store.Store(grid_dir)
    files = st.begin(trial, grid_dir.name)
    n, k = 80, len(nih.FINDINGS)
    arrays = {
        "probs": rng.random((n, k)).astype(np.float32),
        "labels": (rng.random((n, k)) < 0.3).astype(np.uint8),
        "patient_id": np.arange(n) // 2,
        "image_index": np.array([f"{i:08d}_000.png" for i in range(n)]),
        "val_probs": rng.random((n // 2, k)).astype(np.float32),
        "val_labels": (rng.random((n // 2, k)) < 0.3).astype(np.uint8),
        "val_patient_id": np.arange(n // 2),
        "names": np.array(nih.FINDINGS),
    }
    files.write_predictions(**arrays)
    files.save_weights({"w": torch.arange(4.0)})
    files.write_history([{"epoch": e, "val_auc": 0.5 + e / 10, "seconds": 1.5} for e in (1, 2)])
    result = metrics.evaluate(
        arrays["probs"],
        arrays["labels"],
        names=nih.FINDINGS,
        patient_ids=arrays["patient_id"],
        val_probs=arrays["val_probs"],
        val_labels=arrays["val_labels"],
        seed=seed,
    )
    files.write_metrics({**result, "key": trial.key, "train_seconds": 3.0, "device": "cpu"})
    st.mark_done(trial)
    return files, result


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_metrics_are_recomputed_from_intact_predictions(tmp_path):
    from harness.runner.intact import intact

    files, result = finished_trial(tmp_path / "g")
    history = (files.path / files.HISTORY).stat().st_mtime_ns
    (files.path / files.METRICS).write_text('{"auc_macro": 0.9')  # cut off mid-write by a crash
    assert intact(files) and files.problems() == []
    mended = files.read_metrics()
    assert mended["auc_macro"] == result["auc_macro"] and mended["per_finding"] == result["per_finding"]
    assert mended["split"] == "official" and mended["epochs_run"] == 2 and mended["recomputed"]["from"]
    assert (files.path / files.HISTORY).stat().st_mtime_ns == history

    edited = {**files.read_metrics(), "auc_macro": 0.99}  # readable, but not what the predictions say
    store.write_json(files.path / files.METRICS, edited)
    assert intact(files) and files.read_metrics()["auc_macro"] == result["auc_macro"]
    assert files.read_metrics()["train_seconds"] == 3.0  # what cannot be recomputed is kept


@pytest.mark.parametrize("damage", ["predictions", "weights", "metrics and weights", "done"])
def test_other_damage_means_the_trial_is_trained_again(tmp_path, damage):
    from harness.runner.intact import intact

    files, _ = finished_trial(tmp_path / "g")
    if "predictions" in damage:
        truncate(files.path / files.PREDICTIONS)
    if "weights" in damage:
        truncate(files.weights_path)
    if "metrics" in damage:  # hides the weights' checksum from a first look
        (files.path / files.METRICS).write_text("{")
    if damage == "done":
        (files.path / files.DONE).write_text("{")
    assert not intact(files)


def test_rerun_mends_or_retrains_damaged_trials(tree, env, tmp_path):
    grid = grid_file(tmp_path, "damaged", epochs=1, seeds=[0, 1, 2])
    cmd = [sys.executable, "-m", "harness", "run", grid, "--data-root", tree, "--results", tmp_path / "results"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    dirs = done_dirs(tmp_path / "results" / "damaged")
    assert len(dirs) == 3
    mended, no_predictions, no_weights = dirs
    before = {d.name: (d / "history.csv").stat().st_mtime_ns for d in dirs}
    auc = json.loads((mended / "metrics.json").read_text())["auc_macro"]
    (mended / "metrics.json").write_text("{")
    truncate(no_predictions / "predictions.npz")
    truncate(no_weights / "model.pt")

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "3/3 trials done (1 already done before this run), 0 failed" in again.stdout
    assert (mended / "history.csv").stat().st_mtime_ns == before[mended.name]  # not retrained
    assert json.loads((mended / "metrics.json").read_text())["auc_macro"] == auc
    for d in (no_predictions, no_weights):
        assert (d / "history.csv").stat().st_mtime_ns != before[d.name]  # retrained
    for d in dirs:
        assert store.TrialFiles(d).problems() == []


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address, env):
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def _stop(proc):
    """Stop a `ray start --block` and the Ray processes it started (only ours: never `ray stop`)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow  # two Ray nodes and a grid: about two minutes on a 2-core machine
def test_grid_on_a_two_node_ray_cluster(tree, env, tmp_path):
    ray = str(BIN / "ray")
    # A private throwaway cluster on loopback; a real one keeps Ray's token authentication on.
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # One CPU per node, so one-CPU trials can only run side by side by using both nodes.
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block"]
    nodes = []
    try:
        nodes.append(
            subprocess.Popen(
                [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        deadline = time.time() + 120
        while _alive_nodes(address, env) < 1 and time.time() < deadline:
            time.sleep(2)
        nodes.append(
            subprocess.Popen(
                [ray, "start", "--address", address, *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        while _alive_nodes(address, env) < 2 and time.time() < deadline:
            time.sleep(2)
        assert _alive_nodes(address, env) == 2, "the two-node cluster did not come up"
        grid = grid_file(tmp_path, "cluster", epochs=1, seeds=[0, 1, 2, 3])
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                grid,
                "--data-root",
                tree,
                "--results",
                tmp_path / "results",
                "--address",
                address,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        ran_on = {
            json.loads((d / "metrics.json").read_text())["ray_node_id"]
            for d in done_dirs(tmp_path / "results" / "cluster")
        }
        assert len(ran_on) == 2, f"trials ran on {len(ran_on)} node(s)"
    finally:
        for node in reversed(nodes):
            _stop(node)


def test_unreachable_cluster_is_one_clear_line(env, tmp_path, tree):
    grid = grid_file(tmp_path, "nowhere", epochs=1, seeds=[0])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            grid,
            "--data-root",
            tree,
            "--results",
            tmp_path / "r",
            "--address",
            f"127.0.0.1:{_free_port()}",
        ],
        cwd=REPO,
        env={**env, "RAY_gcs_rpc_server_connect_timeout_s": "5"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the Ray cluster" in proc.stderr and "Traceback" not in proc.stderr
