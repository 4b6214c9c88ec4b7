"""Faults for real, through the command line: Ctrl-C, SIGKILL and SIGTERM end a run without losing a finished epoch
and a rerun resumes; a rerun mends or retrains damaged results; a two-node Ray cluster, and one of its nodes lost
mid-trial; an unreachable cluster is one line."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
from support import REPO, cli_env, harness_cmd, write_grid

BIN = Path(sys.executable).parent


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


def grid_file(tmp_path, name, epochs, seeds):
    return write_grid(
        tmp_path,
        name,
        f"base: {{arch: alexnet, image_size: 64, epochs: {epochs}, batch_size: 32, lr: 1e-3}}\nseeds: {seeds}",
    )


def done_dirs(grid_dir):
    return sorted(d for d in grid_dir.iterdir() if (d / "DONE").is_file()) if grid_dir.is_dir() else []


def mid_trial(grid_dir):
    """Trial folders with a finished epoch's resume state and no DONE: a trial part-way through."""
    return [d for d in grid_dir.iterdir() if (d / "last.pt").is_file() and not (d / "DONE").exists()]


def finished_epochs(trial_dir):
    import torch

    return torch.load(trial_dir / "last.pt", weights_only=True)["epoch"] + 1


def label_of(trial_dir):
    return json.loads((trial_dir / "trial.json").read_text())["label"]


def harness_run(grid, tree, results):
    return harness_cmd("run", grid, "--data-root", tree, "--results", results)


def _send(proc, sig):
    """SIGINT to the run's process group, as a terminal's Ctrl-C does; SIGTERM to the driver, as `kill PID`,
    `docker stop` or Kubernetes do."""
    (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)


def wait_for(proc, ready, what, timeout=600):
    """Poll until ready() while proc runs; fail with what was awaited if the run ended or the time ran out."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before {what}; make the grid longer"
    assert ready(), f"not {what} within {timeout} s"


def start_then_signal(cmd, env, grid_dir, signals, *, gap=1.0, send=_send):
    """Start a run; once a trial is done and the next is part-way, send the signals, each with send(proc, sig).
    Returns the finished process, its output, how long it took to stop, and the epochs of the part-way trial."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for(proc, lambda: done_dirs(grid_dir) and mid_trial(grid_dir), "a trial was done and the next part-way")
        resumable = {}
        for d in mid_trial(grid_dir):
            with contextlib.suppress(FileNotFoundError):  # it finished meanwhile: its last.pt is gone
                resumable[d.name] = finished_epochs(d)
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


def test_ctrl_c_then_kill_9_then_a_rerun_finish_every_trial_once(small_synthetic_tree, env, tmp_path):
    """One grid through what ends runs: Ctrl-C (the run stops in seconds and says how to resume), a rerun killed
    with SIGKILL (pre-emption: the driver and its local Ray die at once), and a last rerun that resumes each part-way
    trial after its last finished epoch, keeps what was done, and finishes every trial once, without a traceback."""
    grid = grid_file(tmp_path, "stopped", epochs=2, seeds=[0, 1, 2, 3])
    cmd = harness_run(grid, small_synthetic_tree, tmp_path / "results")
    grid_dir = tmp_path / "results" / "stopped"

    # Ctrl-C once a trial is done and the next part-way.
    proc, out, err, took, stopped = start_then_signal(cmd, env, grid_dir, [signal.SIGINT])
    assert proc.returncode == 130, out + err[-3000:]
    assert took < 60, f"took {took:.0f} s to stop"
    assert f"stopped by SIGINT; every finished epoch is kept. Resume with: python -m harness run {grid}" in out
    assert "Tuner.restore" not in out + err and "Traceback" not in err and "SIGABRT" not in err, err[-3000:]
    kept = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done_dirs(grid_dir)}
    for key, n in list(stopped.items()):  # its finished epochs are kept (and maybe the one it was in, had it ended)
        if key in kept:
            del stopped[key]
        else:
            stopped[key] = finished_epochs(grid_dir / key)
            assert stopped[key] >= n

    # The rerun resumes the stopped trial; once it has finished another and the next is part-way, SIGKILL it all.
    with (tmp_path / "rerun.err").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            wait_for(
                proc,
                lambda: len(done_dirs(grid_dir)) > len(kept) and mid_trial(grid_dir),
                "another trial was done and the next part-way",
            )
        finally:
            # The driver and every process it started die at once. Ray puts a trial's worker in a process group of
            # its own, so the whole session is killed, and waited for: a worker left alive for a moment would
            # finish another epoch after `killed` below was read.
            _kill_node(proc)
            proc.wait()
            psutil.wait_procs(_session(proc), timeout=30)
    rerun_err = (tmp_path / "rerun.err").read_text()
    for key, n in stopped.items():
        assert f"{label_of(grid_dir / key)}: resuming after epoch {n}" in rerun_err, rerun_err[-3000:]
    first = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done_dirs(grid_dir)}
    assert {k: first[k] for k in kept} == kept  # the first rerun kept what the stopped run finished
    killed = {d.name: finished_epochs(d) for d in mid_trial(grid_dir)}
    for key, epochs in killed.items():  # an epoch is reported (history.csv, the progress bar) once it is on disk
        history = grid_dir / key / "history.csv"  # none yet: killed before its first epoch was reported
        assert (len(pd.read_csv(history)) if history.is_file() else 0) <= epochs

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"4/4 trials done ({len(first)} already done before this run), 0 failed" in again.stdout
    assert "Traceback" not in again.stderr and "SystemExit" not in again.stderr, again.stderr[-3000:]
    assert "Configuration for experiment" not in again.stdout  # Ray's banner: the harness's summary says it all
    for key, epochs in killed.items():  # the resume path ran, from the last epoch the killed run finished
        assert f"{label_of(grid_dir / key)}: resuming after epoch {epochs}" in again.stderr, again.stderr[-3000:]
    finished = done_dirs(grid_dir)
    assert len(finished) == 4
    for d in finished:
        if d.name in first:  # kept as it was, not retrained
            assert (d / "metrics.json").stat().st_mtime_ns == first[d.name]
        history = pd.read_csv(d / "history.csv")
        assert history["epoch"].tolist() == [1, 2]  # a resumed trial does not repeat or skip an epoch
        assert not (d / "last.pt").exists()
        json.loads((d / "metrics.json").read_text())
    # No temporary file is left: those the kill cut off mid-write name a writer that is gone, swept by the rerun.
    assert [p for p in grid_dir.rglob("*.tmp") if ".tune" not in p.parts] == []


# SIGTERM takes the same path as SIGINT (one handler), which the test above runs in the default suite
@pytest.mark.slow
def test_sigterm_ends_the_run_in_seconds_keeping_every_finished_epoch(synthetic_tree, env, tmp_path):
    grid = grid_file(tmp_path, "stopped", epochs=3, seeds=[0, 1, 2])
    grid_dir = tmp_path / "results" / "stopped"
    proc, out, err, took, resumable = start_then_signal(
        harness_run(grid, synthetic_tree, tmp_path / "results"), env, grid_dir, [signal.SIGTERM]
    )
    assert proc.returncode == 130, out + err[-3000:]
    assert took < 60, f"took {took:.0f} s to stop"
    assert f"stopped by SIGTERM; every finished epoch is kept. Resume with: python -m harness run {grid}" in out
    assert "Tuner.restore" not in out + err and "Traceback" not in err and "SIGABRT" not in err, err[-3000:]
    kept = {d.name for d in done_dirs(grid_dir)}
    for key, n in resumable.items():
        assert key in kept or finished_epochs(grid_dir / key) >= n


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` at path (root and a kernel that allows it), unmounted after; skips where it cannot."""
    path.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield lambda new: subprocess.run(["mount", "-o", f"remount,size={new}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow  # two runs of a Ray grid; the unit layer covers each step (test_store, test_recovery)
def test_a_full_results_disk_fails_its_trials_in_one_line_each_and_a_rerun_with_space_finishes_them(
    small_synthetic_tree, env, tmp_path
):
    grid = write_grid(tmp_path, "full", "base: {arch: alexnet, image_size: 64, epochs: 2}\naxes: {loss: [bce, focal]}")
    with small_disk(tmp_path / "results", "300m") as resize:  # model.pt (228 MB) fits; last.pt does not
        cmd = harness_run(grid, small_synthetic_tree, tmp_path / "results")
        run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 1, run.stdout + run.stderr[-3000:]
        assert "full: 0/2 trials done (0 already done before this run), 2 failed, 0 not run" in run.stdout
        failed = [line for line in run.stdout.splitlines() if line.startswith("  FAILED")]
        assert len(failed) == 2 and all(
            "no space left on device while writing" in f and "MB free)" in f for f in failed
        )
        assert "Traceback" not in run.stderr and "retry" not in run.stderr, run.stderr[-3000:]
        assert list((tmp_path / "results").rglob("*.tmp")) == []
        resize("3g")
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "full: 2/2 trials done" in again.stdout, again.stdout + again.stderr[-3000:]
        assert list((tmp_path / "results").rglob("*.tmp")) == []


def _ray_stop(proc, sig):
    """What `ray stop --force` does to a run's private Ray: every Ray process killed, the driver left alone."""
    for p in _session(proc):
        if p.pid != proc.pid:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.slow  # the default suite stops runs with Ctrl-C and SIGKILL above; these are the job-wide variants
@pytest.mark.parametrize(
    "send, code, cause",
    [
        # SLURM's scancel and systemd signal every process of a job: the local Ray dies with the driver.
        (lambda proc, sig: _kill_node(proc, sig), 130, "SIGTERM"),
        (_ray_stop, 1, "the end of its local Ray"),
    ],
    ids=["SIGTERM to the whole job", "ray stop"],
)
def test_a_run_whose_ray_ended_under_it_ends_at_once_with_its_summary(synthetic_tree, env, tmp_path, send, code, cause):
    """The run sees its Ray gone and ends with its summary read from the store, instead of waiting a minute for
    Ray and dying with exit 1 and no summary. What it leaves is what a kill -9 leaves, which the kill -9 test
    reruns."""
    grid = grid_file(tmp_path, "job", epochs=3, seeds=[0, 1])
    grid_dir = tmp_path / "results" / "job"
    proc, out, err, took, resumable = start_then_signal(
        harness_run(grid, synthetic_tree, tmp_path / "results"), env, grid_dir, [signal.SIGTERM], send=send
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


@pytest.mark.slow  # the single Ctrl-C is in the default suite
def test_a_second_ctrl_c_stops_at_once(synthetic_tree, env, tmp_path):
    grid = grid_file(tmp_path, "twice", epochs=3, seeds=[0, 1, 2])
    proc, _, err, took, _ = start_then_signal(
        harness_run(grid, synthetic_tree, tmp_path / "r"), env, tmp_path / "r" / "twice", [signal.SIGINT, signal.SIGINT]
    )
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err[-3000:]
    assert took < 30, f"took {took:.0f} s to stop"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_is_one_clear_line(env, tmp_path, synthetic_tree):
    grid = grid_file(tmp_path, "nowhere", epochs=1, seeds=[0])
    proc = subprocess.run(
        [*harness_run(grid, synthetic_tree, tmp_path / "r"), "--address", f"127.0.0.1:{_free_port()}"],
        cwd=REPO,
        env={**env, "RAY_gcs_rpc_server_connect_timeout_s": "5"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the Ray cluster" in proc.stderr and "Traceback" not in proc.stderr


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
def test_grid_on_a_two_node_ray_cluster(synthetic_tree, env, tmp_path):
    with two_node_cluster(env) as cluster:
        grid = grid_file(tmp_path, "cluster", epochs=1, seeds=[0, 1, 2, 3])
        proc = subprocess.run(
            [*harness_run(grid, synthetic_tree, tmp_path / "results"), "--address", cluster.address],
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
def test_a_lost_node_loses_nothing(synthetic_tree, env, tmp_path):
    """The worker node dies (every one of its processes killed at once) while it trains a trial: Ray Tune retries
    the trial on the head node, where it carries on after its last finished epoch, in the same folder."""
    epochs = 8
    grid = grid_file(tmp_path, "lost", epochs=epochs, seeds=[0, 1])
    grid_dir = tmp_path / "results" / "lost"
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with two_node_cluster(env) as cluster, log_out.open("w") as out, log_err.open("w") as err:
        proc = subprocess.Popen(
            [*harness_run(grid, synthetic_tree, tmp_path / "results"), "--address", cluster.address],
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


@pytest.mark.slow
def test_a_search_whose_ray_ended_under_it_ends_at_once_and_a_rerun_resumes_the_interrupted_trial(
    synthetic_tree, env, tmp_path
):
    """The search's side of a job-wide SIGTERM: its line says how to continue, and the trial Ray was running is
    told to the study at once as interrupted (not left "running" until its heartbeat goes stale), and a rerun
    resumes it from its checkpoint, with the study, search.json and history.csv in agreement."""
    import optuna

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nbase: {arch: alexnet, image_size: 64, epochs: 3, batch_size: 32}\n"
        "space: {lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n"
        "metric: val_auc\ndirection: maximize\nsamples: 3\nconcurrency: 1\n"
    )
    results = tmp_path / "r"
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "search",
        str(spec),
        "--data-root",
        str(synthetic_tree),
        "--results",
        str(results),
    ]
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
    cut = [t for t in study.trials if t.user_attrs.get("outcome") == "interrupted"]
    assert cut and all(t.state == optuna.trial.TrialState.FAIL for t in cut)
    part_way = {
        t.number: finished_epochs(results / "s" / t.user_attrs["key"])
        for t in cut
        if "key" in t.user_attrs and (results / "s" / t.user_attrs["key"] / "last.pt").is_file()
    }

    # The rerun runs the interrupted trials first, each from its checkpoint, and every record agrees.
    again = subprocess.run([*cmd, "--samples", str(len(cut))], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert f"{len(cut)} interrupted trial(s)" in again.stderr
    for number, epochs in part_way.items():
        key = study.trials[number].user_attrs["key"]
        label = json.loads((results / "s" / key / "trial.json").read_text())["label"]
        assert f"{label}: resuming after epoch {epochs}" in again.stderr, again.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{results / 's' / 'study.db'}")
    resumed = {t.user_attrs["resumes"]: t for t in study.trials if "resumes" in t.user_attrs}
    assert sorted(resumed) == [t.number for t in cut]
    for t in resumed.values():
        assert t.params == study.trials[t.user_attrs["resumes"]].params
        record = json.loads((results / "s" / t.user_attrs["key"] / "search.json").read_text())
        history = pd.read_csv(results / "s" / t.user_attrs["key"] / "history.csv")
        assert record["outcome"] == t.user_attrs["outcome"] and record["epochs_run"] == len(history)
        assert history["epoch"].tolist() == list(range(1, len(history) + 1))  # no epoch repeated or lost
    assert f"{len(cut)} interrupted ({len(cut)} of them resumed since)" in again.stdout
