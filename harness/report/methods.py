"""The methods note: each choice the paper leaves open, and the value these trials used, read from trial.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import store
from harness.config import TRIAL_FIELDS
from harness.report.cells import degenerate_record, field_order, field_text, hashable
from harness.report.context import Context, focal_params
from harness.report.paper import (
    DATASET_TITLES,
    DEFAULT_NATIVE_SIZE,
    F1_NOTE,
    FREEZE_STAGES,
    INCEPTION_AUX_MIN_SIZE,
    INCEPTION_AUX_WEIGHT,
    NATIVE_SIZES,
    arch_name,
)
from harness.report.recorded import recipe_rows, reproduced_rows


def _get(r: store.Result, name: str) -> Any:
    """A trial field; a trial.json written before the field existed held its default."""
    return r.trial.get(name, TRIAL_FIELDS[name].default if name in TRIAL_FIELDS else None)


def _archs(results: list[store.Result]) -> list[str]:
    return sorted({str(_get(r, "arch")) for r in results}, key=lambda a: field_order("arch", a))


def values(results: list[store.Result], name: str, show: Callable[[Any], str] = field_text, *, get=None) -> str:
    """One field (or `get`'s value) in words: its value; each arch's where the arch decides it; else every
    value, as varied."""
    get = get or (lambda r: _get(r, name))
    distinct = {hashable(get(r)): get(r) for r in results}
    if len(distinct) == 1:
        return show(next(iter(distinct.values())))
    per_arch: dict[str, set[str]] = {}
    for r in results:
        per_arch.setdefault(str(_get(r, "arch")), set()).add(hashable(get(r)))
    if all(len(v) == 1 for v in per_arch.values()):
        first = {str(_get(r, "arch")): get(r) for r in results}
        return ", ".join(f"{arch_name(a)} {show(first[a])}" for a in _archs(results))
    ordered = sorted(distinct.values(), key=lambda v: field_order(name, v))
    return "varied: " + ", ".join(show(v) for v in ordered)


def _size(r: store.Result) -> tuple[int, bool]:
    """The input size a trial trained at, and whether it is the arch's own (image_size 0)."""
    own = not _get(r, "image_size")
    return (NATIVE_SIZES.get(str(_get(r, "arch")), DEFAULT_NATIVE_SIZE) if own else int(_get(r, "image_size"))), own


def _px(size: tuple[int, bool]) -> str:
    return f"{size[0]} px" + (" (the arch's own)" if size[1] else "")


def freeze_text(arch: str, depth: int) -> str:
    """'freeze 2: conv1, conv2 fixed' from the stage table models.py follows."""
    if depth == 0:
        return "freeze 0: every layer trains"
    stages = FREEZE_STAGES.get(arch)
    if stages is None:
        return f"freeze {depth}: the first {depth} stages fixed (see models.py)"
    return f"freeze {depth}: {', '.join(stages[:depth])} fixed"


def _start(r: store.Result) -> str:
    """Where a trial's weights started: ImageNet, a file, or random init."""
    return "pretrained" if _get(r, "pretrained") else "from a weights file" if _get(r, "weights") else "scratch"


def _freeze(results: list[store.Result]) -> str:
    parts = []
    for what in ("pretrained", "from a weights file", "scratch"):
        chosen = [r for r in results if _start(r) == what]
        depths = {a: sorted({int(_get(r, "freeze")) for r in chosen if _get(r, "arch") == a}) for a in _archs(chosen)}
        if not depths:
            continue
        if all(d == [0] for d in depths.values()):
            parts.append(f"{what}: {freeze_text('', 0)} in every arch")
        else:
            per_arch = (f"{arch_name(a)} " + " / ".join(freeze_text(a, d) for d in ds) for a, ds in depths.items())
            parts.append(f"{what}: " + "; ".join(per_arch))
    return ". ".join(parts)


def _weights(ctx: Context) -> str:
    pretrained = [r for r in ctx.results if _get(r, "pretrained")]
    files = {
        (str(_get(r, "weights")), str(_get(r, "weights_sha256"))[:12]): str(_get(r, "arch"))
        for r in ctx.results
        if _get(r, "weights")
    }
    if not pretrained and not files:
        return "none loaded (no pretrained trials)"
    unverified = ctx.unverified_weights
    verified = sorted({str(_get(r, "arch")) for r in pretrained} - set(unverified))
    parts = [f"{arch_name(arch)} from {path} (SHA-256 {digest}...), head new" for (path, digest), arch in files.items()]
    if verified:
        parts.append(f"torchvision's ImageNet checkpoint, SHA-256 verified, for {', '.join(map(arch_name, verified))}")
    if unverified:
        parts.append(
            f"UNVERIFIED (a placeholder or altered file, not ImageNet weights) for {', '.join(map(arch_name, unverified))}"
        )
    return "; ".join(parts)


def _losses(results: list[store.Result]) -> str:
    out = []
    for loss in sorted({str(_get(r, "loss")) for r in results}):
        text = loss
        if loss == "focal":
            params = sorted({focal_params(r.trial) for r in results if _get(r, "loss") == "focal"})
            text += " (" + "; ".join(f"gamma {g:g}, alpha {a:g}" for g, a in params) + ")"
        out.append(text)
    return ", ".join(out)


def _recalibrate(n: Any) -> str:
    return "off (0: the paper's recipe)" if not n else f"on: {n} training batches before each evaluation"


def _seeds(ctx: Context) -> str:
    counts = sorted({len(c.results) for c in ctx.cells})
    seeds = sorted({int(_get(r, "seed")) for r in ctx.results})
    per = " or ".join(map(str, counts))
    return f"{per} per cell (seed {', '.join(map(str, seeds))})"


def _scores(ctx: Context) -> str:
    kinds = {degenerate_record(r).get("scores") for r in ctx.results}
    if kinds == {"logits"}:
        return "the saved logits (they keep the order a saturated float32 sigmoid ties)"
    if "logits" in kinds:
        return "the saved logits where a trial has them; the others' probabilities (saved before logits were)"
    return "the probabilities (no logits saved: these trials predate them)"


# Marks a row that is the harness's own choice, not a gap in the paper's description filled in.
OWN = " (the harness's choice)"


def _precision(r: store.Result) -> str:
    if r.metrics.get("device", "cpu") is None:  # lost with a damaged metrics.json (rescore.UNKNOWN_WITHOUT_METRICS)
        return "unknown (the device was lost with the trial's metrics.json)"
    on_gpu = str(r.metrics.get("device", "cpu")).startswith("cuda")
    return "bf16 autocast on CUDA (logits and losses in float32)" if on_gpu else "float32 (CPU)"


def _aux(results: list[store.Result]) -> str | None:
    inception = [r for r in results if _get(r, "arch") == "inception_v3"]
    if not inception:
        return None
    sizes = sorted({_size(r)[0] for r in inception})
    used = [s for s in sizes if s >= INCEPTION_AUX_MIN_SIZE]
    dropped = [s for s in sizes if s < INCEPTION_AUX_MIN_SIZE]
    where = "; ".join(
        [f"built at {', '.join(f'{s} px' for s in used)}"] * bool(used)
        + [f"left out at {', '.join(f'{s} px' for s in dropped)} (below the {INCEPTION_AUX_MIN_SIZE} px it needs)"]
        * bool(dropped)
    )
    return (
        f"its loss added with weight {INCEPTION_AUX_WEIGHT:g} in training (torchvision's recipe), unused in "
        f"evaluation; {where}"
    )


def methods(ctx: Context) -> list[tuple[str, str]]:
    """(choice, value used) for each choice the paper leaves open, and the other facts a reader needs; the
    harness's own choices say so in their name."""
    rs = ctx.results
    datasets = sorted({str(r.metrics.get("dataset") or _get(r, "dataset")) for r in rs})
    test = values(rs, "subset_test", lambda v: "shrunk like training (subset_test)" if v else "whole")
    return [
        ("Dataset", ", ".join(DATASET_TITLES.get(d, d) for d in datasets) + f"; test: the official test list ({test})"),
        ("Optimiser", values(rs, "optimizer") + ", weight decay " + values(rs, "weight_decay")),
        (
            "Learning rate and schedule",
            f"lr {values(rs, 'lr')}, multiplied by {values(rs, 'lr_gamma')} (lr_gamma) every "
            f"{values(rs, 'lr_step')} epochs (lr_step)",
        ),
        ("Epochs", values(rs, "epochs")),
        ("Checkpoint" + OWN, "the epoch with the best validation mean AUROC"),
        ("Batch", f"{values(rs, 'batch_size')} (training), {values(rs, 'eval_batch_size')} (evaluation)"),
        ("Frozen layers (freeze)", _freeze(rs)),
        (
            "Subset",
            f"subset_fraction {values(rs, 'subset_fraction')} of the train_val patients: whole patients, stratified "
            f"so each finding keeps its prevalence; validation: {values(rs, 'val_fraction')} of train_val "
            "(val_fraction), whole patients",
        ),
        ("Input size", values(rs, "image_size", _px, get=_size)),
        (
            "Resize and crop" + OWN,
            "each image resized once to 8/7 of the input size (torchvision's 256 -> 224 convention), then cropped "
            "to the input size: at random in training with augmentation, at the centre otherwise and in evaluation",
        ),
        ("Augmentation", values(rs, "augment", lambda v: "random crop and horizontal flip" if v else "none")),
        ("Precise BatchNorm (bn_recalibrate)" + OWN, values(rs, "bn_recalibrate", _recalibrate)),
        (
            "Test-time augmentation (tta)" + OWN,
            values(
                rs, "tta", lambda v: "none" if v == "none" else f"{v}: the mean of each image's and its mirror's logits"
            ),
        ),
        ("Precision" + OWN, values(rs, "device", get=_precision)),
        *([("InceptionV3 auxiliary head", aux)] if (aux := _aux(rs)) else []),
        ("Losses", _losses(rs)),
        ("Seeds", _seeds(ctx)),
        ("Pretrained weights", _weights(ctx)),
        ("AUROC ranks", _scores(ctx)),
        ("F1 thresholds", F1_NOTE),
        ("Degenerate output", _rule(rs)),
        *recipe_rows(rs),
        *reproduced_rows(rs),
    ]


def _rule(results: list[store.Result]) -> str:
    rules = {degenerate_record(r).get("rule") for r in results} - {None}
    return "; ".join(sorted(rules)) or "not recorded"
