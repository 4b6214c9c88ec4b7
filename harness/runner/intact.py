"""Done means intact: a finished trial's files checked against DONE's checksums before a run skips it.

A trial whose only damage is its metrics file, with its predictions intact, gets its metrics recomputed
from them (the same evaluation and seed as training, so the same numbers); any other damage makes the
trial not done, and the run trains it again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from harness import store as store_mod
from harness.config import TRIAL_FIELDS

log = logging.getLogger(__name__)


def _damaged(files: store_mod.TrialFiles, problems: list[str]) -> set[str]:
    """The names of the files the problem lines are about (each line starts with the file's path)."""
    names = {n for n in (files.DONE, files.TRIAL, files.METRICS, *files.CHECKED)}
    return {n for n in names for p in problems if p.startswith(f"{files.path / n}:")}


def _rebuilt_metrics(files: store_mod.TrialFiles, reason: str) -> dict[str, Any]:
    """metrics.json from predictions.npz, trial.json and history.csv, as run_trial wrote it."""
    from harness import metrics

    record = files.read_trial()
    trial = {k: v for k, v in record.items() if k in TRIAL_FIELDS}
    p = files.read_predictions()
    names = [str(n) for n in p["names"]]
    test = "probs" in p
    if test:
        fresh = metrics.evaluate(
            p["probs"],
            p["labels"],
            names=names,
            patient_ids=p["patient_id"],
            val_probs=p["val_probs"],
            val_labels=p["val_labels"],
            seed=int(trial.get("seed", 0)),
        )
    else:  # a search trial: validation metrics only
        fresh = metrics.evaluate(
            p["val_probs"],
            p["val_labels"],
            names=names,
            patient_ids=p["val_patient_id"],
            seed=int(trial.get("seed", 0)),
        )
    try:
        before = files.read_metrics()  # readable but changed: keep what cannot be recomputed (timings, where it ran)
    except store_mod.Unreadable:
        before = {}
    history = files.read_history()
    aucs = [h["val_auc"] for h in history if isinstance(h.get("val_auc"), float) and math.isfinite(h["val_auc"])]
    return {
        "key": record.get("key", files.key),
        "label": record.get("label", files.key),
        "trial": trial,
        "dataset": trial.get("dataset"),
        "split": "official" if test else "validation",
        "n_val": len(p["val_labels"]),
        "n_test": len(p["labels"]) if test else 0,
        "best_val_auc": max(aucs) if aucs else None,
        "epochs_run": len(history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in history),
        **before,
        **fresh,
        "recomputed": {"from": files.PREDICTIONS, "why": reason, **store_mod.provenance()},
    }


def intact(files: store_mod.TrialFiles) -> bool:
    """Whether a trial marked done is a usable result; metrics damaged beside intact predictions are mended."""
    problems = files.problems(weights=True)
    if not problems:
        return True
    damaged = _damaged(files, problems)
    if damaged == {files.METRICS} and files.has_predictions():
        try:
            files.replace_metrics(_rebuilt_metrics(files, "; ".join(problems)))
        except (store_mod.Unreadable, KeyError, ValueError) as exc:
            log.warning("%s: could not recompute its metrics (%s); training it again", files.path, exc)
            return False
        # A damaged metrics file hides the other checksums from problems(): they are checked now.
        left = files.problems(weights=True)
        if not left:
            log.warning("%s: recomputed its metrics from its predictions (%s)", files.path, "; ".join(problems))
            return True
        problems = left
    log.warning("%s: %s; training it again", files.path, "; ".join(problems))
    return False


def redo(files: store_mod.TrialFiles) -> None:
    """Clear what a damaged trial's retraining must not read back: its weights and any resume state."""
    files.drop_checkpoints()
