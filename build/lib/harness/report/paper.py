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
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: these numbers come from rendered phantoms, not NIH ChestX-ray14. They are "
    "not comparable with the paper's or any published values, which are therefore not shown."
)
DATASET_TITLES = {"nih": "NIH ChestX-ray14", "synthetic": "SYNTHETIC phantoms (not NIH)"}

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


PAPER_COLUMNS = (
    Column("bce", "BCE loss", "bce", 4),
    Column("focal", "Focal loss", "focal", 4),
    Column("f1", "F1", "f1_macro", 3),
    Column("auc", "AUC", "auc_macro", 3),
)
GRID_COLUMNS = (
    Column("auc", "AUROC", "auc_macro", 3),
    Column("f1", "F1", "f1_macro", 3),
    Column("ap", "AP", "ap_macro", 3),
    Column("bce", "BCE loss", "bce", 4),
    Column("focal", "Focal loss", "focal", 4),
)
