"""What the paper published and how the report names things: its values, sources, warnings, archs and columns."""

from __future__ import annotations

from dataclasses import dataclass

PAPER_SOURCE = (
    'Lei, Nguyen, Liu, Oh, "Deep Learning-Powered Classification of Thoracic Diseases in Chest '
    'X-Rays", Tables 1-2 (10% subset of the official NIH ChestX-ray14 split)'
)
# pretrained -> arch -> column -> value; the paper's Table 1 (scratch) has no focal-loss column.
PAPER_VALUES: dict[bool, dict[str, dict[str, float | None]]] = {
    False: {
        "alexnet": {"bce": 0.909, "focal": None, "f1": 0.251, "auc": 0.469},
        "resnet152": {"bce": 0.928, "focal": None, "f1": 0.274, "auc": 0.498},
        "inception_v3": {"bce": 0.936, "focal": None, "f1": 0.287, "auc": 0.500},
    },
    True: {
        "alexnet": {"bce": 0.7925, "focal": 0.0605, "f1": 0.1596, "auc": 0.6397},
        "resnet152": {"bce": 0.7945, "focal": 0.0609, "f1": 0.1401, "auc": 0.5940},
        "inception_v3": {"bce": 0.7866, "focal": 0.0595, "f1": 0.1560, "auc": 0.6390},
    },
}
PAPER_DIGITS = {False: 3, True: 4}  # as printed in Tables 1 and 2
PAPER_TABLES = (  # (stem, table number, pretrained, figure stem, title)
    ("table1_scratch", 1, False, "fig1_scratch", "Trained from scratch"),
    ("table2_pretrained", 2, True, "fig2_pretrained", "ImageNet-pretrained"),
)
# Table 2's title when a pretrained trial's weights file is not torchvision's ImageNet checkpoint.
PLACEHOLDER_TITLE = "Pretrained from placeholder weights, not ImageNet's"
PUBLISHED_AUROC = (
    "Published mean AUROC on the official patient-wise NIH ChestX-ray14 split: 0.745 for "
    "ResNet-50 (Wang et al. 2017, ChestX-ray8, CVPR; 14-finding update); about 0.80-0.82 for "
    "CheXNet-style DenseNet-121 reproductions (e.g. Guendel et al. 2018: 0.807)."
)
WEIGHTS_WARNING = (
    "UNVERIFIED WEIGHTS: the pretrained {archs} results loaded a weights file whose SHA-256 does not "
    "match torchvision's published ImageNet checkpoint (e.g. a placeholder): they are not "
    "ImageNet-pretrained results."
)
NIH_WEIGHTS_WARNING = (
    "STARTING WEIGHTS THAT MAY HAVE SEEN NIH TEST IMAGES: {files}. Test scores of trials started from them are "
    "not held-out scores, and not comparable with the paper's or published values."
)
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: these numbers come from rendered phantoms, not NIH ChestX-ray14. They are "
    "not comparable with the paper's or any published values, which are therefore not shown."
)
DATASET_TITLES = {
    "nih": "NIH ChestX-ray14",
    "synthetic": "SYNTHETIC phantoms, not NIH",
    "chexpert": "CheXpert",
    "mimic": "MIMIC-CXR-JPG",
    "padchest": "PadChest",
    "synthetic-chexpert": "SYNTHETIC phantoms in CheXpert's layout, not CheXpert",
    "synthetic-mimic": "SYNTHETIC phantoms in MIMIC-CXR-JPG's layout, not MIMIC",
    "synthetic-padchest": "SYNTHETIC phantoms in PadChest's layout, not PadChest",
}
# The paper's BCE column cannot be what this harness (or any mean per-element BCE) reports beside it.
PAPER_BCE_NOTE = (
    "The paper's BCE values (0.79-0.94) are above ln 2 = 0.693, the loss of predicting 0.5 everywhere, so "
    "they cannot be a mean per-element BCE like this table's (the mean over images and findings): the two "
    "columns are not comparable."
)
F1_NOTE = (
    "F1: macro over findings at the paper's fixed 0.5 threshold. F1 (val. thr.): at the thresholds that "
    "maximise each finding's F1 on the trial's validation split, fixed before the test set (point values)."
)
# What to try when a trial's output is degenerate (a saturated scratch InceptionV3 was the case that set it).
DEGENERATE_ADVICE = (
    "Try bn_recalibrate: 16 (precise BatchNorm before each evaluation), a lower learning rate, or more training steps."
)

# The stages Trial.freeze counts, as models.py defines them (the report never imports it: it needs torch).
# freeze k keeps the first k fixed; a test checks these against models.py's stages.
_RESNET_STAGE_TEXT = ("stem (conv1, bn1)", "layer1", "layer2", "layer3", "layer4")
FREEZE_STAGES: dict[str, tuple[str, ...]] = {
    "alexnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
    "resnet50": _RESNET_STAGE_TEXT,
    "resnet152": _RESNET_STAGE_TEXT,
    "inception_v3": ("stem (Conv2d_1a-4a)", "Mixed_5b-d", "Mixed_6a", "Mixed_6b-e", "Mixed_7a-c"),
    "densenet121": (
        "stem (conv0, norm0)",
        "block1 (denseblock1, transition1)",
        "block2 (denseblock2, transition2)",
        "block3 (denseblock3, transition3)",
        "block4 (denseblock4, norm5)",
    ),
    "efficientnet_b0": tuple(f"features.{i}" for i in range(9)),
    # the timm family (an optional extra)
    "vit_small_patch16_224": (
        "stem (patch_embed, cls_token, pos_embed)",
        "blocks0-2",
        "blocks3-5",
        "blocks6-8",
        "blocks9-11",
    ),
    "swin_tiny_patch4_window7_224": ("stem (patch_embed)", "layers.0", "layers.1", "layers.2", "layers.3"),
    "convnext_tiny": ("stem", "stages.0", "stages.1", "stages.2", "stages.3"),
}
# InceptionV3's auxiliary head as models.py trains it (a test keeps these equal to models.AUX_WEIGHT and the
# spec's aux_min_size; the report never imports torch): its loss weight, and the smallest input it is built at.
INCEPTION_AUX_WEIGHT, INCEPTION_AUX_MIN_SIZE = 0.4, 299
NATIVE_SIZES = {"inception_v3": 299}  # input size at image_size 0; every other arch: DEFAULT_NATIVE_SIZE
DEFAULT_NATIVE_SIZE = 224

# An arch's display name is derived from its torchvision name (resnet152 -> ResNet152, inception_v3 ->
# InceptionV3), so every registered arch has one; the family's spelling is the only thing written down.
ARCH_FAMILIES = {
    "alexnet": "AlexNet",
    "resnet": "ResNet",
    "resnext": "ResNeXt",
    "wide_resnet": "WideResNet",
    "inception": "Inception",
    "googlenet": "GoogLeNet",
    "densenet": "DenseNet",
    "efficientnet": "EfficientNet",
    "mobilenet": "MobileNet",
    "convnext": "ConvNeXt",
    "regnet": "RegNet",
    "vgg": "VGG",
    "vit": "ViT",
    "swin": "Swin",
}
ARCH_ORDER = ("alexnet", "resnet152", "inception_v3")  # the paper's row order; other archs follow by name

DAGGER = "\u2020"
DDAGGER = "\u2021"  # degenerate output
PM = "\u00b1"
DASH = "\u2014"


def arch_name(arch: str) -> str:
    """The arch as papers write it: its family's spelling, then the rest of its name (resnet152 -> ResNet152)."""
    family = max((f for f in ARCH_FAMILIES if arch.startswith(f)), key=len, default=None)
    if family is None:
        return arch
    out = ARCH_FAMILIES[family]
    for part in (p for p in arch[len(family) :].split("_") if p):
        if out[-1].isdigit() and part[0].isdigit():
            out += "-"  # wide_resnet50_2 -> WideResNet50-2
        out += part.upper() if len(part) <= 3 else part.capitalize()  # v3 -> V3, large -> Large
    return out


@dataclass(frozen=True)
class Column:
    """One metric column: its CSV name, header, key in metrics.json and the digits shown."""

    name: str
    header: str
    metric: str
    digits: int


# Report-only keys the report adds to each result's metrics (never written to metrics.json).
F1_VAL = "f1_macro_val"  # test F1 at the thresholds chosen on validation (metrics.json: thresholds.val_max_f1)
F1_VAL_RULE = "val_max_f1"
F1_VAL_COLUMN = Column("f1_val", "F1 (val. thr.)", F1_VAL, 3)

# Headers say what each number is: the losses are means over the test set, F1 at 0.5 unless said otherwise.
PAPER_COLUMNS = (
    Column("bce", "Test BCE", "bce", 4),
    Column("focal", "Test focal", "focal", 4),
    Column("f1", "F1", "f1_macro", 3),
    Column("auc", "AUROC", "auc_macro", 3),
)
GRID_COLUMNS = (
    Column("auc", "AUROC", "auc_macro", 3),
    Column("f1", "F1", "f1_macro", 3),
    F1_VAL_COLUMN,
    Column("ap", "AP", "ap_macro", 3),
    Column("bce", "Test BCE", "bce", 4),
    Column("focal", "Test focal", "focal", 4),
)
