"""How many trials share one GPU: decided from their measured throughput side by side and their memory.

A GPU runs the kernels of several processes by time-slicing, so trials side by side only gain where one
trial alone leaves the GPU idle (launch gaps, small batches, the host's share of a step). That is measured,
not guessed: 1, 2, then 4 copies of a trial's model step run together on one GPU (tune.py runs them), and
more copies are kept only while they add at least GAIN of throughput and fit in memory. Decisions are
remembered per GPU model and torch version in the cache directory, so a GPU is measured once per trial shape.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import store
from harness.config import Trial

log = logging.getLogger(__name__)

COPIES = (1, 2, 4)  # trials side by side, measured in this order
GAIN = 1.15  # more copies only when together they give at least this factor more images/s
MEMORY_USE = 0.85  # the share of the GPU's memory all copies together may take
CONTEXT_MB = 700  # per process, outside torch's allocator: the CUDA context and library workspaces
WINDOW_S = 5.0  # seconds each measurement lasts
PACKING_FILE = "packing.json"


def shape_key(trial: Trial) -> str:
    """What decides a trial's GPU footprint: model, input size, batch and how much of the model trains."""
    return f"{trial.arch}/px{trial.image_size or 'native'}/b{trial.batch_size}/freeze{trial.freeze}"


@dataclass(frozen=True)
class Probe:
    """Copies of one trial shape measured together on one GPU."""

    copies: int
    images_per_s: float  # all copies together
    peak_gpu_mb: float  # the largest copy's peak allocation
    overlap: float  # the share of the measurement during which every copy ran (1.0: fully together)

    @classmethod
    def from_windows(cls, windows: Sequence[dict[str, float]]) -> Probe:
        """Combine the step_window results of copies released together."""
        starts, ends = [w["start"] for w in windows], [w["end"] for w in windows]
        span = max(ends) - min(starts)
        overlap = max(0.0, min(ends) - max(starts)) / span if span > 0 else 1.0
        return cls(
            copies=len(windows),
            images_per_s=sum(w["images_per_s"] for w in windows),
            peak_gpu_mb=max(w.get("peak_gpu_mb", 0.0) for w in windows),
            overlap=overlap,
        )


def fits(probe: Probe, gpu_mb: float) -> bool:
    return probe.copies * (probe.peak_gpu_mb + CONTEXT_MB) <= MEMORY_USE * gpu_mb


def worth_more(best: Probe, more: Probe, gpu_mb: float) -> bool:
    """Whether `more` copies beat `best`: enough extra throughput, measured side by side, within memory."""
    return more.overlap >= 0.8 and more.images_per_s >= GAIN * best.images_per_s and fits(more, gpu_mb)


def choose_copies(probes: Sequence[Probe], gpu_mb: float) -> int:
    """The most copies each step of which still paid off; 1 when nothing did."""
    ordered = sorted(probes, key=lambda p: p.copies)
    best = ordered[0]
    for more in ordered[1:]:
        if not worth_more(best, more, gpu_mb):
            break
        best = more
    return best.copies


def measure(probe: Callable[[int], Probe | None], gpu_mb: float) -> list[Probe]:
    """probe(n) for n in COPIES, stopping at the first n that does not pay off (None: n copies ran out of memory)."""
    probes: list[Probe] = []
    for n in COPIES:
        result = probe(n)
        if result is None:
            break
        probes.append(result)
        if len(probes) > 1 and choose_copies(probes, gpu_mb) != n:
            break
    return probes


class Packing:
    """Measured decisions, by GPU model and torch version, then by trial shape (a JSON file, written atomically)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.table: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}

    @staticmethod
    def _gpu(gpu: dict[str, Any]) -> str:
        return f"{gpu['name']} | torch {gpu['torch']}"

    def copies(self, gpu: dict[str, Any], trial: Trial) -> int | None:
        entry = self.table.get(self._gpu(gpu), {}).get(shape_key(trial))
        return int(entry["copies"]) if entry else None

    def record(self, gpu: dict[str, Any], trial: Trial, probes: Sequence[Probe]) -> int:
        copies = choose_copies(probes, gpu["memory_mb"])
        self.table.setdefault(self._gpu(gpu), {})[shape_key(trial)] = {
            "copies": copies,
            "gpu_memory_mb": gpu["memory_mb"],
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "probes": [asdict(p) for p in probes],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store.write_json(self.path, self.table)
        log.info(
            "%s on %s: %s -> %d per GPU",
            shape_key(trial),
            gpu["name"],
            ", ".join(f"{p.copies}x {p.images_per_s:,.0f} img/s" for p in probes),
            copies,
        )
        return copies
