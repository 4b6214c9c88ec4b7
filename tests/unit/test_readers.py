"""The readers of CheXpert, MIMIC-CXR-JPG and PadChest: layouts written by the generator read back, label mapping
against hand-written tables, the uncertain-label policies, 16-bit PNGs, and --data-root NAME=PATH."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.cli import main
from harness.cli.transfer import LAYOUT_NAMES, data_roots
from harness.config import ConfigError
from harness.data import cache, chexpert, mimic, nih, padchest, readers
from harness.data.synthetic.layouts import LAYOUT_WRITERS, generate_layout

F = nih.FINDINGS


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {name: generate_layout(name, base / name, n=30, size=32, seed=1, progress=False) for name in LAYOUT_NAMES}


def test_the_cli_knows_every_registered_layout():
    assert set(LAYOUT_NAMES) == set(readers.registered().names()) == {"nih", *LAYOUT_WRITERS.names()}


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_each_layout_is_recognised_and_read_back(trees, layout, capsys):
    data = readers.load(trees[layout])
    assert readers.layout_of(data) == layout
    assert data.dataset == ("synthetic" if layout == "nih" else f"synthetic-{layout}")
    assert set(data.table["view"]) <= {"PA", "AP"}  # laterals left out
    if layout != "nih":
        assert data.lateral > 0 and data.known.shape == data.labels.shape
    parts = nih.split(data, val_fraction=0.2, seed=0)
    patients = data.table["patient_id"].to_numpy()
    seen = [set(patients[rows]) for rows in parts.values()]
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert main(["data", "stats", str(trees[layout])]) == 0
    assert f"layout {layout} (" in capsys.readouterr().out


def test_a_root_of_no_known_layout_names_every_layout(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(nih.DataError, match="chexpert: train.csv, valid.csv"):
        readers.load(tmp_path)


def _chexpert_tree(root, rows):
    """A CheXpert tree with the given (path, frontal, ap_pa, {column: cell}) rows, all in train.csv."""
    records = []
    for path, frontal, view, cells in rows:
        file = root / path.split("/", 1)[1]
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 100).save(file)
        record = dict.fromkeys(chexpert.HEADER, "")
        record.update({"Path": path, "Sex": "Male", "Age": "50", "Frontal/Lateral": frontal, "AP/PA": view, **cells})
        records.append(record)
    pd.DataFrame(records, columns=list(chexpert.HEADER)).to_csv(root / "train.csv", index=False)
    pd.DataFrame([], columns=list(chexpert.HEADER)).to_csv(root / "valid.csv", index=False)


def test_chexpert_labels_map_as_the_hand_written_table_says(tmp_path):
    p = "CheXpert-v1.0-small/train/patient00001/study1/"
    _chexpert_tree(
        tmp_path,
        [
            (
                p + "view1_frontal.jpg",
                "Frontal",
                "PA",
                {"Pleural Effusion": "1.0", "Edema": "-1.0", "Lung Opacity": "1.0"},
            ),
            (p + "view2_lateral.jpg", "Lateral", "", {"Pleural Effusion": "1.0"}),
            (p + "view3_frontal.jpg", "Frontal", "AP", {"Atelectasis": "0.0", "Pneumothorax": "1", "Cardiomegaly": ""}),
        ],
    )
    data = readers.load(tmp_path)
    assert list(data.table["view"]) == ["PA", "AP"] and data.lateral == 1
    want_pos = {0: {"Effusion"}, 1: {"Pneumothorax"}}
    want_known = {0: {"Effusion", "Edema"}, 1: {"Atelectasis", "Pneumothorax"}}
    for i in range(2):
        assert {F[j] for j in np.flatnonzero(data.labels[i])} == want_pos[i]
        assert {F[j] for j in np.flatnonzero(data.known[i])} == want_known[i]
    assert {F[j] for j in np.flatnonzero(data.uncertain[0])} == {"Edema"}
    # Lung Opacity is not one of the 14: it never reaches a finding.
    assert set(chexpert.LABEL_MAP) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                                       "Pneumonia", "Pneumothorax"}  # fmt: skip
    targets = {policy: readers.label_targets(data, policy)[0] for policy in ("mask", "ones", "zeros")}
    edema, effusion, mass = F.index("Edema"), F.index("Effusion"), F.index("Mass")
    assert np.isnan(targets["mask"][edema]) and targets["ones"][edema] == 1 and targets["zeros"][edema] == 0
    assert all(t[effusion] == 1 and np.isnan(t[mass]) for t in targets.values())


def test_a_chexpert_label_that_is_no_label_is_refused(tmp_path):
    _chexpert_tree(tmp_path, [("C/train/patient00001/study1/view1_frontal.jpg", "Frontal", "PA", {"Edema": "2"})])
    with pytest.raises(nih.DataError, match="'Edema' has '2'; valid: 1, 0, -1 or blank"):
        readers.load(tmp_path)


def test_mimic_joins_films_to_their_studys_labels_and_split(tmp_path):
    labels = pd.DataFrame(
        [{"subject_id": "10000001", "study_id": "50000001", "Cardiomegaly": "1.0", "Pneumonia": "-1.0"},
         {"subject_id": "10000002", "study_id": "50000002", "Pleural Effusion": "0.0"}],
        columns=["subject_id", "study_id", *chexpert.LABELS],
    ).fillna("")  # fmt: skip
    films = [("a", "10000001", "50000001", "PA", "train"), ("b", "10000001", "50000001", "LATERAL", "train"),
             ("c", "10000002", "50000002", "AP", "test")]  # fmt: skip
    for dicom, subject, study, _, _ in films:
        path = mimic.image_path(tmp_path, subject, study, dicom)
        __import__("pathlib").Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(path, format="JPEG")
    labels.to_csv(tmp_path / mimic.LABEL_FILE, index=False)
    pd.DataFrame([f[:4] for f in films], columns=["dicom_id", "subject_id", "study_id", "ViewPosition"]).to_csv(
        tmp_path / mimic.META_FILE, index=False
    )
    pd.DataFrame(
        [(f[0], f[2], f[1], f[4]) for f in films], columns=["dicom_id", "study_id", "subject_id", "split"]
    ).to_csv(tmp_path / mimic.SPLIT_FILE, index=False)
    data = readers.load(tmp_path)
    assert list(data.table["image_index"]) == ["a", "c"] and data.test == {"c"} and data.train_val == {"a"}
    assert {F[j] for j in np.flatnonzero(data.labels[0])} == {"Cardiomegaly"}
    assert {F[j] for j in np.flatnonzero(data.uncertain[0])} == {"Pneumonia"}
    assert {F[j] for j in np.flatnonzero(data.known[1])} == {"Effusion"} and not data.labels[1].any()


def test_padchest_terms_map_as_torchxrayvision_maps_them(tmp_path):
    rows = [
        ("a.png", "['pleural effusion', 'cardiomegaly']", "PA", {"Effusion", "Cardiomegaly"}),
        ("b.png", "['laminar atelectasis', 'hiatal hernia', 'nodule']", "AP_horizontal", {"Atelectasis", "Hernia", "Nodule"}),
        ("c.png", "['consolidation', 'pulmonary edema']", "AP", {"Consolidation", "Infiltration", "Edema"}),
        ("d.png", "['interstitial pattern', 'pleural thickening', 'emphysema', 'pulmonary fibrosis']", "PA",
         {"Infiltration", "Pleural_Thickening", "Emphysema", "Fibrosis"}),
        ("e.png", "['mass', 'pneumonia', 'pneumothorax']", "PA", {"Mass", "Pneumonia", "Pneumothorax"}),
        ("f.png", "['normal']", "PA", set()),
        ("g.png", "['normal']", "L", None),  # lateral: left out
        ("h.png", "", "PA", None),  # no Labels list: left out, with a warning
    ]  # fmt: skip
    (tmp_path / "0").mkdir()
    for name, *_ in rows:
        Image.fromarray(np.full((8, 8), 3000, np.uint16)).save(tmp_path / "0" / name)
    table = pd.DataFrame(
        [(n, "0", f"p{i % 3}", view, labels) for i, (n, labels, view, _) in enumerate(rows)], columns=padchest.COLUMNS
    )
    table.to_csv(tmp_path / padchest.LABEL_FILE, index=False)
    with pytest.warns(nih.DataWarning, match="1 rows have no readable Labels"):
        data = readers.load(tmp_path)
    assert data.known.all() and not data.uncertain.any()
    got = dict(zip(data.table["image_index"], ({F[j] for j in np.flatnonzero(r)} for r in data.labels)))
    assert got == {name: want for name, _, _, want in rows if want is not None}
    assert set(padchest.LABEL_MAP) == set(F)  # PadChest labels all 14


def test_sixteen_bit_pngs_are_scaled_by_their_depth_not_truncated(trees):
    data = readers.load(trees["padchest"])
    path = data.table["path"].iloc[0]
    with Image.open(path) as image:
        raw = np.asarray(image)
    assert raw.max() > 255  # 12 significant bits in 16
    gray = cache.read_gray(path, raw.shape[0])
    expected = raw.astype(np.float64) * 255 / 4095
    assert np.abs(gray - expected).max() <= 1.0


def test_data_roots_split_nih_from_named_ones(tmp_path):
    assert data_roots(None) == (None, {})
    root, named = data_roots(["/data/nih", f"chexpert={tmp_path}"])
    assert root == "/data/nih" and named == {"chexpert": str(tmp_path.resolve())}
    with pytest.raises(ConfigError, match="NIH's root is already"):
        data_roots(["/a", "/b"])
    with pytest.raises(ConfigError, match="no path after"):
        data_roots(["padchest="])


def test_synth_refuses_label_noise_outside_the_nih_layout(tmp_path, capsys):
    with warnings.catch_warnings():
        code = main(["data", "synth", "--layout", "mimic", "--out", str(tmp_path / "m"), "--label-noise", "0.1"])
    assert code == 2 and "--label-noise is for the nih layout only" in capsys.readouterr().err
