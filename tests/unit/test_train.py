"""Tests for harness.train: optimisers from the registry, saved logits, precise BatchNorm, background checkpoints."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from harness import models, store, train
from harness.checkpoint import CheckpointWriter
from harness.config import KEYED_WHEN_SET, TRIAL_FIELDS, ConfigError, Trial, trial_from_dict
from harness.data import loader

# 21 training images of the tiny tree at batch 8: two steps an epoch.
ALEXNET = Trial(dataset="nih", arch="alexnet", image_size=64, epochs=3, batch_size=8, lr=1e-3, lr_step=2)


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


# --- checkpoints written in the background ---


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


def test_an_epoch_is_announced_only_once_its_checkpoint_is_on_disk_and_on_the_training_thread(tmp_path, monkeypatch):
    """What a signal or a scheduler acts on (the report) never runs ahead of the files it relies on."""
    gate = threading.Event()
    real_save = store.TrialFiles.save_resume
    monkeypatch.setattr(store.TrialFiles, "save_resume", lambda self, state: (gate.wait(30), real_save(self, state)))
    files = store.TrialFiles(tmp_path)
    announced: list[tuple[int, int | None, bool]] = []

    def announce(epoch: int) -> None:
        on_disk = files.load_resume()
        announced.append((epoch, on_disk and on_disk["epoch"], threading.current_thread() is threading.main_thread()))

    with CheckpointWriter(files) as writer:
        writer.submit({"model": {"w": torch.zeros(2)}, "epoch": 0}, best=True, then=lambda: announce(0))
        writer.poll()  # the write is held: nothing is announced, nothing blocks
        assert announced == []
        gate.set()
        while announced == []:
            writer.poll()
        writer.submit({"model": {"w": torch.ones(2)}, "epoch": 1}, best=False, then=lambda: announce(1))
    assert announced == [(0, 0, True), (1, 1, True)]  # the last one by close(), on leaving the block


def test_an_epoch_is_not_announced_after_the_trial_ended_with_an_error(tmp_path):
    announced = []
    with pytest.raises(RuntimeError, match="diverged"), CheckpointWriter(store.TrialFiles(tmp_path)) as writer:
        writer.submit({"model": {"w": torch.zeros(2)}, "epoch": 0}, best=True, then=lambda: announced.append(0))
        raise RuntimeError("diverged")
    assert announced == [] and store.TrialFiles(tmp_path).load_resume()["epoch"] == 0  # written, not announced
