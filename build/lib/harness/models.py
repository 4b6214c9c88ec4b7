"""The MODELS registry over torchvision: 14-logit heads, frozen leading stages, cached ImageNet weights.

Freezable stages (``Trial.freeze`` = how many leading stages stay fixed; the head always trains):

    arch             stages, in order
    alexnet          conv1 (features.0), conv2 (features.3), conv3 (features.6), conv4 (features.8),
                     conv5 (features.10)
    resnet50/152     stem (conv1, bn1), layer1, layer2, layer3, layer4
    inception_v3     stem (Conv2d_1a_3x3 .. Conv2d_4a_3x3), Mixed_5 (b-d), Mixed_6a, Mixed_6b-e, Mixed_7 (a-c)
    densenet121      stem (conv0, norm0), block1 (denseblock1, transition1), block2, block3,
                     block4 (denseblock4, norm5)
    efficientnet_b0  features.0 (stem) .. features.8 (the last 1x1 conv): nine stages

A frozen stage has requires_grad=False and runs in eval mode during training (see train_mode), so its
BatchNorm running statistics stay those it was built or loaded with.

InceptionV3 keeps torchvision's auxiliary head: in training mode forward() returns its logits too and the
trainer adds AUX_WEIGHT * loss(aux), as torchvision's reference recipe does; in eval the head is unused.
The auxiliary head needs inputs of at least 299 px (its 5x5 conv runs on Mixed_6e's 17x17 map pooled by
5/3), so below that the net is built with aux_logits=False and trains on the main loss alone.

Pretrained weights are torchvision's IMAGENET1K_V1 (the weights of the paper's era), read only from
torchvision's cache ($TORCH_HOME/hub/checkpoints/<file>); a missing or unreadable file raises
WeightsMissing naming the file to place there. Nothing is downloaded, and a trial never falls back to
training from scratch. Inputs are ImageNet-normalised 3-channel images (the loader replicates grey).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from harness.config import ConfigError, Trial
from harness.registry import Registry

log = logging.getLogger(__name__)

NUM_CLASSES = 14
AUX_WEIGHT = 0.4  # torchvision reference recipe: loss = loss(logits) + 0.4 * loss(aux_logits)


class WeightsMissing(ConfigError):
    """Pretrained weights are not in torchvision's cache, or the cached file cannot be read."""


@dataclass(frozen=True)
class ArchSpec:
    """What the harness needs to know about one torchvision architecture."""

    name: str  # torchvision builder name (torchvision.models.get_model)
    native_size: int  # input size the arch was designed and pretrained at
    min_size: int  # smallest square input the net accepts (measured: one size less fails)
    stages: tuple[str, ...]  # freezable stages in order; each is dotted module names joined by "+"
    cam_layer: str  # default Grad-CAM target: the last conv block, whose output nothing modifies in place
    heads: tuple[str, ...]  # dotted names of the Linear layers that become NUM_CLASSES logits
    stage_names: tuple[str, ...] = ()  # readable stage names for messages; default: the stages themselves
    weights: str = "IMAGENET1K_V1"  # member of the arch's torchvision weights enum
    aux_min_size: int = 0  # smallest input for an auxiliary head; 0: the arch has none
    # Extra builder keyword arguments for a trial (inception_v3: aux head, input transform).
    options: Callable[[Trial, bool], dict[str, Any]] = field(default=lambda trial, aux: {})
    # Rewrites an old checkpoint's keys to the current module names.
    fix_keys: Callable[[dict[str, Tensor]], dict[str, Tensor]] = field(default=lambda state: state)

    def __post_init__(self) -> None:
        if self.stage_names and len(self.stage_names) != len(self.stages):
            raise ValueError(f"{self.name}: {len(self.stage_names)} stage names for {len(self.stages)} stages")

    @property
    def labels(self) -> tuple[str, ...]:
        """Stage names for messages."""
        return self.stage_names or self.stages


MODELS = Registry[ArchSpec]("arch")


def _add(entry: ArchSpec) -> None:
    MODELS.register(entry.name)(entry)


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


_RESNET_STAGES = ("conv1+bn1", "layer1", "layer2", "layer3", "layer4")
_RESNET_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

_add(
    ArchSpec(
        name="alexnet",
        native_size=224,
        min_size=63,
        stages=("features.0", "features.3", "features.6", "features.8", "features.10"),
        stage_names=("conv1", "conv2", "conv3", "conv4", "conv5"),
        cam_layer="features.11",  # the last conv's ReLU: features.10's own output is overwritten by this in-place ReLU
        heads=("classifier.6",),
    )
)
for _name in ("resnet50", "resnet152"):
    _add(
        ArchSpec(
            name=_name,
            native_size=224,
            min_size=1,
            stages=_RESNET_STAGES,
            stage_names=_RESNET_NAMES,
            cam_layer="layer4",
            heads=("fc",),
        )
    )
_add(
    ArchSpec(
        name="inception_v3",
        native_size=299,
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
_add(
    ArchSpec(
        name="densenet121",
        native_size=224,
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
_add(
    ArchSpec(
        name="efficientnet_b0",
        native_size=224,
        min_size=1,
        stages=tuple(f"features.{i}" for i in range(9)),
        cam_layer="features.8",
        heads=("classifier.1",),
    )
)


def spec(arch: str) -> ArchSpec:
    """The ArchSpec of a registered arch (UnknownName, a ConfigError, lists the valid ones)."""
    return MODELS[arch]


def image_size(trial: Trial) -> int:
    """The square input size a trial trains at: its image_size, else the arch's native size."""
    return trial.image_size or spec(trial.arch).native_size


def check(trial: Trial) -> None:
    """Raise ConfigError if the trial's arch, freeze depth or image size cannot work."""
    if trial.arch not in MODELS:
        raise ConfigError(f"{trial.label}: {MODELS.unknown(trial.arch)}")
    s = spec(trial.arch)
    if trial.freeze > len(s.stages):
        raise ConfigError(
            f"{trial.label}: freeze={trial.freeze} is deeper than {s.name}'s {len(s.stages)} "
            f"stages: {', '.join(s.labels)}; valid: 0..{len(s.stages)}"
        )
    size = image_size(trial)
    if size < s.min_size:
        raise ConfigError(
            f"{trial.label}: image_size={size} is below {s.name}'s minimum input of {s.min_size} px; "
            f"valid: 0 (native {s.native_size}) or >= {s.min_size}"
        )


def weights_enum(arch: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights enum member the arch loads when pretrained."""
    s = spec(arch)
    return torchvision.models.get_model_weights(s.name)[s.weights]


def weights_path(arch: str) -> Path:
    """Where torchvision's cache keeps the arch's ImageNet weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    url = weights_enum(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def weights_provenance(arch: str) -> dict[str, Any]:
    """What a pretrained trial loaded: the file and whether its SHA-256 matches torchvision's published one.

    torchvision names each file <name>-<first hex digits of its SHA-256>.pth; a file whose hash does not
    start with those digits (a placeholder, a re-saved or altered file) is not the published ImageNet
    checkpoint, and results made with it must not be reported as ImageNet-pretrained.
    """
    import hashlib

    path = weights_path(arch)
    expected = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    return {
        "file": str(path),
        "sha256": actual,
        "imagenet_verified": actual.startswith(expected),
        "source": weights_enum(arch).url,
    }


def _imagenet_state(arch: str) -> dict[str, Tensor]:
    """The arch's ImageNet state dict from the cache; WeightsMissing when absent or unreadable."""
    weights, path = weights_enum(arch), weights_path(arch)
    where = f"place {path.name} in {path.parent} (download from {weights.url})"
    # Checked first: torchvision would otherwise try to download it, which hangs or fails offline.
    if not path.is_file():
        raise WeightsMissing(f"pretrained {arch} needs ImageNet weights: {where}")
    try:
        state = weights.get_state_dict(progress=False, check_hash=False, weights_only=True, map_location="cpu")
    except Exception as e:  # any failure to deserialise means the file is not the checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsMissing(f"pretrained {arch}: {path} is not a valid state dict ({first}); {where}") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMissing(f"pretrained {arch}: {path} holds a {type(state).__name__}, not a state dict; {where}")
    return spec(arch).fix_keys(state)


def _load_imagenet(model: nn.Module, arch: str, state: dict[str, Tensor]) -> None:
    own = model.state_dict()
    # A head the build left out (InceptionV3's auxiliary one below 299 px) leaves its keys unused.
    state = {k: v for k, v in state.items() if getattr(model, k.split(".", 1)[0], model) is not None}
    # Checkpoints saved before BatchNorm counted batches lack num_batches_tracked; load_state_dict fills it in.
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith(".num_batches_tracked"))
    extra = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        path = weights_path(arch)
        problems = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", wrong))
            if v
        ]
        raise WeightsMissing(
            f"pretrained {arch}: {path} does not fit torchvision's {arch}: {'; '.join(problems)}; "
            f"replace it with the file from {weights_enum(arch).url}"
        )
    model.load_state_dict(state)


def _find(model: nn.Module, dotted: str) -> nn.Module | None:
    """The submodule at a dotted name, or None where a part of the path is set to None."""
    for part in filter(None, dotted.split(".")):
        model = getattr(model, part)
        if model is None:
            return None
    return model


def _modules(model: nn.Module, group: str) -> list[nn.Module]:
    return [model.get_submodule(name) for name in group.split("+")]


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the model; stage names are the original's


def frozen_modules(model: nn.Module, trial: Trial) -> list[nn.Module]:
    """The top-level modules of the trial's frozen stages."""
    stages = spec(trial.arch).stages[: trial.freeze]
    return [m for group in stages for m in _modules(unwrap(model), group)]


def freeze(model: nn.Module, trial: Trial) -> None:
    """Make exactly the trial's leading `freeze` stages untrainable (requires_grad False), the rest trainable."""
    model = unwrap(model)
    model.requires_grad_(True)
    for m in frozen_modules(model, trial):
        m.requires_grad_(False)


def build(trial: Trial, *, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The trial's arch with num_classes logits, ImageNet weights if pretrained, and its leading stages frozen."""
    check(trial)
    s = spec(trial.arch)
    aux = bool(s.aux_min_size) and image_size(trial) >= s.aux_min_size
    if s.aux_min_size and not aux:
        log.info(
            "%s: %d px is below the %d px its auxiliary head needs; building without it",
            s.name,
            image_size(trial),
            s.aux_min_size,
        )
    options = s.options(trial, aux)
    if trial.pretrained:
        state = _imagenet_state(s.name)  # read first: a missing file fails before the slow build
        model = torchvision.models.get_model(s.name, weights=None, **options)  # the checkpoint's 1000 classes
        _load_imagenet(model, s.name, state)
        for head in s.heads:
            owner, _, child = head.rpartition(".")
            parent = _find(model, owner)
            if parent is not None:  # None: a head the build left out
                setattr(parent, child, nn.Linear(getattr(parent, child).in_features, num_classes))
    else:
        model = torchvision.models.get_model(s.name, weights=None, num_classes=num_classes, **options)
    freeze(model, trial)
    return model


def train_mode(model: nn.Module, trial: Trial) -> None:
    """model.train(), with the frozen stages back in eval so their BatchNorm statistics stay fixed."""
    model.train()
    for m in frozen_modules(model, trial):
        m.eval()


def trained_batchnorms(model: nn.Module, trial: Trial) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers outside the trial's frozen stages: those whose running statistics training moves."""
    frozen = {id(m) for top in frozen_modules(model, trial) for m in top.modules()}
    return [
        m
        for m in unwrap(model).modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m) not in frozen
    ]


def forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(logits, auxiliary logits or None); InceptionV3 returns the auxiliary ones in training mode only."""
    out = model(x)
    if isinstance(out, tuple):  # torchvision's InceptionOutputs(logits, aux_logits)
        return out[0], out[1]
    return out, None
