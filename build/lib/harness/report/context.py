"""The report's shared state: results and cells, each cell's predictions read once, and paired tests run once."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import metrics, store
from harness.report.cells import Cell
from harness.report.paper import DATASET_TITLES

ALPHA = 0.05
BOOT_SEED = 0  # every paired test uses the same resamples, so a report is reproducible
# Cell predictions kept between paired tests. A thousand NIH-sized test sets would need about 5 GB;
# past this budget the least recently used are dropped and read again when a later test needs them.
MEMORY_BYTES = 1 << 30


@dataclass
class Comparison:
    """One paired test of mean AUROC: a minus b over the same test patients."""

    a: Cell
    b: Cell
    name_a: str
    name_b: str
    diff: float
    ci: tuple[float, float]
    p: float
    axis: str = ""
    p_holm: float = float("nan")

    def result(self) -> dict[str, Any]:
        """The shape metrics.summary_sentence reads, with the Holm-adjusted p."""
        return {"diff": self.diff, "ci": list(self.ci), "p": self.p, "p_adjusted": self.p_holm}

    def flipped(self) -> Comparison:
        """b minus a: the same test read the other way round."""
        ci = (-self.ci[1], -self.ci[0])
        return Comparison(self.b, self.a, self.name_b, self.name_a, -self.diff, ci, self.p, self.axis, self.p_holm)


@dataclass(frozen=True)
class CellData:
    """What a paired test needs of a cell: probs (several seeds averaged), labels, patient and image ids."""

    probs: np.ndarray
    labels: np.ndarray
    patient_id: np.ndarray
    image_index: np.ndarray | None

    @property
    def nbytes(self) -> int:
        arrays = (self.probs, self.labels, self.patient_id, self.image_index)
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass
class Context:
    """Everything the sections share: results, cells, their predictions and the paired tests between them."""

    grid_dir: Path
    out_dir: Path
    results: list[store.Result]
    failures: list[dict[str, Any]]
    reference: str | None
    n_boot: int
    broken: list[str] = field(default_factory=list)  # one line per trial left out: its files are damaged
    progress: bool = True  # progress bars on stderr
    axes: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    histories: dict[str, pd.DataFrame | None] = field(default_factory=dict)  # None: no readable history.csv
    _data: OrderedDict[str, CellData | None] = field(default_factory=OrderedDict)
    _data_bytes: int = 0
    _tests: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return sorted({str(r.metrics.get("dataset") or r.trial.get("dataset", "?")) for r in self.results})

    @property
    def is_nih(self) -> bool:
        """Published values are shown only when every result was computed on the real NIH images."""
        return bool(self.results) and self.datasets == ["nih"]

    @property
    def unverified_weights(self) -> list[str]:
        """Pretrained results whose weights file is not torchvision's published ImageNet checkpoint."""
        return sorted(
            {
                r.trial.get("arch", "?")
                for r in self.results
                if r.trial.get("pretrained") and not (r.metrics.get("weights") or {}).get("imagenet_verified", False)
            }
        )

    @property
    def dataset_title(self) -> str:
        names = self.datasets
        if len(names) == 1:
            return DATASET_TITLES.get(names[0], names[0])
        return "MIXED: " + " and ".join(DATASET_TITLES.get(n, n) for n in names)

    def bar(self, *, total: int, desc: str, unit: str):
        """A progress bar on stderr (tqdm), gone once done; a silent one when progress is off."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not self.progress)

    # --- reading: every trial once ---

    def read(self) -> None:
        """Read each trial's predictions and history once; combine each seeded cell's seeds."""
        with self.bar(total=len(self.results), desc="reading trials", unit="trial") as bar:
            for cell in self.cells:
                seeds = self.seed_probs(cell)
                cell.seeds_differ = seeds is None
                if seeds is not None and len(cell.results) > 1:
                    probs, first = seeds
                    cell.combined = {
                        **metrics.combine_seeds(
                            probs, first["labels"], first["patient_id"], n_boot=self.n_boot, seed=BOOT_SEED
                        ),
                        "names": [str(n) for n in first["names"]],
                    }
                self._keep(cell, seeds)
                for r in cell.results:
                    self.histories[r.key] = _history(r)
                bar.update(len(cell.results))

    def predictions(self, r: store.Result) -> dict[str, np.ndarray]:
        return r.predictions()

    def seed_probs(self, cell: Cell) -> tuple[list[np.ndarray], dict[str, np.ndarray]] | None:
        """Every seed's probs in the first seed's image order, and the first seed's predictions;
        None when the seeds were scored on different test images."""
        preds = [self.predictions(r) for r in cell.results]
        first = preds[0]
        probs = [first["probs"]]
        for p in preds[1:]:
            aligned = _align(p["probs"], first.get("image_index"), p.get("image_index"), n=len(first["probs"]))
            if aligned is None:
                return None
            probs.append(aligned)
        return probs, first

    def _cell_data(self, cell: Cell) -> CellData | None:
        """The cell's test-set predictions, read once and kept while the memory budget allows."""
        if cell.id in self._data:
            self._data.move_to_end(cell.id)
            return self._data[cell.id]
        return self._keep(cell, self.seed_probs(cell))

    def _keep(self, cell: Cell, seeds: tuple[list[np.ndarray], dict[str, np.ndarray]] | None) -> CellData | None:
        """Several seeds averaged into one ensemble; None when they were scored on different test images."""
        data = None
        if seeds is not None:
            probs, first = seeds
            mean = probs[0] if len(probs) == 1 else np.mean(probs, axis=0)
            data = CellData(mean, first["labels"], first["patient_id"], first.get("image_index"))
        self._data[cell.id] = data
        self._data_bytes += data.nbytes if data is not None else 0
        while self._data_bytes > MEMORY_BYTES and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._data_bytes -= old.nbytes if old is not None else 0
        return data

    # --- paired tests: each pair once, in either order ---

    def run(self, pairs: Sequence[tuple[Cell, Cell]]) -> None:
        """Run the paired tests the sections will ask for, in that order, under one progress bar."""
        with self.bar(total=len(pairs), desc="paired tests", unit="test") as bar:
            for a, b in pairs:
                self.paired(a, b)
                bar.update()

    def paired(self, a: Cell, b: Cell) -> dict[str, Any] | None:
        """metrics.paired_bootstrap of a against b, or None when their test sets differ."""
        if (a.id, b.id) in self._tests:
            return self._tests[(a.id, b.id)]
        if (b.id, a.id) in self._tests:
            other = self._tests[(b.id, a.id)]
            return (
                None if other is None else {**other, "diff": -other["diff"], "ci": [-other["ci"][1], -other["ci"][0]]}
            )
        da, db = self._cell_data(a), self._cell_data(b)
        pb = None if da is None or db is None else _align(db.probs, da.image_index, db.image_index, n=len(da.probs))
        out = None
        if pb is not None:
            try:
                res = metrics.paired_bootstrap(
                    probs_a=da.probs,
                    probs_b=pb,
                    labels=da.labels,
                    patient_ids=da.patient_id,
                    n_boot=self.n_boot,
                    seed=BOOT_SEED,
                )
            except metrics.MetricsError:
                res = {"p": None}  # e.g. no finding with both classes: nothing to compare
            if res["p"] is not None and None not in res["ci"]:
                out = {"diff": float(res["diff"]), "ci": [float(c) for c in res["ci"]], "p": float(res["p"])}
        self._tests[(a.id, b.id)] = out
        return out

    def compare(self, a: Cell, b: Cell, *, name_a: str, name_b: str, axis: str = "") -> Comparison | None:
        res = self.paired(a, b)
        if res is None:
            return None
        return Comparison(a, b, name_a, name_b, res["diff"], (res["ci"][0], res["ci"][1]), res["p"], axis)


def _history(r: store.Result) -> pd.DataFrame | None:
    """A trial's per-epoch history, or None when it has none that can be drawn."""
    try:
        h = r.history()
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return None if "epoch" not in h or "train_loss" not in h or h.empty else h


def _align(probs: np.ndarray, want: np.ndarray | None, have: np.ndarray | None, *, n: int) -> np.ndarray | None:
    """probs (ordered by `have`) reordered to `want`; None when the two test sets are not the same images."""
    if want is None or have is None:
        return probs if len(probs) == n else None
    if len(want) != len(have):
        return None
    if np.array_equal(want, have):
        return probs
    pos = {k: i for i, k in enumerate(have.tolist())}
    if len(pos) != len(have) or any(k not in pos for k in want.tolist()):
        return None
    return probs[[pos[k] for k in want.tolist()]]


def holm(comparisons: Sequence[Comparison]) -> None:
    """Set each comparison's Holm-adjusted p over the family given."""
    if comparisons:
        adjusted = metrics.holm([c.p for c in comparisons])
        for c, p in zip(comparisons, adjusted):
            c.p_holm = float(p)
