"""Shared fixtures: a tiny hand-written NIH-layout tree, and the default deselection of benchmarks."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Kaggle's Data_Entry_2017.csv: the header ends with a comma (pandas sees a 12th, unnamed column).
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
# name, findings, follow-up, patient, age, sex, view. Patients 1-7 are train_val, 8-10 test.
ENTRIES = """\
00000001_000.png,Cardiomegaly,0,1,58,M,PA
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA
00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA
00000002_000.png,No Finding,0,2,81,M,PA
00000002_001.png,No Finding,1,2,81,M,PA
00000002_002.png,Atelectasis,2,2,81,M,AP
00000002_003.png,Atelectasis|Infiltration,3,2,81,M,AP
00000003_000.png,Hernia,0,3,74,F,PA
00000003_001.png,Hernia|Mass,1,3,74,F,PA
00000003_002.png,No Finding,2,3,75,F,PA
00000004_000.png,Nodule,0,4,39,F,PA
00000004_001.png,Mass|Nodule,1,4,39,F,PA
00000004_002.png,Pneumothorax,2,4,40,F,AP
00000004_003.png,No Finding,3,4,40,F,PA
00000005_000.png,Infiltration|Pneumonia,0,5,61,M,AP
00000005_001.png,Consolidation,1,5,61,M,AP
00000005_002.png,Edema,2,5,62,M,AP
00000006_000.png,Fibrosis,0,6,55,F,PA
00000006_001.png,Pleural_Thickening,1,6,55,F,PA
00000006_002.png,No Finding,2,6,56,F,PA
00000006_003.png,No Finding,3,6,56,F,PA
00000007_000.png,Effusion|Infiltration,0,7,33,M,PA
00000007_001.png,No Finding,1,7,33,M,PA
00000007_002.png,Atelectasis,2,7,34,M,AP
00000008_000.png,Effusion,0,8,47,F,PA
00000008_001.png,Mass|Nodule,1,8,47,F,PA
00000008_002.png,No Finding,2,8,48,F,PA
00000008_003.png,Cardiomegaly,3,8,48,F,AP
00000009_000.png,Infiltration,0,9,29,M,PA
00000009_001.png,Effusion|Pneumothorax,1,9,29,M,AP
00000009_002.png,No Finding,2,9,30,M,PA
00000009_003.png,Emphysema,3,9,30,M,PA
00000010_000.png,Atelectasis|Consolidation,0,10,66,F,AP
00000010_001.png,Edema|Effusion,1,10,66,F,AP
00000010_002.png,Hernia,2,10,67,F,PA
00000010_003.png,No Finding,3,10,67,F,PA
"""
NOT_ON_DISK = "00000010_003.png"  # listed in Data_Entry, never written: must be reported as missing
NOT_LISTED = "00000099_000.png"  # on disk, not in Data_Entry: ignored
# Kaggle's box list: the header splits "Bbox [x,y,w,h]" over four columns and adds three empty ones;
# "Infiltrate" is its spelling of Infiltration.
BOXES = """\
Image Index,Finding Label,Bbox [x,y,w,h],,,
00000001_000.png,Cardiomegaly,312.5,400.25,420,300.75,,,
00000002_003.png,Infiltrate,100,200,256,128,,,
00000008_001.png,Mass,600,512,64,80,,,
00000008_001.png,Nodule,128,700,32.5,30,,,
"""
TRAIN_VAL_PATIENTS = range(1, 8)


def pixels(name: str, px: int) -> np.ndarray:
    """A deterministic grayscale image per name: a gradient, a name-dependent disc and mild noise."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y, x = np.mgrid[0:px, 0:px] / px
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
    image = 60 + 120 * y + 60 * ((y - cy) ** 2 + (x - cx) ** 2 < r * r) + rng.normal(0, 6, (px, px))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_nih_tree(root: Path, *, image_px: int = 64, repeat: int = 1) -> Path:
    """Write the hand-written tree under root; repeat > 1 adds copies with new patient ids (for benchmarks)."""
    root.mkdir(parents=True, exist_ok=True)
    lines, train_val, test = [ENTRY_HEADER], [], []
    for copy in range(repeat):
        for line in ENTRIES.splitlines():
            name, findings, follow_up, patient, *rest = line.split(",")
            pid = int(patient) + 1000 * copy
            name = f"{pid:08d}_{name[9:]}"
            lines.append(",".join([name, findings, follow_up, str(pid), *rest, "1024", "1024", "0.143", "0.143"]))
            (train_val if int(patient) in TRAIN_VAL_PATIENTS else test).append(name)
            if copy == 0 and name == NOT_ON_DISK:
                continue
            folder = root / ("images_001" if int(patient) <= 5 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(name, image_px)).save(folder / name)
    Image.fromarray(pixels(NOT_LISTED, image_px)).save(root / "images_002" / "images" / NOT_LISTED)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "BBox_List_2017.csv").write_text(BOXES)
    return root


@pytest.fixture(scope="session")
def nih_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny NIH tree (35 images on disk of 36 listed, 10 patients); copy it before changing it."""
    return write_nih_tree(tmp_path_factory.mktemp("nih"))


@pytest.fixture
def fresh_nih_tree(tmp_path: Path) -> Path:
    """A private copy of the tiny tree that a test may modify."""
    return write_nih_tree(tmp_path / "nih")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Benchmarks run only when asked for by marker (`make bench` passes -m bench).
    if "bench" in (config.getoption("markexpr", "") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("bench") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("bench")])
        items[:] = keep
