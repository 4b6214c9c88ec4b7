"""CAM maps: layer lookup and defaults, hooks, Grad-CAM and its variants (the METHODS registry), activations."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import models
from harness.config import ConfigError, close_match
from harness.data import nih
from harness.registry import Registry

SMOOTH_SAMPLES = 8  # SmoothGrad noisy copies per image
SMOOTH_NOISE = 0.15  # SmoothGrad noise sd as a share of each image's value range (Smilkov et al. 2017: 10-20%)
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
        children = dict(module.named_children())  # a child set to None (a head the build left out) is not one
        child = children.get(part)
        if child is None:
            where = ".".join(parts[:depth]) or "the model"
            children = list(children)
            hint = close_match(part, children)
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
    if s.figure_layers:  # token models (ViT, Swin) name map-shaped layers: their stages output tokens
        return s.figure_layers
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
    hint = close_match(name, nih.FINDINGS)
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
