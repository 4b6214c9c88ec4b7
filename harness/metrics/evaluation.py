"""Everything metrics.json holds for one trial's predictions, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.metrics.bootstrap import bootstrap
from harness.metrics.core import (
    THRESHOLD_RULES,
    MetricsError,
    _check,
    _logits,
    _num,
    _unknown,
    bce_loss,
    calibration,
    choose_thresholds,
    focal_loss,
    macro,
    per_finding,
    weighted,
)
from harness.metrics.degenerate import degenerate


def evaluate(
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
    """All test metrics as JSON-able values; the same predictions and seed always give the same numbers.

    F1, sensitivity and specificity use the paper's fixed 0.5 threshold; with validation predictions the
    THRESHOLD_RULES thresholds are chosen there and the test F1 they give is reported beside it.

    With `logits` (the same images' pre-sigmoid outputs), AUROC and AP and their intervals rank the logits,
    which keep the order a saturated float32 sigmoid loses; everything thresholded, and the losses, still
    use the probabilities. "degenerate" is the `degenerate` record of the test output ("scores" in it says
    what the AUROC ranked); with validation predictions "degenerate_val" is that of the validation output,
    read from `val_logits` when given.
    """
    if _unknown(labels) or (val_labels is not None and _unknown(val_labels)):
        from harness.metrics.masked import evaluate_masked  # labels a dataset does not give are left out

        return evaluate_masked(
            probs, labels, names=names, patient_ids=patient_ids, logits=logits, val_probs=val_probs,
            val_labels=val_labels, val_logits=val_logits, n_boot=n_boot, seed=seed, level=level,
            focal_gamma=focal_gamma, focal_alpha=focal_alpha,
        )  # fmt: skip
    p, y = _check(probs, labels, patient_ids, names)
    s = None if logits is None else _logits(logits, p.shape)
    if p.shape[0] == 0:
        raise MetricsError("probs has no images; there is nothing to evaluate")
    if (val_probs is None) != (val_labels is None):
        raise MetricsError("val_probs and val_labels must be given together (or neither)")
    if val_logits is not None and val_probs is None:
        raise MetricsError("val_logits needs val_probs and val_labels beside it")
    names = [str(n) for n in names]
    per = per_finding(p, y, names=names, logits=s)
    boot = bootstrap(p, y, patient_ids, stats=("auc", "f1"), n_boot=n_boot, seed=seed, level=level, logits=s)
    for f, name in enumerate(names):
        per[name]["auc_ci"] = boot["auc"]["per_finding"][f]
        per[name]["f1_ci"] = boot["f1"]["per_finding"][f]
    thresholds: dict[str, Any] = {"fixed": {"rule": "0.5", "f1_macro": macro(per, "f1")}}
    extra: dict[str, Any] = {"degenerate": degenerate(p, logits=s, names=names)}
    if val_probs is not None:
        vp, vy = _check(val_probs, val_labels, names=names, what="val_probs")
        vs = None if val_logits is None else _logits(val_logits, vp.shape, what="val_logits")
        extra["degenerate_val"] = degenerate(vp, logits=vs, names=names)
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
        **extra,
    }
