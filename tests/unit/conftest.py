"""The unit layer: no Ray, no Python subprocess, tiny tensors. A test that needs either belongs in tests/integration;
the guard below says so at once instead of letting the layer slow down unnoticed."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest


class LayerError(AssertionError):
    pass


def _is_python(args: object) -> bool:
    """Whether Popen's args start a Python interpreter (or Ray's command line), however they are written."""
    if isinstance(args, (str, bytes, Path)):
        program = str(args).split()[0] if str(args).strip() else ""
    else:
        program = str(next(iter(args), ""))
    name = Path(program).name
    return program == sys.executable or name.startswith("python") or name == "ray"


@pytest.fixture(autouse=True)
def _unit_layer(monkeypatch: pytest.MonkeyPatch):
    popen_init = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        if _is_python(args):
            raise LayerError(f"a unit test started {args!r}: move it to tests/integration")
        popen_init(self, args, *rest, **kwargs)  # git and other small tools are fine

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _no_process)
    # Under pytest-xdist a worker may hold the integration layer's session Ray. A unit test must not see it (the
    # runner would join it instead of calling ray.init), and only a Ray the test itself started is its fault.
    ray_was_up = _ray_is_up()
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "init", _no_ray)
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    yield
    if not ray_was_up and _ray_is_up():
        sys.modules["ray"].shutdown()
        raise LayerError("a unit test started Ray: move it to tests/integration")


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray._private.worker.global_worker.connected  # what ray.is_initialized reads


def _no_ray(*args, **kwargs):
    raise LayerError("a unit test called ray.init: move it to tests/integration")


def _no_process(self):
    raise LayerError("a unit test started a multiprocessing process: move it to tests/integration")
