"""What produced a result: harness version, git commit (and whether the tree was dirty), Python and host."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from harness import __version__


def _git_commit() -> tuple[str, bool]:
    """The commit of the harness source tree and whether it has uncommitted changes."""
    src = Path(__file__).resolve().parents[2]
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
