"""A grid's results folder, results/<grid>/: its trials, its lock, and a scan of what is done, failed or broken."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.config import ConfigError, Trial
from harness.store.searchfiles import SearchFiles
from harness.store.trial import Result, TrialFiles
from harness.store.writes import _DISK_ERRORS, sweep_temp, write_bytes

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # results/<grid>/.lock: one run at a time


class StoreError(ConfigError):
    """The results directory cannot be used (not writable, locked by another run)."""


class Store:
    """results/<grid name>/: one directory per trial key, a DONE marker as the commit point."""

    STUDY = "study.db"  # a search's Optuna study (SQLite)
    SEARCH_OUTPUT = "search"  # search/<study>/: best trial, importances, plots, the best grid
    TUNE = ".tune"  # Ray Tune's experiment state
    TENSORBOARD = "tensorboard"  # tensorboard/<run name>/: every trial's TensorBoard event files
    MLFLOW = "mlflow.db"  # `--tracker mlflow`: the MLflow tracking store (SQLite); W&B's offline runs go to wandb/

    def __init__(self, grid_dir: Path | str) -> None:
        self.root = Path(grid_dir)

    @classmethod
    def of(cls, results_dir: Path | str, name: str) -> Store:
        """The folder of grid (or search) `name` under a results directory: results/<name>/."""
        return cls(Path(results_dir) / name)

    @property
    def study_path(self) -> Path:
        return self.root / self.STUDY

    @property
    def tune_dir(self) -> Path:
        return self.root / self.TUNE

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def mlflow_db(self) -> Path:
        return self.root / self.MLFLOW

    def search_files(self, study: str) -> SearchFiles:
        """A study's outputs: search/<study>/."""
        return SearchFiles(self.root / self.SEARCH_OUTPUT / study)

    def trial_dir(self, trial: Trial | str) -> Path:
        return self.root / (trial if isinstance(trial, str) else trial.key)

    def files(self, trial: Trial | str) -> TrialFiles:
        return TrialFiles(self.trial_dir(trial))

    def is_done(self, trial: Trial | str) -> bool:
        return self.files(trial).is_done()

    def failure(self, trial: Trial | str) -> dict[str, Any] | None:
        return self.files(trial).failure()

    def check_writable(self) -> None:
        """Fail early, in one line, when results cannot be written here."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bytes(self.root / ".write-test", b"ok")
            (self.root / ".write-test").unlink()
        except OSError as exc:
            reason = _DISK_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
            raise StoreError(
                f"results directory {self.root} is not writable ({reason}); choose another with --results DIR"
            ) from None

    def _in_use(self, holder: str) -> StoreError:
        return StoreError(
            f"{self.root} is in use by another run ({holder.strip() or 'another process'}); wait for it to "
            "finish or use another --results directory"
        )

    def check_usable(self) -> None:
        """What check_writable and lock() would refuse, found without writing anything: a results folder this
        process may not create or write, or one another run holds. A dry run and a run call it before any data
        is prepared, so neither learns of it minutes later."""
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StoreError(
                f"results directory {self.root} is not writable ({existing} is "
                f"{'not a directory' if not existing.is_dir() else 'read-only for this user'}); "
                "choose another with --results DIR"
            )
        lock = self.root / LOCK_FILE
        if not lock.is_file():
            return
        with open(lock) as fh:  # a shared lock probes without taking the run's exclusive one from anyone
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._in_use(fh.read()) from None
            fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the grid's lock for a whole run, so two runs never write the same results.

        Once held, no other writer of this grid is alive: the temporary files of writes a kill interrupted
        (a checkpoint's can be hundreds of MB) are removed then, with one line saying how much.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run, closed below
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise self._in_use(fh.read()) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}")
            fh.flush()
            swept, size = sweep_temp(self.root)
            if swept:
                log.warning(
                    "removed %d temporary file(s) (%s) that interrupted writes left under %s",
                    swept,
                    _megabytes(size),
                    self.root,
                )
            yield
        finally:
            fh.close()

    def begin(self, trial: Trial, grid: str) -> TrialFiles:
        """Prepare a trial's directory: its trial.json, and no stale failure or DONE marker."""
        files = self.files(trial)
        files.begin({**trial.to_dict(), "key": trial.key, "label": trial.label, "grid": grid})
        return files

    def mark_done(self, trial: Trial) -> None:
        self.files(trial).mark_done()

    def mark_failed(self, trial: Trial, reason: str, *, detail: str = "") -> None:
        self.files(trial).mark_failed(
            {"key": trial.key, "label": trial.label, "reason": reason, "detail": detail[-4000:]}
        )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


class Broken(NamedTuple):
    """A trial marked done whose files are not intact: its key and, per damaged file, what is wrong."""

    key: str
    damaged: dict[str, str]

    def __str__(self) -> str:
        return f"{self.key}: " + "; ".join(self.damaged.values())


@dataclass
class Scan:
    """What a grid folder holds: usable results, trials whose last attempt failed, and broken ones."""

    results: list[Result]
    failures: list[dict[str, Any]]
    broken: list[Broken]


def scan(grid_dir: Path | str, *, weights: bool = False) -> Scan:
    """Read every trial folder under grid_dir, checking each DONE trial's files against its checksums."""
    grid_dir = Path(grid_dir)
    results, failures, broken = [], [], []
    for d in sorted(p for p in grid_dir.iterdir() if p.is_dir()) if grid_dir.is_dir() else []:
        files = TrialFiles(d)
        if files.is_done():
            damaged = files.damaged(weights=weights)
            if damaged:
                broken.append(Broken(d.name, damaged))
            else:
                results.append(Result(trial=files.read_trial(), metrics=files.read_metrics(), path=d))
        elif (failure := files.failure()) is not None:
            failures.append(failure)
    results.sort(key=lambda r: (r.trial.get("label", ""), r.key))
    return Scan(results=results, failures=failures, broken=broken)


def load_results(grid_dir: Path | str) -> list[Result]:
    """Every finished, intact trial under grid_dir (a directory without DONE is not a result), sorted by label."""
    return scan(grid_dir).results


def load_failures(grid_dir: Path | str) -> list[dict[str, Any]]:
    """Trials whose last attempt failed and that have not succeeded since."""
    return scan(grid_dir).failures
