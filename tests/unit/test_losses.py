"""Tests for harness.losses: hand-computed values, limiting cases, extreme logits, every registered loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import losses
from harness.config import LOSS_PARAMS, ConfigError, Trial

# One positive and one negative at each of a few logits: small enough to compute by hand.
Z = [2.0, -1.0, 0.5, -3.0]
Y = [1.0, 1.0, 0.0, 0.0]
LOGITS = torch.tensor([Z])
TARGETS = torch.tensor([Y])


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_bce_by_hand():
    expected = mean(-math.log(sig(z)) if y else -math.log(1 - sig(z)) for z, y in zip(Z, Y))
    assert losses.bce(logits=LOGITS, targets=TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_by_hand():
    w = [3.0, 0.5, 2.0, 9.0]
    expected = mean(-wi * math.log(sig(z)) if y else -math.log(1 - sig(z)) for z, y, wi in zip(Z, Y, w))
    got = losses.bce(logits=LOGITS, targets=TARGETS, pos_weight=torch.tensor(w))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    module = losses.LOSSES["weighted_bce"](Trial(loss="weighted_bce"), pos_weight=torch.tensor(w))
    assert module(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.5, -1.0), (1.0, 0.75)])
def test_focal_by_hand(gamma, alpha):
    def one(z, y):
        pt = sig(z) if y else 1 - sig(z)
        at = 1.0 if alpha < 0 else (alpha if y else 1 - alpha)
        return -at * (1 - pt) ** gamma * math.log(pt)

    expected = mean(one(z, y) for z, y in zip(Z, Y))
    got = losses.focal(logits=LOGITS, targets=TARGETS, gamma=gamma, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.3), (1.0, 2.0, 0.0)])
def test_asl_by_hand(gamma_neg, gamma_pos, clip):
    def one(z, y):
        p = sig(z)
        if y:
            return -((1 - p) ** gamma_pos) * math.log(p)
        pm = max(p - clip, 0.0)
        return -(pm**gamma_neg) * math.log(1 - pm)

    expected = mean(one(z, y) for z, y in zip(Z, Y))
    got = losses.asl(logits=LOGITS, targets=TARGETS, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_asl_clip_discards_easy_negatives():
    # p = sigmoid(-3) = 0.047 < clip: the negative costs nothing and gets no gradient.
    z = torch.tensor([[-3.0]], requires_grad=True)
    loss = losses.asl(logits=z, targets=torch.zeros(1, 1), gamma_neg=4.0, gamma_pos=1.0, clip=0.05)
    loss.backward()
    assert loss.item() == 0.0 and z.grad.item() == 0.0


def random_batch(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 14, generator=g) * 3, torch.randint(0, 2, (n, 14), generator=g).float()


def test_focal_without_focusing_or_alpha_is_bce():
    z, y = random_batch()
    got = losses.focal(logits=z, targets=y, gamma=0.0, alpha=-1.0)
    torch.testing.assert_close(got, losses.bce(logits=z, targets=y))


def test_asl_without_focusing_or_clip_is_bce():
    z, y = random_batch()
    got = losses.asl(logits=z, targets=y, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    torch.testing.assert_close(got, losses.bce(logits=z, targets=y))


EXTREME = [
    ("bce", {}),
    ("focal", {"gamma": 2.0, "alpha": 0.25}),
    ("focal", {"gamma": 0.5, "alpha": -1.0}),
    ("focal", {"gamma": 0.0, "alpha": -1.0}),
    ("asl", {"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05}),
    ("asl", {"gamma_neg": 0.5, "gamma_pos": 0.5, "clip": 0.05}),
    ("asl", {"gamma_neg": 0.5, "gamma_pos": 0.5, "clip": 0.0}),
]


@pytest.mark.parametrize("name,params", EXTREME)
def test_finite_at_extreme_logits(name, params):
    # Every combination of confident-right and confident-wrong, plus the fence at 0.
    z = torch.tensor([[100.0, -100.0, 100.0, -100.0, 0.0, 30.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    loss = getattr(losses, name)(logits=z, targets=y, **params)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() > 10  # the two confident mistakes dominate: log-loss of 100 each, before weights


def test_positive_weights():
    w = losses.positive_weights(np.array([0.5, 0.1, 0.0, 1.0, 0.002]))
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([1.0, 9.0, losses.MAX_POS_WEIGHT, 0.0, 499.0]))
    with pytest.raises(ValueError, match="prevalence"):
        losses.positive_weights(np.array([0.5, 1.5]))


@pytest.mark.parametrize("name", losses.LOSSES.names())
def test_every_registered_loss_runs(name):
    z, y = random_batch(seed=3)
    z.requires_grad_(True)
    prevalence = y.mean(0).numpy()
    loss_fn = losses.make_loss(Trial(loss=name), prevalence=prevalence)
    assert isinstance(loss_fn, torch.nn.Module)
    loss = loss_fn(z, y)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # A mean, not a sum: the same rows twice give the same loss.
    torch.testing.assert_close(loss_fn(torch.cat([z, z]), torch.cat([y, y])), loss)


def test_make_loss_uses_the_trials_parameters():
    z, y = random_batch(seed=4)
    t = Trial(loss="focal", focal_gamma=1.5, focal_alpha=0.6)
    got = losses.make_loss(t, prevalence=np.full(14, 0.2))(z, y)
    torch.testing.assert_close(got, losses.focal(logits=z, targets=y, gamma=1.5, alpha=0.6))
    t = Trial(loss="asl", asl_gamma_neg=3.0, asl_gamma_pos=0.5, asl_clip=0.1)
    got = losses.make_loss(t, prevalence=np.full(14, 0.2))(z, y)
    torch.testing.assert_close(got, losses.asl(logits=z, targets=y, gamma_neg=3.0, gamma_pos=0.5, clip=0.1))


def test_weighted_bce_takes_weights_from_prevalence_and_moves_with_the_module():
    prevalence = np.linspace(0.05, 0.5, 14)
    loss_fn = losses.make_loss(Trial(loss="weighted_bce"), prevalence=prevalence)
    torch.testing.assert_close(loss_fn.pos_weight, losses.positive_weights(prevalence))
    assert "pos_weight" in dict(loss_fn.named_buffers())  # .to(device) carries it


def test_unknown_loss_is_a_config_error_with_hint():
    with pytest.raises(ConfigError, match=r"unknown loss 'focall' \(did you mean 'focal'\?\); valid: asl, bce, focal"):
        losses.make_loss(Trial(loss="focall"), prevalence=np.full(14, 0.1))


def test_keyword_only():
    with pytest.raises(TypeError):
        losses.focal(LOGITS, TARGETS, 2.0, 0.25)  # type: ignore[misc]


# --- which fields each loss reads: config.LOSS_PARAMS is the one statement of it -------------------------------

# A value away from each field's default, inside its valid range.
OFF_DEFAULT = {"focal_gamma": 0.5, "focal_alpha": 0.9, "asl_gamma_neg": 1.0, "asl_gamma_pos": 3.0, "asl_clip": 0.2}


def test_every_registered_loss_states_its_parameters():
    assert set(LOSS_PARAMS) == set(losses.LOSSES)
    assert set(OFF_DEFAULT) == {f for params in LOSS_PARAMS.values() for f in params}


@pytest.mark.parametrize("name", losses.LOSSES.names())
def test_a_loss_reads_its_own_parameters_and_no_others(name):
    z, y = random_batch(seed=5)
    prevalence = np.full(14, 0.2)
    value = losses.make_loss(Trial(loss=name), prevalence=prevalence)(z, y)
    for field, off in OFF_DEFAULT.items():
        changed = losses.make_loss(Trial(loss=name).replace(**{field: off}), prevalence=prevalence)(z, y)
        if field in LOSS_PARAMS[name]:
            assert not torch.allclose(changed, value), f"{name} ignores {field}, which LOSS_PARAMS says it reads"
        else:
            torch.testing.assert_close(changed, value, msg=f"{name} reads {field}; add it to LOSS_PARAMS[{name!r}]")
