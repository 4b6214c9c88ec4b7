"""Whole trials through train.run_trial on the tiny tree: saved logits, the focal loss recomputed, precise BatchNorm, checkpoints written off the critical path, a stopped trial resumed to the same result."""

from __future__ import annotations

import errno
import hashlib
import logging
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from support import alexnet_state, saved

from harness import metrics, models, rescore, store, train
from harness.config import Runtime, Trial
from harness.gridfile import load_grid

# 21 training images of the tiny tree at batch 8: two steps an epoch.
ALEXNET = Trial(dataset="nih", arch="alexnet", image_size=64, epochs=3, batch_size=8, lr=1e-3, lr_step=2)


@pytest.fixture(scope="session")
def runtime(nih_tree, tmp_path_factory) -> Runtime:
    cache = tmp_path_factory.mktemp("cache")
    return Runtime(data_root=str(nih_tree), cache_dir=str(cache), device="cpu", progress=False, workers=1)


@pytest.fixture(scope="session")
def alexnet_run(runtime, tmp_path_factory):
    """ALEXNET trained once, as every run of it must end: (metrics, its trial folder)."""
    out = tmp_path_factory.mktemp("alexnet")
    return train.run_trial(ALEXNET, runtime, out_dir=out), store.TrialFiles(out)


def same_result(files: store.TrialFiles, reference: store.TrialFiles) -> None:
    """Predictions, history (timings aside) and metrics equal to the reference run's."""
    got, want = files.read_predictions(), reference.read_predictions()
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    def untimed(rows):
        return [{k: v for k, v in row.items() if k not in ("seconds", "train_images_per_s")} for row in rows]

    assert untimed(files.read_history()) == untimed(reference.read_history())
    assert files.read_metrics()["auc_macro"] == reference.read_metrics()["auc_macro"]


def test_predictions_hold_float32_logits_whose_sigmoid_are_the_probabilities(alexnet_run):
    _, files = alexnet_run
    saved = files.read_predictions()
    for probs, logits in (("probs", "logits"), ("val_probs", "val_logits")):
        assert saved[logits].dtype == np.float32 and saved[logits].shape == saved[probs].shape
        np.testing.assert_array_equal(torch.sigmoid(torch.from_numpy(saved[logits])).numpy(), saved[probs])


def test_metrics_report_the_focal_loss_with_the_trials_own_parameters_and_recompute_the_same(runtime, tmp_path):
    trial = ALEXNET.replace(epochs=1, loss="focal", focal_gamma=1.0, focal_alpha=0.5)
    files = store.Store(tmp_path).begin(trial, "focal")  # trial.json, which a recompute reads, as a run writes it
    result = train.run_trial(trial, runtime, out_dir=files.path)
    p = files.read_predictions()
    own = metrics.focal_loss(p["probs"], p["labels"], gamma=1.0, alpha=0.5)
    assert result["focal"] == pytest.approx(own, abs=1e-12)
    assert own != pytest.approx(metrics.focal_loss(p["probs"], p["labels"], gamma=2.0, alpha=0.25))
    assert rescore.rebuilt_metrics(files)["focal"] == result["focal"]


def test_recalibration_keeps_a_smoke_sized_scratch_inception_from_saturating(runtime, tmp_path):
    """torchvision's init, 5 steps of batch 4 at 75 px: in eval mode the outputs saturate (measured on a 2-core
    CPU: median |logit| about 900, 98% of test logits past 16.6, where float32 sigmoids are exactly 0 or 1).
    Recalibrated from 4 training batches: median |logit| about 4, 2% past 16.6."""
    trial = Trial(dataset="nih", arch="inception_v3", image_size=75, epochs=1, batch_size=4, lr=1e-3)

    def saturated(recalibrate: int) -> float:
        out = tmp_path / str(recalibrate)
        train.run_trial(trial.replace(bn_recalibrate=recalibrate), runtime, out_dir=out)
        saved = store.TrialFiles(out).read_predictions()
        logits = np.concatenate([saved["logits"], saved["val_logits"]])
        return float(np.mean(np.abs(logits) > 16.6))

    assert saturated(0) > 0.5
    assert saturated(4) < 0.1


def test_checkpoints_are_written_while_the_next_epoch_trains(runtime, alexnet_run, tmp_path, monkeypatch):
    """Each epoch's last.pt write is held until the next epoch's training has started: a writer on the training
    thread could never see that (it would time out). The files end complete, and the result is unchanged."""
    started: dict[int, threading.Event] = {}
    real_epoch, real_save = train.train_one_epoch, store.TrialFiles.save_resume
    seen = []

    def tracked_epoch(*args, epoch, **kwargs):
        started.setdefault(epoch, threading.Event()).set()
        return real_epoch(*args, epoch=epoch, **kwargs)

    def slow_save(self, state):
        epoch = state["epoch"]
        on_disk = self.load_resume()  # meanwhile the previous epoch's file is there, complete
        following = epoch + 1 < ALEXNET.epochs and started.setdefault(epoch + 1, threading.Event()).wait(timeout=30)
        seen.append((epoch, following, None if on_disk is None else on_disk["epoch"]))
        real_save(self, state)

    monkeypatch.setattr(train, "train_one_epoch", tracked_epoch)
    monkeypatch.setattr(store.TrialFiles, "save_resume", slow_save)
    files = store.TrialFiles(tmp_path / "slow")
    train.run_trial(ALEXNET, runtime, out_dir=files.path)
    assert seen == [(0, True, None), (1, True, 0), (2, False, 1)]
    assert files.load_resume()["epoch"] == ALEXNET.epochs - 1 and files.has_weights()
    same_result(files, alexnet_run[1])


def test_a_failed_background_write_fails_the_trial_with_its_message(runtime, tmp_path, monkeypatch):
    def full_disk(self, state):
        raise store.WriteFailed(errno.ENOSPC, f"no space left on device while writing {self.path}/last.pt")

    monkeypatch.setattr(store.TrialFiles, "save_resume", full_disk)
    files = store.TrialFiles(tmp_path / "full")
    with pytest.raises(store.WriteFailed, match="no space left on device while writing .*last.pt"):
        train.run_trial(ALEXNET, runtime, out_dir=files.path)
    assert not files.has_metrics()


def test_a_stopped_trial_resumes_from_its_background_checkpoint_to_the_same_result(
    runtime, alexnet_run, tmp_path, caplog
):
    class Stopped(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stopped

    files = store.TrialFiles(tmp_path / "stopped")
    with pytest.raises(Stopped):
        train.run_trial(ALEXNET, runtime, out_dir=files.path, report=stop_after_two)
    assert files.load_resume()["epoch"] == 1  # the write in flight when the trial stopped was waited for
    with caplog.at_level(logging.INFO, logger="harness.train"):
        train.run_trial(ALEXNET, runtime, out_dir=files.path)
    assert "resuming after epoch 2" in caplog.text
    same_result(files, alexnet_run[1])
    assert files.read_metrics()["resumed_after_epoch"] == 2  # a researcher can see the trial was resumed
    assert "resumed_after_epoch" not in alexnet_run[0]  # a trial that ran straight through reads as before


def test_a_trial_trains_from_the_file_and_records_it(runtime, tmp_path, monkeypatch):
    """Before training the net holds the file's tensors; frozen stages still do after; metrics.json names the file."""
    state = alexnet_state(3)
    path = saved(tmp_path / "nih-alexnet-selfsup.pt", {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    trial = load_grid(grid(tmp_path, f"weights: {path}, epochs: 2, batch_size: 8, freeze: 2")).trials[0]
    built = []
    real_build = models.build

    def build(t, **kwargs):
        model = real_build(t, **kwargs)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(models, "build", build)
    result = train.run_trial(trial, runtime, out_dir=tmp_path / "out")
    assert len(built) == 1
    for key, value in state.items():
        if not key.startswith("classifier.6."):
            assert torch.equal(built[0][key], value), key
    trained = store.TrialFiles(tmp_path / "out").load_weights()
    for key in ("features.0.weight", "features.3.bias"):  # conv1 and conv2: frozen by freeze=2
        assert torch.equal(trained[key], state[key]), key
    assert not torch.equal(trained["features.6.weight"], state["features.6.weight"]), "conv3 trains"
    record = store.TrialFiles(tmp_path / "out").read_metrics()["weights"]
    assert record == result["weights"]
    assert record["file"] == path and record["source"] == "file" and record["imagenet_verified"] is False
    assert record["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert "NIH" in record["nih_overlap"]


def grid(tmp_path, base: str) -> str:
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(f"base: {{arch: alexnet, image_size: 64, {base}}}\naxes: {{loss: [bce, focal]}}\n"))
    return str(p)
