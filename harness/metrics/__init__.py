"""Test-set statistics (numpy, scipy and scikit-learn only); callers import everything from here.

core: input checks, per-finding metrics, the paper's losses, thresholds chosen on validation.
bootstrap: patient-level resampling and percentile intervals.
compare: paired comparisons of two models (paired bootstrap, DeLong, Holm) and the sentence that reports one.
seeds: several seeds of one setting (summaries, the two-level seed and patient bootstrap).
degenerate: saturated or constant output, per finding and per trial.
evaluation: everything metrics.json holds.
"""

import functools
import warnings
from collections.abc import Callable
from typing import Any

from harness.metrics import compare as _compare
from harness.metrics.bootstrap import BOOT_STATS, bootstrap, resample_counts
from harness.metrics.compare import delong, holm, paired_seed_bootstrap, summary_sentence
from harness.metrics.core import (
    EPS,
    FALLBACK_THRESHOLD,
    THRESHOLD_RULES,
    MetricsError,
    ThresholdRule,
    bce_loss,
    calibration,
    choose_thresholds,
    focal_loss,
    macro,
    per_finding,
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
from harness.metrics.seeds import combine_seeds, seed_bootstrap, seeds_summary

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
    "calibration",
    "choose_thresholds",
    "combine_seeds",
    "degenerate",
    "delong",
    "evaluate",
    "focal_loss",
    "holm",
    "macro",
    "paired_bootstrap",
    "paired_seed_bootstrap",
    "per_finding",
    "resample_counts",
    "roc_curve_points",
    "seed_bootstrap",
    "seeds_summary",
    "summary_sentence",
    "weighted",
]


def _positional_deprecated(fn: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., Any]:
    """fn, whose leading arguments are keyword-only, still callable with them positional, with a DeprecationWarning.

    For callers written before the arguments became keyword-only; once none is left, export fn itself.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if args:
            if len(args) > len(names):
                raise TypeError(f"{fn.__name__}() takes at most {len(names)} positional arguments, got {len(args)}")
            twice = [n for n in names[: len(args)] if n in kwargs]
            if twice:
                raise TypeError(f"{fn.__name__}() got multiple values for {', '.join(twice)}")
            warnings.warn(
                f"{fn.__name__}: pass {', '.join(n + '=' for n in names[: len(args)])} by keyword; "
                "positional arrays will stop working",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs.update(zip(names, args))
        return fn(**kwargs)

    return call


paired_bootstrap = _positional_deprecated(_compare.paired_bootstrap, ("probs_a", "probs_b", "labels", "patient_ids"))
