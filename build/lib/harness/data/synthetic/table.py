"""The synthetic set's labels: whole patients sampled from the real NIH table, label noise, the patient-wise test list."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import ConfigError

SOURCE_TABLE = "data/Data_Entry_2017_v2020.csv.gz"  # inside the torchxrayvision package
TEST_SHARE = 0.2  # Kaggle's official split is patient-wise, about 80/20 by images

# Independent random streams, so that changing one draw (say the label noise) leaves the others alone.
SAMPLE_STREAM, SPLIT_STREAM, NOISE_STREAM, IMAGE_STREAM, PATIENT_STREAM = range(5)


def source_table_path() -> Path:
    """The real NIH label table shipped inside torchxrayvision (found without importing it: that costs seconds)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the synthetic dataset samples labels from torchxrayvision's copy of the NIH table; "
            "install torchxrayvision (pip install torchxrayvision)"
        )
    path = Path(spec.submodule_search_locations[0]) / SOURCE_TABLE
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing; reinstall torchxrayvision, whose copy of the NIH table "
            f"the synthetic dataset samples from"
        )
    return path


@functools.lru_cache(maxsize=1)
def real_table() -> pd.DataFrame:
    """The real NIH label table, read once per process, with columns as in Data_Entry_2017."""
    table = pd.read_csv(source_table_path(), keep_default_na=False)
    # Patients and their follow-ups in NIH's own order, so whole patients are contiguous.
    return table.sort_values(["Patient ID", "Follow-up #"], kind="stable").reset_index(drop=True)


def sample_table(n: int, *, seed: int) -> pd.DataFrame:
    """n rows of the real NIH table, whole patients drawn at random with their follow-ups in order.

    Patients are renumbered 1..P in the order drawn and follow-ups 0..k-1, so file names stay
    NIH-like; the last patient is cut short to make exactly n images. Columns are the
    Data_Entry_2017 ones; `Finding Labels` holds the true (drawn) labels.
    """
    real = real_table()
    if n > len(real):
        raise ConfigError(
            f"synthetic dataset: n={n} is more than the {len(real)} images of the NIH table it is sampled from"
        )
    pid = real["Patient ID"].to_numpy()
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    sizes = np.diff(np.r_[starts, len(pid)])
    order = np.random.default_rng([seed, SAMPLE_STREAM]).permutation(len(starts))
    taken = int(np.searchsorted(np.cumsum(sizes[order]), n, side="left")) + 1
    rows, new_pid, follow = [], [], []
    left = n
    for k, p in enumerate(order[:taken]):
        m = min(int(sizes[p]), left)
        rows.append(np.arange(starts[p], starts[p] + m))
        new_pid.append(np.full(m, k + 1))
        follow.append(np.arange(m))
        left -= m
    out = real.iloc[np.concatenate(rows)].reset_index(drop=True)
    out["Patient ID"] = np.concatenate(new_pid)
    out["Follow-up #"] = np.concatenate(follow)
    out["Image Index"] = [f"{p:08d}_{f:03d}.png" for p, f in zip(out["Patient ID"], out["Follow-up #"])]
    return out


def noisy(truth: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Flip each label independently with probability `rate`, like NIH's text-mined labels' errors."""
    # Drawn whatever the rate, so a higher rate flips a superset of a lower one's labels.
    flips = np.random.default_rng([seed, NOISE_STREAM]).random(truth.shape) < rate
    return truth ^ flips


def draw_test_patients(patient_ids: np.ndarray, seed: int) -> set[int]:
    """Whole patients, drawn at random, until the test list holds its share of the images."""
    ids, sizes = np.unique(patient_ids, return_counts=True)
    if len(ids) < 2:
        return set()
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(ids))
    taken = np.cumsum(sizes[order])
    target = TEST_SHARE * len(patient_ids)
    k = int(np.searchsorted(taken, target, side="left")) + 1  # the first count of patients reaching the share
    if k > 1 and target - taken[k - 2] < taken[k - 1] - target:
        k -= 1  # one patient fewer lands closer (a patient can hold a hundred images)
    return {int(p) for p in ids[order[: min(k, len(ids) - 1)]]}
