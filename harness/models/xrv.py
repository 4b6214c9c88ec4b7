"""torchxrayvision's DenseNet weights as a starting point: `harness weights from-xrv SRC OUT`.

torchxrayvision's DenseNet121 has torchvision's module names but a 1-channel stem fed [-1024, 1024] pixels
(2048 g - 1024 for a grey level g in [0, 1]); every trial here gets g replicated to 3 ImageNet-normalised
channels ((g - mean_c) / std_c). The stem is folded so that the 3-channel net computes what the 1-channel net
did on the same film: conv0's kernel is spread over the channels, scaled by 2048 std_c / 3, and the constant
it then leaves on each output channel, (1024 - 2048 mean(mean_c)) times the kernel's sum, is moved into
norm0's running mean (conv0 has no bias, and norm0 subtracts that mean next). Only the 3-pixel frame where
conv0 reads its zero padding differs, as padding means another grey level in each space. The head is dropped
(a trial's head is always new), and so is op_threshs, torchxrayvision's calibration of its own 18 outputs.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from harness import store
from harness.config import ConfigError
from harness.models import start
from harness.models.timm import IMAGENET_MEAN, IMAGENET_STD

STEM, NORM = "features.conv0.weight", "features.norm0.running_mean"
DROPPED = ("classifier.", "op_threshs")  # the head, and the calibration of torchxrayvision's own outputs
XRV_SCALE, XRV_SHIFT = 2048.0, -1024.0  # torchxrayvision.datasets.normalize: x = 2048 g - 1024


def fold_stem(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with its 1-channel stem folded into the harness's 3-channel input; the head dropped."""
    stem = state.get(STEM)
    if stem is None or NORM not in state or stem.ndim != 4 or stem.shape[1] != 1:
        found = "no such key" if stem is None else f"shape {tuple(stem.shape)}"
        raise ConfigError(
            f"not a torchxrayvision DenseNet state dict: {STEM} must be a 1-channel stem ({found}) with {NORM} "
            "beside it; valid: torchxrayvision.models.DenseNet(weights=...).state_dict()"
        )
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    w = stem.to(torch.float64)
    # sum_c w * XRV_SCALE std_c / 3 * (g - mean_c) / std_c == w * (XRV_SCALE g - XRV_SCALE mean(mean_c))
    folded = w * XRV_SCALE * std / 3
    offset = (-XRV_SHIFT - XRV_SCALE * sum(IMAGENET_MEAN) / 3) * w.sum(dim=(1, 2, 3))
    out = {k: v for k, v in state.items() if not k.startswith(DROPPED)}
    out[STEM] = folded.to(stem.dtype)
    out[NORM] = (state[NORM].to(torch.float64) + offset).to(state[NORM].dtype)
    return out


def convert(src: Path | str, out: Path | str) -> Path:
    """Read a torchxrayvision DenseNet state dict from src, fold its stem, write it to out (atomically).

    A source whose name marks NIH-trained weights (start.nih_overlap) must keep that mark in out's name, so the
    trials started from it are still flagged as having maybe seen NIH test images.
    """
    src, out = Path(src), Path(out)
    try:
        data = src.read_bytes()
    except OSError as e:
        raise ConfigError(f"{src}: cannot read ({e.strerror or e})") from None
    # torchxrayvision's downloads are whole pickled modules: refused, with how to save their state dict
    folded = fold_stem(start.load_state(io.BytesIO(data), src))
    if start.nih_overlap(src) and not start.nih_overlap(out):
        raise ConfigError(
            f"{src.name} names NIH-trained weights; keep that name in the output's ({out.name}) so the trials "
            f"started from it are flagged, e.g. {src.stem}-3ch.pt"
        )
    buf = io.BytesIO()
    torch.save(folded, buf)
    store.write_bytes(out, buf.getvalue())
    return out
