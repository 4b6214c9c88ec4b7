"""The results store: the only code that knows the layout of results/<grid>/<key>/; every write is atomic."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.config import ConfigError, Trial

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # results/<grid>/.lock: one run at a time


class StoreError(ConfigError):
    """The results directory cannot be used (not writable, locked by another run)."""


_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error"}


class WriteFailed(OSError):
    """A result file could not be written (disk full, I/O error): the message names the file and the reason."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    A reader sees the old file or the complete new one, never a partial one, even after kill -9. A write
    that fails for want of space or an I/O error removes the temporary file and raises WriteFailed naming
    the file and the reason; the old file, if any, stays as it was.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync(path.parent)
    except BaseException as exc:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed) and exc.errno in _DISK_ERRORS:
            raise WriteFailed(exc.errno, f"{_DISK_ERRORS[exc.errno]} while writing {path}") from exc
        raise


def fsync(path: Path | str) -> None:
    """Flush a file's or a directory's entry to disk (a rename is durable once its directory is)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path | str) -> Iterator[None]:
    """Wait for an exclusive lock on `path` across processes: one builds a shared file, the others then reuse it."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even on an exception
        yield


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path | str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_npz(path: Path | str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def _git_commit() -> tuple[str, bool]:
    """The commit of the harness source tree and whether it has uncommitted changes."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("HARNESS_GIT_COMMIT", "unknown"), False


_PROVENANCE: dict[str, Any] | None = None


def provenance() -> dict[str, Any]:
    """What produced a result: harness version, git commit, Python and host."""
    global _PROVENANCE
    if _PROVENANCE is None:
        commit, dirty = _git_commit()
        _PROVENANCE = {
            "harness_version": __version__,
            "git_commit": commit,
            "git_dirty": dirty,
            "python": platform.python_version(),
            "host": platform.node(),
        }
    return dict(_PROVENANCE, written=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def sha256(path: Path | str) -> str:
    """The SHA-256 of a file, read in chunks (weights files are hundreds of MB)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    DONE = "DONE"  # written last: a trial without it is not a result
    FAILED = "failed.json"
    CHECKED = (METRICS, PREDICTIONS, WEIGHTS)  # files whose checksums DONE records

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

    def has_history(self) -> bool:
        return self._file(self.HISTORY).is_file()

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

    def has_resume(self) -> bool:
        return self._file(self.RESUME).is_file()

    def drop_checkpoints(self) -> None:
        """Remove weights and resume state: a trial stopped early keeps its curve, not its weights."""
        for name in (self.RESUME, self.WEIGHTS):
            self._file(name).unlink(missing_ok=True)

    # --- a search trial's outcome, and Grad-CAM output ---

    def write_search(self, record: dict[str, Any]) -> None:
        write_json(self._file(self.SEARCH), record)

    def read_search(self) -> dict[str, Any] | None:
        return self._read_json(self.SEARCH) if self._file(self.SEARCH).is_file() else None

    def cam_dir(self, out_dir: Path | str | None = None) -> Path:
        """Where `harness cam` writes its figures: out_dir when given, else the trial's cam/ folder."""
        return Path(out_dir) if out_dir is not None else self._file(self.CAM)

    def write_cam_scores(self, scores: dict[str, Any], out_dir: Path | str | None = None) -> Path:
        path = self.cam_dir(out_dir) / self.CAM_SCORES
        write_json(path, scores)
        return path

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
        write_json(self._file(self.DONE), {"key": self.key, "sha256": files, **provenance()})

    def is_done(self) -> bool:
        """DONE, metrics.json and trial.json are there (cheap; `problems` also checks the contents)."""
        return all(self._file(n).is_file() for n in (self.DONE, self.METRICS, self.TRIAL))

    def problems(self, *, weights: bool = True) -> list[str]:
        """Why a trial marked done is not a usable result: [] when every recorded file is intact.

        weights=False skips hashing model.pt (hundreds of MB); a report never reads it.
        """
        try:
            done = self._read_json(self.DONE)
            self._read_json(self.TRIAL)
            self._read_json(self.METRICS)
        except Unreadable as exc:
            return [str(exc)]
        out = []
        for name, digest in (done.get("sha256") or {}).items():
            if name == self.WEIGHTS and not weights:
                continue
            path = self._file(name)
            if not path.is_file():
                out.append(f"{path}: missing")
            elif sha256(path) != digest:
                out.append(f"{path}: changed since the trial finished (checksum differs)")
        return out

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

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


class Store:
    """results/<grid name>/: one directory per trial key, a DONE marker as the commit point."""

    STUDY = "study.db"  # a search's Optuna study (SQLite)
    SEARCH_OUTPUT = "search"  # search/<study>/: best trial, importances, plots, the best grid
    TUNE = ".tune"  # Ray Tune's experiment state

    def __init__(self, grid_dir: Path | str) -> None:
        self.root = Path(grid_dir)

    @property
    def study_path(self) -> Path:
        return self.root / self.STUDY

    @property
    def tune_dir(self) -> Path:
        return self.root / self.TUNE

    def search_dir(self, study: str) -> Path:
        return self.root / self.SEARCH_OUTPUT / study

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

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the grid's lock for a whole run, so two runs never write the same results."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run, closed below
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise StoreError(
                    f"{self.root} is in use by another run ({holder}); wait for it to finish "
                    "or use another --results directory"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}")
            fh.flush()
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


@dataclass
class Scan:
    """What a grid folder holds: usable results, trials whose last attempt failed, and broken ones."""

    results: list[Result]
    failures: list[dict[str, Any]]
    broken: list[str]  # one line each: the trial and what is wrong with its files


def scan(grid_dir: Path | str, *, weights: bool = False) -> Scan:
    """Read every trial folder under grid_dir, checking each DONE trial's files against its checksums."""
    grid_dir = Path(grid_dir)
    results, failures, broken = [], [], []
    for d in sorted(p for p in grid_dir.iterdir() if p.is_dir()) if grid_dir.is_dir() else []:
        files = TrialFiles(d)
        if files.is_done():
            problems = files.problems(weights=weights)
            if problems:
                broken.append(f"{d.name}: " + "; ".join(problems))
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
