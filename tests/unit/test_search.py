"""Hyperparameter search: the search file and its errors, telling the study, ASHA, resume, and the exported grid."""

import functools
import json
import math
import os
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from harness import search, store
from harness.config import ConfigError, Runtime, Trial
from harness.gridfile import load_grid
from harness.gridinput import locate
from harness.search import optuna_internals
from harness.search import space as space_mod
from harness.search import study as study_mod
from harness.search import summary as summary_mod

TrialState = optuna.trial.TrialState

BASE = "base: {dataset: synthetic, arch: efficientnet_b0, image_size: 64, epochs: 3}\n"


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# --- the search file ----------------------------------------------------------------------------------------


def test_space_types_profile_and_defaults(tmp_path):
    p = write(
        tmp_path,
        """
        name: hp
        base: {dataset: nih, arch: resnet50, epochs: 10}
        space:
          lr: {type: float, low: 1e-5, high: 1e-3, log: true}
          freeze: {type: int, low: 0, high: 4}
          loss: {type: categorical, choices: [bce, focal, asl]}
          batch_size: {type: categorical, choices: [32, 64]}
          augment: {type: categorical, choices: [true, false]}
          arch: {type: categorical, choices: [resnet50, densenet121]}
        pruner: {grace_period: 2, reduction_factor: 2, max_t: 10}
        profiles: {smoke: {arch: alexnet, image_size: 64, epochs: 3}}
    """,
    )
    s = search.load_search(p)
    lr = s.space["lr"]
    assert isinstance(lr, search.FloatParam) and (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)  # YAML strings
    freeze = s.space["freeze"]
    assert isinstance(freeze, search.IntParam) and (freeze.low, freeze.high, freeze.log) == (0, 4, False)
    assert s.space["batch_size"].choices == (32, 64) and s.space["augment"].choices == (True, False)
    assert (s.metric, s.direction, s.samples, s.concurrency) == ("val_auc", "maximize", 20, 1)
    assert s.pruner == search.Pruner(grace_period=2, reduction_factor=2.0)
    assert s.study_name == "hp" and s.storage is None
    one_epoch = search.load_search(
        write(
            tmp_path,
            BASE.replace("epochs: 3", "epochs: 1") + "space: {lr: {type: float, low: 1e-5, high: 1e-3}}\n",
            "one.yaml",
        )
    )
    assert one_epoch.pruner is None  # nothing to stop early

    smoke = search.load_search(p, profile="smoke", samples=3)
    assert "arch" not in smoke.space  # the profile pins it
    assert smoke.base.arch == "alexnet" and smoke.base.epochs == 3 and smoke.samples == 3
    assert smoke.study_name == "hp-smoke"  # never mixed with the full study
    t = smoke.trial({"lr": 3e-4, "freeze": 2, "loss": "focal", "batch_size": 32, "augment": False})
    assert (t.arch, t.lr, t.freeze, t.loss, t.augment, t.epochs) == ("alexnet", 3e-4, 2, "focal", False, 3)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "space: {focal_gama: {type: float, low: 0, high: 5}}",
            "unknown key 'focal_gama' (did you mean 'focal_gamma'?)",
        ),
        ("space: {lr: {type: float, low: 1e-4, high: 1e-4}}", "range [0.0001, 0.0001] is empty"),
        ("space: {lr: {type: float, low: 1e-3, high: 1e-5}}", "inverted (low 0.001 > high 1e-05)"),
        ("space: {freeze: {type: int, low: 3, high: 1}}", "inverted"),
        ("space: {weight_decay: {type: float, low: 0, high: 1e-2, log: true}}", "log-scale range needs low > 0"),
        ("space: {lr: {type: float, low: 0, high: 1e-3}}", "lr=0 is out of range"),
        ("space: {focal_alpha: {type: float, low: -1, high: 1}}", "out of range for focal_alpha; narrow the range"),
        ("space: {lr: {type: float, high: 1e-3}}", "needs low and high"),
        ("space: {loss: {type: categorical, choices: []}}", "non-empty list of choices"),
        ("space: {loss: {type: categorical}}", "non-empty list of choices"),
        ("space: {loss: {type: categorical, choices: [bce]}}", "only one choice"),
        ("space: {loss: {type: categorical, choices: [bce, bce]}}", "repeat a value"),
        ("space: {batch_size: {type: categorical, choices: [32, big]}}", "batch_size='big' is not a valid int"),
        ("space: {augment: {type: categorical, choices: [true, 2]}}", "augment=2 is not a valid bool"),
        ("space: {loss: {type: categorical, choice: [bce, focal]}}", "unknown key 'choice' (did you mean 'choices'?)"),
        ("space: {lr: {type: uniform, low: 1e-5, high: 1e-3}}", "unknown parameter type 'uniform'"),
        ("space: {freeze: {type: float, low: 0, high: 4}}", "freeze takes integers; use type: int"),
        ("space: {lr: [1e-5, 1e-3]}", "expected a mapping like"),
        ("space: {seed: {type: int, low: 0, high: 9}}", "seed cannot be searched"),
        ("space: {epochs: {type: int, low: 2, high: 9}}", "epochs cannot be searched"),
        ("space: {}", "space: expected a non-empty mapping"),
        ("spaces: {}", "unknown key 'spaces' (did you mean 'space'?)"),
        ("metric: test_auc", "metric='test_auc' is not reported by trials; valid: val_auc, val_loss, train_loss"),
        ("metric: val_loss\ndirection: maximize", "would favour the worst val_loss"),
        ("direction: up", "direction='up'"),
        ("samples: 0", "samples: expected an integer >= 1"),
        ("concurrency: two", "concurrency: expected an integer >= 1"),
        ("pruner: {grace_period: 3}", "grace_period=3 leaves no epoch to stop at"),
        ("pruner: {reduction_factor: 1}", "reduction_factor: expected a number > 1"),
        ("pruner: {max_t: 20}", "max_t=20 must equal base epochs (3)"),
        ("pruner: {grace_perod: 1}", "did you mean 'grace_period'?"),
        ("storage: study.db", "expected a database URL"),
        ("sampler: {sed: 1}", "did you mean 'seed'?"),
        ("name: 'a b'", "name='a b' must be letters"),
    ],
)
def test_bad_search_files_are_one_clear_line(tmp_path, text, message):
    space = "" if text.startswith("space") else "space: {lr: {type: float, low: 1e-5, high: 1e-3}}\n"
    body = BASE + space
    with pytest.raises(ConfigError) as err:
        search.load_search(write(tmp_path, body + text + "\n"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    "space, message",
    [
        ("arch: {type: categorical, choices: [alexnet, resnet5]}", "unknown arch 'resnet5' (did you mean 'resnet50'?)"),
        ("loss: {type: categorical, choices: [bce, focall]}", "unknown loss 'focall'"),
        ("freeze: {type: int, low: 0, high: 12}", "freeze=12 is deeper than"),
        ("image_size: {type: int, low: 32, high: 128}", "below alexnet's minimum input"),
    ],
)
def test_space_checked_against_registries_before_anything_starts(tmp_path, space, message):
    p = write(tmp_path, f"base: {{arch: alexnet, epochs: 3}}\nspace: {{{space}}}\n")
    s = search.load_search(p)
    with pytest.raises(ConfigError, match="space: ") as err:
        search.check_search(s)
    assert message in str(err.value)


def test_search_yaml_in_repo_is_valid():
    full = search.load_search("grids/search.yaml")
    search.check_search(full)
    assert full.metric == "val_auc" and full.direction == "maximize" and full.pruner is not None
    searched = {"lr", "weight_decay", "focal_gamma", "focal_alpha", "freeze", "batch_size", "augment", "loss"}
    assert searched <= set(full.space)
    smoke = search.load_search("grids/search.yaml", profile="smoke", samples=2)
    search.check_search(smoke)
    assert smoke.base.image_size == 64 and smoke.base.epochs == 3 and not smoke.base.pretrained
    assert locate("grids/search.yaml").read_text().startswith("# python -m harness search grids/search.yaml")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys):
    p = write(tmp_path, BASE + "space: {lr: {type: float, low: 1e-5, high: 1e-3, log: true}}\n")
    assert search.main_search(p, runtime=Runtime(results_dir=str(tmp_path / "r")), dry_run=True) == 0
    out = capsys.readouterr().out
    assert "lr: float in [1e-05, 0.001] (log)" in out and "val_auc (maximize)" in out
    assert not (tmp_path / "r").exists()


# --- telling the study (Ray's searcher and scheduler, driven by hand: no Ray cluster) --------------------------


@pytest.fixture
def searcher():
    from harness.runner.searcher import StudySearcher

    storage = optuna.storages.InMemoryStorage()
    ot_study = optuna.create_study(storage=storage, direction="minimize", sampler=optuna.samplers.RandomSampler(0))
    live = study_mod.LiveTrials(
        ot_study, lambda t: {"lr": t.suggest_float("lr", 1e-5, 1e-1, log=True)}, storage=storage
    )
    yield StudySearcher(live, metric="val_loss", mode="min", epochs=3)
    live.close()


def row(epoch, value, **extra):
    return {"epoch": epoch, "val_loss": value, "training_iteration": epoch, "key": "k", **extra}


def test_searcher_tells_pruned_complete_and_failed_trials(searcher):
    for tid in "abcde":
        assert "lr" in searcher.suggest(tid)
    # a: ASHA stops it after epoch 2; Ray never passes that last result to on_trial_result.
    searcher.on_trial_result("a", row(1, 0.7))
    searcher.on_trial_complete("a", result=row(2, 0.65))
    # b: trains every epoch; its value is the best epoch's (run_trial keeps the best weights).
    for e, v in [(1, 0.6), (2, 0.4), (3, 0.45)]:
        searcher.on_trial_result("b", row(e, v))
    searcher.on_trial_complete("b", result=row(3, 0.45))
    searcher.on_trial_complete("c", result={"failed": 1, "val_loss": math.nan, "training_iteration": 1})
    searcher.on_trial_result("d", row(1, 0.5))
    searcher.on_trial_complete("d", result=row(1, 0.5), error=True)
    searcher.on_trial_complete("e", result=None)  # stopped before it ever ran
    trials = searcher.study.study.get_trials()
    assert [t.state for t in trials] == [
        TrialState.PRUNED,
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.FAIL,
    ]
    pruned, complete = trials[0], trials[1]
    assert pruned.value == 0.65 and pruned.intermediate_values == {1: 0.7, 2: 0.65}
    assert complete.value == 0.4 and complete.intermediate_values == {1: 0.6, 2: 0.4, 3: 0.45}
    assert pruned.user_attrs["outcome"] == "pruned" and complete.user_attrs["key"] == "k"
    searcher.on_trial_complete("a", result=row(3, 0.1))  # a repeated completion changes nothing
    assert searcher.study.study.get_trials()[0].state == TrialState.PRUNED


def test_complete_trial_without_a_finite_value_is_a_failure(searcher):
    searcher.suggest("a")
    for e in (1, 2, 3):
        searcher.on_trial_result("a", row(e, math.nan))
    searcher.on_trial_complete("a", result=row(3, math.nan))
    (t,) = searcher.study.study.get_trials()
    assert t.state == TrialState.FAIL and "no finite value" in t.user_attrs["reason"]


def test_asha_rungs_start_from_the_studys_earlier_curves():
    from ray.tune.schedulers import TrialScheduler

    from harness.runner import searcher as runner

    def asha(prior):
        plan = SimpleNamespace(metric="val_loss", mode="min", grace_period=1, reduction_factor=2, prior=prior)
        s = runner._asha(plan, epochs=3)
        t = SimpleNamespace(trial_id="new")
        s.on_trial_add(None, t)
        return s.on_trial_result(None, t, {"epoch": 1, "val_loss": 0.6})

    assert asha([]) == TrialScheduler.CONTINUE  # first at its rung: nothing to compare with
    assert asha([{1: 0.4, 2: 0.3}, {1: 0.5}]) == TrialScheduler.STOP  # worse than both earlier trials at epoch 1
    assert asha([{1: 0.9, 2: 0.8}, {1: 0.7}]) == TrialScheduler.CONTINUE


def test_outcome_of_a_result():
    from harness.runner.searcher import outcome

    assert outcome({"epoch": 3}, 3) == "complete"
    assert outcome({"epoch": 1}, 3) == "pruned"
    assert outcome({"failed": 1}, 3) == "failed"
    assert outcome(None, 3) == "failed"
    # After a stop signal, what is short of its epochs was cut short by it (or never started), not pruned.
    assert outcome({"epoch": 1}, 3, stopped=True) == "interrupted"
    assert outcome(None, 3, stopped=True) == "interrupted"
    assert outcome({"epoch": 3}, 3, stopped=True) == "complete"
    assert outcome({"failed": 1}, 3, stopped=True) == "failed"


def test_an_interrupted_trial_is_queued_once_with_its_point_and_counted_apart_from_failures(searcher):
    """A stop signal mid-trial: the study files it as FAIL (Optuna has no other state) saying interrupted; the
    next run asks its point first (same settings, so the same folder and checkpoint) and counts agree."""
    study = searcher.study.study
    searcher.stopping = lambda: True
    drawn = [searcher.suggest(t)["lr"] for t in "abc"]
    searcher.on_trial_complete("a", result=row(3, 0.4))  # finished before the signal
    searcher.on_trial_result("b", row(1, 0.7))
    searcher.on_trial_complete("b", result=row(1, 0.7))  # stopped by the signal after epoch 1
    searcher.study.close()  # c: asked, never told (it had not started)
    a, b, c = study.get_trials()
    assert a.state == TrialState.COMPLETE
    assert b.state == c.state == TrialState.FAIL
    assert b.user_attrs["outcome"] == c.user_attrs["outcome"] == "interrupted"
    assert b.user_attrs["reason"] == study_mod.INTERRUPTED
    counts = study_mod.counts(study)
    assert (counts["complete"], counts["fail"], counts["interrupted"], counts["resumed"]) == (1, 0, 2, 0)

    assert study_mod.requeue_interrupted(study) == [1, 2]
    assert study_mod.requeue_interrupted(study) == []  # queued once, not on every run
    assert study_mod.counts(study)["resumed"] == 2
    again = study_mod.LiveTrials(study, searcher.study.sample, storage=study._storage)
    assert [again.ask("d")["lr"], again.ask("e")["lr"]] == drawn[1:]  # asked before any new point
    assert again.ask("f")["lr"] not in drawn
    again.close()


# --- the study: persistence guards, stale trials, outputs -------------------------------------------------------


def _search(tmp_path, extra=""):
    return search.load_search(
        write(tmp_path, BASE + "space: {lr: {type: float, low: 1e-5, high: 1e-2, log: true}}\n" + extra)
    )


def test_study_refuses_another_metric_or_base(tmp_path):
    s = _search(tmp_path)
    storage = study_mod.storage(s, tmp_path)
    study_mod.open_study(s, storage, s.base)
    other = _search(tmp_path, "metric: val_loss\n")
    with pytest.raises(ConfigError, match="was run with metric val_auc, not val_loss"):
        study_mod.open_study(other, storage, other.base)
    with pytest.raises(ConfigError, match=r"other fixed settings \(epochs: 3 -> 4\)"):
        study_mod.open_study(s, storage, s.base.replace(epochs=4))
    with pytest.raises(ConfigError, match="storage nosuchdb://ann:\\*\\*\\*@x/y") as err:
        study_mod.storage(_search(tmp_path, "storage: nosuchdb://ann:secret@x/y\n"), tmp_path)
    assert "secret" not in str(err.value)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the killed search's ask() stands for a real one
def test_only_trials_whose_heartbeat_stopped_are_failed(tmp_path):
    s = _search(tmp_path)
    storage = study_mod.storage(s, tmp_path, heartbeat_s=1, grace_s=1)
    study = study_mod.open_study(s, storage, s.base)
    killed = study.ask(
        {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    )  # a search killed with kill -9: its last heartbeat, then silence
    optuna_internals.record_heartbeat(storage, study.study_name, killed.number)
    draw = functools.partial(space_mod.sample, space=s.space, base=s.base.to_dict())
    live = study_mod.LiveTrials(study, draw, storage=storage, heartbeat_s=0.3)  # a search still running
    live.ask("ray-1")
    time.sleep(2.5)
    assert study_mod.fail_stale(study) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]
    live.close()  # stopped before its trial ended: the study hears so
    last = study.get_trials()[1]
    assert last.state == TrialState.FAIL and last.user_attrs["reason"] == "interrupted: the search was stopped"


def test_optuna_contract():
    """Fails on an Optuna upgrade that moves what harness/search/optuna_internals.py calls, naming it."""
    assert optuna_internals.contract_problems() == []


def test_ray_contract():
    """Fails on a Ray upgrade that moves what harness/runner/ray_internals.py relies on, naming it."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from harness.runner import ray_internals

    assert ray_internals.contract_problems() == []
    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    try:
        ray_internals.prime(asha, "epoch", "m", [{1: 0.9, 2: 0.9}, {1: 0.8}])
    except Exception as exc:
        pytest.fail(f"ASHA no longer takes a stand-in trial with only a trial_id: {type(exc).__name__}: {exc}")
    new = SimpleNamespace(trial_id="new")
    asha.on_trial_add(None, new)
    assert asha.on_trial_result(None, new, {"epoch": 1, "m": 0.1}) == TrialScheduler.STOP, (
        "ASHA ignored the primed curves: ray_internals.prime no longer reaches its rungs"
    )


def _add(study, lr, value, state=TrialState.COMPLETE):
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": lr},
            distributions=dist,
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            intermediate_values={1: value},
        )
    )


def test_export_with_too_few_trials_is_graceful(tmp_path):
    s = _search(tmp_path)
    rt = Runtime(results_dir=str(tmp_path / "results"))
    study = study_mod.open_study(s, study_mod.storage(s, tmp_path), s.base)
    summary = summary_mod.export(s, study, rt)
    assert summary["best"] is None and "needs >= 2 completed trials, have 0" in summary["importance"]["skipped"]
    _add(study, 1e-3, 0.7)
    summary = summary_mod.export(s, study, rt)
    assert summary["best"]["value"] == 0.7 and "have 1" in summary["importance"]["skipped"]
    assert Path(summary["grid"]).is_file()


def test_export_writes_best_importance_plots_and_a_seeded_grid(tmp_path):
    s = _search(tmp_path)
    rt = Runtime(results_dir=str(tmp_path / "results"))
    study = study_mod.open_study(s, study_mod.storage(s, tmp_path), s.base)
    for lr, v in [(1e-5, 0.55), (1e-4, 0.62), (1e-3, 0.71), (3e-3, 0.66), (1e-2, 0.5)]:
        _add(study, lr, v)
    _add(study, 2e-5, 0.3, TrialState.PRUNED)
    summary = summary_mod.export(s, study, rt)
    out = Path(summary["out"])
    assert out == tmp_path / "results" / s.name / "search" / s.study_name
    best = json.loads((out / "best.json").read_text())
    assert best["number"] == 2 and best["value"] == 0.71 and best["params"] == {"lr": 1e-3}
    assert list(json.loads((out / "importance.json").read_text())) == ["lr"]
    for stem in summary_mod.PLOTS:
        assert (out / f"{stem}.png").stat().st_size > 1000, summary["plots"][stem]
    grid = load_grid(out / "best.yaml")
    assert len(grid.trials) == 3 and [t.seed for t in grid.trials] == [0, 1, 2]
    assert {t.lr for t in grid.trials} == {1e-3} and grid.trials[0].replace(seed=0) == s.base.replace(lr=1e-3)
    assert (out / "best.yaml").read_text().startswith(f"# python -m harness run {out / 'best.yaml'}")
    assert summary["trials"]["complete"] == 5 and summary["trials"]["pruned"] == 1


# --- a real search: Optuna through Ray Tune with ASHA on a tiny synthetic tree -----------------------------------


# --- the trainable, driven by hand: what reaches Ray and the store when a trial replays, fails or is stopped ------


@pytest.fixture
def trainable(tmp_path, monkeypatch):
    """Calls the search trainable for one point, with Ray's report() and run_trial replaced."""
    from harness import train
    from harness.runner import searcher as runner

    reported = []
    monkeypatch.setattr("ray.tune.report", lambda row: reported.append(row))
    cpus = {"CPU": float(os.cpu_count() or 1)}  # torch keeps this process's threads
    monkeypatch.setattr("ray.get_runtime_context", lambda: SimpleNamespace(get_assigned_resources=lambda: cpus))
    base = Trial(dataset="synthetic", arch="efficientnet_b0", image_size=32, epochs=3)
    trial = base.replace(lr=1e-3)
    config = {
        "base": base.to_dict(),
        "fields": ["lr"],
        "lr": 1e-3,
        "runtime": Runtime(device="cpu"),
        "grid_dir": str(tmp_path),
        "grid": "g",
        "metric": "val_loss",
    }
    st = store.Store(tmp_path)

    def run(fake_run_trial):
        monkeypatch.setattr(train, "run_trial", fake_run_trial)
        runner._search_trainable(config)

    return SimpleNamespace(run=run, reported=reported, trial=trial, store=st, dir=st.trial_dir(trial))


ROWS = [
    {"epoch": 1, "train_loss": 0.9, "val_loss": 0.7, "val_auc": 0.55},
    {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_auc": 0.6},
]


def _history(t):
    return (t.dir / "history.csv").read_text().strip().splitlines()


def test_trainable_replays_a_done_trial_instead_of_training_it(trainable):
    t = trainable
    t.store.begin(t.trial, "g")
    (t.dir / "history.csv").write_text("epoch,train_loss,val_loss,val_auc\n1,0.9,0.7,0.55\n2,0.5,0.6,0.6\n")
    store.write_json(t.dir / "metrics.json", {})
    t.store.mark_done(t.trial)

    def must_not_train(*a, **k):
        raise AssertionError("a done trial was trained again")

    t.run(must_not_train)
    assert t.reported == [{**r, "key": t.trial.key} for r in ROWS]


def test_trainable_records_a_failure_and_tells_ray(trainable):
    from harness import train

    def diverges(trial, runtime, *, out_dir, report, test):
        assert test is False  # a search never touches the test split
        report(ROWS[0])
        raise train.TrialFailed("loss is nan at epoch 2")

    trainable.run(diverges)
    failure = trainable.store.failure(trainable.trial)
    assert failure["reason"] == "loss is nan at epoch 2"
    assert trainable.reported[-1]["failed"] == 1 and math.isnan(trainable.reported[-1]["val_loss"])
    assert len(_history(trainable)) == 2  # header + the epoch it finished


def test_trainable_stopped_by_the_scheduler_is_not_a_failure(trainable, monkeypatch):
    def stopped(row):
        raise SystemExit(0)  # what Ray's report() does in a trial the scheduler stopped

    monkeypatch.setattr("ray.tune.report", stopped)
    with pytest.raises(SystemExit):
        trainable.run(lambda trial, runtime, *, out_dir, report, test: report(ROWS[0]))
    assert trainable.store.failure(trainable.trial) is None
    assert len(_history(trainable)) == 2  # its curve so far is on disk before Ray hears of it


def test_trainable_replays_the_epochs_of_a_killed_attempt_before_resuming(trainable):
    import torch

    t = trainable
    t.dir.mkdir(parents=True)
    torch.save({"history": ROWS[:1], "epoch": 0}, t.dir / "last.pt")
    seen_before = []

    def resumes(trial, runtime, *, out_dir, report, test):
        seen_before.extend(t.reported)
        report(ROWS[1])

    t.run(resumes)
    assert [r["epoch"] for r in seen_before] == [1]  # run_trial resumes after epoch 1 and reports only epoch 2
    assert [r["epoch"] for r in t.reported] == [1, 2]
    assert set(t.store.files(t.trial).damaged()) == {"metrics.json"}  # run_trial was faked: no metrics.json
    assert len(_history(t)) == 3
