"""CAM figures: overlays of map and box on the input, the findings-by-images grid, the layer activations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from harness import store
from harness.cam.boxes import input_box

FIGURE_CHANNELS = 8  # channels shown per layer in the activations figure

Panel = tuple[np.ndarray, np.ndarray, list, str]  # cropped image, heat map, boxes, title


def _figure(width: float, height: float):
    """A matplotlib figure drawn by Agg, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    """Whole or not at all, like every file the harness writes: a stopped `harness cam` leaves no half a PNG."""
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _draw_overlay(ax, panel: Panel, *, load: int) -> None:
    """The image in grey, the heat map over it, and each box outlined, on one axes."""
    from matplotlib.patches import Rectangle

    image, heat, boxes, title = panel
    size = image.shape[-1]
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    # Near-zero heat is left untinted, so "no evidence" reads as the plain image.
    ax.imshow(np.ma.masked_less(heat, 0.02), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    for box in boxes:
        x0, y0, x1, y1 = input_box(box, size=size, load=load)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def activation_figure(
    acts: Mapping[str, Tensor], path: Path | str, *, k: int = FIGURE_CHANNELS, index: int = 0, title: str = ""
) -> Path:
    """The first k channels of each layer for image `index` (rows: layers), like the paper's Figure 4."""
    path = Path(path)
    fig = _figure(1.3 * k + 1.2, 1.4 * len(acts) + 0.6)
    grid = fig.subplots(len(acts), k, squeeze=False)
    for r, (name, a) in enumerate(acts.items()):
        maps = a[index].float().cpu().numpy()
        for c in range(k):
            ax = grid[r, c]
            ax.set_axis_off()
            if c < len(maps):
                ax.imshow(maps[c], cmap="viridis", interpolation="nearest")
            if c == 0:
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(f"{name}\n{tuple(maps.shape)}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path


def overlay_figure(panel: Panel, path: Path, *, load: int) -> Path:
    """One panel alone: the image, its heat map and its boxes (load: the side the boxes were resized to)."""
    fig = _figure(3.2, 3.4)
    _draw_overlay(fig.add_subplot(1, 1, 1), panel, load=load)
    fig.tight_layout()
    _save(fig, path)
    return path


def grid_figure(panels: Mapping[str, Sequence[Panel]], path: Path, *, load: int, title: str) -> Path:
    """Rows: findings; columns: images (the paper's Figures 5-6)."""
    columns = max(len(row) for row in panels.values())
    fig = _figure(2.2 * columns + 0.6, 2.6 * len(panels) + 0.4)
    grid = fig.subplots(len(panels), columns, squeeze=False)
    for i, (finding, row) in enumerate(panels.items()):
        for j in range(columns):
            grid[i, j].set_axis_off()
            if j < len(row):
                _draw_overlay(grid[i, j], row[j], load=load)
        grid[i, 0].text(
            -0.08, 0.5, finding, transform=grid[i, 0].transAxes, rotation=90, ha="right", va="center", fontsize=10
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path
