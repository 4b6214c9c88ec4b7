"""Writes a synthetic NIH Kaggle-layout tree: labels and lists from the real table, phantoms rendered in a process pool."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from harness import store
from harness.config import ConfigError, sha256
from harness.data import nih
from harness.data.synthetic.anatomy import Box
from harness.data.synthetic.phantom import check_arguments, render
from harness.data.synthetic.table import (
    IMAGE_STREAM,
    PATIENT_STREAM,
    SOURCE_TABLE,
    draw_test_patients,
    noisy,
    sample_table,
    source_table_path,
)

GENERATOR_VERSION = 1  # bump whenever the same arguments would write different bytes

IMAGES_PER_FOLDER = 10_000  # NIH's images_NNN/images/ folders hold about 10,000 each
POOL_MIN_PIXELS = 4_000_000  # less work than this (~1.5 s on one core) renders in-process: starting workers costs more
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)  # the 2017 file's trailing comma
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,,,,"  # x,y,w,h spill into unnamed columns


def _folder(i: int) -> str:
    return f"images_{i // IMAGES_PER_FOLDER + 1:03d}/images"


def tree_film(
    labels: list[str], *, index: int, patient: int, size: int, seed: int, difficulty: float
) -> tuple[np.ndarray, dict[str, Box]]:
    """Film `index` of a tree of this seed, with its boxes: its own draws and its patient's anatomy, from the
    streams every layout of the tree shares (so a CheXpert-layout tree holds the NIH tree's phantoms)."""
    return render(
        labels,
        size=size,
        rng=np.random.default_rng([seed, IMAGE_STREAM, index]),
        difficulty=difficulty,
        patient=np.random.default_rng([seed, PATIENT_STREAM, patient]),
    )


def _render_chunk(job: tuple) -> list[tuple[str, dict[str, Box]]]:
    """Render and write one chunk of images; returns each image's boxes."""
    root, items, size, seed, difficulty = job
    out = []
    for index, name, pid, labels in items:
        image, boxes = tree_film(labels, index=index, patient=pid, size=size, seed=seed, difficulty=difficulty)
        # Level 1: fastest, and noisy films barely compress further.
        Image.fromarray(image).save(Path(root) / _folder(index) / name, format="PNG", compress_level=1)
        out.append((name, boxes))
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _render_all(
    root: Path, items: list[tuple], *, size: int, seed: int, difficulty: float, workers: int, progress: bool
) -> Iterator[list[tuple[str, dict[str, Box]]]]:
    from tqdm.auto import tqdm

    workers = workers or _cores()
    chunk = max(8, min(256, math.ceil(len(items) / (workers * 8))))
    jobs = [(str(root), items[i : i + chunk], size, seed, difficulty) for i in range(0, len(items), chunk)]
    with tqdm(total=len(items), unit="img", desc="synthetic chest phantoms", disable=not progress) as bar:
        if workers == 1 or len(jobs) == 1 or len(items) * size * size < POOL_MIN_PIXELS:
            for job in jobs:
                yield _render_chunk(job)
                bar.update(len(job[1]))
            return
        # spawn, not fork: the caller may hold torch's threads, which a forked child can deadlock on.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            for job, done in zip(jobs, pool.map(_render_chunk, jobs)):  # in order: the box file is deterministic
                yield done
                bar.update(len(job[1]))


def _coord(v: float) -> str:
    return repr(round(v, 4))


def _box_lines(done: list[tuple[str, dict[str, Box]]], size: int) -> list[str]:
    """BBox_List_2017.csv's lines for one rendered chunk, the boxes scaled to NIH's 1024-px films."""
    lines = []
    for name, boxes in done:
        for finding, (x, y, w, h) in boxes.items():
            x, y, w, h = (v * nih.BOX_SCALE / size for v in (x, y, w, h))
            lines.append(f"{name},{nih.box_name(finding)},{_coord(x)},{_coord(y)},{_coord(w)},{_coord(h)},,,")
    return lines


def _render_tree(
    tmp: Path,
    table: pd.DataFrame,
    truth: np.ndarray,
    *,
    n: int,
    size: int,
    seed: int,
    difficulty: float,
    workers: int,
    progress: bool,
) -> list[str]:
    """Every phantom rendered into its images_NNN/images folder under tmp; returns the box file's lines."""
    for folder in sorted({_folder(i) for i in range(n)}):
        (tmp / folder).mkdir(parents=True)
    items = [
        (i, name, int(pid), [f for f, on in zip(nih.FINDINGS, row) if on])
        for i, (name, pid, row) in enumerate(zip(table["Image Index"], table["Patient ID"], truth))
    ]
    box_lines = [BOX_HEADER]
    for done in _render_all(
        tmp, items, size=size, seed=seed, difficulty=difficulty, workers=workers, progress=progress
    ):
        box_lines.extend(_box_lines(done, size))
    return box_lines


def _marker(
    table: pd.DataFrame,
    test: set[int],
    boxes: int,
    *,
    n: int,
    size: int,
    seed: int,
    difficulty: float,
    label_noise: float,
) -> dict[str, Any]:
    """The marker file's record: the arguments, the counts, and the real table the labels were drawn from."""
    source = source_table_path()
    return {
        "generator": "harness.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "n": n,
        "size": size,
        "seed": seed,
        "difficulty": difficulty,
        "label_noise": label_noise,
        "patients": int(table["Patient ID"].nunique()),
        "test_images": int(table["Patient ID"].isin(test).sum()),
        "boxes": boxes,
        "source_table": {
            "file": f"torchxrayvision/{SOURCE_TABLE}",
            "torchxrayvision": _version("torchxrayvision"),
            "sha256": sha256(source),
        },
    }


def generate(
    out: Path | str,
    *,
    n: int = 3000,
    size: int = 256,
    seed: int = 0,
    difficulty: float = 0.5,
    label_noise: float = 0.0,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write an NIH Kaggle-layout tree of n phantoms to `out` and return its path.

    The tree is built beside `out` and moved into place only when complete, so an
    interrupted run never leaves something that looks like a dataset.
    """
    check_arguments(n=n, size=size, difficulty=difficulty, label_noise=label_noise, workers=workers)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"synthetic dataset: {out} already exists and is not empty; remove it or choose another --out"
        )
    table = sample_table(n, seed=seed)
    truth = nih.label_matrix(table["Finding Labels"], source=f"torchxrayvision/{SOURCE_TABLE}").astype(bool)
    written = noisy(truth, label_noise, seed)
    test = draw_test_patients(table["Patient ID"].to_numpy(), seed)

    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier, killed run of this same process id
    try:
        box_lines = _render_tree(
            tmp, table, truth, n=n, size=size, seed=seed, difficulty=difficulty, workers=workers, progress=progress
        )
        _write_tables(tmp, table, written, test, box_lines)
        meta = _marker(
            table, test, len(box_lines) - 1, n=n, size=size, seed=seed, difficulty=difficulty, label_noise=label_noise
        )
        (tmp / nih.SYNTHETIC_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty, checked above; os.replace cannot move a folder onto a non-empty one
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = store.write_failed(exc, out)  # a full disk, in one line: the renderers' tracebacks say no more
        if failed is not None:
            raise failed from None
        raise
    return out


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_tables(root: Path, table: pd.DataFrame, labels: np.ndarray, test: set[int], box_lines: list[str]) -> None:
    """Data_Entry_2017.csv, the two official lists and BBox_List_2017.csv, formatted like NIH's."""
    cols = [
        "Image Index",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    lines = [ENTRY_HEADER]
    for row, lab in zip(table[cols].itertuples(index=False), labels):
        name, follow, pid, age, sex, view, w, h, sx, sy = row
        lines.append(f"{name},{nih.label_text(lab)},{follow},{pid},{age},{sex},{view},{w},{h},{sx},{sy},")
    (root / nih.ENTRY_FILE).write_text("\n".join(lines) + "\n")
    in_test = table["Patient ID"].isin(test).to_numpy()
    names = table["Image Index"].to_numpy()
    (root / nih.TRAIN_VAL_FILE).write_text("".join(f"{x}\n" for x in names[~in_test]))
    (root / nih.TEST_FILE).write_text("".join(f"{x}\n" for x in names[in_test]))
    (root / nih.BBOX_FILE).write_text("\n".join(box_lines) + "\n")


# The embedded set is small and plain on purpose: a 2-core CPU renders it in about half a minute and a
# small CNN learns from it within minutes (the demo); `harness data synth` makes larger, harder ones.
EMBEDDED = {"n": 4500, "size": 128, "difficulty": 0.2}


def default_root(
    cache_dir: Path | str,
    *,
    n: int = EMBEDDED["n"],
    size: int = EMBEDDED["size"],
    seed: int = 0,
    difficulty: float = EMBEDDED["difficulty"],
) -> Path:
    """The embedded default dataset: generated once into cache_dir, reused after.

    Safe when several processes ask at once: one generates under a file lock, the others wait
    for it and then reuse its tree.
    """
    check_arguments(n=n, size=size, difficulty=difficulty)
    cache = Path(cache_dir).expanduser()
    root = cache / f"synthetic-n{n}-s{size}-d{difficulty:g}-seed{seed}-v{GENERATOR_VERSION}"
    if (root / nih.SYNTHETIC_MARKER).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with store.exclusive(cache / f"{root.name}.lock"):
        if not (root / nih.SYNTHETIC_MARKER).is_file():
            _sweep_stale(root)
            generate(root, n=n, size=size, seed=seed, difficulty=difficulty)
    return root


def _sweep_stale(out: Path) -> None:
    """Remove half-built trees beside `out` whose process was killed; only safe under default_root's lock."""
    for old in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's
