"""Atomic, durable file writes (the old file or the whole new one, never a partial one); checksums come from config.sha256."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error"}

# A write goes to .<name>.<host>-<pid>-<8 random characters>.tmp beside its file: the writer is named, so a
# sweep can tell the leftovers of a dead process at once. The pattern also matches the names of older
# versions (8 characters of [a-z0-9_] alone), which only their age can clear.
_TEMP_NAME = re.compile(r"\..+\.(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# A temporary file younger than this is left alone by sweep_temp unless its writer is known to be dead:
# `harness cam` writes into a trial folder without the grid's lock, and on a shared filesystem another
# machine's writer cannot be asked. A live writer's file is younger: every write touches it.
_SWEEP_MIN_AGE_S = 60.0


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
        tmp_path = _create_temp(path)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync(path.parent)
    except BaseException as exc:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)  # after the writer closed it: only then is its space free
        failed = write_failed(exc, path)
        if failed is not None:
            raise failed from exc
        raise


def write_failed(exc: BaseException, path: Path | str) -> WriteFailed | None:
    """exc as a WriteFailed naming `path` and the space left, when a disk error is behind it; else None."""
    disk = None if isinstance(exc, WriteFailed) else disk_error(exc)
    if disk is None:
        return None
    return WriteFailed(disk.errno, f"{_DISK_ERRORS[disk.errno]} while writing {path}{_free(Path(path))}")


def disk_error(exc: BaseException) -> OSError | None:
    """The disk error (full, over quota, I/O) behind exc, or None. torch.save reports a failed write as a
    RuntimeError ("enforce fail at inline_container.cc"), with the OSError of the file it wrote to as context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free(path: Path) -> str:
    """ "(12.3 MB free)": what is left where path lies, for the message of a failed write."""
    for folder in (path.parent, *path.parents):
        try:
            return f" ({shutil.disk_usage(folder).free / 1e6:,.1f} MB free)"
        except OSError:
            continue
    return ""


def reserve(path: Path | str) -> None:
    """Allocate every block of an existing (sparse) file now, so that a full disk is an OSError here and
    not a SIGBUS later, when a memory map of it first touches a page. A filesystem that cannot reserve
    space ahead (EOPNOTSUPP, EINVAL) is left to fail on write, as before."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def _create_temp(path: Path) -> Path:
    """Create an empty temporary file beside `path`, with the mode open() would give (0o666 less the umask).

    Not tempfile.mkstemp: its 0o600 would hide results from the group on a shared filesystem. Letting the
    kernel apply the umask avoids reading it, which (os.umask set and reset) would race with other threads.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def sweep_temp(root: Path | str) -> tuple[int, int]:
    """Remove the temporary files that interrupted writes (kill -9, a second Ctrl-C) left under `root`.

    Only names atomic_path gives, only files, and only ones whose writer has died on this machine or that
    nobody touched for a minute. The caller must be the only writer under `root` that takes the grid's
    lock (it holds it). Returns the number of files and bytes removed.
    """
    files = size = 0
    now = time.time()
    for folder, _, names in os.walk(root):
        for name in names:
            match = _TEMP_NAME.fullmatch(name)
            if match is None:
                continue
            path = Path(folder) / name
            try:
                st = path.lstat()
                stale = now - st.st_mtime >= _SWEEP_MIN_AGE_S or _writer_gone(match["host"], match["pid"])
                if not stat.S_ISREG(st.st_mode) or not stale:
                    continue
                path.unlink()
            except OSError:  # gone already, or not ours to remove: the sweep only saves space
                continue
            files += 1
            size += st.st_size
    return files, size


def _writer_gone(host: str | None, pid: str | None) -> bool:
    """Whether the process that named a temporary file is known to have ended (only this machine's can be)."""
    if host != _HOST or pid is None:
        return False
    if int(pid) == os.getpid():
        return False  # this process: a write of its own may be in flight (a background checkpoint)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive, someone else's; or no such pid on this system
    return False


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
