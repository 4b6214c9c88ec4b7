"""A report table: text cells and which are bold, rendered to Markdown, LaTeX and HTML, with its CSV frame."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import store
from harness.report.paper import DAGGER, DASH, PM


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
