"""Run one harness command in this process and record when each of its phases began and ended.

    python scripts/grid_phases.py PHASES.json NAME -- run grids/paper.yaml ...
    python scripts/grid_phases.py PHASES.json report -- report RESULTS/paper --out REPORT

NAME covers the whole command. For `run`, the functions that mark a grid's phases are timed too: data
(prepare.prepare_all: dataset resolution done, caches built), ray_start (runner.driver.start_ray), packing
(runner.placement.per_gpu: looking up the remembered trials-per-GPU decisions) and grid_runner (runner.driver.run_grid: Ray, packing
and every trial). A name the code
no longer has is listed under "not_timed" rather than failing the run. PHASES.json is rewritten as each
phase begins and ends, so a run still going, or killed, leaves what it reached; several commands append
to the same file.
"""

from __future__ import annotations

import time

T0 = time.time()  # before the imports below: they are part of what a user waits for

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

HOOKS = [  # (module, function, phase), in the order they run
    ("harness.prepare", "prepare_all", "data"),
    ("harness.runner.driver", "start_ray", "ray_start"),
    ("harness.runner.placement", "per_gpu", "packing"),
    ("harness.runner.driver", "run_grid", "grid_runner"),
]


class Phases:
    """The phases file: {"phases": [{"phase", "start", "end" or null}, ...], "not_timed": [...]}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"phases": [], "not_timed": []}

    def begin(self, name: str, start: float | None = None) -> dict:
        row = {"phase": name, "start": time.time() if start is None else start, "end": None}
        self.data["phases"].append(row)
        self.save()
        return row

    def end(self, row: dict, **extra) -> None:
        row.update(end=time.time(), **extra)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def timed(phases: Phases, module, attr: str, name: str) -> Callable[[], None]:
    """Time module.attr as phase `name` from now on; returns what puts the original back."""
    inner = getattr(module, attr)

    def wrapper(*args, **kwargs):
        row = phases.begin(name)
        try:
            return inner(*args, **kwargs)
        finally:
            phases.end(row)

    setattr(module, attr, wrapper)
    return lambda: setattr(module, attr, inner)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    phases = Phases(Path(argv[0]))
    whole = phases.begin(argv[1], start=T0)
    command = argv[3:]
    undo = []
    if command[:1] == ["run"]:
        import importlib

        for module_name, attr, name in HOOKS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                module = None
            if module is None or not callable(getattr(module, attr, None)):
                phases.data["not_timed"].append(f"{module_name}.{attr} ({name})")
                continue
            undo.append(timed(phases, module, attr, name))
        phases.save()
    from harness import cli

    rc = 1
    try:
        rc = cli.main(command)
    finally:
        phases.end(whole, rc=rc)
        for restore in undo:
            restore()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
