"""The report's shared state: results and cells, each cell's predictions read once, and paired tests run once."""

from __future__ import annotations

import inspect
import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import metrics, store
from harness.report.cells import SEED_STATS, Cell
from harness.report.paper import DATASET_TITLES, F1_VAL, F1_VAL_RULE, NIH_WEIGHTS_WARNING

ALPHA = 0.05
BOOT_SEED = 0  # every paired test uses the same resamples, so a report is reproducible
# Cell predictions kept between paired tests. A thousand NIH-sized test sets would need about 5 GB;
# past this budget the least recently used are dropped and read again when a later test needs them.
MEMORY_BYTES = 1 << 30


@dataclass
class Comparison:
    """One paired test of mean AUROC: a minus b over the same test patients (and, with several seeds, seeds)."""

    a: Cell
    b: Cell
    name_a: str
    name_b: str
    diff: float
    ci: tuple[float, float]
    p: float
    axis: str = ""
    p_holm: float = float("nan")  # Holm-adjusted over the report's one family of tests (Context.settle)
    unit: str = "patient"  # what the test resampled: "patient", or "seed, then patient" when a cell has seeds
    family: int = 0  # how many tests the family holds

    @property
    def degenerate(self) -> bool:
        """Either side's output is degenerate: the test is shown, flagged, and names no winner."""
        return bool(self.a.degenerate or self.b.degenerate)

    @property
    def significant(self) -> bool:
        """The one verdict every part of the report gives this pair: adjusted p below ALPHA, an interval that
        excludes 0, and neither side degenerate."""
        excludes_0 = self.ci[0] > 0 or self.ci[1] < 0
        return not self.degenerate and math.isfinite(self.p_holm) and self.p_holm < ALPHA and excludes_0

    def flipped(self) -> Comparison:
        """b minus a: the same test read the other way round."""
        ci = (0.0 - self.ci[1], 0.0 - self.ci[0])  # 0.0 - x: a difference of zero reads 0.0 either way, not -0.0
        return replace(self, a=self.b, b=self.a, name_a=self.name_b, name_b=self.name_a, diff=0.0 - self.diff, ci=ci)


@dataclass(frozen=True)
class CellData:
    """What a paired test needs of a cell: each seed's probs and logits (None where not saved) in one image
    order, the labels, patient and image ids."""

    probs: list[np.ndarray]
    logits: list[np.ndarray | None]
    labels: np.ndarray
    patient_id: np.ndarray
    image_index: np.ndarray | None

    @property
    def nbytes(self) -> int:
        arrays = (*self.probs, *self.logits, self.labels, self.patient_id, self.image_index)
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def logits_or_none(self) -> list[np.ndarray | None] | None:
        return None if all(s is None for s in self.logits) else self.logits

    def reordered(self, idx: slice | np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray | None] | None]:
        """Each seed's probs and logits put into another cell's image order."""
        logits = self.logits_or_none
        return [p[idx] for p in self.probs], None if logits is None else [s if s is None else s[idx] for s in logits]


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
    axes: list[str] = field(default_factory=list)  # varied fields, one per set that varies together (seed too)
    varied: list[str] = field(default_factory=list)  # every varied field
    followers: dict[str, list[str]] = field(default_factory=dict)  # axis -> fields varying with it (cells.lockstep)
    cells: list[Cell] = field(default_factory=list)
    histories: dict[str, pd.DataFrame | None] = field(default_factory=dict)  # None: no readable history.csv
    _data: OrderedDict[str, CellData | None] = field(default_factory=OrderedDict)
    _data_bytes: int = 0
    _tests: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    family: dict[frozenset[str], Comparison] = field(default_factory=dict)  # every pair the report states

    @property
    def datasets(self) -> list[str]:
        return sorted({str(r.metrics.get("dataset") or r.trial.get("dataset", "?")) for r in self.results})

    @property
    def is_nih(self) -> bool:
        """Published values are shown only when every result was computed on the real NIH images."""
        return bool(self.results) and self.datasets == ["nih"]

    @property
    def synthetic(self) -> bool:
        """Any result on rendered phantoms (the NIH layout's, or another dataset's: synthetic-chexpert, ...)."""
        return any(d.startswith("synthetic") for d in self.datasets)

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
    def nih_weights(self) -> dict[str, str]:
        """Starting-weights files that may have seen NIH test images (as recorded at training) -> why."""
        out = {}
        for r in self.results:
            w = r.metrics.get("weights") or {}
            if w.get("nih_overlap"):
                out[Path(str(w.get("file", "?"))).name] = str(w["nih_overlap"])
        return dict(sorted(out.items()))

    def nih_warning(self) -> str | None:
        """The warning line for results started from such weights, or None."""
        found = self.nih_weights
        return NIH_WEIGHTS_WARNING.format(files="; ".join(f"{k} ({v})" for k, v in found.items())) if found else None

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
        """Read each trial's predictions and history once: complete each result's metrics for the report
        (report_metrics) and give each seeded cell its seed-level intervals (metrics.seed_bootstrap)."""
        views: dict[str, store.Result] = {}
        with self.bar(total=len(self.results), desc="reading trials", unit="trial") as bar:
            for cell in self.cells:
                preds = [self.predictions(r) for r in cell.results]
                cell.results = [report_metrics(r, p) for r, p in zip(cell.results, preds)]
                views.update((r.key, r) for r in cell.results)
                data = _seed_data(preds)
                cell.seeds_differ = data is None
                if data is not None and len(cell.results) > 1:
                    two_level = metrics.seed_bootstrap(
                        data.probs,
                        data.labels,
                        data.patient_id,
                        logits_by_seed=data.logits_or_none,
                        stats=tuple(SEED_STATS.values()),
                        n_boot=self.n_boot,
                        seed=BOOT_SEED,
                    )
                    cell.combined = {**two_level, "names": [str(n) for n in preds[0]["names"]]}
                self._keep(cell, data)
                for r in cell.results:
                    self.histories[r.key] = _history(r)
                bar.update(len(cell.results))
        self.results = [views.get(r.key, r) for r in self.results]

    def predictions(self, r: store.Result) -> dict[str, np.ndarray]:
        return r.predictions()

    def cell_data(self, cell: Cell) -> CellData | None:
        """The cell's test-set predictions, read once and kept while the memory budget allows."""
        if cell.id in self._data:
            self._data.move_to_end(cell.id)
            return self._data[cell.id]
        return self._keep(cell, _seed_data([self.predictions(r) for r in cell.results]))

    def _keep(self, cell: Cell, data: CellData | None) -> CellData | None:
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
        """metrics.paired_seed_bootstrap of a against b (with one seed each: paired_bootstrap's numbers), or
        None when their test sets differ."""
        if (a.id, b.id) in self._tests:
            return self._tests[(a.id, b.id)]
        if (b.id, a.id) in self._tests:
            other = self._tests[(b.id, a.id)]
            return (
                None if other is None else {**other, "diff": -other["diff"], "ci": [-other["ci"][1], -other["ci"][0]]}
            )
        da, db = self.cell_data(a), self.cell_data(b)
        idx = None
        if da is not None and db is not None:
            idx = _order(da.image_index, db.image_index, n_want=len(da.labels), n_have=len(db.labels))
        out = None
        if idx is not None:
            probs_b, logits_b = db.reordered(idx)
            try:
                res = metrics.paired_seed_bootstrap(
                    probs_a_by_seed=da.probs,
                    probs_b_by_seed=probs_b,
                    labels=da.labels,
                    patient_ids=da.patient_id,
                    logits_a_by_seed=da.logits_or_none,
                    logits_b_by_seed=logits_b,
                    n_boot=self.n_boot,
                    seed=BOOT_SEED,
                    matched=a.seeds == b.seeds,
                )
            except metrics.MetricsError:
                res = {"p": None}  # e.g. no finding with both classes: nothing to compare
            if res["p"] is not None and None not in res["ci"]:
                seeded = len(da.probs) > 1 or len(probs_b) > 1
                out = {
                    "diff": float(res["diff"]),
                    "ci": [float(c) for c in res["ci"]],
                    "p": float(res["p"]),
                    "unit": res["unit"] if seeded else "patient",
                }
        self._tests[(a.id, b.id)] = out
        return out

    def p_best(self, cells: Sequence[Cell]) -> list[float | None]:
        """metrics.probability_best over the cells scored on the first one's test images (None for the others)."""
        datas = [self.cell_data(c) for c in cells]
        first = datas[0] if datas else None
        if first is None:
            return [None] * len(cells)
        idx = [
            None
            if d is None
            else _order(first.image_index, d.image_index, n_want=len(first.labels), n_have=len(d.labels))
            for d in datas
        ]
        inside = [i for i, x in enumerate(idx) if x is not None]
        if len(inside) < 2:
            return [None] * len(cells)
        moved = [datas[i].reordered(idx[i]) for i in inside]
        try:
            res = metrics.probability_best(
                [probs for probs, _ in moved],
                first.labels,
                first.patient_id,
                logits_by_cell=[logits for _, logits in moved],
                n_boot=self.n_boot,
                seed=BOOT_SEED,
            )
        except metrics.MetricsError:
            return [None] * len(cells)
        out: list[float | None] = [None] * len(cells)
        for i, v in zip(inside, res["p_best"]):
            out[i] = v
        return out

    def settle(self, pairs: Sequence[tuple[Cell, Cell, str]]) -> None:
        """Run every test the report states, (a, b, axis) in order, and Holm-correct them as one family: a pair
        gets one p, one adjusted p and one verdict wherever it appears (tables, paired tests, conclusions)."""
        self.run([(a, b) for a, b, _ in pairs])
        family: dict[frozenset[str], Comparison] = {}
        for a, b, axis in pairs:
            key = frozenset((a.id, b.id))
            if key in family:
                family[key].axis = family[key].axis or axis
            elif (res := self.paired(a, b)) is not None:
                ci = (res["ci"][0], res["ci"][1])
                family[key] = Comparison(a, b, "", "", res["diff"], ci, res["p"], axis, unit=res["unit"])
        if family:
            for c, p in zip(family.values(), metrics.holm([c.p for c in family.values()])):
                c.p_holm, c.family = float(p), len(family)
        self.family = family

    def compare(self, a: Cell, b: Cell, *, name_a: str, name_b: str, axis: str = "") -> Comparison | None:
        """The family's test of a against b (settle ran it), named as the caller shows the two; None when the
        pair was not tested (different test images, or no AUROC to compare)."""
        c = self.family.get(frozenset((a.id, b.id)))
        if c is None:
            return None
        c = c if c.a.id == a.id else c.flipped()
        return replace(c, name_a=name_a, name_b=name_b, axis=axis or c.axis)


def _history(r: store.Result) -> pd.DataFrame | None:
    """A trial's per-epoch history, or None when it has none that can be drawn."""
    try:
        h = r.history()
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return None if "epoch" not in h or "train_loss" not in h or h.empty else h


def _order(want: np.ndarray | None, have: np.ndarray | None, *, n_want: int, n_have: int) -> slice | np.ndarray | None:
    """Indices that put arrays ordered by `have` into `want`'s order; None when the two test sets differ."""
    if want is None or have is None:
        return slice(None) if n_have == n_want else None
    if len(want) != len(have):
        return None
    if np.array_equal(want, have):
        return slice(None)
    pos = {k: i for i, k in enumerate(have.tolist())}
    if len(pos) != len(have) or any(k not in pos for k in want.tolist()):
        return None
    return np.array([pos[k] for k in want.tolist()])


def _seed_data(preds: Sequence[dict[str, np.ndarray]]) -> CellData | None:
    """Every seed's predictions in the first seed's image order; None when they were scored on different images."""
    first = preds[0]
    probs, logits = [], []
    for p in preds:
        idx = _order(first.get("image_index"), p.get("image_index"), n_want=len(first["probs"]), n_have=len(p["probs"]))
        if idx is None:
            return None
        probs.append(p["probs"][idx])
        logits.append(p["logits"][idx] if "logits" in p else None)
    return CellData(probs, logits, first["labels"], first["patient_id"], first.get("image_index"))


# metrics.evaluate's focal parameters: the ones a metrics.json "focal" was computed with.
_EVAL_FOCAL = {k: inspect.signature(metrics.evaluate).parameters[k].default for k in ("focal_gamma", "focal_alpha")}


def focal_params(trial: dict[str, Any]) -> tuple[float, float]:
    """(gamma, alpha) of a trial's focal column: its own, as trial.json holds them."""
    return tuple(float(trial.get(k, v)) for k, v in _EVAL_FOCAL.items())  # type: ignore[return-value]


def report_metrics(r: store.Result, p: dict[str, np.ndarray]) -> store.Result:
    """The result with what the report adds to its metrics.json (in memory only): the degenerate record when
    metrics.json predates it, the focal loss at the trial's own parameters, and F1 at validation thresholds."""
    m = dict(r.metrics)
    if not m.get("degenerate"):
        m["degenerate"] = metrics.degenerate(p["probs"], logits=p.get("logits"), names=[str(n) for n in p["names"]])
    gamma, alpha = focal_params(r.trial)
    if (gamma, alpha) != tuple(_EVAL_FOCAL.values()):
        m["focal"] = metrics.focal_loss(p["probs"], p["labels"], gamma=gamma, alpha=alpha)
    m[F1_VAL] = ((m.get("thresholds") or {}).get(F1_VAL_RULE) or {}).get("f1_macro")
    return store.Result(trial=r.trial, metrics=m, path=r.path)
