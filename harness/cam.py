"""Grad-CAM and layer activations, pictured and measured against the NIH boxes (pointing, energy, IoU)."""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import hardware, models, store
from harness.config import TRIAL_FIELDS, ConfigError, Runtime, Trial, trial_from_dict
from harness.data import cache, loader, nih
from harness.registry import Registry

log = logging.getLogger(__name__)

THRESHOLD = 0.5  # IoU region: the map at >= half its maximum (the usual rule in weakly supervised localisation)
TOLERANCE = 0.02  # pointing game: a hit within 2% of the input side of the box (~4 px at 224, 20 px at 1024)
SMOOTH_SAMPLES = 8  # SmoothGrad noisy copies per image
SMOOTH_NOISE = 0.15  # SmoothGrad noise sd as a share of each image's value range (Smilkov et al. 2017: 10-20%)
FIGURE_CHANNELS = 8  # channels shown per layer in the activations figure
# The paper's Figure 4 layers (ResNet152 layer1[0], layer2[-1], layer4[-1]); other archs get first, middle, CAM layer.
FIGURE_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet50": ("layer1[0]", "layer2[-1]", "layer4[-1]"),
    "resnet152": ("layer1[0]", "layer2[-1]", "layer4[-1]"),
}

Targets = int | str | Sequence[int | str] | Tensor


# --- layers and hooks ----------------------------------------------------------------------------


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name; indices may be negative and written either way: "layer2.-1" or "layer2[-1]"."""
    module = getattr(model, "_orig_mod", model)  # torch.compile keeps the original's names
    parts = re.findall(r"[^.\[\]]+", name)
    if not parts:
        raise ConfigError(f"layer {name!r} is empty; name a module, e.g. 'layer4' or 'features.11'")
    for depth, part in enumerate(parts):
        if re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            try:
                module = module[int(part)]
                continue
            except IndexError:
                raise ConfigError(
                    f"layer {name!r}: index {part} is out of range for "
                    f"{'.'.join(parts[:depth]) or 'the model'} ({len(module)} modules)"
                ) from None
        child = module._modules.get(part)
        if child is None:
            where = ".".join(parts[:depth]) or "the model"
            children = [k for k, v in module._modules.items() if v is not None]
            close = difflib.get_close_matches(part, children, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"layer {name!r}: {where} has no submodule {part!r}{hint}; "
                f"valid: {', '.join(children) or 'none (it is a leaf)'}"
            )
        module = child
    return module


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics: images in a batch do not affect each other), then restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _capture(layers: Mapping[str, nn.Module], *, detach: bool) -> Iterator[dict[str, Tensor]]:
    """Forward hooks that record each layer's output; removed on exit, whatever happens."""
    seen: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
            if not isinstance(output, Tensor) or output.dim() != 4:
                raise ConfigError(
                    f"layer {name!r} ({type(module).__name__}) does not output a (B, C, H, W) "
                    "feature map; choose a convolutional block"
                )
            if detach:
                seen[name] = output.detach().clone()
                return None
            seen[name] = output
            # The rest of the network gets a copy, so a later in-place op (ReLU(inplace=True), DenseNet's
            # final relu_) cannot overwrite the recorded map or the gradient taken with respect to it.
            return output.clone()

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def default_layer(arch: str) -> str:
    """The arch's Grad-CAM layer: its last conv block (models.ArchSpec.cam_layer)."""
    return models.spec(arch).cam_layer


def figure_layers(arch: str) -> tuple[str, ...]:
    """Layers for the activations figure: the paper's Figure 4 for ResNets, else first, middle and CAM layer."""
    if arch in FIGURE_LAYERS:
        return FIGURE_LAYERS[arch]
    s = models.spec(arch)
    first, middle = s.stages[0].split("+")[-1], s.stages[len(s.stages) // 2].split("+")[-1]
    return tuple(dict.fromkeys((first, middle, s.cam_layer)))


def _targets(targets: Targets, n: int, device: torch.device) -> Tensor:
    """Finding indices (or names) -> a (n,) long tensor; one value applies to every image."""
    if isinstance(targets, Tensor):
        out = targets.to(device=device, dtype=torch.long).reshape(-1)
    else:
        items = [targets] if isinstance(targets, (int, str, np.integer)) else list(targets)
        out = torch.tensor(
            [finding_index(t) if isinstance(t, str) else int(t) for t in items], dtype=torch.long, device=device
        )
    if out.numel() == 1:
        out = out.expand(n)
    if out.numel() != n:
        raise ValueError(f"{out.numel()} targets for a batch of {n} images; give one per image or one for all")
    return out


def finding_index(name: str) -> int:
    """Index of a finding in nih.FINDINGS; ConfigError with the valid names otherwise."""
    if name in nih.FINDINGS:
        return nih.FINDINGS.index(name)
    close = difflib.get_close_matches(name, nih.FINDINGS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown finding {name!r}{hint}; valid: {', '.join(nih.FINDINGS)}")


# --- Grad-CAM and its variants -------------------------------------------------------------------


def _forward_backward(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(activations, their gradients, logits) at `layer`, each image's gradient that of its own target logit.

    The SUM over the batch of each image's own target logit is differentiated: in eval mode image i's
    logits depend on image i only, so the gradient at image i is exactly that of its own target.
    torch.autograd.grad leaves every parameter's .grad and requires_grad as they were.
    """
    # An input that requires grad keeps the graph even when every parameter is frozen.
    x = x.detach().float().requires_grad_(True)
    full_precision = torch.autocast(x.device.type, enabled=False)
    with torch.enable_grad(), full_precision, _capture({"a": layer}, detach=False) as seen:
        logits, _ = models.forward(model, x)
        if "a" not in seen:
            raise ConfigError(f"layer {type(layer).__name__} was not run by the model's forward pass; choose another")
        activation = seen["a"]
        classes = logits.shape[1]
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= classes):
            bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
            raise ConfigError(f"target finding index {bad} is out of range; valid: 0..{classes - 1}")
        score = logits.float().gather(1, targets[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activation)
    return activation.detach().float(), grads.float(), logits.detach().float()


CamMethod = Callable[[nn.Module, Tensor, Tensor, nn.Module], tuple[Tensor, Tensor]]
METHODS: Registry[CamMethod] = Registry("CAM method")


@METHODS.register("gradcam")
def _gradcam(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Selvaraju et al. 2017: channels weighted by their spatially averaged gradient, ReLU."""
    a, g, logits = _forward_backward(model, x, targets, layer)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(dim=1)), logits


@METHODS.register("gradcam++")
def _gradcam_pp(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Chattopadhay et al. 2018: per-position weights alpha = g^2 / (2 g^2 + sum(A) g^3) on positive gradients."""
    a, g, logits = _forward_backward(model, x, targets, layer)
    g2, g3 = g.pow(2), g.pow(3)
    denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(dim=1)), logits


@METHODS.register("smoothgrad")
def _smoothgrad(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module) -> tuple[Tensor, Tensor]:
    """Grad-CAM averaged over SMOOTH_SAMPLES noisy copies of each image (SmoothGrad, Smilkov et al. 2017)."""
    # One fixed noise pattern per sample, shared by every image in the batch and scaled by each image's range:
    # an image's map is then the same in any batch, and repeatable.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((SMOOTH_SAMPLES, 1, *x.shape[1:]), generator=g).to(x.device)
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    total = None
    for k in range(SMOOTH_SAMPLES):
        heat, _ = _gradcam(model, x + SMOOTH_NOISE * span * noise[k], targets, layer)
        total = heat if total is None else total + heat
    with torch.no_grad():
        logits, _ = models.forward(model, x.detach().float())
    return total / SMOOTH_SAMPLES, logits.float()


def cam_and_logits(
    model: nn.Module,
    x: Tensor,
    targets: Targets,
    *,
    layer: str | None = None,
    arch: str | None = None,
    method: str = "gradcam",
) -> tuple[Tensor, Tensor]:
    """(maps, logits): maps as in cam(), logits (B, classes) of the clean input."""
    if layer is None:
        if arch is None:
            raise ConfigError("name a layer for the CAM, or the arch whose default layer to use")
        layer = default_layer(arch)
    compute = METHODS[method]
    module = resolve_layer(model, layer)
    t = _targets(targets, len(x), x.device)
    if len(x) == 0:
        return x.new_zeros((0, *x.shape[-2:])), x.new_zeros((0, models.NUM_CLASSES))
    with _eval(model):
        raw, logits = compute(model, x, t, module)
    maps = F.interpolate(raw[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    peak = maps.amax(dim=(1, 2), keepdim=True)
    # Divided by the maximum, not min-max scaled: zero stays "no evidence", and an all-zero map stays zero.
    maps = torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(maps))
    return maps.detach(), logits


def cam(
    model: nn.Module,
    x: Tensor,
    targets: Targets,
    *,
    layer: str | None = None,
    arch: str | None = None,
    method: str = "gradcam",
) -> Tensor:
    """Class activation maps (B, H, W) for each image's own target finding, at the input's size.

    targets: a finding index or name for all images, or one per image. layer: a dotted module name
    (default: the arch's cam_layer). method: a METHODS name ("gradcam", "gradcam++", "smoothgrad").
    Maps are finite, non-negative and divided by their own maximum (an all-zero map stays zero). The
    model runs in eval mode (restored after); its parameters, gradients and requires_grad flags are untouched.
    """
    return cam_and_logits(model, x, targets, layer=layer, arch=arch, method=method)[0]


@torch.no_grad()
def activations(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Each named layer's output for x in eval mode: name -> (B, C, h, w), detached copies."""
    modules = {name: resolve_layer(model, name) for name in layers}
    with _eval(model), _capture(modules, detach=True) as seen:
        models.forward(model, x.float())
    missing = [name for name in layers if name not in seen]
    if missing:
        raise ConfigError(f"layers {', '.join(missing)} were not run by the model's forward pass; choose others")
    return {name: seen[name] for name in layers}


# --- box geometry --------------------------------------------------------------------------------


def _to_input(box: Sequence[float], size: int, load: int | None, scale: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in input pixels, unclipped: scaled to the load size, shifted by the centre crop."""
    load = load or loader.load_size(size)
    offset = (load - size) // 2  # as loader.Batches crops for evaluation
    x, y, w, h = (float(v) for v in box)
    k = load / scale
    return x * k - offset, y * k - offset, (x + w) * k - offset, (y + h) * k - offset


def input_box(
    box: Sequence[float], *, size: int, load: int | None = None, scale: float = nih.BOX_SCALE
) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in the original PNG's `scale`-px coordinates -> (x0, y0, x1, y1) in the input's pixels.

    The eval path resizes the whole PNG to load x load (default loader.load_size(size)) and takes the
    centre size x size crop at offset (load - size) // 2, as loader.Batches does. Pixel i spans [i, i+1);
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


# --- scores --------------------------------------------------------------------------------------

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


def _inputs(images: np.ndarray, *, size: int, device: torch.device, batch_size: int) -> loader.Batches:
    """Eval batches (centre crop, ImageNet normalisation) exactly as the trainer's test path makes them."""
    labels = np.zeros((len(images), len(nih.FINDINGS)), np.float32)
    return loader.Batches(images, labels, batch_size=batch_size, crop=size, train=False, device=device)


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
        load = images.shape[1]
        batches = _inputs(np.asarray(images[pairs.position]), size=size, device=device, batch_size=batch_size)
        start = 0
        for x, _ in batches:
            stop = start + len(x)
            targets = torch.from_numpy(pairs.finding[start:stop]).to(device)
            maps = cam(model, x, targets, layer=layer, method=method).cpu().numpy()
            for i, heat in enumerate(maps):
                p = start + i
                for box in pairs.boxes[p]:
                    scores = score_map(heat, box, load=load)
                    if scores is None:
                        outside += 1
                        continue
                    records.append({"finding": nih.FINDINGS[pairs.finding[p]], "image_index": names[p], **scores})
            start = stop
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


# --- figures -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig


def _draw_overlay(
    ax, image: np.ndarray, heat: np.ndarray, boxes: Sequence[Sequence[float]], *, load: int, title: str
) -> None:
    from matplotlib.patches import Rectangle

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
    fig.savefig(path)
    return path


# --- harness cam TRIAL_DIR -----------------------------------------------------------------------


def _read_trial(files: store.TrialFiles) -> Trial:
    try:
        values = files.read_trial()
    except store.Unreadable as err:
        raise ConfigError(f"{err}; expected a trial result directory (results/<grid>/<key>/)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{files.path}: expected a JSON object of trial fields in its trial file")
    return trial_from_dict({k: v for k, v in values.items() if k in TRIAL_FIELDS}, where=str(files.path))


def load_model(trial_dir: Path | str, trial: Trial, *, device: torch.device | str = "cpu") -> nn.Module:
    """The trial's network with its model.pt weights, in eval mode; ConfigError (one line) if the file cannot serve."""
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
    # Built without ImageNet weights (model.pt replaces every tensor, and the ImageNet file need not be here);
    # options that depend on `pretrained` but are not tensors (InceptionV3's transform_input) are set back.
    model = models.build(trial.replace(pretrained=False))
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


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    start = (image.shape[-1] - size) // 2
    return image[start : start + size, start : start + size]


def _data_root(trial_dir: Path, runtime: Runtime) -> str:
    """runtime.data_root when given (data moved since), else the root metrics.json recorded."""
    if runtime.data_root is not None:
        return runtime.data_root
    files = store.TrialFiles(trial_dir)
    root = files.read_metrics().get("data_root") if files.has_metrics() else None
    if root is None:
        raise ConfigError(f"{trial_dir}: no data root; its metrics do not record one, pass --data-root")
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


Panel = tuple[np.ndarray, np.ndarray, list, str]  # cropped image, heat map, boxes, title


def _grid_figure(panels: Mapping[str, list[Panel]], path: Path, *, load: int, title: str) -> Path:
    """Rows: findings; columns: images (the paper's Figures 5-6)."""
    columns = max(len(row) for row in panels.values())
    fig = _figure(2.2 * columns + 0.6, 2.6 * len(panels) + 0.4)
    grid = fig.subplots(len(panels), columns, squeeze=False)
    for i, (finding, row) in enumerate(panels.items()):
        for j in range(columns):
            grid[i, j].set_axis_off()
            if j < len(row):
                _draw_overlay(grid[i, j], *row[j][:3], load=load, title=row[j][3])
        grid[i, 0].text(
            -0.08, 0.5, finding, transform=grid[i, 0].transAxes, rotation=90, ha="right", va="center", fontsize=10
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


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

    Writes into out_dir (default TRIAL_DIR/cam/): one overlay PNG per (finding, image) (image, heat map,
    box, predicted probability), grid.png (rows: findings, columns: images; the paper's Figures 5-6),
    activations.png (the paper's Figure 4) and cam_scores.json (score_trial over every boxed test image).
    Images: for each finding, up to max_images test images with a box for it; or the named images.
    Returns {"figures": [paths], "scores": {...}}.
    """
    trial_dir = Path(trial_dir)
    runtime = runtime or Runtime()
    trial = _read_trial(store.TrialFiles(trial_dir))
    wanted = list(dict.fromkeys(nih.FINDINGS[finding_index(f)] for f in findings))
    if not wanted:
        raise ConfigError("name at least one finding; valid: " + ", ".join(nih.FINDINGS))
    METHODS[method]  # an unknown method fails before the slow parts
    if max_images < 1:
        raise ConfigError(f"max_images={max_images} must be >= 1")
    device = hardware.pick_device(runtime.device)
    model = load_model(trial_dir, trial, device=device)
    layer = layer or default_layer(trial.arch)
    resolve_layer(model, layer)

    data = nih.load(_data_root(trial_dir, runtime))
    test = nih.split(
        data,
        val_fraction=trial.val_fraction,
        seed=trial.seed,
        subset_fraction=trial.subset_fraction,
        subset_test=trial.subset_test,
    )["test"]
    names = data.table["image_index"].to_numpy().astype(str)
    boxed = np.intersect1d(test, np.flatnonzero(np.isin(names, data.boxes["image_index"].to_numpy().astype(str))))
    picks = _picks(data, boxed, wanted, images, max_images)

    size = models.image_size(trial)
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
    load = cached.images.shape[1]

    kept = np.array([r for r in boxed if int(r) in at], dtype=np.int64)
    pixels = cached.images[[at[int(r)] for r in kept]] if len(kept) else np.zeros((0, load, load), np.uint8)
    scores = {
        "trial": trial.key,
        "label": trial.label,
        "dataset": data.dataset,
        "data_root": str(data.root),
        **score_trial(model, trial, data, kept, pixels, device=device, method=method, layer=layer),
    }

    out = store.TrialFiles(trial_dir).cam_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    panels: dict[str, list[Panel]] = {}
    for f in wanted:
        rows = [r for r in picks[f] if r in at]
        panels[f] = []
        if not rows:
            continue
        pixels = np.stack([cached.images[at[r]] for r in rows])
        x = next(iter(_inputs(pixels, size=size, device=device, batch_size=len(rows))))[0]
        maps, logits = cam_and_logits(model, x, f, layer=layer, method=method)
        probs = torch.sigmoid(logits[:, nih.FINDINGS.index(f)]).cpu().numpy()
        for r, image, heat, p in zip(rows, pixels, maps.cpu().numpy(), probs):
            mine = data.boxes[(data.boxes["image_index"] == names[r]) & (data.boxes["finding"] == f)]
            panel = (
                _crop(image, size),
                heat,
                mine[["x", "y", "w", "h"]].to_numpy().tolist(),
                f"{names[r]}\n{f}: p={p:.2f}",
            )
            panels[f].append(panel)
            fig = _figure(3.2, 3.4)
            _draw_overlay(fig.add_subplot(1, 1, 1), *panel[:3], load=load, title=panel[3])
            fig.tight_layout()
            figures.append(out / f"{f}_{Path(names[r]).stem}.png")
            fig.savefig(figures[-1])

    if any(panels.values()):
        figures.append(_grid_figure(panels, out / "grid.png", load=load, title=f"{trial.label}: {method} at {layer}"))
        first = next(r for f in wanted for r in picks[f] if r in at)
        x = next(iter(_inputs(cached.images[[at[first]]], size=size, device=device, batch_size=1)))[0]
        acts = activations(model, x, figure_layers(trial.arch))
        figures.append(activation_figure(acts, out / "activations.png", title=f"{trial.label}: {names[first]}"))

    store.TrialFiles(trial_dir).write_cam_scores(scores, out)
    return {"figures": [str(p) for p in figures], "scores": scores}
