"""One trial, top to bottom: data, model, the epoch loop, the best checkpoint, test metrics, files."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import hardware, losses, metrics, models, store
from harness.config import ConfigError, Runtime, Trial
from harness.data import cache, loader, nih
from harness.registry import Registry

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def _adam(params, trial: Trial) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=trial.lr, weight_decay=trial.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, trial: Trial) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=trial.lr, weight_decay=trial.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(params, trial: Trial) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=trial.lr, momentum=0.9, nesterov=True, weight_decay=trial.weight_decay)


class TrialFailed(RuntimeError):
    """A deterministic failure (NaN loss, impossible settings): recorded, never retried."""


def check_trial(trial: Trial) -> None:
    """Check names and sizes against the registries before anything starts (ConfigError on the first problem)."""
    models.check(trial)
    if trial.loss not in losses.LOSSES:
        raise ConfigError(f"{trial.label}: {losses.LOSSES.unknown(trial.loss)}")
    if trial.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{trial.label}: {OPTIMIZERS.unknown(trial.optimizer)}")


def eval_batch_size(trial: Trial, device: torch.device) -> int:
    """Evaluation needs no gradients: batches far larger than the paper's 32 keep a GPU busy (same outputs)."""
    return max(trial.eval_batch_size, 256 if device.type == "cuda" else 64)


@dataclass
class TrialData:
    """The three splits of one trial, cached at its resolution and ready to batch."""

    data: nih.NIHData
    labels: dict[str, np.ndarray]  # split -> (n, 14) float32
    images: dict[str, np.ndarray]  # split -> (n, S, S) uint8, memory-mapped
    rows: dict[str, np.ndarray]  # split -> row indices into data.table
    skipped: int

    def batches(self, split: str, trial: Trial, *, device: torch.device, train: bool) -> loader.Batches:
        return loader.Batches(
            self.images[split],
            self.labels[split],
            batch_size=trial.batch_size if train else eval_batch_size(trial, device),
            crop=models.image_size(trial),
            train=train,
            augment=trial.augment and train,
            device=device,
            seed=trial.seed,
            drop_last=train and len(self.labels[split]) > trial.batch_size,
        )


def prepare_data(trial: Trial, runtime: Runtime) -> TrialData:
    """Read the NIH-layout tree, split it by patient, and load (or build) the uint8 caches."""
    if runtime.data_root is None:
        raise ConfigError("no data root resolved for the trial")
    data = nih.load(runtime.data_root)
    if data.dataset != trial.dataset:
        raise ConfigError(
            f"{trial.label}: trial says dataset={trial.dataset} but {data.root} holds {data.dataset} data"
        )
    splits = nih.split(
        data,
        val_fraction=trial.val_fraction,
        seed=trial.seed,
        subset_fraction=trial.subset_fraction,
        subset_test=trial.subset_test,
    )
    size = loader.load_size(models.image_size(trial))
    out = TrialData(data=data, labels={}, images={}, rows={}, skipped=0)
    for name, rows in splits.items():
        cached = cache.build(
            data, rows, size=size, cache_dir=runtime.cache_dir, workers=runtime.workers, progress=runtime.progress
        )
        out.images[name] = cached.images
        out.rows[name] = cached.rows
        out.labels[name] = data.labels[cached.rows].astype(np.float32)
        out.skipped += len(cached.skipped)
    return out


def training_setup(
    trial: Trial, device: torch.device, *, prevalence: np.ndarray, compile: bool = False
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The model on the device, the module that steps (the model, or its torch.compile), the loss and the
    optimiser over the trainable parameters: as every trial, and every step benchmark, sets them up."""
    model = models.build(trial).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        model = model.to(memory_format=torch.channels_last)
    loss_fn = losses.make_loss(trial, prevalence=prevalence).to(device)
    optimizer = OPTIMIZERS[trial.optimizer]([p for p in model.parameters() if p.requires_grad], trial)
    return model, torch.compile(model) if compile else model, loss_fn, optimizer


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
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
) -> tuple[float, int]:
    """One pass over the training split; returns the mean loss and the number of images seen."""
    models.train_mode(model, trial)
    batches.set_epoch(epoch)
    total, seen = torch.zeros((), device=device), 0
    for step, (x, y) in enumerate(batches):
        loss = train_step(model, x, y, loss_fn=loss_fn, optimizer=optimizer, device=device)
        total += loss * len(y)  # summed on the device: no sync per step
        seen += len(y)
        if step % 50 == 0 and not math.isfinite(loss.item()):
            raise TrialFailed(f"loss is {loss.item()} at epoch {epoch + 1}, step {step}; lower lr or check the data")
    mean = (total / max(seen, 1)).item()
    if not math.isfinite(mean):
        raise TrialFailed(f"loss is {mean} at epoch {epoch + 1}; lower lr or check the data")
    return mean, seen


@torch.no_grad()
def predict(model: torch.nn.Module, batches: loader.Batches, *, device: torch.device) -> np.ndarray:
    """Sigmoid probabilities for a split, in its order."""
    model.eval()
    out = []
    for x, _ in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, _ = models.forward(model, x)
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(nih.FINDINGS)), np.float32)


def _val_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    per = metrics.per_finding(probs, labels, names=nih.FINDINGS)
    auc = metrics.macro(per, "auc")
    return float("nan") if auc is None else float(auc)


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

    Resumes from out_dir/last.pt (written at the end of every epoch) when a previous attempt was killed.
    """
    report = report or (lambda row: None)
    check_trial(trial)
    hardware.seed_everything(trial.seed)
    device = hardware.pick_device(runtime.device)
    hardware.keep_freed_memory()
    hardware.reset_peak_memory(device)
    td = prepare_data(trial, runtime)
    prevalence = td.labels["train"].mean(axis=0)

    model, step_model, loss_fn, optimizer = training_setup(
        trial, device, prevalence=prevalence, compile=runtime.compile
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=trial.lr_step, gamma=trial.lr_gamma)

    history: list[dict[str, Any]] = []
    best_auc, start = -math.inf, 0
    files = store.TrialFiles(out_dir)
    state = files.load_resume(map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_auc, start = state["history"], state["best_auc"], state["epoch"] + 1
        torch.set_rng_state(state["rng"])
        log.info("%s: resuming after epoch %d", trial.label, start)

    train_b = td.batches("train", trial, device=device, train=True)
    val_b = td.batches("val", trial, device=device, train=False)
    t_start = time.perf_counter()
    for epoch in range(start, trial.epochs):
        t0 = time.perf_counter()
        train_loss, seen = train_one_epoch(
            step_model, train_b, trial=trial, loss_fn=loss_fn, optimizer=optimizer, device=device, epoch=epoch
        )
        t_train = time.perf_counter() - t0
        val_probs = predict(step_model, val_b, device=device)
        val_loss = metrics.bce_loss(val_probs, td.labels["val"])
        val_auc = _val_auc(val_probs, td.labels["val"])
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auc": val_auc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
            "train_images_per_s": seen / max(t_train, 1e-9),
        }
        history.append(row)
        if val_auc > best_auc or (math.isnan(val_auc) and not files.has_weights()):
            best_auc = val_auc if not math.isnan(val_auc) else best_auc
            files.save_weights(model.state_dict())
        scheduler.step()
        files.save_resume(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best_auc": best_auc,
                "epoch": epoch,
                "rng": torch.get_rng_state(),
            }
        )
        report(row)
    train_seconds = time.perf_counter() - t_start

    model.load_state_dict(files.load_weights(map_location=device))
    val_probs = predict(model, val_b, device=device)
    ids = td.data.table["patient_id"].to_numpy().astype(np.int64)
    names = td.data.table["image_index"].to_numpy().astype(str)
    arrays = {
        "val_probs": val_probs.astype(np.float32),
        "val_labels": td.labels["val"].astype(np.uint8),
        "val_patient_id": ids[td.rows["val"]],
        "names": np.array(nih.FINDINGS),
    }
    if test:
        test_rows = td.rows["test"]
        test_probs = predict(model, td.batches("test", trial, device=device, train=False), device=device)
        arrays.update(
            probs=test_probs.astype(np.float32),
            labels=td.labels["test"].astype(np.uint8),
            image_index=names[test_rows],
            patient_id=ids[test_rows],
        )
        result = metrics.evaluate(
            test_probs,
            td.labels["test"],
            names=nih.FINDINGS,
            patient_ids=ids[test_rows],
            val_probs=val_probs,
            val_labels=td.labels["val"],
            seed=trial.seed,
        )
    else:
        result = metrics.evaluate(
            val_probs, td.labels["val"], names=nih.FINDINGS, patient_ids=ids[td.rows["val"]], seed=trial.seed
        )
    if trial.cam and test:
        from harness import cam  # only trials that ask for it pay for the CAM code

        result["cam"] = cam.score_trial(model, trial, td.data, td.rows["test"], td.images["test"], device=device)
    files.write_predictions(**arrays)
    files.write_history(history)
    result.update(
        {
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
            "best_val_auc": best_auc,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "train_seconds": train_seconds,
            "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])) if history else None,
            "epochs_run": len(history),
            **hardware.peak_memory(device),
            **store.provenance(),
        }
    )
    if trial.pretrained:
        result["weights"] = models.weights_provenance(trial.arch)
    result.update(context or {})
    files.write_metrics(result)
    return result


def resolve_dataset(trials: list[Trial], runtime: Runtime) -> tuple[list[Trial], Runtime]:
    """Point trials at real NIH data when a root is given, else at the embedded synthetic set, loudly."""
    from harness.data import synthetic

    root = nih.locate(runtime.data_root)
    if root is None:
        root = synthetic.default_root(runtime.cache_dir)
        log.warning(
            "no NIH data root (--data-root or HARNESS_DATA_ROOT): using the embedded SYNTHETIC "
            "dataset at %s; every result is labelled dataset=synthetic and is not an NIH number",
            root,
        )
    dataset = nih.load(root).dataset
    out = []
    for t in trials:
        if t.dataset == "synthetic" and dataset == "nih":
            raise ConfigError(
                f"{t.label}: dataset=synthetic but {root} holds the real NIH data; drop --data-root or set dataset: nih"
            )
        out.append(t.replace(dataset=dataset))
    if dataset == "synthetic" and any(t.dataset == "nih" for t in trials):
        log.warning("dataset=nih trials run on SYNTHETIC data at %s and are recorded as dataset=synthetic", root)
    return out, replace(runtime, data_root=str(root))


def prepare_all(trials: Sequence[Trial], runtime: Runtime) -> None:
    """Build every cache the trials need once, up front, with all cores (trials then only read them)."""
    seen = set()
    for t in trials:
        shape = (t.dataset, t.val_fraction, t.seed, t.subset_fraction, t.subset_test, models.image_size(t))
        if shape not in seen:
            seen.add(shape)
            prepare_data(t, runtime)
