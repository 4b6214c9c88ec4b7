"""One setting run with several seeds: summaries over seeds, and intervals that hold seed and patient variation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.metrics.bootstrap import (
    _Data,
    _defined,
    _intervals,
    _macro_samples,
    _prepare,
    _stat_fn,
    resample_counts,
)
from harness.metrics.core import MetricsError, _level, _thresholds, macro, per_finding

# Seeds are drawn from a stream of their own, so the patient resamples of a given `seed` are the same
# whether or not seeds are resampled too; a paired comparison draws its second cell's seeds from the next.
SEED_STREAM = 1


def seed_interval(per_seed: Sequence[float | None], patient_samples: np.ndarray, level: float) -> list[float | None]:
    """An interval for the mean over k seeds that holds both sources of error: mean +- t * SE.

    SE^2 = s^2 / k (s: the seeds' standard deviation) + SE_patients^2 (the spread of the all-seed mean over
    patient resamples: every seed was tested on the same patients, so that error does not average out). The
    t quantile has (k - 1) * SE^2 / (s^2 / k) degrees of freedom: k - 1 where the seeds dominate, growing without
    bound as the patients do (Welch-Satterthwaite's square of that ratio, with s^2 estimated from 3 values,
    covered 0.93). A percentile interval of resampled seeds covered 0.78 where the seed SD was 4.5 times the
    patient SE (the bootstrap of k values has no t tail); this covers 0.94-0.97 for k = 3 and 5 and a seed SD
    of 0 to 4.5 times it (tests/unit/test_seed_coverage.py).
    """
    v = np.asarray([x for x in per_seed if x is not None], dtype=np.float64)
    b = patient_samples[np.isfinite(patient_samples)]
    k = v.size
    if k < 2 or b.size < 2 or k != len(per_seed):
        return [None, None]
    seed_var, patient_var = float(v.var(ddof=1)) / k, float(b.var(ddof=1))
    total = seed_var + patient_var
    if total <= 0:
        return [float(v.mean())] * 2
    df = math.inf if seed_var == 0 else (k - 1) * (total / seed_var)
    half = float(sps.t.ppf((1 + level) / 2, df)) * math.sqrt(total)
    return [float(v.mean() - half), float(v.mean() + half)]


def seeds_summary(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (ddof=1; None for a single seed), "n"} of one metric over seeds."""
    v = np.asarray([x for x in values], dtype=np.float64)
    if v.size == 0:
        raise MetricsError("seeds_summary needs at least one value")
    if not np.all(np.isfinite(v)):
        raise MetricsError("seeds_summary: values must be finite numbers (a seed with an undefined metric?)")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def _how(k: int, counts: np.ndarray, level: float, *, unit: str, method: str) -> dict[str, Any]:
    """The keys that say how a seed-combined interval was made."""
    return {"n_seeds": k, "n_boot": int(counts.shape[0]), "level": level, "unit": unit, "method": method}


def by_seed(
    probs_by_seed: Sequence[Any],
    labels: Any,
    patient_ids: Any,
    logits_by_seed: Sequence[Any] | None = None,
    *,
    what: str,
    caller: str,
) -> list[_Data]:
    """Each seed's predictions on the same test images, checked and prepared for resampling."""
    if len(probs_by_seed) == 0:
        raise MetricsError(f"{caller} needs the predictions of at least one seed")
    if logits_by_seed is not None and len(logits_by_seed) != len(probs_by_seed):
        raise MetricsError(f"{caller}: {len(logits_by_seed)} seeds of logits but {len(probs_by_seed)} of probs")
    return [
        _prepare(
            p, labels, patient_ids, logits=None if logits_by_seed is None else logits_by_seed[i], what=f"{what}[{i}]"
        )
        for i, p in enumerate(probs_by_seed)
    ]


def seed_picks(n_seeds: int, n_boot: int, seed: int, *, stream: int = SEED_STREAM) -> np.ndarray:
    """(n_boot, n_seeds) seed indices, drawn with replacement for each resample; all 0 with one seed."""
    return np.random.default_rng((seed, stream)).integers(0, n_seeds, size=(n_boot, n_seeds))


def seed_mean(samples: Sequence[np.ndarray], picks: np.ndarray) -> np.ndarray:
    """(B, F): each resample's statistic averaged over the seeds it drew; samples[s] is seed s's (B, F) values.

    With one seed this is samples[0] exactly (a mean of one number is that number).
    """
    stack = np.stack(samples)  # (k, B, F)
    return stack[picks, np.arange(picks.shape[0])[:, None]].mean(1)


def _mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


_SEEDS_METHOD = (
    "mean over seeds; interval mean +- t * SE with SE^2 = (seed variance) / k + (variance of the all-seed "
    "mean over patient resamples), Welch-Satterthwaite degrees of freedom (seed_interval)"
)


def _stat_intervals(
    samples: list[np.ndarray],
    per_seed: list[float | None],
    by_finding: list[list[float | None]],
    picks: np.ndarray,
    keep: np.ndarray,
    level: float,
) -> tuple[list[float | None], list[list[float | None]], int]:
    """One statistic's intervals from each seed's patient resamples: (macro, per finding, resamples dropped)."""
    if len(samples) == 1:  # bootstrap()'s percentile intervals exactly
        ci = _intervals(seed_mean(samples, picks), keep, level)
        return ci["macro"], ci["per_finding"], ci["n_dropped"]
    # The patients' share of the error: every seed on each patient resample, averaged.
    everyone = np.mean(samples, axis=0)
    macro_samples, dropped = _macro_samples(everyone, keep)
    finding_ci = [
        seed_interval(by_finding[f], everyone[:, f], level) if keep[f] else [None, None] for f in range(len(keep))
    ]
    return seed_interval(per_seed, macro_samples, level), finding_ci, dropped


def seed_bootstrap(
    probs_by_seed: Sequence[Any],
    labels: Any,
    patient_ids: Any,
    *,
    logits_by_seed: Sequence[Any] | None = None,
    stats: Sequence[str] = ("auc", "f1"),
    thresholds_by_seed: Sequence[float | Sequence[float] | np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """One setting run with several seeds on the same test images: seed-mean values, two-level intervals.

    A statistic's value is the mean over seeds of each seed's value (of the macro: each seed's macro,
    then their mean). With several seeds its interval is seed_interval's: the seeds' spread and the
    patients' (every seed scored on each patient resample, averaged) added as variances, with a t
    quantile. The patient resamples are bootstrap()'s for the same `seed`, so with one seed every number
    equals bootstrap()'s and evaluate()'s. `thresholds_by_seed` holds each seed's
    thresholds (default 0.5); with `logits_by_seed`, auc and ap rank the logits.

    Returns {stat: {"value", "ci": [lo, hi], "per_seed": [each seed's macro], "per_finding": [seed-mean,
    None where undefined], "per_finding_ci": [[lo, hi], ...], "n_dropped": resamples left out of the
    macro}, "n_seeds", "n_boot", "level", "unit": "seed, then patient", "method"}.
    """
    level = _level(level)
    fns = {s: _stat_fn(s) for s in stats}
    data = by_seed(probs_by_seed, labels, patient_ids, logits_by_seed, what="probs_by_seed", caller="seed_bootstrap")
    k, n_f = len(data), data[0].p.shape[1]
    if thresholds_by_seed is not None and len(thresholds_by_seed) != k:
        raise MetricsError(f"thresholds_by_seed has {len(thresholds_by_seed)} entries but there are {k} seeds")
    ts = [_thresholds(0.5 if thresholds_by_seed is None else thresholds_by_seed[i], n_f) for i in range(k)]
    names = [str(f) for f in range(n_f)]
    pers = [per_finding(d.p, d.y, names=names, thresholds=t, logits=d.s) for d, t in zip(data, ts)]
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    picks = seed_picks(k, counts.shape[0], seed)
    keep = _defined(data[0].y)
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        samples = [fn(d, counts, t) for d, t in zip(data, ts)]
        per_seed = [macro(per, name) for per in pers]
        by_finding = [[per[n][name] for per in pers] for n in names]
        macro_ci, finding_ci, dropped = _stat_intervals(samples, per_seed, by_finding, picks, keep, level)
        out[name] = {
            "value": _mean(per_seed),
            "ci": macro_ci,
            "per_seed": per_seed,
            "per_finding": [_mean(v) for v in by_finding],
            "per_finding_ci": finding_ci,
            "n_dropped": dropped,
        }
    method = _SEEDS_METHOD if k > 1 else "percentile interval over patient resamples"
    return {**out, **_how(k, counts, level, unit="seed, then patient", method=method)}
