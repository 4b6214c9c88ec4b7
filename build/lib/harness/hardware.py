"""The process and the device a trial runs on: device choice, seeds, host memory reuse, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import random
import resource
from pathlib import Path

import numpy as np
import torch


def pick_device(spec: str = "auto") -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; anything else is torch's own device string."""
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
