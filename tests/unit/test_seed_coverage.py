"""The seed-level interval keeps its promise: over simulated test sets and trainings, the 95% interval of a
setting run with k seeds covers the setting's expected AUROC (over seeds, on the population) at least 93% of the
time, for k = 3 and 5 and a seed-to-seed SD from 0 to 4.5 times the test set's standard error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness import metrics

N, PREVALENCE, SEPARATION = 1000, 0.3, 1.0
NOISE = 1.25  # variance of a score given the label: a patient's own difficulty (1) and a seed's noise (0.25)
N_BOOT = 200


def auroc_of(separation: float) -> float:
    """The population AUROC of scores separation * y + N(0, NOISE)."""
    return float(sps.norm.cdf(separation / math.sqrt(2 * NOISE)))


def expected_auroc(tau: float) -> float:
    """E over seeds of the population AUROC when a seed shifts the separation by N(0, tau^2)."""
    x, w = np.polynomial.hermite_e.hermegauss(40)
    return float(np.sum(w * [auroc_of(SEPARATION + tau * t) for t in x]) / np.sum(w))


def draw_test_set(rng):
    y = (rng.random((N, 1)) < PREVALENCE).astype(np.uint8)
    return y, rng.normal(size=(N, 1))  # labels and each patient's difficulty, shared by every seed


def seed_probs(rng, y, difficulty, shift):
    score = (SEPARATION + shift) * y + difficulty + rng.normal(scale=math.sqrt(NOISE - 1), size=y.shape)
    return 1 / (1 + np.exp(-score))


def patient_se() -> float:
    """The test set's standard error of one seed's AUROC at this size (from a pilot bootstrap)."""
    rng = np.random.default_rng(0)
    y, d = draw_test_set(rng)
    lo, hi = metrics.bootstrap(seed_probs(rng, y, d, 0.0), y, np.arange(N), stats=("auc",), n_boot=400)["auc"]["macro"]
    return (hi - lo) / (2 * 1.96)


def coverage(k: int, ratio: float, reps: int) -> float:
    se = patient_se()
    slope = sps.norm.pdf(SEPARATION / math.sqrt(2 * NOISE)) / math.sqrt(2 * NOISE)  # d AUROC / d separation
    tau = ratio * se / slope  # the seed SD of the separation that gives a seed SD of ratio x se in AUROC
    truth = expected_auroc(tau)
    rng = np.random.default_rng(1000 * k + int(10 * ratio))
    covered = 0
    for rep in range(reps):
        y, d = draw_test_set(rng)
        probs = [seed_probs(rng, y, d, tau * rng.normal()) for _ in range(k)]
        res = metrics.seed_bootstrap(probs, y, np.arange(N), stats=("auc",), n_boot=N_BOOT, seed=rep)
        lo, hi = res["auc"]["ci"]
        covered += lo <= truth <= hi
    return covered / reps


def test_three_seeds_whose_spread_dominates_are_covered():
    """The hardest case in the default run: 3 seeds, seed SD 4.5 times the test set's SE. 150 draws estimate the
    coverage within about 0.02, so this guards against the percentile interval's 0.78; the 0.93 bound over every
    case, with 400 draws each, is the -m slow test below."""
    assert coverage(3, 4.5, reps=150) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("ratio", [0.0, 1.0, 2.0, 4.5])
def test_the_seed_level_interval_covers_at_least_93_percent(k, ratio):
    assert coverage(k, ratio, reps=400) >= 0.93
