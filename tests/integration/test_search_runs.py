"""Hyperparameter search for real: Optuna through Ray Tune with ASHA on a tiny synthetic tree; pruning told to the study, the exported grid, a rerun that continues the study, loss parameters drawn only under their loss."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from harness import search, store
from harness.config import Runtime, Trial
from harness.gridfile import load_grid

SEARCH = """\
name: tiny
base: {dataset: synthetic, arch: efficientnet_b0, image_size: 32, epochs: 2, batch_size: 16, subset_fraction: 0.5,
       lr_step: 1}
space:
  # TPE's seeded startup draws 1e-8, 3e-3, 1e-8: the third learns nothing and is stopped at epoch 1.
  lr: {type: categorical, choices: [3.0e-3, 1.0e-8]}
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
metric: val_loss
samples: 3
pruner: {grace_period: 1, reduction_factor: 2}
sampler: {seed: 0, startup_trials: 20}
"""

TrialState = optuna.trial.TrialState


@pytest.fixture(scope="session")
def env(tmp_path_factory, small_synthetic_tree, local_ray):
    home = tmp_path_factory.mktemp("search")
    path = home / "tiny.yaml"
    path.write_text(SEARCH)
    runtime = Runtime(
        data_root=str(small_synthetic_tree),
        cache_dir=str(home / "cache"),
        results_dir=str(home / "results"),
        device="cpu",
        progress=False,
    )
    return SimpleNamespace(path=path, runtime=runtime, grid_dir=home / "results" / "tiny")


@pytest.fixture(scope="session")
def first(env):
    outcome = search.run(search.load_search(env.path), env.runtime)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{env.grid_dir / 'study.db'}")
    return SimpleNamespace(outcome=outcome, states=[t.state for t in study.trials], trials=study.trials)


def test_search_prunes_weak_trials_and_tells_the_study(first, env):
    assert first.outcome.exit_code == 0, first.outcome.failures
    assert sum(first.outcome.new.values()) == 3 and first.outcome.new["failed"] == 0
    assert first.states.count(TrialState.PRUNED) >= 1 and first.states.count(TrialState.COMPLETE) >= 1
    for t in first.trials:
        assert t.value is not None and math.isfinite(t.value)  # pruned ones too: their last epoch's value
        assert len(t.intermediate_values) == (2 if t.state == TrialState.COMPLETE else 1)
        d = env.grid_dir / t.user_attrs["key"]
        assert json.loads((d / store.TrialFiles.SEARCH).read_text())["outcome"] == t.user_attrs["outcome"]
        assert not (d / "failed.json").exists() and not (d / "last.pt").exists()
        rows = (d / "history.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + len(t.intermediate_values)  # the curve is kept even when stopped
        if t.state == TrialState.PRUNED:
            assert t.params["lr"] == 1e-8 and not (d / "DONE").exists() and not (d / "model.pt").exists()
        else:
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["split"] == "validation" and metrics["n_test"] == 0  # never the test split
            assert "probs" not in store.Result(trial={}, metrics=metrics, path=d).predictions()


def test_best_trial_exported_as_a_seeded_grid(first, env):
    best = first.outcome.summary["best"]
    assert best["params"]["lr"] == 3e-3
    grid = load_grid(first.outcome.summary["grid"])
    assert [t.seed for t in grid.trials] == [0, 1, 2]
    assert grid.trials[0] == Trial(**best["trial"])
    assert (Path(first.outcome.summary["out"]) / "history.png").is_file()
    assert any("pruned" in line for line in first.outcome.lines())


def test_rerun_continues_the_study(first, env):
    again = search.run(search.load_search(env.path, samples=1), env.runtime)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{env.grid_dir / 'study.db'}")
    assert len(study.trials) == 3 + 1
    assert [t.state for t in study.trials[:3]] == first.states  # the first run's trials are kept as they were
    assert sum(again.new.values()) == 1
    assert again.summary["trials"]["complete"] + again.summary["trials"]["pruned"] == 4


# A loss's parameters are drawn only under it. base sets focal_gamma away from its default: bce trials must shed it.
LOSS_SEARCH = """\
name: tinyloss
base: {dataset: synthetic, arch: efficientnet_b0, image_size: 32, epochs: 1, batch_size: 16, subset_fraction: 0.5,
       focal_gamma: 3.0}
space:
  loss: {type: categorical, choices: [bce, focal]}
  focal_gamma: {type: float, low: 0.5, high: 1.5}
  focal_alpha: {type: float, low: 0.5, high: 0.9}
samples: 4
sampler: {seed: 0, startup_trials: 20}   # TPE's seeded startup draws focal, bce, bce, focal
"""


# The sampling itself is a unit test (tests/unit/test_conditions.py), as is the replay of a done key
# (tests/unit/test_search.py); this runs both through Ray and the store.
@pytest.mark.slow
def test_search_draws_loss_parameters_only_under_their_loss(env):
    path = env.path.with_name("tinyloss.yaml")
    path.write_text(LOSS_SEARCH)
    outcome = search.run(search.load_search(path), env.runtime)
    assert outcome.exit_code == 0, outcome.failures
    grid_dir = env.grid_dir.with_name("tinyloss")
    study = optuna.load_study(study_name="tinyloss", storage=f"sqlite:///{grid_dir / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    defaults = Trial()
    by_loss = {}
    for t in study.trials:
        stored = json.loads((grid_dir / t.user_attrs["key"] / store.TrialFiles.TRIAL).read_text())
        assert stored["loss"] == t.params["loss"]
        by_loss.setdefault(t.params["loss"], []).append((t.params, stored))
    assert set(by_loss) == {"bce", "focal"}
    for params, stored in by_loss["bce"]:
        assert set(params) == {"loss"}  # the study holds no focal value the training never read
        assert (stored["focal_gamma"], stored["focal_alpha"]) == (defaults.focal_gamma, defaults.focal_alpha)
    for params, stored in by_loss["focal"]:
        assert set(params) == {"loss", "focal_gamma", "focal_alpha"}
        assert 0.5 <= params["focal_gamma"] <= 1.5 and 0.5 <= params["focal_alpha"] <= 0.9
        assert (stored["focal_gamma"], stored["focal_alpha"]) == (params["focal_gamma"], params["focal_alpha"])
    # Both bce draws are one setting: one key, trained once, the second replaying the first's stored curve.
    assert len({t.user_attrs["key"] for t in study.trials if t.params["loss"] == "bce"}) == 1
