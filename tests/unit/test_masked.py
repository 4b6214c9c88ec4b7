"""Unknown labels (NaN) are left out: per-finding metrics against scikit-learn on the known subset, the joint
patient bootstrap, the masked loss in value and gradient, and a CheXpert-layout trial end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from harness import losses, metrics, prepare, train
from harness.config import Runtime, Trial
from harness.data.nih import FINDINGS
from harness.data.synthetic.layouts import generate_layout


def _data(seed=0, n=120, f=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, f)) < 0.3).astype(np.float64)
    p = np.clip(0.3 * y + rng.random((n, f)) * 0.7, 0, 1)
    y[rng.random((n, f)) < 0.3] = np.nan
    y[:, -1] = np.nan  # one finding this dataset never labels
    return p, y, rng.integers(0, 40, n)


def test_per_finding_auroc_is_sklearns_on_the_known_subset():
    p, y, _ = _data()
    names = [f"f{i}" for i in range(4)]
    per = metrics.per_finding(p, y, names=names)
    for j in range(3):
        k = np.isfinite(y[:, j])
        assert per[names[j]]["auc"] == pytest.approx(roc_auc_score(y[k, j], p[k, j]), abs=1e-12)
        assert per[names[j]]["n_known"] == int(k.sum())
    assert per["f3"]["auc"] is None and per["f3"]["undefined"] == "not labelled in this dataset"


def test_evaluate_leaves_unknown_labels_out_and_reports_what_is_labelled():
    p, y, pids = _data()
    names = [f"f{i}" for i in range(4)]
    out = metrics.evaluate(p, y, names=names, patient_ids=pids, n_boot=200, val_probs=p, val_labels=y)
    aucs = [roc_auc_score(y[np.isfinite(y[:, j]), j], p[np.isfinite(y[:, j]), j]) for j in range(3)]
    assert out["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert out["labelled"] == names[:3] and "f3" in out["undefined"]
    lo, hi = out["auc_macro_ci"]
    assert lo < out["auc_macro"] < hi
    k = np.isfinite(y)
    assert out["bce"] == pytest.approx(metrics.bce_loss(p[k], y[k]))
    # Fully labelled inputs still take the unmasked path, unchanged.
    full = np.nan_to_num(y[:, :3])
    assert "labelled" not in metrics.evaluate(p[:, :3], full, names=names[:3], patient_ids=pids, n_boot=50)


def test_the_masked_bootstrap_equals_the_plain_one_where_nothing_is_masked():
    p, y, pids = _data()
    full = np.nan_to_num(y[:, :3])
    from harness.metrics.masked import bootstrap_masked

    a = metrics.bootstrap(p[:, :3], full, pids, n_boot=100, seed=3)
    b = bootstrap_masked(p[:, :3], full, pids, n_boot=100, seed=3)
    assert a["auc"] == b["auc"] and a["f1"] == b["f1"]


@pytest.mark.parametrize("name", losses.LOSSES.names())
def test_the_masked_loss_counts_only_known_targets_in_value_and_gradient(name):
    torch.manual_seed(0)
    trial = Trial(dataset="chexpert", loss=name)
    loss_fn = losses.make_loss(trial, prevalence=np.full(14, 0.2))
    plain = losses.make_loss(Trial(loss=name), prevalence=np.full(14, 0.2))
    assert isinstance(loss_fn, losses.MaskedLoss) and not isinstance(plain, losses.MaskedLoss)
    logits = torch.randn(8, 14, requires_grad=True)
    targets = (torch.rand(8, 14) < 0.3).float()
    masked = targets.clone()
    masked[5:] = float("nan")  # whole images unknown: the loss is the plain one on the rest
    value = loss_fn(logits, masked)
    torch.testing.assert_close(value, plain(logits[:5], targets[:5]), rtol=1e-5, atol=1e-7)
    value.backward()
    assert logits.grad[5:].abs().max() == 0 and logits.grad[:5].abs().max() > 0


def test_a_chexpert_trial_trains_on_its_known_labels_and_is_recorded_synthetic(tmp_path):
    root = generate_layout("chexpert", tmp_path / "chexpert", n=40, size=40, seed=2, progress=False)
    runtime = Runtime(cache_dir=str(tmp_path / "cache"), device="cpu", workers=1, progress=False)
    runtime.data_roots["chexpert"] = str(root)
    trial = Trial(dataset="chexpert", arch="alexnet", image_size=64, epochs=1, batch_size=8, lr=1e-3)
    [resolved], runtime = prepare.resolve_dataset([trial], runtime)
    assert resolved.dataset == "synthetic-chexpert" and resolved.key != trial.key
    result = train.run_trial(resolved, runtime, out_dir=tmp_path / "trial")
    assert result["dataset"] == "synthetic-chexpert"
    assert set(result["labelled"]) <= {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                                       "Pneumonia", "Pneumothorax"}  # fmt: skip
    assert result["per_finding"]["Mass"]["undefined"] == "not labelled in this dataset"
    with np.load(tmp_path / "trial" / "predictions.npz") as npz:
        assert npz["labels"].dtype == np.float32 and np.isnan(npz["labels"][:, FINDINGS.index("Mass")]).all()
    assert json.loads((tmp_path / "trial" / "metrics.json").read_text())["key"] == resolved.key


def test_curves_and_calibration_leave_unknown_labels_out():
    p, y, _ = _data()
    k = np.isfinite(y[:, 0])
    fpr, tpr = metrics.roc_curve_points(p[:, 0], y[:, 0])
    want = metrics.roc_curve_points(p[k, 0], y[k, 0])
    assert np.array_equal(fpr, want[0]) and np.array_equal(tpr, want[1])
    cal = metrics.calibration(p, y)
    known = np.isfinite(y)
    assert cal["ece"] == pytest.approx(metrics.calibration(p[known], y[known])["ece"])
    assert cal["ece_per_finding"][0] == pytest.approx(metrics.calibration(p[k, 0], y[k, 0])["ece"])
    assert cal["ece_per_finding"][3] is None  # known nowhere


def test_the_masked_paired_bootstrap_is_the_plain_one_where_nothing_is_masked():
    from harness.metrics.masked import paired_bootstrap_masked

    p, y, pids = _data()
    full = np.nan_to_num(y[:, :3])
    q = np.clip(p[:, :3] + np.random.default_rng(1).normal(0, 0.2, (len(p), 3)), 0, 1)
    a = metrics.paired_bootstrap(probs_a=p[:, :3], probs_b=q, labels=full, patient_ids=pids, n_boot=200, seed=4)
    b = paired_bootstrap_masked(probs_a=p[:, :3], probs_b=q, labels=full, patient_ids=pids, n_boot=200, seed=4)
    for k in ("diff", "ci", "p", "auc_a", "auc_b", "n_dropped"):
        assert b[k] == pytest.approx(a[k], abs=1e-12), k
    masked = paired_bootstrap_masked(probs_a=p, probs_b=np.c_[q, p[:, 3]], labels=y, patient_ids=pids, n_boot=200)
    k = np.isfinite(y[:, 0])
    assert masked["auc_a"] == pytest.approx(
        np.mean([roc_auc_score(y[np.isfinite(y[:, j]), j], p[np.isfinite(y[:, j]), j]) for j in range(3)])
    )
    assert k.sum() < len(y)
