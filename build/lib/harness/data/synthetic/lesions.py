"""The 14 lesion painters, one registered per NIH finding: each draws what radiologists describe and returns its box."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.data.synthetic.anatomy import Anatomy, Box, Chest, soft
from harness.registry import Registry


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
        fluid = np.maximum(fluid, soft(c.Y - surface, 2 * c.edge) * c.lung_raw[side])
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
    space = (lung * (1 - soft(1 - rho, c.edge))).astype(np.float32)  # air outside the lung edge, inside the chest
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
        region = np.maximum(region, soft(d, 0.15) * c.lungs[side])
    fill = region * soft(patches + 1.5 - 3.0 * patchiness, 0.5)
    c.opacity += (density * s * fill).astype(np.float32)
    return c.mask_box(fill, (-1, -1, 1, 1))


@_finding("Consolidation")
def _consolidation(c: Chest, rng: np.random.Generator, s: float) -> Box:
    before = c.opacity.copy()
    box = _airspace(c, rng, s, density=0.95, extent=(0.12, 0.2), patchiness=0.15, cycles=4.0)
    # Air bronchograms: dark branching lines where a field crosses zero inside the dense region.
    tubes = np.exp(-((c.field(rng, 10.0) / 0.12) ** 2)) * soft(c.opacity - before - 0.5 * s, 0.1)
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
    base = soft(c.Y - (a.lung_y + 0.35 * a.lung_h), 0.03) * soft(np.abs(c.X) - a.lung_x - 0.4 * a.lung_w, 0.02)
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
        peripheral = soft(c.lung_rho(side) - 0.35, 0.15)
        zone = np.maximum(zone, peripheral * soft(c.Y - a.lung_y + 0.1, 0.12) * c.lungs[side])
    c.opacity += (0.55 * s * net * zone + 0.1 * s * zone).astype(np.float32)
    return c.mask_box(zone, (-1, -0.2, 1, 0.6))


@_finding("Pleural_Thickening")
def _pleural_thickening(c: Chest, rng: np.random.Generator, s: float) -> Box:
    a = c.a
    side = int(rng.integers(2))
    width = rng.uniform(0.025, 0.05)
    rim = soft(c.lung_rho(side) - (1 - width / a.lung_w), 0.3 * width / a.lung_w) * c.lungs[side]
    if rng.random() < 0.3:  # an apical cap
        span = soft(a.lung_y - 0.55 * a.lung_h - c.Y, 0.03)
    else:  # a band along the lateral chest wall
        y0 = a.lung_y + rng.uniform(-0.5, 0.2) * a.lung_h
        span = soft(c.Y - y0, 0.03) * soft(y0 + rng.uniform(0.25, 0.5) - c.Y, 0.03)
        span = span * soft((c.X * (-1, 1)[side]) - a.lung_x, 0.03)
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
        shape = np.exp(-((v / thick) ** 2)) * soft(half - np.abs(u), 0.02)
    else:  # a wedge from the hilum to the pleura (segmental collapse)
        hx = (-1, 1)[side] * (a.lung_x - 0.55 * a.lung_w)
        hy = a.lung_y - 0.05 * a.lung_h
        direction = rng.uniform(-0.35, 0.3) * math.pi  # outwards: an upper or a lower lobe
        if side == 0:
            direction = math.pi - direction
        th = np.arctan2(c.Y - hy, c.X - hx)
        off = np.abs(np.angle(np.exp(1j * (th - direction))))
        r = np.sqrt((c.X - hx) ** 2 + (c.Y - hy) ** 2)
        shape = soft(rng.uniform(0.12, 0.22) - off, 0.04) * soft(r - 0.08, 0.03)
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
    gas = sac * soft(level - c.Y, c.edge)
    c.extra += (0.12 * s * (sac - gas) - 0.15 * s * gas).astype(np.float32)
    c.opacity += (0.8 * s * sac).astype(np.float32)
    return c.box(x - r, y - r, x + r, y + r)
