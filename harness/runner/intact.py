"""Done means intact: a finished trial's files checked against DONE's checksums before a run skips it.

A trial whose only damage is its metrics file, with its predictions intact, gets its metrics recomputed
from them (the same evaluation and seed as training, so the same numbers); a lost or changed history.csv
is written back from DONE's copy; any other damage makes the trial not done, and the run trains it again.
"""

from __future__ import annotations

import logging

from harness import rescore
from harness import store as store_mod

log = logging.getLogger(__name__)


def intact(files: store_mod.TrialFiles) -> bool:
    """Whether a trial marked done is a usable result; metrics damaged beside intact predictions are mended."""
    damaged = files.damaged(weights=True)
    if not damaged:
        return True
    problems = "; ".join(damaged.values())
    if rescore.heal(files, damaged, weights=True):
        mended = {files.METRICS: "recomputed its metrics from its predictions", files.HISTORY: "restored history.csv"}
        log.warning("%s: %s (%s)", files.path, " and ".join(mended[n] for n in mended if n in damaged), problems)
        return True
    log.warning("%s: %s; training it again", files.path, "; ".join(files.damaged(weights=True).values()) or problems)
    return False


def redo(files: store_mod.TrialFiles) -> None:
    """Clear what a damaged trial's retraining must not read back: its weights and any resume state."""
    files.drop_checkpoints()
