"""How the report draws: a figure as the page places it, its numbers, and styles that tell series apart."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness.report.cells import LEADERS, field_order, hashable

# Colours that stay apart in print and for the common colour-vision deficiencies (Okabe and Ito's set, its
# yellow swapped for grey: yellow is lost on white), then line styles and markers. A series is told apart by
# the three together, so no two series share all three.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CHANNELS = (("colour", COLORS), ("line style", LINESTYLES), ("marker", MARKERS))


@dataclass(frozen=True)
class Drawn:
    """A figure on the page: its PNG, its vector copy for print (None for a PNG made elsewhere), its caption."""

    png: str
    caption: str
    pdf: str | None = None


def supplementary() -> Iterator[str]:
    """Numbers of the figures the paper has no counterpart for, in page order: S1, S2, ..."""
    return (f"S{i}" for i in itertools.count(1))


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: str
    marker: str

    def kw(self, *, marker: bool = True) -> dict[str, str]:
        return {"color": self.color, "ls": self.linestyle, **({"marker": self.marker} if marker else {})}


def styles(n: int) -> list[Style]:
    """n series, each its own (colour, line style, marker) up to 256 of them: colours change fastest."""
    combos = [Style(c, ls, m) for m, ls, c in itertools.product(MARKERS, LINESTYLES, COLORS)]
    return [combos[i % len(combos)] for i in range(n)]


@dataclass(frozen=True)
class Encoding:
    """Each series' style, and what the channels stand for ("colour: arch"); no words when each series has a
    style of its own."""

    styles: list[Style]
    key: list[str]

    def words(self) -> str:
        return "; ".join(self.key).capitalize() if self.key else "Each series its own colour, line style and marker"


def encode(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> Encoding:
    """Style each row (a trial's fields) by the axes that vary among the rows: colour by the first, line style
    by the second, marker by the third, the fields a reader knows first (arch, pretrained, loss). Where they do
    not fit (more axes than channels, more values than a channel has, rows the axes leave alike) each row gets
    a style of its own."""
    used = [a for a in axes if len({hashable(r.get(a)) for r in rows}) > 1]
    used.sort(key=lambda a: LEADERS.index(a) if a in LEADERS else len(LEADERS))  # stable: the rest keep their order
    levels = {
        a: sorted({hashable(r.get(a)): r.get(a) for r in rows}.values(), key=lambda v, a=a: field_order(a, v))
        for a in used
    }
    fits = len(used) <= len(CHANNELS) and all(len(levels[a]) <= len(ch) for a, (_, ch) in zip(used, CHANNELS))
    picks = [tuple(levels[a].index(r.get(a)) for a in used) for r in rows]
    if not fits or len(set(picks)) < len(rows):
        return Encoding(styles(len(rows)), [])
    out = []
    for pick in picks:
        chosen = [ch[0] for _, ch in CHANNELS]
        for k, i in enumerate(pick):
            chosen[k] = CHANNELS[k][1][i]
        out.append(Style(*chosen))
    return Encoding(out, [f"{name}: {a}" for a, (name, _) in zip(used, CHANNELS)])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"
