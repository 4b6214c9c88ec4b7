"""`harness cam TRIAL_DIR`: read a trial folder, load its model, pick images, then draw and score them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from harness import hardware, models, store
from harness.cam.boxes import input_crop
from harness.cam.maps import (
    METHODS,
    activations,
    cam_and_logits,
    default_layer,
    figure_layers,
    finding_index,
    resolve_layer,
)
from harness.cam.overlays import Panel, activation_figure, grid_figure, overlay_figure
from harness.cam.scoring import eval_batches, score_trial
from harness.config import TRIAL_FIELDS, ConfigError, Runtime, Trial, trial_from_dict
from harness.data import cache, loader, nih

log = logging.getLogger(__name__)


def _read_trial(files: store.TrialFiles) -> Trial:
    try:
        values = files.read_trial()
    except store.Unreadable as err:
        raise ConfigError(f"{err}; expected a trial result directory (results/<grid>/<key>/)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{files.path}: expected a JSON object of trial fields in its trial file")
    return trial_from_dict({k: v for k, v in values.items() if k in TRIAL_FIELDS}, where=str(files.path))


def load_model(trial_dir: Path | str, trial: Trial, *, device: torch.device | str = "cpu") -> nn.Module:
    """The trial's network with its saved weights, in eval mode; ConfigError (one line) if the file cannot serve."""
    path = store.TrialFiles(trial_dir).weights_path
    if not path.is_file():
        raise ConfigError(f"{path} is missing; the trial has not saved weights (did it finish?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to deserialise means it is not a weights file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{path} is not a weights file ({first[:200]})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    # Built without starting weights (the saved weights replace every tensor, and that file need not be here);
    # options that depend on `pretrained` but are not tensors (InceptionV3's transform_input) are set back.
    model = models.build(trial.replace(pretrained=False, weights="", weights_sha256=""))
    s = models.spec(trial.arch)
    aux = bool(s.aux_min_size) and models.image_size(trial) >= s.aux_min_size
    for key, value in s.options(trial, aux).items():
        if isinstance(getattr(model, key, None), bool):
            setattr(model, key, value)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        where = f"{trial.arch} at {models.image_size(trial)} px"
        raise ConfigError(f"{path} does not fit {where}: {detail[:200]}") from None
    return model.to(device).eval()


def _data_root(files: store.TrialFiles, runtime: Runtime) -> str:
    """runtime.data_root when given (data moved since), else the root the trial's metrics recorded."""
    if runtime.data_root is not None:
        return runtime.data_root
    root = files.read_metrics().get("data_root") if files.has_metrics() else None
    if root is None:
        raise ConfigError(f"{files.path}: no data root; its metrics do not record one, pass --data-root")
    return root


def _picks(
    data: nih.NIHData, boxed: np.ndarray, findings: Sequence[str], images: Sequence[str] | None, max_images: int
) -> dict[str, list[int]]:
    """Table rows to picture per finding: the named images, else its first max_images boxed test images."""
    names = data.table["image_index"].to_numpy().astype(str)
    if images:
        row_of = {n: i for i, n in enumerate(names.tolist())}
        unknown = [n for n in images if n not in row_of]
        if unknown:
            raise ConfigError(f"images not in {data.root / nih.ENTRY_FILE} (or not on disk): {', '.join(unknown[:5])}")
        return {f: [row_of[n] for n in images] for f in findings}
    picks = {}
    for f in findings:
        with_box = set(data.boxes.loc[data.boxes["finding"] == f, "image_index"].astype(str))
        picks[f] = [int(r) for r in boxed if names[r] in with_box][:max_images]
        if not picks[f]:
            log.warning("no test image has a %s box; its row of the grid is empty", f)
    return picks


def _boxed_test_rows(data: nih.NIHData, trial: Trial) -> np.ndarray:
    """Table rows of the trial's test split that have at least one box, in table order."""
    test = nih.trial_splits(data, trial)["test"]
    names = data.table["image_index"].to_numpy().astype(str)
    return np.intersect1d(test, np.flatnonzero(np.isin(names, data.boxes["image_index"].to_numpy().astype(str))))


def _checked_request(
    files: store.TrialFiles, findings: Sequence[str], method: str, max_images: int
) -> tuple[Trial, list[str]]:
    """The trial read from its folder and the request checked before the slow parts: (trial, findings wanted)."""
    trial = _read_trial(files)
    wanted = list(dict.fromkeys(nih.FINDINGS[finding_index(f)] for f in findings))
    if not wanted:
        raise ConfigError("name at least one finding; valid: " + ", ".join(nih.FINDINGS))
    METHODS[method]  # an unknown method fails before the slow parts
    if max_images < 1:
        raise ConfigError(f"max_images={max_images} must be >= 1")
    return trial, wanted


def _decoded(
    data: nih.NIHData, size: int, runtime: Runtime, boxed: np.ndarray, picks: dict[str, list[int]]
) -> tuple[cache.Cached, dict[int, int]]:
    """Every boxed test film and every pictured one decoded once: (the cache, table row -> position in it)."""
    needed = np.union1d(boxed, [r for rows in picks.values() for r in rows]).astype(np.int64)
    cached = cache.build(
        data,
        needed,
        size=loader.load_size(size),
        cache_dir=runtime.cache_dir,
        workers=runtime.workers,
        progress=runtime.progress,
    )
    at = {int(r): i for i, r in enumerate(cached.rows.tolist())}  # undecodable images are left out
    return cached, at


def _scores(
    model: nn.Module,
    trial: Trial,
    data: nih.NIHData,
    boxed: np.ndarray,
    cached: cache.Cached,
    at: dict[int, int],
    *,
    device: torch.device,
    method: str,
    layer: str,
) -> dict[str, Any]:
    """The CAM scores (score_trial) over every boxed test film that decoded, with the trial and data named."""
    load = cached.images.shape[1]
    kept = np.array([r for r in boxed if int(r) in at], dtype=np.int64)
    pixels = cached.images[[at[int(r)] for r in kept]] if len(kept) else np.zeros((0, load, load), np.uint8)
    return {
        "trial": trial.key,
        "label": trial.label,
        "dataset": data.dataset,
        "data_root": str(data.root),
        **score_trial(model, trial, data, kept, pixels, device=device, method=method, layer=layer),
    }


def _finding_panels(
    model: nn.Module,
    finding: str,
    rows: list[int],
    cached: cache.Cached,
    at: dict[int, int],
    data: nih.NIHData,
    *,
    size: int,
    device: torch.device,
    method: str,
    layer: str,
) -> list[Panel]:
    """One finding's pictured films in one batch: each one's crop, heat map, boxes and predicted probability."""
    names = data.table["image_index"].to_numpy().astype(str)
    pixels = np.stack([cached.images[at[r]] for r in rows])
    x = next(iter(eval_batches(pixels, size=size, device=device, batch_size=len(rows))))[0]
    maps, logits = cam_and_logits(model, x, finding, layer=layer, method=method)
    probs = torch.sigmoid(logits[:, nih.FINDINGS.index(finding)]).cpu().numpy()
    panels: list[Panel] = []
    for r, image, heat, p in zip(rows, pixels, maps.cpu().numpy(), probs):
        mine = data.boxes[(data.boxes["image_index"] == names[r]) & (data.boxes["finding"] == finding)]
        panels.append(
            (
                input_crop(image, size),
                heat,
                mine[["x", "y", "w", "h"]].to_numpy().tolist(),
                f"{names[r]}\n{finding}: p={p:.2f}",
            )
        )
    return panels


def _overlays(
    model: nn.Module,
    wanted: list[str],
    picks: dict[str, list[int]],
    cached: cache.Cached,
    at: dict[int, int],
    data: nih.NIHData,
    files: store.TrialFiles,
    out_dir: Path | str | None,
    *,
    size: int,
    device: torch.device,
    method: str,
    layer: str,
) -> tuple[dict[str, list[Panel]], list[Path]]:
    """Each finding's panels, each drawn alone as an overlay PNG: (panels per finding, the overlays' paths)."""
    load = cached.images.shape[1]
    names = data.table["image_index"].to_numpy().astype(str)
    figures: list[Path] = []
    panels: dict[str, list[Panel]] = {}
    for f in wanted:
        rows = [r for r in picks[f] if r in at]
        if not rows:
            panels[f] = []
            continue
        panels[f] = _finding_panels(
            model, f, rows, cached, at, data, size=size, device=device, method=method, layer=layer
        )
        for r, panel in zip(rows, panels[f]):
            figures.append(overlay_figure(panel, files.cam_overlay(f, names[r], out_dir), load=load))
    return panels, figures


def _grid_and_activations(
    model: nn.Module,
    trial: Trial,
    panels: dict[str, list[Panel]],
    first: np.ndarray,
    first_name: str,
    files: store.TrialFiles,
    out_dir: Path | str | None,
    *,
    size: int,
    device: torch.device,
    title: str,
) -> list[Path]:
    """The grid of every panel (the paper's Figures 5-6) and the first pictured film's activations (Figure 4)."""
    load = first.shape[1]
    grid = grid_figure(panels, files.cam_grid(out_dir), load=load, title=title)
    x = next(iter(eval_batches(first, size=size, device=device, batch_size=1)))[0]
    acts = activations(model, x, figure_layers(trial.arch))
    return [grid, activation_figure(acts, files.cam_activations(out_dir), title=f"{trial.label}: {first_name}")]


def run_cam(
    trial_dir: Path | str,
    *,
    findings: Sequence[str] = ("Atelectasis", "Effusion"),
    images: Sequence[str] | None = None,
    out_dir: Path | str | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    runtime: Runtime | None = None,
    max_images: int = 8,
) -> dict[str, Any]:
    """Pictures and scores for one trial: `harness cam TRIAL_DIR [--finding F] [--images ...] [--out DIR]`.

    Writes into out_dir (default: the trial's CAM folder, store.TrialFiles.cam_dir): one overlay PNG per
    (finding, image) (image, heat map, box, predicted probability), grid.png (rows: findings, columns:
    images; the paper's Figures 5-6), activations.png (the paper's Figure 4) and, through the store, the
    CAM scores (score_trial over every boxed test image). Images: for each finding, up to max_images test
    images with a box for it; or the named images. Returns {"figures": [paths], "scores": {...}}.
    """
    trial_dir = Path(trial_dir)
    runtime = runtime or Runtime()
    files = store.TrialFiles(trial_dir)
    trial, wanted = _checked_request(files, findings, method, max_images)
    device = hardware.pick_device(runtime.device)
    model = load_model(trial_dir, trial, device=device)
    layer = layer or default_layer(trial.arch)
    resolve_layer(model, layer)

    data = nih.load(_data_root(files, runtime))
    boxed = _boxed_test_rows(data, trial)
    picks = _picks(data, boxed, wanted, images, max_images)
    size = models.image_size(trial)
    cached, at = _decoded(data, size, runtime, boxed, picks)
    scores = _scores(model, trial, data, boxed, cached, at, device=device, method=method, layer=layer)

    out = files.cam_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels, figures = _overlays(
        model, wanted, picks, cached, at, data, files, out_dir, size=size, device=device, method=method, layer=layer
    )
    if any(panels.values()):
        first = next(r for f in wanted for r in picks[f] if r in at)
        names = data.table["image_index"].to_numpy().astype(str)
        title = f"{trial.label}: {method} at {layer}"
        first_film = cached.images[[at[first]]]
        figures += _grid_and_activations(
            model, trial, panels, first_film, names[first], files, out_dir, size=size, device=device, title=title
        )

    files.write_cam_scores(scores, out)
    return {"figures": [str(p) for p in figures], "scores": scores}
