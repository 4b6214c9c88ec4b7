"""Fields only some settings use (config.CONDITIONS): held at defaults in keys and grids, drawn only where used."""

import textwrap

import optuna
import pytest

from harness import cli, search
from harness.config import CONDITIONS, LOSS_PARAMS, TRIAL_FIELDS, ConfigError, Trial, inactive, trial_from_dict
from harness.gridfile import load_grid
from harness.gridinput import builtin_grids, read_yaml
from harness.search import space as space_mod
from harness.search import summary as summary_mod

DEFAULT_GAMMA = TRIAL_FIELDS["focal_gamma"].default


def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# --- one trial: unused fields reset before hashing ---------------------------------------------------------


def test_every_loss_parameter_is_conditional_on_its_loss():
    for loss, params in LOSS_PARAMS.items():
        for name in params:
            assert CONDITIONS[name].on == "loss" and CONDITIONS[name].test(loss)
            assert not any(CONDITIONS[name].test(other) for other in LOSS_PARAMS if name not in LOSS_PARAMS[other])


def test_unused_fields_reset_so_equal_trainings_share_a_key():
    bce = Trial(loss="bce", focal_gamma=3.0, focal_alpha=0.5, asl_clip=0.2)
    assert bce.key != Trial(loss="bce").key  # as written: the old, duplicate key
    assert bce.canonical() == Trial(loss="bce") and bce.canonical().key == Trial(loss="bce").key
    focal = Trial(loss="focal", focal_gamma=3.0, asl_clip=0.2)
    assert focal.canonical() == Trial(loss="focal", focal_gamma=3.0)  # its own parameter stays, asl's goes
    asl = Trial(loss="asl", focal_gamma=3.0, asl_clip=0.2)
    assert asl.canonical() == Trial(loss="asl", asl_clip=0.2)
    # The test list is shrunk only with a subset: with every patient kept, subset_test does nothing.
    assert Trial(subset_test=True).canonical() == Trial()
    assert Trial(subset_test=True, subset_fraction=0.1).canonical().subset_test is True
    assert inactive({"loss": "weighted_bce", "subset_fraction": 0.5}) == [
        *(f for params in LOSS_PARAMS.values() for f in params),
        "uncertain",  # NIH labels nothing uncertain
    ]
    # Only CheXpert's and MIMIC's labels can be uncertain: elsewhere the policy is held at its default.
    assert Trial(uncertain="ones").canonical() == Trial()
    assert Trial(dataset="chexpert", uncertain="ones").canonical().uncertain == "ones"
    assert Trial(dataset="synthetic-mimic", uncertain="zeros").canonical().uncertain == "zeros"
    assert Trial(dataset="padchest", uncertain="zeros").canonical().uncertain == "mask"


def test_user_written_trials_are_canonical():
    t = trial_from_dict({"loss": "bce", "focal_gamma": "4", "focal_alpha": 0.1})
    assert (t.focal_gamma, t.focal_alpha) == (DEFAULT_GAMMA, TRIAL_FIELDS["focal_alpha"].default)
    assert trial_from_dict({"loss": "focal", "focal_gamma": "4"}).focal_gamma == 4.0


def test_keys_of_trials_already_at_their_defaults_do_not_move():
    assert Trial().canonical().key == "6094758837cb"
    assert Trial(arch="inception_v3", pretrained=True, loss="focal", freeze=3, seed=2).canonical().key == "08afd3377191"
    grids = [p for p in builtin_grids().values() if "space" not in read_yaml(p)]  # search.yaml is no grid
    assert len(grids) >= 3
    for path in grids:
        for profile in (None, "smoke"):
            for t in load_grid(path, profile=profile).trials:
                assert Trial(**t.to_dict()).canonical() == t  # nothing reset: every stored key is where it was


# --- grids: cells that differ only in unused fields are one trial, with a note --------------------------------

LOSS_GRID = """
name: g
base: {dataset: synthetic, arch: alexnet, epochs: 1}
axes:
  loss: [bce, focal]
  focal_gamma: [1, 2]
"""


def test_grid_collapses_cells_that_differ_only_in_unused_fields(tmp_path):
    g = load_grid(write(tmp_path, LOSS_GRID))
    assert [(t.loss, t.focal_gamma) for t in g.trials] == [("bce", DEFAULT_GAMMA), ("focal", 1.0), ("focal", 2.0)]
    assert len({t.key for t in g.trials}) == 3 and g.trials[0].key == Trial(**g.trials[0].to_dict()).key
    assert g.trials[0] == Trial(dataset="synthetic", arch="alexnet", epochs=1)
    (note,) = g.notes
    assert "1 cell(s) collapsed" in note and "focal_gamma is used only when loss is focal" in note
    assert "\n" not in note and str(tmp_path) in note
    seeded = load_grid(write(tmp_path, LOSS_GRID + "seeds: [0, 1]\n"))
    assert len(seeded.trials) == 6 and "1 cell(s) collapsed" in seeded.notes[0]  # a cell, not one per seed


def test_grid_without_unused_fields_has_no_note_and_true_duplicates_are_still_refused(tmp_path):
    assert load_grid(write(tmp_path, LOSS_GRID.replace("focal_gamma: [1, 2]", "lr: [1.0e-3, 1.0e-4]"))).notes == ()
    with pytest.raises(ConfigError, match="duplicate trial"):
        load_grid(write(tmp_path, LOSS_GRID.replace("[1, 2]", "[1, 1]")))


def test_set_of_an_unused_field_leaves_the_trials_that_ignore_it_alone(tmp_path):
    g = load_grid(write(tmp_path, LOSS_GRID.replace("  focal_gamma: [1, 2]\n", "")), overrides=["focal_gamma=3"])
    assert {t.loss: t.focal_gamma for t in g.trials} == {"bce": DEFAULT_GAMMA, "focal": 3.0}


def test_dry_run_prints_the_collapse_note(tmp_path, capsys):
    assert cli.main(["run", str(write(tmp_path, LOSS_GRID)), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "# g: 3 trials" in out and "harness: note: " in err and "1 cell(s) collapsed" in err


# --- searches: a loss's parameters are drawn only under it ----------------------------------------------------

SPACE = """
name: s
base: {dataset: synthetic, arch: alexnet, image_size: 64, epochs: 3}
space:
  focal_gamma: {type: float, low: 0.5, high: 4.0}   # written before loss: drawn after it all the same
  lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
  loss: {type: categorical, choices: [bce, focal]}
  focal_alpha: {type: float, low: 0.0, high: 1.0}
"""


def test_define_by_run_draws_loss_parameters_only_under_their_loss(tmp_path):
    s = search.load_search(write(tmp_path, SPACE, "s.yaml"))
    assert [p.field for p in space_mod.order(s.space)] == ["lr", "loss", "focal_gamma", "focal_alpha"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(16):
        trial = study.ask()
        points.append(space_mod.sample(trial, space=s.space, base=s.base.to_dict()))
        assert points[-1] == trial.params
    assert {p["loss"] for p in points} == {"bce", "focal"}
    for p in points:
        has = {"focal_gamma", "focal_alpha"} & set(p)
        assert has == (set() if p["loss"] == "bce" else {"focal_gamma", "focal_alpha"}), p
    bce = next(p for p in points if p["loss"] == "bce")
    assert s.trial(bce).key == s.base.replace(lr=bce["lr"]).key


def test_plan_says_when_a_field_is_drawn(tmp_path):
    lines = search.load_search(write(tmp_path, SPACE, "s.yaml")).describe()
    assert "  focal_gamma: float in [0.5, 4] (drawn only when loss is focal)" in lines
    assert "  lr: float in [1e-05, 0.001] (log)" in lines


@pytest.mark.parametrize(
    "change, message",
    [
        (("  loss: {type: categorical, choices: [bce, focal]}\n", ""), "but base sets loss='bce'"),
        (("[bce, focal]", "[bce, asl]"), "but space.loss never gives that"),
    ],
)
def test_searching_a_field_no_point_uses_is_refused(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        search.load_search(write(tmp_path, SPACE.replace(*change), "s.yaml"))
    assert f"space.focal_gamma is used only when loss is focal, {message}" in str(err.value)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_a_profile_that_pins_the_loss_takes_its_parameters_out_of_the_space(tmp_path):
    s = search.load_search(write(tmp_path, SPACE + "profiles: {bce: {loss: bce}}\n", "s.yaml"), profile="bce")
    assert list(s.space) == ["lr"]


def test_importance_copes_with_parameters_only_some_trials_drew(tmp_path):
    s = search.load_search(write(tmp_path, SPACE, "s.yaml"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(12):
        trial = study.ask()
        params = space_mod.sample(trial, space=s.space, base=s.base.to_dict())
        study.tell(trial, 0.5 + (0.2 if params["loss"] == "focal" else 0.0) + 0.001 * i)
    ranked, why = summary_mod.importances(study)
    assert why is None and {"lr", "loss"} <= set(ranked) <= set(s.space)
