"""Tests for harness.cam: Grad-CAM per image and per finding, box geometry, scores against chance, run_cam."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from harness import cam, models, store
from harness.config import ConfigError, Trial
from harness.data import cache, loader, nih

ARCHS = models.MODELS.names()


def small(arch: str) -> int:
    return max(models.spec(arch).min_size, 64)


@pytest.fixture(scope="module")
def built():
    """One scratch model per arch at its small size, shared by the tests (none of them may change it)."""
    got: dict[str, nn.Module] = {}

    def get(arch: str, **kw) -> nn.Module:
        key = f"{arch}{sorted(kw.items())}"
        if key not in got:
            torch.manual_seed(0)
            got[key] = models.build(Trial(arch=arch, image_size=small(arch), **kw))
        return got[key]

    return get


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


# --- the maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_every_arch_shape_range_and_no_side_effects(arch, built):
    model = built(arch)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    size = small(arch)
    maps = cam.cam(model, images(2, size), [0, 3], arch=arch)
    assert maps.shape == (2, size, size)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    for m in maps:  # each map is divided by its own maximum, or stays all zero
        assert float(m.max()) in (0.0, 1.0)
    assert model.training, "the caller's mode is restored"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "BatchNorm statistics changed"
    assert hooks(model) == 0


@pytest.fixture
def quick_smoothgrad(monkeypatch):
    monkeypatch.setattr(cam.maps, "SMOOTH_SAMPLES", 2)  # the same computation, fewer noisy copies: a faster test


@pytest.mark.parametrize("method", cam.METHODS.names())
def test_each_image_gets_its_own_finding_in_a_batch(method, built, quick_smoothgrad):
    model = built("alexnet")
    x = images(3, 64, seed=2)
    batch = cam.cam(model, x, [1, 4, 2], arch="alexnet", method=method)
    alone = cam.cam(model, x[2:3], 2, arch="alexnet", method=method)
    torch.testing.assert_close(batch[2], alone[0], atol=1e-5, rtol=0)
    # The target matters: image 2's map for another finding is a different map.
    other = cam.cam(model, x[2:3], 4, arch="alexnet", method=method)
    assert not torch.allclose(other[0], alone[0], atol=1e-3)
    with torch.no_grad():  # as a caller's evaluation loop might be; the CAM needs its own gradients
        first = cam.cam(model, x[:1], "Cardiomegaly", arch="alexnet", method=method)  # a name works as an index
    torch.testing.assert_close(batch[0], first[0], atol=1e-5, rtol=0)


def test_frozen_layers_and_any_layer(built):
    model = built("alexnet", freeze=5)  # every conv layer frozen
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 10
    for layer in ("features.11", "features[4]", "features.-4"):
        # One image, every finding: some finding's evidence at this layer is positive, so gradients got there.
        maps = cam.cam(model, images(1, 64).expand(14, -1, -1, -1), list(range(14)), layer=layer)
        assert maps.shape == (14, 64, 64) and maps.max() == 1
    assert all(p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == frozen


def test_bad_names_are_one_line_config_errors(built):
    model = built("alexnet")
    with pytest.raises(ConfigError, match=r"has no submodule 'featurs'.*did you mean 'features'"):
        cam.cam(model, images(1, 64), 0, layer="featurs.11")
    with pytest.raises(ConfigError, match="index 99 is out of range"):
        cam.cam(model, images(1, 64), 0, layer="features[99]")
    with pytest.raises(ConfigError, match="unknown finding 'Efusion'.*'Effusion'"):
        cam.cam(model, images(1, 64), "Efusion", arch="alexnet")
    with pytest.raises(ConfigError, match=r"unknown CAM method 'gradcam\+'.*valid: gradcam, gradcam\+\+, smoothgrad"):
        cam.cam(model, images(1, 64), 0, arch="alexnet", method="gradcam+")
    with pytest.raises(ConfigError, match="out of range; valid: 0..13"):
        cam.cam(model, images(1, 64), 14, arch="alexnet")
    assert hooks(model) == 0, "hooks are removed even when the CAM fails"


def test_activations_of_named_layers(built, tmp_path):
    model = built("resnet152")
    acts = cam.activations(model, images(2, 64), cam.figure_layers("resnet152"))
    assert list(acts) == ["layer1[0]", "layer2[-1]", "layer4[-1]"]  # the paper's Figure 4
    assert acts["layer1[0]"].shape == (2, 256, 16, 16) and acts["layer4[-1]"].shape == (2, 2048, 2, 2)
    assert hooks(model) == 0
    x = images(2, 64)
    was = model.training
    model.eval()
    with torch.no_grad():  # layer1[0] by hand: the stem, then the block
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = model.layer1[0](stem)
    model.train(was)
    torch.testing.assert_close(acts["layer1[0]"], expected, atol=1e-5, rtol=1e-5)
    path = cam.activation_figure(acts, tmp_path / "act.png", k=4)
    assert panels_per_column(path) == [3, 3, 3, 3]  # rows: the three layers; columns: k channels
    for arch in ARCHS:  # every arch has default figure layers that exist
        for name in cam.figure_layers(arch):
            cam.resolve_layer(built(arch), name)


def coloured(path: Path) -> np.ndarray:
    """(H, W) bool: the pixels of a saved figure that are neither grey nor white nor black."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return (np.abs(rgb[..., 0] - rgb[..., 1]) > 30) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 30)


def outlined(path: Path) -> np.ndarray:
    """(H, W) bool: the pixels of a saved figure in the boxes' outline colour (lime)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return (rgb[..., 1] > 200) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)


def runs(line: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D bool array."""
    edges = np.diff(np.r_[0, line.astype(int), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def panels_per_column(path: Path) -> list[int]:
    """The number of coloured panels down each column of panels of a saved figure."""
    mask = coloured(path)
    return [len(runs(mask[:, (a + b) // 2])) for a, b in runs(mask.any(0))]


def test_activation_figure_draws_a_panel_per_layer_and_channel(tmp_path):
    # A layer with fewer channels than k leaves its last cells empty.
    acts = {"a": torch.rand(2, 6, 16, 16), "b": torch.zeros(2, 3, 4, 4), "c": torch.rand(2, 9, 2, 2)}
    path = cam.activation_figure(acts, tmp_path / "act.png", k=4, title="three layers")
    assert panels_per_column(path) == [3, 3, 3, 2]


def test_overlay_puts_the_heat_and_the_box_where_they_are(tmp_path):
    size, load = 64, 73
    heat = np.zeros((size, size))
    heat[:32, :32] = 1.0  # the top-left quadrant only
    box = (512, 512, 400, 400)  # 1024 px coordinates: the lower right of the crop
    panel = (np.full((size, size), 128, np.uint8), heat, [box], "a title")
    path = cam.overlay_figure(panel, tmp_path / "overlay.png", load=load)
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    lime = outlined(path)
    tinted = coloured(path) & ~lime
    grey = np.abs(rgb - 128).max(-1) <= 3
    # The image's square on the figure (the longest runs: the title's anti-aliased text has grey pixels too),
    # and its figure pixels per input pixel.
    image = grey | tinted
    (top, bottom), (left, right) = (max(runs(image.any(a)), key=lambda r: r[1] - r[0]) for a in (1, 0))
    scale = (right - left + 1) / size
    assert scale == pytest.approx((bottom - top + 1) / size, rel=0.02)

    def near(figure_px: float, input_px: float) -> bool:
        return abs(figure_px - input_px * scale) <= scale  # within one input pixel

    rows, cols = np.flatnonzero(tinted.any(1)) - top, np.flatnonzero(tinted.any(0)) - left
    assert near(rows[0], 0) and near(rows[-1] + 1, 32) and near(cols[0], 0) and near(cols[-1] + 1, 32)
    assert tinted.sum() >= 0.8 * (32 * scale) ** 2, "the heat fills its quadrant"
    x0, y0, x1, y1 = cam.input_box(box, size=size, load=load)
    rows, cols = np.flatnonzero(lime.any(1)) - top, np.flatnonzero(lime.any(0)) - left
    assert near(rows[0], y0) and near(rows[-1] + 1, y1) and near(cols[0], x0) and near(cols[-1] + 1, x1)


def test_load_model_of_a_pretrained_trial_needs_no_imagenet_file(built, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no ImageNet weights anywhere
    source = built("inception_v3")
    torch.save(source.state_dict(), tmp_path / store.TrialFiles.WEIGHTS)
    trial = Trial(arch="inception_v3", image_size=small("inception_v3"), pretrained=True)
    model = cam.load_model(tmp_path, trial)
    # transform_input is not in the state dict: InceptionV3's ImageNet weights expect it on.
    assert model.transform_input is True and source.transform_input is False
    assert not model.training
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


# --- box geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 80, 224, 299])
def test_box_geometry_matches_the_eval_path(size, tmp_path):
    """A white box drawn on a 1024 px PNG, decoded by the cache and centre-cropped as the loader does."""
    load = loader.load_size(size)
    offset = (load - size) // 2
    assert offset == {64: 4, 80: 5, 224: 16, 299: 21}[size]  # load sizes 73, 91, 256, 342
    assert loader.centre_window(load, size) == slice(offset, offset + size)
    box = (300.0, 180.0, 250.0, 420.0)  # x, y, w, h in the 1024 px original
    x0, y0, x1, y1 = cam.input_box(box, size=size)
    k = load / 1024
    assert (x0, y0, x1, y1) == pytest.approx((300 * k - offset, 180 * k - offset, 550 * k - offset, 600 * k - offset))
    canvas = np.zeros((1024, 1024), np.uint8)
    canvas[180:600, 300:550] = 255
    Image.fromarray(canvas).save(tmp_path / "box.png")
    decoded = cache.read_gray(str(tmp_path / "box.png"), load)[offset : offset + size, offset : offset + size]
    mask = cam.box_mask(box, size=size)
    drawn = decoded >= 128
    assert mask.shape == (size, size)
    # Only the anti-aliased edge may disagree: at most one pixel row or column on each side.
    assert (mask != drawn).sum() <= 2 * (mask.shape[0] + mask.shape[1])
    assert (mask & drawn).sum() >= 0.9 * drawn.sum()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert abs(cols[0] - x0) <= 1 and abs(cols[-1] + 1 - x1) <= 1 and abs(rows[0] - y0) <= 1


@pytest.mark.parametrize("size", [64, 80])
def test_input_crop_is_what_the_network_sees(size):
    load = loader.load_size(size)
    cached = np.random.default_rng(size).integers(0, 256, (3, load, load), dtype=np.uint8)
    x, _ = next(iter(cam.eval_batches(cached, size=size, device=torch.device("cpu"), batch_size=3)))
    seen = np.rint((x[:, 0].double().numpy() * loader.IMAGENET_STD[0] + loader.IMAGENET_MEAN[0]) * 255)
    for image, pixels in zip(cached, seen):
        np.testing.assert_array_equal(cam.input_crop(image, size), pixels)


@pytest.mark.parametrize("size", [64, 224, 299])
def test_box_edges_crop_and_tolerance(size):
    whole = cam.box_mask((0, 0, 1024, 1024), size=size)
    assert whole.all(), "the whole image covers the whole crop"
    assert cam.input_box((0, 0, 1024, 1024), size=size) == (0.0, 0.0, float(size), float(size))
    margin = cam.box_mask((0, 0, 5, 5), size=size)  # inside the border the centre crop removes
    assert not margin.any()
    assert cam.score_map(np.ones((size, size)), (0, 0, 5, 5)) is None
    tiny = cam.box_mask((512, 512, 0.5, 0.5), size=size)
    assert tiny.sum() == 1, "a box smaller than a pixel still marks the pixel it is in"
    tol = cam.tolerance_px(size)
    assert tol == max(1, round(0.02 * size))
    box = (400, 400, 200, 200)
    grown = cam.box_mask(box, size=size, dilate=tol)
    plain = cam.box_mask(box, size=size)
    side = plain.any(0).sum()
    assert grown.any(0).sum() == side + 2 * tol and (grown & plain).sum() == plain.sum()


# --- scores --------------------------------------------------------------------------------------


def test_score_map_rules_and_chance():
    size = 64
    box = (256, 256, 256, 256)  # a quarter of the side each way
    inside = cam.box_mask(box, size=size)
    perfect = cam.score_map(inside.astype(float), box)
    assert perfect["pointing"] == 1 and perfect["energy"] == pytest.approx(1) and perfect["iou"] == pytest.approx(1)
    assert perfect["energy_chance"] == pytest.approx(inside.mean())
    grown = cam.box_mask(box, size=size, dilate=cam.tolerance_px(size))
    assert perfect["pointing_chance"] == pytest.approx(grown.mean())
    a = b = inside.sum()
    n = size * size
    assert perfect["iou_chance"] == pytest.approx((a * b / n) / (a + b - a * b / n))
    away = np.zeros((size, size))
    away[2, 2] = 1.0
    missed = cam.score_map(away, box)
    assert missed["pointing"] == 0 and missed["energy"] == 0 and missed["iou"] == 0
    for flat in (np.zeros((size, size)), np.full((size, size), 0.3)):  # no evidence: every score is chance
        s = cam.score_map(flat, box)
        for metric in cam.METRICS:
            assert s[metric] == pytest.approx(s[f"{metric}_chance"])
    assert cam.score_map(np.zeros((size, size)), box)["flat"]
    summary = cam.summarise(
        [
            {"finding": "Mass", "image_index": "a.png", **perfect},
            {"finding": "Mass", "image_index": "b.png", **missed},
            {"finding": "Effusion", "image_index": "a.png", **perfect},
        ]
    )
    assert summary["per_finding"]["Mass"]["n"] == 2 and summary["per_finding"]["Mass"]["pointing"] == 0.5
    assert summary["overall"]["n"] == 3 and summary["overall"]["n_images"] == 2
    assert summary["overall"]["pointing"] == pytest.approx(2 / 3)
    json.dumps(summary)


class Gate(nn.Module):
    """Multiplies each channel by its own spatial weight map (a learnable "where to look")."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class RegionNet(nn.Module):
    """1x1 conv, ReLU, spatial gate, global average pool, linear: CAM layer "gate"."""

    def __init__(self, size: int, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)
        self.relu = nn.ReLU()
        self.gate = Gate(channels, size)
        self.fc = nn.Linear(channels, models.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gate(self.relu(self.conv(x))).mean(dim=(2, 3)))


# Four findings, each with a fixed box (1024 px coordinates) in every image.
REGIONS = {
    "Atelectasis": (150, 200, 250, 200),
    "Effusion": (600, 650, 300, 220),
    "Mass": (620, 150, 180, 180),
    "Nodule": (200, 620, 120, 120),
}


def region_data(n: int, size: int, tmp_path: Path) -> tuple[nih.NIHData, np.ndarray, np.ndarray]:
    """Pure-noise images whose every (image, finding) has its REGIONS box; an in-memory NIHData."""
    names = [f"{i:08d}_000.png" for i in range(n)]
    table = pd.DataFrame(
        {
            "image_index": names,
            "patient_id": np.arange(n),
            "follow_up": 0,
            "age": 50,
            "sex": "F",
            "view": "PA",
            "path": "",
        }
    )
    boxes = pd.DataFrame(
        [(name, f, *REGIONS[f]) for name in names for f in REGIONS],
        columns=["image_index", "finding", "x", "y", "w", "h"],
    )
    data = nih.NIHData(
        root=tmp_path,
        dataset="synthetic",
        table=table,
        labels=np.zeros((n, len(nih.FINDINGS)), np.uint8),
        train_val=frozenset(),
        test=frozenset(names),
        boxes=boxes,
        missing=(),
    )
    load = loader.load_size(size)
    pixels = np.random.default_rng(0).integers(0, 256, (n, load, load), dtype=np.uint8)
    return data, np.arange(n), pixels


def handbuilt(size: int) -> RegionNet:
    """Finding f's logit is the mean intensity (+3) inside its box: its evidence lies there and nowhere else."""
    net = RegionNet(size, channels=len(REGIONS))
    with torch.no_grad():
        net.conv.weight.fill_(1 / 3)  # grey level, ImageNet-normalised: about -2.1 .. 2.6
        net.conv.bias.fill_(3.0)  # positive everywhere, so the ReLU passes it
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        for c, (finding, box) in enumerate(REGIONS.items()):
            net.gate.weight[c] = torch.from_numpy(cam.box_mask(box, size=size)).float()
            net.fc.weight[nih.FINDINGS.index(finding), c] = 1.0
    return net


@pytest.mark.parametrize("method", cam.METHODS.names())
def test_scores_follow_the_evidence_and_random_weights_score_chance(method, tmp_path, quick_smoothgrad):
    size = 64
    data, rows, pixels = region_data(40, size, tmp_path)
    trial = Trial(dataset="synthetic", arch="resnet50", image_size=size)
    known = cam.score_trial(handbuilt(size), trial, data, rows, pixels, device="cpu", layer="gate", method=method)
    torch.manual_seed(0)
    random = cam.score_trial(RegionNet(size), trial, data, rows, pixels, device="cpu", layer="gate", method=method)
    json.dumps(known)
    assert set(known["per_finding"]) == set(REGIONS)
    assert known["overall"]["n"] == 40 * len(REGIONS) and known["per_finding"]["Mass"]["n_images"] == 40
    assert known["method"] == method and known["layer"] == "gate" and known["tolerance_px"] == 1
    for f, s in known["per_finding"].items():
        assert s["pointing"] >= 0.95 and s["energy"] >= 0.95, f
        assert s["iou"] >= 0.5 and s["iou"] > 3 * s["iou_chance"], f
    r = random["overall"]
    assert r["pointing_chance"] == pytest.approx(known["overall"]["pointing_chance"])
    assert abs(r["pointing"] - r["pointing_chance"]) < 0.08, r
    assert abs(r["energy"] - r["energy_chance"]) < 0.05, r
    assert r["iou"] < 2 * r["iou_chance"] + 0.05, r
