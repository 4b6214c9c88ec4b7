"""The test split behind every interval: its images and patients, each finding's positives, and the resamples
a macro interval had to leave out (a finding with one class only in them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness import metrics
from harness.report.build import warnings_first
from harness.report.context import BOOT_SEED, Context
from harness.report.tables import Table

# A finding with fewer positive test patients than this has an interval that looks precise and is not: every
# resample that keeps it is the same few patients.
FEW_POSITIVE_PATIENTS = 5


def positives(labels: np.ndarray, patient_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per finding: positive images, and patients with at least one positive image."""
    pos = labels == 1
    frame = pd.DataFrame(pos).groupby(np.asarray(patient_id).reshape(-1)).any()
    return pos.sum(axis=0), frame.to_numpy().sum(axis=0)


def dropped_resamples(labels: np.ndarray, patient_id: np.ndarray, *, n_boot: int, seed: int) -> int:
    """Of the report's patient resamples, how many a macro interval leaves out: some finding defined on the
    test split has no positive or no negative image in them (metrics.bootstrap counts the same)."""
    counts, pidx = metrics.resample_counts(patient_id, n_boot=n_boot, seed=seed)
    y = labels == 1
    per_patient = np.zeros((counts.shape[1], y.shape[1]))
    np.add.at(per_patient, pidx, y)
    images = np.bincount(pidx, minlength=counts.shape[1]).astype(float)
    pos = counts @ per_patient  # (B, F) positive images in each resample
    neg = (counts @ images)[:, None] - pos
    defined = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
    return int(np.any(((pos == 0) | (neg == 0))[:, defined], axis=1).sum())


def testset_table(ctx: Context, names: list[str]) -> Table | None:
    """One row per finding: positive images and positive patients on the test split of the first cell (every
    cell the paired tests compare shares it); a note with the split's size and the dropped resamples."""
    data = next((d for c in ctx.cells if (d := ctx.cell_data(c)) is not None), None)
    if data is None:
        return None
    images, patients = positives(data.labels, data.patient_id)
    n_patients = len(np.unique(data.patient_id))
    few = [n for n, p in zip(names, patients) if 0 < p < FEW_POSITIVE_PATIENTS]
    rows, records = [], []
    for name, i, p in zip(names, images, patients):
        flag = " *" if name in few else ""
        rows.append([name, str(int(i)), f"{int(p)}{flag}"])
        records.append({"finding": name, "positive_images": int(i), "positive_patients": int(p)})
    dropped = dropped_resamples(data.labels, data.patient_id, n_boot=ctx.n_boot, seed=BOOT_SEED)
    summary: dict[str, Any] = {"images": len(data.labels), "patients": n_patients, "dropped": dropped}
    notes = [
        f"Test split: {summary['images']:,} images from {n_patients:,} patients; intervals resample patients.",
        f"Resamples left out of a macro interval: {dropped} of the report's {ctx.n_boot} (some finding had no "
        "positive or no negative image in them; the interval is over the rest).",
    ]
    if few:
        notes.append(
            f"* fewer than {FEW_POSITIVE_PATIENTS} positive patients: {', '.join(few)}. Their intervals resample "
            "those few patients only and look more precise than they are; read them as indicative."
        )
    frame = pd.DataFrame(records)
    frame.attrs.update(summary)
    return Table(
        "test_set",
        f"The test split ({ctx.dataset_title})",
        ["Finding", "Positive images", "Positive patients"],
        rows,
        frame,
        notes=warnings_first(ctx, notes),
    )
