"""Cells: results grouped by every trial field but the seed, their values, the fields a grid varied, their names."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness import metrics, store
from harness.report.paper import ARCH_ORDER, DASH, PM, arch_name

NOT_AXES = ("seed", "key", "label", "grid")  # trial.json entries that never define a cell


@dataclass(frozen=True)
class Stat:
    """A value with its interval and, over several seeds, its standard deviation."""

    value: float | None
    ci: tuple[float, float] | None = None
    std: float | None = None

    def text(self, digits: int) -> str:
        if self.value is None or not math.isfinite(self.value):
            return DASH
        out = f"{self.value:.{digits}f}"
        if self.std is not None:
            out += f" {PM} {self.std:.{digits}f}"
        if self.ci is not None and all(c is not None and math.isfinite(c) for c in self.ci):
            out += f" [{self.ci[0]:.{digits}f}, {self.ci[1]:.{digits}f}]"
        return out

    def columns(self, name: str, *, std: bool = False, sep: str = "_") -> dict[str, Any]:
        """The CSV columns of one value: name, (name_std,) name_lo, name_hi."""
        out: dict[str, Any] = {name: self.value}
        if std:
            out[f"{name}{sep}std"] = self.std
        lo, hi = self.ci if self.ci else (None, None)
        return {**out, f"{name}{sep}lo": lo, f"{name}{sep}hi": hi}


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _ci(v: Any) -> tuple[float, float] | None:
    return (float(v[0]), float(v[1])) if v is not None and len(v) == 2 and None not in v else None


@dataclass
class Cell:
    """One configuration (every trial field but the seed) and its results, one per seed."""

    fields: dict[str, Any]
    results: list[store.Result]
    combined: dict[str, Any] | None = None  # metrics.combine_seeds over the seeds (+ "names"), when several
    seeds_differ: bool = False  # the seeds were scored on different test images (e.g. subset_test)

    @classmethod
    def of(cls, result: store.Result) -> Cell:
        """A cell holding one result."""
        return cls(cell_fields(result), [result])

    @property
    def id(self) -> str:
        return "+".join(r.key for r in self.results)

    @property
    def arch(self) -> str:
        return str(self.fields.get("arch", "?"))

    def stat(self, metric: str) -> Stat:
        if len(self.results) == 1:
            m = self.results[0].metrics
            return Stat(_num(m.get(metric)), _ci(m.get(f"{metric}_ci")))
        values = [_num(r.metrics.get(metric)) for r in self.results]
        values = [v for v in values if v is not None]
        if not values:
            return Stat(None)
        s = metrics.seeds_summary(values)
        ci = _ci(self.combined.get(f"{metric}_ci")) if self.combined else None
        return Stat(float(s["mean"]), ci, s["std"])

    def finding_stat(self, name: str) -> Stat:
        def one(m: dict[str, Any]) -> dict[str, Any]:
            return (m.get("per_finding") or {}).get(name) or {}

        if len(self.results) == 1:
            f = one(self.results[0].metrics)
            return Stat(_num(f.get("auc")), _ci(f.get("auc_ci")))
        values = [v for v in (_num(one(r.metrics).get("auc")) for r in self.results) if v is not None]
        if not values:
            return Stat(None)
        s = metrics.seeds_summary(values)
        ci = None
        if self.combined and name in self.combined["names"]:
            ci = _ci(self.combined["auc_per_finding_ci"][self.combined["names"].index(name)])
        return Stat(float(s["mean"]), ci, s["std"])


def hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def cell_fields(result: store.Result) -> dict[str, Any]:
    return {k: v for k, v in result.trial.items() if k not in NOT_AXES}


def field_order(name: str, value: Any) -> tuple:
    """Sort order of a field's values: the paper's archs first, pretrained before scratch."""
    if name == "arch":
        return (ARCH_ORDER.index(value) if value in ARCH_ORDER else len(ARCH_ORDER), str(value))
    if isinstance(value, bool):
        return (not value,)
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def varied_fields(results: Sequence[store.Result]) -> list[str]:
    """Trial fields whose values differ across results, in trial.json order (seed included)."""
    names = list(dict.fromkeys(k for r in results for k in r.trial if k not in ("key", "label", "grid")))
    return [k for k in names if len({hashable(r.trial.get(k)) for r in results}) > 1]


def group_cells(results: Sequence[store.Result], axes: Sequence[str]) -> list[Cell]:
    """Results grouped by every field but the seed, ordered along the varied axes."""
    groups: dict[str, Cell] = {}
    for r in results:
        fields = cell_fields(r)
        groups.setdefault(hashable(fields), Cell(fields, [])).results.append(r)
    cells = list(groups.values())
    for c in cells:
        c.results.sort(key=lambda r: (r.trial.get("seed", 0), r.key))
    return sorted(cells, key=lambda c: tuple(field_order(a, c.fields.get(a)) for a in axes))


def field_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A readable cell name, e.g. 'pretrained ResNet152 (loss=focal)': the arch always, shown fields too."""
    words = []
    if "pretrained" in shown:
        words.append("pretrained" if fields.get("pretrained") else "scratch")
    words.append(arch_name(str(fields.get("arch", "?"))))
    extra = [f"{k}={field_text(fields.get(k))}" for k in shown if k not in ("arch", "pretrained", "seed")]
    return " ".join(words) + (f" ({', '.join(extra)})" if extra else "")


def trial_name(result: store.Result, shown: Sequence[str], *, seeds: bool) -> str:
    """One result's name among others: its cell's name, and its seed where the seeds differ."""
    return describe(result.trial, shown) + (f" seed {result.trial.get('seed')}" if seeds else "")
