"""Degenerate model output: prediction columns that are saturated or constant, per finding and per trial."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.metrics.core import MetricsError, _finite, _logits, _matrix, _num, _unit

# Where float32's sigmoid 1 / (1 + e^-x) becomes exactly 1.0 or 0.0 (torch's agrees): 1 + e^-x rounds to 1
# once e^-x is at most 2^-24, half the spacing of float32 just above 1; e^-x overflows to inf once -x passes
# ln of float32's largest value. Every output beyond them is tied with its neighbours.
SATURATION_LOGIT_HIGH = 24 * math.log(2)  # 16.64
SATURATION_LOGIT_LOW = -math.log(float(np.finfo(np.float32).max))  # -88.72

# A finding is degenerate when at least this share of its outputs is saturated. A working model reaches
# float32's exact 0 or 1 only on its most extreme images (a logit beyond +16.6 or -88.7); once most of a
# column sits there its thresholded metrics and its AUROC from probabilities describe ties, not a model.
# The saturated scratch InceptionV3 that motivated this check had 95%; a confident working model on a
# finding rarer than 50% stays below, since only its positives can pass +16.6.
DEGENERATE_SATURATED_SHARE = 0.5
# ... or when it has fewer distinct values than this: a constant column, which scores AUROC 0.5 with an
# interval [0.5, 0.5] that looks like a result. Only the constant case is certain: a coarse but working
# column on a small test set can have few distinct values, so n_distinct is recorded and not judged.
DEGENERATE_MIN_DISTINCT = 2
# A trial is degenerate when at least this share of its findings are: its macro averages are then at least
# half ties and constants, and it must not be read as a result. With fewer, the per-finding flags mark them.
DEGENERATE_TRIAL_SHARE = 0.5

RULE = (
    f"a finding is degenerate when at least {DEGENERATE_SATURATED_SHARE:.0%} of its outputs are saturated "
    f"(float32 sigmoid exactly 0 or 1: logit >= {SATURATION_LOGIT_HIGH:.2f} or <= {SATURATION_LOGIT_LOW:.2f}) "
    f"or it has fewer than {DEGENERATE_MIN_DISTINCT} distinct values; a trial is degenerate when at least "
    f"{DEGENERATE_TRIAL_SHARE:.0%} of its findings are"
)


def _n_distinct(x: np.ndarray) -> np.ndarray:
    """(F,) number of distinct values in each column."""
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=np.int64)
    return 1 + (np.diff(np.sort(x, axis=0), axis=0) != 0).sum(0)


def degenerate(probs: Any = None, *, logits: Any = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Which findings (and whether the trial) produced degenerate output, by the rule in RULE.

    Saturation is read from the logits when they are given (then probs may be None), else from the
    probabilities as float32 stores them; distinct values are counted in the same scores, those the AUROC
    ranks. Returns {"rule", "scores": "logits" | "probs", "degenerate": bool, "findings": [degenerate
    names], "saturated_share": over all outputs, "median_abs_logit" (None without logits),
    "per_finding": {name: {"saturated_share", "n_distinct", "degenerate"}}}.
    """
    if probs is None and logits is None:
        raise MetricsError("degenerate needs probs or logits")
    p = None if probs is None else _unit(_finite(_matrix(probs, "probs"), "probs", "probabilities"), "probs")
    if logits is None:
        s = p
        p32 = p.astype(np.float32)
        saturated = (p32 == 0) | (p32 == 1)
    else:
        s = _finite(_matrix(logits, "logits"), "logits", "logits") if p is None else _logits(logits, p.shape)
        saturated = (s >= SATURATION_LOGIT_HIGH) | (s <= SATURATION_LOGIT_LOW)
    n_f = s.shape[1]
    names = [str(f) for f in range(n_f)] if names is None else [str(n) for n in names]
    if len(names) != n_f:
        raise MetricsError(f"names has {len(names)} entries but the output has {n_f} findings")
    share = saturated.mean(0) if s.shape[0] else np.full(n_f, np.nan)
    distinct = _n_distinct(s)
    flagged = (np.nan_to_num(share) >= DEGENERATE_SATURATED_SHARE) | (distinct < DEGENERATE_MIN_DISTINCT)
    return {
        "rule": RULE,
        "scores": "probs" if logits is None else "logits",
        "degenerate": bool(n_f and flagged.mean() >= DEGENERATE_TRIAL_SHARE),
        "findings": [n for n, bad in zip(names, flagged) if bad],
        "saturated_share": _num(saturated.mean()) if saturated.size else None,
        "median_abs_logit": _num(np.median(np.abs(s))) if logits is not None and s.size else None,
        "per_finding": {
            n: {"saturated_share": _num(share[f]), "n_distinct": int(distinct[f]), "degenerate": bool(flagged[f])}
            for f, n in enumerate(names)
        },
    }
