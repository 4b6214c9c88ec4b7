"""The MODELS registry: 14-logit heads, frozen leading stages, pretrained weights from a local file, TTA.

Starting weights come from ImageNet (Trial.pretrained: the publisher's file, below), from any state-dict file
(Trial.weights: start.py), or from random init.

Two families share the registry and everything in this module (check, build, freeze, forward):

    torchvision.py  the paper's CNNs and the reference ones, with torchvision's IMAGENET1K_V1 weights
    timm.py         the transformers and modern CNNs peers benchmark beside them (ViT-S/16, Swin-T,
                    ConvNeXt-T), with timm's ImageNet weights; registered when the optional extra
                    `harness[timm]` is installed (else naming one says to install it)

Each family's docstring tables its archs' freezable stages (Trial.freeze = how many leading stages stay
fixed; the head always trains). A frozen stage has requires_grad=False and runs in eval mode during training
(see train_mode), so its BatchNorm running statistics stay those it was built or loaded with.

Pretrained weights are read only from torchvision's cache directory ($TORCH_HOME/hub/checkpoints/<file>);
a missing or unreadable file raises WeightsMissing naming the file to place there. A trial downloads
nothing and never falls back to training from scratch; `harness weights fetch ARCH...` (fetch_weights)
downloads the files beforehand. Inputs are ImageNet-normalised 3-channel images (the loader replicates
grey).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.config import ConfigError, Trial, file_sha256, sha256
from harness.registry import Registry

log = logging.getLogger(__name__)

NUM_CLASSES = 14
AUX_WEIGHT = 0.4  # torchvision reference recipe: loss = loss(logits) + 0.4 * loss(aux_logits)
FETCH_TIMEOUT = 10.0  # seconds a download may stall before it gives up: offline, fetch fails in seconds


class WeightsMissing(ConfigError):
    """Pretrained weights are not in the cache, cannot be read, or cannot be downloaded."""


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


# --- pretrained weights -------------------------------------------------------------------------------


def weights_url(arch: str) -> str:
    """Where the arch's pretrained weights are published."""
    return spec(arch).weights_url()


def weights_path(arch: str) -> Path:
    """Where the arch's pretrained weights must be: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec(arch).weights_file(weights_url(arch))


def weights_provenance(arch: str) -> dict[str, Any]:
    """What a pretrained trial loaded: the file and whether its SHA-256 matches the publisher's.

    torchvision names each file <name>-<first hex digits of its SHA-256>.pth; a file whose hash does not
    start with those digits (a placeholder, a re-saved or altered file) is not the published ImageNet
    checkpoint, and results made with it must not be reported as ImageNet-pretrained. A family that
    publishes no hash cannot be verified, and its results are marked unverified.
    """
    path = weights_path(arch)
    expected = spec(arch).sha256_prefix(path.name)
    actual = sha256(path)
    return {
        "file": str(path),
        "sha256": actual,
        "imagenet_verified": bool(expected) and actual.startswith(expected),
        "source": weights_url(arch),
    }


def _where(arch: str) -> str:
    path = weights_path(arch)
    return f"place {path.name} in {path.parent} (download from {weights_url(arch)})"


def published_state(arch: str) -> dict[str, Tensor]:
    """The arch's published state dict from the cache; WeightsMissing when absent or unreadable."""
    s, path = spec(arch), weights_path(arch)
    # Checked first: a library loader would otherwise try to download it, which hangs or fails offline.
    if not path.is_file():
        raise WeightsMissing(f"pretrained {arch} needs ImageNet weights: {_where(arch)}")
    try:
        state = s.read_weights(path)
    except Exception as e:  # any failure to deserialise means the file is not the checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsMissing(f"pretrained {arch}: {path} is not a valid state dict ({first}); {_where(arch)}") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMissing(
            f"pretrained {arch}: {path} holds a {type(state).__name__}, not a state dict; {_where(arch)}"
        )
    return state


def _load_published(model: nn.Module, arch: str, state: dict[str, Tensor]) -> None:
    own = model.state_dict()
    # A head the build left out (InceptionV3's auxiliary one below 299 px) leaves its keys unused.
    state = {k: v for k, v in state.items() if getattr(model, k.split(".", 1)[0], model) is not None}
    # Checkpoints saved before BatchNorm counted batches lack num_batches_tracked; load_state_dict fills it in.
    absent = sorted(k for k in own.keys() - state.keys() if not k.endswith(".num_batches_tracked"))
    extra = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if absent or extra or wrong:
        problems = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (("missing keys", absent), ("unexpected keys", extra), ("shape mismatches", wrong))
            if v
        ]
        raise WeightsMissing(
            f"pretrained {arch}: {weights_path(arch)} does not fit {spec(arch).family}'s {arch}: "
            f"{'; '.join(problems)}; replace it with the file from {weights_url(arch)}"
        )
    model.load_state_dict(state)


def write_placeholder(arch: str) -> Path | None:
    """A random-init file under the arch's real weights name, for offline smoke runs; None if a file is there.

    It exercises the loading path; its numbers mean nothing, and weights_provenance marks it unverified. The
    same arch always gets the same file.
    """
    path = weights_path(arch)
    if path.is_file():
        return None
    s = spec(arch)
    with torch.random.fork_rng(devices=[]):  # seeded: every demo's placeholder trials start from the same file
        torch.manual_seed(0)
        net = s.new(Trial(arch=arch), aux=bool(s.aux_min_size), num_classes=1000)  # the published layout
    path.parent.mkdir(parents=True, exist_ok=True)
    s.write_weights(net.state_dict(), path)
    return path


@contextlib.contextmanager
def _stall_limit(seconds: float) -> Iterator[None]:
    """Every socket opened meanwhile gives up after `seconds` without data (urllib waits forever by default)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def fetch_weights(archs: Sequence[str], *, progress: bool = True) -> list[Path]:
    """Download each arch's published weights into the cache that pretrained trials read; a file already
    there is kept. torch.hub does the download, with its progress bar and, where the publisher names the
    SHA-256 in the file name (torchvision), its hash check; a refused file is not kept.

    An unknown name is a ConfigError before anything downloads. The first download that fails (offline:
    within FETCH_TIMEOUT seconds) raises WeightsMissing, one line naming every file still to place.
    (torch.hub.load_state_dict_from_url(check_hash=True) downloads the same way, then torch.load()s the
    file, which timm's .safetensors files are not.)
    """
    for arch in archs:
        spec(arch)  # every name checked before the first download
    out = []
    for i, arch in enumerate(archs):
        path, url = weights_path(arch), weights_url(arch)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with _stall_limit(FETCH_TIMEOUT):
                    torch.hub.download_url_to_file(
                        url, str(path), hash_prefix=spec(arch).sha256_prefix(path.name), progress=progress
                    )
                published_state(arch)  # a server's error page saved as the file is not weights
            except Exception as e:
                path.unlink(missing_ok=True)
                reason = (str(getattr(e, "reason", "")) or str(e)).strip().splitlines() or [type(e).__name__]
                rest = [a for a in archs[i:] if not weights_path(a).is_file()]
                raise WeightsMissing(
                    f"cannot download {arch} weights from {url} ({reason[0][:200]}); "
                    + "; ".join(_where(a) for a in dict.fromkeys(rest))
                ) from None
        out.append(path)
    return out


# --- building, freezing, running ----------------------------------------------------------------------


def _find(model: nn.Module, dotted: str) -> nn.Module | None:
    """The submodule at a dotted name, or None where a part of the path is set to None."""
    for part in filter(None, dotted.split(".")):
        model = getattr(model, part)
        if model is None:
            return None
    return model


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
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the model; stage names are the original's


def _frozen_parts(model: nn.Module, trial: Trial) -> list[nn.Module | nn.Parameter]:
    stages = spec(trial.arch).stages[: trial.freeze]
    return [p for group in stages for p in _parts(unwrap(model), group)]


def frozen_modules(model: nn.Module, trial: Trial) -> list[nn.Module]:
    """The top-level modules of the trial's frozen stages."""
    return [m for m in _frozen_parts(model, trial) if isinstance(m, nn.Module)]


def freeze(model: nn.Module, trial: Trial) -> None:
    """Make exactly the trial's leading `freeze` stages untrainable (requires_grad False), the rest trainable."""
    model = unwrap(model)
    model.requires_grad_(True)
    for part in _frozen_parts(model, trial):
        part.requires_grad_(False)


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
        _load_published(model, s.name, s.adapt_state(state, model))
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


from harness.models import start  # noqa: E402  starting weights from a file
from harness.models import timm as _timm_family  # noqa: E402, F401  each family registers its archs
from harness.models import torchvision as _torchvision_family  # noqa: E402, F401
