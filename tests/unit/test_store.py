"""The results store: atomic writes, DONE as the commit point, failures, locking."""

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import store
from harness.config import Trial


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "m.json"
    store.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), store.atomic_path(target) as tmp:
        tmp.write_text('{"a": 2, "partial')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_done_marker_is_the_commit_point(tmp_path):
    st = store.Store(tmp_path / "grid")
    t = Trial(arch="alexnet")
    files = st.begin(t, "grid")
    files.write_metrics({"auc_macro": 0.7})
    assert not st.is_done(t) and store.load_results(st.root) == []  # metrics without DONE: an unfinished trial
    st.mark_done(t)
    assert st.is_done(t)
    (r,) = store.load_results(st.root)
    assert r.metrics["auc_macro"] == 0.7 and r.trial["key"] == t.key and r.trial["arch"] == "alexnet"


def _finished(tmp_path) -> tuple[store.Store, Trial, store.TrialFiles]:
    st = store.Store(tmp_path / "grid")
    t = Trial(arch="alexnet")
    files = st.begin(t, "grid")
    files.write_metrics({"auc_macro": 0.7})
    files.write_predictions(probs=np.linspace(0, 1, 28, dtype=np.float32).reshape(2, 14))
    files.save_weights({"w": __import__("torch").ones(3)})
    st.mark_done(t)
    return st, t, files


@pytest.mark.parametrize(
    ("name", "spoil"),
    [
        (store.TrialFiles.METRICS, lambda p: p.write_text('{"auc_macro": 0.7')),  # invalid JSON
        (store.TrialFiles.METRICS, lambda p: p.write_text('{"auc_macro": 0.9}')),  # valid, but not what was written
        (store.TrialFiles.PREDICTIONS, lambda p: p.write_bytes(p.read_bytes()[:40])),  # truncated
        (store.TrialFiles.PREDICTIONS, lambda p: p.unlink()),  # lost
        (store.TrialFiles.WEIGHTS, lambda p: p.write_bytes(p.read_bytes()[:-10])),
        (store.TrialFiles.DONE, lambda p: p.write_text("{")),
    ],
)
def test_a_damaged_result_file_is_named_and_the_trial_is_not_a_result(tmp_path, name, spoil):
    st, _, files = _finished(tmp_path)
    assert files.problems() == []
    spoil(files.path / name)
    problems = files.problems()
    assert len(problems) == 1 and name in problems[0]
    scan = store.scan(st.root, weights=True)
    assert scan.results == [] and len(scan.broken) == 1 and files.key in scan.broken[0]


def test_a_report_scan_does_not_hash_weights_but_a_run_does(tmp_path):
    st, _, files = _finished(tmp_path)
    (files.path / store.TrialFiles.WEIGHTS).write_bytes(b"not the weights")
    assert len(store.load_results(st.root)) == 1  # weights=False: the report never reads model.pt
    assert store.scan(st.root, weights=True).broken


def test_recomputed_metrics_keep_the_trial_done(tmp_path):
    _, _, files = _finished(tmp_path)
    files.replace_metrics({"auc_macro": 0.71})
    assert files.problems() == [] and files.read_metrics() == {"auc_macro": 0.71}


def test_an_unreadable_resume_file_is_set_aside_with_a_warning(tmp_path, caplog):
    files = store.TrialFiles(tmp_path / "t")
    files.save_resume({"epoch": 2, "model": {}})
    assert files.load_resume()["epoch"] == 2
    path = files.path / store.TrialFiles.RESUME
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with caplog.at_level("WARNING"):
        assert files.load_resume() is None
    assert not path.exists() and (files.path / "last.pt.unreadable").is_file()
    assert "last.pt" in caplog.text and "restarts from scratch" in caplog.text


def test_history_round_trips_with_columns_that_appear_later(tmp_path):
    files = store.TrialFiles(tmp_path / "t")
    rows = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25, "val_auc": 0.625}]
    files.write_history(rows)
    assert files.read_history() == rows


@pytest.mark.parametrize(("err", "words"), [(errno.ENOSPC, "no space left on device"), (errno.EIO, "I/O error")])
def test_a_failed_write_leaves_the_old_file_and_names_the_reason(tmp_path, monkeypatch, err, words):
    _, _, files = _finished(tmp_path)
    before = (files.path / store.TrialFiles.METRICS).read_bytes()

    def full(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(store.WriteFailed, match=f"{words} while writing .*metrics.json"):
        files.write_metrics({"auc_macro": 0.1})
    monkeypatch.undo()
    assert (files.path / store.TrialFiles.METRICS).read_bytes() == before
    assert sorted(p.name for p in files.path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    assert files.problems() == []


def test_failure_recorded_then_cleared_on_retry(tmp_path):
    st = store.Store(tmp_path / "grid")
    t = Trial(arch="alexnet")
    st.begin(t, "grid")
    st.mark_failed(t, "loss is nan at epoch 1")
    assert st.failure(t)["reason"] == "loss is nan at epoch 1"
    assert store.load_failures(st.root)[0]["label"] == t.label
    st.begin(t, "grid")  # a rerun starts clean
    assert st.failure(t) is None


def test_provenance_names_version_and_the_commit_of_this_tree(monkeypatch):
    from harness import __version__
    from harness.store import origin as prov

    root = Path(prov.__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    monkeypatch.setattr(prov, "_PROVENANCE", None)  # computed once per process: read this tree's commit now
    p = store.provenance()
    assert p["harness_version"] == __version__ and p["git_commit"] == head.stdout.strip()
    assert isinstance(p["git_dirty"], bool) and "written" in p
    # Outside a checkout (an installed package), the commit comes from HARNESS_GIT_COMMIT, else "unknown".
    monkeypatch.setattr(prov.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    monkeypatch.setenv("HARNESS_GIT_COMMIT", "abc123")
    assert prov._git_commit() == ("abc123", False)


def test_unwritable_results_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        st = store.Store(blocker / "grid")  # a path under a regular file can never be created
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        st = store.Store(ro / "grid")
    with pytest.raises(store.StoreError, match="not writable"):
        st.check_writable()


def test_npz_round_trip(tmp_path):
    store.write_npz(tmp_path / "p.npz", probs=np.eye(3, dtype=np.float32))
    with np.load(tmp_path / "p.npz") as z:
        assert z["probs"].shape == (3, 3)


def test_a_failed_torch_save_leaves_no_temporary_file(tmp_path):
    files = store.TrialFiles(tmp_path / "t")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        files.save_resume({"model": Unpicklable()})
    assert list(files.path.iterdir()) == []


def test_a_disk_that_fills_during_torch_save_is_one_line_with_the_space_left_and_no_temporary_file(
    tmp_path, monkeypatch
):
    """torch.save turns the failed write into a RuntimeError ("enforce fail at inline_container.cc"); the store
    finds the disk error behind it, names the file and the free space, and keeps the previous complete file."""
    torch = pytest.importorskip("torch")
    from harness.store import trial as trial_mod

    files = store.TrialFiles(tmp_path / "t")
    files.save_resume({"epoch": 0, "model": {"w": torch.zeros(4)}})
    before = (files.path / store.TrialFiles.RESUME).read_bytes()
    opened = []

    class FullDisk:  # the file a disk with 1 KB left would give: writes past it fail with ENOSPC
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115 - closed by the store's `with`, which is under test
            opened.append(self.fh)

        def write(self, data):
            if self.fh.tell() + len(data) > 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(trial_mod, "open", FullDisk, raising=False)
    with pytest.raises(
        store.WriteFailed, match=r"no space left on device while writing .*last\.pt \([\d,.]+ MB free\)"
    ):
        files.save_resume({"epoch": 1, "model": {"w": torch.ones(100_000)}})
    assert opened and all(fh.closed for fh in opened)  # closed before the failure is handled: its space is free
    assert sorted(p.name for p in files.path.iterdir()) == [store.TrialFiles.RESUME]
    assert (files.path / store.TrialFiles.RESUME).read_bytes() == before


def test_a_cache_file_that_does_not_fit_is_refused_before_it_is_mapped(tmp_path, monkeypatch):
    """A sparse memory map on a full disk ends in SIGBUS when a page is first touched: the space is reserved first."""
    from harness.data import cache

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with (
        pytest.raises(store.WriteFailed, match=r"no space left on device while writing .*c\.npy \("),
        store.atomic_path(tmp_path / "c.npy") as tmp,
    ):
        cache._mapped(tmp, (4, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_a_lost_or_changed_history_is_named_and_written_back_exactly_from_done(tmp_path):
    from harness import rescore

    st, t, files = _finished(tmp_path)
    files.write_history([{"epoch": 1, "train_loss": 0.25, "val_auc": 0.5}, {"epoch": 2, "train_loss": 0.125}])
    st.mark_done(t)
    written = (files.path / store.TrialFiles.HISTORY).read_bytes()
    for spoil in (lambda p: p.unlink(), lambda p: p.write_text("epoch\n1\n")):
        spoil(files.path / store.TrialFiles.HISTORY)
        damaged = files.damaged()
        assert list(damaged) == [store.TrialFiles.HISTORY]
        assert rescore.heal(files, damaged, weights=True)
        assert (files.path / store.TrialFiles.HISTORY).read_bytes() == written and files.damaged() == {}


def test_a_history_done_never_held_cannot_be_written_back(tmp_path):
    from harness import rescore

    _, _, files = _finished(tmp_path)
    files.write_history([{"epoch": 1}])
    done = files.read_done()
    done["sha256"][store.TrialFiles.HISTORY] = "0" * 64  # a DONE of an older version: a digest, no copy
    store.write_json(files.path / store.TrialFiles.DONE, done)
    assert list(files.damaged()) == [store.TrialFiles.HISTORY]
    assert not rescore.heal(files, files.damaged(), weights=True)


def test_a_missing_weights_file_is_named_even_where_weights_are_not_hashed(tmp_path):
    _, _, files = _finished(tmp_path)
    (files.path / store.TrialFiles.WEIGHTS).write_bytes(b"changed")
    assert files.damaged(weights=False) == {}  # not hashed: a report never reads the weights
    (files.path / store.TrialFiles.WEIGHTS).unlink()
    assert files.damaged(weights=False) == {store.TrialFiles.WEIGHTS: f"{files.weights_path}: missing"}


def _gone_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _stale(path: Path, size: int = 8, age_s: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    old = path.stat().st_mtime - age_s
    os.utime(path, (old, old))
    return path


def test_taking_the_lock_sweeps_stale_temporary_files_and_nothing_else(tmp_path, caplog):
    st = store.Store(tmp_path / "grid")
    stale = [
        _stale(st.root / "k1" / ".last.pt.ab12cd34.tmp", 3000),
        _stale(st.root / "k2" / ".metrics.json.x_y9zq0w.tmp", 1000),  # an older version's mkstemp name
        _stale(st.root / "search" / "s" / ".trials.csv.0a1b2c3d.tmp", 24),
    ]
    kept = [
        _stale(st.root / "k1" / "last.pt"),
        _stale(st.root / "k1" / "last.pt.ab12cd34.tmp"),  # no leading dot: not a name the store gives
        _stale(st.root / "k1" / ".notes.tmp"),
        _stale(st.root / "k1" / ".last.pt.ab12cd34.tmp.bak"),
        _stale(st.root / "k2" / ".model.pt.0a1b2c3d.tmp", 10, age_s=0),  # just written: maybe still being written
    ]
    # Just written, with the writer named: kept while it lives (this process, another one here, or one on
    # another machine that cannot be asked); swept at once when it is known to be dead.
    host = store.writes._HOST
    other = "000000" if host != "000000" else "111111"
    stale.append(_stale(st.root / "k3" / f".last.pt.{host}-{_gone_pid()}-0a1b2c3d.tmp", 10, age_s=0))
    kept += [
        _stale(st.root / "k3" / f".model.pt.{host}-{os.getpid()}-0a1b2c3d.tmp", 10, age_s=0),
        _stale(st.root / "k3" / f".model.pt.{host}-1-0a1b2c3d.tmp", 10, age_s=0),  # init: alive
        _stale(st.root / "k3" / f".model.pt.{other}-{_gone_pid()}-0a1b2c3d.tmp", 10, age_s=0),
    ]
    with caplog.at_level("WARNING", logger="harness.store"), st.lock():
        pass
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in kept] == [True] * len(kept)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("removed 4 temporary file(s) (0.0 MB) that interrupted writes left under")
    caplog.clear()
    with caplog.at_level("WARNING", logger="harness.store"), st.lock():
        pass
    assert caplog.records == []  # nothing left to say


def test_a_written_file_has_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        store.write_bytes(tmp_path / "a" / "m.json", b"{}")
        store.TrialFiles(tmp_path / "t").save_weights({})
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "t").iterdir())
