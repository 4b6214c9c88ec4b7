"""Per-finding test metrics: input checks, AUROC/AP/F1/sensitivity/specificity, the paper's losses, thresholds."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_curve

from harness.registry import Registry

EPS = 1e-7  # probability clip for the losses, as in Keras / the paper's BCE column


class MetricsError(ValueError):
    """Predictions, labels or options handed to a metric are malformed; the message says which and how.

    Not a ConfigError: what a user writes is checked before any metric runs, so this one is a caller's bug
    (or data no trial should have produced) and must not exit as "bad input".
    """


# ---------------------------------------------------------------------------------------------------------
# input checks


def _matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[:, None]  # one finding
    if a.ndim != 2:
        raise MetricsError(f"{what} must be (images, findings) or (images,), got shape {a.shape}")
    return a


def _finite(a: np.ndarray, what: str, expected: str) -> np.ndarray:
    try:
        a = a.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricsError(f"{what} must be numeric, got dtype {a.dtype}") from None
    bad = ~np.isfinite(a)
    if bad.any():
        raise MetricsError(f"{what} has {int(bad.sum())} non-finite values (NaN or inf); expected {expected}")
    return a


def _unit(p: np.ndarray, what: str) -> np.ndarray:
    if p.size and (p.min() < 0 or p.max() > 1):
        raise MetricsError(
            f"{what} must be probabilities in [0, 1], got values in [{p.min():g}, {p.max():g}]"
            " (logits? apply a sigmoid first)"
        )
    return p


def _logits(logits: Any, shape: tuple[int, ...], *, what: str = "logits") -> np.ndarray:
    """logits as float64 (N,F), finite and shaped like the probabilities they came with; raise MetricsError otherwise."""
    s = _matrix(logits, what)
    if s.shape != shape:
        raise MetricsError(f"{what} has shape {s.shape} but the probabilities have {shape}; they must match")
    return _finite(s, what, "logits")


def _check(
    probs: Any, labels: Any, patient_ids: Any = None, names: Sequence[str] | None = None, *, what: str = "probs"
) -> tuple[np.ndarray, np.ndarray]:
    """probs as float64 (N,F) in [0,1], labels as int8 (N,F) of {0,1}; raise MetricsError otherwise."""
    p = _matrix(probs, what)
    y = _matrix(labels, "labels")
    if p.shape != y.shape:
        raise MetricsError(f"{what} has shape {p.shape} but labels has {y.shape}; they must match")
    p = _unit(_finite(p, what, "probabilities"), what)
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricsError(f"labels must be 0 or 1, got dtype {y.dtype}") from None
    odd = (yf != 0) & (yf != 1)
    if odd.any():
        vals = np.unique(yf[odd])[:5]
        raise MetricsError(
            f"labels must be 0 or 1, found {', '.join(f'{v:g}' for v in vals)} "
            f"in {int(odd.sum())} entries (uncertain or missing labels must be resolved first)"
        )
    if patient_ids is not None and len(np.asarray(patient_ids).reshape(-1)) != p.shape[0]:
        raise MetricsError(
            f"patient_ids has {len(np.asarray(patient_ids).reshape(-1))} entries but there are {p.shape[0]} images"
        )
    if names is not None and len(names) != p.shape[1]:
        raise MetricsError(f"names has {len(names)} entries but {what} has {p.shape[1]} findings")
    return p, yf.astype(np.int8)


def _thresholds(thresholds: float | Sequence[float] | np.ndarray, n_findings: int) -> np.ndarray:
    try:
        t = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetricsError(f"thresholds must be one number or one per finding, got {thresholds!r}") from None
    if t.ndim == 0:
        t = np.full(n_findings, float(t))
    if t.shape != (n_findings,):
        raise MetricsError(f"thresholds must be one number or one per finding ({n_findings}), got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise MetricsError("thresholds must be finite numbers")
    return t


def _level(level: float) -> float:
    if not 0 < level < 1:
        raise MetricsError(f"level={level!r} is out of range; valid: a number in (0, 1), e.g. 0.95")
    return float(level)


def _n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise MetricsError(f"n_boot={n_boot!r} is out of range; valid: an integer >= 1")
    return int(n_boot)


def _unknown(labels: Any) -> bool:
    """Float labels with NaN entries: labels a dataset does not give (metrics/masked.py scores around them)."""
    a = np.asarray(labels)
    return a.dtype.kind == "f" and bool(np.isnan(a).any())


def _num(x: Any) -> float | None:
    """A JSON-able number: python float, or None for missing / NaN."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------------
# losses (the paper's BCE and focal columns)


def bce_loss(probs: Any, labels: Any) -> float:
    """Mean binary cross-entropy over all images and findings, probabilities clipped to [1e-7, 1-1e-7]; NaN if empty."""
    if _unknown(labels):  # NaN labels are unknown: the mean over the known entries
        known = np.isfinite(np.asarray(labels, dtype=np.float64))
        return bce_loss(np.asarray(probs)[known], np.asarray(labels)[known])
    p, y = _check(probs, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def constant_for_bce(labels: Any, value: float) -> float | None:
    """The constant prediction c > positive rate whose mean BCE on these labels is `value` (None when no
    constant reaches it: below the labels' entropy, the least a constant can score). A published BCE that a
    constant matches says the published model's output may have been near constant."""
    y = np.asarray(labels, dtype=np.float64)
    rate = float(y.mean()) if y.size else float("nan")
    if not 0 < rate < 1:
        return None

    def gap(c: float) -> float:
        return -(rate * math.log(c) + (1 - rate) * math.log1p(-c)) - value

    hi = 1 - EPS
    if gap(rate) > 0 or gap(hi) < 0:
        return None
    return float(brentq(gap, rate, hi))


def focal_loss(probs: Any, labels: Any, *, gamma: float = 2.0, alpha: float = 0.25) -> float:
    """Mean focal loss (Lin et al. 2017) from probabilities; alpha=-1 weighs positives and negatives equally."""
    if gamma < 0:
        raise MetricsError(f"gamma={gamma!r} is out of range; valid: a number >= 0")
    if not (alpha == -1 or 0 <= alpha <= 1):
        raise MetricsError(f"alpha={alpha!r} is out of range; valid: -1 (off) or a number in [0, 1]")
    p, y = _check(probs, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    p_t = np.where(y == 1, p, 1 - p)
    loss = -((1 - p_t) ** gamma) * np.log(p_t)
    if alpha != -1:
        loss = np.where(y == 1, alpha, 1 - alpha) * loss
    return float(np.mean(loss))


# ---------------------------------------------------------------------------------------------------------
# point metrics


def _confusion(p: np.ndarray, y: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    pred = p >= t  # a probability equal to the threshold counts as positive
    pos = y == 1
    return {
        "tp": (pred & pos).sum(0),
        "fp": (pred & ~pos).sum(0),
        "fn": (~pred & pos).sum(0),
        "tn": (~pred & ~pos).sum(0),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (an undefined rate is missing, never 0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _f1(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    """F1 of the positive class; NaN without positives, where it says nothing about the model."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    return np.where(tp + fn > 0, _ratio(2 * tp, 2 * tp + fp + fn), np.nan)


def _reason(n_pos: int, n_neg: int) -> str | None:
    n = n_pos + n_neg
    if n_pos == 0:
        return f"no positives in {n} images"
    if n_neg == 0:
        return f"no negatives in {n} images"
    return None


def per_finding(
    probs: Any,
    labels: Any,
    *,
    names: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    logits: Any = None,
) -> dict[str, dict[str, Any]]:
    """name -> {auc, ap, f1, sensitivity, specificity, threshold, prevalence, n_pos, n_neg, undefined}.

    A finding without positives (or negatives) has auc/ap None and `undefined` giving the reason; rates
    whose denominator is empty are None too. An image is called positive when its probability >= threshold.
    With `logits`, auc and ap rank the logits instead: a float32 sigmoid ties every logit above about 16.6
    at exactly 1.0, and the logits keep the order it loses (where it ties nothing, the two rank alike).
    """
    if _unknown(labels):  # NaN labels are unknown: each finding on the images that label it
        from harness.metrics.masked import per_finding_masked

        return per_finding_masked(probs, labels, names=names, thresholds=thresholds, logits=logits)
    p, y = _check(probs, labels, names=names)
    s = p if logits is None else _logits(logits, p.shape)
    t = _thresholds(thresholds, p.shape[1])
    c = _confusion(p, y, t)
    n_pos, n_neg = c["tp"] + c["fn"], c["fp"] + c["tn"]
    f1 = _f1(c["tp"], c["fp"], c["fn"])
    sens, spec = _ratio(c["tp"], n_pos), _ratio(c["tn"], n_neg)
    auc = roc_auc(y, s)
    out: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(names):
        why = _reason(int(n_pos[f]), int(n_neg[f]))
        out[str(name)] = {
            "auc": None if why else float(auc[f]),
            "ap": None if why else float(average_precision_score(y[:, f], s[:, f])),
            "f1": _num(f1[f]),
            "sensitivity": _num(sens[f]),
            "specificity": _num(spec[f]),
            "threshold": float(t[f]),
            "prevalence": _num(n_pos[f] / p.shape[0]) if p.shape[0] else None,
            "n_pos": int(n_pos[f]),
            "n_neg": int(n_neg[f]),
            "undefined": why,
        }
    return out


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(F,) AUROC of each column of checked (N, F) labels and scores; NaN where a column lacks a class.

    The same floating-point operations as sklearn's roc_auc_score (its ROC curve with collinear points
    dropped, then the trapezoidal rule), so every value equals sklearn's bit for bit, without its input
    validation, which costs more than the arithmetic on a few hundred images. The order of tied scores
    is irrelevant: the curve is read only at the end of each block of ties, where the counts are exact.
    """
    order = np.argsort(scores, axis=0, kind="stable")[::-1]  # descending
    out = np.full(scores.shape[1], np.nan)
    for f in range(scores.shape[1] if len(scores) else 0):
        s, y = scores[order[:, f], f], labels[order[:, f], f].astype(np.float64)
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each block of tied scores
        tps = np.cumsum(y)[last]
        fps = 1 + last.astype(np.float64) - tps
        if tps[-1] <= 0 or fps[-1] <= 0:
            continue
        if len(fps) > 2:  # sklearn's drop_intermediate: points collinear with their neighbours
            corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
            fps, tps = fps[corner], tps[corner]
        fpr, tpr = np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1]
        out[f] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0, dtype=np.float64))
    return out


def macro(per: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """Unweighted mean of `key` over the findings where it is defined; None when it is defined nowhere."""
    vals = [v[key] for v in per.values() if v.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def weighted(per: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """Mean of `key` weighted by each finding's positives (sklearn's average="weighted"), defined findings only."""
    pairs = [(v[key], v["n_pos"]) for v in per.values() if v.get(key) is not None and v["n_pos"] > 0]
    if not pairs:
        return None
    vals, w = np.array(pairs, dtype=np.float64).T
    return float(np.sum(vals * w) / np.sum(w))


def roc_curve_points(probs_1d: Any, labels_1d: Any) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of one finding's ROC curve, via sklearn; unknown labels left out."""
    if _unknown(labels_1d):
        known = np.isfinite(np.ravel(labels_1d))
        probs_1d, labels_1d = np.ravel(probs_1d)[known], np.ravel(labels_1d)[known]
    p, y = _check(np.ravel(probs_1d), np.ravel(labels_1d))
    why = _reason(int(y.sum()), int(len(y) - y.sum()))
    if why:
        raise MetricsError(f"ROC curve is undefined: {why}")
    fpr, tpr, _ = roc_curve(y[:, 0], p[:, 0])
    return fpr, tpr


def calibration(probs: Any, labels: Any, *, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data pooled over findings (equal-width bins) and the expected calibration error."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricsError(f"n_bins={n_bins!r} is out of range; valid: an integer >= 1")
    known = None
    if _unknown(labels):  # pooled over the known entries, each finding over its own
        known = _matrix(np.isfinite(np.asarray(labels, dtype=np.float64)), "labels")
        labels = np.nan_to_num(np.asarray(labels, dtype=np.float64))
    p, y = _check(probs, labels)

    def ece(pf: np.ndarray, yf: np.ndarray) -> tuple[float | None, np.ndarray, np.ndarray, np.ndarray]:
        b = np.minimum((pf * n_bins).astype(np.int64), n_bins - 1)  # p = 1 falls in the last bin
        count = np.bincount(b, minlength=n_bins).astype(np.float64)
        conf = _ratio(np.bincount(b, weights=pf, minlength=n_bins), count)
        obs = _ratio(np.bincount(b, weights=yf, minlength=n_bins), count)
        if not count.sum():
            return None, count, conf, obs
        gap = np.where(count > 0, np.abs(np.nan_to_num(obs) - np.nan_to_num(conf)), 0.0)
        return float(np.sum(count * gap) / count.sum()), count, conf, obs

    if known is None:
        known = np.ones(p.shape, dtype=bool)
    y = y.astype(np.float64)
    pooled, count, conf, obs = ece(p[known], y[known])
    return {
        "n_bins": int(n_bins),
        "bin_edges": np.linspace(0, 1, n_bins + 1).tolist(),
        "count": [int(c) for c in count],
        "mean_predicted": [_num(v) for v in conf],
        "observed": [_num(v) for v in obs],
        "ece": pooled,
        "ece_per_finding": [ece(p[known[:, f], f], y[known[:, f], f])[0] for f in range(p.shape[1])],
    }


# ---------------------------------------------------------------------------------------------------------
# thresholds chosen on validation


@dataclass(frozen=True)
class ThresholdRule:
    """Picks one threshold from a finding's score sweep; `description` is what reports print."""

    pick: Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], int]  # (thr, tp, fp, n_pos, n_neg) -> index
    description: str


THRESHOLD_RULES: Registry[ThresholdRule] = Registry("threshold rule")


def _max_f1(thr: np.ndarray, tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> int:
    return int(np.argmax(2 * tp / (2 * tp + fp + (n_pos - tp))))


def _youden(thr: np.ndarray, tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> int:
    return int(np.argmax(tp / n_pos - fp / n_neg))


THRESHOLD_RULES.register("max_f1")(ThresholdRule(_max_f1, "max F1 on validation"))
THRESHOLD_RULES.register("youden")(ThresholdRule(_youden, "Youden's J (sensitivity + specificity - 1) on validation"))

FALLBACK_THRESHOLD = 0.5  # the paper's, for findings whose validation split cannot choose one


def _sweep(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (descending) with the TP and FP counts of `score >= threshold`."""
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each block of tied scores
    tp = np.cumsum(yy)[last].astype(np.float64)
    return s[last], tp, (last + 1) - tp


def choose_thresholds(val_probs: Any, val_labels: Any, *, rule: str = "max_f1") -> np.ndarray:
    """One threshold per finding chosen on VALIDATION predictions by `rule` (see THRESHOLD_RULES), then frozen.

    Candidates are the distinct validation scores (predict positive when prob >= threshold); ties in the
    criterion go to the highest threshold. A finding with no positives or no negatives on validation gets
    FALLBACK_THRESHOLD (0.5).
    """
    if rule not in THRESHOLD_RULES:
        raise MetricsError(THRESHOLD_RULES.unknown(rule))
    pick = THRESHOLD_RULES[rule].pick
    p, y = _check(val_probs, val_labels, what="val_probs")
    out = np.full(p.shape[1], FALLBACK_THRESHOLD)
    for f in range(p.shape[1]):
        n_pos = int(y[:, f].sum())
        n_neg = len(y) - n_pos
        if n_pos and n_neg:
            thr, tp, fp = _sweep(p[:, f], y[:, f])
            out[f] = thr[pick(thr, tp, fp, n_pos, n_neg)]
    return out
