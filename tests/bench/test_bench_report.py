"""`harness report` over many stored trials: 100 and 1,000, a dozen of them with NIH-sized test predictions.

Time both sizes to see that the report grows linearly with the trials:
    pytest tests/bench/test_bench_report.py -m bench --benchmark-enable
(on a busy 2-core CPU, run back to back: 61 s for 100 trials and 279 s for 1,000 before the point AUROC was
computed without sklearn's input checks, 31 s and 135 s after; the paired tests' resampled AUROC is most of it)
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from unit.test_report import ARCHS, FINDINGS, store_trial, trial_metrics, trial_predictions

from harness import cli
from harness.config import Trial

pytestmark = pytest.mark.bench

SMALL_IMAGES, SMALL_PATIENTS = 240, 80
NIH_IMAGES, NIH_PATIENTS = 25_596, 2_797  # NIH's official test list
N_NIH = 12  # the paper's grid (3 archs x pretrained or not x 2 losses) at NIH test size
NOISES = 7  # distinct prediction sets per size; trials share them so the grid is quick to write


@cache
def _test_set(n_images: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n_images)
    patient = np.sort(rng.integers(0, n_patients, n_images)) + 10_000
    prevalence = np.linspace(0.02, 0.2, len(FINDINGS))
    labels = (rng.random((n_images, len(FINDINGS))) < prevalence).astype(np.uint8)
    return labels, patient, np.array([f"{i:08d}_000.png" for i in range(n_images)])


@cache
def _stored(n_images: int, n_patients: int, strength: float, noise: int) -> tuple[dict, dict]:
    """One prediction set and its metrics, computed once and shared by every trial that draws it."""
    predictions = trial_predictions(*_test_set(n_images, n_patients), strength=strength, noise_seed=noise)
    return predictions, trial_metrics(predictions, seed=0)


def stored_grid(root: Path, n: int, *, nih_sized: int = N_NIH) -> Path:
    """n finished trials through the store: arch x pretrained x loss x lr, the first `nih_sized` at NIH size."""
    grid_dir = root / f"scale{n}"
    combos = [(a, p, loss) for a in ARCHS for p in (False, True) for loss in ("bce", "focal")]
    for i in range(n):
        arch, pretrained, loss = combos[i % len(combos)]
        trial = Trial(dataset="nih", arch=arch, pretrained=pretrained, loss=loss, lr=1e-5 * (1 + i // len(combos)))
        size = (NIH_IMAGES, NIH_PATIENTS) if i < nih_sized else (SMALL_IMAGES, SMALL_PATIENTS)
        predictions, stats = _stored(*size, 1.0 if pretrained else 0.3, i % NOISES)
        store_trial(grid_dir, trial, predictions, stats, dataset="nih")
    return grid_dir


@pytest.mark.parametrize("n", [100, 1000])
def test_report_over_stored_trials(benchmark, tmp_path_factory, n):
    grid_dir = stored_grid(tmp_path_factory.mktemp("grid"), n)
    out = tmp_path_factory.mktemp("report")
    code = benchmark.pedantic(cli.main, args=(["report", str(grid_dir), "--out", str(out)],), rounds=1, iterations=1)
    assert code == cli.EXIT_OK and (out / "index.html").is_file()
    if benchmark.stats is not None:
        benchmark.extra_info["trials_per_s"] = round(n / benchmark.stats.stats.mean, 1)


if __name__ == "__main__":  # a grid to profile: PYTHONPATH=tests python tests/bench/test_bench_report.py DIR N
    print(stored_grid(Path(sys.argv[1]), int(sys.argv[2])))
