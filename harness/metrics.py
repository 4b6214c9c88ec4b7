"""Test-set statistics: per-finding metrics, thresholds, patient-level bootstrap CIs and paired tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy import stats as sps
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from harness.config import ConfigError
from harness.registry import Registry

EPS = 1e-7  # probability clip for the losses, as in Keras / the paper's BCE column
# Resampled statistics run over blocks of this many resamples: large enough to amortise numpy's per-call
# cost, small enough that a block's temporaries stay a few MB at NIH test-set size.
_BOOT_BLOCK = 64
# Resample draws are generated in pieces of about this many patient indices, to keep memory flat.
_DRAW_ELEMS = 2**21


class MetricsError(ConfigError):
    """Predictions, labels or options handed to a metric are malformed; the message says which and how."""


# ---------------------------------------------------------------------------------------------------------
# input checks


def _matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[:, None]  # one finding
    if a.ndim != 2:
        raise MetricsError(f"{what} must be (images, findings) or (images,), got shape {a.shape}")
    return a


def _check(
    probs: Any, labels: Any, patient_ids: Any = None, names: Sequence[str] | None = None, *, what: str = "probs"
) -> tuple[np.ndarray, np.ndarray]:
    """probs as float64 (N,F) in [0,1], labels as int8 (N,F) of {0,1}; raise MetricsError otherwise."""
    p = _matrix(probs, what)
    y = _matrix(labels, "labels")
    if p.shape != y.shape:
        raise MetricsError(f"{what} has shape {p.shape} but labels has {y.shape}; they must match")
    try:
        p = p.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricsError(f"{what} must be numeric, got dtype {p.dtype}") from None
    bad = ~np.isfinite(p)
    if bad.any():
        raise MetricsError(f"{what} has {int(bad.sum())} non-finite values (NaN or inf); expected probabilities")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise MetricsError(
            f"{what} must be probabilities in [0, 1], got values in [{p.min():g}, {p.max():g}]"
            " (logits? apply a sigmoid first)"
        )
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
    p, y = _check(probs, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


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
    probs: Any, labels: Any, *, names: Sequence[str], thresholds: float | Sequence[float] | np.ndarray = 0.5
) -> dict[str, dict[str, Any]]:
    """name -> {auc, ap, f1, sensitivity, specificity, threshold, prevalence, n_pos, n_neg, undefined}.

    A finding without positives (or negatives) has auc/ap None and `undefined` giving the reason; rates
    whose denominator is empty are None too. An image is called positive when its probability >= threshold.
    """
    p, y = _check(probs, labels, names=names)
    t = _thresholds(thresholds, p.shape[1])
    c = _confusion(p, y, t)
    n_pos, n_neg = c["tp"] + c["fn"], c["fp"] + c["tn"]
    f1 = _f1(c["tp"], c["fp"], c["fn"])
    sens, spec = _ratio(c["tp"], n_pos), _ratio(c["tn"], n_neg)
    out: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(names):
        why = _reason(int(n_pos[f]), int(n_neg[f]))
        out[str(name)] = {
            "auc": None if why else float(roc_auc_score(y[:, f], p[:, f])),
            "ap": None if why else float(average_precision_score(y[:, f], p[:, f])),
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
    """(false positive rate, true positive rate) of one finding's ROC curve, via sklearn."""
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

    pooled, count, conf, obs = ece(p.ravel(), y.ravel().astype(np.float64))
    return {
        "n_bins": int(n_bins),
        "bin_edges": np.linspace(0, 1, n_bins + 1).tolist(),
        "count": [int(c) for c in count],
        "mean_predicted": [_num(v) for v in conf],
        "observed": [_num(v) for v in obs],
        "ece": pooled,
        "ece_per_finding": [ece(p[:, f], y[:, f].astype(np.float64))[0] for f in range(p.shape[1])],
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


# ---------------------------------------------------------------------------------------------------------
# patient-level bootstrap


def resample_counts(patient_ids: Any, *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw patients with replacement: ((n_boot, n_patients) multiplicities, each image's patient index).

    Patients are indexed in sorted-id order, so the resamples do not depend on the order of the images.
    """
    n_boot = _n_boot(n_boot)
    ids = np.asarray(patient_ids).reshape(-1)
    if ids.size == 0:
        raise MetricsError("patient_ids is empty; the bootstrap needs at least one patient")
    _, pidx = np.unique(ids, return_inverse=True)
    n_pat = int(pidx.max()) + 1
    rng = np.random.default_rng(seed)
    counts = np.empty((n_boot, n_pat), dtype=np.float64)
    step = max(1, _DRAW_ELEMS // n_pat)
    for b0 in range(0, n_boot, step):
        b1 = min(n_boot, b0 + step)
        draws = rng.integers(0, n_pat, size=(b1 - b0, n_pat))
        flat = (draws + n_pat * np.arange(b1 - b0)[:, None]).ravel()
        counts[b0:b1] = np.bincount(flat, minlength=(b1 - b0) * n_pat).reshape(b1 - b0, n_pat)
    return counts, pidx.reshape(-1)


@dataclass
class _Data:
    """Predictions and labels of one test set, with what every resampled statistic precomputes."""

    p: np.ndarray  # (N, F) float64
    y: np.ndarray  # (N, F) int8
    pidx: np.ndarray  # (N,) patient index
    n_pat: int

    def per_patient(self, x: np.ndarray) -> np.ndarray:
        """(N, F) image values summed per patient -> (P, F); a resample's total is then counts @ this."""
        out = np.zeros((self.n_pat, x.shape[1]))
        np.add.at(out, self.pidx, x)
        return out


# A resampled statistic: (data, counts (B, P), thresholds (F,)) -> (B, F), NaN where undefined in a resample.
BOOT_STATS: Registry[Callable[[_Data, np.ndarray, np.ndarray], np.ndarray]] = Registry("bootstrap statistic")


def _count_blocks(counts: np.ndarray, n_images_per_patient: np.ndarray) -> list[tuple[slice, np.ndarray]]:
    """counts split into blocks of resamples, each transposed to a contiguous (P, b) array.

    float32 holds every sum of integer weights exactly (and halves the memory traffic) while the
    largest possible resample has under 2**24 images; beyond that float64 is used.
    """
    worst = counts.shape[1] * float(n_images_per_patient.max(initial=1))
    dtype = np.float32 if worst < 2**24 else np.float64
    ct = counts.T.astype(dtype)
    return [
        (slice(b0, b0 + _BOOT_BLOCK), np.ascontiguousarray(ct[:, b0 : b0 + _BOOT_BLOCK]))
        for b0 in range(0, counts.shape[0], _BOOT_BLOCK)
    ]


def _dot_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column sums of a * b, accumulated in float64 (products of integer weights stay exact)."""
    return np.einsum("ij,ij->j", a, b, dtype=np.float64)


class _WeightBelow:
    """Per resample, the weight of a group of images scored below (and at or below) each query score.

    The group is sorted once. Only prefix sums at the queries' ranks are needed, so the group is cut into
    segments between consecutive query ranks and a sparse (segments x patients) matrix sums each
    segment's patient multiplicities; the prefix sums then run over about one row per query (positive)
    instead of one per image of the group (negative).
    """

    def __init__(self, scores: np.ndarray, pidx: np.ndarray, queries: np.ndarray, n_pat: int, dtype: type) -> None:
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        lo, hi = np.searchsorted(s, queries, side="left"), np.searchsorted(s, queries, side="right")
        bounds = np.unique(np.r_[lo, hi])  # segment j holds ranks [bounds[j-1], bounds[j]); segment 0 from rank 0
        seg = np.searchsorted(bounds, np.arange(len(s)), side="right")
        inside = seg < len(bounds)  # ranks above every query never count
        self.seg_sum = sparse.csr_matrix(
            (np.ones(int(inside.sum()), dtype), (seg[inside], pidx[order][inside])), shape=(len(bounds), n_pat)
        )
        self.seg_sum.sum_duplicates()
        self.j_lo, self.j_hi = np.searchsorted(bounds, lo), np.searchsorted(bounds, hi)
        self.tied = np.flatnonzero(lo != hi)  # queries tied with some of the group

    def prefix(self, ct: np.ndarray) -> np.ndarray:
        """(segments, b): weight of the group ranked below each segment end; index it with j_lo / j_hi."""
        return np.cumsum(self.seg_sum @ ct, axis=0)


@BOOT_STATS.register("auc")
def _boot_auc(d: _Data, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """AUROC = Mann-Whitney U with multiplicities; sorting is done once, per resample only prefix sums.

    In a resample image i appears w_i times (its patient's count). With below_i (and below_or_tied_i)
    the weight of negatives scored below (at or below) positive i, 2U = sum_i w_i (below_i +
    below_or_tied_i). Every quantity is an integer held exactly, so this equals sklearn on the
    explicitly expanded arrays.
    """
    out = np.full((counts.shape[0], d.p.shape[1]), np.nan)
    blocks = _count_blocks(counts, np.bincount(d.pidx))
    for f in range(d.p.shape[1]):
        pos = d.y[:, f] == 1
        neg = _WeightBelow(d.p[~pos, f], d.pidx[~pos], d.p[pos, f], d.n_pat, blocks[0][1].dtype)
        pid_pos = d.pidx[pos]
        n_neg_pat = np.bincount(d.pidx[~pos], minlength=d.n_pat).astype(np.float64)
        for rows, ct in blocks:
            cum = neg.prefix(ct)
            w_pos = ct[pid_pos]
            u2 = 2 * _dot_cols(w_pos, cum[neg.j_lo])
            if neg.tied.size:
                u2 += _dot_cols(w_pos[neg.tied], cum[neg.j_hi[neg.tied]] - cum[neg.j_lo[neg.tied]])
            n1, n0 = w_pos.sum(0, dtype=np.float64), n_neg_pat @ ct
            out[rows, f] = _ratio(u2, 2 * n1 * n0)
    return out


@BOOT_STATS.register("ap")
def _boot_ap(d: _Data, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Average precision with multiplicities: sum over positives of w_i * precision(score >= s_i) / n_pos."""
    out = np.full((counts.shape[0], d.p.shape[1]), np.nan)
    blocks = _count_blocks(counts, np.bincount(d.pidx))
    for f in range(d.p.shape[1]):
        pos = d.y[:, f] == 1
        q = d.p[pos, f]
        neg = _WeightBelow(d.p[~pos, f], d.pidx[~pos], q, d.n_pat, blocks[0][1].dtype)
        same = _WeightBelow(q, d.pidx[pos], q, d.n_pat, blocks[0][1].dtype)
        pid_pos = d.pidx[pos]
        n_neg_pat = np.bincount(d.pidx[~pos], minlength=d.n_pat).astype(np.float64)
        for rows, ct in blocks:
            w_pos = ct[pid_pos]
            n1, n0 = w_pos.sum(0, dtype=np.float64), n_neg_pat @ ct
            tp = n1 - same.prefix(ct)[same.j_lo]  # positives scored >= s_i
            fp = n0 - neg.prefix(ct)[neg.j_lo]
            precision = _ratio(tp, tp + fp)
            out[rows, f] = _ratio(_dot_cols(w_pos, np.nan_to_num(precision)), n1)
    return out


def _boot_confusion(d: _Data, counts: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    # Counts are sums over images, so a resample's totals are linear in the patient multiplicities.
    c = {}
    pred = d.p >= t
    pos = d.y == 1
    for k, m in {"tp": pred & pos, "fp": pred & ~pos, "fn": ~pred & pos, "tn": ~pred & ~pos}.items():
        c[k] = counts @ d.per_patient(m.astype(np.float64))
    return c


@BOOT_STATS.register("f1")
def _boot_f1(d: _Data, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    c = _boot_confusion(d, counts, t)
    return _f1(c["tp"], c["fp"], c["fn"])


@BOOT_STATS.register("sensitivity")
def _boot_sensitivity(d: _Data, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    c = _boot_confusion(d, counts, t)
    return _ratio(c["tp"], c["tp"] + c["fn"])


@BOOT_STATS.register("specificity")
def _boot_specificity(d: _Data, counts: np.ndarray, t: np.ndarray) -> np.ndarray:
    c = _boot_confusion(d, counts, t)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def _stat_fn(stat: str) -> Callable[[_Data, np.ndarray, np.ndarray], np.ndarray]:
    if stat not in BOOT_STATS:
        raise MetricsError(BOOT_STATS.unknown(stat))
    return BOOT_STATS[stat]


def _prepare(probs: Any, labels: Any, patient_ids: Any, *, what: str = "probs") -> _Data:
    p, y = _check(probs, labels, patient_ids, what=what)
    if patient_ids is None:
        raise MetricsError("patient_ids is required: the bootstrap resamples patients, not images")
    if p.shape[0] == 0:
        raise MetricsError(f"{what} has no images")
    _, pidx = np.unique(np.asarray(patient_ids).reshape(-1), return_inverse=True)
    return _Data(p, y, pidx.reshape(-1), int(pidx.max()) + 1)


def bootstrap_samples(
    probs: Any,
    labels: Any,
    patient_ids: Any,
    *,
    stat: str = "auc",
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
) -> np.ndarray:
    """(n_boot, F) values of `stat` (see BOOT_STATS) on patient resamples; NaN where undefined in a resample."""
    fn = _stat_fn(stat)
    d = _prepare(probs, labels, patient_ids)
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    return fn(d, counts, _thresholds(thresholds, d.p.shape[1]))


def _defined(y: np.ndarray) -> np.ndarray:
    """Findings with both positives and negatives: the ones macro averages and CIs are about."""
    n_pos = y.sum(0)
    return (n_pos > 0) & (n_pos < len(y))


def _macro_samples(samples: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-resample macro over the kept findings, dropping resamples where any kept finding is undefined.

    Averaging over whichever findings happen to be defined would change what is estimated from resample
    to resample; the count dropped is reported instead.
    """
    if not keep.any():
        return np.empty(0), samples.shape[0]
    sub = samples[:, keep]
    ok = np.all(np.isfinite(sub), axis=1)
    return sub[ok].mean(1), int((~ok).sum())


def _interval(x: np.ndarray, level: float) -> list[float | None]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return [None, None]
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap(
    probs: Any,
    labels: Any,
    patient_ids: Any,
    *,
    stats: Sequence[str] = ("auc", "f1"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
) -> dict[str, Any]:
    """Percentile CIs from resampling PATIENTS with replacement (all images of a drawn patient come along).

    Returns {stat: {"macro": [lo, hi], "per_finding": (F, 2) list, "n_dropped": resamples left out of the
    macro}, "n_boot", "level", "unit": "patient"}. A finding undefined on the full test set has [None, None].
    """
    level = _level(level)
    fns = {s: _stat_fn(s) for s in stats}
    d = _prepare(probs, labels, patient_ids)
    t = _thresholds(thresholds, d.p.shape[1])
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    keep = _defined(d.y)
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        samples = fn(d, counts, t)
        m, dropped = _macro_samples(samples, keep)
        out[name] = {
            "macro": _interval(m, level),
            "per_finding": [
                _interval(samples[:, f], level) if keep[f] else [None, None] for f in range(samples.shape[1])
            ],
            "n_dropped": dropped,
        }
    out.update({"n_boot": int(counts.shape[0]), "level": level, "unit": "patient"})
    return out


# ---------------------------------------------------------------------------------------------------------
# comparisons


def _bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p from the bootstrap distribution of a difference: twice the smaller tail beyond 0.

    The +1 terms keep p above 0 for a finite n_boot; p < 1 - level exactly when the percentile CI
    (nearly) excludes 0, so the p and the interval never tell different stories.
    """
    n = diffs.size
    le, ge = np.sum(diffs <= 0), np.sum(diffs >= 0)
    return float(min(1.0, 2 * min(le + 1, ge + 1) / (n + 1)))


def paired_bootstrap(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    patient_ids: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    finding: int | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """AUROC of model A minus model B on the same images and the same patient resamples.

    {"diff": macro (or `finding`'s) AUROC difference, "ci": [lo, hi] percentile interval, "p": two-sided,
    "n_boot", "n_dropped", "level", "unit": "patient", "metric": "AUROC"}.
    """
    level = _level(level)
    da = _prepare(probs_a, labels, patient_ids, what="probs_a")
    db = _prepare(probs_b, labels, patient_ids, what="probs_b")
    n_f = da.p.shape[1]
    keep = _defined(da.y)
    if finding is not None:
        if isinstance(finding, bool) or not isinstance(finding, (int, np.integer)) or not 0 <= finding < n_f:
            raise MetricsError(f"finding={finding!r} is out of range; valid: an index in 0..{n_f - 1} or None")
        why = _reason(int(da.y[:, finding].sum()), int(len(da.y) - da.y[:, finding].sum()))
        if why:
            raise MetricsError(f"finding {finding} has no AUROC to compare: {why}")
        keep = np.arange(n_f) == finding
    if not keep.any():
        raise MetricsError("no finding has both positives and negatives; there is no AUROC to compare")
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    t = np.full(n_f, 0.5)
    point_a = np.array([roc_auc_score(da.y[:, f], da.p[:, f]) if keep[f] else np.nan for f in range(n_f)])
    point_b = np.array([roc_auc_score(db.y[:, f], db.p[:, f]) if keep[f] else np.nan for f in range(n_f)])
    sa, sb = _boot_auc(da, counts, t), _boot_auc(db, counts, t)
    diffs, dropped = _macro_samples(sa - sb, keep)
    diff = float(np.mean(point_a[keep] - point_b[keep]))
    return {
        "diff": diff,
        "ci": _interval(diffs, level),
        "p": _bootstrap_p(diffs) if diffs.size else None,
        "auc_a": float(np.mean(point_a[keep])),
        "auc_b": float(np.mean(point_b[keep])),
        "n_boot": int(counts.shape[0]),
        "n_dropped": dropped,
        "level": level,
        "unit": "patient",
        "metric": "AUROC",
    }


def _midrank(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x, method="average")


def delong(probs_a: Any, probs_b: Any, labels_1d: Any) -> dict[str, float]:
    """DeLong's test for two correlated AUROCs of one finding on the same images (fast midrank form, Sun & Xu 2014).

    It treats images as independent; with several images per patient prefer paired_bootstrap.
    """
    ya = np.ravel(labels_1d)
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
# seeds


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


# ---------------------------------------------------------------------------------------------------------
# everything metrics.json holds


def evaluate(
    probs: Any,
    labels: Any,
    *,
    names: Sequence[str],
    patient_ids: Any,
    val_probs: Any = None,
    val_labels: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
) -> dict[str, Any]:
    """All test metrics as JSON-able values; the same predictions and seed always give the same numbers.

    F1, sensitivity and specificity use the paper's fixed 0.5 threshold; with validation predictions the
    THRESHOLD_RULES thresholds are chosen there and the test F1 they give is reported beside it.
    """
    p, y = _check(probs, labels, patient_ids, names)
    if p.shape[0] == 0:
        raise MetricsError("probs has no images; there is nothing to evaluate")
    if (val_probs is None) != (val_labels is None):
        raise MetricsError("val_probs and val_labels must be given together (or neither)")
    names = [str(n) for n in names]
    per = per_finding(p, y, names=names)
    boot = bootstrap(p, y, patient_ids, stats=("auc", "f1"), n_boot=n_boot, seed=seed, level=level)
    for f, name in enumerate(names):
        per[name]["auc_ci"] = boot["auc"]["per_finding"][f]
        per[name]["f1_ci"] = boot["f1"]["per_finding"][f]
    thresholds: dict[str, Any] = {"fixed": {"rule": "0.5", "f1_macro": macro(per, "f1")}}
    if val_probs is not None:
        vp, vy = _check(val_probs, val_labels, names=names, what="val_probs")
        for rule in THRESHOLD_RULES:
            t = choose_thresholds(vp, vy, rule=rule)
            on_test = per_finding(p, y, names=names, thresholds=t)
            thresholds[f"val_{rule}"] = {
                "rule": THRESHOLD_RULES[rule].description,
                "per_finding": {n: float(v) for n, v in zip(names, t)},
                "f1_macro": macro(on_test, "f1"),
                "sensitivity_macro": macro(on_test, "sensitivity"),
                "specificity_macro": macro(on_test, "specificity"),
            }
    return {
        "n": int(p.shape[0]),
        "n_patients": len(np.unique(np.asarray(patient_ids).reshape(-1))),
        "names": names,
        "bce": _num(bce_loss(p, y)),
        "focal": _num(focal_loss(p, y, gamma=focal_gamma, alpha=focal_alpha)),
        "auc_macro": macro(per, "auc"),
        "auc_weighted": weighted(per, "auc"),
        "ap_macro": macro(per, "ap"),
        "f1_macro": macro(per, "f1"),
        "sensitivity_macro": macro(per, "sensitivity"),
        "specificity_macro": macro(per, "specificity"),
        "auc_macro_ci": boot["auc"]["macro"],
        "f1_macro_ci": boot["f1"]["macro"],
        "auc_per_class": {n: per[n]["auc"] for n in names},
        "undefined": {n: per[n]["undefined"] for n in names if per[n]["undefined"]},
        "per_finding": per,
        "thresholds": thresholds,
        "ece": calibration(p, y)["ece"],
        "n_boot": boot["n_boot"],
        "ci_level": level,
        "ci_unit": "patient",
    }


# ---------------------------------------------------------------------------------------------------------
# words


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def summary_sentence(name_a: str, name_b: str, result: Mapping[str, Any], *, alpha: float = 0.05) -> str:
    """One sentence on a comparison (paired_bootstrap or delong), claiming a winner only when the numbers do.

    A winner needs p < alpha and, when the result has a CI, an interval that excludes 0. A Holm-adjusted
    "p_adjusted" in the result is used in place of "p".
    """
    metric = result.get("metric", "AUROC")
    diff = float(result["diff"])
    adjusted = result.get("p_adjusted") is not None
    p = result["p_adjusted"] if adjusted else result.get("p")
    ci = result.get("ci")
    has_ci = ci is not None and ci[0] is not None and ci[1] is not None
    p_word = ("Holm-adjusted " if adjusted else "") + (_p_text(p) if p is not None else "p unknown")
    excludes_0 = has_ci and (ci[0] > 0 or ci[1] < 0)
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
