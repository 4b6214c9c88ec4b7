"""NIH ChestX-ray14 Kaggle layout: label table, official split, patient-level val, stratified subsets, boxes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import ConfigError, Trial
from harness.data.stratify import stratified_patients

FINDINGS: tuple[str, ...] = (  # the label table's order, which every (n, 14) array follows
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"
)  # fmt: skip
NO_FINDING = "No Finding"
ENTRY_FILE = "Data_Entry_2017.csv"
TRAIN_VAL_FILE = "train_val_list.txt"
TEST_FILE = "test_list.txt"
BBOX_FILE = "BBox_List_2017.csv"
SYNTHETIC_MARKER = "SYNTHETIC.json"
BOX_SCALE = 1024.0  # box coordinates are in the 1024x1024 PNG's pixels
ROOT_ENV = "HARNESS_DATA_ROOT"

# Columns read by position, because the headers split on the commas inside "OriginalImage[Width,Height]"
# and "Bbox [x,y,w,h]" and the Kaggle files add empty trailing columns.
_ENTRY_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x")
_BOX_SPELLINGS = {"Infiltrate": "Infiltration"}  # BBox_List_2017.csv's own spelling
_BOX_NAMES = {finding: spelled for spelled, finding in _BOX_SPELLINGS.items()}


class DataError(ConfigError):
    """A data root that is missing, incomplete or inconsistent; the message is one line."""


class DataWarning(UserWarning):
    """Data that is usable but not complete (images missing on disk, undecodable files)."""


@dataclass(frozen=True, eq=False)
class NIHData:
    """One data root, read: the images found on disk, their labels, the official lists and the boxes."""

    root: Path
    dataset: str  # "synthetic" when root/SYNTHETIC.json exists, else "nih"
    table: pd.DataFrame  # one row per image found on disk, in Data_Entry order
    labels: np.ndarray  # (len(table), 14) uint8 in FINDINGS order
    train_val: frozenset[str]
    test: frozenset[str]
    boxes: pd.DataFrame  # image_index, finding, x, y, w, h (1024-px coordinates)
    missing: tuple[str, ...]  # listed in Data_Entry but not on disk
    # Names that failed to decode, added to by cache.build; mutable so stats() can report it later.
    skipped: set[str] = field(default_factory=set)


def locate(data_root: str | os.PathLike | None) -> Path | None:
    """The data root given, else $HARNESS_DATA_ROOT, else None; a given root must hold Data_Entry_2017.csv."""
    where = "data root"
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get(ROOT_ENV) or None
        where = f"${ROOT_ENV}"
        if data_root is None:
            return None
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{where} {str(root)!r} is not a directory; expected the NIH Kaggle folder holding {ENTRY_FILE}"
        )
    if not (root / ENTRY_FILE).is_file():
        raise DataError(
            f"{where} {str(root)!r} has no {ENTRY_FILE}; expected the NIH Kaggle layout "
            f"({ENTRY_FILE}, {TRAIN_VAL_FILE}, {TEST_FILE}, images_*/images/*.png)"
        )
    return root.resolve()


def _index_images(root: Path) -> dict[str, str]:
    """Image name -> absolute path for images_*/images/*.png, images_*/*.png and images/*.png."""
    dirs: list[Path] = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if entry.name == "images":
                dirs.append(Path(entry.path))
            elif entry.name.startswith("images_"):
                inner = Path(entry.path) / "images"
                dirs.append(inner if inner.is_dir() else Path(entry.path))
    found: dict[str, str] = {}
    for folder in dirs:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".png") and entry.name not in found:
                    found[entry.name] = entry.path
    return found


def _member(names: pd.Series, allowed) -> np.ndarray:
    """Boolean mask of names in a set; Series.isin is ~40x slower on pandas' arrow strings."""
    return np.fromiter((n in allowed for n in names.tolist()), dtype=bool, count=len(names))


def _read_csv(path: Path, names: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read the leading columns of an NIH csv by position after checking their headers."""
    try:
        # index_col=False: rows ending in a comma must not turn the first column into the index.
        frame = pd.read_csv(path, index_col=False, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the {what}: {err}") from None
    head = [str(c).strip().lower() for c in frame.columns[: len(names)]]
    if head != [n.lower() for n in names]:
        raise DataError(
            f"{path}: the {what} should start with the columns {', '.join(names)}; "
            f"found {', '.join(map(str, frame.columns[: len(names)]))}"
        )
    return frame


def _ints(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Integers from a column; ages may be written '058Y' in some NIH copies."""
    try:
        return values.astype(np.int64).to_numpy()
    except (ValueError, TypeError):
        pass  # the slow path, only for columns that need it
    digits = values.str.extract(r"(\d+)", expand=False)
    bad = digits.isna()
    if bad.any():
        raise DataError(f"{path}: column {column!r} has non-numeric values, e.g. {values[bad].iloc[0]!r}")
    return digits.astype(np.int64).to_numpy()


def label_matrix(findings: pd.Series, *, source: Path | str = "the label table") -> np.ndarray:
    """The '|'-separated Finding Labels as an (n, 14) uint8 matrix in FINDINGS order; 'No Finding' is all zeros."""
    dummies = findings.str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - set(FINDINGS) - {NO_FINDING})
    if unknown:
        raise DataError(
            f"{source}: unknown finding {unknown[0]!r} in 'Finding Labels'; valid: {', '.join(FINDINGS)}, {NO_FINDING}"
        )
    return dummies.reindex(columns=list(FINDINGS), fill_value=0).to_numpy(dtype=np.uint8)


def label_text(row: Sequence[bool] | np.ndarray) -> str:
    """One image's labels (a row in FINDINGS order) as Finding Labels: names sorted and '|'-joined, else 'No Finding'."""
    names = sorted(f for f, on in zip(FINDINGS, row) if on)
    return "|".join(names) if names else NO_FINDING


def box_name(finding: str) -> str:
    """How BBox_List_2017.csv spells a finding: 'Infiltrate' for Infiltration, the others as in FINDINGS."""
    return _BOX_NAMES.get(finding, finding)


def _read_list(path: Path) -> frozenset[str]:
    if not path.is_file():
        raise DataError(
            f"{path} is missing; the official split needs {TRAIN_VAL_FILE} and {TEST_FILE} (one image name per line)"
        )
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def _read_boxes(path: Path) -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            "image_index": pd.Series(dtype=str),
            "finding": pd.Series(dtype=str),
            **{k: pd.Series(dtype=np.float64) for k in "xywh"},
        }
    )
    if not path.is_file():
        warnings.warn(f"{path} is missing: no boxes for Grad-CAM scoring", DataWarning, stacklevel=3)
        return empty
    frame = _read_csv(path, _BOX_COLUMNS, "box list")
    if frame.shape[1] < 6:
        raise DataError(f"{path}: expected 6 columns (Image Index, Finding Label, x, y, w, h); found {frame.shape[1]}")
    finding = frame.iloc[:, 1].str.strip().replace(_BOX_SPELLINGS)
    unknown = sorted(set(finding) - set(FINDINGS))
    if unknown:
        raise DataError(f"{path}: unknown finding {unknown[0]!r}; valid: {', '.join(FINDINGS)}")
    try:
        coords = frame.iloc[:, 2:6].astype(np.float64).to_numpy()
    except ValueError as err:
        raise DataError(f"{path}: box coordinates must be numbers: {err}") from None
    out = pd.DataFrame({"image_index": frame.iloc[:, 0].str.strip(), "finding": finding})
    for i, k in enumerate("xywh"):
        out[k] = coords[:, i]
    return out.reset_index(drop=True) if len(out) else empty


def load(root: Path | str) -> NIHData:
    """Read a data root without decoding any image (the image folders are only listed)."""
    found = locate(root)
    if found is None:
        raise DataError(f"no data root given and ${ROOT_ENV} is not set; pass the NIH Kaggle folder")
    root = found
    entry_path = root / ENTRY_FILE
    entries = _read_csv(entry_path, _ENTRY_COLUMNS, "label table")
    names = entries.iloc[:, 0].str.strip()
    if names.duplicated().any():
        raise DataError(f"{entry_path}: image {names[names.duplicated()].iloc[0]!r} is listed twice")
    on_disk = _index_images(root)
    present = _member(names, on_disk)
    missing = tuple(names[~present])
    if missing:
        warnings.warn(
            f"{root}: {len(missing)} of {len(names)} images in {ENTRY_FILE} are not on disk "
            f"(first: {', '.join(missing[:5])}); they are left out",
            DataWarning,
            stacklevel=2,
        )
    kept = entries[present].reset_index(drop=True)
    kept_names = names[present].reset_index(drop=True)
    table = pd.DataFrame(
        {
            "image_index": kept_names,
            "patient_id": _ints(kept.iloc[:, 3], entry_path, "Patient ID"),
            "follow_up": _ints(kept.iloc[:, 2], entry_path, "Follow-up #"),
            "age": _ints(kept.iloc[:, 4], entry_path, "Patient Age"),
            "sex": kept.iloc[:, 5].str.strip(),
            "view": kept.iloc[:, 6].str.strip(),
            "path": kept_names.map(on_disk),
        }
    )
    return NIHData(
        root=root,
        dataset="synthetic" if (root / SYNTHETIC_MARKER).is_file() else "nih",
        table=table,
        labels=label_matrix(kept.iloc[:, 1].str.strip(), source=entry_path),
        train_val=_read_list(root / TRAIN_VAL_FILE),
        test=_read_list(root / TEST_FILE),
        boxes=_read_boxes(root / BBOX_FILE),
        missing=missing,
    )


# --- splits ---------------------------------------------------------------------------------------


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent stream per purpose, so changing one draw does not shift another."""
    return np.random.default_rng([seed, *purpose.encode()])


def _patients(data: NIHData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique patient ids, index of each row's patient in that array)."""
    return np.unique(data.table["patient_id"].to_numpy()[rows], return_inverse=True)


def _subset(data: NIHData, rows: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A patient-level stratified subset of rows holding about `fraction` of them."""
    if fraction >= 1.0 or len(rows) == 0:
        return rows
    _, patient_of = _patients(data, rows)
    labels = data.labels[rows].astype(np.int64)
    per_image = np.concatenate([labels, (labels.sum(axis=1) == 0)[:, None]], axis=1)
    n_patients = patient_of.max() + 1
    counts = np.zeros((n_patients, per_image.shape[1]), dtype=np.int64)
    np.add.at(counts, patient_of, per_image)
    sizes = np.bincount(patient_of, minlength=n_patients)
    chosen = stratified_patients(counts, sizes, fraction, rng)
    # A rare finding must not vanish from a small subset: give each one left out a random carrier.
    for j in np.flatnonzero((counts[:, :-1].sum(axis=0) > 0) & (counts[chosen, :-1].sum(axis=0) == 0)):
        chosen[rng.choice(np.flatnonzero(counts[:, j]))] = True
    return rows[chosen[patient_of]]


def split(
    data: NIHData, *, val_fraction: float = 0.1, seed: int = 0, subset_fraction: float = 1.0, subset_test: bool = False
) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} -> sorted row indices into data.table; no patient is in two splits.

    test is the official test list; val is a seeded patient-level slice of train_val holding
    about val_fraction of its images. subset_fraction < 1 keeps that share of the patients of
    train and val (and of test when subset_test), stratified so each finding keeps its prevalence.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(
            f"val_fraction={val_fraction!r} is out of range; valid: 0 (no hold-out) or a number in (0, 1)"
        )
    if not 0 < subset_fraction <= 1:
        raise ConfigError(f"subset_fraction={subset_fraction!r} is out of range; valid: a number in (0, 1]")
    names = data.table["image_index"]
    patients = data.table["patient_id"].to_numpy()
    train_val = np.flatnonzero(_member(names, data.train_val))
    test = np.flatnonzero(_member(names, data.test))
    shared = np.intersect1d(patients[train_val], patients[test])
    if len(shared):
        raise DataError(
            f"{data.root}: {len(shared)} patients are in both {TRAIN_VAL_FILE} and {TEST_FILE} "
            f"(e.g. patient {shared[0]}); the official split must be patient-wise"
        )
    ids, patient_of = _patients(data, train_val)
    sizes = np.bincount(patient_of, minlength=len(ids))
    order = _rng(seed, "val").permutation(len(ids))
    # Take whole patients until val holds its share of the images (at least one patient, never all).
    need = val_fraction * len(train_val)
    n_val = int(np.searchsorted(np.cumsum(sizes[order]), need, side="left")) + 1
    n_val = min(n_val, len(ids) - 1) if len(ids) > 1 and val_fraction > 0 else 0
    in_val = np.zeros(len(ids), dtype=bool)
    in_val[order[:n_val]] = True
    val = train_val[in_val[patient_of]]
    train = train_val[~in_val[patient_of]]
    if subset_fraction < 1.0:
        train = _subset(data, train, subset_fraction, _rng(seed, "subset-train"))
        val = _subset(data, val, subset_fraction, _rng(seed, "subset-val"))
        if subset_test:
            test = _subset(data, test, subset_fraction, _rng(seed, "subset-test"))
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def stats(data: NIHData, *, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """JSON-able summary: counts, patients, split sizes, patient overlap, per-split prevalence."""
    parts = split(data, val_fraction=val_fraction, seed=seed)
    patients = data.table["patient_id"].to_numpy()
    seen: dict[int, int] = {}
    for rows in parts.values():
        for p in np.unique(patients[rows]):
            seen[int(p)] = seen.get(int(p), 0) + 1
    prevalence = {
        name: {f: (float(data.labels[rows, j].mean()) if len(rows) else 0.0) for j, f in enumerate(FINDINGS)}
        for name, rows in parts.items()
    }
    return {
        "root": str(data.root),
        "dataset": data.dataset,
        "images": len(data.table),
        "patients": len(np.unique(patients)),
        "splits": {name: len(rows) for name, rows in parts.items()},
        "patient_overlap": sum(1 for n in seen.values() if n > 1),
        "prevalence": prevalence,
        "boxes": len(data.boxes),
        "skipped": len(data.skipped),
        "missing": len(data.missing),
    }


def trial_splits(data: NIHData, trial: Trial) -> dict[str, np.ndarray]:
    """The splits a trial's fields define: the same rows for training, scoring and `harness cam`."""
    fields = ("val_fraction", "seed", "subset_fraction", "subset_test")
    return split(data, **{f: getattr(trial, f) for f in fields})
