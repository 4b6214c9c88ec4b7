"""Results to the paper's tables (Markdown, CSV, LaTeX), figures (PNG) and index.html; never imports torch or ray."""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import metrics, store
from harness.config import ConfigError

# --- what the paper published --------------------------------------------------------------------

PAPER_SOURCE = (
    'Lei, Nguyen, Liu, Oh, "Deep Learning-Powered Classification of Thoracic Diseases in Chest '
    'X-Rays", Tables 1-2 (10% subset of the official NIH ChestX-ray14 split)'
)
# pretrained -> arch -> column -> value; the paper's Table 1 (scratch) has no focal-loss column.
PAPER_VALUES: dict[bool, dict[str, dict[str, float | None]]] = {
    False: {
        "alexnet": {"bce": 0.909, "focal": None, "f1": 0.251, "auc": 0.469},
        "resnet152": {"bce": 0.928, "focal": None, "f1": 0.274, "auc": 0.498},
        "inception_v3": {"bce": 0.936, "focal": None, "f1": 0.287, "auc": 0.500},
    },
    True: {
        "alexnet": {"bce": 0.7925, "focal": 0.0605, "f1": 0.1596, "auc": 0.6397},
        "resnet152": {"bce": 0.7945, "focal": 0.0609, "f1": 0.1401, "auc": 0.5940},
        "inception_v3": {"bce": 0.7866, "focal": 0.0595, "f1": 0.1560, "auc": 0.6390},
    },
}
PAPER_DIGITS = {False: 3, True: 4}  # as printed in Tables 1 and 2
PUBLISHED_AUROC = (
    "Published mean AUROC on the official patient-wise NIH ChestX-ray14 split: 0.745 for "
    "ResNet-50 (Wang et al. 2017, ChestX-ray8, CVPR; 14-finding update); about 0.80-0.82 for "
    "CheXNet-style DenseNet-121 reproductions (e.g. Guendel et al. 2018: 0.807)."
)
WEIGHTS_WARNING = (
    "UNVERIFIED WEIGHTS: the pretrained {archs} results loaded a weights file whose SHA-256 does not "
    "match torchvision's published ImageNet checkpoint (e.g. a placeholder): they are not "
    "ImageNet-pretrained results."
)
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: these numbers come from rendered phantoms, not NIH ChestX-ray14. They are "
    "not comparable with the paper's or any published values, which are therefore not shown."
)
DATASET_TITLES = {"nih": "NIH ChestX-ray14", "synthetic": "SYNTHETIC phantoms (not NIH)"}
ARCH_NAMES = {
    "alexnet": "AlexNet",
    "resnet18": "ResNet18",
    "resnet50": "ResNet50",
    "resnet152": "ResNet152",
    "inception_v3": "InceptionV3",
    "densenet121": "DenseNet121",
}
ARCH_ORDER = ("alexnet", "resnet152", "inception_v3")  # the paper's row order; other archs follow by name

ALPHA = 0.05
BOOT_SEED = 0  # every paired test uses the same resamples, so a report is reproducible
NOT_AXES = ("seed", "key", "label", "grid")  # trial.json entries that never define a cell
DAGGER = "\u2020"
PM = "\u00b1"
DASH = "\u2014"


@dataclass(frozen=True)
class Column:
    """One metric column: its CSV name, header, key in metrics.json and the digits shown."""

    name: str
    header: str
    metric: str
    digits: int


PAPER_COLUMNS = (
    Column("bce", "BCE loss", "bce", 4),
    Column("focal", "Focal loss", "focal", 4),
    Column("f1", "F1", "f1_macro", 3),
    Column("auc", "AUC", "auc_macro", 3),
)
GRID_COLUMNS = (
    Column("auc", "AUROC", "auc_macro", 3),
    Column("f1", "F1", "f1_macro", 3),
    Column("ap", "AP", "ap_macro", 3),
    Column("bce", "BCE loss", "bce", 4),
    Column("focal", "Focal loss", "focal", 4),
)


# --- cells: results that differ only in seed ------------------------------------------------------


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


def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _field_order(name: str, value: Any) -> tuple:
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
    names: list[str] = []
    for r in results:
        names += [k for k in r.trial if k not in names and k not in ("key", "label", "grid")]
    return [k for k in names if len({_hashable(r.trial.get(k)) for r in results}) > 1]


def group_cells(results: Sequence[store.Result], axes: Sequence[str]) -> list[Cell]:
    """Results grouped by every field but the seed, ordered along the varied axes."""
    groups: dict[str, Cell] = {}
    for r in results:
        fields = {k: v for k, v in r.trial.items() if k not in NOT_AXES}
        groups.setdefault(_hashable(fields), Cell(fields, [])).results.append(r)
    cells = list(groups.values())
    for c in cells:
        c.results.sort(key=lambda r: (r.trial.get("seed", 0), r.key))
    return sorted(cells, key=lambda c: tuple(_field_order(a, c.fields.get(a)) for a in axes))


def arch_name(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)


def _field_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A readable cell name, e.g. 'pretrained ResNet152 (loss=focal)': the arch always, shown fields too."""
    words = []
    if "pretrained" in shown:
        words.append("pretrained" if fields.get("pretrained") else "scratch")
    words.append(arch_name(str(fields.get("arch", "?"))))
    extra = [f"{k}={_field_text(fields.get(k))}" for k in shown if k not in ("arch", "pretrained", "seed")]
    return " ".join(words) + (f" ({', '.join(extra)})" if extra else "")


# --- tables in three formats ----------------------------------------------------------------------


@dataclass
class Table:
    """Text cells plus which are bold, rendered to Markdown, LaTeX and HTML; `frame` is the CSV."""

    stem: str  # file name without extension
    title: str
    columns: list[str]
    rows: list[list[str]]
    frame: pd.DataFrame
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def cell(i: int, j: int, text: str) -> str:
            text = text.replace("|", "\\|")
            return f"**{text}**" if (i, j) in self.bold else text

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(cell(i, j, t) for j, t in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        lines += [""] + [f"{n}  " for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        def cell(i: int, j: int, text: str) -> str:
            text = _tex(text)
            return f"\\textbf{{{text}}}" if (i, j) in self.bold else text

        lines = [
            "% needs \\usepackage{booktabs}",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_tex(self.title)}}}",
            f"\\begin{{tabular}}{{l{'l' * (len(self.columns) - 1)}}}",
            "\\toprule",
            " & ".join(_tex(c) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(cell(i, j, t) for j, t in enumerate(row)) + " \\\\" for i, row in enumerate(self.rows)]
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.notes:
            lines += ["\\par\\smallskip\\footnotesize " + " \\\\\n".join(_tex(n) for n in self.notes)]
        lines += ["\\end{table}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        def cell(i: int, j: int, text: str) -> str:
            text = html.escape(text)
            return f"<td><b>{text}</b></td>" if (i, j) in self.bold else f"<td>{text}</td>"

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "\n".join(
            "<tr>" + "".join(cell(i, j, t) for j, t in enumerate(row)) + "</tr>" for i, row in enumerate(self.rows)
        )
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in self.notes)
        links = " ".join(f"<a href='{self.stem}.{ext}'>{ext}</a>" for ext in ("md", "csv", "tex"))
        return (
            f"<h3>{html.escape(self.title)}</h3>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n{notes}"
            f"<p class='files'>{links}</p>\n"
        )

    def write(self, out_dir: Path) -> None:
        store.write_bytes(out_dir / f"{self.stem}.md", self.markdown().encode())
        store.write_bytes(out_dir / f"{self.stem}.tex", self.latex().encode())
        store.write_bytes(out_dir / f"{self.stem}.csv", self.frame.to_csv(index=False).encode())


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_SYMBOLS = {PM: r"$\pm$", DAGGER: r"$^\dagger$", DASH: "--", "\u2265": r"$\geq$", "<": r"$<$", ">": r"$>$"}


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    text = re.sub(r'"([^"]*)"', r"``\1''", text)  # TeX's opening and closing quotes
    return "".join(_TEX_SYMBOLS.get(ch, ch) for ch in text)


# --- the report's state ---------------------------------------------------------------------------


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


@dataclass
class Context:
    """Everything the sections share: results, cells, cached predictions and paired tests."""

    grid_dir: Path
    out_dir: Path
    results: list[store.Result]
    failures: list[dict[str, Any]]
    reference: str | None
    n_boot: int
    axes: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    _preds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
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

    def predictions(self, r: store.Result) -> dict[str, np.ndarray]:
        if r.key not in self._preds:
            self._preds[r.key] = r.predictions()
        return self._preds[r.key]

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

    def cell_probs(self, cell: Cell) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
        """probs, labels, patient ids, image ids; several seeds are averaged into one ensemble."""
        seeds = self.seed_probs(cell)
        if seeds is None:
            return None
        probs, first = seeds
        return (
            probs[0] if len(probs) == 1 else np.mean(probs, axis=0),
            first["labels"],
            first["patient_id"],
            first.get("image_index"),
        )

    def paired(self, a: Cell, b: Cell) -> dict[str, Any] | None:
        """metrics.paired_bootstrap of a against b, or None when their test sets differ."""
        if (a.id, b.id) in self._tests:
            return self._tests[(a.id, b.id)]
        if (b.id, a.id) in self._tests:
            other = self._tests[(b.id, a.id)]
            return (
                None if other is None else {**other, "diff": -other["diff"], "ci": [-other["ci"][1], -other["ci"][0]]}
            )
        got_a, got_b = self.cell_probs(a), self.cell_probs(b)
        out, pb = None, None
        if got_a is not None and got_b is not None:
            pa, ya, ida, ima = got_a
            pb = _align(got_b[0], ima, got_b[3], n=len(pa))
        if pb is not None:
            try:
                res = metrics.paired_bootstrap(pa, pb, ya, ida, n_boot=self.n_boot, seed=BOOT_SEED)
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


def _holm(comparisons: Sequence[Comparison]) -> None:
    if comparisons:
        adjusted = metrics.holm([c.p for c in comparisons])
        for c, p in zip(comparisons, adjusted):
            c.p_holm = float(p)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _signed(x: float) -> str:
    return f"{round(x, 3) + 0.0:+.3f}"  # + 0.0 turns a rounded -0.0 into 0.0


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci_note(ctx: Context, cells: Sequence[Cell], *, losses: bool = False) -> str:
    m = ctx.results[0].metrics
    level = float(m.get("ci_level", 0.95))
    text = (
        f"[lo, hi]: {level:.0%} bootstrap interval over test {m.get('ci_unit', 'patient')}s "
        f"({m.get('n_boot', '?')} resamples)."
    )
    if any(len(c.results) > 1 for c in cells):
        text += (
            f" Several seeds: mean {PM} standard deviation over seeds; the AUROC interval combines "
            "test-set and seed variation (metrics.combine_seeds); other metrics have no combined interval."
        )
    if losses and any(r.metrics.get("bce_ci") is None for c in cells for r in c.results):
        text += " BCE and focal loss are point values: metrics.json holds no interval for them."
    return text


# --- sections -------------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    html: str
    markdown: str = ""


PAPER_TABLES = (  # (stem, table number, pretrained, figure stem, title)
    ("table1_scratch", 1, False, "fig1_scratch", "Trained from scratch"),
    ("table2_pretrained", 2, True, "fig2_pretrained", "ImageNet-pretrained"),
)


def paper_table(ctx: Context, *, number: int, pretrained: bool, stem: str, what: str) -> Table | None:
    """Table 1 or 2: one row per cell with the paper's columns, significance marks and, on NIH, the paper's values."""
    cells = [c for c in ctx.cells if bool(c.fields.get("pretrained")) == pretrained]
    if not cells:
        return None
    shown = [a for a in varied_fields([r for c in cells for r in c.results]) if a not in ("pretrained", "seed")]
    names = [describe(c.fields, shown) for c in cells]
    # The reference arch may have no row here (e.g. only pretrained runs of it); the first row stands in.
    ref = next((i for i, c in enumerate(cells) if c.arch == ctx.reference), 0)

    # The family Holm corrects: every row against the reference, plus best against runner-up.
    vs_ref: dict[int, Comparison] = {}
    for i, c in enumerate(cells):
        if i != ref and (cmp := ctx.compare(c, cells[ref], name_a=names[i], name_b=names[ref])):
            vs_ref[i] = cmp
    aucs = [c.stat("auc_macro").value for c in cells]
    ranked = sorted((i for i in range(len(cells)) if aucs[i] is not None), key=lambda i: -aucs[i])
    family = list(vs_ref.values())
    extra = None
    if len(ranked) >= 2 and ref not in ranked[:2]:
        best, runner = ranked[:2]
        extra = ctx.compare(cells[best], cells[runner], name_a=names[best], name_b=names[runner])
        family += [extra] if extra else []
    _holm(family)
    top: Comparison | None = None  # best row minus runner-up, from the family above
    if len(ranked) >= 2:
        best, runner = ranked[:2]
        if ref == best:
            top = _flip(vs_ref[runner]) if runner in vs_ref else None
        elif ref == runner:
            top = vs_ref.get(best)
        else:
            top = extra

    columns = ["Model"] + [c.header for c in PAPER_COLUMNS]
    paper = PAPER_VALUES[pretrained] if ctx.is_nih else {}
    if paper:
        columns += [f"Paper {c.header}" for c in PAPER_COLUMNS]
    rows, records, bold = [], [], set()
    auc_col = 1 + [c.name for c in PAPER_COLUMNS].index("auc")
    for i, c in enumerate(cells):
        row, rec = (
            [names[i]],
            {"model": names[i], "arch": c.arch, "seeds": len(c.results), "keys": " ".join(r.key for r in c.results)},
        )
        for col in PAPER_COLUMNS:
            s = c.stat(col.metric)
            text = s.text(col.digits)
            if col.name == "auc" and i in vs_ref and vs_ref[i].p_holm < ALPHA:
                text += DAGGER
            row.append(text)
            rec.update(
                {
                    col.name: s.value,
                    f"{col.name}_std": s.std,
                    f"{col.name}_lo": s.ci[0] if s.ci else None,
                    f"{col.name}_hi": s.ci[1] if s.ci else None,
                }
            )
        cmp = vs_ref.get(i)
        rec.update(
            {
                "reference": i == ref,
                "auc_diff_vs_ref": cmp.diff if cmp else None,
                "p_vs_ref": cmp.p if cmp else None,
                "p_holm_vs_ref": cmp.p_holm if cmp else None,
                "sig_vs_ref": bool(cmp and cmp.p_holm < ALPHA),
            }
        )
        significant_best = top is not None and i == ranked[0] and top.diff > 0 and top.p_holm < ALPHA
        if significant_best:
            bold.add((i, auc_col))
        rec["auc_best_significant"] = significant_best
        if paper:
            published = paper.get(c.arch, {})
            for col in PAPER_COLUMNS:
                v = published.get(col.name)
                row.append(DASH if v is None else f"{v:.{PAPER_DIGITS[pretrained]}f}")
                rec[f"paper_{col.name}"] = v
        rows.append(row)
        records.append(rec)

    title = f"Table {number}. {what} ({ctx.dataset_title})"
    notes = [
        _ci_note(ctx, cells, losses=True) + " F1: macro over findings at the paper's fixed 0.5 threshold.",
        f"{DAGGER} mean AUROC differs from the reference row ({names[ref]}) at p < {ALPHA}: paired bootstrap "
        f"over test patients (both models scored on the same {ctx.n_boot} patient resamples), Holm-corrected "
        f"over the {len(family)} comparison(s) made in this table.",
        "Bold: best AUC, only where it beats the runner-up under that same test (Holm-adjusted p < "
        f"{ALPHA}); no bold means the best is not significantly better.",
    ]
    if any(len(c.results) > 1 for c in cells):
        notes.append("Cells with several seeds are tested through their seed-averaged probabilities.")
    differ = [names[i] for i, c in enumerate(cells) if c.seeds_differ]
    if differ:
        notes.append(
            f"Seeds scored on different test images, so no combined interval and no test: {', '.join(differ)}."
        )
    if ctx.reference is not None and cells[ref].arch != ctx.reference:
        notes.append(f"{arch_name(ctx.reference)} has no row in this table: the first row is the reference.")
    missing = [names[i] for i, c in enumerate(cells) if i != ref and i not in vs_ref and not c.seeds_differ]
    if missing:
        notes.append(f"Not tested (not the reference's test images, or no AUROC to compare): {', '.join(missing)}.")
    if paper:
        notes += [f"Paper: {PAPER_SOURCE}.", PUBLISHED_AUROC]
    else:
        notes.insert(0, SYNTHETIC_WARNING)
    if pretrained and ctx.unverified_weights:
        notes.insert(0, WEIGHTS_WARNING.format(archs=", ".join(ctx.unverified_weights)))
    return Table(stem, title, columns, rows, pd.DataFrame(records), bold, notes)


def _flip(c: Comparison) -> Comparison:
    return Comparison(c.b, c.a, c.name_b, c.name_a, -c.diff, (-c.ci[1], -c.ci[0]), c.p, c.axis, c.p_holm)


def per_finding_table(ctx: Context, names: list[str]) -> Table:
    """Rows findings, columns cells: AUROC with its interval."""
    shown = [a for a in ctx.axes if a != "seed"]
    cols = [describe(c.fields, shown) for c in ctx.cells]
    rows, records = [], []
    for name in [*names, "Mean (macro)"]:
        stats = [c.stat("auc_macro") if name == "Mean (macro)" else c.finding_stat(name) for c in ctx.cells]
        rows.append([name] + [s.text(3) for s in stats])
        rec: dict[str, Any] = {"finding": name}
        for col, s in zip(cols, stats):
            rec.update({col: s.value, f"{col} lo": s.ci[0] if s.ci else None, f"{col} hi": s.ci[1] if s.ci else None})
        records.append(rec)
    notes = [_ci_note(ctx, ctx.cells), f"{DASH}: undefined (no positive or no negative test images for that finding)."]
    if not ctx.is_nih:
        notes.insert(0, SYNTHETIC_WARNING)
    return Table(
        "per_finding_auroc",
        f"Per-finding AUROC ({ctx.dataset_title})",
        ["Finding", *cols],
        rows,
        pd.DataFrame(records),
        notes=notes,
    )


def comparison_table(ctx: Context) -> Table:
    """Every result: the fields the grid varied, then the metrics with their intervals."""
    axes = ctx.axes
    columns = ["Trial"] + axes + [c.header for c in GRID_COLUMNS]
    rows, records = [], []
    results = sorted(ctx.results, key=lambda r: tuple(_field_order(a, r.trial.get(a)) for a in axes))
    for r in results:
        cell = Cell({k: v for k, v in r.trial.items() if k not in NOT_AXES}, [r])
        row = [r.key] + [_field_text(r.trial.get(a)) for a in axes]
        rec: dict[str, Any] = {"key": r.key, "label": r.trial.get("label", ""), **{a: r.trial.get(a) for a in axes}}
        for col in GRID_COLUMNS:
            s = cell.stat(col.metric)
            row.append(s.text(col.digits))
            rec.update(
                {
                    col.name: s.value,
                    f"{col.name}_lo": s.ci[0] if s.ci else None,
                    f"{col.name}_hi": s.ci[1] if s.ci else None,
                }
            )
        rows.append(row)
        records.append(rec)
    title = f"Results over the grid's axes ({ctx.dataset_title})"
    notes = [_ci_note(ctx, [Cell({}, [r]) for r in ctx.results], losses=True)] if ctx.results else []
    if not axes:
        notes.append("Every result has the same settings: the grid varied nothing.")
    if not ctx.is_nih:
        notes.insert(0, SYNTHETIC_WARNING)
    return Table("comparison", title, columns, rows, pd.DataFrame(records), notes=notes)


def axis_comparisons(ctx: Context) -> list[Comparison]:
    """Paired tests along each varied axis between cells equal in every other field, Holm-corrected together."""
    shown = [a for a in ctx.axes if a != "seed"]
    out: list[Comparison] = []
    for axis in shown:
        groups: dict[str, list[Cell]] = {}
        for c in ctx.cells:
            rest = {k: v for k, v in c.fields.items() if k != axis}
            groups.setdefault(_hashable(rest), []).append(c)
        for group in groups.values():
            group = sorted(group, key=lambda c: _field_order(axis, c.fields.get(axis)))
            for a, b in combinations(group, 2):
                cmp = ctx.compare(a, b, name_a=describe(a.fields, shown), name_b=describe(b.fields, shown), axis=axis)
                if cmp is not None:
                    out.append(cmp)
    _holm(out)
    return out


def paired_table(ctx: Context, tests: list[Comparison]) -> Table:
    columns = ["Axis", "A", "B", "AUROC A - B [95% CI]", "p", "p (Holm)"]
    rows = [
        [
            c.axis,
            c.name_a,
            c.name_b,
            f"{_signed(c.diff)} [{_signed(c.ci[0])}, {_signed(c.ci[1])}]",
            _p_text(c.p),
            _p_text(c.p_holm),
        ]
        for c in tests
    ]
    frame = pd.DataFrame(
        [
            {
                "axis": c.axis,
                "a": c.name_a,
                "b": c.name_b,
                "keys_a": c.a.id,
                "keys_b": c.b.id,
                "diff": c.diff,
                "lo": c.ci[0],
                "hi": c.ci[1],
                "p": c.p,
                "p_holm": c.p_holm,
            }
            for c in tests
        ],
        columns=["axis", "a", "b", "keys_a", "keys_b", "diff", "lo", "hi", "p", "p_holm"],
    )
    notes = [
        f"Paired bootstrap of mean AUROC over test patients ({ctx.n_boot} resamples), between settings equal "
        f"in every other field; Holm-corrected over all {len(tests)} tests in this table."
    ]
    if not ctx.is_nih:
        notes.insert(0, SYNTHETIC_WARNING)
    return Table(
        "paired_tests", f"Paired comparisons along each axis ({ctx.dataset_title})", columns, rows, frame, notes=notes
    )


def conclusions(ctx: Context, tests: list[Comparison]) -> tuple[str, str]:
    """A paragraph of one metrics.summary_sentence per paired test (significant ones first), and how it was tested."""
    ordered = sorted(tests, key=lambda c: (not c.p_holm < ALPHA, -abs(c.diff)))
    text = " ".join(_sentence(metrics.summary_sentence(c.name_a, c.name_b, c.result(), alpha=ALPHA)) for c in ordered)
    if not tests:
        text = (
            "No paired comparison could be made: the grid has no two settings that differ in one field only "
            "and share their test images."
        )
    method = (
        f"Differences are in mean AUROC; p-values from a paired patient-level bootstrap ({ctx.n_boot} "
        f"resamples), Holm-corrected over all {len(tests)} tests in 'Paired comparisons'; a winner is named "
        f"only where the adjusted p < {ALPHA} and the interval excludes 0."
    )
    return text, method


# --- figures --------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot global state, no GUI backend, any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # one draw per save, unlike bbox "tight"
    FigureCanvasAgg(fig)
    return fig


def _save(ctx: Context, fig, stem: str) -> str:
    name = f"{stem}.png"
    with store.atomic_path(ctx.out_dir / name) as tmp:
        fig.savefig(tmp, format="png")
    return name


def _err(stats: list[Stat]) -> np.ndarray:
    lo = [s.value - s.ci[0] if s.ci and s.value is not None else 0.0 for s in stats]
    hi = [s.ci[1] - s.value if s.ci and s.value is not None else 0.0 for s in stats]
    return np.array([lo, hi]).clip(min=0)


def bar_figure(ctx: Context, cells: list[Cell], names: list[str], *, pretrained: bool, stem: str, title: str) -> str:
    """AUC and F1 per row with interval error bars; the paper's values beside ours on NIH only."""
    fig = _figure(min(18.0, max(6.0, 1.6 * len(cells) + 3)), 4.2)
    paper = PAPER_VALUES[pretrained] if ctx.is_nih else {}
    x = np.arange(len(cells))
    width = 0.4 if paper else 0.6
    for k, (metric, label) in enumerate((("auc_macro", "auc"), ("f1_macro", "f1"))):
        ax = fig.add_subplot(1, 2, k + 1)
        stats = [c.stat(metric) for c in cells]
        values = [s.value if s.value is not None else np.nan for s in stats]
        ax.bar(
            x - (width / 2 if paper else 0),
            values,
            width,
            yerr=_err(stats),
            capsize=3,
            label="this run",
            color="tab:blue",
        )
        if paper:
            pv = [paper.get(c.arch, {}).get(label) for c in cells]
            ax.bar(x + width / 2, [np.nan if v is None else v for v in pv], width, label="paper", color="0.7")
            ax.legend(fontsize=8)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean AUROC" if label == "auc" else "macro F1")
        ax.set_ylim(0, 1)
        if label == "auc":
            ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    fig.suptitle(title, fontsize=10)
    return _save(ctx, fig, stem)


def loss_figure(ctx: Context) -> tuple[str | None, list[str]]:
    """Figure 3: training loss per epoch per trial (validation loss dashed)."""
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    shown = ctx.axes
    skipped, drawn = [], 0
    for r in ctx.results:
        try:
            h = r.history()
        except (OSError, ValueError, pd.errors.ParserError):
            skipped.append(r.key)
            continue
        if "epoch" not in h or "train_loss" not in h or h.empty:
            skipped.append(r.key)
            continue
        name = describe(r.trial, shown) + (f" seed {r.trial.get('seed')}" if "seed" in shown else "")
        (line,) = ax.plot(h["epoch"], h["train_loss"], marker="o", ms=3, label=name)
        if "val_loss" in h:
            ax.plot(h["epoch"], h["val_loss"], ls="--", color=line.get_color(), lw=0.8)
        drawn += 1
    if not drawn:
        return None, skipped
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (solid: training, dashed: validation BCE)")
    ax.legend(fontsize=7, ncol=2 if drawn > 8 else 1)
    fig.suptitle(f"Figure 3. Training loss per epoch ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "fig3_training_loss"), skipped


def _best_per_arch(ctx: Context) -> list[Cell]:
    best: dict[str, Cell] = {}
    for c in ctx.cells:
        v = c.stat("auc_macro").value
        held = best.get(c.arch)
        if held is None or (v is not None and v > (held.stat("auc_macro").value or -1)):
            best[c.arch] = c
    return [best[a] for a in sorted(best, key=lambda a: _field_order("arch", a))]


def roc_figures(ctx: Context) -> list[str]:
    """ROC curves of every finding, one figure per arch (its best cell by mean AUROC, first seed)."""
    shown = [a for a in ctx.axes if a != "seed"]
    out = []
    for cell in _best_per_arch(ctx):
        r = cell.results[0]
        p = ctx.predictions(r)
        names = [str(n) for n in p["names"]]
        fig = _figure(6.5, 6.0)
        ax = fig.add_subplot(1, 1, 1)
        colors = _colors(len(names))
        for j, name in enumerate(names):
            y = p["labels"][:, j]
            if y.min() == y.max():
                continue  # ROC undefined without both classes
            fpr, tpr = metrics.roc_curve_points(p["probs"][:, j], y)
            auc = (r.metrics.get("per_finding") or {}).get(name, {}).get("auc")
            ax.plot(fpr, tpr, color=colors[j], lw=1, label=f"{name} ({auc:.2f})" if auc is not None else name)
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
        seed = f", seed {r.trial.get('seed')}" if len(cell.results) > 1 else ""
        fig.suptitle(f"ROC per finding: {describe(cell.fields, shown)}{seed} ({ctx.dataset_title})", fontsize=9)
        out.append(_save(ctx, fig, f"roc_{_slug(cell.arch)}"))
    return out


def calibration_figure(ctx: Context, n_bins: int = 10) -> str:
    """Reliability of the predicted probabilities, all findings pooled, for each arch's best cell."""
    shown = [a for a in ctx.axes if a != "seed"]
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=0.8, label="perfect")
    for cell in _best_per_arch(ctx):
        p = ctx.predictions(cell.results[0])
        cal = metrics.calibration(p["probs"], p["labels"], n_bins=n_bins)
        x = np.array([np.nan if v is None else v for v in cal["mean_predicted"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in cal["observed"]], dtype=float)
        ece = f", ECE {cal['ece']:.3f}" if cal.get("ece") is not None else ""
        ax.plot(x, y, marker="o", ms=3, label=describe(cell.fields, shown) + ece)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.suptitle(f"Calibration, findings pooled ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "calibration")


def heatmap_figure(ctx: Context, table: Table, names: list[str]) -> str:
    """The per-finding AUROC table as a heat map."""
    cols = table.columns[1:]
    data = np.array(
        [[np.nan if s.value is None else s.value for s in (c.finding_stat(n) for c in ctx.cells)] for n in names],
        dtype=float,
    )
    fig = _figure(min(24.0, max(5.0, 0.9 * len(cols) + 3)), 0.38 * len(names) + 2.5)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.5, float(np.nanmin(data))) if np.isfinite(data).any() else 0.5
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < (lo + 1.0) / 2 else "black"
            )
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label="AUROC")
    fig.suptitle(f"Per-finding AUROC ({ctx.dataset_title})", fontsize=10)
    return _save(ctx, fig, "per_finding_auroc")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


# --- the page -------------------------------------------------------------------------------------


def _img(name: str, alt: str) -> str:
    alt = html.escape(alt)
    return f"<figure><img src='{html.escape(name)}' alt='{alt}'><figcaption>{alt}</figcaption></figure>\n"


def _finding_names(ctx: Context) -> list[str]:
    # metrics.json is written with sorted keys, so the findings' order comes from "names", not per_finding.
    for r in ctx.results:
        if r.metrics.get("names"):
            return [str(n) for n in r.metrics["names"]]
    return [str(n) for n in ctx.predictions(ctx.results[0])["names"]] if ctx.results else []


CAM_SCORES = (("pointing", "pointing game"), ("energy", "energy in box"), ("iou", "IoU"))


def cam_table(ctx: Context) -> Table | None:
    """Grad-CAM scores against the boxes (trials run with cam: true), each beside its chance level."""
    scored = [r for r in ctx.results if (r.metrics.get("cam") or {}).get("overall")]
    if not scored:
        return None
    shown = [a for a in varied_fields(scored) if a != "seed"] or ["arch"]
    columns = ["Model", "boxes"] + [f"{label} (chance)" for _, label in CAM_SCORES]
    rows, records = [], []
    for r in scored:
        overall = r.metrics["cam"]["overall"]
        name = describe(r.trial, shown) + (f" seed {r.trial.get('seed')}" if "seed" in varied_fields(scored) else "")
        rows.append(
            [name, str(overall.get("n", 0))]
            + [
                f"{overall.get(k, float('nan')):.3f} ({overall.get(k + '_chance', float('nan')):.3f})"
                for k, _ in CAM_SCORES
            ]
        )
        records.append({"key": r.key, "model": name, **{k: overall.get(k) for k in overall}})
    notes = [
        f"Grad-CAM ({scored[0].metrics['cam'].get('method', 'gradcam')}) on every test image with a box; "
        "chance: what a map placed at random would score (box area over image area)."
    ]
    if not ctx.is_nih:
        notes.insert(0, SYNTHETIC_WARNING)
    return Table(
        "cam_scores",
        f"Explainability: Grad-CAM against the boxes ({ctx.dataset_title})",
        columns,
        rows,
        pd.DataFrame(records),
        notes=notes,
    )


def cam_figures(ctx: Context) -> list[str]:
    """Figures `harness cam` left in each trial's cam/ folder, copied beside index.html."""
    names = []
    for r in ctx.results:
        for fig in sorted((r.path / "cam").glob("*.png")) if (r.path / "cam").is_dir() else []:
            name = f"cam_{r.key}_{fig.name}"
            store.write_bytes(ctx.out_dir / name, fig.read_bytes())
            names.append(name)
    return names


def build_sections(ctx: Context) -> list[Section]:
    """Every part of the report, in page order; tables and figures are written as a side effect."""
    sections: list[Section] = []
    if not ctx.is_nih and ctx.results:
        sections.append(
            Section(
                "Warning", f"<p class='warning'>{html.escape(SYNTHETIC_WARNING)}</p>\n", f"**{SYNTHETIC_WARNING}**\n"
            )
        )
    if ctx.unverified_weights:
        text = WEIGHTS_WARNING.format(archs=", ".join(ctx.unverified_weights))
        sections.append(Section("Warning", f"<p class='warning'>{html.escape(text)}</p>\n", f"**{text}**\n"))
    if ctx.results:
        for stem, number, pretrained, fig_stem, what in PAPER_TABLES:
            table = paper_table(ctx, number=number, pretrained=pretrained, stem=stem, what=what)
            if table is None:
                msg = f"Table {number} ({what}): no such results in this grid."
                sections.append(Section(f"Table {number}", f"<p>{html.escape(msg)}</p>\n", msg + "\n"))
                continue
            table.write(ctx.out_dir)
            cells = [c for c in ctx.cells if bool(c.fields.get("pretrained")) == pretrained]
            fig = bar_figure(
                ctx,
                cells,
                [row[0] for row in table.rows],
                pretrained=pretrained,
                stem=fig_stem,
                title=f"Figure {number}. {what}: AUC and F1 ({ctx.dataset_title})",
            )
            sections.append(
                Section(
                    f"Table {number}",
                    table.html() + _img(fig, f"Figure {number}: {what}"),
                    table.markdown() + f"\n![Figure {number}]({fig})\n",
                )
            )

        names = _finding_names(ctx)
        table = per_finding_table(ctx, names)
        table.write(ctx.out_dir)
        fig = heatmap_figure(ctx, table, names)
        sections.append(
            Section(
                "Per-finding AUROC",
                table.html() + _img(fig, "Per-finding AUROC heat map"),
                table.markdown() + f"\n![Per-finding AUROC]({fig})\n",
            )
        )

        figs_html, figs_md = "", ""
        loss, skipped = loss_figure(ctx)
        if loss:
            figs_html += _img(loss, "Figure 3: training loss per epoch")
            figs_md += f"![Figure 3]({loss})\n"
        if skipped:
            msg = f"No readable history.csv for: {', '.join(skipped)}."
            figs_html += f"<p class='note'>{html.escape(msg)}</p>\n"
            figs_md += msg + "\n"
        for name in [*roc_figures(ctx), calibration_figure(ctx)]:
            figs_html += _img(name, name[:-4].replace("_", " "))
            figs_md += f"![{name}]({name})\n"
        sections.append(Section("Figures", figs_html, figs_md))

        table = comparison_table(ctx)
        table.write(ctx.out_dir)
        sections.append(Section("Grid", table.html(), table.markdown()))
        tests = axis_comparisons(ctx)
        table = paired_table(ctx, tests)
        table.write(ctx.out_dir)
        sections.append(Section("Paired comparisons", table.html(), table.markdown()))
        text, method = conclusions(ctx, tests)
        warning = "" if ctx.is_nih else SYNTHETIC_WARNING
        sections.append(
            Section(
                "What can be concluded",
                (f"<p class='warning'>{html.escape(warning)}</p>\n" if warning else "")
                + f"<p>{html.escape(text)}</p>\n<p class='note'>{html.escape(method)}</p>\n",
                (f"**{warning}**\n\n" if warning else "") + f"{text}\n\n{method}\n",
            )
        )

    cam = cam_table(ctx)
    if cam is not None:
        cam.write(ctx.out_dir)
        figures = cam_figures(ctx)
        sections.append(
            Section(
                "Explainability",
                cam.html() + "".join(_img(f, f) for f in figures),
                cam.markdown() + "".join(f"\n![{f}]({f})" for f in figures) + "\n",
            )
        )

    if ctx.failures:
        items = [
            f"{f.get('label', '?')} ({f.get('key', '?')}): {f.get('reason', 'no reason recorded')}"
            for f in ctx.failures
        ]
        sections.append(
            Section(
                f"Failed trials ({len(items)})",
                "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>\n",
                "\n".join(f"- {i}" for i in items) + "\n",
            )
        )
    return sections


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:90%}"
    "th{background:#eee}.note,.files{font-size:85%;color:#444;margin:.2em 0}"
    ".warning{background:#c00;color:#fff;font-weight:bold;padding:.8em;font-size:110%}"
    "img{max-width:100%}figure{margin:1em 0}"
)


def _header(ctx: Context) -> tuple[str, list[tuple[str, str]]]:
    commits = sorted(
        {
            f"{r.metrics.get('git_commit', 'unknown')}{'-dirty' if r.metrics.get('git_dirty') else ''}"
            for r in ctx.results
        }
    ) or ["none"]
    versions = sorted({str(r.metrics.get("harness_version", "?")) for r in ctx.results}) or ["none"]
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{ctx.grid_dir.name}: {ctx.dataset_title if ctx.results else 'no finished trials'}"
    facts = [
        ("Dataset", ctx.dataset_title if ctx.results else DASH),
        ("Grid", ctx.grid_dir.name),
        ("Results", str(ctx.grid_dir)),
        ("Commit(s)", ", ".join(commits)),
        ("Harness version(s)", ", ".join(versions)),
        ("Trials", f"{len(ctx.results)} done, {len(ctx.failures)} failed"),
        ("Report date", date),
    ]
    return title, facts


def render_html(ctx: Context, sections: list[Section]) -> str:
    title, facts = _header(ctx)
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    body = "".join(f"<section><h2>{html.escape(s.title)}</h2>\n{s.html}</section>\n" for s in sections)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n<table>{facts_html}</table>\n"
        f"{body}</body></html>\n"
    )


def render_markdown(ctx: Context, sections: list[Section]) -> str:
    title, facts = _header(ctx)
    head = "\n".join(f"- {k}: {v}" for k, v in facts)
    return f"# {title}\n\n{head}\n\n" + "\n".join(f"## {s.title}\n\n{s.markdown}" for s in sections)


# --- entry points ---------------------------------------------------------------------------------


def recompute_metrics(result: store.Result) -> store.Result:
    """metrics.json rebuilt from predictions.npz with metrics.evaluate and the trial's own seed and n_boot."""
    p = result.predictions()
    kwargs: dict[str, Any] = {"seed": int(result.trial.get("seed", 0))}  # train.py evaluates with the trial seed
    if "n_boot" in result.metrics:
        kwargs["n_boot"] = int(result.metrics["n_boot"])
    fresh = metrics.evaluate(
        p["probs"],
        p["labels"],
        names=[str(n) for n in p["names"]],
        patient_ids=p["patient_id"],
        val_probs=p.get("val_probs"),
        val_labels=p.get("val_labels"),
        **kwargs,
    )
    merged = {**result.metrics, **fresh}  # keep provenance, timings and the dataset actually used
    result.files.replace_metrics(merged)
    return store.Result(trial=result.trial, metrics=merged, path=result.path)


def write_report(
    grid_dir: Path | str,
    out_dir: Path | str | None = None,
    *,
    recompute: bool = False,
    reference: str | None = None,
    n_boot: int = 1000,
) -> Path:
    """Write tables, figures and index.html for results/<grid>/ into out_dir (default reports/<grid>/)."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        raise ConfigError(
            f"{grid_dir}: no such results directory; give results/<grid name> as written by `harness run GRID`"
        )
    results, failures = store.load_results(grid_dir), store.load_failures(grid_dir)
    if not results and not failures:
        raise ConfigError(f"{grid_dir}: no finished or failed trials here; run `harness run GRID` first")
    if n_boot < 1:
        raise ConfigError(f"n_boot={n_boot} is out of range; valid: an integer >= 1")
    archs = sorted({str(r.trial.get("arch")) for r in results}, key=lambda a: _field_order("arch", a))
    if reference is not None and reference not in archs:
        raise ConfigError(f"reference arch {reference!r} has no results in {grid_dir}; valid: {', '.join(archs)}")
    if recompute:
        results = [recompute_metrics(r) for r in results]

    out = Path(out_dir) if out_dir is not None else Path("reports") / grid_dir.name
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        grid_dir=grid_dir, out_dir=out, results=results, failures=failures, reference=reference, n_boot=n_boot
    )
    ctx.axes = varied_fields(results)
    ctx.cells = group_cells(results, ctx.axes)
    for cell in (c for c in ctx.cells if len(c.results) > 1):
        seeds = ctx.seed_probs(cell)
        cell.seeds_differ = seeds is None
        if seeds is not None:
            probs, first = seeds
            cell.combined = {
                **metrics.combine_seeds(probs, first["labels"], first["patient_id"], n_boot=n_boot, seed=BOOT_SEED),
                "names": [str(n) for n in first["names"]],
            }
    sections = build_sections(ctx)
    store.write_bytes(out / "report.md", render_markdown(ctx, sections).encode())
    index = out / "index.html"
    store.write_bytes(index, render_html(ctx, sections).encode())
    return index
