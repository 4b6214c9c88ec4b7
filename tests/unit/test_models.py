"""Tests for harness.models, driven by the MODELS registry so a new arch is covered by adding it."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from harness import models
from harness.config import ConfigError, Trial
from harness.models import weightfiles

# timm's archs are registered only when timm is installed (an optional extra): without it they are not here.
ARCHS = models.MODELS.names()


def archs(keep) -> list[str]:
    """The registered archs whose spec passes keep(spec)."""
    return [a for a in ARCHS if keep(models.spec(a))]


def small(arch: str) -> int:
    """The smallest size a Trial allows (32) that the arch accepts: fast CPU tests. A transformer gets 64: at 32
    Swin's last stage is one token, whose attention (a softmax over itself) gives its position bias no gradient."""
    s = models.spec(arch)
    return max(s.min_size, 64 if s.fixed_size else 32)


def trial(arch: str, **kw) -> Trial:
    return Trial(arch=arch, image_size=kw.pop("image_size", small(arch)), **kw)


@pytest.fixture(scope="module")
def built():
    """One scratch model per arch at its small size, shared by the tests that restore what they change."""
    cache: dict[str, nn.Module] = {}

    def get(arch: str) -> nn.Module:
        if arch not in cache:
            torch.manual_seed(0)
            cache[arch] = models.build(trial(arch))
        return cache[arch]

    return get


def batch(arch: str, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = small(arch)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 2, (n, models.NUM_CLASSES), generator=g).float()


def stage_params(model: nn.Module, arch: str) -> list[dict[str, nn.Parameter]]:
    """Parameters of each stage, by dotted name (a stage may name a parameter itself: a ViT's class token)."""
    out = []
    own = dict(model.named_parameters())
    for group in models.spec(arch).stages:
        params = {}
        for name in group.split("+"):
            if name in own:
                params[name] = own[name]
            else:
                params.update({f"{name}.{k}": p for k, p in model.get_submodule(name).named_parameters()})
        out.append(params)
    return out


def stage_modules(model: nn.Module, group: str) -> list[nn.Module]:
    """The modules a stage names (not the parameters it names)."""
    own = dict(model.named_parameters())
    return [model.get_submodule(name) for name in group.split("+") if name not in own]


def batchnorms(model: nn.Module, group: str) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for top in stage_modules(model, group)
        for m in top.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


# --- the table itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_table_names_real_modules(arch, built):
    s, model = models.spec(arch), built(arch)
    for params in stage_params(model, arch):
        assert params, "a stage without parameters"
    model.get_submodule(s.cam_layer)
    for head in s.heads:
        if getattr(model, head.split(".")[0]) is not None:  # None: an auxiliary head left out at small sizes
            assert isinstance(model.get_submodule(head), nn.Linear)
            assert model.get_submodule(head).out_features == models.NUM_CLASSES
    assert models.weights_url(arch).startswith("https://")
    assert models.weights_path(arch).suffix in (".pth", ".safetensors")


def test_paper_and_reference_archs_registered():
    names = set(ARCHS) | set(models.UNAVAILABLE)
    assert {"alexnet", "resnet152", "inception_v3", "densenet121", "resnet50", "efficientnet_b0"} <= set(ARCHS)
    assert {"vit_small_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny"} <= names  # ViT-S, Swin-T, CNX-T


def test_image_size():
    assert models.image_size(Trial(arch="inception_v3")) == 299
    assert models.image_size(Trial(arch="resnet152")) == 224
    assert models.image_size(Trial(arch="alexnet", image_size=128)) == 128


# --- forward, backward, heads, Grad-CAM layer -----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_and_cam_layer(arch, built):
    model = built(arch)
    models.train_mode(model, trial(arch))
    seen = {}
    layer = model.get_submodule(models.spec(arch).cam_layer)

    def keep(module, inputs, out):
        seen["act"] = out
        out.register_hook(lambda grad: seen.update(grad=grad))

    handle = layer.register_forward_hook(keep)
    try:
        x, y = batch(arch)
        logits, aux = models.forward(model, x)
        nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
    finally:
        handle.remove()
    assert logits.shape == (2, models.NUM_CLASSES) and torch.isfinite(logits).all()
    assert aux is None  # no auxiliary head at small sizes
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # The Grad-CAM layer is a 4-D feature map whose gradient reaches it intact.
    assert seen["act"].ndim == 4 and seen["grad"].shape == seen["act"].shape
    assert seen["grad"].abs().sum() > 0 and torch.isfinite(seen["grad"]).all()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("arch", archs(lambda s: not s.fixed_size))
def test_min_size_is_the_real_boundary(arch, built):
    model, s = built(arch), models.spec(arch)
    model.eval()
    with torch.no_grad():
        assert models.forward(model, torch.zeros(1, 3, s.min_size, s.min_size))[0].shape == (1, models.NUM_CLASSES)
        if s.min_size > 1:
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, s.min_size - 1, s.min_size - 1))


def test_inception_aux_head_at_299():
    t = Trial(arch="inception_v3")
    model = models.build(t)
    assert model.AuxLogits.fc.out_features == models.NUM_CLASSES
    x = torch.randn(2, 3, 299, 299)
    y = torch.ones(2, models.NUM_CLASSES)
    models.train_mode(model, t)
    logits, aux = models.forward(model, x)
    assert logits.shape == aux.shape == (2, models.NUM_CLASSES)
    loss = nn.functional.binary_cross_entropy_with_logits
    (loss(logits, y) + models.AUX_WEIGHT * loss(aux, y)).backward()
    assert model.AuxLogits.fc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits, aux = models.forward(model, x[:1])
    assert logits.shape == (1, models.NUM_CLASSES) and aux is None


def test_inception_below_299_builds_without_aux_head(caplog):
    with caplog.at_level("INFO", logger="harness.models"):
        model = models.build(trial("inception_v3"))
    assert model.AuxLogits is None and not model.aux_logits
    assert "below the 299 px its auxiliary head needs" in caplog.text


# --- freezing --------------------------------------------------------------------------------------------


def frozen_and_trainable(model: nn.Module, arch: str, depth: int) -> tuple[dict, dict]:
    """Parameters by name: those in the first `depth` stages of the table, and all the others."""
    frozen = {n: p for params in stage_params(model, arch)[:depth] for n, p in params.items()}
    return frozen, {n: p for n, p in model.named_parameters() if n not in frozen}


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_every_depth_marks_exactly_its_stages(arch, built):
    model, s = built(arch), models.spec(arch)
    staged = {n for params in stage_params(model, arch) for n in params}
    assert set(dict(model.named_parameters())) - staged, "the head must stay outside every stage"
    for depth in range(len(s.stages) + 1):
        t = trial(arch, freeze=depth)
        models.freeze(model, t)
        models.train_mode(model, t)
        frozen, trainable = frozen_and_trainable(model, arch, depth)
        assert all(not p.requires_grad for p in frozen.values()) and all(p.requires_grad for p in trainable.values())
        asleep = {id(m) for group in s.stages[:depth] for top in stage_modules(model, group) for m in top.modules()}
        for name, m in model.named_modules():
            assert m.training == (id(m) not in asleep), f"depth {depth}: {name or arch} training={m.training}"
    models.freeze(model, trial(arch))


def step_and_check(model: nn.Module, arch: str, depth: int) -> None:
    """One training step at a freeze depth: frozen weights and BatchNorm statistics stay, the rest move."""
    s, t = models.spec(arch), trial(arch, freeze=depth)
    models.freeze(model, t)
    _frozen, trainable = frozen_and_trainable(model, arch, depth)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen_bn = [copy.deepcopy(bn.state_dict()) for g in s.stages[:depth] for bn in batchnorms(model, g)]
    live = batchnorms(model, s.stages[depth]) if depth < len(s.stages) else []
    counts = [int(bn.num_batches_tracked) for bn in live]
    models.train_mode(model, t)
    x, y = batch(arch)
    # EfficientNet's stochastic depth drops whole blocks in training: which ones must not depend on test order.
    torch.manual_seed(0)
    logits, _ = models.forward(model, x)
    nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
    # All parameters, as a careless trainer might pass them; a tiny eps makes any nonzero gradient move
    # its weight by about lr, however small the gradient of a randomly initialised net is.
    torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-30).step()
    try:
        for name, p in model.named_parameters():
            changed = not torch.equal(before[name], p)
            assert changed == (name in trainable), f"depth {depth}: {name} changed={changed}"
        for bn, old in zip([bn for g in s.stages[:depth] for bn in batchnorms(model, g)], frozen_bn):
            for k, v in bn.state_dict().items():
                assert torch.equal(v, old[k]), f"depth {depth}: frozen BatchNorm {k} moved"
        # The first trainable stage's BatchNorm still learns its statistics.
        assert all(int(bn.num_batches_tracked) == n + 1 for bn, n in zip(live, counts))
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(before[name])  # the shared model goes back to its weights
        model.zero_grad(set_to_none=True)
        models.freeze(model, trial(arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_stages_do_not_learn(arch, built):
    step_and_check(built(arch), arch, depth=(len(models.spec(arch).stages) + 1) // 2)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_stages_do_not_learn_at_any_depth(arch, built):
    for depth in range(len(models.spec(arch).stages) + 1):
        step_and_check(built(arch), arch, depth)


def test_build_applies_freeze_and_train_mode_sees_through_compile():
    t = trial("efficientnet_b0", freeze=2)
    model = models.build(t)
    assert not model.features[1][0].block[0][0].weight.requires_grad
    assert model.features[2][0].block[0][0].weight.requires_grad and model.classifier[1].weight.requires_grad
    wrapped = torch.compile(model)  # compiles lazily: wrapping alone is cheap
    models.train_mode(wrapped, t)
    assert model.features[2].training and not model.features[1].training and not model.features[0].training


# --- check() ---------------------------------------------------------------------------------------------


def test_check_unknown_arch_lists_valid_with_hint():
    with pytest.raises(ConfigError, match=r"unknown arch 'resnet153' \(did you mean 'resnet152'\?\); valid: .*alexnet"):
        models.check(Trial(arch="resnet153"))


@pytest.mark.parametrize("arch", ARCHS)
def test_check_freeze_too_deep_names_the_stages(arch):
    s = models.spec(arch)
    models.check(trial(arch, freeze=len(s.stages)))
    with pytest.raises(ConfigError) as err:
        models.check(trial(arch, freeze=len(s.stages) + 1))
    msg = str(err.value)
    assert f"freeze={len(s.stages) + 1} is deeper than {arch}'s {len(s.stages)} stages: {', '.join(s.labels)}" in msg
    assert "\n" not in msg


def test_check_freeze_message_for_resnet152():
    with pytest.raises(ConfigError, match="resnet152's 5 stages: stem, layer1, layer2, layer3, layer4"):
        models.check(Trial(arch="resnet152", freeze=7))


@pytest.mark.parametrize("arch", archs(lambda s: s.min_size > 32))
def test_check_image_too_small(arch):
    s = models.spec(arch)
    models.check(trial(arch, image_size=s.min_size))
    small_msg = f"image_size={s.min_size - 1} is below {arch}'s minimum input of {s.min_size}"
    with pytest.raises(ConfigError, match=small_msg):
        models.check(trial(arch, image_size=s.min_size - 1))
    with pytest.raises(ConfigError):
        models.build(trial(arch, image_size=s.min_size - 1))


# --- pretrained weights ----------------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache, and a network that fails the test if anything tries to download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_offline_and_uncached_raises_weights_missing(arch, torch_home):
    name = models.weights_path(arch).name
    assert models.weights_path(arch) == torch_home / name
    with pytest.raises(models.WeightsMissing) as err:
        models.build(trial(arch, pretrained=True))
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    assert f"pretrained {arch} needs ImageNet weights: place {name} in {torch_home} (download from https://" in msg


def _old_densenet_keys(state: dict) -> dict:
    """The layout of torchvision's released DenseNet file: 'norm.1' names and no num_batches_tracked."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for part in ("norm", "relu", "conv"):
            for i in "12":
                k = k.replace(f".{part}{i}.", f".{part}.{i}.")
        out[k] = v
    return out


def published(arch: str, seed: int = 123) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of the arch's published file: 1000 classes, the native size."""
    torch.manual_seed(seed)
    s = models.spec(arch)
    return s.new(Trial(arch=arch), aux=bool(s.aux_min_size), num_classes=1000).state_dict()


def place(arch: str, state: dict[str, torch.Tensor]) -> None:
    path = models.weights_path(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    models.spec(arch).write_weights(state, path)


@pytest.mark.filterwarnings("ignore:The default weight initialization of inception_v3")
@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_loads_the_cached_file(arch, torch_home):
    reference = published(arch)
    place(arch, _old_densenet_keys(reference) if arch == "densenet121" else reference)

    s = models.spec(arch)
    # A net built for one size only is loaded at its native size here: nothing is resampled.
    t = trial(arch, pretrained=True, image_size=s.native_size if s.fixed_size else small(arch))
    model = models.build(t)
    heads = tuple(f"{h}." for h in s.heads)
    folded = (f"{s.input_conv}.",) if getattr(s, "mean", None) not in (None, (0.485, 0.456, 0.406)) else ()
    own = model.state_dict()
    backbone = [k for k in reference if not k.startswith((*heads, "AuxLogits.", *folded))]
    assert len(backbone) > 10
    for k in backbone:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(own[k], reference[k]), k
    for head in s.heads:
        if not head.startswith("AuxLogits"):
            assert model.get_submodule(head).out_features == models.NUM_CLASSES
    size = models.image_size(t)
    logits, _ = models.forward(model.eval(), torch.randn(2, 3, size, size))
    assert logits.shape == (2, models.NUM_CLASSES)
    if arch == "inception_v3":
        assert model.transform_input  # ImageNet-normalised inputs mapped to the [-1, 1] scale the weights expect


@pytest.mark.parametrize("content", [b"this is not a checkpoint", "tensor", "wrong keys"])
def test_unreadable_weights_file_is_one_line_config_error(content, torch_home):
    path = models.weights_path("efficientnet_b0")
    torch_home.mkdir(parents=True)
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "wrong keys":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        models.build(trial("efficientnet_b0", pretrained=True))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "download.pytorch.org" in msg


def test_scratch_never_reads_the_cache(torch_home):
    model = models.build(trial("efficientnet_b0"))
    assert model.classifier[1].out_features == models.NUM_CLASSES
    assert not torch_home.exists()


def test_weights_provenance_tells_a_placeholder_from_the_published_file(torch_home):
    path = models.weights_path("alexnet")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    info = models.weights_provenance("alexnet")
    assert info["imagenet_verified"] is False and info["file"] == str(path) and len(info["sha256"]) == 64
    # A file whose SHA-256 starts with the digits in its name is what torchvision publishes.
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    renamed = path.with_name(f"alexnet-owt-{digest[:8]}.pth")
    path.rename(renamed)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(weightfiles, "weights_path", lambda arch: renamed)  # what weights_provenance reads
    try:
        assert models.weights_provenance("alexnet")["imagenet_verified"] is True
    finally:
        monkeypatch.undo()


# --- the timm family -----------------------------------------------------------------------------------

FIXED = archs(lambda s: s.fixed_size)


@pytest.mark.parametrize("arch", FIXED)
def test_a_fixed_size_net_takes_its_size_down_to_min_size_and_no_other(arch):
    s = models.spec(arch)
    net = models.build(Trial(arch=arch, image_size=s.min_size)).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, s.min_size, s.min_size)).shape == (1, models.NUM_CLASSES)
        with pytest.raises(RuntimeError):  # check() refuses the size; built anyway, the net fails
            below = s.new(Trial(arch=arch, image_size=s.min_size - 1), aux=False, num_classes=models.NUM_CLASSES)
            below.eval()(torch.zeros(1, 3, s.min_size - 1, s.min_size - 1))
        with pytest.raises(AssertionError, match="doesn't match model"):
            net(torch.zeros(1, 3, s.min_size + 16, s.min_size + 16))


@pytest.mark.parametrize("arch", FIXED)
def test_published_weights_are_resampled_to_a_smaller_build(arch, torch_home):
    place(arch, published(arch))
    model = models.build(trial(arch, pretrained=True, image_size=64)).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 64, 64))).all()


@pytest.mark.parametrize("arch", archs(lambda s: bool(getattr(s, "grid_norms", ()))))
def test_the_grid_norm_leaves_timms_net_as_it_was(arch):
    """Same state dict keys, same logits as timm's own net with the same weights, no hooks; a 4-D CAM layer."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = models.build(trial(arch, image_size=64)).eval()
    theirs = timm.create_model(arch, num_classes=models.NUM_CLASSES, img_size=64).eval()
    theirs.load_state_dict(model.state_dict())  # strict: the keys are timm's
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    s = models.spec(arch)
    assert s.cam_layer == s.figure_layers[-1]
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, out, name=name: seen.update({name: out.shape}))
        for name in s.figure_layers
    ]
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), rtol=0, atol=0)
    for handle in handles:
        handle.remove()
    assert all(len(shape) == 4 and shape[0] == 2 for shape in seen.values()) and len(seen) == 3
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_the_timm_family_folds_against_the_loaders_normalisation():
    from harness.data import loader
    from harness.models import timm as family

    assert (family.IMAGENET_MEAN, family.IMAGENET_STD) == (loader.IMAGENET_MEAN, loader.IMAGENET_STD)


def test_vit_weights_for_half_scale_inputs_are_folded_exactly(torch_home):
    """AugReg's ViT expects (p - 0.5) / 0.5; the loaded net on ImageNet-normalised inputs gives the same logits."""
    timm = pytest.importorskip("timm")
    state = published("vit_small_patch16_224")
    place("vit_small_patch16_224", state)
    ours = models.build(Trial(arch="vit_small_patch16_224", pretrained=True, image_size=64), num_classes=1000).eval()
    theirs = timm.create_model("vit_small_patch16_224", num_classes=1000, img_size=64).eval()
    fit = timm.models.vision_transformer.checkpoint_filter_fn
    theirs.load_state_dict(fit(dict(state), theirs))
    ours.head.load_state_dict(theirs.head.state_dict())  # build put a fresh head on; compare the rest
    pixels = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(ours((pixels - mean) / std), theirs((pixels - 0.5) / 0.5), rtol=1e-4, atol=1e-4)


def test_an_arch_whose_library_is_missing_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(models.UNAVAILABLE, "vit_huge_patch14_224", "timm")
    with pytest.raises(ConfigError, match=r": vit_huge_patch14_224 needs timm: pip install 'harness\[timm\]'$"):
        models.check(Trial(arch="vit_huge_patch14_224"))
    with pytest.raises(ConfigError, match=r"^vit_huge_patch14_224 needs timm"):
        models.weights_path("vit_huge_patch14_224")
    assert "vit_huge_patch14_224" not in models.MODELS
