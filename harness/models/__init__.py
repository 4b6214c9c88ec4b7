"""The models stage: the MODELS registry of archs, built for a trial with its starting weights and frozen stages.

    catalog.py      the MODELS registry: ArchSpec (what the harness knows of an arch), spec, image size, cost
    torchvision.py  torchvision's family (the paper's CNNs and the reference ones); each family registers its archs
    timm.py         timm's family (ViT-S/16, Swin-T, ConvNeXt-T), with the optional extra `harness[timm]`
    weightfiles.py  published ImageNet weight files: where they must be, provenance, fetch, placeholders
    start.py        starting weights from any state-dict file (Trial.weights), and the NIH-trained ones to flag
    freezing.py     frozen leading stages (requires_grad off, eval mode while training)
    tta.py          logits (and auxiliary logits) of a forward pass; test-time augmentation
    assembly.py     check (a trial's settings against the registries) and build
    xrv.py          torchxrayvision's DenseNet stem folded for 3-channel input (imported by its command only)

This file only re-exports the public names, so callers write `models.build(trial)`, `models.spec(arch)`.
"""

from harness.models import start
from harness.models import timm as _timm_family  # noqa: F401  each family registers its archs on import
from harness.models import torchvision as _torchvision_family  # noqa: F401
from harness.models.assembly import build, check
from harness.models.catalog import (
    AUX_WEIGHT,
    MODELS,
    NUM_CLASSES,
    UNAVAILABLE,
    ArchSpec,
    image_size,
    register,
    spec,
    train_cost,
    unknown,
)
from harness.models.freezing import BATCHNORMS, freeze, frozen_stages, train_mode, trained_batchnorms, unwrap
from harness.models.tta import TTA, forward, forward_tta
from harness.models.weightfiles import (
    FETCH_TIMEOUT,
    WeightsMissing,
    fetch_weights,
    published_state,
    weights_path,
    weights_provenance,
    weights_url,
    write_placeholder,
)

__all__ = [
    "AUX_WEIGHT",
    "BATCHNORMS",
    "FETCH_TIMEOUT",
    "MODELS",
    "NUM_CLASSES",
    "TTA",
    "UNAVAILABLE",
    "ArchSpec",
    "WeightsMissing",
    "build",
    "check",
    "fetch_weights",
    "forward",
    "forward_tta",
    "freeze",
    "frozen_stages",
    "image_size",
    "published_state",
    "register",
    "spec",
    "start",
    "train_cost",
    "train_mode",
    "trained_batchnorms",
    "unknown",
    "unwrap",
    "weights_path",
    "weights_provenance",
    "weights_url",
    "write_placeholder",
]
