"""Test-set statistics (numpy, scipy and scikit-learn only); callers import everything from here.

core: input checks, per-finding metrics, the paper's losses, thresholds chosen on validation.
bootstrap: patient-level resampling and percentile intervals.
compare: paired comparisons of two models (paired bootstrap, DeLong, Holm) and the sentence that reports one.
seeds: several seeds of one setting (summaries, the two-level seed and patient bootstrap).
degenerate: saturated or constant output, per finding and per trial.
evaluation: everything metrics.json holds.
"""

from harness.metrics.bootstrap import BOOT_STATS, bootstrap, resample_counts
from harness.metrics.compare import (
    bootstrap_test,
    delong,
    holm,
    paired_bootstrap,
    paired_seed_bootstrap,
    summary_sentence,
)
from harness.metrics.core import (
    EPS,
    FALLBACK_THRESHOLD,
    THRESHOLD_RULES,
    MetricsError,
    ThresholdRule,
    bce_loss,
    calibration,
    choose_thresholds,
    constant_for_bce,
    focal_loss,
    macro,
    per_finding,
    roc_auc,
    roc_curve_points,
    weighted,
)
from harness.metrics.degenerate import (
    DEGENERATE_MIN_DISTINCT,
    DEGENERATE_SATURATED_SHARE,
    DEGENERATE_TRIAL_SHARE,
    SATURATION_LOGIT_HIGH,
    SATURATION_LOGIT_LOW,
    degenerate,
)
from harness.metrics.evaluation import evaluate
from harness.metrics.rank import probability_best, rank_first
from harness.metrics.seeds import seed_bootstrap, seed_interval, seeds_summary

__all__ = [
    "BOOT_STATS",
    "DEGENERATE_MIN_DISTINCT",
    "DEGENERATE_SATURATED_SHARE",
    "DEGENERATE_TRIAL_SHARE",
    "EPS",
    "FALLBACK_THRESHOLD",
    "SATURATION_LOGIT_HIGH",
    "SATURATION_LOGIT_LOW",
    "THRESHOLD_RULES",
    "MetricsError",
    "ThresholdRule",
    "bce_loss",
    "bootstrap",
    "bootstrap_test",
    "calibration",
    "choose_thresholds",
    "constant_for_bce",
    "degenerate",
    "delong",
    "evaluate",
    "focal_loss",
    "holm",
    "macro",
    "paired_bootstrap",
    "paired_seed_bootstrap",
    "per_finding",
    "probability_best",
    "rank_first",
    "resample_counts",
    "roc_auc",
    "roc_curve_points",
    "seed_bootstrap",
    "seed_interval",
    "seeds_summary",
    "summary_sentence",
    "weighted",
]
