"""PadChest (BIMCV): one label table, Labels as a Python-list string, 16-bit PNGs in ImageDir/ImageID."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.nih import FINDINGS, DataError, DataWarning
from harness.data.readers import READERS, Reader, Rows, find_file, finish, patient_codes, patient_split, read_table

LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
# PadChest has no official split: a seeded patient-level one, the same for every trial.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# AP_horizontal is a supine AP film (torchxrayvision renames it "AP Supine"): frontal.
VIEWS = {"AP_horizontal": "AP"}
# The harness finding -> the PadChest label terms that mark it, torchxrayvision's PC_Dataset mapping: a film has
# the finding when one of its labels contains a term ("loculated pleural effusion" contains "effusion").
LABEL_MAP: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis",),  # laminar, lobar, segmental, total atelectasis ...
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("effusion",),  # pleural effusion, loculated pleural effusion ...
    "Infiltration": (
        "infiltration",
        "infiltrates",
        "interstitial pattern",
        "ground glass pattern",
        "reticular interstitial pattern",
        "reticulonodular interstitial pattern",
        "alveolar pattern",
        "consolidation",
        "air bronchogram",
    ),
    "Mass": ("mass",),  # pulmonary mass, soft tissue mass ...
    "Nodule": ("nodule",),  # nodule, multiple nodules ...
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("edema",),  # pulmonary edema
    "Emphysema": ("emphysema",),
    "Fibrosis": ("fibrosis",),  # pulmonary fibrosis
    "Pleural_Thickening": ("pleural thickening",),
    "Hernia": ("hernia",),  # hiatal hernia ...
}


def parse_labels(text: str) -> list[str] | None:
    """ "['pleural effusion', 'cardiomegaly']" -> its lower-case terms; None when blank or not a list."""
    text = text.strip()
    if not text or text.lower() == "nan":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (list, tuple)):
        return None
    return [str(v).strip().lower() for v in value if str(v).strip()]


def label_matrix(terms: list[list[str]]) -> np.ndarray:
    """(n, 14) uint8 in FINDINGS order from each film's label terms, by LABEL_MAP."""
    out = np.zeros((len(terms), len(FINDINGS)), np.uint8)
    for i, film in enumerate(terms):
        for j, finding in enumerate(FINDINGS):
            out[i, j] = any(key in term for term in film for key in LABEL_MAP[finding])
    return out


def load(root: Path):
    """Films with a readable Labels list; PA, AP and AP_horizontal count as frontal; every finding is labelled."""
    source = find_file(root, LABEL_FILE)
    frame = read_table(source, COLUMNS, "PadChest label table")
    terms = [parse_labels(t) for t in frame["Labels"]]
    readable = np.array([t is not None for t in terms], bool)
    if not readable.any() and len(frame):
        raise DataError(f"{source}: no row has a Labels list like \"['pleural effusion', 'cardiomegaly']\"")
    if not readable.all():
        warnings.warn(
            f"{source}: {int((~readable).sum())} rows have no readable Labels list; they are left out",
            DataWarning,
            stacklevel=2,
        )
        frame = frame[readable].reset_index(drop=True)
        terms = [t for t in terms if t is not None]
    patients = patient_codes(frame["PatientID"].str.strip())
    names = frame["ImageID"].str.strip()
    table = pd.DataFrame(
        {
            "image_index": names,
            "patient_id": patients,
            "path": [str(root / d.strip() / n) for d, n in zip(frame["ImageDir"], names)],
            "sex": frame["PatientSex_DICOM"].str.strip() if "PatientSex_DICOM" in frame else "",
            "age": -1,
        }
    )
    labels = label_matrix(terms)
    test = patient_split(patients, test_fraction=TEST_FRACTION, seed=SPLIT_SEED, purpose="padchest-test")
    rows = Rows(table, test, labels, np.ones_like(labels, bool), np.zeros_like(labels, bool))
    views = frame["Projection"].str.strip().replace(VIEWS)
    return finish(root, "padchest", rows, views=views, source=source)


READERS.register("padchest")(
    Reader(
        name="padchest",
        title="PadChest",
        files=(LABEL_FILE,),
        load=load,
        label_map=LABEL_MAP,
        source="BIMCV (bimcv.cipf.es/bimcv-projects/padchest), on request",
        split=f"none: a seeded patient-level split, {TEST_FRACTION:.0%} of the films' patients as test",
        official_split=False,
    )
)
