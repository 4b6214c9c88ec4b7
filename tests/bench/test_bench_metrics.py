"""Patient-level bootstrap at the size of NIH's official test list: 25,596 images, 2,797 patients, 14 findings."""

from __future__ import annotations

import numpy as np
import pytest

from harness import metrics as M

pytestmark = pytest.mark.bench

N_IMAGES, N_PATIENTS = 25_596, 2_797
# Positives per finding on the official test list (Atelectasis ... Hernia, in NIH's order).
TEST_POSITIVES = [3279, 1069, 4658, 6112, 1748, 1623, 555, 2665, 1815, 925, 1093, 435, 1143, 86]


@pytest.fixture(scope="module")
def nih_sized():
    """Predictions shaped like a real test run: follow-up series per patient, labels shared within a patient."""
    rng = np.random.default_rng(0)
    sizes = rng.geometric(N_PATIENTS / N_IMAGES, N_PATIENTS)  # a few patients with dozens of follow-ups
    pid = np.repeat(np.arange(N_PATIENTS), sizes)[:N_IMAGES]
    pid = np.r_[pid, rng.integers(0, N_PATIENTS, N_IMAGES - len(pid))]
    prevalence = np.array(TEST_POSITIVES) / N_IMAGES
    patient_risk = rng.random((N_PATIENTS, len(prevalence))) < 2 * prevalence
    labels = (patient_risk[pid] & (rng.random((N_IMAGES, len(prevalence))) < 0.5)).astype(np.uint8)
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 1.2 * labels - 2)))
    return probs.astype(np.float32), labels, pid + 10_000


def test_bench_bootstrap_auc_f1(benchmark, nih_sized):
    probs, labels, pid = nih_sized
    out = benchmark.pedantic(
        M.bootstrap,
        args=(probs, labels, pid),
        kwargs={"stats": ("auc", "f1"), "n_boot": 1000, "seed": 0},
        rounds=3,
        iterations=1,
    )
    assert out["n_boot"] == 1000 and out["auc"]["macro"][0] < out["auc"]["macro"][1]


def test_bench_paired_bootstrap(benchmark, nih_sized):
    probs, labels, pid = nih_sized
    other = np.clip(probs + np.random.default_rng(1).normal(0, 0.05, probs.shape), 0, 1)
    out = benchmark.pedantic(
        M.paired_bootstrap,
        kwargs={"probs_a": probs, "probs_b": other, "labels": labels, "patient_ids": pid, "n_boot": 1000, "seed": 0},
        rounds=2,
        iterations=1,
    )
    assert out["ci"][0] <= out["diff"] <= out["ci"][1]
