"""The phantom's anatomy and its drawing surface: one patient's chest, the pixel grid, and the layers findings paint."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h in the image's own pixels


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


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """One patient's chest, its proportions drawn from rng."""
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


def soft(d: np.ndarray, width: float) -> np.ndarray:
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
        self.heart = soft(1 - np.sqrt((u / a.heart_w) ** 2 + (v / a.heart_h) ** 2), e / a.heart_w)
        mediastinum = soft(0.1 + 0.05 * (Y + 1) - np.abs(X - 0.02), e) * soft(a.heart_y - Y, 0.05)
        knob = self.blob(0.1, a.lung_y - 0.3 * a.lung_h, 0.065)  # aortic knob
        self.mediastinum = np.maximum(mediastinum, knob)
        self.lung_raw = tuple(soft(1 - self.lung_rho(s), e / a.lung_w) for s in (0, 1))
        # What shows: lung above the diaphragm and outside the heart's and mediastinum's shadow.
        hidden = (1 - self.heart) * (1 - self.mediastinum)
        self.lungs = tuple(self.lung_raw[s] * soft(self.diaphragm_y(s, X) - Y, e) * hidden for s in (0, 1))

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
        return soft(r - d, edge or self.edge)
