"""Scores of CAM maps against the boxes: pointing game, energy and IoU beside their chance levels; score_trial."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import models
from harness.cam.boxes import box_mask, tolerance_px
from harness.cam.maps import cam, default_layer
from harness.config import Trial
from harness.data import loader, nih

log = logging.getLogger(__name__)

THRESHOLD = 0.5  # IoU region: the map at >= half its maximum (the usual rule in weakly supervised localisation)
METRICS = ("pointing", "energy", "iou")
RULES = {
    "pointing": "hit when the map's maximum lies inside the box grown by tolerance_px on each side; ties share "
    "the credit (the fraction of maximal pixels inside). Chance: the grown box's share of the image",
    "energy": "share of the map's sum inside the box. Chance: the box's share of the image (a uniform map)",
    "iou": f"IoU of the region where the map is >= {THRESHOLD} of its maximum with the box. Chance: expected "
    "intersection over expected union of a random pixel set of the same area, (ab/N) / (a + b - ab/N)",
    "flat": "an all-zero map has no evidence and is scored as a uniform map: every score equals its chance",
}


def score_map(heat: np.ndarray, box: Sequence[float], *, load: int | None = None) -> dict[str, float] | None:
    """Pointing, energy and IoU of one (S, S) map against one box (original-PNG coordinates), with chance levels.

    None when the box lies wholly outside the input crop.
    """
    size = heat.shape[-1]
    inside = box_mask(box, size=size, load=load)
    if not inside.any():
        return None
    grown = box_mask(box, size=size, load=load, dilate=tolerance_px(size))
    heat = np.asarray(heat, dtype=np.float64)
    peak = heat.max()
    flat = not peak > 0
    if flat:
        heat = np.ones_like(heat)
        peak = 1.0
    n = heat.size
    top = heat >= peak - 1e-6 * peak
    region = heat >= THRESHOLD * peak
    a, b = float(region.sum()), float(inside.sum())
    overlap = float((region & inside).sum())
    expected = a * b / n
    return {
        "pointing": float(top[grown].sum() / top.sum()),
        "pointing_chance": float(grown.sum() / n),
        "energy": float(heat[inside].sum() / heat.sum()),
        "energy_chance": b / n,
        "iou": overlap / (a + b - overlap),
        "iou_chance": expected / (a + b - expected),
        "flat": flat,
    }


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over boxes, per finding and overall, with counts; records: finding, image_index, score_map's keys."""

    def block(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": len(rows),
            "n_images": len({r["image_index"] for r in rows}),
            "n_flat": int(sum(r["flat"] for r in rows)),
        }
        for metric in METRICS:
            for key in (metric, f"{metric}_chance"):
                out[key] = float(np.mean([r[key] for r in rows])) if rows else None
        return out

    per = {
        f: block([r for r in records if r["finding"] == f])
        for f in nih.FINDINGS
        if any(r["finding"] == f for r in records)
    }
    return {"per_finding": per, "overall": block(records)}


@dataclass(frozen=True)
class _Pairs:
    """Boxes of a set of images grouped into one CAM per (image, finding)."""

    position: np.ndarray  # (pairs,) index into the images array
    finding: np.ndarray  # (pairs,) finding index
    boxes: list[list[tuple[float, float, float, float]]]  # per pair, its boxes


def _pairs(data: nih.NIHData, rows: np.ndarray) -> tuple[_Pairs, list[str]]:
    """The boxes of the given table rows (images[i] is row rows[i]); also each pair's image name."""
    names = data.table["image_index"].to_numpy()[np.asarray(rows, dtype=np.int64)]
    where = {name: i for i, name in enumerate(names.tolist())}
    groups: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for name, finding, x, y, w, h in data.boxes[["image_index", "finding", "x", "y", "w", "h"]].itertuples(index=False):
        if name in where:
            groups.setdefault((where[name], nih.FINDINGS.index(finding)), []).append((x, y, w, h))
    keys = sorted(groups)
    pairs = _Pairs(
        position=np.array([k[0] for k in keys], dtype=np.int64),
        finding=np.array([k[1] for k in keys], dtype=np.int64),
        boxes=[groups[k] for k in keys],
    )
    return pairs, [str(names[k[0]]) for k in keys]


def eval_batches(images: np.ndarray, *, size: int, device: torch.device, batch_size: int) -> loader.Batches:
    """Eval batches (centre crop, ImageNet normalisation) exactly as the trainer's test path makes them."""
    labels = np.zeros((len(images), len(nih.FINDINGS)), np.float32)
    return loader.Batches(images, labels, batch_size=batch_size, crop=size, train=False, device=device)


def _pair_records(
    model: nn.Module,
    pairs: _Pairs,
    names: list[str],
    images: np.ndarray,
    *,
    size: int,
    device: torch.device,
    batch_size: int,
    method: str,
    layer: str,
) -> tuple[list[dict[str, Any]], int]:
    """One CAM per (image, finding) pair, in batches, each scored against the pair's boxes: (one record per
    scored box, the number of boxes wholly outside the crop)."""
    load = images.shape[1]
    records: list[dict[str, Any]] = []
    outside = 0
    batches = eval_batches(np.asarray(images[pairs.position]), size=size, device=device, batch_size=batch_size)
    start = 0
    for x, _ in batches:
        stop = start + len(x)
        targets = torch.from_numpy(pairs.finding[start:stop]).to(device)
        maps = cam(model, x, targets, layer=layer, method=method).cpu().numpy()
        for i, heat in enumerate(maps):
            p = start + i
            scored = [score_map(heat, box, load=load) for box in pairs.boxes[p]]
            outside += sum(scores is None for scores in scored)
            finding = nih.FINDINGS[pairs.finding[p]]
            records += [{"finding": finding, "image_index": names[p], **sc} for sc in scored if sc is not None]
        start = stop
    return records, outside


def score_trial(
    model: nn.Module,
    trial: Trial,
    data: nih.NIHData,
    rows: np.ndarray,
    images: np.ndarray,
    *,
    device: torch.device | str,
    batch_size: int = 32,
    method: str = "gradcam",
    layer: str | None = None,
) -> dict[str, Any]:
    """CAM scores on every image of `rows` that has a box, for each finding it has a box for.

    images: the cached uint8 (n, load, load) array aligned with rows. One CAM per (image, finding),
    targeted at that finding, scored against each of its boxes. Returns a JSON-able dict: method,
    layer, size, tolerance_px, threshold, rules, per_finding {finding: {n, n_images, n_flat, pointing,
    pointing_chance, energy, energy_chance, iou, iou_chance}} and overall (means over boxes).
    """
    device = torch.device(device)
    size = models.image_size(trial)
    layer = layer or default_layer(trial.arch)
    if len(images) != len(rows):
        raise ValueError(f"images ({len(images)}) and rows ({len(rows)}) must be aligned")
    pairs, names = _pairs(data, rows)
    records: list[dict[str, Any]] = []
    outside = 0
    if len(pairs.position):
        records, outside = _pair_records(
            model, pairs, names, images, size=size, device=device, batch_size=batch_size, method=method, layer=layer
        )
    if outside:
        log.warning("%d boxes lie wholly in the margin the centre crop removes and are not scored", outside)
    return {
        "method": method,
        "layer": layer,
        "size": size,
        "tolerance_px": tolerance_px(size),
        "threshold": THRESHOLD,
        "rules": RULES,
        "n_outside": outside,
        **summarise(records),
    }
