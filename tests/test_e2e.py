"""The main job end to end: a grid through the command line and Ray Tune into the store, then the report."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.config import Trial

REPO = Path(__file__).resolve().parent.parent


def harness(*args, env, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from harness.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth") / "nih", n=240, size=64, seed=3, progress=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("env")
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_ROOT", "RAY_ADDRESS")}
    return {**env, "HARNESS_CACHE_DIR": str(home / "cache"), "TORCH_HOME": str(home / "torch"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("grids") / "tiny.yaml"
    path.write_text(
        textwrap.dedent("""
        name: tiny
        base: {dataset: nih, arch: alexnet, image_size: 64, epochs: 2, batch_size: 32, lr: 1e-3, lr_step: 1}
        axes: {pretrained: [false, true], loss: [bce, focal]}
        exclude: [{pretrained: true, loss: focal}]
    """)
    )
    return path


@pytest.fixture(scope="module")
def first_run(tree, env, grid, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = harness("run", grid, "--data-root", tree, "--results", results, env=env)
    return proc, results / "tiny"


def test_run_trains_stores_and_reports_failures(first_run):
    proc, grid_dir = first_run
    # The pretrained trial has no ImageNet weights offline: it fails, the others finish, exit code 1.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2/3 trials done" in proc.stdout and "1 failed" in proc.stdout
    assert "alexnet-" in proc.stdout and "hub/checkpoints" in proc.stdout  # names the file to place, and where
    done = [d for d in grid_dir.iterdir() if (d / "DONE").is_file()]
    assert len(done) == 2
    for d in done:
        m = json.loads((d / "metrics.json").read_text())
        assert m["dataset"] == "synthetic" and m["split"] == "official"
        assert m["git_commit"] and m["harness_version"]
        assert 0 <= m["auc_macro"] <= 1 and len(m["auc_per_class"]) == 14
        assert m["trial"]["dataset"] == "synthetic" and m["trial"]["epochs"] == 2
        trial = Trial(**m["trial"])
        assert trial.key == d.name
        for f in ("trial.json", "history.csv", "predictions.npz", "model.pt"):
            assert (d / f).is_file(), f
        assert not (d / "last.pt").exists()
        assert len((d / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_rerun_skips_done_trials(first_run, tree, env, grid):
    _proc, grid_dir = first_run
    before = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in grid_dir.iterdir() if (d / "DONE").exists()}
    again = harness("run", grid, "--data-root", tree, "--results", grid_dir.parent, env=env)
    assert again.returncode == 1
    assert "2 already done before this run" in again.stdout
    after = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in grid_dir.iterdir() if (d / "DONE").exists()}
    assert after == before  # nothing retrained


def test_report_on_the_results(first_run, env, tmp_path):
    _, grid_dir = first_run
    proc = harness("report", grid_dir, "--out", tmp_path / "rep", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rep" / "index.html").is_file()
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "synthetic" in html.lower()


def test_bad_grid_is_exit_2_and_writes_nothing(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbase: {arch: alexnet, lr: fast}\n")
    proc = harness("run", bad, "--results", tmp_path / "results", env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lr='fast'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("arch=alexnett", "unknown arch 'alexnett' (did you mean 'alexnet'?)"),
        ("loss=focall", "unknown loss 'focall'"),
        ("optimizer=adamm", "unknown optimizer 'adamm'"),
        ("freeze=9", "freeze=9 is deeper than alexnet"),
        ("image_size=32", "below alexnet's minimum"),
    ],
)
def test_unknown_names_and_impossible_sizes_refused_before_ray(grid, tmp_path, capsys, override, message):
    # In process (the exit-2 path of a real process is covered above): nothing may start Ray or write results.
    from harness import cli

    assert cli.main(["run", str(grid), "--set", override, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / "r").exists()


def test_missing_data_root_is_one_clear_line(env, grid, tmp_path):
    proc = harness("run", grid, "--data-root", tmp_path / "nowhere", "--results", tmp_path / "r", env=env, timeout=120)
    assert proc.returncode == 2 and "Data_Entry_2017.csv" in proc.stderr and "Traceback" not in proc.stderr
