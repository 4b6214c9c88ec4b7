"""Clean stops: a first SIGINT or SIGTERM ends the run in order, keeping every finished epoch; a second at once;
a Ray that ended under the run (the same signal sent to every process of a job, `ray stop`, the OOM killer) ends
it as soon as Ray is seen gone, with its summary."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from ray import tune
from tqdm.auto import tqdm

from harness.runner import ray_internals

SIGNALS = (signal.SIGINT, signal.SIGTERM)


RAY_ENDED = "the end of its local Ray (`ray stop`, or the kernel's OOM killer)"


class Stop(tune.Stopper):
    """Tells Tune to stop every trial once a stop signal has arrived (its public Stopper interface)."""

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the first stop signal, once one came

    @property
    def cause(self) -> str:
        """What stopped the run, for its summary: the signal, or Ray's own end."""
        return self.signal or RAY_ENDED

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.signal is not None


def resume_command() -> str:
    """The command that resumes this run: the harness's own, as it was typed."""
    return shlex.join(["python", "-m", "harness", *sys.argv[1:]])


@contextlib.contextmanager
def stoppable(
    ray_alive: Callable[[], bool] = lambda: True,
    last_words: Callable[[Stop], None] = lambda stop: None,
    *,
    own_ray: bool = False,
) -> Iterator[Stop]:
    """For the length of a run: the first SIGINT or SIGTERM stops every trial (a trial's finished epochs are on
    disk, so nothing finished is lost) and the run ends with its summary; a second raises KeyboardInterrupt.

    ray_alive is polled after the first signal, and all along when the run started its own Ray (own_ray): once
    Ray is gone (the signal reached every process of a job, or `ray stop`), nothing is left to stop in order, so
    last_words(stop) prints the run's summary and the process exits, 130 after a signal and 1 otherwise. Someone
    else's cluster is left to Ray's own reconnection: only a signal makes its silence final.
    """
    stop, finished = Stop(), threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield stop
        return
    watch = functools.partial(_when_ray_is_gone, stop, finished, ray_alive, last_words)
    if own_ray:
        threading.Thread(target=watch, daemon=True, name="harness-ray-watch").start()

    def on_signal(signum: int, frame: object) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signal.Signals(signum).name
        tqdm.write(  # a line of its own, below the progress bar
            f"harness: {stop.signal}: stopping the trials; every finished epoch is kept (Ctrl-C again stops at once)",
            file=sys.stderr,
        )
        if not own_ray:  # else the watch runs already, and now acts at the first silence
            threading.Thread(target=watch, daemon=True, name="harness-ray-watch").start()

    before = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        with ray_internals.without_tune_sigint_handler():
            yield stop
    finally:
        finished.set()  # the run's own summary follows; Ray's shutdown after it is no reason for last words
        for s, handler in before.items():
            # After a stop, the process is on its way out (Ray's shutdown, atexit): a second signal there
            # must still end it at once with the same line, not a KeyboardInterrupt inside an atexit hook.
            signal.signal(s, _exit_at_once if stop.signal is not None else handler)


INTERRUPTED = "harness: interrupted; rerun the same command to resume"
POLL_S = 0.5
SILENT_S = 5.0  # without a signal, how long Ray must not answer before the run gives it up


def _when_ray_is_gone(
    stop: Stop, finished: threading.Event, ray_alive: Callable[[], bool], last_words: Callable[[Stop], None]
) -> None:
    """Ends the process once Ray no longer answers: the store holds every finished epoch (its writes are atomic),
    so the summary read from it is the run's; waiting on a dead Ray would only add a minute and a traceback."""
    silent_since = None
    while not finished.wait(POLL_S):
        try:
            alive = ray_alive()
        except Exception:  # Ray's state unreadable: the run's own shutdown is under way, nothing to do here
            return
        now = time.monotonic()
        silent_since = None if alive else silent_since or now
        if silent_since is None or (stop.signal is None and now - silent_since < SILENT_S) or finished.is_set():
            continue
        try:
            last_words(stop)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130 if stop.signal else 1)


def _exit_at_once(signum: int, frame: object) -> None:
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)
