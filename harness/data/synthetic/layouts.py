"""Synthetic trees in CheXpert's, MIMIC-CXR-JPG's and PadChest's own layouts, each with its own shift from NIH's.

The films are the NIH generator's phantoms (labels, patients and follow-ups from the real NIH table), written
with each dataset's files, headers, path patterns and label conventions (1 / 0 / -1 / blank, Python-list
Labels), with some lateral films to filter, as JPEG (CheXpert, MIMIC) or 12-bit data in 16-bit PNGs
(PadChest). Each dataset gets its own contrast, brightness, noise and prevalence (SHIFTS), so a model trained
on one scores visibly lower on another, as real transfer does.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.config import ConfigError
from harness.data import chexpert, mimic, nih, padchest
from harness.data.synthetic.phantom import check_arguments
from harness.data.synthetic.table import draw_test_patients, sample_table
from harness.data.synthetic.writer import GENERATOR_VERSION, generate, tree_film
from harness.registry import Registry

SHIFT_STREAM, LABEL_STREAM = 7, 8  # random streams of their own: the phantoms stay the NIH generator's
LATERAL_SHARE = 0.2  # films that get a lateral companion in the same study (left out by the readers)


@dataclass(frozen=True)
class Shift:
    """How a dataset's films differ from the NIH phantoms."""

    contrast: float  # deviations from mid-gray are scaled by this
    brightness: float  # gray levels added
    noise: float  # SD of added Gaussian noise, gray levels
    keep: float  # share of each finding's positives kept: a prevalence shift (the images follow the labels)


SHIFTS = {
    "chexpert": Shift(contrast=0.8, brightness=12.0, noise=6.0, keep=0.85),
    "mimic": Shift(contrast=1.15, brightness=-10.0, noise=4.0, keep=0.9),
    "padchest": Shift(contrast=0.65, brightness=20.0, noise=9.0, keep=0.7),
}


@dataclass
class Films:
    """The frontal films drawn for a tree, before writing: one row per film of the NIH sample."""

    table: pd.DataFrame  # sample_table's columns
    truth: np.ndarray  # (n, 14) bool after the prevalence shift: what is painted and labelled
    test: np.ndarray  # (n,) bool: patient in the test split
    lateral: np.ndarray  # (n,) bool: the study also has a lateral film


LAYOUT_WRITERS: Registry[Callable[[Path, Films, int, int, float], None]] = Registry("synthetic layout")


def draw(layout: str, n: int, seed: int) -> Films:
    table = sample_table(n, seed=seed)
    truth = nih.label_matrix(table["Finding Labels"]).astype(bool)
    rng = np.random.default_rng([seed, LABEL_STREAM, *layout.encode()])
    truth &= rng.random(truth.shape) < SHIFTS[layout].keep
    pids = table["Patient ID"].to_numpy()
    test = np.isin(pids, list(draw_test_patients(pids, seed)))
    return Films(table, truth, test, rng.random(n) < LATERAL_SHARE)


def film(films: Films, i: int, layout: str, *, size: int, seed: int, difficulty: float, lateral: bool) -> np.ndarray:
    """Film i as (size, size) float32 gray levels with the dataset's shift; a lateral is mirrored and re-noised."""
    labels = [f for f, on in zip(nih.FINDINGS, films.truth[i]) if on]
    pid = int(films.table["Patient ID"].iloc[i])
    image, _ = tree_film(labels, index=i, patient=pid, size=size, seed=seed, difficulty=difficulty)
    shift = SHIFTS[layout]
    rng = np.random.default_rng([seed, SHIFT_STREAM, i, int(lateral)])
    out = (image.astype(np.float32) - 128.0) * shift.contrast + 128.0 + shift.brightness
    out += rng.normal(0.0, shift.noise, out.shape).astype(np.float32)
    return np.clip(out[:, ::-1] if lateral else out, 0, 255)


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(pixels).astype(np.uint8)).save(path, format="JPEG", quality=92)


def _save_png16(path: Path, pixels: np.ndarray) -> None:
    """12 significant bits in a 16-bit PNG, as PadChest's films hold them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(pixels * (4095 / 255)).astype(np.uint16)).save(path, format="PNG")


def chexpert_cells(truth: np.ndarray, rng: np.random.Generator) -> dict[str, str]:
    """One film's 14 CheXpert label cells: positives mostly 1.0 (some -1.0), negatives blank, 0.0 or -1.0."""
    cells = dict.fromkeys(chexpert.LABELS, "")
    for finding, column in chexpert.LABEL_MAP.items():
        r = rng.random()
        if truth[nih.FINDINGS.index(finding)]:
            cells[column] = "-1.0" if r < 0.15 else "1.0"
        else:
            cells[column] = "" if r < 0.5 else "0.0" if r < 0.9 else "-1.0"
    cells["No Finding"] = "" if truth.any() else "1.0"
    return cells


@LAYOUT_WRITERS.register("chexpert")
def _chexpert(tmp: Path, films: Films, size: int, seed: int, difficulty: float) -> None:
    rng = np.random.default_rng([seed, LABEL_STREAM, 1])
    rows: dict[bool, list[dict]] = {False: [], True: []}
    t = films.table
    for i in range(len(t)):
        part = "valid" if films.test[i] else "train"
        folder = f"{part}/patient{int(t['Patient ID'].iloc[i]):05d}/study{int(t['Follow-up #'].iloc[i]) + 1}"
        cells = chexpert_cells(films.truth[i], rng)
        view = str(t["View Position"].iloc[i])
        sex = {"M": "Male", "F": "Female"}.get(str(t["Patient Gender"].iloc[i]), "Unknown")
        for k, lateral in enumerate([False, True] if films.lateral[i] else [False]):
            name = f"{folder}/view{k + 1}_{'lateral' if lateral else 'frontal'}.jpg"
            pixels = film(films, i, "chexpert", size=size, seed=seed, difficulty=difficulty, lateral=lateral)
            _save_jpeg(tmp / name, pixels)
            rows[bool(films.test[i])].append(
                {
                    "Path": f"CheXpert-v1.0-small/{name}",
                    "Sex": sex,
                    "Age": str(int(t["Patient Age"].iloc[i])),
                    "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                    "AP/PA": "" if lateral else view,
                    **cells,
                }
            )
    for test, name in ((False, chexpert.TRAIN_FILE), (True, chexpert.VALID_FILE)):
        pd.DataFrame(rows[test], columns=list(chexpert.HEADER)).to_csv(tmp / name, index=False)


MIMIC_META = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip


@LAYOUT_WRITERS.register("mimic")
def _mimic(tmp: Path, films: Films, size: int, seed: int, difficulty: float) -> None:
    rng = np.random.default_rng([seed, LABEL_STREAM, 2])
    t = films.table
    labels, meta, split = [], [], []
    for i in range(len(t)):
        subject = str(10_000_000 + int(t["Patient ID"].iloc[i]))
        study = str(50_000_000 + int(t["Patient ID"].iloc[i]) * 100 + int(t["Follow-up #"].iloc[i]))
        labels.append({"subject_id": subject, "study_id": study, **chexpert_cells(films.truth[i], rng)})
        part = "test" if films.test[i] else ("validate" if rng.random() < 0.1 else "train")
        for lateral in [False, True] if films.lateral[i] else [False]:
            dicom = "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, 5))
            view = "LATERAL" if lateral else str(t["View Position"].iloc[i])
            pixels = film(films, i, "mimic", size=size, seed=seed, difficulty=difficulty, lateral=lateral)
            _save_jpeg(Path(mimic.image_path(tmp, subject, study, dicom)), pixels)
            meta.append(
                dict(zip(MIMIC_META, (dicom, subject, study, "CHEST (PA AND LAT)", view, size, size, "21800101",
                                      "120000.000", "CHEST (PA AND LAT)", "postero-anterior" if view == "PA" else
                                      "antero-posterior" if view == "AP" else "lateral", "Erect")))
            )  # fmt: skip
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": part})
    pd.DataFrame(labels, columns=["subject_id", "study_id", *chexpert.LABELS]).to_csv(
        tmp / mimic.LABEL_FILE, index=False
    )
    pd.DataFrame(meta, columns=list(MIMIC_META)).to_csv(tmp / mimic.META_FILE, index=False)
    pd.DataFrame(split).to_csv(tmp / mimic.SPLIT_FILE, index=False)


# One PadChest term per finding to write (each one LABEL_MAP reads back as that finding).
PADCHEST_TERMS = {
    "Atelectasis": ("laminar atelectasis", "atelectasis"), "Cardiomegaly": ("cardiomegaly",),
    "Effusion": ("pleural effusion", "loculated pleural effusion"), "Infiltration": ("infiltrates", "interstitial pattern"),
    "Mass": ("mass",), "Nodule": ("nodule", "multiple nodules"), "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",), "Consolidation": ("consolidation",), "Edema": ("pulmonary edema",),
    "Emphysema": ("emphysema",), "Fibrosis": ("pulmonary fibrosis",), "Pleural_Thickening": ("pleural thickening",),
    "Hernia": ("hiatal hernia",),
}  # fmt: skip
PADCHEST_HEADER = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Labels",
)  # fmt: skip
_PADCHEST_FOLDER = 25  # films per numbered folder (the real ones hold about 1,000): small trees get several


@LAYOUT_WRITERS.register("padchest")
def _padchest(tmp: Path, films: Films, size: int, seed: int, difficulty: float) -> None:
    rng = np.random.default_rng([seed, LABEL_STREAM, 3])
    t = films.table
    rows, k = [], 0
    for i in range(len(t)):
        pid = int(t["Patient ID"].iloc[i])
        terms = [str(rng.choice(PADCHEST_TERMS[f])) for f, on in zip(nih.FINDINGS, films.truth[i]) if on]
        labels = repr(terms or ["normal"])
        frontal = "PA" if t["View Position"].iloc[i] == "PA" else str(rng.choice(["AP", "AP_horizontal"]))
        for lateral in [False, True] if films.lateral[i] else [False]:
            name = f"21684011136696401{seed:04d}{k:012d}_{pid % 100:02d}-{k % 1000:03d}.png"
            folder = str(k // _PADCHEST_FOLDER)
            pixels = film(films, i, "padchest", size=size, seed=seed, difficulty=difficulty, lateral=lateral)
            _save_png16(tmp / folder / name, pixels)
            view = "L" if lateral else frontal
            rows.append(
                dict(zip(PADCHEST_HEADER, (name, folder, "20140101", f"{pid}-{int(t['Follow-up #'].iloc[i])}",
                                           f"{pid * 7919 + 10**20}", "1950", str(t["Patient Gender"].iloc[i]),
                                           "['LATERAL']" if lateral else f"['{view}']", view,
                                           "Manual review of DICOM fields", labels)))
            )  # fmt: skip
            k += 1
    pd.DataFrame(rows, columns=list(PADCHEST_HEADER)).to_csv(tmp / padchest.LABEL_FILE, index=False)


def generate_layout(
    layout: str,
    out: Path | str,
    *,
    n: int,
    size: int = 64,
    seed: int = 0,
    difficulty: float = 0.5,
    progress: bool = True,
) -> Path:
    """Write a synthetic tree in `layout` (nih: the Kaggle layout, writer.generate) to `out`; returns its path."""
    if layout == "nih":
        return generate(out, n=n, size=size, seed=seed, difficulty=difficulty, progress=progress)
    if layout not in LAYOUT_WRITERS:
        raise ConfigError(f"--layout: {LAYOUT_WRITERS.unknown(layout)}, nih")
    check_arguments(n=n, size=size, difficulty=difficulty)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"synthetic dataset: {out} already exists and is not empty; remove it or choose another --out"
        )
    films = draw(layout, n, seed)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        LAYOUT_WRITERS[layout](tmp, films, size, seed, difficulty)
        meta = {
            "generator": "harness.data.synthetic.layouts",
            "generator_version": GENERATOR_VERSION,
            "layout": layout,
            "n": n,
            "size": size,
            "seed": seed,
            "difficulty": difficulty,
            "shift": asdict(SHIFTS[layout]),
            "laterals": int(films.lateral.sum()),
        }
        (tmp / nih.SYNTHETIC_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
