"""Published ImageNet weight files: where each arch's file must be, what it is, fetching it, and placeholders.

Pretrained weights are read only from torchvision's cache directory ($TORCH_HOME/hub/checkpoints/<file>);
a missing or unreadable file raises WeightsMissing naming the file to place there. A trial downloads
nothing and never falls back to training from scratch; `harness weights fetch ARCH...` (fetch_weights)
downloads the files beforehand.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import ConfigError, Trial, sha256
from harness.models.catalog import spec

FETCH_TIMEOUT = 10.0  # seconds a download may stall before it gives up: offline, fetch fails in seconds


class WeightsMissing(ConfigError):
    """Pretrained weights are not in the cache, cannot be read, or cannot be downloaded."""


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


def load_published(model: nn.Module, arch: str, state: dict[str, Tensor]) -> None:
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
