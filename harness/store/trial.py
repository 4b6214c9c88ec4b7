"""One trial's folder, results/<grid>/<key>/: the only code that names the files inside it."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import sha256
from harness.store.origin import provenance
from harness.store.writes import atomic_path, write_bytes, write_json, write_npz

log = logging.getLogger(__name__)


class Unreadable(ValueError):
    """A stored file exists but cannot be read back (truncated, corrupt, or changed since DONE)."""


class TrialFiles:
    """Every file inside one trial's folder, results/<grid>/<key>/: their paths, writers and readers.

    The only code that names them. DONE is written last and records the checksum of each result file,
    so a trial whose files were truncated, corrupted or lost since is not done and is redone.
    """

    TRIAL = "trial.json"
    METRICS = "metrics.json"
    HISTORY = "history.csv"
    PREDICTIONS = "predictions.npz"
    WEIGHTS = "model.pt"  # weights only, best validation AUROC
    RESUME = "last.pt"  # end-of-epoch state for resuming a killed trial; removed when done
    SEARCH = "search.json"  # a search trial's outcome (a pruned trial has no DONE)
    CAM = "cam"  # `harness cam` output folder
    CAM_SCORES = "cam_scores.json"
    CAM_GRID = "grid.png"  # findings x images: the paper's Figures 5-6
    CAM_ACTIVATIONS = "activations.png"  # the paper's Figure 4
    DONE = "DONE"  # written last: a trial without it is not a result
    FAILED = "failed.json"
    PROVENANCE = "provenance.json"  # the recipe: versions, hardware, determinism, data and weights digests, seeds
    REPRODUCED = "reproduced.json"  # `harness reproduce`'s latest certificate; written after DONE, not in its digests
    # Files whose checksums DONE records (those present). DONE also keeps history.csv's text: it is small, and
    # once the resume state is gone nothing else holds the training curve.
    CHECKED = (METRICS, PREDICTIONS, WEIGHTS, PROVENANCE, HISTORY)
    EXTERNAL = "external"  # `harness evaluate`: external/<dataset>.json (scores) and .npz (predictions)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TrialFiles({str(self.path)!r})"

    @property
    def key(self) -> str:
        return self.path.name

    def _file(self, name: str) -> Path:
        return self.path / name

    # --- the trial's settings, its metrics and its per-epoch history ---

    def write_trial(self, record: dict[str, Any]) -> None:
        write_json(self._file(self.TRIAL), record)

    def read_trial(self) -> dict[str, Any]:
        return self._read_json(self.TRIAL)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self._file(self.METRICS), metrics)

    def replace_metrics(self, metrics: dict[str, Any]) -> None:
        """Rewrite a finished trial's metrics (recomputed from its predictions) and DONE's checksum with them."""
        done = self._read_json(self.DONE)
        self.write_metrics(metrics)
        done.setdefault("sha256", {})[self.METRICS] = sha256(self._file(self.METRICS))
        write_json(self._file(self.DONE), done)

    def read_done(self) -> dict[str, Any]:
        """DONE's record: each result file's checksum and what produced the result (store.provenance())."""
        return self._read_json(self.DONE)

    def read_metrics(self) -> dict[str, Any]:
        return self._read_json(self.METRICS)

    def has_metrics(self) -> bool:
        return self._file(self.METRICS).is_file()

    def write_history(self, rows: Sequence[dict[str, Any]]) -> None:
        """Per-epoch rows as CSV; columns in first-seen order, a missing value left empty."""
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes(self._file(self.HISTORY), buf.getvalue().encode())

    def read_history(self) -> list[dict[str, Any]]:
        """The rows write_history wrote, numbers as numbers; [] when there is no history yet."""
        path = self._file(self.HISTORY)
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            return [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]

    # --- test (and validation) predictions: statistics are recomputed from them without retraining ---

    def write_predictions(self, **arrays: np.ndarray) -> None:
        write_npz(self._file(self.PREDICTIONS), **arrays)

    def read_predictions(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self._file(self.PREDICTIONS), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise Unreadable(f"{self._file(self.PREDICTIONS)}: unreadable ({exc})") from None

    def has_predictions(self) -> bool:
        return self._file(self.PREDICTIONS).is_file()

    # --- weights and resume state (torch only where they are read or written) ---

    def save_weights(self, state_dict: dict[str, Any]) -> None:
        _torch_save(state_dict, self._file(self.WEIGHTS))

    def load_weights(self, *, map_location: Any = "cpu") -> dict[str, Any]:
        return _torch_load(self._file(self.WEIGHTS), map_location)

    def has_weights(self) -> bool:
        return self._file(self.WEIGHTS).is_file()

    @property
    def weights_path(self) -> Path:
        """For messages and for readers that take a path (torch.load)."""
        return self._file(self.WEIGHTS)

    def save_resume(self, state: dict[str, Any]) -> None:
        _torch_save(state, self._file(self.RESUME))

    def load_resume(self, *, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The end-of-epoch state of an earlier attempt; None when there is none or it cannot be read.

        An unreadable file (a truncated write from before atomic writes, a corrupt disk) is moved aside to
        last.pt.unreadable with a warning naming it, so the trial restarts from scratch instead of failing forever.
        """
        path = self._file(self.RESUME)
        if not path.is_file():
            return None
        try:
            state = _torch_load(path, map_location)
            if not isinstance(state, dict) or "epoch" not in state:
                raise Unreadable(f"{path}: not a resume state")
            return state
        except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError, ... for a damaged file
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            log.warning("%s is unreadable (%s); moved to %s, the trial restarts from scratch", path, exc, aside.name)
            return None

    def drop_checkpoints(self) -> None:
        """Remove weights and resume state: a trial stopped early keeps its curve, not its weights."""
        for name in (self.RESUME, self.WEIGHTS):
            self._file(name).unlink(missing_ok=True)

    # --- the recipe that made the result, and certificates that it comes back from it ---

    def write_provenance(self, record: dict[str, Any]) -> None:
        write_json(self._file(self.PROVENANCE), record)

    def read_provenance(self) -> dict[str, Any] | None:
        """The recipe; None for a trial stored before recipes were recorded."""
        return self._read_json(self.PROVENANCE) if self._file(self.PROVENANCE).is_file() else None

    def write_reproduced(self, record: dict[str, Any]) -> None:
        """The latest certificate. Not one of DONE's checked files: certifying a result does not change it."""
        write_json(self._file(self.REPRODUCED), record)

    def read_reproduced(self) -> dict[str, Any] | None:
        return self._read_json(self.REPRODUCED) if self._file(self.REPRODUCED).is_file() else None

    # --- a search trial's outcome, and Grad-CAM output ---

    def write_search(self, record: dict[str, Any]) -> None:
        write_json(self._file(self.SEARCH), record)

    def cam_dir(self, out_dir: Path | str | None = None) -> Path:
        """Where `harness cam` writes its figures: out_dir when given, else the trial's cam/ folder."""
        return Path(out_dir) if out_dir is not None else self._file(self.CAM)

    def cam_overlay(self, finding: str, image: str, out_dir: Path | str | None = None) -> Path:
        """One (finding, image) overlay: e.g. Mass_00000013_005.png."""
        return self.cam_dir(out_dir) / f"{finding}_{Path(image).stem}.png"

    def cam_grid(self, out_dir: Path | str | None = None) -> Path:
        return self.cam_dir(out_dir) / self.CAM_GRID

    def cam_activations(self, out_dir: Path | str | None = None) -> Path:
        return self.cam_dir(out_dir) / self.CAM_ACTIVATIONS

    def write_cam_scores(self, scores: dict[str, Any], out_dir: Path | str | None = None) -> Path:
        path = self.cam_dir(out_dir) / self.CAM_SCORES
        write_json(path, scores)
        return path

    # --- scores on other datasets (`harness evaluate`): the .npz first, then the .json that commits it ---

    def _external(self, dataset: str, suffix: str) -> Path:
        if not dataset or "/" in dataset or dataset.startswith("."):
            raise ValueError(f"not a dataset name for a file: {dataset!r}")
        return self._file(self.EXTERNAL) / f"{dataset}{suffix}"

    def write_external(self, dataset: str, record: dict[str, Any], **arrays: np.ndarray) -> None:
        """One external dataset's predictions, then its scores with the predictions' checksum (the commit)."""
        npz = self._external(dataset, ".npz")
        write_npz(npz, **arrays)
        write_json(self._external(dataset, ".json"), {**record, "sha256": {npz.name: sha256(npz)}, **provenance()})

    def read_external(self, dataset: str) -> dict[str, Any] | None:
        """The scores on one external dataset when they are there and their predictions intact; else None."""
        path = self._external(dataset, ".json")
        if not path.is_file():
            return None
        try:
            record = self._read_json(f"{self.EXTERNAL}/{path.name}")
            npz = self._external(dataset, ".npz")
            if not npz.is_file() or sha256(npz) != record.get("sha256", {}).get(npz.name):
                return None
        except Unreadable:
            return None
        return record

    def read_external_predictions(self, dataset: str) -> dict[str, np.ndarray]:
        path = self._external(dataset, ".npz")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise Unreadable(f"{path}: unreadable ({exc})") from None

    def external_datasets(self) -> list[str]:
        """The datasets this trial has intact external scores on, sorted."""
        folder = self._file(self.EXTERNAL)
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        return [n for n in names if self.read_external(n) is not None]

    # --- the commit point: DONE with checksums, or failed.json ---

    def begin(self, record: dict[str, Any]) -> None:
        """A fresh attempt: trial.json written, and no stale failure or DONE marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._file(self.FAILED).unlink(missing_ok=True)
        self._file(self.DONE).unlink(missing_ok=True)
        self.write_trial(record)

    def mark_done(self) -> None:
        """Commit the trial: drop the resume state, then write DONE with a checksum of each result file."""
        self._file(self.RESUME).unlink(missing_ok=True)
        files = {name: sha256(self._file(name)) for name in self.CHECKED if self._file(name).is_file()}
        history = self._file(self.HISTORY)
        curve = {"history_csv": history.read_text()} if history.is_file() else {}
        write_json(self._file(self.DONE), {"key": self.key, "sha256": files, **curve, **provenance()})

    def restore_history(self) -> bool:
        """Write history.csv back from DONE's copy; False when DONE holds none (a trial stored before it did)."""
        try:
            text = self._read_json(self.DONE).get("history_csv")
        except Unreadable:
            return False
        if text is None:
            return False
        write_bytes(self._file(self.HISTORY), text.encode())
        return True

    def is_done(self) -> bool:
        """DONE and trial.json are there (cheap; `damaged` checks the rest). A metrics.json lost after the
        commit is damage like a truncated one: recomputed from intact predictions, not a reason to retrain."""
        return all(self._file(n).is_file() for n in (self.DONE, self.TRIAL))

    def damaged(self, *, weights: bool = True) -> dict[str, str]:
        """File name -> what is wrong with it, for a trial marked done; {} when every recorded file is intact.

        Every file is checked (an unreadable metrics.json does not hide a truncated predictions.npz), so a
        caller can tell a trial that recomputing its metrics heals from one that must be retrained.
        weights=False skips hashing model.pt (hundreds of MB; a report never reads it), but a missing one is named.
        """
        out: dict[str, str] = {}
        try:
            done = self._read_json(self.DONE)
        except Unreadable as exc:
            return {self.DONE: str(exc)}
        for name in (self.TRIAL, self.METRICS):
            try:
                self._read_json(name)
            except Unreadable as exc:
                out[name] = str(exc)
        for name, digest in (done.get("sha256") or {}).items():
            path = self._file(name)
            if name in out:
                continue
            if not path.is_file():
                out[name] = f"{path}: missing"
            elif name == self.WEIGHTS and not weights:
                continue
            elif sha256(path) != digest:
                out[name] = f"{path}: changed since the trial finished (checksum differs)"
        return out

    def problems(self, *, weights: bool = True) -> list[str]:
        """damaged(), as one line per file."""
        return list(self.damaged(weights=weights).values())

    def mark_failed(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self._file(self.FAILED), {**record, **provenance()})

    def failure(self) -> dict[str, Any] | None:
        if not self._file(self.FAILED).is_file():
            return None
        try:
            return self._read_json(self.FAILED)
        except Unreadable as exc:
            return {"key": self.key, "label": self.key, "reason": str(exc)}

    def _read_json(self, name: str) -> Any:
        path = self._file(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise Unreadable(f"{path}: missing") from None
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise Unreadable(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _torch_save(obj: Any, path: Path) -> None:
    import torch  # only writers of weights pay for torch; the report never does

    # Through a file object this code closes: on a failed write torch's own writer would keep the half-written
    # temporary open (its space not freed) while the error is handled, and its error would not carry the errno.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _torch_load(path: Path, map_location: Any) -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


@dataclass
class Result:
    """One finished trial as stored on disk."""

    trial: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def files(self) -> TrialFiles:
        return TrialFiles(self.path)

    def history(self):
        import pandas as pd  # only readers of history pay for pandas

        return pd.DataFrame(self.files.read_history())

    def predictions(self) -> dict[str, np.ndarray]:
        return self.files.read_predictions()
