"""The main job end to end: a grid through the command line and Ray Tune into the store, its live tracking, then
the report. One finished grid (conftest's finished_grid) serves every test here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, TRACKED, cli_env, hparams, read_events, run_harness, scalars

from harness import cli, store
from harness.config import Trial
from harness.runner import tracking

ROW_TAGS = {
    "train_loss": "loss/train",
    "val_auc": "auroc/val",
    "lr": "optim/lr",
    "train_images_per_s": "speed/train_images_per_s",
}


def done_trials(grid_dir: Path) -> dict[Path, Trial]:
    return {
        d: Trial(**json.loads((d / "metrics.json").read_text())["trial"])
        for d in sorted(grid_dir.iterdir())
        if (d / "DONE").is_file()
    }


def test_run_trains_stores_and_reports_failures(finished_grid):
    proc, grid_dir = finished_grid.proc, finished_grid.dir
    # The pretrained trial has no ImageNet weights offline: it fails, the others finish, exit code 1.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2/3 trials done" in proc.stdout and "1 failed" in proc.stdout
    assert "alexnet-" in proc.stdout and "hub/checkpoints" in proc.stdout  # names the file to place, and where
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # a failed trial is a line, not a stack
    assert "Configuration for experiment" not in proc.stdout  # Ray's banner: the harness's summary says it all
    done = done_trials(grid_dir)
    assert len(done) == 2
    for d in done:
        m = json.loads((d / "metrics.json").read_text())
        assert m["dataset"] == "synthetic" and m["split"] == "official"
        assert m["git_commit"] and m["harness_version"]
        assert 0 <= m["auc_macro"] <= 1 and len(m["auc_per_class"]) == 14
        assert m["trial"]["dataset"] == "synthetic" and m["trial"]["epochs"] == 2
        assert Trial(**m["trial"]).key == d.name
        for f in ("trial.json", "history.csv", "predictions.npz", "model.pt"):
            assert (d / f).is_file(), f
        assert not (d / "last.pt").exists()
        assert len((d / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_report_on_the_results(finished_grid, tmp_path):
    assert cli.main(["report", str(finished_grid.dir), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "synthetic" in html.lower()


def test_bad_grid_is_exit_2_and_writes_nothing(tmp_path):
    """The exit-2 path of a real process (the other refusals are checked in process, in the unit layer)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbase: {arch: alexnet, lr: fast}\n")
    proc = run_harness("run", bad, "--results", tmp_path / "results", env=cli_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lr='fast'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


# --- live tracking: every grid's TensorBoard event files under results/<grid>/tensorboard/ -----------------------


def test_every_trial_has_a_named_tensorboard_run_with_its_epochs(finished_grid):
    proc, grid_dir = finished_grid.proc, finished_grid.dir
    done = done_trials(grid_dir)
    assert len(done) == 2
    runs = {p.name for p in (grid_dir / "tensorboard").iterdir()}
    finished = {f"alexnet-scratch-{t.loss}-freeze0-sub1-seed0-{d.name}" for d, t in done.items()}
    assert finished <= runs  # and the failed trial's run, which ends where it failed
    assert all(name.startswith("alexnet-pretrained-bce-") for name in runs - finished), runs
    for d, trial in done.items():
        run = grid_dir / "tensorboard" / tracking.run_name(trial)
        # Ray's own folder of the trial carries the same name, not the whole config
        assert (grid_dir / ".tune" / "tiny" / run.name).is_dir()
        events = read_events(run)
        got = scalars(events)
        history = list(csv.DictReader((d / "history.csv").open()))
        assert [int(r["epoch"]) for r in history] == [1, 2]
        for key, tag in ROW_TAGS.items():
            assert got[tag] == pytest.approx({int(r["epoch"]): float(r[key]) for r in history}, rel=1e-6), tag
        assert got["optim/lr"] == pytest.approx({1: 1e-3, 2: 1e-4})  # lr_step 1: the step shows, epoch by epoch
        assert not any(tag.startswith("ray/") for tag in got)  # Ray's default logger did not write beside it
        params = hparams(events)
        assert params["trial/loss"] == trial.loss and params["trial/arch"] == "alexnet"
        assert not any(k.startswith("runtime") for k in params)
    assert f"tensorboard: tensorboard --logdir {grid_dir / 'tensorboard'}" in proc.stdout


@pytest.mark.skipif("mlflow" not in TRACKED, reason="mlflow not installed (pip install 'harness[mlflow]')")
def test_mlflow_tracker_logs_each_trial_as_a_run_in_the_grids_sqlite_store(finished_grid):
    import mlflow

    proc, grid_dir = finished_grid.proc, finished_grid.dir
    uri = f"sqlite:///{(grid_dir / 'mlflow.db').resolve()}"
    assert f"mlflow: mlflow ui --backend-store-uri {uri}" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    keys = {d.name for d in done_trials(grid_dir)}
    assert {r.info.run_name.rsplit("-", 1)[1] for r in runs} == keys
    for r in runs:
        assert r.info.status == "FINISHED"
        history = list(csv.DictReader((grid_dir / r.info.run_name.rsplit("-", 1)[1] / "history.csv").open()))
        auc = client.get_metric_history(r.info.run_id, "val_auc")
        assert {m.step: m.value for m in auc} == pytest.approx({int(h["epoch"]): float(h["val_auc"]) for h in history})
        # the trial's row, not Ray's bookkeeping; the fields as parameters
        assert set(r.data.metrics) == {"epoch", *tracking.SCALARS, "training_iteration"}
        assert r.data.params["trial/loss"] in ("bce", "focal")


@pytest.mark.skipif("wandb" not in TRACKED, reason="wandb not installed (pip install 'harness[wandb]')")
def test_wandb_tracker_writes_offline_runs_into_the_results(finished_grid):
    proc, grid_dir = finished_grid.proc, finished_grid.dir
    runs = sorted((grid_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    # W&B's offline log is binary (its reader lives in the Go core): each run's records name the run and
    # its project, and carry the epoch metrics
    names = {tracking.run_name(t).encode() for t in done_trials(grid_dir).values()}
    for path in runs:
        data = path.read_bytes()
        assert sum(name in data for name in names) == 1 and b"tiny" in data and b"val_auc" in data
    assert f"offline runs: wandb sync {grid_dir / 'wandb'}/offline-run-*" in proc.stdout


def test_a_report_never_imports_torch_or_ray(finished_grid, tmp_path):
    """Neither importing the report nor writing one through the command line loads torch or ray."""
    heavy = "sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules)"
    for code in (
        f"import sys, harness.report; print({heavy})",
        f"import sys; from harness import cli; cli.main(['report', {str(finished_grid.dir)!r}, '--out', "
        f"{str(tmp_path)!r}]); print({heavy})",
    ):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "index.html").is_file()


# --- done means intact: a damaged result is mended from its predictions, or trained again -----------------------


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Each part is in the default run: mending (tests/unit/test_recovery.py), retraining what is damaged
# (test_other_damage_means_the_trial_is_trained_again) and a rerun over finished trials (test_faults.py).
@pytest.mark.slow
def test_a_rerun_mends_damaged_metrics_and_retrains_damaged_weights(finished_grid, tmp_path):
    """The finished grid, copied: one trial's metrics cut off mid-write (mended from its predictions, not
    retrained), the other's weights cut off (trained again); its failed trial fails again. That an intact trial is
    skipped untouched is asserted after the kill -9 in test_faults.py."""
    grid_dir = finished_grid.copy(tmp_path)
    dirs = sorted(d.parent for d in grid_dir.glob("*/DONE"))
    assert len(dirs) == 2
    mended, no_weights = dirs
    history = {d.name: (d / "history.csv").stat().st_mtime_ns for d in dirs}
    auc = json.loads((mended / "metrics.json").read_text())["auc_macro"]
    (mended / "metrics.json").write_text("{")
    truncate(no_weights / "model.pt")

    again = subprocess.run(
        finished_grid.command(tmp_path), cwd=REPO, env=finished_grid.env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 1, again.stdout + again.stderr[-3000:]  # the pretrained trial has no weights offline
    assert "2/3 trials done (1 already done before this run), 1 failed" in again.stdout, again.stdout
    assert (mended / "history.csv").stat().st_mtime_ns == history[mended.name]  # not retrained
    assert json.loads((mended / "metrics.json").read_text())["auc_macro"] == auc
    assert (no_weights / "history.csv").stat().st_mtime_ns != history[no_weights.name]  # retrained
    for d in dirs:
        assert store.TrialFiles(d).problems() == []
