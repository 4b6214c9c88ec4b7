"""The hand-written parts pinned to the libraries and published outputs they must agree with.

A trial with the harness's departures from a plain training script turned off against that script's loop; focal against torchvision.ops.sigmoid_focal_loss, asl against timm's AsymmetricLossMultiLabel, Grad-CAM
against captum's LayerGradCam on the same layer before any normalisation, DeLong against R's pROC. timm and
captum are optional extras (`pip install 'harness[timm,parity]'`): without them their tests skip.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torchvision

from harness import losses, models, store, train
from harness import metrics as M
from harness.cam import METHODS, resolve_layer
from harness.config import Runtime, Trial
from harness.data import cache
from harness.prepare import prepare_data


def batch(seed: int = 0, n: int = 16, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits spread over the range training meets (|z| up to about 10) and multi-hot targets."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 14, generator=g) * scale, torch.randint(0, 2, (n, 14), generator=g).float()


def value_and_grad(fn, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    loss = fn(z, y)
    loss.backward()
    return loss.detach(), z.grad


# --- focal: torchvision.ops.sigmoid_focal_loss ----------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, 0.5, -1.0])
def test_focal_equals_torchvision_for_gamma_at_least_one(gamma, alpha):
    z, y = batch(seed=int(gamma * 10))

    def ours(z, y):
        return losses.focal(logits=z, targets=y, gamma=gamma, alpha=alpha)

    def theirs(z, y):
        return torchvision.ops.sigmoid_focal_loss(z, y, alpha=alpha, gamma=gamma, reduction="mean")

    (a, ga), (b, gb) = value_and_grad(ours, z, y), value_and_grad(theirs, z, y)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-8)


def test_focal_below_gamma_one_is_why_it_is_hand_written():
    """At a confident logit torchvision's (1 - p_t) ** gamma has an infinite gradient for gamma < 1; ours stays finite."""
    z, y = torch.tensor([[40.0, -40.0, 1.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    _, theirs = value_and_grad(lambda z, y: torchvision.ops.sigmoid_focal_loss(z, y, gamma=0.5, reduction="mean"), z, y)
    _, ours = value_and_grad(lambda z, y: losses.focal(logits=z, targets=y, gamma=0.5, alpha=0.25), z, y)
    assert not torch.isfinite(theirs).all()
    assert torch.isfinite(ours).all()


# --- asl: timm's AsymmetricLossMultiLabel ---------------------------------------------------------------


@pytest.mark.parametrize(
    "gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.3), (1.0, 2.0, 0.0), (4.0, 0.0, 0.05)]
)
def test_asl_equals_timm_scaled_to_a_mean(gamma_neg, gamma_pos, clip):
    timm_loss = pytest.importorskip("timm.loss")
    cls = timm_loss.AsymmetricLossMultiLabel
    # timm sums over every element (newer versions name that reduction "sum"; older ones only sum).
    summed = {"reduction": "sum"} if "reduction" in inspect.signature(cls).parameters else {}
    theirs_fn = cls(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, **summed)
    z, y = batch(seed=7)

    def ours(z, y):
        return losses.asl(logits=z, targets=y, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)

    def theirs(z, y):
        return theirs_fn(z, y) / z.numel()

    (a, ga), (b, gb) = value_and_grad(ours, z, y), value_and_grad(theirs, z, y)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-8)


# --- Grad-CAM: captum's LayerGradCam, before normalisation ----------------------------------------------


# Three torchvision CNNs, and every arch of another family that is installed (timm's, with its token grids).
CAM_ARCHS = ["resnet50", "densenet121", "efficientnet_b0"] + [
    a for a in models.MODELS.names() if models.spec(a).family != "torchvision"
]


@pytest.mark.parametrize("arch", CAM_ARCHS)
def test_gradcam_equals_captum_layer_gradcam(arch):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    trial = Trial(arch=arch, image_size=64)
    model = models.build(trial).eval()
    layer_name = models.spec(arch).cam_layer
    layer = resolve_layer(model, layer_name)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 5, 9])

    ours, _ = METHODS["gradcam"](model, x, targets, layer)  # (B, h, w): weighted sum and ReLU, not yet resized
    theirs = captum_attr.LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    assert theirs.shape == (3, 1, *ours.shape[1:])
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs[:, 0].detach(), rtol=1e-4, atol=1e-6 * float(ours.abs().max()))


# --- DeLong: R's pROC -----------------------------------------------------------------------------------

# pROC's aSAH data (Turck et al., Intensive Care Med 2010;36:107; data/aSAH.RData of github.com/xrobin/pROC):
# 113 patients in pROC's order; outcome 1 = Poor. wfns is the WFNS grade (1-5); s100b and ndka are the two
# laboratory markers.
ASAH_POOR = (
    "00001101001011001011101000000000100110110000000001100010001010011101101111000110100000010000000000001111110001000"
)
ASAH_WFNS = (
    "11113254125255125225211112121134214541425511241125521251222151125214524414121421232421451154221113125225552445111"
)
ASAH_S100B = """
0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33 0.09 0.09 0.07 0.11
0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96 0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11
0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27
0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08
0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48
"""
ASAH_NDKA = """
3.01 8.54 8.09 10.42 17.4 12.75 6.0 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11 32.37 54.82 32.41
49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04 21.93 8.02 7.42 8.38 6.59 9.63 13.12
7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39
11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48 17.3 12.71 9.44
11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26
47.61 11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45
"""

# pROC's own expected outputs for roc.test(a, b) (DeLong, paired, two-sided), from its test suite:
# tests/testthat/test-roc.test.R of github.com/xrobin/pROC ("roc.test statistic and p are as expected with
# defaults"); the curves are roc(aSAH$outcome, aSAH$<marker>) from tests/testthat/helper-rocs.R.
PROC_ROC_TEST = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054),
]


def asah() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    poor = np.array([int(c) for c in ASAH_POOR])
    markers = {
        "wfns": np.array([float(c) for c in ASAH_WFNS]),
        "s100b": np.array(ASAH_S100B.split(), dtype=float),
        "ndka": np.array(ASAH_NDKA.split(), dtype=float),
    }
    assert len(poor) == 113 and poor.sum() == 41 and all(len(v) == 113 for v in markers.values())
    return poor, markers


@pytest.mark.parametrize("a,b,z,p", PROC_ROC_TEST, ids=[f"{a}-{b}" for a, b, _, _ in PROC_ROC_TEST])
def test_delong_equals_proc_roc_test(a, b, z, p):
    poor, markers = asah()
    # delong takes probabilities; v / (1 + v) keeps every marker's order and ties, and DeLong only sees ranks.
    r = M.delong(probs_a=markers[a] / (1 + markers[a]), probs_b=markers[b] / (1 + markers[b]), labels=poor)
    assert r["z"] == pytest.approx(z, rel=1e-10)
    assert r["p"] == pytest.approx(p, rel=1e-9)


def test_delong_auc_equals_procs_printed_area():
    """pROC's documented example, roc(aSAH$outcome, aSAH$s100b), prints 'Area under the curve: 0.7314'."""
    poor, markers = asah()
    s = markers["s100b"] / (1 + markers["s100b"])
    r = M.delong(probs_a=s, probs_b=markers["wfns"] / 6, labels=poor)
    assert round(r["auc_a"], 4) == 0.7314


# --- a trial against a plain PyTorch loop ----------------------------------------------------------------


def test_a_trial_with_no_hold_out_trains_as_a_plain_pytorch_loop(tmp_path, small_synthetic_tree):
    """val_fraction 0 (no validation hold-out, so no best-validation checkpoint: the last epoch is kept): the weights
    a trial stores equal those of torchvision's reference loop (model.train(); zero_grad, BCEWithLogitsLoss,
    backward, torch.optim.Adam's step; StepLR per epoch) given the same initial weights and the same batches, to
    float tolerance (the trial's fused Adam rounds differently at the last bits: about one weight in 10^7 moves by 1e-6).
    With eval_resize whole, its test predictions are that model's on the whole films resized to the input size."""
    trial = Trial(
        dataset="synthetic",
        arch="alexnet",
        image_size=64,
        epochs=2,
        batch_size=32,
        lr=1e-3,
        lr_step=1,
        val_fraction=0,
        eval_resize="whole",
    )
    runtime = Runtime(
        data_root=str(small_synthetic_tree), cache_dir=str(tmp_path / "cache"), device="cpu", progress=False
    )
    files = store.TrialFiles(tmp_path / "trial")
    train.run_trial(trial, runtime, out_dir=files.path)
    stored = files.load_weights()

    td = prepare_data(trial, runtime)
    assert len(td.rows["val"]) == 0 and len(td.rows["train"]) == 96  # all of train_val trains
    torch.manual_seed(trial.seed)  # the trial's initialisation draws
    model = models.build(trial)
    optimizer = torch.optim.Adam(model.parameters(), lr=trial.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=trial.lr_step, gamma=trial.lr_gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = td.batches("train", trial, device=torch.device("cpu"), train=True)  # the same crops, flips, order
    for epoch in range(trial.epochs):
        model.train()
        batches.set_epoch(epoch)
        for x, y in batches:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        scheduler.step()
    moved = 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(stored[name], value, rtol=1e-4, atol=1e-5)  # 1% of one Adam step (lr)
        moved += not torch.equal(value, models.build(trial).state_dict()[name])
    assert moved > 0  # the loop trained

    assert td.images["train"].shape[1] == 73 and td.images["test"].shape[1] == 64  # whole films, not a centre crop
    paths = td.data.table["path"].to_numpy()[td.rows["test"]]
    films = np.stack([cache.read_gray(str(p), 64) for p in paths])
    assert np.array_equal(td.images["test"], films)
    model.eval()
    with torch.no_grad():
        plain = torch.cat(
            [torch.sigmoid(model(x)) for x, _ in td.batches("test", trial, device=torch.device("cpu"), train=False)]
        )
    np.testing.assert_allclose(files.read_predictions()["probs"], plain.numpy(), atol=1e-4)
