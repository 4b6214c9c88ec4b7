"""The report's .tex files compile with pdflatex and fit a one-column page; what they hold is safe to typeset."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from unit.test_report import make_paper_grid

from harness import report
from harness.report import tables
from harness.report.tables import Table

REPORT_DIRS = ("report", "metrics")  # the packages whose strings reach the report's tables and notes
# A one-column page with 1in margins on letter paper; a box a few points too wide goes unseen in print.
TEXT_WIDTH, OVERFULL_PT = "6.5in", 10.0
NEEDS = re.compile(r"^% needs \\usepackage\{([^}]*)\}$")

# Every ASCII character TeX treats specially, the report's symbols, characters no table maps, and what LaTeX
# misreads: a note that starts with [, --options, "quotes".
AWKWARD = (
    '[lo, hi]: 5% & 10% of #1 costs $2 at C:\\data\\x_y {a} ~b^c |d| <e> --seeds 5 "quoted" -0.118 '
    + "".join(tables._TEX_SYMBOLS)
    + " *starred Zoë naïve \u4e2d \u2603 \U0001f600"
)


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    """A 12-trial report on "nih" (archs x scratch/pretrained x bce/focal: the paper columns are its widest
    tables), with one more table whose every cell and note is awkward to typeset."""
    root = tmp_path_factory.mktemp("latex")
    grid = make_paper_grid(root, dataset="nih", losses=("bce", "focal"))
    out = report.write_report(grid, root / "report", n_boot=50, progress=False).index.parent
    # One word a row: more rows than a page holds, so the longtable layout is compiled too.
    rows = [[word, "0.733 [0.676, 0.786]" + tables.DDAGGER] for word in AWKWARD.split()]
    notes = [AWKWARD, "[lo, hi]: a note that starts with a bracket"]
    awkward = Table(
        "awkward", f"Table 9. {AWKWARD}", ["Finding", "AUROC [95% CI]"], rows, pd.DataFrame(), {(1, 1)}, notes
    )
    (out / "awkward.tex").write_text(awkward.latex())
    return out


def _packages(tex: str) -> list[str]:
    found = NEEDS.match(tex.splitlines()[0])
    assert found, f"the first line names the packages the table needs: {tex.splitlines()[0]!r}"
    return [p.strip() for p in found.group(1).split(",")]


def _overfull(log: str) -> dict[str, list[float]]:
    """Overfull boxes per \\input file, read from the lines the document types out before each."""
    out: dict[str, list[float]] = {}
    name = None
    for line in log.splitlines():
        if line.startswith("FILE "):
            name = line[5:].strip()
            out[name] = []
        elif (m := re.match(r"Overfull \\hbox \(([\d.]+)pt too wide\)", line)) and name:
            out[name].append(float(m.group(1)))
    return out


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_every_tex_file_compiles_and_fits_a_one_column_page(twelve, tmp_path):
    files = sorted(twelve.glob("*.tex"))
    assert {f.stem for f in files} >= {"table1_scratch", "table2_pretrained", "per_finding_auroc", "comparison"}
    packages = sorted({p for f in files for p in _packages(f.read_text())})
    body = "\n".join(f"\\typeout{{FILE {f.name}}}\n\\input{{{f.as_posix()}}}\n\\clearpage" for f in files)
    (tmp_path / "doc.tex").write_text(
        f"\\documentclass{{article}}\n\\usepackage{{{','.join(packages)}}}\n"
        f"\\setlength{{\\textwidth}}{{{TEXT_WIDTH}}}\n\\begin{{document}}\n{body}\n\\end{{document}}\n"
    )
    # Twice: a longtable settles its column widths on the second run.
    for _ in range(2):
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
    log = (tmp_path / "doc.log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert done.returncode == 0 and not errors, errors or log[-3000:]
    overfull = _overfull(log)
    assert sorted(overfull) == [f.name for f in files]
    assert {k: v for k, v in overfull.items() if any(pt > OVERFULL_PT for pt in v)} == {}
    assert "Float too large" not in log  # a table taller than a page is a longtable instead


def test_tex_files_are_ascii_numbered_by_latex_and_never_misread(twelve):
    for f in twelve.glob("*.tex"):
        tex = f.read_text()
        assert tex.isascii(), f.name
        assert "booktabs" in _packages(tex)
        captions = re.findall(r"\\caption\{(.*)\}\\label\{tab:(\w+)\}", tex)
        assert [stem for _, stem in captions] == [f.stem], f.name
        assert not re.match(r"(Table|Figure) \d", captions[0][0]), f.name  # LaTeX numbers it: not "Table 1: Table 1."
        assert not re.search(r"\\\\\s*[\[*]", tex), f.name  # after \\, [ is read as a length and * as \\*
    md = (twelve / "table1_scratch.md").read_text()
    assert md.startswith("### Table 1. ")  # the Markdown keeps the title as it is


def test_the_per_finding_tex_numbers_its_columns_and_names_them_in_a_note(twelve):
    tex = (twelve / "per_finding_auroc.tex").read_text()
    csv = pd.read_csv(twelve / "per_finding_auroc.csv")
    assert "T12 \\\\" in tex and "T12: scratch InceptionV3 (loss=focal)" in tex
    assert "per\\_finding\\_auroc.csv" in tex and "[0." not in tex.split("\\end{tabular}")[0]
    assert f"{csv['scratch InceptionV3 (loss=focal)'].iloc[0]:.3f}" in tex
    assert "scratch InceptionV3 (loss=focal) |" in (twelve / "per_finding_auroc.md").read_text()  # as before


def _strings(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_every_non_ascii_character_the_report_writes_has_a_latex_form():
    package = Path(report.__file__).parent.parent
    sources = [p for d in REPORT_DIRS for p in sorted((package / d).glob("*.py"))]
    found = {ch for p in sources for s in _strings(p) for ch in s if not ch.isascii()}
    assert found and found <= set(tables._TEX_SYMBOLS), sorted(found - set(tables._TEX_SYMBOLS))
    # any other character still gives ASCII that TeX reads: its letters without accents, else "?"
    assert tables._tex("Zoë \u4e2d") == "Zoe ?"
