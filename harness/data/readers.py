"""One reader interface over every dataset layout: the READERS registry, layout detection, uncertain labels.

Every reader returns the same table as the NIH one (an XrayData): image name and path, patient, view,
the official split as train_val / test name sets, and the harness's 14 findings (nih.FINDINGS order)
with `known` marking the entries the dataset labels at all and `uncertain` those it labels uncertain.
Frontal films only (PA and AP), as torchxrayvision reads them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config import UNCERTAIN_POLICIES, ConfigError
from harness.data import nih
from harness.data.nih import FINDINGS, DataError, DataWarning, NIHData
from harness.registry import Registry

FRONTAL = ("PA", "AP")  # torchxrayvision's frontal views; laterals are left out and counted
SYNTHETIC_PREFIX = "synthetic-"  # dataset name of a synthetic tree in another layout: synthetic-chexpert


@dataclass(frozen=True, eq=False)
class XrayData(NIHData):
    """NIHData with labels that may be unknown: what every non-NIH reader returns."""

    known: np.ndarray | None = None  # (n, 14) bool: the dataset labels this entry (uncertain included)
    uncertain: np.ndarray | None = None  # (n, 14) bool: labelled uncertain (-1), a subset of known
    layout: str = "nih"
    lateral: int = 0  # films left out as not frontal


@dataclass(frozen=True)
class Reader:
    """One dataset layout: the files that identify it, how to read it, and its stated label mapping."""

    name: str
    title: str
    files: tuple[str, ...]  # all present (or .gz) identifies the layout
    load: Callable[[Path], NIHData]
    label_map: Mapping[str, str | tuple[str, ...]]  # the harness finding -> the dataset's label(s)
    source: str  # where the dataset is obtained
    split: str  # what its official split is, in words
    official_split: bool = True  # False: the test split is the harness's own draw (evaluate scores every film)

    @property
    def env(self) -> str:
        """The environment variable naming its root (NIH keeps HARNESS_DATA_ROOT)."""
        return nih.ROOT_ENV if self.name == "nih" else f"HARNESS_{self.name.upper()}_ROOT"

    def findings(self) -> tuple[str, ...]:
        """The harness findings this dataset labels, in FINDINGS order."""
        return tuple(f for f in FINDINGS if f in self.label_map)


READERS: Registry[Reader] = Registry("data layout")

READERS.register("nih")(
    Reader(
        name="nih",
        title="NIH ChestX-ray14",
        files=(nih.ENTRY_FILE,),
        load=nih.load,
        label_map={f: f for f in FINDINGS},
        source="NIH Clinical Center (Kaggle: nih-chest-xrays/data)",
        split="train_val_list.txt / test_list.txt",
    )
)


def registered() -> Registry[Reader]:
    """READERS with every reader in it: each dataset's module registers its own on import."""
    from harness.data import chexpert, mimic, padchest  # noqa: F401

    return READERS


def find_file(root: Path, name: str) -> Path | None:
    """root/name, or its gzipped copy (PhysioNet ships MIMIC's tables as .csv.gz)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def detect(root: Path) -> Reader:
    """The reader whose files the root holds; a DataError naming every layout's files when none fits."""
    for name in registered():
        reader = READERS[name]
        if all(find_file(root, f) for f in reader.files):
            return reader
    wanted = "; ".join(f"{n}: {', '.join(READERS[n].files)}" for n in READERS)
    raise DataError(f"{root}: no known data layout (valid layouts and the files that mark them: {wanted})")


def check_root(root: Path | str | os.PathLike, where: str = "data root") -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{where} {str(path)!r} is not a directory; valid layouts: {', '.join(READERS)}")
    return path.resolve()


def load(root: Path | str, *, layout: str | None = None) -> NIHData:
    """Read a root of any layout (detected by its files, or the one named) without decoding an image."""
    path = check_root(root)
    reader = detect(path) if layout is None else registered()[layout]
    if layout is not None and not all(find_file(path, f) for f in reader.files):
        raise DataError(f"{path}: not the {layout} layout; it needs {', '.join(reader.files)}")
    return reader.load(path)


def layout_of(data: NIHData) -> str:
    return getattr(data, "layout", "nih")


def dataset_name(layout: str, synthetic: bool) -> str:
    """What a trial records: nih / synthetic for the NIH layout, chexpert / synthetic-chexpert for another."""
    if layout == "nih":
        return "synthetic" if synthetic else "nih"
    return f"{SYNTHETIC_PREFIX}{layout}" if synthetic else layout


def layout_for(dataset: str) -> str:
    """The layout a dataset name reads: synthetic -> nih, synthetic-chexpert -> chexpert."""
    if dataset == "synthetic":
        return "nih"
    return dataset.removeprefix(SYNTHETIC_PREFIX)


def is_synthetic(dataset: str) -> bool:
    return dataset == "synthetic" or dataset.startswith(SYNTHETIC_PREFIX)


def label_targets(data: NIHData, policy: str = "mask") -> np.ndarray:
    """(n, 14) float32 training targets: 1, 0, or NaN where unknown (masked from losses and metrics).

    Uncertain labels follow `policy`: mask (unknown, the default), ones (U-Ones) or zeros (U-Zeros),
    as Irvin et al. 2019 compare them. NIH labels every entry, so its targets are its labels.
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ConfigError(f"uncertain={policy!r} is not a policy; valid: {', '.join(UNCERTAIN_POLICIES)}")
    out = data.labels.astype(np.float32)
    known = getattr(data, "known", None)
    if known is None:
        return out
    uncertain = getattr(data, "uncertain", None)
    uncertain = np.zeros_like(known) if uncertain is None else uncertain
    if policy == "ones":
        out[uncertain] = 1.0
    elif policy == "zeros":
        out[uncertain] = 0.0
    else:
        known = known & ~uncertain
    out[~known] = np.nan
    return out


# --- what every reader shares ------------------------------------------------------------------------


def read_table(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """A csv (or .csv.gz) as strings, with a DataError naming the first required column it lacks."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, low_memory=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{path}: cannot read the {what}: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    lacking = [c for c in required if c not in frame.columns]
    if lacking:
        raise DataError(f"{path}: the {what} has no column {lacking[0]!r}; it needs {', '.join(required)}")
    return frame


def patient_codes(values: pd.Series) -> np.ndarray:
    """Integer patient ids: the values themselves when numeric, else their rank among the distinct values."""
    try:
        return values.astype(np.int64).to_numpy()
    except (ValueError, TypeError, OverflowError):
        codes, _ = pd.factorize(values, sort=True)
        return codes.astype(np.int64)


def patient_split(patients: np.ndarray, *, test_fraction: float, seed: int, purpose: str) -> np.ndarray:
    """A seeded patient-level test set for a dataset without an official split: a boolean mask over rows."""
    ids = np.unique(patients)
    order = np.random.default_rng([seed, *purpose.encode()]).permutation(len(ids))
    sizes = np.bincount(np.searchsorted(ids, patients), minlength=len(ids))[order]
    n_test = int(np.searchsorted(np.cumsum(sizes), test_fraction * len(patients), side="left")) + 1
    n_test = min(n_test, len(ids) - 1) if len(ids) > 1 else 0
    return np.isin(patients, ids[order[:n_test]])


@dataclass
class Rows:
    """A reader's frontal films before they become an XrayData; every array is aligned with `frame`."""

    frame: pd.DataFrame  # image_index, patient_id, view, path (absolute), sex, age
    test: np.ndarray  # bool: in the official (or seeded) test split
    labels: np.ndarray  # (n, 14) uint8, 1 = positive (uncertain entries 0)
    known: np.ndarray  # (n, 14) bool
    uncertain: np.ndarray  # (n, 14) bool


def finish(root: Path, layout: str, rows: Rows, *, views: pd.Series, source: Path) -> XrayData:
    """Frontal films that are on disk, as an XrayData; laterals and missing files are counted, never silent."""
    frontal = views.isin(FRONTAL).to_numpy()
    on_disk = np.fromiter((os.path.isfile(p) for p in rows.frame["path"]), dtype=bool, count=len(rows.frame))
    names = rows.frame["image_index"]
    if names.duplicated().any():
        raise DataError(f"{source}: image {names[names.duplicated()].iloc[0]!r} is listed twice")
    missing = tuple(names[frontal & ~on_disk])
    if missing:
        warnings.warn(
            f"{root}: {len(missing)} of {int(frontal.sum())} frontal images are not on disk "
            f"(first: {', '.join(missing[:3])}); they are left out",
            DataWarning,
            stacklevel=3,
        )
    keep = frontal & on_disk
    table = rows.frame[keep].reset_index(drop=True)
    table["view"] = views[keep].to_numpy()
    table["follow_up"] = 0
    test = rows.test[keep]
    return XrayData(
        root=root,
        dataset=dataset_name(layout, (root / nih.SYNTHETIC_MARKER).is_file()),
        table=table[["image_index", "patient_id", "follow_up", "age", "sex", "view", "path"]],
        labels=rows.labels[keep],
        train_val=frozenset(table["image_index"][~test]),
        test=frozenset(table["image_index"][test]),
        boxes=pd.DataFrame({"image_index": [], "finding": [], **{k: [] for k in "xywh"}}),
        missing=missing,
        known=rows.known[keep],
        uncertain=rows.uncertain[keep],
        layout=layout,
        lateral=int((~frontal).sum()),
    )


def ages(values: pd.Series) -> np.ndarray:
    """Ages as integers, -1 where blank or unreadable (they describe the data, never split it)."""
    return pd.to_numeric(values, errors="coerce").fillna(-1).astype(np.int64).to_numpy()


def stats(data: NIHData, *, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """nih.stats for any layout, with the layout named and, where labels can be unknown, how many are."""
    out = nih.stats(data, val_fraction=val_fraction, seed=seed)
    layout = layout_of(data)
    reader = registered()[layout]
    out.update(layout=layout, title=reader.title, labelled=list(reader.findings()))
    known = getattr(data, "known", None)
    if known is not None:
        out["known"] = {f: int(known[:, j].sum()) for j, f in enumerate(FINDINGS)}
        out["uncertain"] = {f: int(data.uncertain[:, j].sum()) for j, f in enumerate(FINDINGS)}
        out["lateral_left_out"] = data.lateral
        # Prevalence among the labelled entries: an unknown label is not a negative one.
        parts = nih.split(data, val_fraction=val_fraction, seed=seed)
        targets = label_targets(data)
        out["prevalence"] = {
            name: {f: _share(targets[rows, j]) for j, f in enumerate(FINDINGS)} for name, rows in parts.items()
        }
    return out


def _share(column: np.ndarray) -> float:
    column = column[np.isfinite(column)]
    return float(column.mean()) if column.size else 0.0
