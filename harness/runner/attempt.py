"""One attempt at a trial inside a Ray worker: the one place a trial's failure is recorded and classified."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

import ray

from harness import hardware, packing, train
from harness import store as store_mod
from harness.config import ConfigError, Trial
from harness.runner.cluster import assigned

log = logging.getLogger(__name__)

RETRY_ALONE = "retry_alone"  # failed.json: ran out of GPU memory beside other trials; the grid retries it alone

_training = threading.Event()  # set while a trial runs in this worker process, or is being stopped


def _leave_at_once() -> None:
    """A worker told to exit mid-epoch (a stopped run) leaves without finalizing the interpreter.

    Ray runs a trial in a daemon thread; finalizing under it while torch computes aborts the process with
    a C++ stack trace on the user's terminal. The trial's finished epochs are already on disk (atomic
    writes), so leaving at once loses nothing.
    """
    if _training.is_set():
        os._exit(0)


atexit.register(_leave_at_once)


def _in_ray_actor() -> bool:
    if not ray.is_initialized():  # a trainable called directly; asking Ray more would start one
        return False
    try:
        return ray.get_runtime_context().get_actor_id() is not None
    except AttributeError:  # a stand-in runtime context
        return False


def _record(write: Callable[[], None], reason: str) -> None:
    """Write a failure record; on a disk that is still full, say so and go on: the reason reaches the run's
    summary through Ray (tell_failed) instead."""
    try:
        write()
    except OSError as exc:
        log.warning("could not record the failure (%s): %s", reason, exc)


def attempt(st: store_mod.Store, trial: Trial, body: Callable[[], Any], *, tell_failed: Callable[[str], None]) -> bool:
    """Run body (one run_trial) and say whether it finished; every way it can end is decided here.

    - A deterministic failure (TrialFailed, ConfigError) is recorded and not retried; tell_failed(reason) lets
      Ray know. So is a full disk (WriteFailed): retrying cannot make space, and it would only fail again.
    - Out of GPU memory on a shared GPU is recorded as such and not retried in the same share either: the
      grid runner gives the trial a GPU to itself (packing.retry_alone).
    - SystemExit and KeyboardInterrupt are Ray stopping the trial (Ctrl-C, a scheduler): not a failure.
    - Anything else may be transient (out of host memory, a dying node): recorded, then raised again so that
      Ray retries it (FailureConfig).
    """
    if _in_ray_actor():
        _training.set()
    try:
        body()
        _training.clear()
        return True
    except (train.TrialFailed, ConfigError, store_mod.WriteFailed) as exc:
        _training.clear()
        reason, detail = str(exc), traceback.format_exc()
        _record(lambda: st.mark_failed(trial, reason, detail=detail), reason)
        tell_failed(reason)
        return False
    except (SystemExit, KeyboardInterrupt):
        raise  # the trial's thread is still unwinding when its worker exits: _training stays set
    except BaseException as exc:
        _training.clear()
        reason = f"{type(exc).__name__}: {exc}"
        share = assigned().get("GPU", 0.0)
        detail = traceback.format_exc()
        if not packing.retry_alone(exc, gpu_share=share):
            _record(lambda: st.mark_failed(trial, reason, detail=detail), reason)
            raise
        reason = f"{reason} (on a {share:g} share of a GPU, beside other trials)"
        record = {"key": trial.key, "label": trial.label, "reason": reason, "detail": detail[-4000:], RETRY_ALONE: True}
        _record(lambda: st.files(trial).mark_failed(record), reason)
        tell_failed(reason)
        return False
    finally:
        hardware.hand_back_gpu_memory()


def needs_a_whole_gpu(st: store_mod.Store, trial: Trial) -> bool:
    """Whether the trial's last attempt ran out of GPU memory beside others (attempt recorded it so)."""
    return bool((st.failure(trial) or {}).get(RETRY_ALONE))
