"""Live tracking without a grid run: a resumed trial's TensorBoard run, the --tracker option and its errors, run names
(the event files of a real grid run are read in tests/integration/test_grid_run.py)."""

from __future__ import annotations

import sys

import pytest
from support import hparams, read_events, scalars

from harness import cli
from harness.config import ConfigError, Runtime, Trial
from harness.runner import tracking


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
