"""What decides a trial's numbers beyond its settings: the recipe recorded beside it (provenance.json), and the
deterministic mode in which a trial repeats bit for bit on the same machine and versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import models, store
from harness.config import Trial, file_sha256
from harness.data import cache, nih

log = logging.getLogger(__name__)

# cuBLAS keeps per-stream workspaces whose reuse order varies; a fixed configuration makes its GEMMs repeatable
# (https://docs.nvidia.com/cuda/cublas/#results-reproducibility). ":16:8" is the other documented value.
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_WORKSPACE = ":4096:8"
# The words torch's warn_only mode uses for an op that has no deterministic kernel.
_NO_KERNEL = " does not have a deterministic implementation"
# The label table and split lists a data root is read from (those it has), fingerprinted by content.
DATA_FILES = (nih.ENTRY_FILE, nih.TRAIN_VAL_FILE, nih.TEST_FILE, nih.BBOX_FILE)
# Packages whose versions decide the arithmetic; one that is not installed is recorded as None.
PACKAGES = ("torch", "torchvision", "timm", "numpy")


def apply_determinism(on: bool) -> None:
    """Deterministic kernels on or off, process-wide. Every trial sets it both ways at its start, so a worker
    that runs trial after trial never carries one trial's mode into the next.

    warn_only: an op with no deterministic kernel (e.g. CUDA's adaptive average pooling backward, pytorch#50198)
    warns instead of failing the trial; Nondeterminism names it in the recipe."""
    if on and os.environ.get(CUBLAS_ENV) not in (CUBLAS_WORKSPACE, ":16:8"):
        os.environ[CUBLAS_ENV] = CUBLAS_WORKSPACE  # read when cuBLAS first allocates its workspace
    torch.use_deterministic_algorithms(on, warn_only=on)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False  # benchmarking picks kernels by timing: a different pick each run


class Nondeterminism(contextlib.AbstractContextManager):
    """While entered by a deterministic trial (`on`), the ops torch reports as having no deterministic kernel are
    collected into `ops`; every other warning is passed on (once per message) when it exits. Off, it changes
    nothing: warnings show as they come."""

    def __init__(self, on: bool = True) -> None:
        self.ops: set[str] = set()
        self.on = on
        self._catch = warnings.catch_warnings(record=True)
        self._seen: list[warnings.WarningMessage] = []

    def __enter__(self) -> Nondeterminism:
        if self.on:
            self._seen = self._catch.__enter__()
            warnings.simplefilter("default")  # each warning once per place: bounded, however many steps warn
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.on:
            return
        self._catch.__exit__(*exc)
        passed: set[tuple[str, type]] = set()
        for w in self._seen:
            text = str(w.message)
            if _NO_KERNEL in text:
                self.ops.add(text.split(_NO_KERNEL)[0].strip())
            elif (text, w.category) not in passed:
                passed.add((text, w.category))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for op in sorted(self.ops):
            log.warning(
                "%s has no deterministic kernel in PyTorch: this trial may not repeat bit for bit (recorded in its "
                "provenance)",
                op,
            )


def software() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__  # the build's own tag (+cu121, +cpu), which the metadata may drop
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """The hardware and the libraries under torch that decide the arithmetic on this device."""
    out: dict[str, Any] = {"device": device.type, "cpu": _cpu_model(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        out.update(
            gpu=torch.cuda.get_device_name(device),
            capability=f"{major}.{minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return out


def precision(device: torch.device) -> str:
    """As train.autocast sets it."""
    return "bfloat16 autocast, float32 weights, logits and loss" if device.type == "cuda" else "float32"


def determinism(trial: Trial, ops: set[str] | list[str]) -> dict[str, Any]:
    return {
        "requested": trial.deterministic,
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get(CUBLAS_ENV),
        "nondeterministic_ops": sorted(ops),
    }


_ARRAY_DIGESTS: dict[tuple[str, int, int], str] = {}  # a memory-mapped cache file -> its content's digest


def array_sha256(images: np.ndarray) -> str:
    """cache.pixels_sha256, once per memory-mapped file while its size and modification time stay the same: for
    caches whose manifest predates the digest it records."""
    filename = getattr(images, "filename", None)
    known = None
    if filename and Path(filename).is_file():
        stat = Path(filename).stat()
        known = (str(filename), stat.st_size, stat.st_mtime_ns)
        if known in _ARRAY_DIGESTS:
            return _ARRAY_DIGESTS[known]
    digest = cache.pixels_sha256(images)
    if known:
        _ARRAY_DIGESTS[known] = digest
    return digest


def data_fingerprint(td: Any) -> dict[str, Any]:
    """td: prepare.TrialData. The label table's and split lists' digests, the images on disk, and per split its
    size and the digest of the decoded cache it was read from."""
    root = Path(td.data.root)
    return {
        "dataset": td.data.dataset,
        "files_sha256": {name: file_sha256(root / name) for name in DATA_FILES if (root / name).is_file()},
        "n_images": len(td.data.table),
        "splits": {
            split: {"n": len(rows), "cache_sha256": td.digests.get(split) or array_sha256(td.images[split])}
            for split, rows in td.rows.items()
        },
    }


def starting_weights(trial: Trial) -> dict[str, Any]:
    """The digests the key holds, and the file a pretrained trial actually finds (None: random initialisation)."""
    loaded = None
    if trial.pretrained and (path := models.weights_path(trial.arch)).is_file():
        loaded = file_sha256(path)
    elif trial.weights:
        loaded = file_sha256(Path(trial.weights))
    return {"weights_sha256": trial.weights_sha256, "pretrained_sha256": trial.pretrained_sha256, "loaded": loaded}


def seeds(trial: Trial) -> dict[str, Any]:
    """Every random stream a trial draws from, each derived from trial.seed: the number and how it is used."""
    s = trial.seed
    return {
        "split": {"seed": s, "stream": "numpy default_rng([seed, *b'val'])"},
        "subset": {"seed": s, "stream": "numpy default_rng([seed, *b'subset-train']) (and -val, -test)"},
        "init": {"seed": s, "stream": "torch.manual_seed(seed) before the model is built (dropout follows)"},
        "batch_order": {"seed": s, "stream": "torch Generator from numpy SeedSequence([seed, epoch])"},
    }


def record(trial: Trial, td: Any, *, device: torch.device, ops: set[str] | list[str]) -> dict[str, Any]:
    """The whole recipe of a finished trial (provenance.json): settings and code, software, hardware, precision,
    determinism, data, starting weights and seeds."""
    origin = store.provenance()
    return {
        "key": trial.key,
        "trial": trial.to_dict(),
        "code": {k: origin[k] for k in ("harness_version", "git_commit", "git_dirty")},
        "software": software(),
        "hardware": machine(device),
        "precision": precision(device),
        "determinism": determinism(trial, ops),
        "data": data_fingerprint(td),
        "weights": starting_weights(trial),
        "seeds": seeds(trial),
    }
