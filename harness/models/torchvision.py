"""torchvision's family: the paper's CNNs and the reference ones, with torchvision's IMAGENET1K_V1 weights.

Freezable stages:

    arch             stages, in order
    alexnet          conv1 (features.0), conv2 (features.3), conv3 (features.6), conv4 (features.8),
                     conv5 (features.10)
    resnet50/152     stem (conv1, bn1), layer1, layer2, layer3, layer4
    inception_v3     stem (Conv2d_1a_3x3 .. Conv2d_4a_3x3), Mixed_5 (b-d), Mixed_6a, Mixed_6b-e, Mixed_7 (a-c)
    densenet121      stem (conv0, norm0), block1 (denseblock1, transition1), block2, block3,
                     block4 (denseblock4, norm5)
    efficientnet_b0  features.0 (stem) .. features.8 (the last 1x1 conv): nine stages

InceptionV3 keeps torchvision's auxiliary head: in training mode forward() returns its logits too and the
trainer adds AUX_WEIGHT * loss(aux), as torchvision's reference recipe does; in eval the head is unused.
The auxiliary head needs inputs of at least 299 px (its 5x5 conv runs on Mixed_6e's 17x17 map pooled by
5/3), so below that the net is built with aux_logits=False and trains on the main loss alone.

The weights are the paper's era's IMAGENET1K_V1; torchvision names each file after the first hex digits of
its SHA-256, which is how a placeholder is told from the published file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from harness.config import Trial
from harness.models.catalog import ArchSpec, register


@dataclass(frozen=True)
class TorchvisionSpec(ArchSpec):
    """An arch torchvision builds (torchvision.models.get_model) and publishes ImageNet weights for."""

    family = "torchvision"
    weights: str = "IMAGENET1K_V1"  # member of the arch's torchvision weights enum

    def new(self, trial: Trial, *, aux: bool, num_classes: int) -> nn.Module:
        return torchvision.models.get_model(
            self.name, weights=None, num_classes=num_classes, **self.options(trial, aux)
        )

    def weights_url(self) -> str:
        return torchvision.models.get_model_weights(self.name)[self.weights].url

    def weights_file(self, url: str) -> str:
        return Path(urlparse(url).path).name

    def sha256_prefix(self, file_name: str) -> str | None:
        match = torch.hub.HASH_REGEX.search(file_name)  # what torch.hub's check_hash reads from the name
        return match.group(1) if match else None


def _inception_options(trial: Trial, aux: bool) -> dict[str, Any]:
    return {
        "aux_logits": aux,
        # torchvision's Inception weights expect inputs scaled to [-1, 1]; transform_input maps our
        # ImageNet-normalised inputs onto that scale, so it is on exactly when those weights are loaded.
        "transform_input": trial.pretrained,
        "init_weights": not trial.pretrained,  # skip the truncated-normal init the checkpoint overwrites
    }


# torchvision's DenseNet checkpoints predate PyTorch 0.4 and name layers "norm.1", "conv.2"; the modules
# are now "norm1", "conv2".
_DENSE_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        m = _DENSE_OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


# Training time per image at the native size, relative to ResNet50 (ArchSpec.step_cost): measured images/s on
# an H200 where there are figures (docs/perf: AlexNet 18,300, ResNet152 1,250, InceptionV3 at 299 px 1,500),
# forward FLOPs otherwise (ResNet50 4.1 GFLOPs, a third of ResNet152's 11.5; DenseNet121 2.9 but memory-bound
# concatenations; EfficientNet-B0 0.4, but depthwise convolutions run far below a GPU's FLOP rate).
_COST = {"resnet50": 1.0, "resnet152": 2.8}

_RESNET_STAGES = ("conv1+bn1", "layer1", "layer2", "layer3", "layer4")
_RESNET_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

register(
    TorchvisionSpec(
        name="alexnet",
        native_size=224,
        step_cost=0.2,
        min_size=63,
        stages=("features.0", "features.3", "features.6", "features.8", "features.10"),
        stage_names=("conv1", "conv2", "conv3", "conv4", "conv5"),
        cam_layer="features.11",  # the last conv's ReLU: features.10's own output is overwritten by this in-place ReLU
        heads=("classifier.6",),
    )
)
for _name in ("resnet50", "resnet152"):
    register(
        TorchvisionSpec(
            name=_name,
            native_size=224,
            step_cost=_COST[_name],
            min_size=1,
            stages=_RESNET_STAGES,
            stage_names=_RESNET_NAMES,
            cam_layer="layer4",
            heads=("fc",),
        )
    )
register(
    TorchvisionSpec(
        name="inception_v3",
        native_size=299,
        step_cost=2.3,
        min_size=75,
        aux_min_size=299,
        stages=(
            "Conv2d_1a_3x3+Conv2d_2a_3x3+Conv2d_2b_3x3+Conv2d_3b_1x1+Conv2d_4a_3x3",
            "Mixed_5b+Mixed_5c+Mixed_5d",
            "Mixed_6a",
            "Mixed_6b+Mixed_6c+Mixed_6d+Mixed_6e",
            "Mixed_7a+Mixed_7b+Mixed_7c",
        ),
        stage_names=("stem", "Mixed_5", "Mixed_6a", "Mixed_6b-e", "Mixed_7"),
        cam_layer="Mixed_7c",
        heads=("fc", "AuxLogits.fc"),
        options=_inception_options,
    )
)
register(
    TorchvisionSpec(
        name="densenet121",
        native_size=224,
        step_cost=1.0,
        min_size=29,
        stages=(
            "features.conv0+features.norm0",
            "features.denseblock1+features.transition1",
            "features.denseblock2+features.transition2",
            "features.denseblock3+features.transition3",
            "features.denseblock4+features.norm5",
        ),
        stage_names=("stem", "block1", "block2", "block3", "block4"),
        # norm5's output is ReLU'd in place by DenseNet.forward, so Grad-CAM reads the block before it.
        cam_layer="features.denseblock4",
        heads=("classifier",),
        fix_keys=_densenet_keys,
    )
)
register(
    TorchvisionSpec(
        name="efficientnet_b0",
        native_size=224,
        step_cost=0.6,
        min_size=1,
        stages=tuple(f"features.{i}" for i in range(9)),
        cam_layer="features.8",
        heads=("classifier.1",),
    )
)
