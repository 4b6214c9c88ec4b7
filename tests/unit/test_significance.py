"""Significance that can be reached: the bootstrap D-test's p has no floor at 1 / n_boot, so Holm's correction over
a report's tests can still call a large difference significant; matched seeds cancel what a seed shares."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness import metrics as M
from harness.metrics import compare


def two_models(n=300, seed=0, gap=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(np.uint8)
    good = 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) + gap * y)))
    poor = 1 / (1 + np.exp(-(rng.normal(size=(n, 3)) + 0.2 * y)))
    return good, poor, y, np.arange(n)


def test_p_is_the_difference_over_the_sd_of_its_bootstrap_distribution():
    diffs = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    assert compare.bootstrap_test(0.2, diffs) == pytest.approx(2 * sps.norm.sf(0.2 / np.std(diffs, ddof=1)))
    assert compare.bootstrap_test(0.0, np.zeros(10)) == 1.0  # identical rankings: no evidence either way
    assert compare.bootstrap_test(0.1, np.full(10, 0.1)) == 0.0
    assert compare.bootstrap_test(-0.2, -diffs) == compare.bootstrap_test(0.2, diffs)  # two-sided


def test_a_large_difference_stays_significant_after_holm_over_a_large_family():
    """A tail count's p cannot go below about 2 / n_boot (0.01 at 200 resamples): Holm over 45 tests would
    make that 0.45, whatever the data. The D-test's p goes as low as the evidence does."""
    good, poor, y, pid = two_models()
    r = M.paired_bootstrap(probs_a=good, probs_b=poor, labels=y, patient_ids=pid, n_boot=200, seed=0)
    assert r["ci"][0] > 0.2
    assert r["p"] < 1e-6 < 2 / 201
    assert M.holm([r["p"]] + [0.5] * 44)[0] < 0.05


def test_p_and_interval_agree_where_the_difference_is_clear_or_absent():
    good, poor, y, pid = two_models(seed=1)
    clear = M.paired_bootstrap(probs_a=good, probs_b=poor, labels=y, patient_ids=pid, n_boot=300)
    assert clear["p"] < 0.05 and clear["ci"][0] > 0
    same = M.paired_bootstrap(probs_a=good, probs_b=good, labels=y, patient_ids=pid, n_boot=300)
    assert same["p"] == 1.0 and same["diff"] == 0.0


def test_matched_seeds_cancel_what_a_seed_shares():
    """Seed s of both settings shares split, start and batch order: a seed effect common to both arms cancels
    when seeds are paired by value, and widens the interval when each arm's seeds are drawn on their own."""
    rng = np.random.default_rng(2)
    n = 400
    y = (rng.random((n, 2)) < 0.3).astype(np.uint8)
    noise = rng.normal(size=(n, 2))
    a, b = [], []
    for quality in (0.3, 1.0, 2.0):  # what each seed shares across both arms: a weak, a fair, a strong start
        a.append(1 / (1 + np.exp(-(noise + quality * y + 0.3 * y))))
        b.append(1 / (1 + np.exp(-(noise + quality * y))))
    kw = dict(probs_a_by_seed=a, probs_b_by_seed=b, labels=y, patient_ids=np.arange(n), n_boot=400, seed=0)
    free, matched = M.paired_seed_bootstrap(**kw), M.paired_seed_bootstrap(**kw, matched=True)
    assert matched["diff"] == free["diff"] and matched["matched"] and not free["matched"]
    assert matched["ci"][1] - matched["ci"][0] < 0.5 * (free["ci"][1] - free["ci"][0])
    assert matched["ci"][0] > 0 and matched["p"] < free["p"]
    with pytest.raises(M.MetricsError, match="as many seeds"):
        M.paired_seed_bootstrap(**{**kw, "probs_b_by_seed": b[:2]}, matched=True)
