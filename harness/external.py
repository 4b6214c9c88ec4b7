"""`harness evaluate`: finished trials scored on other datasets without retraining, over the findings both label.

Each trial's best weights (model.pt) run on the other dataset's test split (or, without an official split,
on all its frontal films) at the trial's own image size, centre-cropped as its test set was. The scores
cover only the findings that both the trial's own dataset and the other one label, and the trial's home
AUROC is recomputed from its stored test predictions over those same findings, so the two are comparable.
Uncertain labels are masked. Results go to each trial's external/<dataset>.json and .npz through the store,
the .json last with the predictions' checksum: an interrupted run redoes only what is missing or changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import hardware, metrics, models, rescore, store
from harness.config import TRIAL_FIELDS, ConfigError, Runtime, Trial, trial_from_dict
from harness.data import cache, loader, nih, readers
from harness.prepare import eval_batch_size
from harness.train import predict

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One external dataset, read once: its data and the rows every trial is scored on."""

    data: nih.NIHData
    rows: np.ndarray
    split: str  # in words, for the record

    @property
    def name(self) -> str:
        return self.data.dataset  # synthetic-chexpert for a synthetic tree: never taken for the real one

    @property
    def layout(self) -> str:
        return readers.layout_of(self.data)


def target(layout: str, root: Path | str) -> Target:
    """Read an external dataset and choose its scored rows: the official test split, or every frontal film."""
    reader = readers.registered()[layout]
    data = readers.load(root, layout=layout)
    if reader.official_split:
        names = data.table["image_index"].to_numpy()
        rows = np.flatnonzero(np.fromiter((n in data.test for n in names), bool, count=len(names)))
        split = "its official test split"
    else:
        rows, split = np.arange(len(data.table)), "all its frontal films (no official split)"
    if len(rows) == 0:
        raise ConfigError(f"{layout} data root {data.root}: no films to score ({split})")
    return Target(data, rows, split)


def shared_findings(home: str, other: str) -> list[str]:
    """The findings both datasets label, in FINDINGS order (home, other: dataset names)."""
    found = readers.registered()
    a, b = (set(found[readers.layout_for(d)].findings()) for d in (home, other))
    return [f for f in nih.FINDINGS if f in a and f in b]


def _trial(files: store.TrialFiles) -> Trial:
    values = files.read_trial()
    return trial_from_dict({k: v for k, v in values.items() if k in TRIAL_FIELDS}, where=str(files.path))


def _weights_digest(files: store.TrialFiles) -> str | None:
    return (files.read_done().get("sha256") or {}).get(files.WEIGHTS)


def home_scores(files: store.TrialFiles, trial: Trial, shared: list[str]) -> dict[str, Any]:
    """The trial's own test metrics over the shared findings, from its stored predictions."""
    p = files.read_predictions()
    names = [str(n) for n in p["names"]]
    idx = [names.index(f) for f in shared]
    out = metrics.evaluate(
        p["probs"][:, idx],
        p["labels"][:, idx],
        names=shared,
        patient_ids=p["patient_id"],
        logits=p["logits"][:, idx] if "logits" in p else None,
        seed=trial.seed,
        **rescore.focal_terms(trial.to_dict()),
    )
    return {"dataset": trial.dataset, **_summary(out)}


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "n_patients", "auc_macro", "auc_macro_ci", "auc_per_class", "ap_macro", "f1_macro", "bce", "undefined")
    return {k: out[k] for k in keep if k in out}


def score(files: store.TrialFiles, trial: Trial, tgt: Target, *, runtime: Runtime, device: torch.device) -> dict:
    """Score one trial on one external dataset and store it; returns the stored record."""
    shared = shared_findings(trial.dataset, tgt.name)
    if not shared:
        raise ConfigError(f"{trial.label}: {trial.dataset} and {tgt.name} label no finding in common")
    crop = models.image_size(trial)
    cached = cache.build(
        tgt.data, tgt.rows, size=loader.eval_load_size(crop, trial.eval_resize), cache_dir=runtime.cache_dir, workers=runtime.workers,
        progress=runtime.progress,
    )  # fmt: skip
    targets = readers.label_targets(tgt.data, "mask")[cached.rows]
    from harness.cam.command import load_model  # the trial's network with its saved weights, in eval mode

    model = load_model(files.path, trial, device=device)
    batches = loader.Batches(
        cached.images, targets, batch_size=eval_batch_size(trial, device), crop=crop, train=False, device=device
    )
    out = predict(model, batches, device=device, tta=trial.tta)
    idx = [nih.FINDINGS.index(f) for f in shared]
    pids = tgt.data.table["patient_id"].to_numpy().astype(np.int64)[cached.rows]
    scored = metrics.evaluate(
        out.probs[:, idx], targets[:, idx], names=shared, patient_ids=pids, logits=out.logits[:, idx],
        seed=trial.seed, **rescore.focal_terms(trial.to_dict()),
    )  # fmt: skip
    record = {
        "key": files.key,
        "label": trial.label,
        "dataset": tgt.name,
        "layout": tgt.layout,
        "data_root": str(tgt.data.root),
        "split": tgt.split,
        "uncertain": "mask",
        "image_size": crop,
        "findings": shared,
        "skipped_images": len(cached.skipped),
        "weights_sha256": _weights_digest(files),
        "home": home_scores(files, trial, shared),
        "external": scored,
    }
    files.write_external(
        tgt.name,
        record,
        probs=out.probs,
        logits=out.logits,
        labels=targets.astype(np.float32),
        names=np.array(nih.FINDINGS),
        image_index=tgt.data.table["image_index"].to_numpy().astype(str)[cached.rows],
        patient_id=pids,
    )
    return record


def is_current(files: store.TrialFiles, tgt: Target) -> dict[str, Any] | None:
    """The stored scores when they were made from these weights on this root, intact; else None."""
    record = files.read_external(tgt.name)
    if (
        record
        and record.get("data_root") == str(tgt.data.root)
        and record.get("weights_sha256") == _weights_digest(files)
    ):
        return record
    return None


def grid_dirs(results_dir: Path | str) -> list[Path]:
    """A grid folder (it holds trial folders), or every grid folder under a results folder."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; expected results/<grid> or a results folder holding grids")
    if any((d / store.TrialFiles.TRIAL).is_file() for d in root.iterdir() if d.is_dir()):
        return [root]
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and any((t / store.TrialFiles.TRIAL).is_file() for t in d.iterdir() if t.is_dir())
    )


def evaluate_results(results_dir: Path | str, on: dict[str, str], runtime: Runtime) -> list[dict[str, Any]]:
    """Score every finished, intact trial under results_dir on each dataset in `on` (layout -> root).

    Returns one row per (trial, dataset): key, label, dataset, home and external macro AUROC, and whether it
    was reused. Trials without weights (a search's pruned trials) are skipped and counted in the log.
    """
    if not on:
        raise ConfigError("nothing to score on: give --on NAME=PATH (NAME: chexpert, mimic, padchest, nih)")
    targets = [target(layout, root) for layout, root in on.items()]
    device = hardware.pick_device(runtime.device)
    rows = []
    for grid in grid_dirs(results_dir):
        scan = store.scan(grid, weights=True)
        for b in scan.broken:
            log.warning("%s: not intact, left out (%s)", grid / b.key, b)
        for result in scan.results:
            files = result.files
            if not files.has_weights():
                log.warning("%s: no saved weights; left out", files.path)
                continue
            trial = _trial(files)
            for tgt in targets:
                record = is_current(files, tgt)
                reused = record is not None
                record = record or score(files, trial, tgt, runtime=runtime, device=device)
                rows.append(
                    {
                        "grid": grid.name, "key": files.key, "label": trial.label, "dataset": tgt.name,
                        "findings": len(record["findings"]), "home": record["home"].get("auc_macro"),
                        "external": record["external"].get("auc_macro"), "reused": reused,
                    }
                )  # fmt: skip
    return rows
