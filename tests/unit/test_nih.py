"""The NIH reader: CSV quirks, boxes, missing images, locate() errors, patient-level and stratified splits."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from support import ENTRIES, NOT_LISTED, NOT_ON_DISK, pixels

from harness.config import ConfigError
from harness.data import nih
from harness.data.nih import FINDINGS, DataError, DataWarning

TXV_DATA = Path(importlib.util.find_spec("torchxrayvision").submodule_search_locations[0]) / "data"
HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.168,0.168",
]


BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def small_root(root: Path, entry_text: str, *, boxes: str = BOX_HEADER, names=None) -> Path:
    """A root with the given Data_Entry text and one small PNG per listed name (all in train_val)."""
    names = names if names is not None else [r.split(",")[0] for r in entry_text.splitlines()[1:] if r]
    folder = root / "images"
    folder.mkdir(parents=True)
    for name in names:
        Image.fromarray(pixels(name, 16)).save(folder / name)
    (root / "Data_Entry_2017.csv").write_text(entry_text)
    (root / "train_val_list.txt").write_text("\n".join(names) + "\n")
    (root / "test_list.txt").write_text("")
    (root / "BBox_List_2017.csv").write_text(boxes)
    return root


def test_load_reads_the_tree(nih_tree):
    with pytest.warns(DataWarning, match=r"1 of 36 images .* not on disk \(first: 00000010_003.png\)"):
        data = nih.load(nih_tree)
    assert data.dataset == "nih"
    assert data.root == nih_tree.resolve()
    assert list(data.table.columns) == ["image_index", "patient_id", "follow_up", "age", "sex", "view", "path"]
    assert len(data.table) == 35 and data.labels.shape == (35, 14) and data.labels.dtype == np.uint8
    assert data.missing == (NOT_ON_DISK,)
    assert NOT_LISTED not in set(data.table["image_index"])
    # Every row's labels match the hand-written Finding Labels, in FINDINGS order.
    written = {line.split(",")[0]: line.split(",")[1] for line in ENTRIES.splitlines()}
    for name, row in zip(data.table["image_index"], data.labels):
        expected = set() if written[name] == "No Finding" else set(written[name].split("|"))
        assert {f for f, v in zip(FINDINGS, row) if v} == expected
    first = data.table.iloc[1]
    assert (first.image_index, first.patient_id, first.follow_up, first.age, first.sex, first.view) == (
        "00000001_001.png",
        1,
        1,
        58,
        "M",
        "PA",
    )
    assert data.table["patient_id"].dtype.kind == "i"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in data.table["path"])
    assert len(data.train_val) == 24 and len(data.test) == 12


def test_boxes_use_findings_spelling(nih_tree):
    with pytest.warns(DataWarning):
        data = nih.load(nih_tree)
    boxes = data.boxes
    assert list(boxes.columns) == ["image_index", "finding", "x", "y", "w", "h"]
    assert boxes["finding"].tolist() == ["Cardiomegaly", "Infiltration", "Mass", "Nodule"]
    assert boxes.iloc[0][["x", "y", "w", "h"]].tolist() == [312.5, 400.25, 420.0, 300.75]
    assert all(boxes[k].dtype == np.float64 for k in "xywh")


@pytest.mark.parametrize("variant", ["kaggle-header-comma", "every-line-comma", "v2020"])
def test_entry_csv_variants(tmp_path, variant):
    header = HEADER_2020 + ("," if variant != "v2020" else "")
    rows = [r + "," for r in ROWS] if variant == "every-line-comma" else ROWS
    data = nih.load(small_root(tmp_path, "\n".join([header, *rows]) + "\n"))
    assert data.table["image_index"].tolist() == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert data.table["age"].tolist() == [58, 58, 81]  # '058Y' too
    assert data.labels[1, FINDINGS.index("Emphysema")] == 1 and data.labels[2].sum() == 0


def test_real_torchxrayvision_files_parse(tmp_path):
    with gzip.open(TXV_DATA / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        head = [next(handle) for _ in range(41)]
    with gzip.open(TXV_DATA / "BBox_List_2017.csv.gz", "rt") as handle:
        boxes = handle.read()
    data = nih.load(small_root(tmp_path, "".join(head), boxes=boxes))
    assert len(data.table) == 40 and data.labels.shape == (40, 14)
    assert len(data.boxes) == 984
    assert sorted(data.boxes["finding"].unique()) == sorted(
        ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]
    )
    assert data.boxes[["x", "y", "w", "h"]].notna().all().all()


def test_box_rows_without_trailing_commas(tmp_path):
    boxes = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Infiltrate,1,2,3,4\n"
    data = nih.load(small_root(tmp_path, HEADER_2020 + "\n" + "\n".join(ROWS) + "\n", boxes=boxes))
    assert data.boxes.iloc[0].tolist() == ["00000001_000.png", "Infiltration", 1.0, 2.0, 3.0, 4.0]


def test_label_strings_and_box_spelling_round_trip():
    texts = pd.Series(["No Finding", "Effusion|Infiltration", "Hernia", "Atelectasis|Pleural_Thickening"])
    labels = nih.label_matrix(texts)
    assert labels.dtype == np.uint8 and labels.sum(axis=1).tolist() == [0, 2, 1, 2]
    assert [nih.label_text(row) for row in labels] == texts.tolist()
    assert nih.box_name("Infiltration") == "Infiltrate" and nih.box_name("Mass") == "Mass"
    with pytest.raises(DataError, match="here: unknown finding 'Pneumonitis'"):
        nih.label_matrix(pd.Series(["Pneumonitis"]), source="here")


def test_flat_images_folder_and_synthetic_marker(tmp_path):
    root = small_root(tmp_path, HEADER_2020 + "\n" + "\n".join(ROWS) + "\n")
    assert nih.load(root).dataset == "nih"
    (root / "SYNTHETIC.json").write_text("{}")
    data = nih.load(root)
    assert data.dataset == "synthetic" and len(data.table) == 3


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER_2020 + "\n00000001_000.png,Pneumonitis,0,1,58,M,PA,1,1,1,1\n", "unknown finding 'Pneumonitis'"),
        ("Image,Labels\n00000001_000.png,Hernia\n", "should start with the columns Image Index"),
        (HEADER_2020 + "\n00000001_000.png,Hernia,0,one,58,M,PA,1,1,1,1\n", "'Patient ID' has non-numeric"),
    ],
)
def test_bad_label_table(tmp_path, text, message):
    root = small_root(tmp_path, text, names=["00000001_000.png"])
    with pytest.raises(DataError, match=message):
        nih.load(root)


def test_missing_list_file(tmp_path):
    root = small_root(tmp_path, HEADER_2020 + "\n" + "\n".join(ROWS) + "\n")
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt is missing"):
        nih.load(root)


def test_locate(tmp_path, monkeypatch, nih_tree):
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    assert nih.locate(None) is None
    assert nih.locate(nih_tree) == nih_tree.resolve()
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(nih_tree))
    assert nih.locate(None) == nih_tree.resolve()
    with pytest.raises(DataError, match="is not a directory"):
        nih.locate(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no Data_Entry_2017.csv"):
        nih.locate(tmp_path)
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"\$HARNESS_DATA_ROOT"):
        nih.locate(None)
    assert issubclass(DataError, ConfigError)  # the CLI turns it into exit code 2


# --- splits --------------------------------------------------------------------------------------


def patients_of(data, rows):
    return set(data.table["patient_id"].to_numpy()[rows].tolist())


@pytest.fixture(scope="module")
def tree(nih_tree):
    with pytest.warns(DataWarning):
        return nih.load(nih_tree)


def test_split_of_the_tree(tree):
    parts = nih.split(tree)
    names = tree.table["image_index"]
    assert set(names[parts["test"]]) == set(tree.test) - {NOT_ON_DISK}
    assert set(names[parts["train"]]) | set(names[parts["val"]]) == set(tree.train_val)
    assert len(parts["val"]) > 0
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not patients_of(tree, parts[a]) & patients_of(tree, parts[b])
    assert all(np.all(np.diff(rows) > 0) for rows in parts.values())


def test_patient_in_both_lists_is_refused(fresh_nih_tree):
    with open(fresh_nih_tree / "test_list.txt", "a") as handle:
        handle.write("00000001_000.png\n")
    with pytest.warns(DataWarning):
        data = nih.load(fresh_nih_tree)
    with pytest.raises(DataError, match="patients are in both"):
        nih.split(data)


def test_stats(tree):
    out = nih.stats(tree)
    json.dumps(out)
    assert out["images"] == 35 and out["patients"] == 10 and out["missing"] == 1 and out["skipped"] == 0
    assert out["patient_overlap"] == 0
    assert sum(out["splits"].values()) == 35
    assert set(out["prevalence"]) == {"train", "val", "test"}
    assert out["prevalence"]["test"]["Effusion"] == pytest.approx(3 / 11)


@pytest.fixture(scope="module")
def real():
    """The real NIH label table (112,120 images) without images, split patient-wise about 3:1."""
    raw = pd.read_csv(TXV_DATA / "Data_Entry_2017_v2020.csv.gz", usecols=[0, 1, 3])
    raw.columns = ["image_index", "findings", "patient_id"]
    test = (raw["patient_id"] % 4 == 0).to_numpy()
    names = raw["image_index"]
    return nih.NIHData(
        root=Path("/real"),
        dataset="nih",
        table=raw[["image_index", "patient_id"]],
        labels=nih.label_matrix(raw["findings"], source="real"),
        train_val=frozenset(names[~test]),
        test=frozenset(names[test]),
        boxes=pd.DataFrame(),
        missing=(),
    )


@pytest.fixture(scope="module")
def real_split(real):
    """split() of the real table, memoised per arguments: each call takes about a second."""
    memo: dict = {}

    def get(**kwargs):
        key = tuple(sorted(kwargs.items()))
        if key not in memo:
            memo[key] = nih.split(real, **kwargs)
        return memo[key]

    return get


def prevalence(data, rows):
    return data.labels[rows].mean(axis=0)


@pytest.mark.parametrize("fraction", [0.1, 0.05])
def test_stratified_subsets_keep_prevalence(real, real_split, fraction):
    full = real_split(seed=3)
    sub = real_split(seed=3, subset_fraction=fraction, subset_test=True)
    hernia = FINDINGS.index("Hernia")
    for name in ("train", "val", "test"):
        rows, whole = sub[name], full[name]
        assert len(rows) == pytest.approx(fraction * len(whole), rel=0.05)
        assert patients_of(real, rows) <= patients_of(real, whole)
        # Each finding within 10% of its full-split prevalence (2 images for the rarest) in train; val and
        # test subsets are ~10x smaller, where one patient with dozens of follow-ups is a coarse unit:
        # 25% (3 images). A random patient draw misses these by 2-10x.
        rel, images = (0.1, 2) if name == "train" else (0.25, 3)
        tolerance = np.maximum(rel * prevalence(real, whole), images / len(rows))
        assert np.all(np.abs(prevalence(real, rows) - prevalence(real, whole)) <= tolerance), name
        assert real.labels[rows, hernia].sum() >= 1  # Hernia (0.2%) does not vanish
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not patients_of(real, sub[a]) & patients_of(real, sub[b])


def test_subset_keeps_test_whole_unless_asked(real_split):
    full, sub = real_split(seed=3), real_split(seed=3, subset_fraction=0.1)
    np.testing.assert_array_equal(sub["test"], full["test"])
    assert len(sub["val"]) == pytest.approx(0.1 * len(full["val"]), rel=0.05)  # val shrinks with train
    train_val = len(full["train"]) + len(full["val"])
    assert len(full["val"]) == pytest.approx(0.1 * train_val, rel=0.02)


def test_tiny_subset_keeps_every_finding(real, real_split):
    sub = real_split(subset_fraction=0.002, seed=1)
    assert np.all(real.labels[sub["train"]].sum(axis=0) >= 1)


def test_split_is_deterministic_per_seed(real, real_split):
    a = real_split(seed=3, subset_fraction=0.1, subset_test=True)
    b = nih.split(real, seed=3, subset_fraction=0.1, subset_test=True)
    c = real_split(seed=4, subset_fraction=0.1, subset_test=True)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])


def test_no_hold_out_trains_on_all_of_train_val(tree):
    data = tree
    held, none = nih.split(data), nih.split(data, val_fraction=0)
    assert len(none["val"]) == 0 and len(held["val"]) > 0
    np.testing.assert_array_equal(none["train"], np.union1d(held["train"], held["val"]))
    np.testing.assert_array_equal(none["test"], held["test"])


@pytest.mark.parametrize(
    "kwargs, message", [({"val_fraction": 1.0}, "val_fraction"), ({"subset_fraction": 1.5}, "subset_fraction")]
)
def test_split_refuses_bad_fractions(tree, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        nih.split(tree, **kwargs)


def test_load_indexes_without_decoding(tmp_path):
    # A file that is not a PNG at all still loads: load() lists folders and never decodes.
    root = small_root(tmp_path, HEADER_2020 + "\n" + "\n".join(ROWS) + "\n")
    (root / "images" / "00000002_000.png").write_bytes(b"not a png")
    assert len(nih.load(root).table) == 3


def test_images_in_numbered_folders_without_inner_images_dir(tmp_path):
    root = small_root(tmp_path, HEADER_2020 + "\n" + "\n".join(ROWS) + "\n")
    shutil.move(root / "images", root / "images_001")
    assert len(nih.load(root).table) == 3
