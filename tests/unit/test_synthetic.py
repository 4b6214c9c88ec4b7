"""The synthetic NIH-layout generator: layout, determinism, splits, boxes, findings, noise, atomicity, statistics."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.config import ConfigError
from harness.data import nih
from harness.data import synthetic as sy
from harness.data.synthetic import writer

ENTRY_HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(table: pd.DataFrame) -> np.ndarray:
    """The sampled (drawn) labels in nih.FINDINGS order."""
    return nih.label_matrix(table["Finding Labels"])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return sy.generate(tmp_path_factory.mktemp("syn") / "tree", n=120, size=64, seed=3, workers=1, progress=False)


def test_every_nih_finding_can_be_drawn():
    assert sorted(sy.LESIONS) == sorted(nih.FINDINGS)


def test_tree_has_the_kaggle_layout_and_the_reader_reads_it(tree):
    entry = (tree / nih.ENTRY_FILE).read_text().splitlines()
    assert entry[0] == ENTRY_HEADER_2017  # with the 2017 file's trailing comma
    # The real table's columns, plus the 2017 file's empty twelfth one.
    real = pd.read_csv(sy.source_table_path(), nrows=0).columns.tolist()
    assert pd.read_csv(tree / nih.ENTRY_FILE, nrows=0).columns.tolist() == [*real, "Unnamed: 11"]
    assert all(line.count(",") == 11 for line in entry[1:])
    assert (tree / nih.BBOX_FILE).read_text().splitlines()[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,,,,"
    pngs = sorted((tree / "images_001" / "images").glob("*.png"))
    assert len(pngs) == 120 and all(re.fullmatch(r"\d{8}_\d{3}\.png", p.name) for p in pngs)
    with Image.open(pngs[0]) as im:
        assert im.mode == "L" and im.size == (64, 64)

    data = nih.load(tree)
    assert data.dataset == "synthetic" and len(data.table) == 120 and not data.missing
    # No label noise: the CSV holds exactly the labels sampled from the real table, whole patients in order.
    sample = sy.sample_table(120, seed=3)
    assert np.array_equal(data.labels, _truth(sample))
    assert data.table["image_index"].tolist() == sample["Image Index"].tolist()
    for _, rows in data.table.groupby("patient_id"):
        assert rows["follow_up"].tolist() == list(range(len(rows)))
    meta = json.loads((tree / nih.SYNTHETIC_MARKER).read_text())
    assert {k: meta[k] for k in ("generator_version", "n", "size", "seed", "difficulty", "label_noise")} == {
        "generator_version": sy.GENERATOR_VERSION,
        "n": 120,
        "size": 64,
        "seed": 3,
        "difficulty": 0.5,
        "label_noise": 0.0,
    }
    assert meta["source_table"]["file"].endswith("Data_Entry_2017_v2020.csv.gz")


def test_images_spread_over_folders_of_ten_thousand():
    assert writer._folder(0) == writer._folder(9_999) == "images_001/images"
    assert writer._folder(10_000) == "images_002/images"


def test_lists_are_patient_level_and_cover_every_image(tree):
    data = nih.load(tree)
    assert data.train_val.isdisjoint(data.test)
    assert data.train_val | data.test == set(data.table["image_index"])
    patient = dict(zip(data.table["image_index"], data.table["patient_id"]))
    assert {patient[x] for x in data.train_val}.isdisjoint({patient[x] for x in data.test})
    assert 0.1 < len(data.test) / len(data.table) < 0.35  # about Kaggle's 20%, in whole patients
    assert nih.stats(data)["patient_overlap"] == 0


def test_same_arguments_give_identical_bytes_and_another_seed_differs(tmp_path, tree):
    again = sy.generate(tmp_path / "again", n=120, size=64, seed=3, workers=1, progress=False)
    assert _files(again) == _files(tree)
    other = _files(sy.generate(tmp_path / "other", n=120, size=64, seed=4, workers=1, progress=False))
    base = _files(tree)
    assert other[nih.ENTRY_FILE] != base[nih.ENTRY_FILE]
    assert other["images_001/images/00000001_000.png"] != base["images_001/images/00000001_000.png"]


def test_a_box_for_every_drawn_finding_in_1024_space(tree):
    data = nih.load(tree)
    boxes = data.boxes
    assert len(boxes)
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes[["w", "h"]] > 0).all().all()
    assert ((boxes["x"] + boxes["w"]) <= 1024).all() and ((boxes["y"] + boxes["h"]) <= 1024).all()
    rows, cols = np.nonzero(data.labels)
    drawn = {(data.table["image_index"][r], nih.FINDINGS[c]) for r, c in zip(rows, cols)}
    assert set(zip(boxes["image_index"], boxes["finding"])) == drawn


def test_boxes_are_scaled_to_1024_and_spell_infiltrate(tmp_path, monkeypatch):
    def fake(labels, *, size, rng, difficulty, patient=None):
        return np.zeros((size, size), np.uint8), {name: (8.0, 16.0, 4.0, 2.0) for name in labels}

    monkeypatch.setattr(writer, "render", fake)
    root = sy.generate(tmp_path / "t", n=300, size=64, seed=0, workers=1, progress=False)
    raw = (root / nih.BBOX_FILE).read_text().splitlines()
    assert any(",Infiltrate," in line for line in raw) and not any(",Infiltration," in line for line in raw)
    boxes = nih.load(root).boxes
    assert np.allclose(boxes[["x", "y", "w", "h"]].to_numpy(), [128.0, 256.0, 64.0, 32.0])


@pytest.mark.parametrize("finding", ["Nodule", "Mass"])
def test_a_round_lesion_box_sits_over_the_lesion(finding):
    for seed in range(6):
        with_it, boxes = sy.render([finding], size=128, rng=np.random.default_rng(seed), difficulty=0.5)
        without, none = sy.render([], size=128, rng=np.random.default_rng(seed), difficulty=0.5)
        assert none == {}
        x, y, w, h = boxes[finding]
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        inside = (slice(int(y), int(np.ceil(y + h))), slice(int(x), int(np.ceil(x + w))))
        lift = with_it[inside].astype(float).mean() - without[inside].astype(float).mean()
        assert lift > 3, f"{finding} seed {seed}: the box is not over a visible opacity (lift {lift:.1f})"
        # Outside the box the two films agree (up to the lesion's soft edge).
        outside = np.ones_like(with_it, bool)
        outside[max(int(y) - 2, 0) : int(y + h) + 3, max(int(x) - 2, 0) : int(x + w) + 3] = False
        assert np.abs(with_it.astype(int) - without.astype(int))[outside].max() <= 2


@pytest.mark.parametrize("finding", sy.LESIONS.names())
def test_each_finding_changes_the_film_inside_its_box_and_fades_with_difficulty(finding):
    changes = []
    for difficulty in (0.0, 1.0):
        with_it, boxes = sy.render([finding], size=96, rng=np.random.default_rng(11), difficulty=difficulty)
        without, _ = sy.render([], size=96, rng=np.random.default_rng(11), difficulty=difficulty)
        x, y, w, h = boxes[finding]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 96 and y + h <= 96
        diff = np.abs(with_it.astype(float) - without.astype(float))
        inside = diff[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
        changes.append(inside.mean())
        assert inside.sum() >= 0.5 * diff.sum(), f"{finding}: most of the change falls outside its box"
    easy, hard = changes
    assert easy > 2 and 0 < hard < easy, f"{finding}: change {easy:.2f} at difficulty 0, {hard:.2f} at 1"


def test_render_is_independent_of_label_order_and_rejects_unknown_findings():
    a, _ = sy.render(["Effusion", "Nodule"], size=64, rng=np.random.default_rng(1), difficulty=0.3)
    b, _ = sy.render(["Nodule", "Effusion", "No Finding"], size=64, rng=np.random.default_rng(1), difficulty=0.3)
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="Nodules.*did you mean 'Nodule'"):
        sy.render(["Nodules"], size=64, rng=np.random.default_rng(1), difficulty=0.3)


def test_label_noise_flips_csv_labels_at_its_rate_and_leaves_images_alone(tmp_path, tree):
    rate = 0.1
    noisy = sy.generate(tmp_path / "noisy", n=120, size=64, seed=3, label_noise=rate, workers=1, progress=False)
    clean_labels, noisy_labels = nih.load(tree).labels, nih.load(noisy).labels
    flipped = (clean_labels != noisy_labels).mean()
    bits = clean_labels.size
    assert abs(flipped - rate) < 4 * np.sqrt(rate * (1 - rate) / bits)  # 4 binomial sd over 1,680 labels
    # The expected positive fraction moves from p to p(1 - r) + (1 - p) r.
    p = clean_labels.mean()
    assert abs(noisy_labels.mean() - (p * (1 - rate) + (1 - p) * rate)) < 4 * np.sqrt(rate * (1 - rate) / bits)
    clean_files, noisy_files = _files(tree), _files(noisy)
    pngs = [k for k in clean_files if k.endswith(".png")]
    assert all(clean_files[k] == noisy_files[k] for k in pngs)  # noise is in the labels, not the drawing
    # Boxes are where findings were drawn, so they follow the true labels, not the noisy ones.
    assert noisy_files[nih.BBOX_FILE] == clean_files[nih.BBOX_FILE]


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sy.render

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("renderer broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "render", failing)
    with pytest.raises(RuntimeError, match="renderer broke"):
        sy.generate(tmp_path / "out", n=40, size=32, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the final tree nor the half-built one


def test_refuses_to_write_over_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        sy.generate(tmp_path / "out", n=10, size=32, progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 2.5},
        {"size": 31},
        {"difficulty": 1.5},
        {"difficulty": -0.1},
        {"label_noise": 0.6},
        {"workers": -1},
        {"n": 200_000},
    ],
)
def test_bad_arguments_are_one_line_config_errors(tmp_path, kwargs):
    with pytest.raises(ConfigError) as err:
        sy.generate(tmp_path / "out", **{"n": 10, "size": 32, "progress": False, **kwargs})
    assert "\n" not in str(err.value) and next(iter(kwargs)) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_default_root_generates_once_even_when_asked_twice_at_once(tmp_path, monkeypatch):
    calls = []
    real = sy.generate

    def counted(out, **kwargs):
        calls.append(out)
        return real(out, **{**kwargs, "progress": False, "workers": 1})

    monkeypatch.setattr(writer, "generate", counted)
    roots: list[Path] = []
    threads = [
        threading.Thread(target=lambda: roots.append(sy.default_root(tmp_path, n=30, size=32, seed=2)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert roots[0] == roots[1] == tmp_path / f"synthetic-n30-s32-d0.2-seed2-v{sy.GENERATOR_VERSION}"
    assert sy.default_root(tmp_path, n=30, size=32, seed=2) == roots[0] and len(calls) == 1
    assert nih.load(roots[0]).dataset == "synthetic"


def test_default_root_clears_half_built_trees_of_killed_runs(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"synthetic-n20-s32-d0.2-seed0-v{sy.GENERATOR_VERSION}"
    stale = tmp_path / f"{name}.tmp-{dead.pid}"
    (stale / "images_001" / "images").mkdir(parents=True)
    root = sy.default_root(tmp_path, n=20, size=32, seed=0)
    assert not stale.exists() and (root / nih.SYNTHETIC_MARKER).is_file()


def _cluster_se(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Real prevalence p and the standard error of p_hat when whole patients are drawn until n_images.

    Drawing whole patients is cluster sampling: a patient's follow-ups share findings, so
    p_hat varies 2-9x more than a binomial over images would (ratio-estimator variance over
    patients).
    """
    real = sy.real_table()
    labels = _truth(real).astype(float)
    p = labels.mean(axis=0)
    _, patient, sizes = np.unique(real["Patient ID"].to_numpy(), return_inverse=True, return_counts=True)
    per_patient = np.zeros((len(sizes), labels.shape[1]))
    np.add.at(per_patient, patient, labels)
    residual = per_patient - p * sizes[:, None]
    mean_size = sizes.mean()
    return p, np.sqrt(residual.var(axis=0) / (n_images / mean_size)) / mean_size


def test_prevalence_matches_the_real_nih_table_within_sampling_error():
    n = 2000
    p, se = _cluster_se(n)
    p_hat = _truth(sy.sample_table(n, seed=0)).mean(axis=0)
    # Tolerance: 4 cluster standard errors + 0.002. (4 binomial sd + 0.002 would be wrong here:
    # it ignores that patients come whole, and fails for about a third of seeds.)
    tolerance = 4 * se + 0.002
    bad = {f: (round(a, 4), round(b, 4)) for f, a, b, t in zip(nih.FINDINGS, p_hat, p, tolerance) if abs(a - b) >= t}
    assert not bad, f"prevalence (sampled, real) outside tolerance: {bad}"
    assert nih.FINDINGS[int(np.argmax(p_hat))] == "Infiltration"  # NIH's own imbalance


def test_sampling_takes_whole_patients_with_follow_ups_in_order():
    table = sy.sample_table(500, seed=7)
    assert len(table) == 500
    real = sy.real_table()
    assert set(table.columns) == set(real.columns)
    for _pid, rows in table.groupby("Patient ID"):
        assert rows["Follow-up #"].tolist() == list(range(len(rows)))
    # Every patient but the last is whole: its image count is one the real table has for some patient.
    counts = table.groupby("Patient ID", sort=False).size().to_numpy()
    real_counts = set(real.groupby("Patient ID").size())
    assert set(counts[:-1]) <= real_counts
    assert table["Patient ID"].tolist() == sorted(table["Patient ID"])


@pytest.mark.slow
def test_a_2000_image_tree_has_nih_prevalence(tmp_path):
    n = 2000
    root = sy.generate(tmp_path / "big", n=n, size=64, seed=0, progress=False)
    data = nih.load(root)
    p, se = _cluster_se(n)
    assert len(data.table) == n
    assert (np.abs(data.labels.mean(axis=0) - p) < 4 * se + 0.002).all()
    assert nih.stats(data)["patient_overlap"] == 0
