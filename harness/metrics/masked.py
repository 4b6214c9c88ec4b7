"""Metrics where some labels are unknown (NaN): each finding scored on the images that label it, nothing else.

CheXpert and MIMIC label 7 of the 14 findings, and some entries of those are blank or masked uncertain. An
unknown label is not a negative one: each finding's AUROC, AP, F1 and losses use only the images where it is
known, and a finding known nowhere is undefined (left out of every macro), as one without positives is. The
patient bootstrap draws one set of patients per resample for every finding, so the macro interval is joint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.metrics.bootstrap import BOOT_STATS, _Data, _intervals, resample_counts
from harness.metrics.core import (
    THRESHOLD_RULES,
    MetricsError,
    _level,
    _num,
    _thresholds,
    bce_loss,
    calibration,
    choose_thresholds,
    focal_loss,
    macro,
    per_finding,
)
from harness.metrics.evaluation import _macros, _with_intervals


def _columns(probs: Any, labels: Any, logits: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim != 2 or p.shape != y.shape:
        raise MetricsError(f"probs {p.shape} and labels {y.shape} must be the same (images, findings) shape")
    s = p if logits is None else np.asarray(logits, dtype=np.float64)
    return p, y, s, np.isfinite(y)


def per_finding_masked(
    probs: Any,
    labels: Any,
    *,
    names: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    logits: Any = None,
) -> dict[str, dict[str, Any]]:
    """core.per_finding, one finding at a time on the images where its label is known; "n_known" is added."""
    p, y, s, known = _columns(probs, labels, logits)
    t = _thresholds(thresholds, p.shape[1])
    out: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(names):
        k = known[:, f]
        if not k.any():
            out[str(name)] = {
                "auc": None, "ap": None, "f1": None, "sensitivity": None, "specificity": None,
                "threshold": float(t[f]), "prevalence": None, "n_pos": 0, "n_neg": 0, "n_known": 0,
                "undefined": "not labelled in this dataset",
            }  # fmt: skip
            continue
        one = per_finding(
            p[k, f : f + 1], y[k, f : f + 1], names=[name], thresholds=t[f : f + 1], logits=s[k, f : f + 1]
        )
        out[str(name)] = {**one[str(name)], "n_known": int(k.sum())}
    return out


def bootstrap_masked(
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
    """bootstrap() with unknown labels left out per finding; the same patient draws serve every finding."""
    level = _level(level)
    p, y, s, known = _columns(probs, labels, logits)
    t = _thresholds(thresholds, p.shape[1])
    counts, pidx = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    n_pat = counts.shape[1]
    samples = {name: np.full((counts.shape[0], p.shape[1]), np.nan) for name in stats}
    keep = np.zeros(p.shape[1], bool)
    for f in range(p.shape[1]):
        k = known[:, f]
        yf = y[k, f].astype(np.int8)
        if not (yf.any() and not yf.all()):
            continue  # undefined on the full set: [None, None], as bootstrap() gives it
        keep[f] = True
        d = _Data(p[k, f : f + 1], yf[:, None], pidx[k], n_pat, s[k, f : f + 1])
        for name in stats:
            samples[name][:, f] = BOOT_STATS[name](d, counts, t[f : f + 1])[:, 0]
    out: dict[str, Any] = {name: _intervals(samples[name], keep, level) for name in stats}
    out.update({"n_boot": int(counts.shape[0]), "level": level, "unit": "patient"})
    return out


def _pooled(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.isfinite(y)
    return p[k], y[k].astype(np.int8)


def _val_thresholds_masked(
    p: np.ndarray, y: np.ndarray, names: list[str], val_probs: Any, val_labels: Any
) -> dict[str, dict[str, Any]]:
    """Each THRESHOLD_RULES rule's thresholds chosen on the validation images that label each finding (0.5
    for a finding validation never labels), with the test F1 they give."""
    vp, vy, _, vknown = _columns(val_probs, val_labels, None)
    out: dict[str, dict[str, Any]] = {}
    for rule in THRESHOLD_RULES:
        chosen = np.array(
            [choose_thresholds(vp[vknown[:, f], f], vy[vknown[:, f], f], rule=rule)[0] if vknown[:, f].any()
             else 0.5 for f in range(vp.shape[1])]
        )  # fmt: skip
        on_test = per_finding_masked(p, y, names=names, thresholds=chosen)
        out[f"val_{rule}"] = {
            "rule": THRESHOLD_RULES[rule].description,
            "per_finding": {n: float(v) for n, v in zip(names, chosen)},
            "f1_macro": macro(on_test, "f1"),
        }
    return out


def evaluate_masked(
    probs: Any,
    labels: Any,
    *,
    names: Sequence[str],
    patient_ids: Any,
    logits: Any = None,
    val_probs: Any = None,
    val_labels: Any = None,
    val_logits: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
) -> dict[str, Any]:
    """evaluation.evaluate's record for labels with unknown entries: per-finding metrics on the known ones, the
    losses and calibration over the known entries, "labelled" naming the findings the test split labels."""
    from harness.metrics.degenerate import degenerate

    p, y, s, known = _columns(probs, labels, logits)
    names = [str(n) for n in names]
    per = per_finding_masked(p, y, names=names, logits=None if logits is None else s)
    boot = bootstrap_masked(
        p, y, patient_ids, n_boot=n_boot, seed=seed, level=level, logits=None if logits is None else s
    )
    _with_intervals(per, boot, names)
    thresholds: dict[str, Any] = {"fixed": {"rule": "0.5", "f1_macro": macro(per, "f1")}}
    if val_probs is not None and val_labels is not None:
        thresholds.update(_val_thresholds_masked(p, y, names, val_probs, val_labels))
    pp, py = _pooled(p, y)
    return {
        "n": int(p.shape[0]),
        "n_patients": len(np.unique(np.asarray(patient_ids).reshape(-1))),
        "names": names,
        "labelled": [n for f, n in enumerate(names) if known[:, f].any()],
        "n_known": {n: int(known[:, f].sum()) for f, n in enumerate(names)},
        "bce": _num(bce_loss(pp, py)) if py.size else None,
        "focal": _num(focal_loss(pp, py, gamma=focal_gamma, alpha=focal_alpha)) if py.size else None,
        **_macros(per, boot),
        "auc_per_class": {n: per[n]["auc"] for n in names},
        "undefined": {n: per[n]["undefined"] for n in names if per[n]["undefined"]},
        "per_finding": per,
        "thresholds": thresholds,
        "ece": calibration(pp, py)["ece"] if py.size else None,
        "n_boot": boot["n_boot"],
        "ci_level": level,
        "ci_unit": "patient",
        "degenerate": degenerate(p, logits=None if logits is None else s, names=names),
    }


def paired_bootstrap_masked(
    *,
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    patient_ids: Any,
    logits_a: Any = None,
    logits_b: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """compare.paired_bootstrap (macro AUROC of A minus B on the same images and patient resamples) with each
    finding scored on the images that label it; the same patient draws serve every finding and both models."""
    from harness.metrics.bootstrap import _interval, _macro_samples
    from harness.metrics.compare import bootstrap_test
    from harness.metrics.core import roc_auc

    level = _level(level)
    pa, y, sa, known = _columns(probs_a, labels, logits_a)
    pb, _, sb, _ = _columns(probs_b, labels, logits_b)
    counts, pidx = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    n_pat, t = counts.shape[1], np.full(1, 0.5)
    diffs = np.full((counts.shape[0], pa.shape[1]), np.nan)
    keep = np.zeros(pa.shape[1], bool)
    auc_a, auc_b = [], []
    for f in range(pa.shape[1]):
        k = known[:, f]
        yf = y[k, f].astype(np.int8)[:, None]
        if not (yf.any() and not yf.all()):
            continue
        keep[f] = True
        one = [_Data(p[k, f : f + 1], yf, pidx[k], n_pat, s[k, f : f + 1]) for p, s in ((pa, sa), (pb, sb))]
        diffs[:, f] = (BOOT_STATS["auc"](one[0], counts, t) - BOOT_STATS["auc"](one[1], counts, t))[:, 0]
        auc_a.append(roc_auc(yf, sa[k, f : f + 1])[0])
        auc_b.append(roc_auc(yf, sb[k, f : f + 1])[0])
    if not keep.any():
        raise MetricsError("no finding has both positives and negatives among its known labels; no AUROC to compare")
    samples, dropped = _macro_samples(diffs, keep)
    diff = float(np.mean(auc_a) - np.mean(auc_b))
    return {
        "diff": diff,
        "ci": _interval(samples, level),
        "p": bootstrap_test(diff, samples) if samples.size else None,
        "auc_a": float(np.mean(auc_a)),
        "auc_b": float(np.mean(auc_b)),
        "n_boot": int(counts.shape[0]),
        "n_dropped": dropped,
        "level": level,
        "unit": "patient",
        "metric": "AUROC",
    }
