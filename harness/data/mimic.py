"""MIMIC-CXR-JPG 2.0.0: per-study CheXpert labels, per-film metadata and the official split, files/pXX/pS/sT/D.jpg."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data import chexpert
from harness.data.nih import DataError, DataWarning
from harness.data.readers import READERS, Reader, Rows, find_file, finish, read_table

LABEL_FILE = "mimic-cxr-2.0.0-chexpert.csv"
META_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
SPLITS = {"train": False, "validate": False, "test": True}  # validate joins train: the harness draws its own


def image_path(root: Path, subject: str, study: str, dicom: str) -> str:
    return str(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")


def _tables(root: Path) -> tuple[pd.DataFrame, Path]:
    """Films joined with their split and their study's labels; films whose study has no labels are counted."""
    paths = {name: find_file(root, name) for name in (LABEL_FILE, META_FILE, SPLIT_FILE)}
    labels = read_table(paths[LABEL_FILE], ("subject_id", "study_id", *chexpert.LABEL_MAP.values()), "label table")
    meta = read_table(paths[META_FILE], ("dicom_id", "subject_id", "study_id", "ViewPosition"), "metadata table")
    split = read_table(paths[SPLIT_FILE], ("dicom_id", "study_id", "subject_id", "split"), "split table")
    odd = ~split["split"].isin(list(SPLITS))
    if odd.any():
        raise DataError(f"{paths[SPLIT_FILE]}: split {split['split'][odd].iloc[0]!r}; valid: {', '.join(SPLITS)}")
    films = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    if films["split"].isna().any():
        first = films["dicom_id"][films["split"].isna()].iloc[0]
        raise DataError(f"{paths[SPLIT_FILE]}: film {first!r} of {paths[META_FILE].name} has no split")
    films = films.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    unlabelled = int((films.pop("_merge") == "left_only").sum())
    if unlabelled:
        warnings.warn(
            f"{root}: {unlabelled} films belong to studies {paths[LABEL_FILE].name} does not label; they are left out",
            DataWarning,
            stacklevel=3,
        )
        films = films.dropna(subset=[chexpert.LABEL_MAP["Effusion"]]).reset_index(drop=True)
    return films, paths[LABEL_FILE]


def load(root: Path):
    """Frontal films (ViewPosition PA or AP) with their study's labels; the split file's test is the test."""
    films, source = _tables(root)
    labels, known, uncertain = chexpert.label_columns(films, source)
    subject, study, dicom = (films[c].str.strip() for c in ("subject_id", "study_id", "dicom_id"))
    table = pd.DataFrame(
        {
            "image_index": dicom,
            "patient_id": subject.astype(np.int64).to_numpy(),
            "path": [image_path(root, *ids) for ids in zip(subject, study, dicom)],
            "sex": "",  # in MIMIC-IV's patients table, not here
            "age": -1,
        }
    )
    test = films["split"].map(SPLITS).to_numpy(bool)
    rows = Rows(table, test, labels, known, uncertain)
    return finish(root, "mimic", rows, views=films["ViewPosition"].str.strip(), source=source)


READERS.register("mimic")(
    Reader(
        name="mimic",
        title="MIMIC-CXR-JPG",
        files=(LABEL_FILE, META_FILE, SPLIT_FILE),
        load=load,
        label_map=chexpert.LABEL_MAP,
        source="PhysioNet (physionet.org/content/mimic-cxr-jpg), credentialed access",
        split="mimic-cxr-2.0.0-split.csv: train and validate for training and validation, test as the test split",
    )
)
