"""One trial, top to bottom: set-up, then an epoch loop of train / evaluate / checkpoint, then test scoring and files."""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from harness import hardware, losses, metrics, models, recipe, rescore, store
from harness.checkpoint import CheckpointWriter
from harness.config import ConfigError, Runtime, Trial
from harness.data import loader, nih
from harness.optim import OPTIMIZERS
from harness.prepare import TrialData, prepare_data

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]


class TrialFailed(RuntimeError):
    """A deterministic failure (NaN loss, impossible settings): recorded, never retried."""


def check_trial(trial: Trial) -> None:
    """Check names and sizes against the registries before anything starts (ConfigError on the first problem)."""
    models.check(trial)
    if trial.loss not in losses.LOSSES:
        raise ConfigError(f"{trial.label}: {losses.LOSSES.unknown(trial.loss)}")
    if trial.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{trial.label}: {OPTIMIZERS.unknown(trial.optimizer)}")


def training_setup(
    trial: Trial, device: torch.device, *, prevalence: np.ndarray, compile: bool = False
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The model on the device, the module that steps (the model, or its torch.compile), the loss and the
    optimiser over the trainable parameters: as every trial, and every step benchmark, sets them up."""
    model = models.build(trial).to(device)
    if device.type == "cuda":
        # fixed input sizes: let cuDNN pick the fastest kernels, unless the trial must repeat bit for bit
        torch.backends.cudnn.benchmark = not trial.deterministic
        model = model.to(memory_format=torch.channels_last)
    loss_fn = losses.make_loss(trial, prevalence=prevalence).to(device)
    optimizer = OPTIMIZERS[trial.optimizer]([p for p in model.parameters() if p.requires_grad], trial)
    return model, torch.compile(model) if compile else model, loss_fn, optimizer


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (logits and loss are then taken in float32); off on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> torch.Tensor:
    """One optimiser step on a batch (bf16 autocast on CUDA); returns the detached loss."""
    with autocast(device):
        logits, aux = models.forward(model, x)
        loss = loss_fn(logits.float(), y)
        if aux is not None:  # InceptionV3's auxiliary head, weighted as in torchvision's recipe
            loss = loss + models.AUX_WEIGHT * loss_fn(aux.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_one_epoch(
    model: torch.nn.Module,
    batches: loader.Batches,
    *,
    trial: Trial,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    between_steps: Callable[[], None] = lambda: None,
) -> tuple[float, int]:
    """One pass over the training split; returns the mean loss and the number of images seen.

    between_steps runs after every step (the checkpoint writer's poll: it reports the previous epoch once
    that epoch's checkpoint is on disk)."""
    models.train_mode(model, trial)
    batches.set_epoch(epoch)
    total, seen = torch.zeros((), device=device), 0
    for step, (x, y) in enumerate(batches):
        loss = train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)
        total += loss * len(y)  # summed on the device: no sync per step
        seen += len(y)
        between_steps()
        if step % 50 == 0 and not math.isfinite(loss.item()):
            raise TrialFailed(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; lower lr or check the data")
    mean = (total / max(seen, 1)).item()
    if not math.isfinite(mean):
        raise TrialFailed(f"loss is {mean} at epoch {epoch + 1}; lower lr or check the data")
    return mean, seen


class Outputs(NamedTuple):
    """A split's model outputs, in its order: float32 logits and their sigmoid probabilities."""

    probs: np.ndarray
    logits: np.ndarray  # the ranking survives here where float32 sigmoids saturate to exactly 0 or 1


@torch.no_grad()
def predict(model: torch.nn.Module, batches: loader.Batches, *, device: torch.device, tta: str = "none") -> Outputs:
    """Probabilities and logits for a split, in its order; tta: the trial's test-time augmentation (models.TTA)."""
    model.eval()
    probs, logits = [], []
    for x, _ in batches:
        with autocast(device):
            out = models.forward_tta(model, x, tta=tta)
        out = out.float()
        probs.append(torch.sigmoid(out).cpu())
        logits.append(out.cpu())
    if not probs:
        return Outputs(*(np.zeros((0, len(nih.FINDINGS)), np.float32) for _ in range(2)))
    return Outputs(torch.cat(probs).numpy(), torch.cat(logits).numpy())


def centre_crops(batches: loader.Batches) -> loader.Batches:
    """The training batches as evaluation sees them (centre crop, no flip), still shuffled, over the same
    images: a copy shares the training batches' resident images once they are on the GPU."""
    out = copy.copy(batches)
    out.augment = False
    return out


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module, batches: loader.Batches, *, trial: Trial, device: torch.device
) -> None:
    """Precise BatchNorm (trial.bn_recalibrate > 0): the running statistics of every BatchNorm that trains become
    the plain average over that many training batches. They otherwise trail fast-moving weights (a scratch
    InceptionV3 then saturates in eval mode). Only BatchNorm runs in training mode (no dropout, no global RNG
    draw) and the batches are the same each time, so a checkpoint's statistics can be recomputed exactly."""
    layers = models.trained_batchnorms(model, trial)
    if trial.bn_recalibrate == 0 or not layers:
        return
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen since the reset
        m.train()
    batches.set_epoch(0)
    try:
        for x, _ in itertools.islice(batches, trial.bn_recalibrate):
            with autocast(device):
                models.forward(models.unwrap(model), x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()


def evaluate(
    model: torch.nn.Module, batches: loader.Batches, *, trial: Trial, device: torch.device, calibration: loader.Batches
) -> Outputs:
    """A split's outputs from the model as it stands, its BatchNorm statistics recalibrated first if the trial asks."""
    recalibrate_batchnorm(model, calibration, trial=trial, device=device)
    return predict(model, batches, device=device, tta=trial.tta)


def _val_auc(out: Outputs, labels: np.ndarray) -> float:
    per = metrics.per_finding(out.probs, labels, names=nih.FINDINGS, logits=out.logits)
    auc = metrics.macro(per, "auc")
    return float("nan") if auc is None else float(auc)


@dataclass
class Progress:
    """How far a trial has come: its per-epoch rows, the best validation AUROC so far, the next epoch to run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -math.inf
    next_epoch: int = 0
    has_weights: bool = False  # model.pt holds weights of this trial
    resumed_after: int = 0  # epochs an earlier, killed attempt finished before this one began (0: a fresh start)


def resume(files: store.TrialFiles, *, model, optimizer, scheduler, device: torch.device, label: str) -> Progress:
    """Carry on after the last epoch an earlier, killed attempt finished (its last.pt): model, optimiser,
    scheduler, history and the CPU generator restored. Without one, a fresh start."""
    state = files.load_resume(map_location=device)
    if state is None:
        return Progress(has_weights=files.has_weights())
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"].cpu())  # map_location moved it; the generator's state lives on the CPU
    log.info("%s: resuming after epoch %d", label, state["epoch"] + 1)
    done = state["epoch"] + 1
    return Progress(state["history"], state["best_auc"], done, files.has_weights(), resumed_after=done)


def resume_state(progress: Progress, *, model, optimizer, scheduler, epoch: int) -> dict[str, Any]:
    """What `resume` needs to carry on after `epoch`."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": progress.history,
        "best_auc": progress.best_auc,
        "epoch": epoch,
        "rng": torch.get_rng_state(),
    }


def keep_if_best(progress: Progress, val_auc: float) -> bool:
    """The checkpoint policy: True when these weights become model.pt, i.e. the best validation AUROC so far;
    with no AUROC at all (nan: no finding has both classes in validation), the first weights."""
    if val_auc > progress.best_auc or (math.isnan(val_auc) and not progress.has_weights):
        progress.best_auc = val_auc if not math.isnan(val_auc) else progress.best_auc
        progress.has_weights = True
        return True
    return False


def score(
    model: torch.nn.Module,
    td: TrialData,
    trial: Trial,
    *,
    device: torch.device,
    calibration: loader.Batches,
    test: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The final metrics (on the test split; on validation when test=False) and the predictions behind them."""
    val = evaluate(
        model, td.batches("val", trial, device=device, train=False), trial=trial, device=device, calibration=calibration
    )
    ids = td.data.table["patient_id"].to_numpy().astype(np.int64)
    arrays = {
        "val_probs": val.probs,
        "val_logits": val.logits,
        "val_labels": td.stored_labels("val"),
        "val_patient_id": ids[td.rows["val"]],
        "names": np.array(nih.FINDINGS),
    }
    if not test:
        return metrics.evaluate(
            val.probs,
            td.labels["val"],
            names=nih.FINDINGS,
            patient_ids=ids[td.rows["val"]],
            seed=trial.seed,
            logits=val.logits,
            **rescore.focal_terms(trial.to_dict()),
        ), arrays
    rows = td.rows["test"]
    # BatchNorm statistics as above
    out = predict(model, td.batches("test", trial, device=device, train=False), device=device, tta=trial.tta)
    arrays.update(
        probs=out.probs,
        logits=out.logits,
        labels=td.stored_labels("test"),
        image_index=td.data.table["image_index"].to_numpy().astype(str)[rows],
        patient_id=ids[rows],
    )
    # Thresholds are chosen on validation predictions; with no hold-out only the fixed 0.5 is reported.
    held_out = (
        {"val_probs": val.probs, "val_labels": td.labels["val"], "val_logits": val.logits} if len(val.probs) else {}
    )
    result = metrics.evaluate(
        out.probs,
        td.labels["test"],
        names=nih.FINDINGS,
        patient_ids=ids[rows],
        seed=trial.seed,
        logits=out.logits,  # AUROC ranks the logits: float32 probabilities saturate at 0 and 1
        **held_out,
        **rescore.focal_terms(trial.to_dict()),
    )
    return result, arrays


def score_cam(model: torch.nn.Module, trial: Trial, td: TrialData, *, device: torch.device) -> dict[str, Any]:
    """Grad-CAM against the test split's boxes."""
    from harness import cam  # only trials that ask for it pay for the CAM code

    return cam.score_trial(model, trial, td.data, td.rows["test"], td.images["test"], device=device)


def run_record(
    trial: Trial, td: TrialData, progress: Progress, *, device: torch.device, test: bool, train_seconds: float
) -> dict[str, Any]:
    """How the result was made, for metrics.json: the data, the device, time, memory, code and weights."""
    history = progress.history
    out = {
        "key": trial.key,
        "label": trial.label,
        "trial": trial.to_dict(),
        "dataset": td.data.dataset,
        "data_root": str(td.data.root),
        "split": "official" if test else "validation",
        "n_train": len(td.rows["train"]),
        "n_val": len(td.rows["val"]),
        "n_test": len(td.rows["test"]) if test else 0,
        "skipped_images": td.skipped,
        "best_val_auc": progress.best_auc,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_seconds": train_seconds,
        "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])) if history else None,
        "epochs_run": len(history),
        **hardware.peak_memory(device),
        **store.provenance(),
    }
    if trial.pretrained:
        out["weights"] = models.weights_provenance(trial.arch)
    elif trial.weights:
        out["weights"] = models.start.provenance(trial)
    # Only after a killed attempt (a lost node, a kill -9): a trial that ran straight through reads as before.
    if progress.resumed_after:
        out["resumed_after_epoch"] = progress.resumed_after
    return out


def _epochs(
    trial: Trial,
    td: TrialData,
    progress: Progress,
    files: store.TrialFiles,
    *,
    step_model: torch.nn.Module,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    report: Report,
    train_b: loader.Batches,
    val_b: loader.Batches,
) -> set[str]:
    """The epoch loop: train, validate, keep the best weights and the resume state (written in the background,
    each epoch reported once on disk); returns the ops that ran without a deterministic kernel, for the recipe."""
    # Leaving the writer waits for the last write (a failed write fails the trial); nondet names the ops that ran
    # without a deterministic kernel, for the recipe.
    with recipe.Nondeterminism(trial.deterministic) as nondet, CheckpointWriter(files) as writer:
        for epoch in range(progress.next_epoch, trial.epochs):
            t0 = time.perf_counter()
            train_loss, seen = train_one_epoch(
                step_model,
                train_b,
                trial=trial,
                loss_fn=loss_fn,
                optimizer=optimizer,
                device=device,
                epoch=epoch,
                between_steps=writer.poll,
            )
            t_train = time.perf_counter() - t0
            val = evaluate(step_model, val_b, trial=trial, device=device, calibration=centre_crops(train_b))
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": metrics.bce_loss(val.probs, td.labels["val"]),
                "val_auc": _val_auc(val, td.labels["val"]),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                "train_images_per_s": seen / max(t_train, 1e-9),
            }
            progress.history.append(row)
            # With no hold-out (val_fraction 0) there is nothing to select on: every epoch replaces the last.
            best = keep_if_best(progress, row["val_auc"]) or len(td.rows["val"]) == 0
            scheduler.step()
            state = resume_state(progress, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch)
            writer.submit(state, best=best, then=functools.partial(report, row))  # reported once on disk
    return nondet.ops


def run_trial(
    trial: Trial,
    runtime: Runtime,
    *,
    out_dir: Path,
    report: Report | None = None,
    test: bool = True,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one trial, keep the best-validation-AUROC weights, and write its result files into out_dir.

    test=False (searches) never touches the test split: metrics.json then holds validation metrics.
    context (e.g. the Ray node that ran it) is recorded in metrics.json as it is.

    Resumes from out_dir/last.pt (written in the background at the end of every epoch) when a previous
    attempt was killed.
    """
    report = report or (lambda row: None)
    check_trial(trial)
    recipe.apply_determinism(trial.deterministic)
    hardware.seed_everything(trial.seed)
    device = hardware.pick_device(runtime.device)
    hardware.keep_freed_memory()
    hardware.reset_peak_memory(device)
    td = prepare_data(trial, runtime)
    model, step_model, loss_fn, optimizer = training_setup(
        trial, device, prevalence=td.prevalence(), compile=runtime.compile
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=trial.lr_step, gamma=trial.lr_gamma)
    files = store.TrialFiles(out_dir)
    progress = resume(files, model=model, optimizer=optimizer, scheduler=scheduler, device=device, label=trial.label)
    train_b = td.batches("train", trial, device=device, train=True)
    val_b = td.batches("val", trial, device=device, train=False)

    t_start = time.perf_counter()
    nondet_ops = _epochs(
        trial, td, progress, files, step_model=step_model, model=model, loss_fn=loss_fn, optimizer=optimizer,
        scheduler=scheduler, device=device, report=report, train_b=train_b, val_b=val_b,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t_start

    model.load_state_dict(files.load_weights(map_location=device))
    result, arrays = score(model, td, trial, device=device, calibration=centre_crops(train_b), test=test)
    if trial.cam and test:
        result["cam"] = score_cam(model, trial, td, device=device)
    files.write_predictions(**arrays)
    files.write_history(progress.history)
    result.update(run_record(trial, td, progress, device=device, test=test, train_seconds=train_seconds))
    result.update(context or {})
    files.write_provenance(recipe.record(trial, td, device=device, ops=nondet_ops))
    files.write_metrics(result)
    return result
