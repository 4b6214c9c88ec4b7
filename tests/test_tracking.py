"""Live tracking: every grid's TensorBoard event files under results/<grid>/tensorboard/, MLflow and W&B on request."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import cli
from harness.config import ConfigError, Runtime, Trial
from harness.runner import tracking

REPO = Path(__file__).resolve().parent.parent
TRACKED = [t for t in ("mlflow", "wandb") if importlib.util.find_spec(t)]  # end to end where installed
ROW_TAGS = {
    "train_loss": "loss/train",
    "val_auc": "auroc/val",
    "lr": "optim/lr",
    "train_images_per_s": "speed/train_images_per_s",
}


def read_events(folder: Path) -> list:
    """Every event in a run folder's event files, each record's CRCs checked (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            header = data[i : i + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
            body = data[i + 12 : i + 12 + length]
            assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc32c(body)
            events.append(Event.FromString(body))
            i += 16 + length
    return events


def scalars(events: list) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def hparams(events: list) -> dict[str, object]:
    """The hyperparameters of the run's hparams session start."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for e in events:
        for v in e.summary.value:
            if v.tag == "_hparams_/session_start_info":
                info = HParamsPluginData.FromString(v.metadata.plugin_data.content).session_start_info
                return {k: getattr(p, p.WhichOneof("kind")) for k, p in info.hparams.items()}
    return {}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A two-trial grid, two epochs each, through the command line and Ray; MLflow and W&B too where installed."""
    from harness.data import synthetic

    tmp = tmp_path_factory.mktemp("tracking")
    tree = synthetic.generate(tmp / "nih", n=240, size=64, seed=3, progress=False)
    grid = tmp / "tiny.yaml"
    grid.write_text(
        textwrap.dedent("""
        name: tiny
        base: {dataset: nih, arch: alexnet, image_size: 64, epochs: 2, batch_size: 32, lr: 1e-3, lr_step: 1}
        axes: {loss: [bce, focal]}
    """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_ROOT", "RAY_ADDRESS", "WANDB_API_KEY")}
    env.update(HARNESS_CACHE_DIR=str(tmp / "cache"), TORCH_HOME=str(tmp / "torch"), WANDB_MODE="offline")
    extra = ["--tracker", ",".join(TRACKED)] if TRACKED else []
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", grid, "--data-root", tree, "--results", tmp / "results", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp / "results" / "tiny"


def done_trials(grid_dir: Path) -> dict[Path, Trial]:
    return {
        d: Trial(**json.loads((d / "metrics.json").read_text())["trial"])
        for d in grid_dir.iterdir()
        if (d / "DONE").is_file()
    }


def test_every_trial_has_a_named_tensorboard_run_with_its_epochs(tracked_run):
    proc, grid_dir = tracked_run
    done = done_trials(grid_dir)
    assert len(done) == 2
    assert sorted(p.name for p in (grid_dir / "tensorboard").iterdir()) == sorted(
        f"alexnet-scratch-{t.loss}-freeze0-sub1-seed0-{d.name}" for d, t in done.items()
    )
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
def test_mlflow_tracker_logs_each_trial_as_a_run_in_the_grids_sqlite_store(tracked_run):
    import mlflow

    proc, grid_dir = tracked_run
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
def test_wandb_tracker_writes_offline_runs_into_the_results(tracked_run):
    proc, grid_dir = tracked_run
    runs = sorted((grid_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    # W&B's offline log is binary (its reader lives in the Go core): each run's records name the run and
    # its project, and carry the epoch metrics
    names = {tracking.run_name(t).encode() for t in done_trials(grid_dir).values()}
    for path in runs:
        data = path.read_bytes()
        assert sum(name in data for name in names) == 1 and b"tiny" in data and b"val_auc" in data
    assert f"offline runs: wandb sync {grid_dir / 'wandb'}/offline-run-*" in proc.stdout


class RayTrial:
    """What a logger callback reads of Ray's Trial: its name (str) and the parameters the grid varied."""

    def __init__(self, name: str, evaluated_params: dict) -> None:
        self.name, self.evaluated_params = name, evaluated_params

    def __str__(self) -> str:
        return self.name


def row(epoch: int, auc: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "val_loss": 0.5,
        "val_auc": auc,
        "lr": 1e-3,
        "seconds": 2.0,
        "train_images_per_s": 100.0 * epoch,
        "training_iteration": 1,
        "pid": 7,
        "config": {},
    }


def test_a_resumed_trial_continues_its_tensorboard_run_by_epoch(tmp_path):
    """A second Tuner (a resumed grid, a retry alone) writes on into the same run; Ray's count restarts, epochs don't."""
    params = {"trial": {"arch": "alexnet", "lr": 1e-3, "pretrained": False}, "runtime": Runtime(), "other": None}
    first = tracking.TensorBoard(tmp_path)
    trial = RayTrial("run", params)
    first.log_trial_start(trial)
    first.log_trial_result(1, trial, row(1, float("nan")))  # AUROC undefined: a gap, not a point
    first.log_trial_result(2, trial, {"failed": 1})  # a failure notice: no epoch
    first.on_experiment_end([trial])  # stopped mid-trial
    again = tracking.TensorBoard(tmp_path)
    trial = RayTrial("run", params)
    again.log_trial_start(trial)
    again.log_trial_result(1, trial, row(2, 0.7))
    again.log_trial_end(trial)
    events = read_events(tmp_path / "run")
    got = scalars(events)
    assert got["loss/train"] == pytest.approx({1: 1.0, 2: 0.5}) and got["speed/train_images_per_s"] == {1: 100, 2: 200}
    assert got["auroc/val"] == pytest.approx({2: 0.7})
    assert set(got) == set(tracking.SCALARS.values())  # pid, training_iteration, config: Ray's, not the trial's
    # the Runtime object and None are left out of the hparams; the trial's fields go in
    assert hparams(events) == pytest.approx({"trial/arch": "alexnet", "trial/lr": 1e-3, "trial/pretrained": False})


PAPER = "grids/paper.yaml"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tracker", "mlfow"], "--tracker: unknown tracker 'mlfow' (did you mean 'mlflow'?); valid: mlflow, wandb"),
        (["--tracker", "wandb,tensorbord"], "unknown tracker 'tensorbord'"),
    ],
)
@pytest.mark.parametrize("command", [["run", PAPER], ["search", "grids/search.yaml"]])
def test_unknown_tracker_is_one_line_exit_2(tmp_path, capsys, command, argv, message):
    for dry in (["--dry-run"], ["--results", str(tmp_path / "r")]):
        assert cli.main([*command, *argv, *dry]) == 2
        err = capsys.readouterr().err
        assert err.startswith("harness: error: ") and err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "r").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_missing_tracker_package_names_the_extra(tmp_path, capsys, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # what an environment without it gives: ImportError
    assert cli.main(["run", PAPER, "--tracker", package, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"harness: error: --tracker {package}: the {package} package is not installed; "
        f"install it with: pip install 'harness[{package}]'"
    )
    assert not (tmp_path / "r").exists()


def test_wandb_without_a_login_is_refused_before_trials(monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(wandb, "login", lambda **kw: False)
    with pytest.raises(ConfigError, match="no W&B login; set WANDB_API_KEY"):
        tracking.parse(["wandb"])


def test_tracker_names_repeat_or_come_as_a_comma_list(monkeypatch):
    monkeypatch.setattr(tracking, "check", lambda names: None)
    assert tracking.parse(["mlflow,wandb", "mlflow", " wandb "]) == ("mlflow", "wandb")
    assert tracking.parse(None) == ()


def test_run_name_is_the_label_and_key_and_safe_as_a_folder():
    trial = Trial(arch="vit_small_patch16_224.augreg_in21k", loss="focal", subset_fraction=0.5, pretrained=True)
    name = tracking.run_name(trial)
    assert name == f"vit_small_patch16_224.augreg_in21k-pretrained-focal-freeze0-sub0.5-seed0-{trial.key}"
    assert tracking.run_name(Trial(arch="a b/c")).startswith("a_b-c-scratch-")
