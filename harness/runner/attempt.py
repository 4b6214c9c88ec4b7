"""One attempt at a trial inside a Ray worker: the one place a trial's failure is recorded and classified."""

from __future__ import annotations

import atexit
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


def attempt(st: store_mod.Store, trial: Trial, body: Callable[[], Any], *, tell_failed: Callable[[], None]) -> bool:
    """Run body (one run_trial) and say whether it finished; every way it can end is decided here.

    - A deterministic failure (TrialFailed, ConfigError) is recorded and not retried; tell_failed() lets Ray know.
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
    except (train.TrialFailed, ConfigError) as exc:
        _training.clear()
        st.mark_failed(trial, str(exc), detail=traceback.format_exc())
        tell_failed()
        return False
    except (SystemExit, KeyboardInterrupt):
        raise  # the trial's thread is still unwinding when its worker exits: _training stays set
    except BaseException as exc:
        _training.clear()
        reason = f"{type(exc).__name__}: {exc}"
        share = assigned().get("GPU", 0.0)
        if not packing.retry_alone(exc, gpu_share=share):
            st.mark_failed(trial, reason, detail=traceback.format_exc())
            raise
        st.files(trial).mark_failed(
            {
                "key": trial.key,
                "label": trial.label,
                "reason": f"{reason} (on a {share:g} share of a GPU, beside other trials)",
                "detail": traceback.format_exc()[-4000:],
                RETRY_ALONE: True,
            }
        )
        tell_failed()
        return False
    finally:
        hardware.hand_back_gpu_memory()


def needs_a_whole_gpu(st: store_mod.Store, trial: Trial) -> bool:
    """Whether the trial's last attempt ran out of GPU memory beside others (attempt recorded it so)."""
    return bool((st.failure(trial) or {}).get(RETRY_ALONE))
