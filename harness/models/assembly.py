"""A trial's net: its settings checked against the registries, then built, loaded and frozen.

Starting weights come from ImageNet (Trial.pretrained: weightfiles.py), from any state-dict file
(Trial.weights: start.py), or from random init.
"""

from __future__ import annotations

import logging

from torch import nn

from harness.config import ConfigError, Trial, file_sha256
from harness.models import start
from harness.models.catalog import MODELS, NUM_CLASSES, image_size, spec, unknown
from harness.models.freezing import freeze
from harness.models.tta import TTA
from harness.models.weightfiles import WeightsMissing, load_published, published_state, weights_path

log = logging.getLogger(__name__)


def check(trial: Trial) -> None:
    """Raise ConfigError if the trial's arch, freeze depth, image size or test-time augmentation cannot work."""
    if trial.arch not in MODELS:
        raise ConfigError(f"{trial.label}: {unknown(trial.arch)}")
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
    if trial.tta not in TTA:
        raise ConfigError(f"{trial.label}: {TTA.unknown(trial.tta)}")
    start.check(trial)  # a weights file that cannot be read or does not fit fails before anything runs


def _find(model: nn.Module, dotted: str) -> nn.Module | None:
    """The submodule at a dotted name, or None where a part of the path is set to None."""
    for part in filter(None, dotted.split(".")):
        model = getattr(model, part)
        if model is None:
            return None
    return model


def build(trial: Trial, *, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The trial's arch with num_classes logits, published weights if pretrained, and its leading stages frozen."""
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
    if trial.pretrained:
        path = weights_path(s.name)  # the file the key names, not whatever lies there now (missing: see below)
        if trial.pretrained_sha256 and path.is_file() and (found := file_sha256(path)) != trial.pretrained_sha256:
            raise WeightsMissing(
                f"pretrained {s.name}: {path} has SHA-256 {found[:12]}, not the {trial.pretrained_sha256[:12]} this "
                "trial was keyed with: the file changed after the run began; run the grid again to key it anew"
            )
        state = published_state(s.name)  # read first: a missing file fails before the slow build
        model = s.new(trial, aux=aux, num_classes=1000)  # the checkpoint's ImageNet classes
        load_published(model, s.name, s.adapt_state(state, model))
        for head in s.heads:
            owner, _, child = head.rpartition(".")
            parent = _find(model, owner)
            if parent is not None:  # None: a head the build left out
                setattr(parent, child, nn.Linear(getattr(parent, child).in_features, num_classes))
    else:
        model = s.new(trial, aux=aux, num_classes=num_classes)
        if trial.weights:
            start.load(model, trial)  # every part but the new head
    freeze(model, trial)
    return model
