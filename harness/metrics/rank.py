"""Which setting is best, as a probability: the share of bootstrap resamples in which each ranks first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.metrics.bootstrap import _boot_auc, _defined, resample_counts
from harness.metrics.core import MetricsError
from harness.metrics.seeds import by_seed, seed_mean, seed_picks


def rank_first(samples: np.ndarray) -> np.ndarray:
    """(B, k) resampled values of k settings -> each one's share of the resamples in which it is highest.

    A resample where several tie for the top counts for each as 1 / (number tied), so the shares sum to 1.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MetricsError(f"rank_first needs (resamples, settings) values, got shape {x.shape}")
    top = x == x.max(axis=1, keepdims=True)
    return (top / top.sum(axis=1, keepdims=True)).mean(axis=0)


def probability_best(
    probs_by_cell: Sequence[Sequence[Any]],
    labels: Any,
    patient_ids: Any,
    *,
    logits_by_cell: Sequence[Sequence[Any] | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Settings scored on the same test images (each a list of its seeds' predictions): P(ranks first).

    Every resample draws the test patients once, and seed positions once, for all settings (seeds are paired
    by position, as the report orders them by value); each setting's value is its seed-mean macro AUROC on it.
    Choosing the best on the test set and then testing it against the runner-up ignores that the choice was
    made on the same data; the share of resamples won says how sure the choice is. Resamples in which a
    finding has one class only are left out, and counted. Returns {"p_best": [...], "n_boot", "n_dropped"}.
    """
    if not probs_by_cell:
        raise MetricsError("probability_best needs at least one setting")
    cells = [
        by_seed(
            p,
            labels,
            patient_ids,
            None if logits_by_cell is None else logits_by_cell[i],
            what=f"probs[{i}]",
            caller="probability_best",
        )
        for i, p in enumerate(probs_by_cell)
    ]
    counts, _ = resample_counts(patient_ids, n_boot=n_boot, seed=seed)
    keep = _defined(cells[0][0].y)
    if not keep.any():
        raise MetricsError("no finding has both positives and negatives; there is no AUROC to rank")
    t = np.full(keep.size, 0.5)
    macro = []
    for data in cells:
        boot = seed_mean([_boot_auc(d, counts, t) for d in data], seed_picks(len(data), len(counts), seed))
        macro.append(boot[:, keep])
    stack = np.stack(macro, axis=1)  # (B, k, F)
    ok = np.all(np.isfinite(stack), axis=(1, 2))
    p_best = rank_first(stack[ok].mean(axis=2)) if ok.any() else np.full(len(cells), np.nan)
    return {"p_best": [float(v) for v in p_best], "n_boot": len(counts), "n_dropped": int((~ok).sum())}
