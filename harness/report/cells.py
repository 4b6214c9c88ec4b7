"""Cells: results grouped by every trial field but the seed, their values, the fields a grid varied, their names."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from harness import metrics, store
from harness.report.paper import ARCH_ORDER, DASH, PM, arch_name

# trial.json entries that never define a cell (a weights file's digest goes with its path, which names it)
NOT_AXES = ("seed", "key", "label", "grid", "weights_sha256", "pretrained_sha256")


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


# metrics.json keys -> the seed_bootstrap statistic that gives them an interval over seeds, then patients
SEED_STATS = {"auc_macro": "auc", "f1_macro": "f1"}


def degenerate_record(result: store.Result) -> dict[str, Any]:
    """The trial's metrics.degenerate record ({} when neither metrics.json nor the report supplied one)."""
    return result.metrics.get("degenerate") or {}


@dataclass
class Cell:
    """One configuration (every trial field but the seed) and its results, one per seed."""

    fields: dict[str, Any]
    results: list[store.Result]
    combined: dict[str, Any] | None = None  # metrics.seed_bootstrap over the seeds (+ "names"), when several
    seeds_differ: bool = False  # the seeds were scored on different test images (e.g. subset_test)

    @classmethod
    def of(cls, result: store.Result) -> Cell:
        """A cell holding one result."""
        return cls(cell_fields(result), [result])

    @property
    def id(self) -> str:
        return "+".join(r.key for r in self.results)

    @property
    def seeds(self) -> list[Any]:
        """The seed values, in the cell's order (by value): two cells with equal lists have matched seeds."""
        return [r.trial.get("seed", 0) for r in self.results]

    @property
    def arch(self) -> str:
        return str(self.fields.get("arch", "?"))

    @property
    def degenerate(self) -> list[store.Result]:
        """The seeds whose output is degenerate (metrics.degenerate); a cell with any is marked and never 'best'."""
        return [r for r in self.results if degenerate_record(r).get("degenerate")]

    def degenerate_findings(self) -> set[str]:
        """Findings whose output is degenerate in any seed (constant or mostly saturated columns)."""
        return {str(n) for r in self.results for n in degenerate_record(r).get("findings") or ()}

    def stat(self, metric: str) -> Stat:
        if len(self.results) == 1:
            m = self.results[0].metrics
            return Stat(_num(m.get(metric)), _ci(m.get(f"{metric}_ci")))
        values = [_num(r.metrics.get(metric)) for r in self.results]
        values = [v for v in values if v is not None]
        if not values:
            return Stat(None)
        s = metrics.seeds_summary(values)
        two_level = self.combined.get(SEED_STATS.get(metric, "")) if self.combined else None
        if two_level is None or two_level["value"] is None:
            return Stat(float(s["mean"]), None, s["std"])
        return Stat(float(two_level["value"]), _ci(two_level["ci"]), s["std"])

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
        if not (self.combined and name in self.combined["names"]):
            return Stat(float(s["mean"]), None, s["std"])
        f = self.combined["names"].index(name)
        value = self.combined["auc"]["per_finding"][f]
        return Stat(
            float(s["mean"] if value is None else value), _ci(self.combined["auc"]["per_finding_ci"][f]), s["std"]
        )


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
    names = list(dict.fromkeys(k for r in results for k in r.trial if k not in NOT_AXES or k == "seed"))
    return [k for k in names if len({hashable(r.trial.get(k)) for r in results}) > 1]


# The field that names a set of fields varying together: the one a reader knows (freeze goes with pretrained
# in the paper grid, epochs with arch in its smoke profile); otherwise the first in trial.json order.
LEADERS = ("arch", "pretrained", "loss")


def lockstep(results: Sequence[store.Result], varied: Sequence[str]) -> dict[str, list[str]]:
    """Each varied field (seed aside) that leads others -> the fields it determines: one axis, not several.
    A field follows the first field before it (arch, pretrained, loss first) whose value fixes its own, as a
    `when` rule that gives each arch its epochs and size does, even where two archs share a value. Fields that
    vary on their own are left out."""
    rows = {hashable(cell_fields(r)): cell_fields(r) for r in results}.values()
    fields = sorted(
        (f for f in varied if f != "seed"), key=lambda f: LEADERS.index(f) if f in LEADERS else len(LEADERS)
    )

    def determines(a: str, b: str) -> bool:
        seen: dict[str, str] = {}
        return all(seen.setdefault(hashable(r.get(a)), hashable(r.get(b))) == hashable(r.get(b)) for r in rows)

    groups: list[list[str]] = []
    for f in fields:
        home = next((g for g in groups if determines(g[0], f)), None)
        if home is None:
            groups.append([f])
        else:
            home.append(f)
    out = {}
    for g in (g for g in groups if len(g) > 1):
        leader = min(g, key=lambda f: (LEADERS.index(f) if f in LEADERS else len(LEADERS), g.index(f)))
        out[leader] = [f for f in varied if f in g and f != leader]  # in trial.json order
    return out


def _value(v: Any, name: str = "") -> str:
    return str(v).lower() if isinstance(v, bool) else field_text(v, name)  # as a grid file writes it


def lockstep_notes(followers_of: Mapping[str, list[str]], cells: Sequence[Cell]) -> list[str]:
    """One line per axis that other fields vary with (followers_of: lockstep's answer): together they are one
    axis, tested and named as it."""
    out = []
    for axis, followers in followers_of.items():
        pairs: dict[str, list[str]] = {}
        for c in cells:
            pairs.setdefault(_value(c.fields.get(axis), axis), [_value(c.fields.get(f), f) for f in followers])
        values = "; ".join(
            f"{axis} {k}: " + ", ".join(f"{f} {v}" for f, v in zip(followers, vs)) for k, vs in pairs.items()
        )
        verb = "varies" if len(followers) == 1 else "vary"
        out.append(f"{', '.join(followers)} {verb} with {axis} ({values}): one axis, named {axis}.")
    return out


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


def field_text(value: Any, name: str = "") -> str:
    if name == "weights" and value:
        return PurePath(str(value)).name  # a starting-weights file by its name; the methods give its path
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A readable cell name, e.g. 'pretrained ResNet152 (loss=focal)': the arch always, shown fields too."""
    words = []
    if "pretrained" in shown:
        words.append("pretrained" if fields.get("pretrained") else "scratch")
    words.append(arch_name(str(fields.get("arch", "?"))))
    extra = [f"{k}={field_text(fields.get(k), k)}" for k in shown if k not in ("arch", "pretrained", "seed")]
    return " ".join(words) + (f" ({', '.join(extra)})" if extra else "")


def trial_name(result: store.Result, shown: Sequence[str], *, seeds: bool) -> str:
    """One result's name among others: its cell's name, and its seed where the seeds differ."""
    return describe(result.trial, shown) + (f" seed {result.trial.get('seed')}" if seeds else "")
