"""Frozen leading stages: which parts a trial's `freeze` fixes, and keeping them fixed while the rest trains.

A frozen stage has requires_grad=False and runs in eval mode during training (train_mode), so its BatchNorm
running statistics stay those it was built or loaded with.
"""

from __future__ import annotations

from torch import nn

from harness.config import Trial
from harness.models.catalog import spec

# Every BatchNorm whose running statistics training moves, named by torch's public classes (the lazy ones become
# BatchNorm1d-3d on their first batch; timm's BatchNormAct2d subclasses BatchNorm2d).
BATCHNORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


def _parts(model: nn.Module, group: str) -> list[nn.Module | nn.Parameter]:
    """The modules and parameters a stage names (a ViT's class token and position table are parameters)."""
    out: list[nn.Module | nn.Parameter] = []
    for name in group.split("+"):
        try:
            out.append(model.get_submodule(name))
        except AttributeError:
            out.append(model.get_parameter(name))
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, out of a torch.compile wrapper."""
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the model; stage names are the original's


def _frozen_parts(model: nn.Module, trial: Trial) -> list[nn.Module | nn.Parameter]:
    stages = spec(trial.arch).stages[: trial.freeze]
    return [p for group in stages for p in _parts(unwrap(model), group)]


def frozen_stages(model: nn.Module, trial: Trial) -> list[nn.Module]:
    """The top-level modules of the trial's frozen stages (not its bare parameters: a ViT's position table)."""
    return [m for m in _frozen_parts(model, trial) if isinstance(m, nn.Module)]


def freeze(model: nn.Module, trial: Trial) -> None:
    """Make exactly the trial's leading `freeze` stages untrainable (requires_grad False), the rest trainable."""
    model = unwrap(model)
    model.requires_grad_(True)
    for part in _frozen_parts(model, trial):
        part.requires_grad_(False)


def train_mode(model: nn.Module, trial: Trial) -> None:
    """model.train(), with the frozen stages back in eval so their BatchNorm statistics stay fixed."""
    model.train()
    for m in frozen_stages(model, trial):
        m.eval()


def trained_batchnorms(model: nn.Module, trial: Trial) -> list[nn.Module]:
    """The BatchNorm layers outside the trial's frozen stages: those whose running statistics training moves."""
    frozen = {id(m) for top in frozen_stages(model, trial) for m in top.modules()}
    return [
        m
        for m in unwrap(model).modules()
        if isinstance(m, BATCHNORMS) and m.track_running_stats and id(m) not in frozen
    ]
