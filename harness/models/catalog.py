"""The MODELS registry: what the harness knows of each arch (ArchSpec), and the trial-level facts read from it.

Two families fill the registry (each module calls register for each of its archs):

    torchvision.py  the paper's CNNs and the reference ones, with torchvision's IMAGENET1K_V1 weights
    timm.py         the transformers and modern CNNs peers benchmark beside them (ViT-S/16, Swin-T,
                    ConvNeXt-T), with timm's ImageNet weights; registered when the optional extra
                    `harness[timm]` is installed (else naming one says to install it)

Each family's docstring tables its archs' freezable stages (Trial.freeze = how many leading stages stay
fixed; the head always trains: freezing.py). Inputs are ImageNet-normalised 3-channel images (the loader
replicates grey).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.config import ConfigError, Trial
from harness.registry import Registry

NUM_CLASSES = 14
AUX_WEIGHT = 0.4  # torchvision reference recipe: loss = loss(logits) + 0.4 * loss(aux_logits)


@dataclass(frozen=True)
class ArchSpec:
    """What the harness needs to know about one architecture. A family subclasses it to build the net and to
    say where its published weights come from."""

    family: ClassVar[str] = ""  # the library that builds the arch; also the pip extra that installs it

    name: str  # the arch's name in trials, and its builder's name in the family's library
    native_size: int  # input size the arch was designed and pretrained at
    step_cost: float  # training time per image at native_size, relative to ResNet50's (see train_cost)
    min_size: int  # smallest square input the net accepts (measured: one size less fails)
    stages: tuple[str, ...]  # freezable stages in order; each is dotted module or parameter names joined by "+"
    cam_layer: str  # default Grad-CAM target: a module whose output is a (B, C, H, W) map nothing modifies in place
    heads: tuple[str, ...]  # dotted names of the Linear layers that become NUM_CLASSES logits
    stage_names: tuple[str, ...] = ()  # readable stage names for messages; default: the stages themselves
    aux_min_size: int = 0  # smallest input for an auxiliary head; 0: the arch has none
    fixed_size: bool = False  # the net is built for the trial's input size and takes no other (position tables)
    figure_layers: tuple[str, ...] = ()  # (B, C, H, W) layers for the activations figure, early to late; () any
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

    # --- what a family provides ----------------------------------------------------------------------

    def new(self, trial: Trial, *, aux: bool, num_classes: int) -> nn.Module:
        """The net, randomly initialised, with num_classes logits, ready for the trial's input size."""
        raise NotImplementedError

    def weights_url(self) -> str:
        """Where the publisher serves the pretrained weights."""
        raise NotImplementedError

    def weights_file(self, url: str) -> str:
        """The weights' file name in the cache directory, given the URL they come from."""
        raise NotImplementedError

    def sha256_prefix(self, file_name: str) -> str | None:
        """The published SHA-256 (or its first hex digits) a genuine file must match; None: none published."""
        return None

    def read_weights(self, path: Path) -> Any:
        """The object stored in a weights file (a state dict when the file is what it claims)."""
        return torch.load(path, map_location="cpu", weights_only=True)

    def write_weights(self, state: dict[str, Tensor], path: Path) -> None:
        """Save a state dict in the publisher's file format."""
        torch.save(state, path)

    def fit_state(self, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """A state dict of this arch, rewritten to fit `model` (old key names, other input sizes)."""
        return self.fix_keys(state)

    def adapt_state(self, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """The published state dict, rewritten to fit `model` (fit_state, and the publisher's own quirks)."""
        return self.fit_state(state, model)


MODELS = Registry[ArchSpec]("arch")
# Archs of a family whose library is not installed -> the family. They stay out of MODELS (so nothing
# registry-driven meets an arch it cannot build), and naming one says what to install.
UNAVAILABLE: dict[str, str] = {}


def register(entry: ArchSpec) -> ArchSpec | None:
    """Add an arch to MODELS (each family calls this for each of its archs), or to UNAVAILABLE."""
    if importlib.util.find_spec(entry.family) is None:
        UNAVAILABLE[entry.name] = entry.family
        return None
    return MODELS.register(entry.name)(entry)


def unknown(arch: str) -> str:
    """The one-line message for an arch that is not in MODELS: the extra to install, or the valid names."""
    if arch in UNAVAILABLE:
        return f"{arch} needs {UNAVAILABLE[arch]}: pip install 'harness[{UNAVAILABLE[arch]}]'"
    return MODELS.unknown(arch)


def spec(arch: str) -> ArchSpec:
    """The ArchSpec of a registered arch; a ConfigError naming the extra to install or the valid names."""
    if arch not in MODELS:
        raise ConfigError(unknown(arch))
    return MODELS[arch]


def image_size(trial: Trial) -> int:
    """The square input size a trial trains at: its image_size, else the arch's native size."""
    return trial.image_size or spec(trial.arch).native_size


def train_cost(trial: Trial) -> float:
    """A trial's training time relative to others (the runner starts the costliest first): the arch's step cost
    per image, scaled by the pixels of its input, times the images it trains on (its subset) and its epochs."""
    s = spec(trial.arch)
    return s.step_cost * (image_size(trial) / s.native_size) ** 2 * trial.subset_fraction * trial.epochs
