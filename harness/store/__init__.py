"""The results store: every file under results/<grid>/, written atomically; the only code that names them.

writes      atomic, durable writes (used for caches and reports too)
origin      provenance(): what produced a result
searchfiles SearchFiles: one study's outputs (summary, best trial and grid, importances, trials, plots)
trial       TrialFiles: one trial's folder (settings, metrics, history, predictions, weights, resume, DONE)
folder      Store: a grid's folder, its lock, and scan() of what is done, failed or broken
"""

from harness.store.folder import LOCK_FILE, Broken, Scan, Store, StoreError, load_failures, load_results, scan
from harness.store.origin import provenance
from harness.store.searchfiles import SearchFiles
from harness.store.trial import Result, TrialFiles, Unreadable
from harness.store.writes import (
    WriteFailed,
    atomic_path,
    exclusive,
    fsync,
    read_json,
    reserve,
    write_bytes,
    write_failed,
    write_json,
    write_npz,
)

__all__ = [
    "LOCK_FILE",
    "Broken",
    "Result",
    "Scan",
    "SearchFiles",
    "Store",
    "StoreError",
    "TrialFiles",
    "Unreadable",
    "WriteFailed",
    "atomic_path",
    "exclusive",
    "fsync",
    "load_failures",
    "load_results",
    "provenance",
    "read_json",
    "reserve",
    "scan",
    "write_bytes",
    "write_failed",
    "write_json",
    "write_npz",
]
