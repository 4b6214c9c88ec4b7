"""Writes an NIH-layout tree of rendered chest phantoms whose labels are sampled from the real NIH table."""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import numbers
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness import store
from harness.config import ConfigError
from harness.data import nih
from harness.registry import Registry

GENERATOR_VERSION = 1  # bump whenever the same arguments would write different bytes

Box = tuple[float, float, float, float]  # x, y, w, h in the image's own pixels

SOURCE_TABLE = "data/Data_Entry_2017_v2020.csv.gz"  # inside the torchxrayvision package
IMAGES_PER_FOLDER = 10_000  # NIH's images_NNN/images/ folders hold about 10,000 each
POOL_MIN_PIXELS = 4_000_000  # less work than this (~1.5 s on one core) renders in-process: starting workers costs more
TEST_SHARE = 0.2  # Kaggle's official split is patient-wise, about 80/20 by images
BOX_SPELLING = {"Infiltration": "Infiltrate"}  # BBox_List_2017.csv's own spelling
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)  # the 2017 file's trailing comma
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,,,,"  # x,y,w,h spill into unnamed columns

# Independent random streams, so that changing one draw (say the label noise) leaves the others alone.
_SAMPLE, _SPLIT, _NOISE, _IMAGE, _PATIENT = range(5)


# --- the real NIH label table ------------------------------------------------------------------------


def source_table_path() -> Path:
    """The real NIH label table shipped inside torchxrayvision (found without importing it: that costs seconds)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the synthetic dataset samples labels from torchxrayvision's copy of the NIH table; "
            "install torchxrayvision (pip install torchxrayvision)"
        )
    path = Path(spec.submodule_search_locations[0]) / SOURCE_TABLE
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing; reinstall torchxrayvision, whose copy of the NIH table "
            f"the synthetic dataset samples from"
        )
    return path


@functools.lru_cache(maxsize=1)
def _real_table() -> pd.DataFrame:
    table = pd.read_csv(source_table_path(), keep_default_na=False)
    # Patients and their follow-ups in NIH's own order, so whole patients are contiguous.
    return table.sort_values(["Patient ID", "Follow-up #"], kind="stable").reset_index(drop=True)


def sample_table(n: int, *, seed: int) -> pd.DataFrame:
    """n rows of the real NIH table, whole patients drawn at random with their follow-ups in order.

    Patients are renumbered 1..P in the order drawn and follow-ups 0..k-1, so file names stay
    NIH-like; the last patient is cut short to make exactly n images. Columns are the
    Data_Entry_2017 ones; `Finding Labels` holds the true (drawn) labels.
    """
    real = _real_table()
    if n > len(real):
        raise ConfigError(
            f"synthetic dataset: n={n} is more than the {len(real)} images of the NIH table it is sampled from"
        )
    pid = real["Patient ID"].to_numpy()
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    sizes = np.diff(np.r_[starts, len(pid)])
    order = np.random.default_rng([seed, _SAMPLE]).permutation(len(starts))
    taken = int(np.searchsorted(np.cumsum(sizes[order]), n, side="left")) + 1
    rows, new_pid, follow = [], [], []
    left = n
    for k, p in enumerate(order[:taken]):
        m = min(int(sizes[p]), left)
        rows.append(np.arange(starts[p], starts[p] + m))
        new_pid.append(np.full(m, k + 1))
        follow.append(np.arange(m))
        left -= m
    out = real.iloc[np.concatenate(rows)].reset_index(drop=True)
    out["Patient ID"] = np.concatenate(new_pid)
    out["Follow-up #"] = np.concatenate(follow)
    out["Image Index"] = [f"{p:08d}_{f:03d}.png" for p, f in zip(out["Patient ID"], out["Follow-up #"])]
    return out


def label_matrix(finding_labels: Sequence[str]) -> np.ndarray:
    """'|'-joined labels -> (n, 14) bool in nih.FINDINGS order."""
    index = {f: j for j, f in enumerate(nih.FINDINGS)}
    out = np.zeros((len(finding_labels), len(nih.FINDINGS)), dtype=bool)
    for i, text in enumerate(finding_labels):
        for name in text.split("|"):
            if name != nih.NO_FINDING:
                out[i, index[name]] = True
    return out


def _label_text(row: np.ndarray) -> str:
    names = sorted(f for f, on in zip(nih.FINDINGS, row) if on)
    return "|".join(names) if names else nih.NO_FINDING


def _noisy(truth: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Flip each label independently with probability `rate`, like NIH's text-mined labels' errors."""
    # Drawn whatever the rate, so a higher rate flips a superset of a lower one's labels.
    flips = np.random.default_rng([seed, _NOISE]).random(truth.shape) < rate
    return truth ^ flips


def _test_patients(patient_ids: np.ndarray, seed: int) -> set[int]:
    """Whole patients, drawn at random, until the test list holds its share of the images."""
    ids, sizes = np.unique(patient_ids, return_counts=True)
    if len(ids) < 2:
        return set()
    order = np.random.default_rng([seed, _SPLIT]).permutation(len(ids))
    taken = np.cumsum(sizes[order])
    target = TEST_SHARE * len(patient_ids)
    k = int(np.searchsorted(taken, target, side="left")) + 1  # the first count of patients reaching the share
    if k > 1 and target - taken[k - 2] < taken[k - 1] - target:
        k -= 1  # one patient fewer lands closer (a patient can hold a hundred images)
    return {int(p) for p in ids[order[: min(k, len(ids) - 1)]]}


# --- the phantom -------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """One patient's chest, in a frame where the thorax spans about [-0.85, 0.85] across."""

    body_w: float
    lung_x: float  # distance of each lung's centre from the midline
    lung_y: float
    lung_w: float
    lung_h: float
    heart_x: float  # to the patient's left, which is the image's right on a PA film
    heart_y: float
    heart_w: float
    heart_h: float
    diaphragm: float  # where the lung base is cut, in lung heights below the lung's centre
    dome: float  # how far each hemidiaphragm's dome rises above that
    rib_step: float
    rib_start: float
    rib_curve: float
    air: float  # how much darker aerated lung is than soft tissue
    markings: float


def _anatomy(rng: np.random.Generator) -> Anatomy:
    u = rng.uniform
    return Anatomy(
        body_w=u(0.84, 0.96),
        lung_x=u(0.37, 0.42),
        lung_y=u(-0.06, 0.0),
        lung_w=u(0.27, 0.32),
        lung_h=u(0.64, 0.7),
        heart_x=u(0.1, 0.15),
        heart_y=u(0.17, 0.22),
        heart_w=u(0.27, 0.31),
        heart_h=u(0.18, 0.22),
        diaphragm=u(0.72, 0.8),
        dome=u(0.1, 0.15),
        rib_step=u(0.105, 0.125),
        rib_start=u(-0.78, -0.72),
        rib_curve=u(0.5, 0.8),
        air=u(0.26, 0.32),
        markings=u(0.07, 0.1),
    )


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (d below -width) to 1 (d above width); a smoothstep costs less than tanh."""
    t = np.clip(0.5 + (0.4 / width) * d, 0.0, 1.0).astype(np.float32, copy=False)
    return t * t * (3.0 - 2.0 * t)


class Chest:
    """One phantom being drawn: the grid in the patient's frame, the anatomy, and layers findings add to."""

    def __init__(self, size: int, anatomy: Anatomy, *, shift: tuple[float, float], scale: float) -> None:
        self.size, self.a, self.shift, self.scale = size, anatomy, shift, scale
        pix = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        self.X = ((pix - shift[0]) / scale)[None, :]
        self.Y = ((pix - shift[1]) / scale)[:, None]
        self.px = 2.0 / size / scale  # one pixel in frame units
        self.edge = max(1.2 * self.px, 0.008)  # anatomical edges are a little soft at any size
        shape = (size, size)
        self.opacity = np.zeros(shape, np.float32)  # share of the lung's air replaced (fluid, cells, tissue)
        self.extra = np.zeros(shape, np.float32)  # density added on top (masses outside the lung, lines)
        self.air_gain = np.ones(shape, np.float32)  # > 1: hyperlucent
        self.markings_gain = np.ones(shape, np.float32)  # 0: no lung markings (pneumothorax)

    # -- anatomy, after findings have reshaped it --

    def lung_rho(self, side: int, *, shrink: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
        """Normalised radius of one lung (0 centre, 1 edge); side 0 is the image's left (patient's right).

        shrink, dx, dy give a smaller lung of the same shape, moved (a collapsed lung).
        """
        a = self.a
        cx, cy = (-1, 1)[side] * a.lung_x + dx, a.lung_y + dy
        h = a.lung_h * shrink
        t = np.clip((self.Y - (cy - h)) / (2 * h), 0, 1)
        width = a.lung_w * shrink * (0.6 + 0.55 * t)  # narrow apex, broad base
        # A superellipse: straighter lateral walls and deeper costophrenic angles than an ellipse.
        u, v = np.abs((self.X - cx) / width), np.abs((self.Y - cy) / h)
        return np.cbrt(u * u * u + v * v * v)

    def diaphragm_y(self, side: int, X: np.ndarray | float) -> np.ndarray | float:
        a = self.a
        cx = (-1, 1)[side] * a.lung_x
        base = a.lung_y + a.lung_h * a.diaphragm + (0.0, 0.035)[side]  # the right dome sits higher
        return base - a.dome * np.clip(1 - ((X - cx) / (1.15 * a.lung_w)) ** 2, 0, 1)

    def rasterise(self) -> None:
        """Lung and heart masks from the (possibly reshaped) anatomy, for findings to draw into."""
        a, X, Y, e = self.a, self.X, self.Y, self.edge
        # The heart's long axis runs down and to the patient's left, towards the apex.
        tilt = 0.4
        u = (X - a.heart_x) * math.cos(tilt) + (Y - a.heart_y) * math.sin(tilt)
        v = -(X - a.heart_x) * math.sin(tilt) + (Y - a.heart_y) * math.cos(tilt)
        self.heart = _soft(1 - np.sqrt((u / a.heart_w) ** 2 + (v / a.heart_h) ** 2), e / a.heart_w)
        mediastinum = _soft(0.1 + 0.05 * (Y + 1) - np.abs(X - 0.02), e) * _soft(a.heart_y - Y, 0.05)
        knob = self.blob(0.1, a.lung_y - 0.3 * a.lung_h, 0.065)  # aortic knob
        self.mediastinum = np.maximum(mediastinum, knob)
        self.lung_raw = tuple(_soft(1 - self.lung_rho(s), e / a.lung_w) for s in (0, 1))
        # What shows: lung above the diaphragm and outside the heart's and mediastinum's shadow.
        hidden = (1 - self.heart) * (1 - self.mediastinum)
        self.lungs = tuple(self.lung_raw[s] * _soft(self.diaphragm_y(s, X) - Y, e) * hidden for s in (0, 1))

    # -- placing findings --

    def point_in_lung(
        self,
        rng: np.random.Generator,
        side: int,
        *,
        rho: tuple[float, float] = (0.2, 0.65),
        angle: tuple[float, float] = (0.0, 2 * math.pi),
    ) -> tuple[float, float]:
        """A random point of one lung where it shows (not behind the heart or below the diaphragm)."""
        a = self.a
        cx = (-1, 1)[side] * a.lung_x
        for _ in range(20):
            r, th = rng.uniform(*rho), rng.uniform(*angle)
            x = cx + r * a.lung_w * math.cos(th)
            y = min(a.lung_y + r * a.lung_h * math.sin(th), float(self.diaphragm_y(side, x)) - 0.08)
            col = int((x * self.scale + self.shift[0] + 1) / 2 * self.size)
            row = int((y * self.scale + self.shift[1] + 1) / 2 * self.size)
            if 0 <= row < self.size and 0 <= col < self.size and self.lungs[side][row, col] > 0.5:
                break
        return x, y

    def box(self, x0: float, y0: float, x1: float, y1: float) -> Box:
        """A frame-coordinate rectangle as (x, y, w, h) in pixels, clipped to the image."""

        def to_px(v: float, offset: float) -> float:
            return float(np.clip((v * self.scale + offset + 1) / 2 * self.size, 0, self.size))

        px0, px1 = to_px(x0, self.shift[0]), to_px(x1, self.shift[0])
        py0, py1 = to_px(y0, self.shift[1]), to_px(y1, self.shift[1])
        return (px0, py0, max(px1 - px0, 1.0), max(py1 - py0, 1.0))

    def mask_box(self, mask: np.ndarray, fallback: tuple[float, float, float, float]) -> Box:
        """The pixel box around where `mask` is over half its peak; the frame rectangle if it is empty."""
        peak = float(mask.max())
        if peak <= 0:
            return self.box(*fallback)
        rows = np.flatnonzero((mask > 0.5 * peak).any(axis=1))
        cols = np.flatnonzero((mask > 0.5 * peak).any(axis=0))
        if len(rows) == 0 or len(cols) == 0:
            return self.box(*fallback)
        return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))

    def field(self, rng: np.random.Generator, cycles: float) -> np.ndarray:
        """A smooth random field (unit std) with features about 1/cycles of the image across.

        Drawn in Fourier space on a fixed set of frequencies, so one seed gives the same field
        at every image size.
        """
        k = max(2, min(int(2 * cycles), self.size // 2 - 1))
        ky = np.fft.fftfreq(2 * k + 1, 1 / (2 * k + 1))[:, None]
        kx = np.arange(k + 1)[None, :]
        envelope = np.exp(-(kx**2 + ky**2) / (2 * cycles**2))
        coef = (rng.standard_normal((2 * k + 1, k + 1)) + 1j * rng.standard_normal((2 * k + 1, k + 1))) * envelope
        spectrum = np.zeros((self.size, self.size // 2 + 1), np.complex64)
        spectrum[np.r_[0 : k + 1, self.size - k : self.size], : k + 1] = coef
        out = np.fft.irfft2(spectrum, s=(self.size, self.size))
        return (out / (out.std() + 1e-12)).astype(np.float32)

    def blob(
        self,
        x: float,
        y: float,
        r: float,
        *,
        lobes: float = 0.0,
        rng: np.random.Generator | None = None,
        edge: float | None = None,
    ) -> np.ndarray:
        """A round opacity of radius r, its outline wavy by `lobes` (0 smooth)."""
        dx, dy = self.X - x, self.Y - y
        d = np.sqrt(dx**2 + dy**2)
        if lobes and rng is not None:
            th = np.arctan2(dy, dx)
            ph = rng.uniform(0, 2 * math.pi, 3)
            wave = np.sin(3 * th + ph[0]) + 0.6 * np.sin(5 * th + ph[1]) + 0.4 * np.sin(7 * th + ph[2])
            r = r * (1 + lobes * wave / 2)
        return _soft(r - d, edge or self.edge)


# --- findings: each draws what radiologists describe, and returns its true box -------------------------


@dataclass(frozen=True)
class Finding:
    """How one finding changes a phantom: `reshape` edits the anatomy first, `draw` adds to the layers.

    Both take (target, rng, strength); strength in (0, 1] scales contrast (and size changes)
    down as difficulty rises. `draw` returns the finding's box in pixels.
    """

    draw: Callable[[Chest, np.random.Generator, float], Box]
    reshape: Callable[[Anatomy, np.random.Generator, float], None] | None = None


LESIONS: Registry[Finding] = Registry("finding")


def _finding(name: str, *, reshape: Callable[[Anatomy, np.random.Generator, float], None] | None = None) -> Callable:
    def add(draw: Callable[[Chest, np.random.Generator, float], Box]) -> Callable:
        LESIONS.register(name)(Finding(draw=draw, reshape=reshape))
        return draw

    return add


def _enlarge_heart(a: Anatomy, rng: np.random.Generator, s: float) -> None:
    # Cardiothoracic ratio from ~0.4 to well over 0.5; taller too, and sitting on the diaphragm.
    grow = 1 + s * rng.uniform(0.35, 0.55)
    a.heart_w *= grow
    a.heart_h *= 1 + (grow - 1) * 0.5
    a.heart_y += (grow - 1) * 0.05


@_finding("Cardiomegaly", reshape=_enlarge_heart)
def _cardiomegaly(c: Chest, rng: np.random.Generator, s: float) -> Box:
    return c.mask_box(c.heart, (-0.3, -0.1, 0.5, 0.5))  # drawn by the anatomy, once reshaped


def _overinflate(a: Anatomy, rng: np.random.Generator, s: float) -> None:
    # Hyperinflated lungs push a flattened diaphragm down.
    a.lung_h *= 1 + 0.08 * s
    a.dome *= 1 - 0.75 * s
    a.diaphragm += 0.08 * s
    a.heart_w *= 1 - 0.12 * s  # the long, narrow heart of emphysema


@_finding("Emphysema", reshape=_overinflate)
def _emphysema(c: Chest, rng: np.random.Generator, s: float) -> Box:
    lungs = np.maximum(*c.lungs)
    c.air_gain += (0.4 * s * lungs).astype(np.float32)
    c.markings_gain *= (1 - 0.7 * s * lungs).astype(np.float32)  # vessels pruned
    for _ in range(rng.integers(1, 4)):  # a few bullae, mostly apical
        side = int(rng.integers(2))
        x, y = c.point_in_lung(rng, side, rho=(0.45, 0.75), angle=(math.pi * 1.1, math.pi * 1.9))
        bulla = c.blob(x, y, rng.uniform(0.05, 0.1)) * c.lungs[side]
        c.air_gain += (0.4 * s * bulla).astype(np.float32)
        c.markings_gain *= 1 - bulla
    return c.mask_box(lungs, (-1, -1, 1, 1))


@_finding("Effusion")
def _effusion(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    sides = [int(rng.integers(2))] if rng.random() < 0.7 else [0, 1]
    fluid = np.zeros_like(c.opacity)
    for side in sides:
        cx = (-1, 1)[side] * a.lung_x
        base = float(c.diaphragm_y(side, cx + (-1, 1)[side] * a.lung_w))
        level = base - rng.uniform(0.12, 0.35) * a.lung_h
        # Meniscus: the fluid climbs the lateral chest wall, so the surface curves up laterally.
        lateral = np.clip(((c.X - cx) * (-1, 1)[side]) / a.lung_w, -1, 1.4)
        surface = level - 0.12 * np.clip(lateral + 0.3, 0, None) ** 2
        fluid = np.maximum(fluid, _soft(c.Y - surface, 2 * c.edge) * c.lung_raw[side])
    c.opacity += (0.95 * s * fluid).astype(np.float32)
    c.extra += (0.08 * s * fluid).astype(np.float32)  # fluid is denser than the lung it fills, hiding the dome
    return c.mask_box(fluid, (-1, 0, 1, 1))


@_finding("Pneumothorax")
def _pneumothorax(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    side = int(rng.integers(2))
    cx = (-1, 1)[side] * a.lung_x
    k = rng.uniform(0.6, 0.85)  # the collapsed lung keeps this share of its size, towards the hilum
    rho = c.lung_rho(side, shrink=k, dx=-(-1, 1)[side] * (1 - k) * a.lung_w * 0.6, dy=(1 - k) * a.lung_h * 0.5)
    lung = c.lungs[side]
    space = (lung * (1 - _soft(1 - rho, c.edge))).astype(np.float32)  # air outside the lung edge, inside the chest
    c.markings_gain *= 1 - space
    c.air_gain += (0.5 * s * space).astype(np.float32)
    line = np.exp(-((((1 - rho) * k * a.lung_w) / max(c.px, 0.006)) ** 2)) * lung  # the visceral pleural line
    c.extra += (0.15 * s * line).astype(np.float32)
    return c.mask_box(space, (cx - a.lung_w, a.lung_y - a.lung_h, cx + a.lung_w, a.lung_y + a.lung_h))


def _round_opacity(
    c: Chest, rng: np.random.Generator, s: float, *, radius: tuple[float, float], lobes: float, density: float
) -> Box:
    side = int(rng.integers(2))
    r = rng.uniform(*radius)
    x, y = c.point_in_lung(rng, side, rho=(0.15, 0.65))
    spot = c.blob(x, y, r, lobes=lobes, rng=rng, edge=max(c.edge, 0.15 * r))
    c.opacity += (density * s * spot).astype(np.float32)
    c.extra += (0.1 * s * spot).astype(np.float32)  # solid tissue is denser than the lung it replaces
    grow = 1 + lobes
    return c.box(x - r * grow, y - r * grow, x + r * grow, y + r * grow)


@_finding("Nodule")
def _nodule(c: Chest, rng: np.random.Generator, s: float) -> Box:
    return _round_opacity(c, rng, s, radius=(0.035, 0.06), lobes=0.0, density=0.9)  # under 3 cm


@_finding("Mass")
def _mass(c: Chest, rng: np.random.Generator, s: float) -> Box:
    return _round_opacity(c, rng, s, radius=(0.1, 0.17), lobes=0.15, density=1.0)  # over 3 cm, lobulated


def _airspace(
    c: Chest,
    rng: np.random.Generator,
    s: float,
    *,
    density: float,
    extent: tuple[float, float],
    patchiness: float,
    cycles: float,
    bilateral: float = 0.0,
) -> Box:
    """Patchy airspace opacity: a region of the lung filled in where a random field is high."""
    sides = [0, 1] if rng.random() < bilateral else [int(rng.integers(2))]
    patches = c.field(rng, cycles)
    region = np.zeros_like(c.opacity)
    for side in sides:
        x, y = c.point_in_lung(rng, side, rho=(0.2, 0.55), angle=(0.0, math.pi))  # lower zones are commoner
        rx, ry = rng.uniform(*extent), rng.uniform(*extent)
        wobble = 0.25 * c.field(rng, 3.0)
        d = 1 - np.sqrt(((c.X - x) / rx) ** 2 + ((c.Y - y) / ry) ** 2) + wobble * 0.4
        region = np.maximum(region, _soft(d, 0.15) * c.lungs[side])
    fill = region * _soft(patches + 1.5 - 3.0 * patchiness, 0.5)
    c.opacity += (density * s * fill).astype(np.float32)
    return c.mask_box(fill, (-1, -1, 1, 1))


@_finding("Consolidation")
def _consolidation(c: Chest, rng: np.random.Generator, s: float) -> Box:
    before = c.opacity.copy()
    box = _airspace(c, rng, s, density=0.95, extent=(0.12, 0.2), patchiness=0.15, cycles=4.0)
    # Air bronchograms: dark branching lines where a field crosses zero inside the dense region.
    tubes = np.exp(-((c.field(rng, 10.0) / 0.12) ** 2)) * _soft(c.opacity - before - 0.5 * s, 0.1)
    c.extra -= (0.1 * s * tubes).astype(np.float32)
    return box


@_finding("Pneumonia")
def _pneumonia(c: Chest, rng: np.random.Generator, s: float) -> Box:
    return _airspace(c, rng, s, density=0.7, extent=(0.12, 0.22), patchiness=0.45, cycles=7.0, bilateral=0.2)


@_finding("Infiltration")
def _infiltration(c: Chest, rng: np.random.Generator, s: float) -> Box:
    return _airspace(c, rng, s, density=0.45, extent=(0.15, 0.28), patchiness=0.6, cycles=10.0, bilateral=0.4)


@_finding("Edema")
def _edema(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    haze = np.zeros_like(c.opacity)
    for side in (0, 1):  # bilateral, perihilar: the "bat wing"
        hx = (-1, 1)[side] * (a.lung_x - 0.4 * a.lung_w)
        hy = a.lung_y + rng.uniform(0.05, 0.15) * a.lung_h
        sx, sy = rng.uniform(0.14, 0.2), rng.uniform(0.22, 0.3)
        haze = np.maximum(haze, np.exp(-(((c.X - hx) / sx) ** 2 + ((c.Y - hy) / sy) ** 2)) * c.lungs[side])
    # Kerley B lines: short horizontal septal lines at the lateral bases.
    base = _soft(c.Y - (a.lung_y + 0.35 * a.lung_h), 0.03) * _soft(np.abs(c.X) - a.lung_x - 0.4 * a.lung_w, 0.02)
    septa = np.cos(c.Y * math.pi / 0.03) ** 16 * base * np.maximum(*c.lungs)
    c.opacity += (0.6 * s * haze + 0.35 * s * septa).astype(np.float32)
    return c.mask_box(haze, (-0.7, -0.5, 0.7, 0.4))


def _shrink_lungs(a: Anatomy, rng: np.random.Generator, s: float) -> None:
    a.lung_h *= 1 - 0.06 * s  # fibrosis loses volume


@_finding("Fibrosis", reshape=_shrink_lungs)
def _fibrosis(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    # Reticulation: the zero-crossings of a fine random field form a net of lines.
    net = np.exp(-((c.field(rng, 14.0) / 0.35) ** 2))
    zone = np.zeros_like(c.opacity)
    for side in (0, 1):  # basal and peripheral, both lungs
        peripheral = _soft(c.lung_rho(side) - 0.35, 0.15)
        zone = np.maximum(zone, peripheral * _soft(c.Y - a.lung_y + 0.1, 0.12) * c.lungs[side])
    c.opacity += (0.55 * s * net * zone + 0.1 * s * zone).astype(np.float32)
    return c.mask_box(zone, (-1, -0.2, 1, 0.6))


@_finding("Pleural_Thickening")
def _pleural_thickening(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    side = int(rng.integers(2))
    width = rng.uniform(0.025, 0.05)
    rim = _soft(c.lung_rho(side) - (1 - width / a.lung_w), 0.3 * width / a.lung_w) * c.lungs[side]
    if rng.random() < 0.3:  # an apical cap
        span = _soft(a.lung_y - 0.55 * a.lung_h - c.Y, 0.03)
    else:  # a band along the lateral chest wall
        y0 = a.lung_y + rng.uniform(-0.5, 0.2) * a.lung_h
        span = _soft(c.Y - y0, 0.03) * _soft(y0 + rng.uniform(0.25, 0.5) - c.Y, 0.03)
        span = span * _soft((c.X * (-1, 1)[side]) - a.lung_x, 0.03)
    band = rim * span
    c.opacity += (0.95 * s * band).astype(np.float32)
    c.extra += (0.05 * s * band).astype(np.float32)
    return c.mask_box(band, (-1, -1, 1, 1))


@_finding("Atelectasis")
def _atelectasis(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    side = int(rng.integers(2))
    if rng.random() < 0.5:  # plate-like: a thin line, near horizontal, in the lower zone
        x, y = c.point_in_lung(rng, side, rho=(0.35, 0.7), angle=(0.3, math.pi - 0.3))
        half, th = rng.uniform(0.08, 0.16), rng.uniform(-0.3, 0.3)
        u = (c.X - x) * math.cos(th) + (c.Y - y) * math.sin(th)
        v = -(c.X - x) * math.sin(th) + (c.Y - y) * math.cos(th)
        thick = rng.uniform(0.012, 0.025)
        shape = np.exp(-((v / thick) ** 2)) * _soft(half - np.abs(u), 0.02)
    else:  # a wedge from the hilum to the pleura (segmental collapse)
        hx = (-1, 1)[side] * (a.lung_x - 0.55 * a.lung_w)
        hy = a.lung_y - 0.05 * a.lung_h
        direction = rng.uniform(-0.35, 0.3) * math.pi  # outwards: an upper or a lower lobe
        if side == 0:
            direction = math.pi - direction
        th = np.arctan2(c.Y - hy, c.X - hx)
        off = np.abs(np.angle(np.exp(1j * (th - direction))))
        r = np.sqrt((c.X - hx) ** 2 + (c.Y - hy) ** 2)
        shape = _soft(rng.uniform(0.12, 0.22) - off, 0.04) * _soft(r - 0.08, 0.03)
    shape = shape * c.lungs[side]
    c.opacity += (0.85 * s * shape).astype(np.float32)
    return c.mask_box(shape, (-1, -1, 1, 1))


@_finding("Hernia")
def _hernia(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    # Hiatal hernia: a round retrocardiac mass above the diaphragm, often holding an air-fluid level.
    r = rng.uniform(0.09, 0.14)
    x = rng.uniform(-0.02, 0.06)
    y = a.heart_y + 0.4 * a.heart_h
    sac = c.blob(x, y, r)
    level = y - rng.uniform(-0.2, 0.5) * r
    gas = sac * _soft(level - c.Y, c.edge)
    c.extra += (0.12 * s * (sac - gas) - 0.15 * s * gas).astype(np.float32)
    c.opacity += (0.8 * s * sac).astype(np.float32)
    return c.box(x - r, y - r, x + r, y + r)


def _markings(c: Chest, rng: np.random.Generator) -> np.ndarray:
    """Vessels fanning out from each hilum, branching and thinning towards the periphery."""
    a = c.a
    n_angles, n_radii = 96, 14
    # Each half of the image belongs to one lung, fanning from that lung's hilum.
    side = (c.X > 0).astype(np.intp)
    hx = np.where(side == 1, 1.0, -1.0).astype(np.float32) * (a.lung_x - 0.65 * a.lung_w)
    hy = a.lung_y + 0.1 * a.lung_h
    dx, dy = c.X - hx, c.Y - hy
    r = np.sqrt(dx**2 + dy**2)
    # A lattice over (angle, radius) per lung: vessels run along the radius and break where they branch.
    lattice = np.clip(rng.standard_normal((2, n_angles + 1, n_radii)), 0, None).astype(np.float32) ** 1.5
    lattice[:, -1] = lattice[:, 0]  # wrap around the circle
    fa = (np.arctan2(dy, dx) + math.pi) * (n_angles / (2 * math.pi))
    fb = np.minimum(r / 0.1, n_radii - 1.001)
    i, j = np.minimum(fa.astype(np.intp), n_angles - 1), fb.astype(np.intp)
    fa, fb = fa - i, fb - j
    flat = lattice.reshape(-1)
    at = (side * (n_angles + 1) + i) * n_radii + j
    vessels = (flat[at] * (1 - fb) + flat[at + 1] * fb) * (1 - fa) + (
        flat[at + n_radii] * (1 - fb) + flat[at + n_radii + 1] * fb
    ) * fa
    # Thick near the hilum, fading out before the pleura; no spikes at the hilum itself.
    taper = np.exp(-r / 0.35) * (1 - np.exp(-((r / 0.07) ** 2)))
    return vessels * taper + 0.2 * c.field(rng, 12.0)


def render(
    labels: Sequence[str],
    *,
    size: int,
    rng: np.random.Generator,
    difficulty: float,
    patient: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, Box]]:
    """One phantom, (size, size) uint8, and finding -> box (x, y, w, h) in its own pixels.

    `patient` draws the anatomy a patient keeps across follow-ups (None: drawn from rng). Each
    finding has its own random stream, so a finding's presence never changes the rest of the image.
    """
    _check(size=size, difficulty=difficulty)
    wanted = {name for name in labels if name != nih.NO_FINDING}
    for name in wanted:
        if name not in LESIONS:
            raise ConfigError(LESIONS.unknown(name))
    s = 1.0 - 0.85 * difficulty  # lesion contrast; even the hardest setting leaves a trace
    anatomy = _anatomy(patient if patient is not None else rng)
    # This film: positioning, inspiration, exposure, and the noise and finding streams.
    shift = (float(rng.normal(0, 0.025)), float(rng.normal(0.03, 0.025)))
    scale = float(rng.uniform(0.93, 1.05))
    anatomy.diaphragm += float(rng.normal(0, 0.03))
    exposure = rng.uniform(0.0, 0.1), rng.uniform(1.05, 1.3), rng.uniform(0.9, 1.25)
    noise_sd = float(rng.uniform(0.008, 0.025))
    seeds = rng.integers(0, 2**63, size=len(LESIONS.names()) + 1)
    streams = {name: np.random.default_rng(seed) for name, seed in zip(LESIONS, seeds)}
    texture_rng = np.random.default_rng(seeds[-1])

    for name in sorted(wanted):
        if LESIONS[name].reshape is not None:
            LESIONS[name].reshape(anatomy, streams[name], s)
    c = Chest(size, anatomy, shift=shift, scale=scale)
    c.rasterise()
    markings = _markings(c, texture_rng)
    film = c.field(texture_rng, 1.5)
    grain = texture_rng.standard_normal((size, size)).astype(np.float32)

    boxes: dict[str, Box] = {}
    for name in sorted(wanted):
        boxes[name] = LESIONS[name].draw(c, streams[name], s)

    a, X, Y, e = anatomy, c.X, c.Y, c.edge
    body = _soft(1 - ((X / a.body_w) ** 4 + ((Y - 0.3) / 1.25) ** 4), 0.05)
    spine = _soft(0.055 - np.abs(X), e) * (0.7 + 0.3 * np.cos(Y * math.pi / 0.06) ** 2)
    cage = _soft(a.lung_x + a.lung_w + 0.06 - np.abs(X), e) * _soft(a.lung_y + a.lung_h - Y, 0.05)
    phase = (Y - a.rib_start - a.rib_curve * X**2) / a.rib_step
    ribs = np.exp(-((((phase % 1) - 0.5) / 0.17) ** 2)) * _soft(phase, 0.1) * _soft(10 - phase, 0.1) * cage
    front = (Y - a.rib_start - 0.35 + 0.5 * X**2) / (1.3 * a.rib_step)
    ribs = ribs + 0.4 * np.exp(-((((front % 1) - 0.5) / 0.15) ** 2)) * _soft(front, 0.1) * _soft(6 - front, 0.1) * cage
    clav = (
        np.exp(-(((Y + 0.74 + 0.2 * (np.abs(X) - 0.08)) / 0.028) ** 2))
        * _soft(0.62 - np.abs(X), 0.03)
        * _soft(np.abs(X) - 0.06, 0.02)
    )
    # Findings' opacity replaces the air of the lung that shows, and the vessels seen through it.
    aerated = np.maximum(*c.lungs) * (1 - np.clip(c.opacity, 0, 1))
    air = a.air * c.air_gain * aerated
    vessels = a.markings * markings * c.markings_gain * aerated
    density = (
        (0.5 * body + 0.03 * c.heart + 0.04 * c.mediastinum + 0.05 * spine + 0.08 * ribs + 0.1 * clav) * body
        - air
        + vessels
        + c.extra * body
    )
    bright, gain, gamma = exposure
    levels = np.linspace(0.0, 1.0, 4097, dtype=np.float32) ** gamma  # a table: cheaper than a power per pixel
    image = levels[(np.clip(bright + gain * density + 0.02 * film, 0, 1) * 4096).astype(np.intp)]
    image = image + noise_sd * grain
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), boxes


# --- writing the tree --------------------------------------------------------------------------------


def _check(*, n: int = 1, size: int = 32, difficulty: float = 0.0, label_noise: float = 0.0, workers: int = 0) -> None:
    def integer(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def real(v: object) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    problems = [
        (integer(n) and n >= 1, f"n={n!r}: need an integer >= 1"),
        (integer(size) and size >= 32, f"size={size!r}: need an integer >= 32 (pixels)"),
        (
            real(difficulty) and 0 <= difficulty <= 1,
            f"difficulty={difficulty!r}: need a number in [0, 1] (0 plain, 1 faint lesions)",
        ),
        (real(label_noise) and 0 <= label_noise <= 0.5, f"label_noise={label_noise!r}: need a rate in [0, 0.5]"),
        (integer(workers) and workers >= 0, f"workers={workers!r}: need an integer >= 0 (0 = all cores)"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(f"synthetic dataset: {message}")


def _folder(i: int) -> str:
    return f"images_{i // IMAGES_PER_FOLDER + 1:03d}/images"


def _render_chunk(job: tuple) -> list[tuple[str, dict[str, Box]]]:
    """Render and write one chunk of images; returns each image's boxes."""
    root, items, size, seed, difficulty = job
    out = []
    for index, name, pid, labels in items:
        image, boxes = render(
            labels,
            size=size,
            rng=np.random.default_rng([seed, _IMAGE, index]),
            difficulty=difficulty,
            patient=np.random.default_rng([seed, _PATIENT, pid]),
        )
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _coord(v: float) -> str:
    return repr(round(v, 4))


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
    _check(n=n, size=size, difficulty=difficulty, label_noise=label_noise, workers=workers)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"synthetic dataset: {out} already exists and is not empty; remove it or choose another --out"
        )
    table = sample_table(n, seed=seed)
    truth = label_matrix(table["Finding Labels"].tolist())
    written = _noisy(truth, label_noise, seed)
    test = _test_patients(table["Patient ID"].to_numpy(), seed)

    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier, killed run of this same process id
    try:
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
            for name, boxes in done:
                for finding, (x, y, w, h) in boxes.items():
                    x, y, w, h = (v * nih.BOX_SCALE / size for v in (x, y, w, h))
                    box_lines.append(
                        f"{name},{BOX_SPELLING.get(finding, finding)},"
                        f"{_coord(x)},{_coord(y)},{_coord(w)},{_coord(h)},,,"
                    )
        _write_tables(tmp, table, written, test, box_lines)
        source = source_table_path()
        meta = {
            "generator": "harness.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "n": n,
            "size": size,
            "seed": seed,
            "difficulty": difficulty,
            "label_noise": label_noise,
            "patients": int(table["Patient ID"].nunique()),
            "test_images": int(table["Patient ID"].isin(test).sum()),
            "boxes": len(box_lines) - 1,
            "source_table": {
                "file": f"torchxrayvision/{SOURCE_TABLE}",
                "torchxrayvision": _version("torchxrayvision"),
                "sha256": _sha256(source),
            },
        }
        (tmp / nih.SYNTHETIC_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty, checked above; os.replace cannot move a folder onto a non-empty one
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
        lines.append(f"{name},{_label_text(lab)},{follow},{pid},{age},{sex},{view},{w},{h},{sx},{sy},")
    (root / nih.ENTRY_FILE).write_text("\n".join(lines) + "\n")
    in_test = table["Patient ID"].isin(test).to_numpy()
    names = table["Image Index"].to_numpy()
    (root / nih.TRAIN_VAL_FILE).write_text("".join(f"{x}\n" for x in names[~in_test]))
    (root / nih.TEST_FILE).write_text("".join(f"{x}\n" for x in names[in_test]))
    (root / nih.BBOX_FILE).write_text("\n".join(box_lines) + "\n")


def default_root(cache_dir: Path | str, *, n: int = 3000, size: int = 256, seed: int = 0) -> Path:
    """The embedded default dataset: generated once into cache_dir, reused after.

    Safe when several processes ask at once: one generates under a file lock, the others wait
    for it and then reuse its tree.
    """
    _check(n=n, size=size)
    cache = Path(cache_dir).expanduser()
    root = cache / f"synthetic-n{n}-s{size}-seed{seed}-v{GENERATOR_VERSION}"
    if (root / nih.SYNTHETIC_MARKER).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with store.exclusive(cache / f"{root.name}.lock"):
        if not (root / nih.SYNTHETIC_MARKER).is_file():
            _sweep_stale(root)
            generate(root, n=n, size=size, seed=seed)
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
