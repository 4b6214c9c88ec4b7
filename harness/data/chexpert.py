"""CheXpert v1.0 (and its "small" download): train.csv / valid.csv, labels 1 / 0 / -1 / blank."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.nih import FINDINGS, DataError
from harness.data.readers import READERS, Reader, Rows, ages, finish, read_table

TRAIN_FILE = "train.csv"
VALID_FILE = "valid.csv"  # the radiologist-labelled validation set: the official held-out split, scored as test
# The 14 label columns CheXpert and MIMIC-CXR-JPG share, in the files' order.
LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS)
# The harness finding -> CheXpert's column, as torchxrayvision maps them: 7 of the 14 are shared; the other
# seven are not labelled by CheXpert's labeller (unknown, masked, never scored).
LABEL_MAP: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}
_PATIENT = re.compile(r"patient(\d+)")


def label_columns(frame: pd.DataFrame, source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels uint8, known bool, uncertain bool), each (n, 14) in FINDINGS order, from the mapped columns.

    1 is positive, 0 negative, -1 uncertain (known, labelled 0 here; the trial's `uncertain` decides), blank
    unknown. Any other value is a DataError naming it.
    """
    n = len(frame)
    labels = np.zeros((n, len(FINDINGS)), np.uint8)
    known = np.zeros((n, len(FINDINGS)), bool)
    uncertain = np.zeros((n, len(FINDINGS)), bool)
    for finding, column in LABEL_MAP.items():
        text = frame[column].str.strip()
        bad = ~text.isin(list(_VALUES))
        if bad.any():
            raise DataError(
                f"{source}: column {column!r} has {text[bad].iloc[0]!r}; valid: 1, 0, -1 or blank (1.0, 0.0, -1.0)"
            )
        value = text.map(_VALUES)
        j = FINDINGS.index(finding)
        labels[:, j] = (value == 1).to_numpy()
        known[:, j] = value.notna().to_numpy()
        uncertain[:, j] = (value == -1).to_numpy()
    return labels, known, uncertain


def _image_path(root: Path, path: str) -> str:
    """Path is written from the download's parent ("CheXpert-v1.0-small/train/..."): read it from the root."""
    parts = Path(path).parts
    inside = parts if parts and parts[0] in ("train", "valid", "test") else parts[1:]
    return str(root.joinpath(*inside))


def _patients(paths: pd.Series, source: Path) -> np.ndarray:
    found = paths.str.extract(_PATIENT, expand=False)
    if found.isna().any():
        raise DataError(f"{source}: path {paths[found.isna()].iloc[0]!r} names no patientNNNNN folder")
    return found.astype(np.int64).to_numpy()


def load(root: Path):
    """Both csv files, frontal films only (Frontal/Lateral = Frontal, AP/PA = AP or PA); valid.csv is the test."""
    frames = []
    for name, test in ((TRAIN_FILE, False), (VALID_FILE, True)):
        frame = read_table(root / name, HEADER[:5] + tuple(LABEL_MAP.values()), "CheXpert label table")
        frame["_test"] = test
        frame["_source"] = str(root / name)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    source = root / TRAIN_FILE
    labels, known, uncertain = label_columns(frame, source)
    path = frame["Path"].str.strip()
    table = pd.DataFrame(
        {
            "image_index": path,
            "patient_id": _patients(path, source),
            "path": [_image_path(root, p) for p in path],
            "sex": frame["Sex"].str.strip(),
            "age": ages(frame["Age"]),
        }
    )
    # A lateral's AP/PA is blank (or LL / RL); a frontal film without AP or PA is left out with them.
    views = frame["AP/PA"].str.strip().where(frame["Frontal/Lateral"].str.strip() == "Frontal", "LATERAL")
    rows = Rows(table, frame["_test"].to_numpy(bool), labels, known, uncertain)
    return finish(root, "chexpert", rows, views=views, source=source)


READERS.register("chexpert")(
    Reader(
        name="chexpert",
        title="CheXpert",
        files=(TRAIN_FILE, VALID_FILE),
        load=load,
        label_map=LABEL_MAP,
        source="Stanford AIMI (stanfordaimi.azurewebsites.net, CheXpert-v1.0 or CheXpert-v1.0-small)",
        split="train.csv for training and validation, valid.csv as the test split",
    )
)
