"""Recovery decided without running a grid: a damaged result is mended from its predictions or trained again; a
failed attempt is one line, and a trial whose worker died each time is recorded; the progress bar forgets a dead
attempt's epoch."""

import logging

import numpy as np
import pytest

from harness import store
from harness.config import Trial

# --- done means intact: a damaged result is mended from its predictions, or trained again -----------------------


def finished_trial(grid_dir, seed=0):
    """A trial folder as the runner leaves it, written through the store, with made-up predictions."""
    import torch

    from harness import metrics
    from harness.data import nih

    rng = np.random.default_rng(seed)
    trial = Trial(arch="alexnet", image_size=64, epochs=2, seed=seed)
    st = store.Store(grid_dir)
    files = st.begin(trial, grid_dir.name)
    n, k = 80, len(nih.FINDINGS)
    arrays = {
        "probs": rng.random((n, k)).astype(np.float32),
        "labels": (rng.random((n, k)) < 0.3).astype(np.uint8),
        "patient_id": np.arange(n) // 2,
        "image_index": np.array([f"{i:08d}_000.png" for i in range(n)]),
        "val_probs": rng.random((n // 2, k)).astype(np.float32),
        "val_labels": (rng.random((n // 2, k)) < 0.3).astype(np.uint8),
        "val_patient_id": np.arange(n // 2),
        "names": np.array(nih.FINDINGS),
    }
    files.write_predictions(**arrays)
    files.save_weights({"w": torch.arange(4.0)})
    files.write_history([{"epoch": e, "val_auc": 0.5 + e / 10, "seconds": 1.5} for e in (1, 2)])
    result = metrics.evaluate(
        arrays["probs"],
        arrays["labels"],
        names=nih.FINDINGS,
        patient_ids=arrays["patient_id"],
        val_probs=arrays["val_probs"],
        val_labels=arrays["val_labels"],
        seed=seed,
    )
    files.write_metrics({**result, "key": trial.key, "train_seconds": 3.0, "device": "cpu"})
    st.mark_done(trial)
    return files, result


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_metrics_are_recomputed_from_intact_predictions(tmp_path):
    from harness.runner.intact import intact

    files, result = finished_trial(tmp_path / "g")
    history = (files.path / files.HISTORY).stat().st_mtime_ns
    (files.path / files.METRICS).write_text('{"auc_macro": 0.9')  # cut off mid-write by a crash
    assert intact(files) and files.problems() == []
    mended = files.read_metrics()
    assert mended["auc_macro"] == result["auc_macro"] and mended["per_finding"] == result["per_finding"]
    assert mended["split"] == "official" and mended["epochs_run"] == 2 and mended["recomputed"]["from"]
    assert (files.path / files.HISTORY).stat().st_mtime_ns == history
    # What produced it is read back from DONE; what only metrics.json held is unknown, not guessed.
    done = files.read_done()
    assert {k: mended[k] for k in ("harness_version", "git_commit", "host")} == {
        k: done[k] for k in ("harness_version", "git_commit", "host")
    }
    assert mended["train_seconds"] is None and mended["device"] is None and mended["n_train"] is None
    assert set(mended["unknown"]) >= {"train_seconds", "device", "n_train", "data_root", "peak_host_mb"}

    files, result = finished_trial(tmp_path / "g2")
    edited = {**files.read_metrics(), "auc_macro": 0.99}  # readable, but not what the predictions say
    store.write_json(files.path / files.METRICS, edited)
    assert intact(files) and files.read_metrics()["auc_macro"] == result["auc_macro"]
    assert files.read_metrics()["train_seconds"] == 3.0  # what cannot be recomputed is kept


def test_a_lost_metrics_file_is_recomputed_like_a_damaged_one(tmp_path):
    from harness.runner.intact import intact

    files, result = finished_trial(tmp_path / "g")
    (files.path / files.METRICS).unlink()
    assert files.is_done() and set(files.damaged()) == {files.METRICS}  # named, not taken for unstarted
    scan = store.scan(tmp_path / "g")
    assert [b.key for b in scan.broken] == [files.key] and "missing" in scan.broken[0].damaged[files.METRICS]
    assert intact(files) and files.damaged() == {}
    assert files.read_metrics()["auc_macro"] == result["auc_macro"]


@pytest.mark.parametrize("damage", ["predictions", "weights", "metrics and weights", "done"])
def test_other_damage_means_the_trial_is_trained_again(tmp_path, damage):
    from harness.runner.intact import intact

    files, _ = finished_trial(tmp_path / "g")
    if "predictions" in damage:
        truncate(files.path / files.PREDICTIONS)
    if "weights" in damage:
        truncate(files.weights_path)
    if "metrics" in damage:  # hides the weights' checksum from a first look
        (files.path / files.METRICS).write_text("{")
    if damage == "done":
        (files.path / files.DONE).write_text("{")
    assert not intact(files)


class _TuneTrial:
    """What Retries reads of a Tune trial: its config, its failures so far, the error of the last, pickled beside
    the trial's local state as Tune does (its copy in storage comes later)."""

    def __init__(self, trial, failures, error, tmp_path):
        from ray import cloudpickle

        self.config, self.num_failures = {"trial": trial.to_dict()}, failures
        self.pickled_error_file = tmp_path / f"error-{trial.key}-{failures}.pkl"
        self.pickled_error_file.write_bytes(cloudpickle.dumps(error))

    def get_pickled_error(self):
        return None  # not yet in storage


def test_a_failed_attempt_is_one_line_and_a_trial_whose_worker_died_each_time_is_recorded(tmp_path, caplog):
    from ray.exceptions import ActorDiedError, RayTaskError

    from harness.runner.driver import Retries

    st = store.Store(tmp_path / "g")
    lost, own = Trial(arch="alexnet", seed=0), Trial(arch="alexnet", seed=1)
    for t in (lost, own):
        st.begin(t, "g")
    retries = Retries(st, 2)
    with caplog.at_level(logging.WARNING, logger="harness.runner.driver"):
        retries.on_trial_recover(0, [], _TuneTrial(lost, 1, ActorDiedError(), tmp_path))
    assert (
        f"{lost.label}: attempt 1 failed (its worker died or its node was lost: ActorDiedError); Ray runs it "
        "again, after its last finished epoch (retry 1 of 2)"
    ) in caplog.text
    assert st.failure(lost) is None  # a retried attempt is not a failure

    retries.on_trial_error(0, [], _TuneTrial(lost, 3, ActorDiedError(), tmp_path))
    assert st.failure(lost)["reason"] == "its worker died or its node was lost: ActorDiedError (attempt 3 of 3)"

    # A trial's own exception: the worker recorded it, with its traceback; that record stays.
    st.mark_failed(own, "MemoryError: out of host memory", detail="Traceback ...")
    cause = MemoryError("out of host memory")
    with caplog.at_level(logging.WARNING, logger="harness.runner.driver"):
        retries.on_trial_error(0, [], _TuneTrial(own, 3, RayTaskError("_trainable", "Traceback ...", cause), tmp_path))
    assert f"{own.label}: attempt 3 failed (MemoryError: out of host memory); no retries left" in caplog.text
    assert st.failure(own)["detail"] == "Traceback ..."


def test_a_search_trial_whose_worker_died_each_time_is_recorded_in_one_line(tmp_path, caplog):
    from ray.exceptions import ActorDiedError

    from harness.runner import searcher as search_runner
    from harness.runner.driver import Retries

    st = store.Store(tmp_path / "s")
    base = Trial(arch="alexnet", epochs=2)
    config = {"base": base.to_dict(), "fields": ["lr", "loss"], "lr": 3e-4, "loss": "bce"}
    trial = search_runner._trial_of(config)
    st.begin(trial, "s")
    died = _TuneTrial(trial, 2, ActorDiedError(), tmp_path)
    died.config, died.trial_id = config, "abc_00001"  # a search's config holds the base and the drawn fields
    with caplog.at_level(logging.WARNING, logger="harness.runner.driver"):
        Retries(st, 1, trial_of=search_runner._trial_of).on_trial_error(0, [], died)
    assert f"{trial.label}: attempt 2 failed (its worker died or its node was lost: ActorDiedError)" in caplog.text
    assert st.failure(trial)["reason"] == "its worker died or its node was lost: ActorDiedError (attempt 2 of 2)"


def _full_disk(path):
    return store.WriteFailed(28, f"no space left on device while writing {path} (0.1 MB free)")


def test_a_full_disk_fails_the_trial_once_without_a_retry_even_when_its_record_does_not_fit(tmp_path, monkeypatch):
    """Retrying cannot make space: the attempt ends as failed (Ray is told, with the reason) instead of being
    raised for Ray to retry. When failed.json does not fit either, the run still learns why from Ray's result."""
    attempt = pytest.importorskip("harness.runner.attempt")
    st = store.Store(tmp_path / "g")
    trial = Trial(arch="alexnet")
    st.begin(trial, "g")
    told = []

    def fills_the_disk():
        raise _full_disk(st.trial_dir(trial) / "last.pt")

    assert attempt.attempt(st, trial, fills_the_disk, tell_failed=told.append) is False
    assert told == [st.failure(trial)["reason"]] and "no space left on device while writing" in told[0]

    st.begin(trial, "g")  # a new attempt starts without the old record
    monkeypatch.setattr(store.TrialFiles, "mark_failed", lambda self, record: (_ for _ in ()).throw(_full_disk(self)))
    assert attempt.attempt(st, trial, fills_the_disk, tell_failed=told.append) is False
    assert st.failure(trial) is None and told[-1].startswith("no space left on device while writing")


def test_a_failure_no_file_could_hold_is_still_in_the_summary(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from harness.runner.driver import Retries, summarize

    st = store.Store(tmp_path / "g")
    full, fine = Trial(arch="alexnet", seed=0), Trial(arch="alexnet", seed=1)
    for t in (full, fine):
        st.begin(t, "g")
    retries = Retries(st, 2)
    reason = "no space left on device while writing x/last.pt (0.1 MB free)"
    retries.on_trial_result(0, [], SimpleNamespace(config={"trial": fine.to_dict()}), {"failed": 1, "reason": reason})
    assert st.failure(fine)["reason"] == reason  # the worker's record did not fit; the driver's did
    monkeypatch.setattr(store.TrialFiles, "mark_failed", lambda self, record: (_ for _ in ()).throw(_full_disk(self)))
    retries.on_trial_result(0, [], SimpleNamespace(config={"trial": full.to_dict()}), {"failed": 1, "reason": reason})
    lines = summarize("g", [full, fine], st, unrecorded=retries.unrecorded).lines()
    assert lines[0] == "g: 0/2 trials done (0 already done before this run), 2 failed, 0 not run"
    assert f"  FAILED {full.label} ({full.key}): {reason}" in lines


def test_the_progress_bar_drops_a_dead_attempts_epoch_until_its_retry_reports():
    from types import SimpleNamespace

    from harness.runner.driver import Progress

    progress = Progress(total=2, already=0)
    trial = SimpleNamespace(trial_id="t1", config={"trial": Trial(arch="alexnet", epochs=3).to_dict()})
    progress.on_trial_result(0, [], trial, {"epoch": 2, "val_auc": 0.61})
    assert "ep 2/3" in progress.bar.postfix
    progress.on_trial_recover(0, [], trial)  # its node was lost: epoch 2 is not running any more
    assert progress.running == {} and "ep 2/3" not in progress.bar.postfix
    progress.close()


def test_a_sigterm_exit_inside_a_gc_callback_ends_the_worker_quietly(monkeypatch):
    """Ray's SIGTERM handler raises SystemExit; raised inside a weakref callback it is 'ignored' (printed to the
    driver's stderr as a traceback, the worker running on). The worker's hook exits as the handler meant."""
    import gc
    import sys
    import weakref

    from harness.runner import cluster

    exits, printed = [], []
    monkeypatch.setattr(cluster.os, "_exit", exits.append)
    monkeypatch.setattr(sys, "__unraisablehook__", printed.append)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    cluster.worker_logging()

    class Thing:
        pass

    def sigterm_during_gc(_ref):
        raise SystemExit(1)

    thing = Thing()
    ref = weakref.ref(thing, sigterm_during_gc)
    del thing
    gc.collect()
    assert exits == [1] and printed == [] and ref() is None

    # While a trial runs, its end is Tune's business: the exit is left to Python, as before.
    with cluster.trial_running():
        thing = Thing()
        ref = weakref.ref(thing, sigterm_during_gc)
        del thing
        gc.collect()
    assert exits == [1] and [type(u.exc_value) for u in printed] == [SystemExit]
    printed.clear()

    def other_error(_ref):
        raise ValueError("not an exit")

    thing = Thing()
    ref = weakref.ref(thing, other_error)
    del thing
    gc.collect()
    assert exits == [1] and [type(u.exc_value) for u in printed] == [ValueError]  # printed as Python would
