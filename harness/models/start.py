"""Starting weights from a file (Trial.weights): read, unwrap, fit to the arch's backbone, record where they came from.

A file holds a state dict, plain or wrapped as training scripts save it ({"state_dict": ...}, {"model": ...},
keys prefixed "module." by DataParallel or "_orig_mod." by torch.compile). Everything but the head must fit the
trial's build exactly, key for key and shape for shape: a partial load would train a half-random net and report
it as started from the file. The head (the arch's `heads`) is always new, NUM_CLASSES logits, so the file's own
head, for whatever classes it was trained on, is ignored. Inputs are what the loader gives every trial
(ImageNet-normalised, grey replicated to 3 channels); weights trained on other inputs start from a shift.

The file's bytes are hashed as they are read, so the weights loaded are the ones the trial's key names
(Trial.weights_sha256, filled in when the grid is expanded).

KNOWN_NIH lists published weights trained on NIH ChestX-ray14 images: torchxrayvision's were trained on a random
image-level split of NIH, not the official patient-wise one, so the official test images (and patients) may
be in their training set, and a test score of a net started from them is not a held-out score. A trial started
from a file whose name matches records that in metrics.json, and the report warns.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import ConfigError, Trial
from harness.models.catalog import NUM_CLASSES, image_size, spec

log = logging.getLogger(__name__)

WRAPPERS = ("state_dict", "model")  # checkpoint keys that hold the state dict (Lightning, timm/DeiT scripts)
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
SHOWN = 3  # keys named per kind of mismatch; the count says how many more

# torchxrayvision's published classifier and autoencoder weights (torchxrayvision/models.py and
# autoencoders.py, model_urls) whose training sets include NIH ChestX-ray14: file name stem -> what it is.
# Its other weights (pc, chex, kaggle/rsna, mimic_nb, mimic_ch) name no NIH data.
_XRV = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
KNOWN_NIH: dict[str, str] = {
    "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best": "torchxrayvision densenet121-res224-nih",
    "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best": (
        "torchxrayvision densenet121-res224-all"
    ),
    "pc-nih-rsna-siim-vin-resnet50-test512-e400-state": "torchxrayvision resnet50-res512-all",
    "nihpcrsnamimic_ch-resnet101-2-ae-test2-elastic-e250": "torchxrayvision resnet101-elastic autoencoder",
}
# Any other file whose name has "nih" as a word (nih-..., ..._nih_..., nihpc...) is taken to be NIH-trained too:
# a false alarm costs a footnote, a missed one a test score on training images.
_NIH_WORD = re.compile(r"(?:^|[^a-z])nih", re.IGNORECASE)
NIH_OVERLAP = (
    "trained on NIH ChestX-ray14 with a random image-level split, so NIH test images and "
    "patients may be in its training set"
)


def nih_overlap(path: str | Path) -> str | None:
    """Why a weights file may have seen NIH test images (from its name), or None."""
    name = Path(path).name
    for stem, what in KNOWN_NIH.items():
        if stem in name:
            return f"{what} ({_XRV}{stem}.pt): {NIH_OVERLAP}"
    if _NIH_WORD.search(name):
        return (
            "its file name names NIH: if it was trained on NIH ChestX-ray14 with a random image-level split (as "
            "torchxrayvision's were), NIH test images and patients may be in its training set"
        )
    return None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a checkpoint, prefixes stripped; ConfigError when there is none."""
    while isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            kinds = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:SHOWN])
            raise ConfigError(
                f"weights file {path} holds a dict of {{{kinds}, ...}}, not a state dict of tensors nor one "
                f"wrapped under {' or '.join(map(repr, WRAPPERS))}"
            )
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"weights file {path} holds a {type(obj).__name__}, not a state dict of tensors")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k.removeprefix(prefix): v for k, v in obj.items()}
    return obj


def read(trial: Trial) -> dict[str, Tensor]:
    """The state dict in the trial's weights file, checked against the SHA-256 its key names."""
    path = Path(trial.weights)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"weights={trial.weights!r}: cannot read {path} ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if trial.weights_sha256 and digest != trial.weights_sha256:
        raise ConfigError(
            f"weights file {path} has SHA-256 {digest}, not the {trial.weights_sha256} the trial was made with: "
            "the file changed since the grid was expanded; run the grid again for a trial of the new file"
        )
    return load_state(io.BytesIO(data), path)


def load_state(source: Any, path: Path) -> dict[str, Tensor]:
    """The state dict in a file's bytes (source: a path or a file object), unwrapped; one line when there is none."""
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled modules: the file must be data, not code
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(
            f"weights file {path} is not a state dict torch.load(weights_only=True) can read ({first}); a pickled "
            "model must be saved as its state_dict(): torch.save(model.state_dict(), PATH)"
        ) from None
    return _unwrap(obj, path)


def _heads(trial: Trial) -> tuple[str, ...]:
    return tuple(f"{h}." for h in spec(trial.arch).heads)


def _built(model: nn.Module, key: str) -> bool:
    """False for a key under a part the build left out (InceptionV3's auxiliary head below 299 px)."""
    return getattr(model, key.split(".", 1)[0], model) is not None


def backbone_state(trial: Trial, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The file's state dict for `model` without its head; ConfigError, one line, naming what does not fit."""
    s, heads = spec(trial.arch), _heads(trial)
    state = {k: v for k, v in s.fit_state(state, model).items() if not k.startswith(heads) and _built(model, k)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    # Files saved before BatchNorm counted batches lack num_batches_tracked; load_state_dict leaves it be.
    absent = sorted(k for k in own.keys() - state.keys() if not k.endswith(".num_batches_tracked"))
    extra = sorted(state.keys() - own.keys())
    wrong = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the net"
        for k in sorted(own.keys() & state.keys())
        if own[k].shape != state[k].shape
    ]
    problems = [
        f"{len(v)} {what} ({', '.join(v[:SHOWN])}{', ...' if len(v) > SHOWN else ''})"
        for what, v in (("missing keys", absent), ("unexpected keys", extra), ("shape mismatches", wrong))
        if v
    ]
    if problems:
        raise ConfigError(
            f"{trial.label}: weights file {trial.weights} does not fit {s.family}'s {s.name} at "
            f"{image_size(trial)} px: {'; '.join(problems)}; every key but the head's must match (the head, "
            f"{', '.join(s.heads)}, is new for {NUM_CLASSES} findings, so the file's is ignored)"
        )
    return state


_FITS: set[tuple[str, str, int]] = set()  # (SHA-256, arch, size) checked already: a grid reads each file once


def check(trial: Trial) -> None:
    """Refuse, before anything runs, a weights file that cannot be read or does not fit the trial's arch.

    The net is built on the meta device (shapes without memory or init time) and compared with the file.
    """
    if not trial.weights:
        return
    fit = (trial.weights_sha256 or trial.weights, trial.arch, image_size(trial))
    if fit in _FITS:
        return
    s = spec(trial.arch)
    with torch.device("meta"):
        net = s.new(trial, aux=bool(s.aux_min_size) and image_size(trial) >= s.aux_min_size, num_classes=NUM_CLASSES)
    backbone_state(trial, read(trial), net)
    _FITS.add(fit)
    reason = nih_overlap(trial.weights)
    if reason:
        log.warning("%s: weights %s: %s", trial.label, Path(trial.weights).name, reason)


def load(model: nn.Module, trial: Trial) -> None:
    """The file's weights into every part of `model` but its new head."""
    state = backbone_state(trial, read(trial), model)
    missing, _ = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(_heads(trial)) and not k.endswith(".num_batches_tracked")]
    if left:  # backbone_state compared the keys already; this guards load_state_dict's own rules
        raise ConfigError(f"{trial.label}: weights file {trial.weights} left {left[:SHOWN]} unloaded")


def provenance(trial: Trial) -> dict[str, Any]:
    """What a trial started from a file loaded, for metrics.json."""
    return {
        "file": trial.weights,
        "sha256": trial.weights_sha256,
        "source": "file",
        "imagenet_verified": False,
        "nih_overlap": nih_overlap(trial.weights),
    }
