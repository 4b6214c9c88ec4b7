"""A synthetic stand-in for NIH ChestX-ray14: chest phantoms written in the Kaggle layout, labels from the real table.

table samples whole patients from torchxrayvision's copy of the NIH label table; anatomy and
lesions paint one chest and its findings; phantom renders a film; writer writes the tree.
"""

from harness.data.synthetic.anatomy import Anatomy, Box, Chest
from harness.data.synthetic.lesions import LESIONS, Finding
from harness.data.synthetic.phantom import render
from harness.data.synthetic.table import SOURCE_TABLE, real_table, sample_table, source_table_path
from harness.data.synthetic.writer import GENERATOR_VERSION, default_root, generate

__all__ = [
    "GENERATOR_VERSION",
    "LESIONS",
    "SOURCE_TABLE",
    "Anatomy",
    "Box",
    "Chest",
    "Finding",
    "default_root",
    "generate",
    "real_table",
    "render",
    "sample_table",
    "source_table_path",
]
