"""The results store: the only code that knows the layout of results/<grid>/<key>/; every write is atomic."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.config import ConfigError, Trial

TRIAL_FILE = "trial.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.npz"
WEIGHTS_FILE = "model.pt"  # weights only, best validation AUROC
RESUME_FILE = "last.pt"  # end-of-epoch state for resuming a killed trial; removed when done
DONE_FILE = "DONE"  # written last: a trial without it is not a result
FAILED_FILE = "failed.json"
LOCK_FILE = ".lock"


class StoreError(ConfigError):
    """The results directory cannot be used (not writable, locked by another run)."""


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    A reader sees the old file or the complete new one, never a partial one, even after kill -9.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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


@dataclass
class Result:
    """One finished trial as stored on disk."""

    trial: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    def history(self):
        import pandas as pd  # only readers of history pay for pandas

        return pd.read_csv(self.path / HISTORY_FILE)

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.path / PREDICTIONS_FILE, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}


class Store:
    """results/<grid name>/: one directory per trial key, a DONE marker as the commit point."""

    def __init__(self, grid_dir: Path | str) -> None:
        self.root = Path(grid_dir)

    def trial_dir(self, trial: Trial | str) -> Path:
        return self.root / (trial if isinstance(trial, str) else trial.key)

    def is_done(self, trial: Trial | str) -> bool:
        d = self.trial_dir(trial)
        return (d / DONE_FILE).is_file() and (d / METRICS_FILE).is_file()

    def failure(self, trial: Trial | str) -> dict[str, Any] | None:
        f = self.trial_dir(trial) / FAILED_FILE
        return read_json(f) if f.is_file() else None

    def check_writable(self) -> None:
        """Fail early, in one line, when results cannot be written here."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bytes(self.root / ".write-test", b"ok")
            (self.root / ".write-test").unlink()
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
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

    def begin(self, trial: Trial, grid: str) -> Path:
        """Prepare a trial's directory: its trial.json, and no stale failure or DONE marker."""
        d = self.trial_dir(trial)
        d.mkdir(parents=True, exist_ok=True)
        (d / FAILED_FILE).unlink(missing_ok=True)
        (d / DONE_FILE).unlink(missing_ok=True)
        write_json(d / TRIAL_FILE, {**trial.to_dict(), "key": trial.key, "label": trial.label, "grid": grid})
        return d

    def mark_done(self, trial: Trial) -> None:
        d = self.trial_dir(trial)
        (d / RESUME_FILE).unlink(missing_ok=True)
        write_json(d / DONE_FILE, {"key": trial.key, **provenance()})

    def mark_failed(self, trial: Trial, reason: str, *, detail: str = "") -> None:
        d = self.trial_dir(trial)
        d.mkdir(parents=True, exist_ok=True)
        write_json(
            d / FAILED_FILE,
            {"key": trial.key, "label": trial.label, "reason": reason, "detail": detail[-4000:], **provenance()},
        )

    def results(self) -> list[Result]:
        return load_results(self.root)


def load_results(grid_dir: Path | str) -> list[Result]:
    """Every finished trial under grid_dir (a directory without DONE is not a result), sorted by label."""
    grid_dir = Path(grid_dir)
    out = []
    for d in sorted(p for p in grid_dir.iterdir() if p.is_dir()) if grid_dir.is_dir() else []:
        if (d / DONE_FILE).is_file() and (d / METRICS_FILE).is_file() and (d / TRIAL_FILE).is_file():
            out.append(Result(trial=read_json(d / TRIAL_FILE), metrics=read_json(d / METRICS_FILE), path=d))
    return sorted(out, key=lambda r: (r.trial.get("label", ""), r.key))


def load_failures(grid_dir: Path | str) -> list[dict[str, Any]]:
    """Trials whose last attempt failed and that have not succeeded since."""
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        return []
    return [
        read_json(d / FAILED_FILE)
        for d in sorted(grid_dir.iterdir())
        if (d / FAILED_FILE).is_file() and not (d / DONE_FILE).is_file()
    ]
