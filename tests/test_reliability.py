"""Faults for real: a run killed with SIGKILL resumes without loss or double counting; Ctrl-C and SIGTERM stop it
cleanly; a successful run prints no traceback; damaged results are mended or redone; a two-node Ray cluster, and
one of its nodes lost mid-trial."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
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
        # Pre-emption: the driver and every process it started (its local Ray) die at once. Ray puts a trial's
        # worker in a process group of its own, so the whole session is killed, and waited for: a worker left
        # alive for a moment would finish another epoch after `resumed` below was read.
        _kill_node(proc)
        proc.wait()
        psutil.wait_procs(_session(proc), timeout=30)
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


def _send(proc, sig):
    """SIGINT to the run's process group, as a terminal's Ctrl-C does; SIGTERM to the driver, as `kill PID`,
    `docker stop` or Kubernetes do."""
    (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)


def start_then_signal(cmd, env, grid_dir, signals, *, gap=1.0, send=_send):
    """Start a run; once a trial is done and the next is part-way, send the signals, each with send(proc, sig).
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
            send(proc, sig)
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


# SIGTERM takes the same path as SIGINT (one handler); its run is in -m slow to keep the default suite short
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
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
    if sig != signal.SIGINT:
        return  # how the run stopped differs, what it left does not: the rerun is checked once, after a Ctrl-C

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"3/3 trials done ({len(kept)} already done before this run)" in again.stdout
    for key, n in resumable.items():
        label = json.loads((grid_dir / key / "trial.json").read_text())["label"]
        assert key in kept or f"{label}: resuming after epoch {n}" in again.stderr, again.stderr[-3000:]
    assert {k: (grid_dir / k / "metrics.json").stat().st_mtime_ns for k in kept} == kept


def _ray_stop(proc, sig):
    """What `ray stop --force` does to a run's private Ray: every Ray process killed, the driver left alone."""
    for p in _session(proc):
        if p.pid != proc.pid:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.parametrize(
    "send, code, cause",
    [
        # SLURM's scancel and systemd signal every process of a job: the local Ray dies with the driver.
        (lambda proc, sig: _kill_node(proc, sig), 130, "SIGTERM"),
        pytest.param(_ray_stop, 1, "the end of its local Ray", marks=pytest.mark.slow),
    ],
    ids=["SIGTERM to the whole job", "ray stop"],
)
def test_a_run_whose_ray_ended_under_it_ends_at_once_with_its_summary(tree, env, tmp_path, send, code, cause):
    """The run sees its Ray gone and ends with its summary read from the store, instead of waiting a minute for
    Ray and dying with exit 1 and no summary. What it leaves is what a kill -9 leaves, which the kill -9 test
    reruns."""
    grid = grid_file(tmp_path, "job", epochs=3, seeds=[0, 1])
    grid_dir = tmp_path / "results" / "job"
    proc, out, err, took, resumable = start_then_signal(
        harness_run(grid, tree, tmp_path / "results"), env, grid_dir, [signal.SIGTERM], send=send
    )
    psutil.wait_procs(_session(proc), timeout=30)
    assert proc.returncode == code, out + err[-3000:]
    assert took < 30, f"took {took:.0f} s to stop"
    assert "job: 1/2 trials done (0 already done before this run), 0 failed, 1 not run" in out, out + err[-3000:]
    assert (
        f"stopped by {cause}" in out
        and f"every finished epoch is kept. Resume with: python -m harness run {grid}" in out
    )
    assert "Traceback" not in err, err[-3000:]
    for key, n in resumable.items():  # the part-way trial's finished epochs are on disk, readable, for the rerun
        assert finished_epochs(grid_dir / key) >= n


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


def _nodes(address, env):
    """The cluster's live nodes as (node id, is the head), from a separate driver; [] while it is not up."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(json.dumps([[n['NodeID'], 'node:__internal_head__' in n['Resources']] for n in ray.nodes() "
        "if n['Alive']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []


def _session(proc):
    """Every live process in the session `proc` leads: a node's `ray start`, its raylet, its workers."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def _kill_node(proc, sig=signal.SIGKILL):
    """Signal every process of a node: its `ray start --block` and the daemons in its process group, then the
    workers, which Ray puts in process groups of their own, in the same session."""
    with contextlib.suppress(ProcessLookupError):  # the group outlives its leader while any member lives
        os.killpg(proc.pid, sig)
    for p in _session(proc):
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _stop(proc):
    """Stop a `ray start --block` and the Ray processes it started (only ours: never `ray stop`)."""
    _kill_node(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    _kill_node(proc)  # what outlived the SIGTERM
    proc.wait()


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head: subprocess.Popen
    worker: subprocess.Popen
    head_id: str
    worker_id: str


@contextlib.contextmanager
def two_node_cluster(env):
    """A private two-node Ray cluster on loopback, one CPU per node: one-CPU trials can only run side by side by
    using both nodes. Each node's `ray start --block` leads a session of its own, so every process a node starts
    can be found, and killed, by it."""
    ray = str(BIN / "ray")
    # A private throwaway cluster on loopback; a real one keeps Ray's token authentication on.
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block"]
    nodes = []

    def start(*args):
        nodes.append(
            subprocess.Popen(
                [ray, "start", *args, *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    try:
        deadline = time.time() + 180
        start("--head", "--port", str(port), "--include-dashboard", "false")
        while not (up := _nodes(address, env)) and time.time() < deadline:
            time.sleep(2)
        assert len(up) == 1, "the head node did not come up"
        start("--address", address)
        while len(up := _nodes(address, env)) < 2 and time.time() < deadline:
            time.sleep(2)
        assert len(up) == 2, "the two-node cluster did not come up"
        (head_id,) = [n for n, is_head in up if is_head]
        (worker_id,) = [n for n, is_head in up if not is_head]
        yield Cluster(address, env, nodes[0], nodes[1], head_id, worker_id)
    finally:
        for node in reversed(nodes):
            _stop(node)


@pytest.mark.slow  # two Ray nodes and a grid: about two minutes on a 2-core machine
def test_grid_on_a_two_node_ray_cluster(tree, env, tmp_path):
    with two_node_cluster(env) as cluster:
        grid = grid_file(tmp_path, "cluster", epochs=1, seeds=[0, 1, 2, 3])
        proc = subprocess.run(
            [*harness_run(grid, tree, tmp_path / "results"), "--address", cluster.address],
            cwd=REPO,
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    ran_on = {
        json.loads((d / "metrics.json").read_text())["ray_node_id"] for d in done_dirs(tmp_path / "results" / "cluster")
    }
    assert ran_on == {cluster.head_id, cluster.worker_id}, f"trials ran on {len(ran_on)} node(s)"


def _trial_workers(node):
    """A node's processes running a Tune trial (Ray titles an actor's process `ray::<class>.<method>`)."""
    out = []
    for p in _session(node):
        try:
            if " ".join(p.cmdline()).startswith("ray::ImplicitFunc"):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow  # two Ray nodes, two trials of several epochs, one retried: a few minutes on a 2-core machine
def test_a_lost_node_loses_nothing(tree, env, tmp_path):
    """The worker node dies (every one of its processes killed at once) while it trains a trial: Ray Tune retries
    the trial on the head node, where it carries on after its last finished epoch, in the same folder."""
    epochs = 8
    grid = grid_file(tmp_path, "lost", epochs=epochs, seeds=[0, 1])
    grid_dir = tmp_path / "results" / "lost"
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with two_node_cluster(env) as cluster, log_out.open("w") as out, log_err.open("w") as err:
        proc = subprocess.Popen(
            [*harness_run(grid, tree, tmp_path / "results"), "--address", cluster.address],
            cwd=REPO,
            env=cluster.env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            # One CPU per node and a trial takes one: the two trials run side by side, one on each node. Wait until
            # both have finished an epoch and are still training, the worker node running one of them.
            deadline = time.time() + 900
            while time.time() < deadline and proc.poll() is None:
                if grid_dir.is_dir() and len(mid_trial(grid_dir)) == 2 and _trial_workers(cluster.worker):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "the run ended before the node could be lost; make the trials longer"
            assert len(mid_trial(grid_dir)) == 2 and _trial_workers(cluster.worker), (
                "no trial on the worker by the deadline"
            )
            before = {d.name: finished_epochs(d) for d in mid_trial(grid_dir)}
            _kill_node(cluster.worker)  # the node is lost: its raylet, its agents and its trial's worker at once
            cluster.worker.wait()
            proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stdout, stderr = log_out.read_text(), log_err.read_text()
    assert proc.returncode == 0, stdout + stderr[-3000:]
    assert "2/2 trials done (0 already done before this run), 0 failed" in stdout, stdout
    results = {d.name: json.loads((d / "metrics.json").read_text()) for d in done_dirs(grid_dir)}
    assert len(results) == 2
    assert {m["ray_node_id"] for m in results.values()} == {cluster.head_id}  # both finished on the head
    resumed = {key: m["resumed_after_epoch"] for key, m in results.items() if "resumed_after_epoch" in m}
    assert len(resumed) == 1, resumed  # the trial the lost node ran; the head's own ran straight through
    ((key, after),) = resumed.items()
    assert 1 <= before[key] <= after < epochs  # not from epoch 1: after the epochs it had finished before the loss
    label = results[key]["label"]
    assert f"{label}: attempt 1 failed (its worker died or its node was lost: " in stderr, stderr[-3000:]
    assert f"{label}: resuming after epoch {after}" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]  # the lost node is told in a line, the run succeeded
    for d in done_dirs(grid_dir):
        assert pd.read_csv(d / "history.csv")["epoch"].tolist() == list(range(1, epochs + 1))  # each epoch once
        assert not (d / "last.pt").exists() and not (d / "failed.json").exists()


class _TuneTrial:
    """What Retries reads of a Tune trial: its config, its failures so far, the error of the last, pickled beside
    the trial's local state as Tune does (its copy in storage comes later)."""

    def __init__(self, trial, failures, error, tmp_path):
        from ray import cloudpickle

        self.config, self.num_failures = {"trial": trial.to_dict()}, failures
        self.pickled_error_file = tmp_path / f"error-{trial.key}-{failures}.pkl"
        self.pickled_error_file.write_bytes(cloudpickle.dumps(error))

    def get_pickled_error(self):
        return None  # not yet in storage


def test_a_failed_attempt_is_one_line_and_a_trial_whose_worker_died_each_time_is_recorded(tmp_path, caplog):
    from ray.exceptions import ActorDiedError, RayTaskError

    from harness.runner.grid import Retries

    st = store.Store(tmp_path / "g")
    lost, own = Trial(arch="alexnet", seed=0), Trial(arch="alexnet", seed=1)
    for t in (lost, own):
        st.begin(t, "g")
    retries = Retries(st, 2)
    with caplog.at_level(logging.WARNING, logger="harness.runner.grid"):
        retries.on_trial_recover(0, [], _TuneTrial(lost, 1, ActorDiedError(), tmp_path))
    assert (
        f"{lost.label}: attempt 1 failed (its worker died or its node was lost: ActorDiedError); Ray runs it "
        "again, after its last finished epoch (retry 1 of 2)"
    ) in caplog.text
    assert st.failure(lost) is None  # a retried attempt is not a failure

    retries.on_trial_error(0, [], _TuneTrial(lost, 3, ActorDiedError(), tmp_path))
    assert st.failure(lost)["reason"] == "its worker died or its node was lost: ActorDiedError (attempt 3 of 3)"

    # A trial's own exception: the worker recorded it, with its traceback; that record stays.
    st.mark_failed(own, "MemoryError: out of host memory", detail="Traceback ...")
    cause = MemoryError("out of host memory")
    with caplog.at_level(logging.WARNING, logger="harness.runner.grid"):
        retries.on_trial_error(0, [], _TuneTrial(own, 3, RayTaskError("_trainable", "Traceback ...", cause), tmp_path))
    assert f"{own.label}: attempt 3 failed (MemoryError: out of host memory); no retries left" in caplog.text
    assert st.failure(own)["detail"] == "Traceback ..."


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


def test_a_search_trial_whose_worker_died_each_time_is_recorded_in_one_line(tmp_path, caplog):
    from ray.exceptions import ActorDiedError

    from harness.runner import search as search_runner
    from harness.runner.grid import Retries

    st = store.Store(tmp_path / "s")
    base = Trial(arch="alexnet", epochs=2)
    config = {"base": base.to_dict(), "fields": ["lr", "loss"], "lr": 3e-4, "loss": "bce"}
    trial = search_runner._trial_of(config)
    st.begin(trial, "s")
    died = _TuneTrial(trial, 2, ActorDiedError(), tmp_path)
    died.config, died.trial_id = config, "abc_00001"  # a search's config holds the base and the drawn fields
    with caplog.at_level(logging.WARNING, logger="harness.runner.grid"):
        Retries(st, 1, trial_of=search_runner._trial_of).on_trial_error(0, [], died)
    assert f"{trial.label}: attempt 2 failed (its worker died or its node was lost: ActorDiedError)" in caplog.text
    assert st.failure(trial)["reason"] == "its worker died or its node was lost: ActorDiedError (attempt 2 of 2)"


def test_the_progress_bar_drops_a_dead_attempts_epoch_until_its_retry_reports():
    from types import SimpleNamespace

    from harness.runner.grid import Progress

    progress = Progress(total=2, already=0)
    trial = SimpleNamespace(trial_id="t1", config={"trial": Trial(arch="alexnet", epochs=3).to_dict()})
    progress.on_trial_result(0, [], trial, {"epoch": 2, "val_auc": 0.61})
    assert "ep 2/3" in progress.bar.postfix
    progress.on_trial_recover(0, [], trial)  # its node was lost: epoch 2 is not running any more
    assert progress.running == {} and "ep 2/3" not in progress.bar.postfix
    progress.close()


@pytest.mark.slow
def test_a_search_whose_ray_ended_under_it_ends_at_once_and_fails_the_interrupted_trial(tree, env, tmp_path):
    """The search's side of a job-wide SIGTERM: its line says how to continue, and the trial Ray was running is
    failed in the study at once (not left "running" until its heartbeat goes stale)."""
    import optuna

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nbase: {arch: alexnet, image_size: 64, epochs: 3, batch_size: 32}\n"
        "space: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n"
        "metric: val_auc\ndirection: maximize\nsamples: 3\nconcurrency: 1\n"
    )
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "harness", "search", str(spec), "--data-root", str(tree), "--results", str(results)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(results.glob("s/*/history.csv")):
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be stopped"
        start = time.time()
        _kill_node(proc, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_node(proc)
            proc.wait()
    psutil.wait_procs(_session(proc), timeout=30)
    assert proc.returncode == 130 and time.time() - start < 30, out + err[-3000:]
    assert (
        f"stopped by SIGTERM; the study keeps every finished trial. Continue it with: python -m harness search {spec}"
        in out
    )
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{results / 's' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.FAIL in states, states
