"""Tests for harness.train: optimisers from the registry, saved logits, precise BatchNorm, background checkpoints."""

from __future__ import annotations

import errno
import logging
import threading

import numpy as np
import pytest
import torch
from torch import nn

from harness import metrics, models, rescore, store, train
from harness.checkpoint import CheckpointWriter
from harness.config import KEYED_WHEN_SET, TRIAL_FIELDS, ConfigError, Runtime, Trial, trial_from_dict
from harness.data import loader

# 21 training images of the tiny tree at batch 8: two steps an epoch.
ALEXNET = Trial(dataset="nih", arch="alexnet", image_size=64, epochs=3, batch_size=8, lr=1e-3, lr_step=2)


@pytest.fixture(scope="module")
def runtime(nih_tree, tmp_path_factory) -> Runtime:
    cache = tmp_path_factory.mktemp("cache")
    return Runtime(data_root=str(nih_tree), cache_dir=str(cache), device="cpu", progress=False, workers=1)


@pytest.fixture(scope="module")
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


# --- optimisers, parametrised over the registry ---


@pytest.mark.parametrize("name", train.OPTIMIZERS.names())
def test_every_optimizer_steps_the_trainable_weights_and_leaves_frozen_ones(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # All parameters, frozen ones too, and weight decay: a frozen weight has no gradient and must not move.
    optimizer = train.OPTIMIZERS[name](model.parameters(), Trial(optimizer=name, lr=1e-2, weight_decay=0.1))
    model(torch.randn(16, 4)).square().mean().backward()
    optimizer.step()
    after = model.state_dict()
    for key in ("0.weight", "0.bias"):
        assert torch.equal(after[key], before[key]), key
    for key in ("2.weight", "2.bias"):
        assert not torch.equal(after[key], before[key]), key
    assert bool(optimizer.defaults.get("fused")) == (name != "sgd")  # Adam and AdamW take the fused kernel


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_the_fused_kernel_matches_the_per_tensor_loop_to_rounding(name):
    """The fused step is the same arithmetic in one pass: it may differ only at the last bits."""
    torch.manual_seed(0)
    models_ = [nn.Linear(64, 14) for _ in range(2)]
    models_[1].load_state_dict(models_[0].state_dict())
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    opts = [
        train.OPTIMIZERS[name](models_[0].parameters(), Trial(optimizer=name, lr=1e-3, weight_decay=0.01)),
        cls(models_[1].parameters(), lr=1e-3, weight_decay=0.01),
    ]
    x = torch.randn(32, 64)
    for _ in range(20):
        for m, o in zip(models_, opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(models_[0].parameters(), models_[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_takes_the_fused_kernel_when_every_parameter_is_on_cuda(name):
    model = nn.Linear(4, 2).cuda()
    optimizer = train.OPTIMIZERS[name](model.parameters(), Trial(optimizer=name))
    assert optimizer.defaults["fused"] is True
    model(torch.randn(3, 4, device="cuda")).sum().backward()
    optimizer.step()


# --- the bn_recalibrate field: validated, and no stored trial changes its key ---


def test_keys_of_stored_trials_stay_as_they_were():
    assert Trial().key == "6094758837cb"  # computed before bn_recalibrate existed
    assert Trial(arch="inception_v3", pretrained=True, loss="focal", freeze=3, seed=2).key == "08afd3377191"
    assert ALEXNET.replace(dataset="synthetic", batch_size=32, lr_step=1, epochs=2).key == "9dcd164b9603"
    assert Trial(bn_recalibrate=0).key == Trial().key
    assert len({Trial(bn_recalibrate=n).key for n in (0, 4, 16)}) == 3


def test_every_field_added_since_the_first_keys_is_left_out_of_the_key_at_its_default():
    first = [
        "dataset",
        "arch",
        "pretrained",
        "loss",
        "focal_gamma",
        "focal_alpha",
        "asl_gamma_neg",
        "asl_gamma_pos",
        "asl_clip",
        "freeze",
        "subset_fraction",
        "subset_test",
        "val_fraction",
        "image_size",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "optimizer",
        "lr",
        "weight_decay",
        "lr_step",
        "lr_gamma",
        "augment",
        "seed",
        "cam",
    ]
    assert set(TRIAL_FIELDS) - set(first) == set(KEYED_WHEN_SET)
    assert all(TRIAL_FIELDS[name].default == default for name, default in KEYED_WHEN_SET.items())


@pytest.mark.parametrize(
    "value,message",
    [
        (-1, r"out of range; valid: an integer >= 0: training batches .* 0 = off"),
        (1.5, "not a valid int"),
        (True, "not a valid int"),
        (16.0, r"must be written as an integer \(16\)"),
    ],
)
def test_bn_recalibrate_is_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        trial_from_dict({"bn_recalibrate": value})


def test_bn_recalibrate_from_the_command_line():
    assert trial_from_dict({"bn_recalibrate": "16"}).bn_recalibrate == 16


# --- logits saved beside the probabilities ---


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


# --- precise BatchNorm ---


def test_recalibration_resets_only_the_batchnorms_that_train_and_leaves_the_rest_as_it_was():
    trial = Trial(arch="resnet50", image_size=32, freeze=1, batch_size=4, bn_recalibrate=2)
    torch.manual_seed(0)
    model = models.build(trial)
    frozen, trained = model.bn1, model.layer1[0].bn1  # the stem is frozen at freeze=1
    assert frozen not in models.trained_batchnorms(model, trial) and trained in models.trained_batchnorms(model, trial)
    for bn in (frozen, trained):
        bn.running_mean.fill_(5.0)
    images = np.random.default_rng(0).integers(0, 255, (12, 36, 36), dtype=np.uint8)
    batches = loader.Batches(images, np.zeros((12, 14), np.float32), batch_size=4, crop=32, train=True)
    rng = torch.get_rng_state()
    train.recalibrate_batchnorm(model, train.centre_crops(batches), trial=trial, device=torch.device("cpu"))
    assert torch.all(frozen.running_mean == 5.0) and not torch.any(trained.running_mean == 5.0)
    assert trained.num_batches_tracked.item() == 2 and trained.momentum == 0.1  # two batches; momentum restored
    assert not model.training and not trained.training
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drew from the global generator
    assert batches.augment  # the training batches keep their augmentation


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


# --- checkpoints written in the background ---


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


def test_the_writer_writes_the_state_as_submitted_not_as_training_changes_it(tmp_path, monkeypatch):
    gate = threading.Event()
    real_save = store.TrialFiles.save_resume
    monkeypatch.setattr(store.TrialFiles, "save_resume", lambda self, state: (gate.wait(30), real_save(self, state)))
    files = store.TrialFiles(tmp_path)
    weights, history = torch.zeros(3), [{"epoch": 1}]
    with CheckpointWriter(files) as writer:
        writer.submit({"model": {"w": weights}, "history": history, "epoch": 0}, best=True)
        weights += 1  # the next optimiser step, in place
        history.append({"epoch": 2})
        gate.set()
        writer.submit({"model": {"w": weights}, "history": history, "epoch": 1}, best=False)
        weights += 1
    state = files.load_resume()
    assert state["epoch"] == 1 and state["history"] == [{"epoch": 1}, {"epoch": 2}]
    assert torch.equal(state["model"]["w"], torch.ones(3))
    assert torch.equal(files.load_weights()["w"], torch.zeros(3))  # written with epoch 0, not rewritten
