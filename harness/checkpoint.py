"""Checkpoints off the training path: a host copy of the state, written by one background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import torch

from harness import store

log = logging.getLogger(__name__)


class CheckpointWriter:
    """Writes each epoch's checkpoint (the model's weights when they are the best so far, then the resume
    state that holds them) in a background thread, so the next epoch trains while the disk works.

    submit() copies the state to host memory on the calling thread, because training goes on changing the
    tensors in place; on CUDA the copy lands in pinned memory without blocking the host, and the writer waits
    for it. One checkpoint is in flight at a time: submit() first waits for the previous write, which bounds
    host memory to one copy and lets its buffers be reused. TrialFiles writes every file atomically, so a kill
    at any moment leaves the previous complete file. A failed write is raised again, as it was raised, by the
    next submit() or by close(); use the writer as a context manager so the trial waits for its files.
    """

    def __init__(self, files: store.TrialFiles) -> None:
        self.files = files
        self._pending: futures.Future | None = None
        self._then: Callable[[], None] | None = None
        # The previous copy's host tensors, each with the CUDA device it came from (None: the CPU); free once
        # that copy is written.
        self._buffers: list[tuple[torch.Tensor, torch.device | None]] = []

    def submit(self, state: dict[str, Any], *, best: bool, then: Callable[[], None] | None = None) -> None:
        """Write the resume state (last.pt) in the background, after its weights (model.pt) when `best`;
        call `then` on this thread once both are on disk."""
        self.wait()
        spare, self._buffers = iter(self._buffers), []
        state = _host_copy(state, spare, self._buffers)
        # Recorded after the copies on each source device's stream: the writer waits for them, not the host.
        copied = [torch.cuda.current_stream(d).record_event() for d in {d for _, d in self._buffers} - {None}]
        self._pending = _in_background(self._write, state, best, copied)
        self._then = then

    def _write(self, state: dict[str, Any], best: bool, copied: list[torch.cuda.Event]) -> None:
        for event in copied:
            event.synchronize()
        if best:
            self.files.save_weights(state["model"])
        self.files.save_resume(state)

    def wait(self) -> None:
        """Block until the checkpoint in flight is on disk, then call its `then`; raise its write's error if it
        failed."""
        pending, self._pending = self._pending, None
        then, self._then = self._then, None
        if pending is not None:
            pending.result()
        if then is not None:
            then()

    def poll(self) -> None:
        """wait(), if the checkpoint in flight is already on disk; else nothing. Cheap enough for every step."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def close(self) -> None:
        self.wait()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is None:
            self.close()
            return
        self._then = None  # the trial ended (failed, or stopped at a report): no epoch is announced after it
        try:  # the trial already failed: its own error is the one to report
            self.close()
        except Exception as write_error:
            log.warning("%s: a checkpoint write failed as well: %s", self.files.path, write_error)


def _in_background(fn: Callable[..., None], *args: Any) -> futures.Future:
    """fn(*args) in a daemon thread. Not an executor's: the interpreter waits for those at exit, so a worker
    process ended mid-trial (Ray ending a trial its scheduler stopped) would still write a checkpoint after
    whoever ended it had cleared the trial's folder. A trial waits for its writes itself (close)."""
    future: futures.Future = futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # raised again, as it was, by the trial's wait()
                future.set_exception(error)

    threading.Thread(target=run, name="checkpoint", daemon=True).start()
    return future


def _host_copy(obj: Any, spare: Iterator[tuple[torch.Tensor, Any]], out: list[tuple[torch.Tensor, Any]]) -> Any:
    """obj with every tensor copied to host memory (pinned when it comes from CUDA) and every list and dict
    copied, so that nothing the writer holds changes under it. Reuses the buffers in `spare` that fit."""
    if isinstance(obj, torch.Tensor):
        source = obj.device if obj.is_cuda else None
        buffer, was = next(spare, (None, None))
        if buffer is None or (buffer.shape, buffer.dtype, was is None) != (obj.shape, obj.dtype, source is None):
            buffer = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=source is not None)
        buffer.copy_(obj.detach(), non_blocking=source is not None)
        out.append((buffer, source))
        return buffer
    if isinstance(obj, dict):
        return {k: _host_copy(v, spare, out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v, spare, out) for v in obj)
    return obj
