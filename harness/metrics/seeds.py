"""One setting run with several seeds: summaries over seeds and seed-combined intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.metrics.bootstrap import BOOT_STATS, _defined, _interval, _macro_samples, _prepare, resample_counts
from harness.metrics.core import MetricsError, _level


def seeds_summary(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (ddof=1; None for a single seed), "n"} of one metric over seeds."""
    v = np.asarray([x for x in values], dtype=np.float64)
    if v.size == 0:
        raise MetricsError("seeds_summary needs at least one value")
    if not np.all(np.isfinite(v)):
        raise MetricsError("seeds_summary: values must be finite numbers (a seed with an undefined metric?)")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def combine_seeds(
    probs_list: Sequence[Any], labels: Any, patient_ids: Any, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Macro and per-finding AUROC and F1 (at 0.5) of one grid cell run with several seeds on the same test images.

    Method: the metric is the mean over seeds of each seed's value. Test-set uncertainty comes from a
    patient bootstrap of that seed-mean (every seed scored on the same resamples), giving a percentile
    interval [lo, hi] around the mean m. Seed-to-seed variation is added on top: each half-width h
    becomes sqrt(h^2 + (z * s / sqrt(k))^2), with s the between-seed std (ddof=1) of the metric,
    k the number of seeds and z the normal quantile for `level`. With one seed s is unknown and no
    widening is done ("seed_spread_known": False).
    """
    level = _level(level)
    if len(probs_list) == 0:
        raise MetricsError("combine_seeds needs the predictions of at least one seed")
    data = [_prepare(p, labels, patient_ids, what=f"probs_list[{i}]") for i, p in enumerate(probs_list)]
    keep = _defined(data[0].y)
    if not keep.any():
        raise MetricsError("no finding has both positives and negatives; there is nothing to combine")
    n_f, k = keep.size, len(data)
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    t = np.full(n_f, 0.5)
    z = float(sps.norm.ppf((1 + level) / 2))

    def widen(m: float, ci: list[float | None], per_seed: np.ndarray) -> list[float | None]:
        if ci[0] is None or k < 2:
            return ci
        extra = (z * float(np.std(per_seed, ddof=1)) / math.sqrt(k)) ** 2
        return [m - math.sqrt((m - ci[0]) ** 2 + extra), m + math.sqrt((ci[1] - m) ** 2 + extra)]

    out: dict[str, Any] = {}
    for stat in ("auc", "f1"):
        fn = BOOT_STATS[stat]
        # every patient drawn once is the test set itself: the point value, computed the same way
        point = np.array([fn(d, np.ones((1, d.n_pat)), t)[0] for d in data])  # (k, F)
        boot = sum(fn(d, counts, t) for d in data) / k  # (B, F) seed-mean per resample
        macro_seeds = point[:, keep].mean(1)
        m = float(macro_seeds.mean())
        boot_macro, dropped = _macro_samples(boot, keep)
        per_mean = [float(point[:, f].mean()) if keep[f] else None for f in range(n_f)]
        out.update(
            {
                f"{stat}_macro": m,
                f"{stat}_macro_ci": widen(m, _interval(boot_macro, level), macro_seeds),
                f"{stat}_per_finding": per_mean,
                f"{stat}_per_finding_ci": [
                    widen(per_mean[f], _interval(boot[:, f], level), point[:, f]) if keep[f] else [None, None]
                    for f in range(n_f)
                ],
                f"{stat}_seeds": seeds_summary(macro_seeds),
                f"{stat}_n_dropped": dropped,
            }
        )
    out.update(
        {
            "seeds": out["auc_seeds"],
            "n_seeds": k,
            "seed_spread_known": k > 1,
            "n_boot": int(counts.shape[0]),
            "level": level,
            "unit": "patient",
            "method": "mean over seeds; patient-bootstrap percentile CI of the seed-mean, each half-width "
            "widened by z*s/sqrt(k) in quadrature (s: between-seed std)",
        }
    )
    return out
