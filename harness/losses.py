"""The LOSSES registry: multi-label losses on logits (bce, weighted_bce, focal, asl), each returning the mean.

focal and asl are written here rather than taken from a library, and tests/test_parity.py pins them to the
libraries where those are defined:

- focal equals torchvision.ops.sigmoid_focal_loss (reduction="mean") for gamma >= 1. torchvision computes
  (1 - p_t) ** gamma from p_t itself; for gamma < 1 that weight's gradient, gamma (1 - p_t) ** (gamma - 1),
  is infinite where a confident logit rounds p_t to 1, and training turns NaN. Here the weight comes from
  log-sigmoids (log space), finite at any logit.
- asl equals timm's AsymmetricLossMultiLabel summed over every element, divided by their number: the mean, so
  that its scale (and a learning rate tuned with it) does not change with the batch size. Without the eps
  clamp timm applies before each log, its value is exact at any logit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import PARTLY_LABELLED, ConfigError, Trial
from harness.registry import Registry

LossFactory = Callable[..., nn.Module]  # (trial, *, pos_weight: Tensor | None) -> module(logits, targets)
LOSSES = Registry[LossFactory]("loss")

MAX_POS_WEIGHT = 1000.0  # a class with no training positives would get an infinite weight


def positive_weights(prevalence: np.ndarray) -> Tensor:
    """Per-class weight of the positive term, (1 - p) / p, so positives and negatives weigh alike."""
    p = np.asarray(prevalence, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"prevalence must be a 1-D array of fractions in [0, 1], got {p!r}")
    w = np.minimum((1 - p) / np.maximum(p, np.finfo(np.float64).tiny), MAX_POS_WEIGHT)
    return torch.as_tensor(w, dtype=torch.float32)


def bce(*, logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy on logits; pos_weight scales each class's positive term."""
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def focal(*, logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Mean focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t; alpha=-1 leaves classes unweighted."""
    log_pt = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # log(1 - p_t) from logsigmoid, not 1 - exp(log_pt): that cancels to 0 for confident logits and
    # (1 - p_t)^gamma then has an infinite gradient for gamma < 1.
    log_1m_pt = targets * F.logsigmoid(-logits) + (1 - targets) * F.logsigmoid(logits)
    loss = -torch.exp(gamma * log_1m_pt) * log_pt
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def asl(*, logits: Tensor, targets: Tensor, gamma_neg: float, gamma_pos: float, clip: float) -> Tensor:
    """Mean asymmetric loss (Ridnik et al. 2021).

    Positives: -(1 - p)^gamma_pos log p. Negatives use the shifted probability p_m = max(p - clip, 0):
    -p_m^gamma_neg log(1 - p_m), so negatives with p < clip cost nothing.
    """
    pos = torch.exp(gamma_pos * F.logsigmoid(-logits)) * F.logsigmoid(logits)
    if clip > 0:
        p_m = torch.sigmoid(logits) - clip
        live = p_m > 0
        # Where p_m is 0 the weight's gradient would be 0 * inf (gamma_neg < 1); use a stand-in there.
        safe = torch.where(live, p_m, torch.ones_like(p_m))
        weight = torch.where(live, safe.pow(gamma_neg), torch.zeros_like(p_m))
        neg = weight * torch.log(torch.sigmoid(-logits) + clip).clamp(max=0)  # log(1 - p_m), finite everywhere
    else:
        neg = torch.exp(gamma_neg * F.logsigmoid(logits)) * F.logsigmoid(-logits)
    return -(targets * pos + (1 - targets) * neg).mean()


class BoundLoss(nn.Module):
    """A loss function bound to its parameters: forward(logits, targets) -> the mean loss."""

    def __init__(self, fn: Callable[..., Tensor], **params: Any) -> None:
        super().__init__()
        self.fn, self.params = fn, params

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.fn(logits=logits, targets=targets, **self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in [("fn", self.fn.__name__), *self.params.items()])


@LOSSES.register("bce")
def _bce(trial: Trial, *, pos_weight: Tensor | None) -> nn.Module:
    return nn.BCEWithLogitsLoss()


@LOSSES.register("weighted_bce")
def _weighted_bce(trial: Trial, *, pos_weight: Tensor | None) -> nn.Module:
    if pos_weight is None:
        raise ValueError("weighted_bce needs pos_weight: positive_weights() of the training prevalence")
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)  # a buffer: moves with .to(device)


@LOSSES.register("focal")
def _focal(trial: Trial, *, pos_weight: Tensor | None) -> nn.Module:
    return BoundLoss(focal, gamma=trial.focal_gamma, alpha=trial.focal_alpha)


@LOSSES.register("asl")
def _asl(trial: Trial, *, pos_weight: Tensor | None) -> nn.Module:
    return BoundLoss(asl, gamma_neg=trial.asl_gamma_neg, gamma_pos=trial.asl_gamma_pos, clip=trial.asl_clip)


class MaskedLoss(nn.Module):
    """A mean-over-entries loss over the known targets only; NaN targets (labels the dataset does not give) count
    for nothing, in value or gradient.

    A masked entry becomes a confident, correct one (logit 100, target 1), which every registered loss prices
    at 0 to within 1e-40, through a torch.where that passes no gradient; the mean is then rescaled from all
    entries to the known ones. No host sync: the training step stays asynchronous on a GPU.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        known = ~torch.isnan(targets)
        z = torch.where(known, logits, torch.full_like(logits, 100.0))
        loss = self.base(z, torch.where(known, targets, torch.ones_like(targets)))
        return loss * (targets.numel() / known.sum().clamp(min=1))


def check(trial: Trial) -> None:
    """Raise ConfigError if the trial's loss is not registered."""
    if trial.loss not in LOSSES:
        raise ConfigError(f"{trial.label}: {LOSSES.unknown(trial.loss)}")


def make_loss(trial: Trial, *, prevalence: np.ndarray) -> nn.Module:
    """The trial's loss module; prevalence is the per-class positive fraction of the training split."""
    check(trial)
    loss = LOSSES[trial.loss](trial, pos_weight=positive_weights(prevalence))
    return MaskedLoss(loss) if trial.dataset in PARTLY_LABELLED else loss
