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


def _checked(
    probs: Any,
    labels: Any,
    patient_ids: Any,
    names: Sequence[str],
    logits: Any,
    val_probs: Any,
    val_labels: Any,
    val_logits: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """The test predictions, labels and logits checked, and the validation arguments' pairing; names as str."""
    p, y = _check(probs, labels, patient_ids, names)
    s = None if logits is None else _logits(logits, p.shape)
    if p.shape[0] == 0:
        raise MetricsError("probs has no images; there is nothing to evaluate")
    if (val_probs is None) != (val_labels is None):
        raise MetricsError("val_probs and val_labels must be given together (or neither)")
    if val_logits is not None and val_probs is None:
        raise MetricsError("val_logits needs val_probs and val_labels beside it")
    return p, y, s, [str(n) for n in names]


def _with_intervals(per: dict[str, dict[str, Any]], boot: dict[str, Any], names: list[str]) -> None:
    """Each finding's AUROC and F1 patient-bootstrap intervals written into its per-finding record."""
    for f, name in enumerate(names):
        per[name]["auc_ci"] = boot["auc"]["per_finding"][f]
        per[name]["f1_ci"] = boot["f1"]["per_finding"][f]


def _scored(
    p: np.ndarray,
    y: np.ndarray,
    s: np.ndarray | None,
    patient_ids: Any,
    names: list[str],
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-finding metrics at 0.5 with their patient-bootstrap intervals: (per finding, the bootstrap)."""
    per = per_finding(p, y, names=names, logits=s)
    boot = bootstrap(p, y, patient_ids, stats=("auc", "f1"), n_boot=n_boot, seed=seed, level=level, logits=s)
    _with_intervals(per, boot, names)
    return per, boot


def _on_validation(
    p: np.ndarray, y: np.ndarray, names: list[str], val_probs: Any, val_labels: Any, val_logits: Any
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The validation output's degenerate record, and each THRESHOLD_RULES rule's thresholds chosen on
    validation with the test F1, sensitivity and specificity they give: (degenerate_val, thresholds)."""
    vp, vy = _check(val_probs, val_labels, names=names, what="val_probs")
    vs = None if val_logits is None else _logits(val_logits, vp.shape, what="val_logits")
    thresholds: dict[str, dict[str, Any]] = {}
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
    return degenerate(vp, logits=vs, names=names), thresholds


def _macros(per: dict[str, dict[str, Any]], boot: dict[str, Any]) -> dict[str, Any]:
    """The averages over findings (macro, and AUROC weighted by positives) and the macro intervals."""
    return {
        "auc_macro": macro(per, "auc"),
        "auc_weighted": weighted(per, "auc"),
        "ap_macro": macro(per, "ap"),
        "f1_macro": macro(per, "f1"),
        "sensitivity_macro": macro(per, "sensitivity"),
        "specificity_macro": macro(per, "specificity"),
        "auc_macro_ci": boot["auc"]["macro"],
        "f1_macro_ci": boot["f1"]["macro"],
    }


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
    p, y, s, names = _checked(probs, labels, patient_ids, names, logits, val_probs, val_labels, val_logits)
    per, boot = _scored(p, y, s, patient_ids, names, n_boot, seed, level)
    thresholds: dict[str, Any] = {"fixed": {"rule": "0.5", "f1_macro": macro(per, "f1")}}
    extra: dict[str, Any] = {"degenerate": degenerate(p, logits=s, names=names)}
    if val_probs is not None:
        extra["degenerate_val"], on_val = _on_validation(p, y, names, val_probs, val_labels, val_logits)
        thresholds.update(on_val)
    return {
        "n": int(p.shape[0]),
        "n_patients": len(np.unique(np.asarray(patient_ids).reshape(-1))),
        "names": names,
        "bce": _num(bce_loss(p, y)),
        "focal": _num(focal_loss(p, y, gamma=focal_gamma, alpha=focal_alpha)),
        **_macros(per, boot),
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
