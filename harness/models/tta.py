"""Reading a net's output: logits and auxiliary logits, and test-time augmentation (Trial.tta) at evaluation."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from harness.registry import Registry


def forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(logits, auxiliary logits or None); InceptionV3 returns the auxiliary ones in training mode only."""
    out = model(x)
    if isinstance(out, tuple):  # torchvision's InceptionOutputs(logits, aux_logits)
        return out[0], out[1]
    return out, None


# Test-time augmentation (Trial.tta): how evaluation turns a batch into logits.
TTA = Registry[Callable[[nn.Module, Tensor], Tensor]]("tta")


@TTA.register("none")
def _tta_none(model: nn.Module, x: Tensor) -> Tensor:
    return forward(model, x)[0]


@TTA.register("flip")
def _tta_flip(model: nn.Module, x: Tensor) -> Tensor:
    """The mean of the logits of each image and its left-right mirror, as BenchmarkTransformers evaluates.
    Training already flips at random (Trial.augment), so the mirror is an image the net has learned from."""
    return (forward(model, x)[0] + forward(model, x.flip(-1))[0]) / 2


def forward_tta(model: nn.Module, x: Tensor, *, tta: str) -> Tensor:
    """Evaluation logits for a batch under the trial's test-time augmentation (a TTA name)."""
    return TTA[tta](model, x)
