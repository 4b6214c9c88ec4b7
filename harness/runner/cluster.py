"""Starting or joining Ray, the size of its nodes, and what a trial's worker was given."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import ray

from harness.config import ConfigError, Runtime
from harness.runner import ray_internals

log = logging.getLogger(__name__)


def assigned() -> dict[str, float]:
    """The resources Ray reserved for the task or actor this runs in (CPU, GPU share)."""
    return dict(ray.get_runtime_context().get_assigned_resources())


def use_reserved_cpus() -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this trial reserved."""
    import torch

    torch.set_num_threads(max(1, int(assigned().get("CPU", 1))))


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged: Ray swaps it for each trial's log file."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("harness: %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def worker_logging() -> None:
    """In a worker: the harness's warnings, and the line saying where a trial resumes, reach the driver's stderr."""
    logger = logging.getLogger("harness")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):  # a reused worker runs this again
        logger.addHandler(_Stderr())  # a worker's root logger has no handler: nothing prints twice
    logger.setLevel(logging.WARNING)
    logging.getLogger("harness.train").setLevel(logging.INFO)  # "resuming after epoch N"
    sys.unraisablehook = _exit_unraisable


_in_trial = threading.Event()  # set while this worker runs a trial (trial_running)


@contextlib.contextmanager
def trial_running() -> Iterator[None]:
    """Around a trial in a worker: while it runs, an exit raised where it cannot propagate is left to Python."""
    _in_trial.set()
    try:
        yield
    finally:
        _in_trial.clear()


def _exit_unraisable(unraisable: Any) -> None:
    """Ray ends a worker left over at a run's end with SIGTERM, whose handler raises SystemExit. Landing in a
    garbage-collection callback, that exit cannot propagate: Python prints "Exception ignored ... SystemExit"
    to the driver's stderr and the worker runs on until it is killed. An idle worker exits as the handler
    meant, quietly; one running a trial is left as it was (its trial ends through Tune)."""
    if isinstance(unraisable.exc_value, SystemExit) and not _in_trial.is_set():
        code = unraisable.exc_value.code
        os._exit(code if isinstance(code, int) else 1)
    else:
        sys.__unraisablehook__(unraisable)


def largest_node() -> dict[str, float]:
    """CPUs and GPUs of the largest live node: a trial runs on one node, so it can ask for no more."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {k: max((r.get(k, 0.0) for r in nodes), default=0.0) for k in ("CPU", "GPU")}


def ray_reachable() -> bool:
    """Whether this driver's Ray (its GCS) still answers. A signal sent to every process of a job (SLURM's scancel,
    systemd) ends a local Ray with the driver: Tune would then wait a minute for it before dying with a traceback."""
    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()  # "[::1]:6379" too
    except OSError:
        return False
    return True


def _probe(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a HOST:PORT address (Ray retries for long)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "local", "auto": Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
            "`ray start --head` there, or leave out --address to run locally"
        ) from None


# Tune runs a trial in a thread of its worker, and glibc gives a thread its own arena, which hands out any
# block over 64 MB as a fresh mapping and unmaps it on free, whatever mallopt says: AlexNet's first
# classifier gradient (151 MB) paged in anew at every step, 40% of a CPU trial's time spent in the kernel.
# One arena (set before the worker's C library starts) keeps such blocks for reuse: a smoke AlexNet trial
# on 2 cores went from 77 s to 55 s, the same numbers.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


def start_ray(runtime: Runtime) -> bool:
    """Join the cluster at runtime.address (or Ray's address variable), else start a private local Ray. True when it started
    that private Ray: no one else's cluster, so its end is the run's end (stopping.stoppable's own_ray)."""
    if ray.is_initialized():
        return False
    # "local": without an address, a private Ray for this run, never a cluster someone left running here.
    address = runtime.address or ray_internals.env_address() or "local"
    ray_internals.driver_environment()
    if os.environ.get("TORCH_HOME"):  # local workers inherit the environment; a relative path would move
        os.environ["TORCH_HOME"] = os.path.abspath(os.environ["TORCH_HOME"])
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "runtime_env": {"env_vars": WORKER_ENV},
    }
    _probe(address)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc}; start it with `ray start --head` "
            "or leave out --address to run locally"
        ) from None
    return address == "local"
