"""Box geometry in input pixels: NIH boxes through the eval path's resize and centre crop, masks, tolerance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.data import loader, nih

TOLERANCE = 0.02  # pointing game: a hit within 2% of the input side of the box (~4 px at 224, 20 px at 1024)


def input_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size crop of one cached (load, load) image: the pixels the network sees at evaluation."""
    window = loader.centre_window(image.shape[-1], size)
    return image[window, window]


def _to_input(box: Sequence[float], size: int, load: int | None, scale: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in input pixels, unclipped: scaled to the load size, shifted by the centre crop."""
    load = load or loader.load_size(size)
    offset = loader.centre_window(load, size).start  # as loader.Batches crops for evaluation
    x, y, w, h = (float(v) for v in box)
    k = load / scale
    return x * k - offset, y * k - offset, (x + w) * k - offset, (y + h) * k - offset


def input_box(
    box: Sequence[float], *, size: int, load: int | None = None, scale: float = nih.BOX_SCALE
) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in the original PNG's `scale`-px coordinates -> (x0, y0, x1, y1) in the input's pixels.

    The eval path resizes the whole PNG to load x load (default loader.load_size(size)) and takes the
    centre size x size crop (loader.centre_window), as loader.Batches does. Pixel i spans [i, i+1);
    the result is clipped to [0, size] (empty, x0 == x1 or y0 == y1, when the box lies in the cropped margin).
    """
    return tuple(float(min(max(v, 0.0), size)) for v in _to_input(box, size, load, scale))  # type: ignore[return-value]


def box_mask(
    box: Sequence[float], *, size: int, load: int | None = None, dilate: float = 0.0, scale: float = nih.BOX_SCALE
) -> np.ndarray:
    """(size, size) bool mask of the input pixels whose centres lie in the box (grown by `dilate` px each side).

    A box smaller than a pixel still marks the pixel holding its centre; a box wholly cropped away marks nothing.
    """
    x0, y0, x1, y1 = _to_input(box, size, load, scale)
    x0, y0, x1, y1 = x0 - dilate, y0 - dilate, x1 + dilate, y1 + dilate
    centres = np.arange(size) + 0.5
    cols = (centres >= x0) & (centres < x1)
    rows = (centres >= y0) & (centres < y1)
    if not cols.any() and x1 > 0 and x0 < size:
        cols[min(max(int((x0 + x1) / 2), 0), size - 1)] = True
    if not rows.any() and y1 > 0 and y0 < size:
        rows[min(max(int((y0 + y1) / 2), 0), size - 1)] = True
    return rows[:, None] & cols[None, :]


def tolerance_px(size: int) -> int:
    """The pointing game's tolerance at an input size: TOLERANCE of the side, at least one pixel."""
    return max(1, round(TOLERANCE * size))
