"""Trial (frozen, hashed: everything that can change a result) and Runtime (not hashed)."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# nih and synthetic (the NIH layout's phantoms); chexpert, mimic, padchest (data/readers.py), and a synthetic tree
# in one of their layouts, recorded as synthetic-<layout> so that it is never taken for the real dataset.
DATASETS = (
    "nih",
    "synthetic",
    "chexpert",
    "mimic",
    "padchest",
    "synthetic-chexpert",
    "synthetic-mimic",
    "synthetic-padchest",
)
# Datasets whose labeller leaves findings blank or uncertain: their targets hold NaN (unknown), masked from the loss.
PARTLY_LABELLED = ("chexpert", "mimic", "synthetic-chexpert", "synthetic-mimic")
UNCERTAIN_POLICIES = ("mask", "ones", "zeros")  # uncertain (-1) labels: unknown, positive (U-Ones), negative (U-Zeros)


class ConfigError(ValueError):
    """Something a user wrote is wrong; the message is one line saying what, where and what is valid."""


@dataclass(frozen=True)
class Trial:
    """One training run. Its key is a hash of these fields, so equal settings share one result."""

    dataset: str = "nih"  # "synthetic" when the embedded phantom dataset stands in for NIH
    arch: str = "resnet152"
    pretrained: bool = False  # ImageNet weights from torchvision's cache
    loss: str = "bce"
    focal_gamma: float = 2.0  # Lin et al. 2017
    focal_alpha: float = 0.25  # Lin et al. 2017; -1 weighs positives and negatives equally
    asl_gamma_neg: float = 4.0  # Ridnik et al. 2021, multi-label defaults
    asl_gamma_pos: float = 1.0
    asl_clip: float = 0.05
    freeze: int = 0  # leading stages kept frozen; 0 fine-tunes everything
    subset_fraction: float = 1.0  # paper: 0.1 "mini" sets, drawn by patient, stratified
    subset_test: bool = False  # the paper also shrank the test set; off keeps the official test list whole
    val_fraction: float = 0.1  # patient-level slice of train_val used for model selection; 0: none, last epoch kept
    image_size: int = 0  # 0 = the arch's native size (299 for inception_v3, 224 otherwise)
    epochs: int = 20  # paper
    batch_size: int = 64  # paper
    eval_batch_size: int = 32  # paper; cannot change a result, kept for fidelity
    optimizer: str = "adam"  # paper
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_step: int = 5  # paper: divide by 10 every 5 epochs
    lr_gamma: float = 0.1
    augment: bool = True  # paper: random crop + horizontal flip
    seed: int = 0
    cam: bool = False  # score Grad-CAM against the boxes after training
    # Precise BatchNorm: before each evaluation, recompute the running statistics of every BatchNorm that
    # trains from this many training batches. 0 = off, the paper's recipe; a scratch InceptionV3 saturates
    # without it after few steps (its statistics trail the weights).
    bn_recalibrate: int = 0
    # Test-time augmentation at every evaluation (validation and test): none, or flip (the mean of the logits
    # of each image and its left-right mirror). models.TTA lists the choices.
    tta: str = "none"
    # Starting weights from a state-dict file (e.g. self-supervised chest X-ray weights) in place of ImageNet's
    # or random ones; "" = as `pretrained` says. Grid expansion makes the path absolute and fills in the file's
    # SHA-256 (with_weights_file); the key hashes that digest, not the path, so a moved file is the same trial
    # and a changed file a new one. The 14-finding head is always new; the file's own head is ignored.
    weights: str = ""
    weights_sha256: str = ""
    # The SHA-256 of the published-weights file a pretrained trial loads ($TORCH_HOME/hub/checkpoints/<file>),
    # filled in before a run (prepare.resolve) while the file is there: a placeholder and torchvision's file
    # under the same name are different trials, and a result made from one is never taken for the other.
    pretrained_sha256: str = ""
    # Deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, benchmark off, a fixed cuBLAS
    # workspace): on the same machine and versions a trial then gives bit-identical predictions, a little slower.
    # Ops with no deterministic kernel warn and are named in the trial's provenance.json (recipe.py).
    deterministic: bool = False
    # CheXpert and MIMIC label some findings uncertain (-1): mask leaves them out of the loss and the metrics,
    # ones and zeros read them as positive or negative (Irvin et al. 2019's U-Ones, U-Zeros).
    uncertain: str = "mask"
    # How validation and test films reach the model: "crop" resizes each to the cache's 8/7 of the input size
    # and takes the centre (the crop training saw, the paper's recipe); "whole" resizes the whole film to the
    # input size, as a plain torchvision script's Resize does, so nothing at the film's edges is cut away.
    eval_resize: str = "crop"

    @property
    def key(self) -> str:
        """Short stable hash of the fields as sorted JSON: the trial's directory name.

        A field added after results were stored is left out while it holds its default, so every earlier
        trial keeps its key (and its results folder); setting it gives a new key. A weights file is keyed by
        its content (weights_sha256) once that is known, not by where it lies.
        """
        values = {
            k: v for k, v in dataclasses.asdict(self).items() if not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])
        }
        if self.weights_sha256:
            values.pop("weights", None)
        blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """A readable name for logs and tables."""
        init = "pretrained" if self.pretrained else f"weights:{Path(self.weights).name}" if self.weights else "scratch"
        return f"{self.arch}/{init}/{self.loss}/freeze{self.freeze}/sub{self.subset_fraction:g}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical(self) -> Trial:
        """This trial with every field its settings leave unused (CONDITIONS) at its default.

        A bce trial never reads focal_gamma: whatever was written there, it trains the same way, so it must
        have one key and one result. Fields already at their defaults stay, so no stored key moves.
        """
        values = self.to_dict()
        reset = {f: TRIAL_FIELDS[f].default for f in inactive(values) if values[f] != TRIAL_FIELDS[f].default}
        return self.replace(**reset) if reset else self

    def replace(self, **changes: Any) -> Trial:
        return dataclasses.replace(self, **changes)


TRIAL_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Trial)}
# Fields added after the first results were stored -> their default, which the key leaves out. Every later
# field goes here: listing it keeps all stored trials where they are.
KEYED_WHEN_SET: dict[str, Any] = {
    name: TRIAL_FIELDS[name].default
    for name in (
        "bn_recalibrate",
        "tta",
        "weights",
        "weights_sha256",
        "pretrained_sha256",
        "deterministic",
        "uncertain",
        "eval_resize",
    )
}
EVAL_RESIZE = ("crop", "whole")

# The Trial fields each loss reads: losses.py's factories read exactly these (tests/test_losses.py checks
# every registered loss against this table), and no loss reads another's.
LOSS_PARAMS: dict[str, tuple[str, ...]] = {
    "bce": (),
    "weighted_bce": (),  # its weights come from the training prevalence, not from a field
    "focal": ("focal_gamma", "focal_alpha"),
    "asl": ("asl_gamma_neg", "asl_gamma_pos", "asl_clip"),
}


@dataclass(frozen=True)
class Condition:
    """A field that changes a result only while another field (`on`) passes `test`."""

    on: str
    test: Callable[[Any], bool]
    when: str  # the test in words, for messages and plans: "loss is focal"

    def active(self, values: Mapping[str, Any]) -> bool:
        return self.test(values.get(self.on, TRIAL_FIELDS[self.on].default))


def _loss_param(name: str) -> Condition:
    users = tuple(loss for loss, params in LOSS_PARAMS.items() if name in params)
    return Condition("loss", lambda v: v in users, "loss is " + " or ".join(users))


# Fields that only some settings use -> when. Where the condition fails the field is held at its default
# (Trial.canonical: grids and searches build every trial through it), so settings that train alike share one
# key and run once; a search samples the field only where it is used. freeze is not here although the paper
# pairs it with pretrained: frozen random filters train differently from trained ones, so it changes a
# scratch trial too. Nor is lr_gamma, unused when lr_step >= epochs: that turns on two numbers (and the
# epochs a profile sets), not on one choice.
CONDITIONS: dict[str, Condition] = {
    **{name: _loss_param(name) for params in LOSS_PARAMS.values() for name in params},
    # nih.split shrinks the test list only with the training subset: with every patient kept it does nothing.
    "subset_test": Condition("subset_fraction", lambda v: v < 1, "subset_fraction < 1"),
    # Only CheXpert's labellers write uncertain labels (MIMIC-CXR's are the same labeller's).
    "uncertain": Condition("dataset", lambda v: v in PARTLY_LABELLED, "dataset is chexpert or mimic"),
}


def inactive(values: Mapping[str, Any]) -> list[str]:
    """The fields that a trial with these values (missing ones at their defaults) does not use."""
    return [name for name, cond in CONDITIONS.items() if not cond.active(values)]


# Ranges a field must satisfy: (test, description of the valid values).
_RANGES: dict[str, tuple[Any, str]] = {
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "uncertain": (lambda v: v in UNCERTAIN_POLICIES, f"one of {', '.join(UNCERTAIN_POLICIES)}"),
    "eval_resize": (lambda v: v in EVAL_RESIZE, f"one of {', '.join(EVAL_RESIZE)}"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "freeze": (lambda v: v >= 0, "an integer >= 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "lr_step": (lambda v: v >= 1, "an integer >= 1"),
    "bn_recalibrate": (lambda v: v >= 0, "an integer >= 0: training batches per recalibration, 0 = off (e.g. 16)"),
    "image_size": (lambda v: v == 0 or v >= 32, "0 (the arch's own size) or an integer >= 32"),
    "subset_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "val_fraction": (
        lambda v: 0 <= v < 1,
        "0 (no hold-out: train on all of train_val, keep the last epoch) or a number in (0, 1)",
    ),
    "lr": (lambda v: v > 0, "a number > 0"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "focal_gamma": (lambda v: v >= 0, "a number >= 0"),
    "focal_alpha": (lambda v: v == -1 or 0 <= v <= 1, "-1 (off) or a number in [0, 1]"),
    "asl_gamma_neg": (lambda v: v >= 0, "a number >= 0"),
    "asl_gamma_pos": (lambda v: v >= 0, "a number >= 0"),
    "asl_clip": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weights_sha256": (
        lambda v: v == "" or re.fullmatch("[0-9a-f]{64}", v),
        "64 lowercase hex digits, as sha256sum prints",
    ),
}


def close_match(name: object, valid: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when none is close: every error's hint."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(name: str, valid: list[str] | tuple[str, ...], where: str) -> ConfigError:
    hint = close_match(name, valid)
    return ConfigError(f"{where}: unknown key {name!r}{hint}; valid keys: {', '.join(sorted(valid))}")


def _to_bool(name: str, value: Any, where: str, bad: ConfigError) -> tuple[Any, Any]:
    """A bool field: True/False, or the words true/false from --set on the command line."""
    if isinstance(value, bool):
        return value, value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value, value.lower() == "true"  # from --set on the command line
    raise bad


def _to_int(name: str, value: Any, where: str, bad: ConfigError) -> tuple[Any, Any]:
    """An int field: an integer or its digits; a float of integer value is refused with the integer to write."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise bad from None
    if isinstance(value, float) and value.is_integer():
        raise ConfigError(f"{where}: {name}={value!r} must be written as an integer ({int(value)})")
    if not isinstance(value, int):
        raise bad
    return value, value


def _to_float(name: str, value: Any, where: str, bad: ConfigError) -> tuple[Any, Any]:
    """A float field: any finite number, or its text."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string: convert it explicitly.
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    return value, float(value)


def _to_str(name: str, value: Any, where: str, bad: ConfigError) -> tuple[Any, Any]:
    """A str field: a non-empty string, or "" where "" is the default."""
    # "" is a value only where it is the default (weights: none chosen); every trial.json writes it.
    if not isinstance(value, str) or (not value and TRIAL_FIELDS[name].default != ""):
        raise ConfigError(f"{where}: {name}={value!r} must be a non-empty string")
    return value, value


# Field type -> converter: each returns (the value as read, the field's value). The range message quotes
# the first, so `lr=1` out of range reads as written, not as 1.0.
_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def coerce(name: str, value: Any, where: str) -> Any:
    """Convert one user-written value to the field's type, or raise ConfigError saying why."""
    if name not in TRIAL_FIELDS:
        raise unknown_key(name, list(TRIAL_FIELDS), where)
    kind = type(TRIAL_FIELDS[name].default)
    bad = ConfigError(f"{where}: {name}={value!r} is not a valid {kind.__name__}")
    value, out = _CONVERTERS.get(kind, _to_str)(name, value, where, bad)
    check = _RANGES.get(name)
    if check and not check[0](out):
        raise ConfigError(f"{where}: {name}={value!r} is out of range; valid: {check[1]}")
    return out


def trial_from_dict(values: Mapping[str, Any], where: str = "trial") -> Trial:
    """Build a Trial from user-written values, checking every key, type and range; unused fields at defaults."""
    return Trial(**{k: coerce(k, v, where) for k, v in values.items()}).canonical()


def sha256(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, read in chunks (weights files are hundreds of MB). The harness's one digest:
    trial keys (a weights file), DONE's checksums (store) and the embedded set's source all use it."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-256: a grid hashes each file once


def file_sha256(path: Path) -> str:
    """sha256(path), remembered while the file's size and modification time stay the same (a grid names one
    weights file in many trials). Checksums that detect damage use sha256 itself, never a remembered value."""
    stat = path.stat()
    known = (str(path), stat.st_size, stat.st_mtime_ns)
    if known not in _DIGESTS:
        _DIGESTS[known] = sha256(path)
    return _DIGESTS[known]


def with_weights_file(trial: Trial, where: str) -> Trial:
    """The trial with its weights file's path made absolute (Ray workers run elsewhere) and its SHA-256 filled
    in; a ConfigError when the file cannot be read, when pretrained also asks for ImageNet weights, or when the
    file is not the one a written weights_sha256 pins. Whether the file fits the arch is models.check's job."""
    if not trial.weights:
        if trial.weights_sha256:
            raise ConfigError(f"{where}: weights_sha256 is set but weights is not; name the file: weights=PATH")
        return trial
    if trial.pretrained:
        raise ConfigError(
            f"{where}: pretrained=true and weights={trial.weights!r} both choose the starting weights; "
            "valid: pretrained=true alone (ImageNet) or weights=PATH with pretrained=false"
        )
    path = Path(trial.weights).expanduser().resolve()
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise ConfigError(
            f"{where}: weights={trial.weights!r}: cannot read {path} ({e.strerror or e}); "
            "valid: a readable state-dict file (.pt or .pth)"
        ) from None
    if trial.weights_sha256 and trial.weights_sha256 != digest:
        raise ConfigError(
            f"{where}: weights file {path} has SHA-256 {digest}, not the weights_sha256 {trial.weights_sha256} "
            "written for it: the file changed"
        )
    return trial.replace(weights=str(path), weights_sha256=digest)


def default_cache_dir() -> Path:
    """Where the synthetic dataset and decoded-image caches live unless told otherwise."""
    env = os.environ.get("HARNESS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness"


@dataclass
class Runtime:
    """How trials run; nothing here can change a result, so none of it is hashed."""

    data_root: str | None = None  # None: --data-root, else HARNESS_DATA_ROOT, else synthetic
    # Roots of the other datasets by name (--data-root chexpert=PATH, else HARNESS_CHEXPERT_ROOT, ...).
    data_roots: dict[str, str] = field(default_factory=dict)
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))
    results_dir: str = "results"
    device: str = "auto"  # auto: cuda when there is one
    workers: int = 0  # decode processes for building caches; 0 = all cores
    gpus_per_trial: float | str = "auto"  # a share of a GPU, or auto from the arch
    cpus_per_trial: float = 1.0
    address: str | None = None  # a running Ray cluster (auto or ray://host:port)
    max_retries: int = 2  # Ray restarts of a trial whose worker died
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    reuse_workers: bool = True  # a worker process runs trial after trial (no fresh imports per trial)
    progress: bool = True
    trackers: tuple[str, ...] = ()  # --tracker: mlflow, wandb (runner/tracking.py); TensorBoard files always
