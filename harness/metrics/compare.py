"""Paired comparisons of two models (or two seeded settings) on the same images: bootstrap, DeLong, Holm, words."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.metrics.bootstrap import _boot_auc, _Data, _defined, _interval, _macro_samples, _prepare, resample_counts
from harness.metrics.core import MetricsError, _check, _level, _reason, roc_auc
from harness.metrics.seeds import SEED_STREAM, by_seed, seed_mean, seed_picks


def bootstrap_test(diff: float, diffs: np.ndarray) -> float:
    """Two-sided p of a paired difference from its bootstrap distribution, as pROC's roc.test does it.

    D = diff / SD(bootstrap differences), referred to the standard normal. A tail count (share of resamples
    beyond 0) cannot go below about 2 / n_boot, which Holm's correction over a report's tests turns into
    "never significant"; D has no such floor. With no spread (identical rankings) p is 1 for no difference and
    0 for any other.
    """
    diffs = diffs[np.isfinite(diffs)]
    sd = float(np.std(diffs, ddof=1)) if diffs.size > 1 else 0.0
    if sd <= 1e-15:
        return 1.0 if abs(diff) <= 1e-15 else 0.0
    return float(2 * sps.norm.sf(abs(diff) / sd))


def _paired_auc(
    da: list[_Data],
    db: list[_Data],
    patient_ids: Any,
    *,
    n_boot: int,
    seed: int,
    finding: int | None,
    level: float,
    matched: bool = False,
) -> dict[str, Any]:
    """Seed-mean AUROC of cell A minus cell B, both scored on the same patient resamples. Seeds are drawn per
    cell, or, when `matched`, the same seed positions for both (seed s of A and of B share split and start)."""
    n_f = da[0].p.shape[1]
    y = da[0].y
    keep = _defined(y)
    if finding is not None:
        if isinstance(finding, bool) or not isinstance(finding, (int, np.integer)) or not 0 <= finding < n_f:
            raise MetricsError(f"finding={finding!r} is out of range; valid: an index in 0..{n_f - 1} or None")
        why = _reason(int(y[:, finding].sum()), int(len(y) - y[:, finding].sum()))
        if why:
            raise MetricsError(f"finding {finding} has no AUROC to compare: {why}")
        keep = np.arange(n_f) == finding
    if not keep.any():
        raise MetricsError("no finding has both positives and negatives; there is no AUROC to compare")
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    t = np.full(n_f, 0.5)

    def cell(data: list[_Data], stream: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
        points = [np.where(keep, roc_auc(d.y, d.s), np.nan) for d in data]
        boot = seed_mean(
            [_boot_auc(d, counts, t) for d in data], seed_picks(len(data), len(counts), seed, stream=stream)
        )
        return np.mean(points, axis=0), boot, [float(np.mean(pt[keep])) for pt in points]

    if matched and len(da) != len(db):
        raise MetricsError(f"matched seeds need as many seeds in each cell, got {len(da)} and {len(db)}")
    point_a, sa, per_seed_a = cell(da, SEED_STREAM)
    point_b, sb, per_seed_b = cell(db, SEED_STREAM if matched else SEED_STREAM + 1)
    diffs, dropped = _macro_samples(sa - sb, keep)
    diff = float(np.mean(point_a[keep] - point_b[keep]))
    return {
        "diff": diff,
        "ci": _interval(diffs, level),
        "p": bootstrap_test(diff, diffs) if diffs.size else None,
        "auc_a": float(np.mean(point_a[keep])),
        "auc_b": float(np.mean(point_b[keep])),
        "auc_a_per_seed": per_seed_a,
        "auc_b_per_seed": per_seed_b,
        "n_seeds_a": len(da),
        "n_seeds_b": len(db),
        "n_boot": int(counts.shape[0]),
        "n_dropped": dropped,
        "level": level,
        "unit": "seed, then patient",
        "matched": matched,
        "metric": "AUROC",
    }


def paired_bootstrap(
    *,
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    patient_ids: Any,
    logits_a: Any = None,
    logits_b: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    finding: int | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """AUROC of model A minus model B on the same images and the same patient resamples.

    {"diff": macro (or `finding`'s) AUROC difference, "ci": [lo, hi] percentile interval, "p": two-sided
    (bootstrap_test: the difference over the SD of its bootstrap distribution),
    "auc_a", "auc_b", "n_boot", "n_dropped", "level", "unit": "patient", "metric": "AUROC"}. With logits,
    each model's AUROC ranks its logits.
    """
    level = _level(level)
    da = _prepare(probs_a, labels, patient_ids, logits=logits_a, what="probs_a")
    db = _prepare(probs_b, labels, patient_ids, logits=logits_b, what="probs_b")
    r = _paired_auc([da], [db], patient_ids, n_boot=n_boot, seed=seed, finding=finding, level=level)
    for key in ("auc_a_per_seed", "auc_b_per_seed", "n_seeds_a", "n_seeds_b", "matched"):
        del r[key]
    return {**r, "unit": "patient"}


def paired_seed_bootstrap(
    *,
    probs_a_by_seed: Sequence[Any],
    probs_b_by_seed: Sequence[Any],
    labels: Any,
    patient_ids: Any,
    logits_a_by_seed: Sequence[Any] | None = None,
    logits_b_by_seed: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    finding: int | None = None,
    level: float = 0.95,
    matched: bool = False,
) -> dict[str, Any]:
    """Two settings, each run with one or more seeds on the same test images: seed-mean AUROC of A minus B.

    The difference is that of the seed-mean macro (or `finding`'s) AUROCs, as the table shows them. Its
    interval and two-sided p come from the two-level bootstrap of seed_bootstrap: every resample draws
    each cell's seeds with replacement and one patient resample that scores both cells. With `matched` (the
    i-th seed of A and of B are the same seed value: same split, subset, initial weights and batch order),
    every resample draws the same positions for both cells, so what the seed shares cancels; otherwise each
    cell's seeds are drawn independently. With one seed per cell every number equals paired_bootstrap's.
    Returns paired_bootstrap's keys, "unit": "seed, then patient", "matched", and "auc_a_per_seed",
    "auc_b_per_seed" (each seed's macro AUROC), "n_seeds_a", "n_seeds_b".
    """
    level = _level(level)
    da = by_seed(
        probs_a_by_seed, labels, patient_ids, logits_a_by_seed, what="probs_a_by_seed", caller="paired_seed_bootstrap"
    )
    db = by_seed(
        probs_b_by_seed, labels, patient_ids, logits_b_by_seed, what="probs_b_by_seed", caller="paired_seed_bootstrap"
    )
    return _paired_auc(da, db, patient_ids, n_boot=n_boot, seed=seed, finding=finding, level=level, matched=matched)


def _midrank(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x, method="average")


def delong(*, probs_a: Any, probs_b: Any, labels: Any) -> dict[str, float]:
    """DeLong's test for two correlated AUROCs of one finding on the same images (fast midrank form, Sun & Xu 2014).

    It treats images as independent; with several images per patient prefer paired_bootstrap.
    """
    ya = np.ravel(labels)
    pa, y = _check(np.ravel(probs_a), ya, what="probs_a")
    pb, _ = _check(np.ravel(probs_b), ya, what="probs_b")
    y = y[:, 0] == 1
    m, n = int(y.sum()), int((~y).sum())
    why = _reason(m, n)
    if why:
        raise MetricsError(f"DeLong's test is undefined: {why}")
    if m < 2 or n < 2:
        raise MetricsError(f"DeLong's test needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10, v01, aucs = [], [], []
    for s in (pa[:, 0], pb[:, 0]):
        x_pos, x_neg = s[y], s[~y]
        tz = _midrank(np.r_[x_pos, x_neg])
        tx, ty = _midrank(x_pos), _midrank(x_neg)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # structural components: share of negatives each positive beats
        v01.append(1 - (tz[m:] - ty) / m)
    cov = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # identical rankings (or both perfect): no evidence either way unless they differ
        z = 0.0 if abs(diff) < 1e-15 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "z": float(z),
        "p": float(2 * sps.norm.sf(abs(z))),
        "se": math.sqrt(max(var, 0.0)),
    }


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in the original order: step-down, monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise MetricsError("holm: p-values must be numbers in [0, 1] (drop missing ones first)")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


# ---------------------------------------------------------------------------------------------------------
# words


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def summary_sentence(
    name_a: str, name_b: str, result: Mapping[str, Any], *, alpha: float = 0.05, significant: bool | None = None
) -> str:
    """One sentence on a comparison (paired_bootstrap or delong), claiming a winner only when the numbers do.

    A winner needs p < alpha and, when the result has a CI, an interval that excludes 0. A Holm-adjusted
    "p_adjusted" in the result is used in place of "p". A caller that has decided the verdict elsewhere (the
    report, one verdict per pair) passes it as `significant`.
    """
    metric = result.get("metric", "AUROC")
    diff = float(result["diff"])
    adjusted = result.get("p_adjusted") is not None
    p = result["p_adjusted"] if adjusted else result.get("p")
    ci = result.get("ci")
    has_ci = ci is not None and ci[0] is not None and ci[1] is not None
    p_word = ("Holm-adjusted " if adjusted else "") + (_p_text(p) if p is not None else "p unknown")
    excludes_0 = has_ci and (ci[0] > 0 or ci[1] < 0)
    if significant is None:
        significant = p is not None and p < alpha and (excludes_0 if has_ci else diff != 0)
    if significant:
        win, lose, d = (name_a, name_b, diff) if diff > 0 else (name_b, name_a, -diff)
        band = ""
        if has_ci:
            lo, hi = (ci[0], ci[1]) if diff > 0 else (-ci[1], -ci[0])
            band = f" [{lo:.3f}, {hi:.3f}]"
        return f"{win} beats {lose} by {d:.3f} {metric}{band}, {p_word}"
    band = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if has_ci else ""
    return (
        f"no significant difference between {name_a} and {name_b} "
        f"({name_a} - {name_b} = {diff:+.3f} {metric}{band}, {p_word})"
    )
