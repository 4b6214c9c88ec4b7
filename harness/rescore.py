"""A finished trial's metrics rebuilt from its stored predictions: `report --recompute`, and the heal of a damaged file.

The same evaluation, seed and bootstrap size as training, so an intact trial gets the same numbers back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness import metrics, store
from harness.config import TRIAL_FIELDS


def focal_terms(trial: Mapping[str, Any]) -> dict[str, float]:
    """The focal loss a trial's metrics report is computed with its own gamma and alpha, whatever it trained with."""
    return {k: float(trial.get(k, TRIAL_FIELDS[k].default)) for k in ("focal_gamma", "focal_alpha")}


def rebuilt_metrics(files: store.TrialFiles, *, why: str | None = None) -> dict[str, Any]:
    """metrics.json from predictions.npz (and trial.json and history.csv where metrics.json is unreadable).

    What cannot be recomputed (timings, provenance, where it ran) is kept from the old metrics when they
    can be read, else rebuilt from the trial and its history. `why` (a damaged file) is recorded.
    """
    record = files.read_trial()
    trial = {k: v for k, v in record.items() if k in TRIAL_FIELDS}
    p = files.read_predictions()
    try:
        before = files.read_metrics()
    except store.Unreadable:
        before = _from_history(files, record, trial, p)
    # Training evaluates with the trial's seed and focal parameters.
    kwargs: dict[str, Any] = {"seed": int(trial.get("seed", 0)), **focal_terms(trial)}
    if "n_boot" in before:
        kwargs["n_boot"] = int(before["n_boot"])
    if "probs" in p:  # scored on the test split, thresholds chosen on validation, as training scored it
        scored = {"probs": p["probs"], "labels": p["labels"], "patient_ids": p["patient_id"], "logits": p.get("logits")}
        scored.update(val_probs=p.get("val_probs"), val_labels=p.get("val_labels"), val_logits=p.get("val_logits"))
    else:  # a search trial never looks at the test split: validation metrics only
        scored = {"probs": p["val_probs"], "labels": p["val_labels"], "patient_ids": p["val_patient_id"]}
        scored["logits"] = p.get("val_logits")  # None for predictions saved before logits were
    fresh = metrics.evaluate(
        scored.pop("probs"), scored.pop("labels"), names=[str(n) for n in p["names"]], **scored, **kwargs
    )
    out = {**before, **fresh}
    if why is not None:
        out["recomputed"] = {"from": files.PREDICTIONS, "why": why, **store.provenance()}
    return out


# What training records that no other file holds: kept as None (unknown) when metrics.json is lost, not
# guessed. The sum of history.csv's epoch times, for one, is not the training time (it misses what ran between).
UNKNOWN_WITHOUT_METRICS = (
    "n_train",
    "data_root",
    "skipped_images",
    "device",
    "device_name",
    "peak_host_mb",
    "ray_node_id",
    "train_seconds",
)


def _from_history(
    files: store.TrialFiles, record: dict[str, Any], trial: dict[str, Any], p: dict[str, Any]
) -> dict[str, Any]:
    """What training records beside the statistics, from the trial, its predictions, its history and DONE (what
    produced it); what none of them holds is None and named in "unknown"."""
    history = files.read_history()
    aucs = [h["val_auc"] for h in history if isinstance(h.get("val_auc"), float) and math.isfinite(h["val_auc"])]
    speeds = [h.get("train_images_per_s") for h in history]
    try:
        done = files.read_done()
    except store.Unreadable:
        done = {}
    made = {k: done[k] for k in store.provenance() if k in done}  # version, commit, host, ... when committed
    test = "probs" in p
    return {
        **dict.fromkeys(UNKNOWN_WITHOUT_METRICS),
        **made,
        "unknown": list(UNKNOWN_WITHOUT_METRICS),
        # The mean of the epochs' speeds, as train.py records it.
        "train_images_per_s": sum(speeds) / len(speeds) if speeds and None not in speeds else None,
        "key": record.get("key", files.key),
        "label": record.get("label", files.key),
        "trial": trial,
        "dataset": trial.get("dataset"),
        "split": "official" if test else "validation",
        "n_val": len(p["val_labels"]),
        "n_test": len(p["labels"]) if test else 0,
        "best_val_auc": max(aucs) if aucs else None,
        "epochs_run": len(history),
    }


HEALABLE = (store.TrialFiles.METRICS, store.TrialFiles.HISTORY)


def heal(files: store.TrialFiles, damaged: dict[str, str], *, weights: bool) -> bool:
    """Mend a done trial whose only damaged files are metrics.json (recomputed from its intact predictions)
    and history.csv (written back from DONE's copy); False when anything else is damaged or cannot be mended.

    `damaged` is files.damaged(weights=...); after the rewrite every checksum is checked again.
    """
    if not damaged or not set(damaged) <= set(HEALABLE):
        return False
    if files.HISTORY in damaged and not files.restore_history():
        return False
    if files.METRICS in damaged:
        if not files.has_predictions():
            return False
        try:
            files.replace_metrics(rebuilt_metrics(files, why="; ".join(damaged.values())))
        except (store.Unreadable, KeyError, ValueError):
            return False
    return not files.damaged(weights=weights)
