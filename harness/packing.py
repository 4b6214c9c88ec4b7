"""How many trials share one GPU: decided from their throughput side by side and their memory.

A GPU runs the kernels of several processes by time-slicing, so trials side by side only gain where one
trial alone leaves the GPU idle (launch gaps, small batches, the host's share of a step). More trials per GPU
are kept only while together they give at least GAIN of throughput and fit in memory (choose_copies).

The evidence is the trials' own epochs, not a phase before them: each epoch's images/s, with how many trials
of its shape shared its GPU throughout (side_by_side), are levels of sharing observed for free. A grid starts
at once with the remembered decision for each shape, else a fixed guess; after it, what its epochs showed is
merged into the remembered decision, and a level not yet seen next to the best one is tried by the next run
(next_copies: 1 -> 2 -> 4 while each pays, down when the guess was never compared with less). Decisions are
remembered per GPU model and torch version in the cache directory. `harness bench pack` still measures copies
of a trial's model step released together (measure; harness.runner.placement runs them) when asked.
A trial that runs out of GPU memory beside others gets one more attempt with a GPU to itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
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
THROUGHOUT = 0.9  # a neighbour present for this share of an epoch shared it; for under 1 - THROUGHOUT, it did not
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
    epochs: int = 0  # training epochs the figure is the mean of (0: a measurement of copies released together)

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


def next_copies(probes: Sequence[Probe], gpu_mb: float) -> tuple[int, bool]:
    """Trials per GPU for the next run of a shape, and whether that is settled.

    From the best level seen (choose_copies from the lowest seen), a level of COPIES next to it and not yet seen
    is tried: the one above when it would fit, else the one below (the guess a first run used was never
    compared with less). Settled when neither is left: a step up did not pay, does
    not fit or ran out of memory (ran_out), and the step down was seen.
    """
    seen = {p.copies: p for p in probes if p.copies in COPIES}
    if not seen:
        raise ValueError(f"no level of {COPIES} among the probes: nothing to decide from")
    ran = [p for p in seen.values() if p.images_per_s > 0]  # the others ran out of memory (ran_out)
    if not ran:
        below = COPIES[: COPIES.index(min(seen))]
        return (below[-1], False) if below else (1, True)
    best = choose_copies(ran, gpu_mb)
    i = COPIES.index(best)
    up, down = COPIES[i + 1 : i + 2], COPIES[max(i - 1, 0) : i]
    if up and up[0] not in seen and fits(replace(seen[best], copies=up[0]), gpu_mb):
        return up[0], False
    if down and down[0] not in seen:
        return down[0], False
    return best, True


@dataclass(frozen=True)
class Epoch:
    """One training epoch of a trial as it ran: on which GPU, when, and its images/s."""

    run: str  # the trial's run (one attempt at one trial)
    shape: str  # shape_key of its trial
    gpu: str  # the physical GPU it ran on: node and device
    start: float  # wall-clock seconds
    end: float
    images_per_s: float
    peak_gpu_mb: float = 0.0


def side_by_side(epochs: Sequence[Epoch]) -> dict[str, list[Probe]]:
    """Levels of sharing the epochs observed, by shape.

    An epoch counts at level n when n runs of its shape, and no other run, were on its GPU throughout it: every
    other run on that GPU was there for at least THROUGHOUT of the epoch (from its first epoch's start to its
    last one's end) or for less than 1 - THROUGHOUT of it; a run that came or went mid-epoch makes it no
    evidence. Images/s at level n is n times the mean images/s of the epochs that counted at n.
    """
    span: dict[str, tuple[float, float]] = {}
    for e in epochs:
        start, end = span.get(e.run, (e.start, e.end))
        span[e.run] = (min(start, e.start), max(end, e.end))
    shape_of = {e.run: e.shape for e in epochs}
    gpu_of = {e.run: e.gpu for e in epochs}
    counted: dict[tuple[str, int], list[Epoch]] = {}
    for e in epochs:
        length = e.end - e.start
        if length <= 0:
            continue
        there = []
        for run, (start, end) in span.items():
            if run == e.run or gpu_of[run] != e.gpu:
                continue
            share = max(0.0, min(end, e.end) - max(start, e.start)) / length
            if share >= THROUGHOUT:
                there.append(run)
            elif share > 1 - THROUGHOUT:
                break  # a neighbour came or went during the epoch
        else:
            if all(shape_of[run] == e.shape for run in there):
                counted.setdefault((e.shape, 1 + len(there)), []).append(e)
    out: dict[str, list[Probe]] = {}
    for (shape, n), seen in sorted(counted.items()):
        rate = sum(e.images_per_s for e in seen) / len(seen)
        peak = max(e.peak_gpu_mb for e in seen)
        out.setdefault(shape, []).append(
            Probe(copies=n, images_per_s=n * rate, peak_gpu_mb=peak, overlap=1.0, epochs=len(seen))
        )
    return out


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


def ran_out(copies: int) -> Probe:
    """What a level is worth where a trial ran out of GPU memory at it: nothing (it is not tried again)."""
    return Probe(copies=copies, images_per_s=0.0, peak_gpu_mb=0.0, overlap=0.0)


def out_of_gpu_memory(exc: BaseException) -> bool:
    """Whether exc, or an exception it came from, is torch running out of GPU memory (also as Ray relays it)."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(c.__name__ == "OutOfMemoryError" and c.__module__.startswith("torch") for c in type(seen).__mro__):
            return True
        if "CUDA out of memory" in str(seen) or "torch.OutOfMemoryError" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_alone(exc: BaseException, *, gpu_share: float) -> bool:
    """Whether a trial that failed with exc gets another attempt with a GPU to itself: it ran out of GPU memory
    while sharing one, so its neighbours' memory may be what it lacked. A trial alone on its GPU has no such excuse."""
    return 0 < gpu_share < 1 and out_of_gpu_memory(exc)


class Packing:
    """Decisions, by GPU model and torch version, then by trial shape, with the evidence (a JSON file, written
    atomically): {"copies", "settled", "gpu_memory_mb", "updated", "probes"}."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.table: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}

    @staticmethod
    def _gpu(gpu: dict[str, Any]) -> str:
        return f"{gpu['name']} | torch {gpu['torch']}"

    def copies(self, gpu: dict[str, Any], trial: Trial | str) -> int | None:
        """Trials per GPU remembered for the trial's shape (or a shape_key), None when none is."""
        shape = trial if isinstance(trial, str) else shape_key(trial)
        entry = self.table.get(self._gpu(gpu), {}).get(shape)
        return int(entry["copies"]) if entry else None

    def probes(self, gpu: dict[str, Any], shape: str) -> list[Probe]:
        entry = self.table.get(self._gpu(gpu), {}).get(shape) or {}
        return [Probe(**p) for p in entry.get("probes", [])]

    def _save(self, gpu: dict[str, Any], shape: str, copies: int, settled: bool, probes: Sequence[Probe]) -> None:
        self.table.setdefault(self._gpu(gpu), {})[shape] = {
            "copies": copies,
            "settled": settled,
            "gpu_memory_mb": gpu["memory_mb"],
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "probes": [asdict(p) for p in sorted(probes, key=lambda p: p.copies)],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store.write_json(self.path, self.table)

    def record(self, gpu: dict[str, Any], trial: Trial, probes: Sequence[Probe]) -> int:
        """A measurement of copies released together (measure): its decision is settled."""
        copies = choose_copies(probes, gpu["memory_mb"])
        self._save(gpu, shape_key(trial), copies, True, probes)
        log.info("%s on %s: %s -> %d per GPU", shape_key(trial), gpu["name"], _seen(probes), copies)
        return copies

    def learn(self, gpu: dict[str, Any], shape: str, probes: Sequence[Probe]) -> int | None:
        """Merge what a run observed (side_by_side; a level seen anew replaces the remembered one) and decide
        the next run's trials per GPU (next_copies). None: nothing usable was observed and nothing is known."""
        merged = {p.copies: p for p in self.probes(gpu, shape)}
        merged.update({p.copies: p for p in probes if p.copies in COPIES})
        if not merged:
            return None
        copies, settled = next_copies(list(merged.values()), gpu["memory_mb"])
        self._save(gpu, shape, copies, settled, list(merged.values()))
        log.info(
            "%s on %s: %s -> %d per GPU next run%s",
            shape,
            gpu["name"],
            _seen(merged.values()),
            copies,
            "" if settled else " (trying it)",
        )
        return copies


def _seen(probes: Iterable[Probe]) -> str:
    return ", ".join(f"{p.copies}x {p.images_per_s:,.0f} img/s" for p in sorted(probes, key=lambda p: p.copies))
