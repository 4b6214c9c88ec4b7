"""harness.metrics against scikit-learn, hand-worked answers and slow reference implementations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score, f1_score, log_loss, recall_score, roc_auc_score, roc_curve

from harness import metrics as M
from harness.config import ConfigError
from harness.metrics import compare
from harness.metrics.bootstrap import _count_blocks, _prepare


def make_set(*, n_pat=60, per_pat=(1, 6), n_f=4, seed=0, shift=1.0, decimals=2):
    """Test predictions with several images per patient, real ties (rounded scores) and skewed prevalences."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_pat[0], per_pat[1] + 1, n_pat)
    pid = np.repeat(rng.permutation(10_000)[:n_pat] + 100, sizes)  # ids need not be 0..P-1
    n = len(pid)
    prev = np.linspace(0.1, 0.4, n_f)
    y = (rng.random((n, n_f)) < prev).astype(np.uint8)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, n_f)) + shift * y - 1)))
    return np.round(p, decimals).astype(np.float32), y, pid


def expand(counts_row, pidx):
    """The images of one resample written out explicitly: image i repeated by its patient's count."""
    return np.repeat(np.arange(len(pidx)), counts_row[pidx].astype(int))


# ------------------------------------------------------------------------------------------ point metrics


def test_per_finding_equals_sklearn():
    p, y, _ = make_set(seed=1)
    names = ["a", "b", "c", "d"]
    t = np.array([0.5, 0.3, 0.25, 0.6])
    per = M.per_finding(p, y, names=names, thresholds=t)
    for f, name in enumerate(names):
        r, pred = per[name], (p[:, f] >= t[f]).astype(int)
        assert r["auc"] == pytest.approx(roc_auc_score(y[:, f], p[:, f]), abs=1e-9)
        assert r["ap"] == pytest.approx(average_precision_score(y[:, f], p[:, f]), abs=1e-9)
        assert r["f1"] == pytest.approx(f1_score(y[:, f], pred), abs=1e-9)
        assert r["sensitivity"] == pytest.approx(recall_score(y[:, f], pred), abs=1e-9)
        assert r["specificity"] == pytest.approx(recall_score(y[:, f], pred, pos_label=0), abs=1e-9)
        assert (r["n_pos"], r["n_neg"], r["threshold"]) == (int(y[:, f].sum()), int(len(y) - y[:, f].sum()), t[f])
        assert r["undefined"] is None
    assert M.macro(per, "auc") == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-9)
    assert M.weighted(per, "auc") == pytest.approx(roc_auc_score(y, p, average="weighted"), abs=1e-9)
    assert M.macro(per, "ap") == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-9)


def test_roc_auc_equals_sklearn_bit_for_bit():
    """The fast point AUROC makes the same numbers as roc_auc_score exactly, ties and saturation included."""
    rng = np.random.default_rng(7)
    for case in range(400):
        n = int(rng.integers(2, 300))
        y = (rng.random((n, 3)) < rng.uniform(0.02, 0.6)).astype(np.int8)
        s = rng.normal(size=(n, 3)) + y * rng.uniform(0, 2)
        s = (
            s,
            np.round(s, 1),  # many ties
            (1 / (1 + np.exp(-30 * s))).astype(np.float32).astype(np.float64),  # saturated float32 sigmoid
            rng.integers(0, 3, (n, 3)).astype(np.float64),  # a few distinct values
        )[case % 4]
        got = M.roc_auc(y, s)
        for f in range(3):
            if 0 < y[:, f].sum() < n:
                assert got[f] == roc_auc_score(y[:, f], s[:, f])  # ==, not approx
            else:
                assert math.isnan(got[f])
    assert M.roc_auc(np.zeros((0, 2), np.int8), np.zeros((0, 2))).shape == (2,)


def test_losses():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, (50, 3))
    y = (rng.random((50, 3)) < 0.3).astype(int)
    assert M.bce_loss(p, y) == pytest.approx(log_loss(y.ravel(), p.ravel()), abs=1e-9)
    # focal with gamma 0 and no alpha weighting is BCE
    assert M.focal_loss(p, y, gamma=0.0, alpha=-1) == pytest.approx(M.bce_loss(p, y), abs=1e-12)
    hand = (-0.25 * 0.1**2 * math.log(0.9) - 0.75 * 0.2**2 * math.log(0.8)) / 2
    assert M.focal_loss([[0.9], [0.2]], [[1], [0]]) == pytest.approx(hand, abs=1e-12)
    # a certain, wrong prediction is clipped, not infinite
    assert math.isfinite(M.bce_loss([[0.0]], [[1]]))
    assert M.bce_loss([[0.0]], [[1]]) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_undefined_findings_are_none_with_reason_and_skipped():
    p, y, pid = make_set(seed=2, n_f=3)
    y[:, 1] = 0  # no positives
    y[:, 2] = 1  # no negatives
    names = ["ok", "none", "all"]
    per = M.per_finding(p, y, names=names)
    n = len(y)
    assert per["none"]["auc"] is None and per["none"]["ap"] is None and per["none"]["f1"] is None
    assert per["none"]["undefined"] == f"no positives in {n} images"
    assert per["none"]["sensitivity"] is None and per["none"]["specificity"] is not None
    assert per["all"]["auc"] is None and per["all"]["undefined"] == f"no negatives in {n} images"
    assert per["all"]["specificity"] is None
    assert M.macro(per, "auc") == pytest.approx(per["ok"]["auc"], abs=1e-12)
    assert M.weighted(per, "auc") == pytest.approx(per["ok"]["auc"], abs=1e-12)
    assert M.macro({"x": {"auc": None}}, "auc") is None

    ev = M.evaluate(p, y, names=names, patient_ids=pid, n_boot=50)
    assert ev["auc_per_class"] == {"ok": per["ok"]["auc"], "none": None, "all": None}
    assert ev["auc_macro"] == pytest.approx(per["ok"]["auc"])
    assert ev["per_finding"]["none"]["auc_ci"] == [None, None]
    assert set(ev["undefined"]) == {"none", "all"}
    json.dumps(ev, allow_nan=False)


def test_bad_inputs_raise_metrics_errors():
    p, y, pid = make_set(n_f=2)
    with pytest.raises(M.MetricsError, match="shape"):
        M.per_finding(p[:, :1], y, names=["a", "b"])
    with pytest.raises(M.MetricsError, match=r"\[0, 1\].*sigmoid"):
        M.per_finding(p * 3 - 1, y, names=["a", "b"])
    with pytest.raises(M.MetricsError, match="labels must be 0 or 1.*-1"):
        M.per_finding(p, np.where(y == 1, -1, 0), names=["a", "b"])
    with pytest.raises(M.MetricsError, match="names has 1"):
        M.per_finding(p, y, names=["a"])
    with pytest.raises(M.MetricsError, match="patient_ids has 3"):
        M.bootstrap(p, y, pid[:3])
    with pytest.raises(M.MetricsError, match="unknown bootstrap statistic 'acu'.*did you mean 'auc'"):
        M.bootstrap(p, y, pid, stats=("acu",))
    with pytest.raises(M.MetricsError, match="non-finite"):
        M.bce_loss(np.full((2, 1), np.nan), [[0], [1]])


def test_metrics_error_is_not_a_user_input_error():
    # The CLI answers a ConfigError with "bad input, exit 2"; malformed input to a metric is a caller's bug.
    assert issubclass(M.MetricsError, ValueError) and not issubclass(M.MetricsError, ConfigError)


def test_roc_curve_points_and_calibration():
    p, y, _ = make_set(seed=3, n_f=1)
    fpr, tpr = M.roc_curve_points(p[:, 0], y[:, 0])
    ref_fpr, ref_tpr, _ = roc_curve(y[:, 0], p[:, 0])
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)

    hand = M.calibration([[0.05], [0.15], [0.95], [0.95]], [[0], [1], [1], [0]], n_bins=10)
    assert hand["count"][0] == 1 and hand["count"][1] == 1 and hand["count"][9] == 2
    assert hand["observed"][9] == 0.5 and hand["mean_predicted"][5] is None
    assert hand["ece"] == pytest.approx((0.05 + 0.85 + 2 * 0.45) / 4)
    rng = np.random.default_rng(0)
    q = rng.random((20_000, 2))
    calibrated = M.calibration(q, (rng.random(q.shape) < q).astype(int))
    overconfident = M.calibration(q, (rng.random(q.shape) < 0.5).astype(int))
    assert sum(calibrated["count"]) == q.size
    assert calibrated["ece"] < 0.02 < 0.2 < overconfident["ece"]


# ----------------------------------------------------------------------------------------------- thresholds


def test_max_f1_threshold_maximises_f1_on_validation():
    p, y, _ = make_set(seed=4, n_f=3)
    t = M.choose_thresholds(p, y, rule="max_f1")
    for f in range(3):
        pred = p[:, f][:, None] >= np.unique(p[:, f])[None, :]  # every candidate threshold at once
        pos = (y[:, f] == 1)[:, None]
        tp, fp, fn = (pred & pos).sum(0), (pred & ~pos).sum(0), (~pred & pos).sum(0)
        best = np.max(2 * tp / (2 * tp + fp + fn))
        assert f1_score(y[:, f], p[:, f] >= t[f]) == pytest.approx(best, abs=1e-12)
        assert t[f] in p[:, f]


def test_youden_threshold_maximises_j_on_validation():
    p, y, _ = make_set(seed=5, n_f=3)
    t = M.choose_thresholds(p, y, rule="youden")

    for f in range(3):
        pred = p[:, f][:, None] >= np.unique(p[:, f])[None, :]
        pos = (y[:, f] == 1)[:, None]
        best = np.max((pred & pos).sum(0) / pos.sum() + (~pred & ~pos).sum(0) / (~pos).sum() - 1)
        chosen = p[:, f] >= t[f]
        j = recall_score(y[:, f], chosen) + recall_score(y[:, f], chosen, pos_label=0) - 1
        assert j == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("rule", M.THRESHOLD_RULES.names())
def test_threshold_rules_fall_back_without_both_classes(rule):
    p, y, _ = make_set(seed=6, n_f=2)
    y[:, 1] = 0
    t = M.choose_thresholds(p, y, rule=rule)
    assert t[1] == M.FALLBACK_THRESHOLD and t[0] != M.FALLBACK_THRESHOLD


def test_unknown_threshold_rule():
    with pytest.raises(M.MetricsError, match="unknown threshold rule 'max-f1'.*valid: max_f1, youden"):
        M.choose_thresholds([[0.1], [0.9]], [[0], [1]], rule="max-f1")


# ------------------------------------------------------------------------------------------------ bootstrap

# What each resampled statistic must equal on the explicitly expanded arrays (threshold 0.5 where one is used).
SKLEARN = {
    "auc": lambda y, p: roc_auc_score(y, p),
    "ap": lambda y, p: average_precision_score(y, p),
    "f1": lambda y, p: f1_score(y, p >= 0.5),
    "sensitivity": lambda y, p: recall_score(y, p >= 0.5),
    "specificity": lambda y, p: recall_score(y, p >= 0.5, pos_label=0),
}


def resampled(stat, p, y, pid, *, n_boot, seed):
    """(n_boot, F) values of `stat` on the patient resamples, as bootstrap() computes them (thresholds 0.5)."""
    counts, _ = M.resample_counts(pid, n_boot=n_boot, seed=seed)
    d = _prepare(p, y, pid)
    return M.BOOT_STATS[stat](d, counts, np.full(d.p.shape[1], 0.5))


def test_every_bootstrap_statistic_has_a_reference():
    assert set(M.BOOT_STATS.names()) == set(SKLEARN)


@pytest.mark.parametrize("stat", M.BOOT_STATS.names())
def test_resampled_statistic_equals_sklearn_on_the_expanded_resample(stat):
    p, y, pid = make_set(seed=7, n_pat=40, per_pat=(1, 8), decimals=1)  # decimals=1: many ties
    samples = resampled(stat, p, y, pid, n_boot=20, seed=3)
    counts, pidx = M.resample_counts(pid, n_boot=20, seed=3)
    checked = 0
    for b in range(20):
        idx = expand(counts[b], pidx)
        for f in range(y.shape[1]):
            yy, pp = y[idx, f], p[idx, f]
            if yy.min() == yy.max():
                assert np.isnan(samples[b, f]) or stat in ("specificity", "sensitivity")
                continue
            assert samples[b, f] == pytest.approx(SKLEARN[stat](yy, pp), abs=1e-9)
            checked += 1
    assert checked > 60


def test_resample_counts_draw_patients():
    pid = np.array([7, 7, 7, 3, 9, 9])
    counts, pidx = M.resample_counts(pid, n_boot=500, seed=0)
    assert counts.shape == (500, 3)
    np.testing.assert_array_equal(counts.sum(1), 3)  # as many patients as there are, with replacement
    np.testing.assert_array_equal(pidx, [1, 1, 1, 0, 2, 2])
    assert counts.mean() == pytest.approx(1.0, abs=0.05)
    again, _ = M.resample_counts(pid, n_boot=500, seed=0)
    other, _ = M.resample_counts(pid, n_boot=500, seed=1)
    np.testing.assert_array_equal(counts, again)
    assert not np.array_equal(counts, other)


def test_count_blocks_stay_exact_for_huge_resamples():
    # float32 sums integers exactly only below 2**24: a resample that could exceed it must use float64.
    counts = np.ones((3, 4))
    assert _count_blocks(counts, np.array([1, 1, 1, 5]))[0][1].dtype == np.float32
    assert _count_blocks(counts, np.array([1, 1, 1, 2**23]))[0][1].dtype == np.float64


def test_bootstrap_is_deterministic_and_ignores_image_order():
    p, y, pid = make_set(seed=8)
    a = M.bootstrap(p, y, pid, n_boot=200, seed=5)
    perm = np.random.default_rng(0).permutation(len(pid))
    b = M.bootstrap(p[perm], y[perm], pid[perm], n_boot=200, seed=5)
    assert a == b
    assert a["unit"] == "patient" and a["n_boot"] == 200 and a["level"] == 0.95
    assert np.array(a["auc"]["per_finding"]).shape == (4, 2)
    lo, hi = a["auc"]["macro"]
    assert lo < roc_auc_score(y, p) < hi


def test_patient_bootstrap_is_wider_than_image_bootstrap_on_near_copies():
    # 40 patients with 15 near-identical images each: there are 40 independent observations, not 600.
    rng = np.random.default_rng(0)
    n_pat, k = 40, 15
    y_pat = (rng.random(n_pat) < 0.4).astype(np.uint8)
    s_pat = rng.normal(size=n_pat) + y_pat
    pid = np.repeat(np.arange(n_pat), k)
    y = y_pat[pid][:, None]
    p = (1 / (1 + np.exp(-(s_pat[pid] + rng.normal(0, 0.01, n_pat * k)))))[:, None]
    ours = M.bootstrap(p, y, pid, stats=("auc",), n_boot=400, seed=0)["auc"]["macro"]
    naive = M.bootstrap(p, y, np.arange(len(pid)), stats=("auc",), n_boot=400, seed=0)["auc"]["macro"]
    assert ours[1] - ours[0] > 2.5 * (naive[1] - naive[0])


def test_bootstrap_std_of_a_mean_is_s_over_sqrt_n():
    # Every image positive, one image per patient: sensitivity is the mean of a 0/1 sample, whose bootstrap
    # std is sqrt(q (1 - q) / n) (ddof 0).
    rng = np.random.default_rng(1)
    n = 400
    p = rng.random((n, 1))
    y = np.ones((n, 1), dtype=int)
    q = float(np.mean(p >= 0.5))
    s = resampled("sensitivity", p, y, np.arange(n), n_boot=4000, seed=0)[:, 0]
    assert s.mean() == pytest.approx(q, abs=0.005)
    assert s.std() == pytest.approx(math.sqrt(q * (1 - q) / n), rel=0.06)


def test_auroc_ci_covers_the_true_binormal_auc_about_95_percent():
    # Positives ~ N(1, 1), negatives ~ N(0, 1): true AUROC = Phi(1 / sqrt 2).
    true_auc = sps.norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(2)
    reps, hits = 200, 0
    for r in range(reps):
        y = np.r_[np.ones(80), np.zeros(80)].astype(int)
        score = rng.normal(size=160) + y
        p = 1 / (1 + np.exp(-score))
        lo, hi = M.bootstrap(p, y, np.arange(160), stats=("auc",), n_boot=300, seed=r)["auc"]["macro"]
        hits += lo <= true_auc <= hi
    assert 0.88 <= hits / reps <= 0.99  # percentile intervals run a little short at n = 160


def test_macro_ci_drops_resamples_where_a_finding_vanishes():
    p, y, pid = make_set(seed=9, n_pat=30, n_f=2)
    y[:, 1] = 0
    y[pid == pid[0], 1] = 1  # one patient holds every positive of finding 1
    out = M.bootstrap(p, y, pid, stats=("auc",), n_boot=300, seed=0)["auc"]
    assert 0 < out["n_dropped"] < 300  # about (29/30)^30 = 36% of resamples miss that patient
    assert out["macro"][0] is not None


# ----------------------------------------------------------------------------------------------- comparisons


def test_paired_bootstrap_identical_models():
    p, y, pid = make_set(seed=10)
    r = M.paired_bootstrap(probs_a=p, probs_b=p.copy(), labels=y, patient_ids=pid, n_boot=300)
    assert r["diff"] == 0 and r["ci"] == [0.0, 0.0] and r["p"] == 1.0
    assert "no significant difference" in M.summary_sentence("A", "B", r)


def test_paired_bootstrap_clearly_better_model():
    p, y, pid = make_set(seed=11, shift=0.0)  # model B: scores unrelated to labels
    rng = np.random.default_rng(0)
    good = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1)  # model A: nearly separates
    r = M.paired_bootstrap(probs_a=good, probs_b=p, labels=y, patient_ids=pid, n_boot=500, seed=1)
    assert r["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, p), abs=1e-12)
    assert r["p"] < 0.01 and r["ci"][0] > 0.2
    flipped = M.paired_bootstrap(probs_a=p, probs_b=good, labels=y, patient_ids=pid, n_boot=500, seed=1)
    assert flipped["diff"] == pytest.approx(-r["diff"]) and flipped["ci"] == pytest.approx([-r["ci"][1], -r["ci"][0]])
    one = M.paired_bootstrap(probs_a=good, probs_b=p, labels=y, patient_ids=pid, n_boot=100, finding=2)
    assert one["diff"] == pytest.approx(roc_auc_score(y[:, 2], good[:, 2]) - roc_auc_score(y[:, 2], p[:, 2]))
    with pytest.raises(M.MetricsError, match="finding=9 is out of range"):
        M.paired_bootstrap(probs_a=good, probs_b=p, labels=y, patient_ids=pid, finding=9)


def test_paired_bootstrap_p_is_calibrated_under_the_null():
    # Two equally good models with independent noise: p should be about uniform, and claim at about 5 %.
    rng = np.random.default_rng(4)
    ps, agree = [], 0
    for r in range(100):
        y = (rng.random((120, 1)) < 0.4).astype(int)
        a, b = (1 / (1 + np.exp(-(rng.normal(size=(120, 1)) + y))) for _ in range(2))
        res = M.paired_bootstrap(probs_a=a, probs_b=b, labels=y, patient_ids=np.arange(120), n_boot=200, seed=r)
        ps.append(res["p"])
        agree += (res["ci"][0] > 0 or res["ci"][1] < 0) == (res["p"] < 0.05)
    assert 0.38 <= np.mean(ps) <= 0.62
    assert np.mean(np.array(ps) < 0.05) <= 0.12
    assert agree >= 97  # the p and the interval tell the same story


def test_two_models_are_passed_by_keyword():
    p, y, pid = make_set(seed=10)
    other = np.round(p * 0.9, 2)
    with pytest.raises(TypeError):
        M.delong(p[:, 0], other[:, 0], y[:, 0])
    with pytest.raises(TypeError):
        compare.paired_bootstrap(p, other, y, pid)
    with pytest.raises(TypeError):
        M.paired_bootstrap(p, other, y, pid)


def slow_delong(a, b, y):
    """DeLong et al. 1988 written out pairwise: psi over every (positive, negative) pair, O(m n)."""
    y = np.asarray(y) == 1
    comps = []
    for s in (a, b):
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(), psi.mean(1), psi.mean(0)))
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.array([c[1] for c in comps]))
    s01 = np.cov(np.array([c[2] for c in comps]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (comps[0][0] - comps[1][0]) / math.sqrt(var)
    return comps[0][0], comps[1][0], z, 2 * sps.norm.sf(abs(z))


def test_delong_matches_the_pairwise_definition():
    rng = np.random.default_rng(3)
    y = (rng.random(150) < 0.35).astype(int)
    a = np.round(1 / (1 + np.exp(-(rng.normal(size=150) + 1.2 * y))), 2)  # rounded: ties
    b = np.round(1 / (1 + np.exp(-(rng.normal(size=150) + 0.6 * y))), 2)
    r = M.delong(probs_a=a, probs_b=b, labels=y)
    auc_a, auc_b, z, p = slow_delong(a, b, y)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert (r["auc_a"], r["auc_b"], r["z"], r["p"]) == pytest.approx((auc_a, auc_b, z, p), abs=1e-9)
    same = M.delong(probs_a=a, probs_b=a, labels=y)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_holm_hand_computed():
    np.testing.assert_allclose(M.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(M.holm([0.5, 0.6]), [1.0, 1.0])  # capped
    np.testing.assert_allclose(M.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])  # monotone step-down
    assert M.holm([]).size == 0
    with pytest.raises(M.MetricsError, match="holm"):
        M.holm([0.1, float("nan")])


def test_summary_sentence_claims_only_what_the_numbers_support():
    won = {"diff": 0.09, "ci": [0.07, 0.11], "p": 0.0004}
    assert M.summary_sentence("A", "B", won) == "A beats B by 0.090 AUROC [0.070, 0.110], p < 0.001"
    lost = {"diff": -0.05, "ci": [-0.08, -0.02], "p": 0.004}
    assert M.summary_sentence("A", "B", lost) == "B beats A by 0.050 AUROC [0.020, 0.080], p = 0.004"
    spans = {"diff": 0.01, "ci": [-0.01, 0.03], "p": 0.42}
    assert M.summary_sentence("A", "B", spans).startswith("no significant difference between A and B")
    assert "p = 0.42" in M.summary_sentence("A", "B", spans)
    # a small p with an interval touching 0 is still no claim
    assert "no significant" in M.summary_sentence("A", "B", {"diff": 0.02, "ci": [-0.001, 0.04], "p": 0.03})
    adjusted = {**won, "p_adjusted": 0.2}
    assert "no significant" in M.summary_sentence("A", "B", adjusted)
    assert "Holm-adjusted p = 0.2" in M.summary_sentence("A", "B", adjusted)
    assert M.summary_sentence("A", "B", {**won, "p_adjusted": None}).startswith("A beats B")
    assert M.summary_sentence("A", "B", {"diff": 0.1, "z": 4.0, "p": 1e-5}).startswith("A beats B by 0.100 AUROC,")


# ---------------------------------------------------------------------------------------------------- seeds


def test_seeds_summary():
    assert M.seeds_summary([0.7, 0.8, 0.9]) == pytest.approx({"mean": 0.8, "std": 0.1, "n": 3})
    assert M.seeds_summary([0.75]) == {"mean": 0.75, "std": None, "n": 1}
    with pytest.raises(M.MetricsError):
        M.seeds_summary([])


def test_evaluate_is_json_able_complete_and_deterministic():
    p, y, pid = make_set(seed=13, n_pat=80)
    vp, vy, _ = make_set(seed=14, n_pat=40)
    names = ["Atelectasis", "Effusion", "Mass", "Nodule"]
    ev = M.evaluate(p, y, names=names, patient_ids=pid, val_probs=vp, val_labels=vy, n_boot=100, seed=3)
    assert json.loads(json.dumps(ev, allow_nan=False)) == ev
    assert ev == M.evaluate(p, y, names=names, patient_ids=pid, val_probs=vp, val_labels=vy, n_boot=100, seed=3)
    assert (ev["n"], ev["n_patients"], ev["n_boot"], ev["ci_level"], ev["ci_unit"]) == (
        len(p),
        len(np.unique(pid)),
        100,
        0.95,
        "patient",
    )
    assert ev["auc_macro"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert ev["f1_macro"] == pytest.approx(f1_score(y, p >= 0.5, average="macro"), abs=1e-9)
    assert ev["bce"] == pytest.approx(log_loss(y.ravel(), p.ravel().astype(float)), abs=1e-6)
    assert ev["auc_macro_ci"][0] < ev["auc_macro"] < ev["auc_macro_ci"][1]
    assert ev["per_finding"]["Mass"]["auc_ci"][0] < ev["per_finding"]["Mass"]["auc"]
    th = ev["thresholds"]
    assert set(th) == {"fixed", "val_max_f1", "val_youden"}
    assert th["fixed"] == {"rule": "0.5", "f1_macro": ev["f1_macro"]}
    t = M.choose_thresholds(vp, vy, rule="max_f1")
    assert th["val_max_f1"]["per_finding"] == dict(zip(names, t.tolist()))
    assert th["val_max_f1"]["f1_macro"] == pytest.approx(
        np.mean([f1_score(y[:, f], p[:, f] >= t[f]) for f in range(4)]), abs=1e-9
    )
    no_val = M.evaluate(p, y, names=names, patient_ids=pid, n_boot=100, seed=3)
    assert set(no_val["thresholds"]) == {"fixed"}
    with pytest.raises(M.MetricsError, match="together"):
        M.evaluate(p, y, names=names, patient_ids=pid, val_probs=vp)


# ------------------------------------------------------------------------------ logits and degenerate output


def sigmoid32(logits):
    """What a model's float32 sigmoid stores: exactly 1.0 above a logit of about 16.6, 0.0 below about -88.7."""
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-np.asarray(logits, np.float32)))).astype(np.float32)


def test_auroc_ranks_the_logits_where_the_sigmoid_saturates():
    rng = np.random.default_rng(20)
    n = 300
    pid = np.arange(n) // 2
    y = (rng.random((n, 2)) < 0.3).astype(np.uint8)
    logits = rng.normal(size=(n, 2)) + 1.5 * y
    logits[:, 0] += 40  # every sigmoid of finding 0 is exactly 1.0; its logits keep their order
    probs = sigmoid32(logits)
    assert np.all(probs[:, 0] == 1.0) and len(np.unique(probs[:, 1])) == n
    names = ["saturated", "healthy"]
    ev = M.evaluate(probs, y, names=names, patient_ids=pid, logits=logits, n_boot=200)
    blind = M.evaluate(probs, y, names=names, patient_ids=pid, n_boot=200)
    sat = ev["per_finding"]["saturated"]
    assert sat["auc"] == pytest.approx(roc_auc_score(y[:, 0], logits[:, 0]), abs=1e-12) and sat["auc"] > 0.75
    assert sat["ap"] == pytest.approx(average_precision_score(y[:, 0], logits[:, 0]), abs=1e-12)
    assert blind["per_finding"]["saturated"]["auc"] == 0.5 and blind["per_finding"]["saturated"]["auc_ci"] == [0.5, 0.5]
    assert sat["auc_ci"][0] < sat["auc"] < sat["auc_ci"][1]
    # on unsaturated output the logits and the probabilities rank alike
    assert ev["per_finding"]["healthy"]["auc"] == blind["per_finding"]["healthy"]["auc"]
    assert ev["per_finding"]["healthy"]["auc_ci"] == blind["per_finding"]["healthy"]["auc_ci"]
    # thresholded metrics and the losses stay with the probabilities
    for key in ("f1_macro", "f1_macro_ci", "sensitivity_macro", "specificity_macro", "bce", "focal", "ece"):
        assert ev[key] == blind[key], key
    # the resampled AUROC ranks the logits: any order-preserving rescaling of them gives the same interval
    rescaled = (logits - logits.min(0)) / np.ptp(logits, axis=0)
    with_logits = M.bootstrap(probs, y, pid, stats=("auc", "ap"), n_boot=100, seed=1, logits=logits)
    assert with_logits == M.bootstrap(rescaled, y, pid, stats=("auc", "ap"), n_boot=100, seed=1)
    assert ev["degenerate"]["scores"] == "logits" and blind["degenerate"]["scores"] == "probs"
    with pytest.raises(M.MetricsError, match=r"logits has shape \(300, 1\)"):
        M.evaluate(probs, y, names=names, patient_ids=pid, logits=logits[:, :1])
    with pytest.raises(M.MetricsError, match="non-finite.*expected logits"):
        M.per_finding(probs, y, names=names, logits=np.full((n, 2), np.inf))


def test_degenerate_flags_saturated_and_constant_columns_not_healthy_ones():
    rng = np.random.default_rng(21)
    n = 400
    logits = rng.normal(0, 2, size=(n, 4))
    logits[:, 0] = rng.choice([-700.0, 700.0], n) + rng.normal(size=n)  # broken BatchNorm statistics
    logits[:, 1] = -1.4  # one value for every image
    logits[: n // 10, 3] = 20.0  # a confident column: a tenth of it saturates
    probs = sigmoid32(logits)
    names = ["saturated", "constant", "healthy", "confident"]
    from_logits = M.degenerate(probs, logits=logits, names=names)
    from_probs = M.degenerate(probs, names=names)
    for r in (from_logits, from_probs):
        per = r["per_finding"]
        assert r["findings"] == ["saturated", "constant"]
        assert per["saturated"] == {
            "saturated_share": 1.0,
            "n_distinct": per["saturated"]["n_distinct"],
            "degenerate": True,
        }
        assert per["constant"]["n_distinct"] == 1 and per["constant"]["saturated_share"] == 0.0
        assert per["healthy"] == {"saturated_share": 0.0, "n_distinct": n, "degenerate": False}
        assert per["confident"]["saturated_share"] == pytest.approx(0.1) and not per["confident"]["degenerate"]
        assert r["degenerate"]  # half the findings: the trial's macro averages are half ties and constants
        assert r["saturated_share"] == pytest.approx((1.0 + 0.1) / 4)
        assert "at least 50% of its outputs are saturated" in r["rule"]
    assert from_probs["per_finding"]["saturated"]["n_distinct"] == 2  # exactly 0.0 and 1.0
    assert from_logits["per_finding"]["saturated"]["n_distinct"] == n  # the logits still differ
    assert from_logits["median_abs_logit"] > 1 and from_probs["median_abs_logit"] is None
    one_bad = M.degenerate(probs[:, 1:], logits=logits[:, 1:])
    assert one_bad["findings"] == ["0"] and not one_bad["degenerate"]  # a third of the findings: marked, trial kept
    assert M.degenerate(logits=logits, names=names)["findings"] == ["saturated", "constant"]
    # the saturation points are float32's (and torch's): just inside them the sigmoid is not yet 0 or 1
    edge = np.array([[M.SATURATION_LOGIT_HIGH - 0.01], [M.SATURATION_LOGIT_LOW + 0.01]])
    assert np.all((sigmoid32(edge) > 0) & (sigmoid32(edge) < 1))
    edge = np.array([[M.SATURATION_LOGIT_HIGH + 0.01], [M.SATURATION_LOGIT_LOW - 0.01]])
    np.testing.assert_array_equal(sigmoid32(edge), [[1.0], [0.0]])


def test_evaluate_records_degenerate_output():
    p, y, pid = make_set(seed=22)
    p[:, 2] = 0.25  # a constant column scores AUROC 0.5 [0.5, 0.5]: the record says why
    vp, vy, _ = make_set(seed=23)
    ev = M.evaluate(p, y, names=list("abcd"), patient_ids=pid, val_probs=vp, val_labels=vy, n_boot=50)
    assert ev["per_finding"]["c"]["auc"] == 0.5 and ev["per_finding"]["c"]["auc_ci"] == [0.5, 0.5]
    assert ev["degenerate"]["findings"] == ["c"] and not ev["degenerate"]["degenerate"]
    assert ev["degenerate"] == M.degenerate(p, names=list("abcd"))
    assert ev["degenerate_val"] == M.degenerate(vp, names=list("abcd"))
    val_logits = np.log(vp / (1 - vp))
    with_val = M.evaluate(
        p, y, names=list("abcd"), patient_ids=pid, val_probs=vp, val_labels=vy, val_logits=val_logits, n_boot=50
    )
    assert with_val["degenerate_val"]["scores"] == "logits"
    assert with_val["degenerate_val"]["median_abs_logit"] == pytest.approx(np.median(np.abs(val_logits)))
    with pytest.raises(M.MetricsError, match="val_logits needs val_probs"):
        M.evaluate(p, y, names=list("abcd"), patient_ids=pid, val_logits=val_logits)
    json.dumps(ev, allow_nan=False)


# ------------------------------------------------------------------------------------ seeds, then patients


def seeded_runs(p, k_strengths, *, seed=0):
    """One setting trained with several seeds: the same signal, each seed learning it to its own degree."""
    rng = np.random.default_rng(seed)
    z = np.log(p / (1 - p))
    return [1 / (1 + np.exp(-(z * s + rng.normal(0, 0.5, p.shape)))) for s in k_strengths]


def test_one_seed_gives_the_single_seed_numbers_exactly():
    p, y, pid = make_set(seed=30)
    t = np.array([0.3, 0.4, 0.5, 0.35])
    stats = tuple(M.BOOT_STATS)
    one = M.seed_bootstrap([p], y, pid, stats=stats, thresholds_by_seed=[t], n_boot=200, seed=4)
    boot = M.bootstrap(p, y, pid, stats=stats, thresholds=t, n_boot=200, seed=4)
    per = M.per_finding(p, y, names=list("abcd"), thresholds=t)
    for stat in stats:
        assert one[stat]["ci"] == boot[stat]["macro"] and one[stat]["n_dropped"] == boot[stat]["n_dropped"]
        assert one[stat]["per_finding_ci"] == boot[stat]["per_finding"]
        assert one[stat]["value"] == M.macro(per, stat) and one[stat]["per_seed"] == [M.macro(per, stat)]
        assert one[stat]["per_finding"] == [per[n][stat] for n in "abcd"]
    ev = M.evaluate(p, y, names=list("abcd"), patient_ids=pid, n_boot=200, seed=4)
    sb = M.seed_bootstrap([p], y, pid, n_boot=200, seed=4)
    assert (sb["auc"]["value"], sb["auc"]["ci"]) == (ev["auc_macro"], ev["auc_macro_ci"])
    assert (sb["f1"]["value"], sb["f1"]["ci"]) == (ev["f1_macro"], ev["f1_macro_ci"])
    assert sb["n_seeds"] == 1 and sb["unit"] == "seed, then patient"
    logits = np.log(p / (1 - p)) * 3
    with_logits = M.seed_bootstrap([p], y, pid, logits_by_seed=[logits], stats=("auc",), n_boot=100)
    assert with_logits["auc"]["ci"] == M.bootstrap(p, y, pid, stats=("auc",), n_boot=100, logits=logits)["auc"]["macro"]

    # paired: the same numbers as the single-seed test, whose interval is the resampled AUROC difference
    (other,) = seeded_runs(p, [0.5])
    pair = M.paired_seed_bootstrap(probs_a_by_seed=[p], probs_b_by_seed=[other], labels=y, patient_ids=pid, n_boot=300)
    ref = M.paired_bootstrap(probs_a=p, probs_b=other, labels=y, patient_ids=pid, n_boot=300)
    assert {k: v for k, v in pair.items() if k in ref and k != "unit"} == {k: v for k, v in ref.items() if k != "unit"}
    diffs = (
        resampled("auc", p, y, pid, n_boot=300, seed=0) - resampled("auc", other, y, pid, n_boot=300, seed=0)
    ).mean(1)
    assert ref["ci"] == pytest.approx(np.quantile(diffs, [0.025, 0.975]).tolist(), abs=1e-12)
    assert pair["auc_a_per_seed"] == [ref["auc_a"]] and (pair["n_seeds_a"], pair["n_seeds_b"]) == (1, 1)


def test_seed_interval_holds_seed_to_seed_variation():
    p, y, pid = make_set(seed=31, n_pat=150)
    runs = seeded_runs(p, [0.2, 0.6, 1.0, 1.4])  # seeds that learn materially differently
    two_level = M.seed_bootstrap(runs, y, pid, n_boot=400, seed=0)["auc"]
    per_seed = [roc_auc_score(y, r) for r in runs]
    assert two_level["per_seed"] == pytest.approx(per_seed, abs=1e-12)
    assert two_level["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert two_level["per_finding"][2] == pytest.approx(np.mean([roc_auc_score(y[:, 2], r[:, 2]) for r in runs]))
    # the same seed-mean resampled over patients only
    patients_only = np.mean([resampled("auc", r, y, pid, n_boot=400, seed=0).mean(1) for r in runs], axis=0)
    lo, hi = np.quantile(patients_only, [0.025, 0.975])
    (a, b) = two_level["ci"]
    assert a < lo and b > hi and (b - a) > 1.8 * (hi - lo)
    # seeds that agree add nothing: the interval is the single seed's patient interval (its normal form)
    same = M.seed_bootstrap([runs[2]] * 3, y, pid, stats=("auc",), n_boot=400)["auc"]
    one = resampled("auc", runs[2], y, pid, n_boot=400, seed=0).mean(1)
    half = sps.norm.ppf(0.975) * one.std(ddof=1)
    assert same["ci"] == pytest.approx([same["value"] - half, same["value"] + half], abs=1e-12)
    single = M.bootstrap(runs[2], y, pid, stats=("auc",), n_boot=400)["auc"]["macro"]
    assert same["ci"] == pytest.approx(single, abs=0.01)
    with pytest.raises(M.MetricsError, match="thresholds_by_seed has 1 entries but there are 4 seeds"):
        M.seed_bootstrap(runs, y, pid, thresholds_by_seed=[0.5])
    with pytest.raises(M.MetricsError, match="seed_bootstrap needs the predictions of at least one seed"):
        M.seed_bootstrap([], y, pid)


def test_paired_seed_bootstrap_compares_seed_means():
    p, y, pid = make_set(seed=32, n_pat=150)
    better = seeded_runs(p, [1.0, 1.3, 1.6], seed=1)
    worse = seeded_runs(p, [0.2, 0.5], seed=2)
    r = M.paired_seed_bootstrap(
        probs_a_by_seed=better, probs_b_by_seed=worse, labels=y, patient_ids=pid, n_boot=400, seed=3
    )
    mean_a, mean_b = np.mean([roc_auc_score(y, s) for s in better]), np.mean([roc_auc_score(y, s) for s in worse])
    assert r["diff"] == pytest.approx(mean_a - mean_b, abs=1e-12)
    assert (r["auc_a"], r["auc_b"]) == pytest.approx((mean_a, mean_b), abs=1e-12)
    assert r["auc_b_per_seed"] == pytest.approx([roc_auc_score(y, s) for s in worse], abs=1e-12)
    assert r["ci"][0] < r["diff"] < r["ci"][1] and r["p"] < 0.05 and r["unit"] == "seed, then patient"
    flipped = M.paired_seed_bootstrap(
        probs_a_by_seed=worse, probs_b_by_seed=better, labels=y, patient_ids=pid, n_boot=400, seed=3
    )
    assert flipped["diff"] == pytest.approx(-r["diff"], abs=1e-12)
    # seed-to-seed spread widens the interval beyond the same patient resamples alone
    boot = {
        name: np.mean([resampled("auc", s, y, pid, n_boot=400, seed=3).mean(1) for s in runs], axis=0)
        for name, runs in (("a", better), ("b", worse))
    }
    lo, hi = np.quantile(boot["a"] - boot["b"], [0.025, 0.975])
    assert r["ci"][1] - r["ci"][0] > 1.5 * (hi - lo)
    one = M.paired_seed_bootstrap(
        probs_a_by_seed=better, probs_b_by_seed=worse, labels=y, patient_ids=pid, n_boot=100, finding=1
    )
    assert one["diff"] == pytest.approx(
        np.mean([roc_auc_score(y[:, 1], s[:, 1]) for s in better])
        - np.mean([roc_auc_score(y[:, 1], s[:, 1]) for s in worse]),
        abs=1e-12,
    )


def test_paired_seed_bootstrap_p_is_not_too_small_under_the_null():
    # Two settings whose seeds come from the same distribution of outcomes: claims at about 5 % or less.
    rng = np.random.default_rng(5)
    ps = []
    for r in range(40):
        y = (rng.random((200, 1)) < 0.4).astype(int)
        base = rng.normal(size=(200, 1)) + y
        a, b = (
            [1 / (1 + np.exp(-(base * rng.uniform(0.2, 1.5) + rng.normal(0, 1, (200, 1))))) for _ in range(3)]
            for _ in range(2)
        )
        res = M.paired_seed_bootstrap(
            probs_a_by_seed=a, probs_b_by_seed=b, labels=y, patient_ids=np.arange(200), n_boot=150, seed=r
        )
        ps.append(res["p"])
    assert 0.35 <= np.mean(ps) <= 0.7
    assert np.mean(np.array(ps) < 0.05) <= 0.1


def test_the_constant_that_scores_a_given_bce():
    """The paper's BCE column (0.79-0.94) is what a near-constant output of 0.55-0.62 scores at NIH's
    prevalences: constant_for_bce finds that constant, and bce_loss of it gives the value back."""
    rng = np.random.default_rng(0)
    y = (rng.random((5000, 14)) < np.linspace(0.002, 0.18, 14)).astype(np.uint8)
    for value in (0.7925, 0.909, 0.936):
        c = M.constant_for_bce(y, value)
        assert c > y.mean() and M.bce_loss(np.full(y.shape, c), y) == pytest.approx(value, abs=1e-9)
    rate = y.mean()
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log1p(-rate))
    assert M.constant_for_bce(y, entropy * 0.9) is None  # no constant scores below the labels' entropy
    assert M.constant_for_bce(np.zeros((4, 2)), 0.8) is None
