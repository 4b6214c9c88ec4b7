"""Patient-level bootstrap: resampled statistics, vectorised over resamples, and percentile intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from harness.metrics.core import MetricsError, _check, _f1, _level, _logits, _n_boot, _ratio, _thresholds
from harness.registry import Registry

# Resampled statistics run over blocks of this many resamples: large enough to amortise numpy's per-call
# cost, small enough that a block's temporaries stay a few MB at NIH test-set size.
_BOOT_BLOCK = 64
# Resample draws are generated in pieces of about this many patient indices, to keep memory flat.
_DRAW_ELEMS = 2**21


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

    p: np.ndarray  # (N, F) float64 probabilities: what thresholded statistics compare with a threshold
    y: np.ndarray  # (N, F) int8
    pidx: np.ndarray  # (N,) patient index
    n_pat: int
    s: np.ndarray  # (N, F) float64 what ranking statistics rank: the logits when given, else p itself

    def per_patient(self, x: np.ndarray) -> np.ndarray:
        """(N, F) image values summed per patient -> (P, F); a resample's total is then counts @ this."""
        out = np.zeros((self.n_pat, x.shape[1]))
        np.add.at(out, self.pidx, x)
        return out


# A resampled statistic: (data, counts (B, P), thresholds (F,)) -> (B, F), NaN where undefined in a resample.
# Ranking statistics (auc, ap) read data.s, thresholded ones data.p.
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
        neg = _WeightBelow(d.s[~pos, f], d.pidx[~pos], d.s[pos, f], d.n_pat, blocks[0][1].dtype)
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
        q = d.s[pos, f]
        neg = _WeightBelow(d.s[~pos, f], d.pidx[~pos], q, d.n_pat, blocks[0][1].dtype)
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


def _prepare(probs: Any, labels: Any, patient_ids: Any, *, logits: Any = None, what: str = "probs") -> _Data:
    p, y = _check(probs, labels, patient_ids, what=what)
    s = p if logits is None else _logits(logits, p.shape, what=what.replace("probs", "logits"))
    if patient_ids is None:
        raise MetricsError("patient_ids is required: the bootstrap resamples patients, not images")
    if p.shape[0] == 0:
        raise MetricsError(f"{what} has no images")
    _, pidx = np.unique(np.asarray(patient_ids).reshape(-1), return_inverse=True)
    return _Data(p, y, pidx.reshape(-1), int(pidx.max()) + 1, s)


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


def _intervals(samples: np.ndarray, keep: np.ndarray, level: float) -> dict[str, Any]:
    """{"macro": [lo, hi], "per_finding": (F, 2) list, "n_dropped"} of (B, F) resampled values."""
    m, dropped = _macro_samples(samples, keep)
    return {
        "macro": _interval(m, level),
        "per_finding": [_interval(samples[:, f], level) if keep[f] else [None, None] for f in range(samples.shape[1])],
        "n_dropped": dropped,
    }


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
    logits: Any = None,
) -> dict[str, Any]:
    """Percentile CIs from resampling PATIENTS with replacement (all images of a drawn patient come along).

    Returns {stat: {"macro": [lo, hi], "per_finding": (F, 2) list, "n_dropped": resamples left out of the
    macro}, "n_boot", "level", "unit": "patient"}. A finding undefined on the full test set has [None, None].
    With `logits`, the ranking statistics (auc, ap) rank the logits; thresholded ones still use probs.
    """
    level = _level(level)
    fns = {s: _stat_fn(s) for s in stats}
    d = _prepare(probs, labels, patient_ids, logits=logits)
    t = _thresholds(thresholds, d.p.shape[1])
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    keep = _defined(d.y)
    out: dict[str, Any] = {name: _intervals(fn(d, counts, t), keep, level) for name, fn in fns.items()}
    out.update({"n_boot": int(counts.shape[0]), "level": level, "unit": "patient"})
    return out
