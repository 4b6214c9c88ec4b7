"""Results to the paper's tables (Markdown, CSV, LaTeX), figures (PNG, PDF) and index.html; never imports torch or ray.

paper: the published values, sources, warnings, arch names and columns.
cells: results grouped into cells (every field but the seed), the fields a grid varied, readable names.
tables: the Table and its Markdown, LaTeX, HTML and CSV renderings.
context: the shared state: each cell's predictions read once, each paired test run once, one Holm family.
flags: the mark and footnote of a degenerate trial (saturated or constant output).
build: Tables 1-2, per finding, the grid and Grad-CAM; paired: the family's tests, their table and method.
conclusions: what the report concludes, a few sentences per axis, largest effect first (the page's top and end).
testset: the test split's size, each finding's positive images and patients, the resamples left out.
drawing: a figure's file and caption, its number, the styles that tell series apart.
figures: the figures; methods: the choices the paper leaves open and the values used.
recorded: the methods rows read from each trial's recipe and reproduction certificate.
page: the sections in order and the page; write: `harness report` itself.
"""

from harness.report.cells import Cell, describe, group_cells, varied_fields
from harness.report.paper import DAGGER, DASH, PM, SYNTHETIC_WARNING, WEIGHTS_WARNING, arch_name
from harness.report.write import MIN_N_BOOT, Written, heal, recompute_metrics, write_report

__all__ = [
    "DAGGER",
    "DASH",
    "MIN_N_BOOT",
    "PM",
    "SYNTHETIC_WARNING",
    "WEIGHTS_WARNING",
    "Cell",
    "Written",
    "arch_name",
    "describe",
    "group_cells",
    "heal",
    "recompute_metrics",
    "varied_fields",
    "write_report",
]
