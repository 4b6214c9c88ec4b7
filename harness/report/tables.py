"""A report table: text cells and which are bold, rendered to Markdown, LaTeX and HTML, with its CSV frame."""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import store
from harness.report.paper import DAGGER, DASH, DDAGGER, PM


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
    compact: Table | None = None  # what the .tex shows instead, where this table is wider than a page

    def markdown(self, *, heading: bool = True) -> str:
        """The table as Markdown; heading=False where the page's section already carries its title."""

        def cell(i: int, j: int, text: str) -> str:
            text = text.replace("|", "\\|")
            return f"**{text}**" if (i, j) in self.bold else text

        lines = [f"### {self.title}", ""] if heading else []
        lines += [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(cell(i, j, t) for j, t in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        lines += [""] + [f"{n}  " for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        """The table for a one-column page: footnotesize, the caption without the title's "Table N." (LaTeX
        numbers it) and labelled tab:<stem>, the notes as paragraphs below; a float, or a longtable across pages
        where it has more rows than a page holds. The first line names the packages it needs."""
        if self.compact is not None:
            return self.compact.latex()
        # Intervals and settings get a line of their own in a column of long cells; "Mean (macro)" needs none.
        wide = [any(len(row[j]) > ONE_LINE for row in self.rows) for j in range(len(self.columns))]
        cells = [[_stacked(t) if w else _tex(t) for t, w in zip(row, wide)] for row in self.rows]
        cells = [
            [f"\\textbf{{{t}}}" if (i, j) in self.bold else t for j, t in enumerate(r)] for i, r in enumerate(cells)
        ]
        two_lines = any(w and _TRAILING.match(t) for row in self.rows for t, w in zip(row, wide))
        end = " \\\\\n\\addlinespace[2pt]\n" if two_lines else " \\\\\n"  # air between rows of two lines
        layout = _long_table if len(self.rows) > PAGE_ROWS else _float
        packages, lines = layout(
            caption=f"\\caption{{{_tex(_NUMBERED.sub('', self.title))}}}\\label{{tab:{self.stem}}}",
            spec="l" * len(self.columns),
            head=["\\toprule", " & ".join(_header(c) for c in self.columns) + " \\\\", "\\midrule"],
            body=end.join(" & ".join(r) for r in cells) + " \\\\",
            # Paragraphs, not \\ line breaks: a note that starts with [ after \\ would be read as its length.
            notes=["{\\raggedright", *(f"{_tex(n)}\\par" for n in self.notes), "}"] if self.notes else [],
        )
        return "\n".join([f"% needs \\usepackage{{{', '.join(packages)}}}", *lines]) + "\n"

    def html(self, *, heading: bool = True) -> str:
        """The table as HTML, scrolling sideways where it is wider than the page; heading as in markdown()."""

        def cell(i: int, j: int, text: str) -> str:
            text = html.escape(text)
            return f"<td><b>{text}</b></td>" if (i, j) in self.bold else f"<td>{text}</td>"

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "\n".join(
            "<tr>" + "".join(cell(i, j, t) for j, t in enumerate(row)) + "</tr>" for i, row in enumerate(self.rows)
        )
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in self.notes)
        links = " ".join(f"<a href='{self.stem}.{ext}'>{ext}</a>" for ext in ("md", "csv", "tex"))
        title = f"<h3>{html.escape(self.title)}</h3>\n" if heading else ""
        return (
            f"{title}<div class='wide'><table>\n<tr>{head}</tr>\n{body}\n</table></div>\n{notes}"
            f"<p class='files'>{links}</p>\n"
        )

    def write(self, out_dir: Path) -> None:
        store.write_bytes(out_dir / f"{self.stem}.md", self.markdown().encode())
        store.write_bytes(out_dir / f"{self.stem}.tex", self.latex().encode())
        store.write_bytes(out_dir / f"{self.stem}.csv", self.frame.to_csv(index=False).encode())


# footnotesize and 4pt between columns (LaTeX: 6pt): a 12-trial grid's tables then fit a 6.5in page
_TEX_SIZE = ["\\footnotesize", "\\setlength{\\tabcolsep}{4pt}"]
ONE_LINE = 16  # characters a cell may have before its column's intervals and settings go on lines of their own
PAGE_ROWS = 20  # rows of two lines that a page holds with the caption and notes; a longer table is a longtable


def _float(*, caption: str, spec: str, head: list[str], body: str, notes: list[str]) -> tuple[list[str], list[str]]:
    """A table float: the packages it needs and its lines."""
    lines = ["\\begin{table}[t]", "\\centering", caption, *_TEX_SIZE, f"\\begin{{tabular}}{{{spec}}}", *head, body]
    lines += ["\\bottomrule", "\\end{tabular}", *(["\\par\\smallskip", *notes] if notes else []), "\\end{table}"]
    return ["booktabs"], lines


def _long_table(
    *, caption: str, spec: str, head: list[str], body: str, notes: list[str]
) -> tuple[list[str], list[str]]:
    """A longtable, its header repeated on each page: the packages it needs and its lines."""
    lines = ["\\begingroup", *_TEX_SIZE, f"\\begin{{longtable}}{{{spec}}}", f"{caption} \\\\", *head, "\\endfirsthead"]
    lines += [*head, "\\endhead", "\\bottomrule", "\\endfoot", body, "\\end{longtable}", *notes, "\\endgroup"]
    return ["booktabs", "longtable"], lines


_NUMBERED = re.compile(r"^(Table|Figure) \d+[.:]\s*")  # the title's own number; LaTeX's caption adds one
_TRAILING = re.compile(r"^(.+?) ([\[(][^\[\]()]*[\])])(\S*)$")  # "0.733 [0.676, 0.786]", "AlexNet (loss=bce)", marks

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
    "|": r"\textbar{}",
    "<": r"$<$",  # OT1, LaTeX's default font encoding, prints < and > as inverted ! and ?
    ">": r"$>$",
}
# Every non-ASCII character the report writes, and those a grid's names and notes commonly hold; pdflatex
# stops at a Unicode character it has no definition for.
_TEX_SYMBOLS = {
    PM: r"$\pm$",
    DAGGER: r"$^\dagger$",
    DDAGGER: r"$^\ddagger$",
    DASH: r"\textemdash{}",
    "\u2013": r"\textendash{}",
    "\u2212": "$-$",  # minus sign
    "\u2265": r"$\geq$",
    "\u2264": r"$\leq$",
    "\u2260": r"$\neq$",
    "\u2248": r"$\approx$",
    "\u00d7": r"$\times$",
    "\u00b7": r"$\cdot$",
    "\u2022": r"$\bullet$",
    "\u00b0": r"$^\circ$",
    "\u00b5": r"$\mu$",  # micro sign
    "\u03bc": r"$\mu$",
    "\u03b1": r"$\alpha$",
    "\u03b2": r"$\beta$",
    "\u03b3": r"$\gamma$",
    "\u03c3": r"$\sigma$",
    "\u0394": r"$\Delta$",
    "\u2192": r"$\rightarrow$",
    "\u2190": r"$\leftarrow$",
    "\u2026": r"\ldots{}",
    "\u2018": "`",
    "\u2019": "'",
    "\u201c": "``",
    "\u201d": "''",
    "\u00a0": "~",  # non-breaking space
    "\u2009": r"\,",  # thin space
    "\u202f": r"\,",  # narrow non-breaking space
    "\u00b2": r"$^2$",
    "\u00a7": r"\S{}",
}


def _symbol(ch: str) -> str:
    """A non-ASCII character as LaTeX: its entry above, else its ASCII letters without accents, else "?" (never
    a character pdflatex would stop at)."""
    if ch in _TEX_SYMBOLS:
        return _TEX_SYMBOLS[ch]
    folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    return "".join(_TEX_ESCAPES.get(c, c) for c in folded) or "?"


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) if ch.isascii() else _symbol(ch) for ch in text)
    text = re.sub(r'"([^"]*)"', r"``\1''", text)  # TeX's opening and closing quotes
    text = re.sub("-(?=-)", "-{}", text)  # --seeds as typed, not an en dash
    text = re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)  # a negative number's minus, not a hyphen
    return "{}" + text if text[:1] in ("[", "*") else text  # after \\, [ would be read as its length, * as \\*


def _lines(lines: list[str]) -> str:
    """Lines of LaTeX stacked in one cell, top-aligned with the row."""
    return "\\begin{tabular}[t]{@{}l@{}}" + "\\\\ ".join(lines) + "\\end{tabular}"


def _header(text: str) -> str:
    """A header on two lines where it has a space: before its parenthesis or bracket, else where the longer
    line is shortest. Headers are most of a column's width where the values are short numbers."""
    if " " not in text:
        return _tex(text)
    cut = next((i for i in range(1, len(text)) if text[i] in "([" and text[i - 1] == " "), None)
    if cut is None:
        spaces = [i for i, ch in enumerate(text) if ch == " "]
        cut = min(spaces, key=lambda i: max(i, len(text) - i)) + 1
    return _lines([_tex(text[:cut].rstrip()), _tex(text[cut:])])


def _stacked(text: str) -> str:
    """A cell with its trailing interval "[lo, hi]" (smaller) or parenthesis "(loss=focal)" on a line of its own
    below the rest and its marks: about half the width."""
    found = _TRAILING.match(text)
    if found is None:
        return _tex(text)
    value, part, marks = found.groups()
    return _lines([_tex(value + marks), f"{{\\scriptsize {_tex(part)}}}" if part[0] == "[" else _tex(part)])
