"""The process and the device a trial runs on: device choice, seeds, host memory reuse, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import random
import resource
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from harness.config import ConfigError

# The device types a trial can run on: whether this machine has one, and the words for when it has not.
# Looked up at each call (lambdas), so a test can stand in a GPU.
_DEVICES: dict[str, tuple[Callable[[], bool], str]] = {
    "cpu": (lambda: True, ""),
    "cuda": (lambda: torch.cuda.is_available(), "no CUDA device here (torch.cuda.is_available() is False)"),
    "mps": (
        lambda: torch.backends.mps.is_available(),
        "no MPS device here (torch.backends.mps.is_available() is False)",
    ),
}


def check_device(spec: str, *, here: bool = True) -> None:
    """Refuse a --device that is not a device type, or (here) that this machine lacks, in one line (ConfigError).

    here=False when the trials run on a Ray cluster's nodes, whose devices this machine cannot see.
    """
    kinds = [k for k, (present, _) in _DEVICES.items() if not here or present()]
    valid = ", ".join(["auto", *(f"{k}, {k}:N" if k == "cuda" else k for k in kinds)])
    if spec == "auto":
        return
    kind, colon, index = spec.partition(":")
    if kind not in _DEVICES or (colon and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"--device {spec}: not a device a trial can run on; valid: {valid}")
    present, absent = _DEVICES[kind]
    if here and not present():
        raise ConfigError(f"--device {spec}: {absent}; valid: {valid}")
    if here and colon and int(index) >= (count := torch.cuda.device_count()):
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s); valid: {valid}")


def pick_device(spec: str = "auto") -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; anything else (checked by check_device) is torch's own."""
    if spec != "auto":
        return torch.device(spec)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> None:
    """Let glibc reuse freed large blocks instead of unmapping them at every free.

    A batch or an activation is tens of MB, above glibc's default mmap threshold, so each would be a
    fresh mapping whose pages fault in on first touch: measured on a 2-core CPU, three quarters of the
    loader's normalisation and a fifth of a ResNet50 training step. Process-wide, idempotent, and a
    no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting this trial's peak memory afresh: a reused worker process ran other trials before."""
    # Linux: resets the process's peak resident set (VmHWM); elsewhere the host figure is the peak so far.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _host_peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak host resident memory and peak GPU memory allocated (MB) since reset_peak_memory."""
    peak = {"peak_host_mb": _host_peak_mb()}
    if device.type == "cuda":
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def hand_back_gpu_memory() -> None:
    """A reused worker lives on for the next trial: free the GPU blocks torch keeps cached, for other processes."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
