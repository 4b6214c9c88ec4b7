"""timm's family: the transformers and modern CNNs peers benchmark beside the classic archs (optional extra).

    arch                           stages, in order                                   Grad-CAM layer
    vit_small_patch16_224 (ViT-S)  stem (cls_token, pos_embed, patch_embed),          blocks.11.norm1.grid
                                   blocks 0-2, 3-5, 6-8, 9-11
    swin_tiny_patch4_window7_224   stem (patch_embed), layers.0 .. layers.3           norm.grid
    convnext_tiny                  stem, stages.0 .. stages.3                         stages.3

The head (and the final norm before it) always trains. ViT and Swin are built for the trial's input size
(timm's img_size: the position table and the attention windows follow it) and take no other; published
weights are resampled to that size by timm's own checkpoint filters. ConvNeXt takes any size >= 32.

Grad-CAM needs a (B, C, H, W) map. A ViT's blocks carry (B, 1 + H*W, C) tokens and Swin's stages carry
(B, H, W, C) maps, so three LayerNorms of each (early, middle, late: the activations figure's layers)
become GridNorms: the same norm, whose output passes through an identity child, `grid`, laid out as
(B, C, H, W), then back. Grad-CAM hooks the last one's child like any conv block. For Swin that is the final
norm, over the last stage's map. For ViT it is the last block's first norm, not the block's output: the
class token the head reads is mixed with the patch tokens by that block's attention, after which the patch
tokens no longer reach the logits (their gradient is zero).

Weights are timm's ImageNet-1k ones from its Hugging Face hub, placed (or fetched) as one file
<arch>.<tag>.safetensors in torchvision's cache directory. timm publishes no hash to check them against,
so provenance records their SHA-256 and marks them unverified. ViT-S/16's weights (AugReg) expect inputs
normalised with mean = std = 0.5, not ImageNet's; the patch embedding is linear in its input, so loading
folds that change of scale into its weights and bias exactly, and the net takes the loader's inputs.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.config import Trial
from harness.models.catalog import ArchSpec, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the loader normalises with (harness.data.loader)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB = "https://huggingface.co/timm"  # timm's weights: HUB/<arch>.<tag>/resolve/main/model.safetensors


class TokenGrid(nn.Module):
    """Identity on a (B, C, H, W) map: the Grad-CAM layer of a transformer, run by GridNorm on its tokens.

    layout "tokens": (B, prefix + H*W, C) with `prefix` class (or register) tokens first, H == W;
    layout "nhwc": (B, H, W, C).
    """

    def __init__(self, layout: str, prefix: int = 0) -> None:
        super().__init__()
        if layout not in ("tokens", "nhwc"):
            raise ValueError(f"layout {layout!r}: expected tokens or nhwc")
        self.layout, self.prefix = layout, prefix

    def forward(self, grid: Tensor) -> Tensor:
        return grid

    def through(self, out: Tensor) -> Tensor:
        """`out` laid out as a map, passed through self (where Grad-CAM hooks it), and laid back."""
        if self.layout == "nhwc":
            return self(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        head, tokens = out[:, : self.prefix], out[:, self.prefix :]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid")
        grid = tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        return torch.cat([head, self(grid).flatten(2).transpose(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return f"layout={self.layout}, prefix={self.prefix}"


class GridNorm(nn.LayerNorm):
    """A LayerNorm whose output passes through a TokenGrid child, `grid`, on its way out.

    It takes the place of one of the net's LayerNorms, with that norm's own parameters: the state dict keeps
    timm's keys (the grid has no parameters) and the net computes what it did, with no hook left on it.
    """

    def __init__(self, norm: nn.LayerNorm, grid: TokenGrid) -> None:
        super().__init__(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
        self.weight, self.bias = norm.weight, norm.bias
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        return self.grid.through(super().forward(x))


@dataclass(frozen=True)
class TimmSpec(ArchSpec):
    """An arch timm builds (timm.create_model), with its published ImageNet weights."""

    family = "timm"
    tag: str = ""  # the pretrained tag of timm's weights: <name>.<tag> on the hub
    filter_module: str = ""  # the timm.models module whose checkpoint_filter_fn fits weights to the build
    # The LayerNorms GridNorms replace, early to late; the last one's grid is cam_layer, and all of them are
    # the activations figure's layers. (): the net's stages are maps already.
    grid_norms: tuple[str, ...] = ()
    grid_layout: str = "tokens"
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the input normalisation the weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD
    input_conv: str = ""  # the first layer on pixels, a conv without padding: folds a change of normalisation

    def new(self, trial: Trial, *, aux: bool, num_classes: int) -> nn.Module:
        import timm

        size = {"img_size": trial.image_size or self.native_size} if self.fixed_size else {}
        model = timm.create_model(self.name, pretrained=False, num_classes=num_classes, **size)
        for name in self.grid_norms:
            norm = model.get_submodule(name)
            if not isinstance(norm, nn.LayerNorm):
                raise TypeError(f"{self.name}: {name} is a {type(norm).__name__}, not a LayerNorm")
            owner, _, child = name.rpartition(".")
            grid = TokenGrid(self.grid_layout, prefix=getattr(model, "num_prefix_tokens", 0))
            setattr(model.get_submodule(owner) if owner else model, child, GridNorm(norm, grid))
        return model

    def weights_url(self) -> str:
        return f"{HUB}/{self.name}.{self.tag}/resolve/main/model.safetensors"

    def weights_file(self, url: str) -> str:
        return f"{self.name}.{self.tag}.safetensors"

    def read_weights(self, path: Path) -> Any:
        from safetensors.torch import load_file  # comes with timm

        return load_file(str(path), device="cpu")

    def write_weights(self, state: dict[str, Tensor], path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    def fit_state(self, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        if self.filter_module:
            fit = importlib.import_module(f"timm.models.{self.filter_module}").checkpoint_filter_fn
            state = fit(dict(state), model)  # e.g. the position table resampled to the build's grid
        return state

    def adapt_state(self, state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        state = self.fit_state(state, model)
        if (self.mean, self.std) != (IMAGENET_MEAN, IMAGENET_STD):
            state = self._fold_normalisation(state)
        return state

    def _fold_normalisation(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weights for ImageNet-normalised inputs from weights for (p - mean) / std inputs.

        The weights expect (p - mean) / std = a x + b for the loader's x = (p - m) / s, with a = s / std and
        b = (m - mean) / std per channel. A conv without padding is linear in its input, so
        W (a x + b) + c = (W a) x + (c + sum over channels and kernel of W b).
        """
        a = torch.tensor(IMAGENET_STD) / torch.tensor(self.std)
        b = (torch.tensor(IMAGENET_MEAN) - torch.tensor(self.mean)) / torch.tensor(self.std)
        w, c = state[f"{self.input_conv}.weight"], state[f"{self.input_conv}.bias"]
        out = dict(state)
        out[f"{self.input_conv}.weight"] = w * a.to(w)[None, :, None, None]
        out[f"{self.input_conv}.bias"] = c + (w.double().sum(dim=(2, 3)) @ b.double()).to(c)
        return out


# step_cost (relative to ResNet50, see harness.models.ArchSpec): forward FLOPs at 224 px (ViT-S/16 4.6 GFLOPs,
# Swin-T 4.5, ConvNeXt-T 4.5 against ResNet50's 4.1), raised for attention's and LayerNorm's memory traffic.
register(
    TimmSpec(
        name="vit_small_patch16_224",
        tag="augreg_in1k",  # ImageNet-1k only, as the torchvision archs
        native_size=224,
        step_cost=1.1,
        min_size=16,  # one 16 px patch
        fixed_size=True,
        # The stem, then the twelve blocks in four stages of three, as a ResNet's four layers.
        stages=(
            "cls_token+pos_embed+patch_embed",
            *("+".join(f"blocks.{i + j}" for j in range(3)) for i in (0, 3, 6, 9)),
        ),
        stage_names=("stem", "blocks0-2", "blocks3-5", "blocks6-8", "blocks9-11"),
        cam_layer="blocks.11.norm1.grid",
        grid_norms=("blocks.0.norm1", "blocks.6.norm1", "blocks.11.norm1"),
        figure_layers=("blocks.0.norm1.grid", "blocks.6.norm1.grid", "blocks.11.norm1.grid"),
        heads=("head",),
        filter_module="vision_transformer",
        mean=(0.5, 0.5, 0.5),  # AugReg's normalisation
        std=(0.5, 0.5, 0.5),
        input_conv="patch_embed.proj",
    )
)
register(
    TimmSpec(
        name="swin_tiny_patch4_window7_224",
        tag="ms_in1k",
        native_size=224,
        step_cost=1.3,
        min_size=4,  # one 4 px patch; the windows shrink to the map
        fixed_size=True,
        stages=("patch_embed", "layers.0", "layers.1", "layers.2", "layers.3"),
        stage_names=("stem", "layers.0", "layers.1", "layers.2", "layers.3"),
        cam_layer="norm.grid",
        grid_norms=("layers.0.blocks.0.norm1", "layers.2.blocks.0.norm1", "norm"),
        figure_layers=("layers.0.blocks.0.norm1.grid", "layers.2.blocks.0.norm1.grid", "norm.grid"),
        grid_layout="nhwc",
        heads=("head.fc",),
        filter_module="swin_transformer",
    )
)
register(
    TimmSpec(
        name="convnext_tiny",
        tag="fb_in1k",
        native_size=224,
        step_cost=1.2,
        min_size=32,  # stem 4 then three halvings
        stages=("stem", "stages.0", "stages.1", "stages.2", "stages.3"),
        cam_layer="stages.3",
        heads=("head.fc",),
        filter_module="convnext",
    )
)
