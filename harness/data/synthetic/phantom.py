"""One phantom film: anatomy, lung markings, lesions, bones and exposure rendered to a uint8 image with its boxes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from harness.config import ConfigError
from harness.data import nih
from harness.data.synthetic.anatomy import Anatomy, Box, Chest, random_anatomy, soft
from harness.data.synthetic.lesions import LESIONS


def check_arguments(
    *, n: int = 1, size: int = 32, difficulty: float = 0.0, label_noise: float = 0.0, workers: int = 0
) -> None:
    """The generator's arguments, checked the same way wherever they enter: a bad one is a one-line ConfigError."""

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


def _film_draws(
    rng: np.random.Generator, anatomy: Anatomy
) -> tuple[tuple[float, float], float, tuple[float, float, float], float, np.ndarray]:
    """This film's draws from rng: positioning, inspiration (moves the diaphragm), exposure, noise, and a seed
    per finding stream plus one for texture: (shift, scale, exposure, noise_sd, seeds)."""
    # The order of these draws is part of every film's bytes: reordering them needs a GENERATOR_VERSION bump.
    shift = (float(rng.normal(0, 0.025)), float(rng.normal(0.03, 0.025)))
    scale = float(rng.uniform(0.93, 1.05))
    anatomy.diaphragm += float(rng.normal(0, 0.03))
    exposure = rng.uniform(0.0, 0.1), rng.uniform(1.05, 1.3), rng.uniform(0.9, 1.25)
    noise_sd = float(rng.uniform(0.008, 0.025))
    seeds = rng.integers(0, 2**63, size=len(LESIONS.names()) + 1)
    return shift, scale, exposure, noise_sd, seeds


def _density(c: Chest, anatomy: Anatomy, markings: np.ndarray) -> np.ndarray:
    """The film's density: body, heart, mediastinum and bones, less the lungs' air, plus vessels and findings."""
    a, X, Y, e = anatomy, c.X, c.Y, c.edge
    body = soft(1 - ((X / a.body_w) ** 4 + ((Y - 0.3) / 1.25) ** 4), 0.05)
    spine = soft(0.055 - np.abs(X), e) * (0.7 + 0.3 * np.cos(Y * math.pi / 0.06) ** 2)
    cage = soft(a.lung_x + a.lung_w + 0.06 - np.abs(X), e) * soft(a.lung_y + a.lung_h - Y, 0.05)
    phase = (Y - a.rib_start - a.rib_curve * X**2) / a.rib_step
    ribs = np.exp(-((((phase % 1) - 0.5) / 0.17) ** 2)) * soft(phase, 0.1) * soft(10 - phase, 0.1) * cage
    front = (Y - a.rib_start - 0.35 + 0.5 * X**2) / (1.3 * a.rib_step)
    ribs = ribs + 0.4 * np.exp(-((((front % 1) - 0.5) / 0.15) ** 2)) * soft(front, 0.1) * soft(6 - front, 0.1) * cage
    clav = (
        np.exp(-(((Y + 0.74 + 0.2 * (np.abs(X) - 0.08)) / 0.028) ** 2))
        * soft(0.62 - np.abs(X), 0.03)
        * soft(np.abs(X) - 0.06, 0.02)
    )
    # Findings' opacity replaces the air of the lung that shows, and the vessels seen through it.
    aerated = np.maximum(*c.lungs) * (1 - np.clip(c.opacity, 0, 1))
    air = a.air * c.air_gain * aerated
    vessels = a.markings * markings * c.markings_gain * aerated
    return (
        (0.5 * body + 0.03 * c.heart + 0.04 * c.mediastinum + 0.05 * spine + 0.08 * ribs + 0.1 * clav) * body
        - air
        + vessels
        + c.extra * body
    )


def _exposed(
    density: np.ndarray, exposure: tuple[float, float, float], film: np.ndarray, grain: np.ndarray, noise_sd: float
) -> np.ndarray:
    """Density through the exposure's brightness, gain and gamma, with film mottle and grain, as uint8."""
    bright, gain, gamma = exposure
    levels = np.linspace(0.0, 1.0, 4097, dtype=np.float32) ** gamma  # a table: cheaper than a power per pixel
    image = levels[(np.clip(bright + gain * density + 0.02 * film, 0, 1) * 4096).astype(np.intp)]
    image = image + noise_sd * grain
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


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
    check_arguments(size=size, difficulty=difficulty)
    wanted = {name for name in labels if name != nih.NO_FINDING}
    for name in wanted:
        if name not in LESIONS:
            raise ConfigError(LESIONS.unknown(name))
    s = 1.0 - 0.85 * difficulty  # lesion contrast; even the hardest setting leaves a trace
    anatomy = random_anatomy(patient if patient is not None else rng)
    shift, scale, exposure, noise_sd, seeds = _film_draws(rng, anatomy)
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

    return _exposed(_density(c, anatomy, markings), exposure, film, grain, noise_sd), boxes
