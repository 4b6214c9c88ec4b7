"""Clean stops: a first SIGINT or SIGTERM ends the run in order, keeping every finished epoch; a second at once."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

from ray import tune
from tqdm.auto import tqdm

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(tune.Stopper):
    """Tells Tune to stop every trial once a stop signal has arrived (its public Stopper interface)."""

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the first stop signal, once one came

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.signal is not None


def resume_command() -> str:
    """The command that resumes this run: the harness's own, as it was typed."""
    return shlex.join(["python", "-m", "harness", *sys.argv[1:]])


@contextlib.contextmanager
def stoppable() -> Iterator[Stop]:
    """For the length of a run: the first SIGINT or SIGTERM stops every trial (a trial's finished epochs are on
    disk, so nothing finished is lost) and the run ends with its summary; a second raises KeyboardInterrupt."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield stop
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signal.Signals(signum).name
        tqdm.write(  # a line of its own, below the progress bar
            f"harness: {stop.signal}: stopping the trials; every finished epoch is kept (Ctrl-C again stops at once)",
            file=sys.stderr,
        )

    before = {s: signal.signal(s, on_signal) for s in SIGNALS}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ray's own would point at Tuner.restore, not the harness
    try:
        yield stop
    finally:
        for s, handler in before.items():
            # After a stop, the process is on its way out (Ray's shutdown, atexit): a second signal there
            # must still end it at once with the same line, not a KeyboardInterrupt inside an atexit hook.
            signal.signal(s, _exit_at_once if stop.signal is not None else handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


INTERRUPTED = "harness: interrupted; rerun the same command to resume"


def _exit_at_once(signum: int, frame: object) -> None:
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)
