"""Grid expansion, validation messages and stable trial keys."""

import re
import textwrap

import pytest

from harness.config import ConfigError, Trial, trial_from_dict
from harness.gridfile import load_grid
from harness.gridinput import parse_set


def write(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_cartesian_axes_seeds_and_profile(tmp_path):
    g = load_grid(
        write(
            tmp_path,
            """
        name: g
        base: {epochs: 20, lr: 1e-4}
        axes: {arch: [alexnet, resnet50], pretrained: [false, true], loss: [bce, focal]}
        seeds: [0, 1]
        profiles: {smoke: {epochs: 2, image_size: 64}}
    """,
        ),
        profile="smoke",
    )
    assert len(g.trials) == 2 * 2 * 2 * 2
    assert {t.epochs for t in g.trials} == {2} and {t.image_size for t in g.trials} == {64}
    assert all(t.lr == 1e-4 and isinstance(t.lr, float) for t in g.trials)  # YAML's 1e-4 is a string
    assert set(g.axes) == {"arch", "pretrained", "loss", "seed"}
    assert len({t.key for t in g.trials}) == len(g.trials)


def test_include_exclude_and_set(tmp_path):
    p = write(
        tmp_path,
        """
        axes: {arch: [alexnet, resnet50], loss: [bce, focal]}
        include: [{arch: densenet121, loss: asl}]
        exclude: [{arch: alexnet, loss: focal}]
    """,
    )
    g = load_grid(p, overrides=["epochs=3"])
    cells = {(t.arch, t.loss) for t in g.trials}
    assert cells == {("alexnet", "bce"), ("resnet50", "bce"), ("resnet50", "focal"), ("densenet121", "asl")}
    assert {t.epochs for t in g.trials} == {3}
    assert g.name == "g"  # defaults to the file name


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: {epochs: 2, lerning_rate: 0.1}", "unknown key 'lerning_rate'"),
        ("base: {lr: 1e-4x}", "lr='1e-4x' is not a valid float"),
        ("base: {epochs: two}", "epochs='two' is not a valid int"),
        ("base: {epochs: 2.0}", "must be written as an integer"),
        ("base: {epochs: -1}", "out of range"),
        ("base: {subset_fraction: 0}", "out of range; valid: a number in (0, 1]"),
        ("base: {subset_fraction: 1.5}", "out of range"),
        ("base: {pretrained: yes please}", "not a valid bool"),
        ("axes: {arch: []}", "axes.arch is empty"),
        ("axes: {arch: alexnet}", "expected a list"),
        ("axes: {arch: [alexnet, alexnet]}", "duplicate trial"),
        ("axes: {loss: [bce]}\nexclude: [{loss: bce}]", "the grid is empty"),
        ("axis: {loss: [bce]}", "unknown key 'axis' (did you mean 'axes'?)"),
        ("base: [1, 2]", "expected a mapping"),
        ("seeds: []", "seeds"),
        ("base: {epochs: 2\n", "YAML syntax error"),
    ],
)
def test_bad_grids_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_grid(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert str(tmp_path) in str(err.value) or "--set" in str(err.value)


def test_unknown_key_hint():
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        trial_from_dict({"epoch": 3})


def test_set_parses_yaml_scalars():
    assert parse_set(["lr=1e-3", "pretrained=true", "arch=resnet50", "epochs=4"]) == {
        "lr": 1e-3,
        "pretrained": True,
        "arch": "resnet50",
        "epochs": 4,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["epochs"])


def test_yaml_is_loaded_safely(tmp_path):
    p = write(tmp_path, "base: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_grid(p)


def test_repo_grids_expand():
    for path, n in [("grids/paper.yaml", 12), ("grids/ablation.yaml", 18)]:
        g = load_grid(path)
        assert len(g.trials) == n
    smoke = load_grid("grids/paper.yaml", profile="smoke")
    # The costly archs train briefly so the demo fits a CPU; every cell keeps the whole test split.
    assert {t.arch: t.epochs for t in smoke.trials} == {"alexnet": 4, "resnet152": 1, "inception_v3": 1}
    # A size of its own per arch: every field that varies with arch stays part of the arch axis.
    assert {t.arch: t.image_size for t in smoke.trials} == {"alexnet": 80, "resnet152": 64, "inception_v3": 75}
    assert not any(t.subset_test for t in smoke.trials)


def test_set_collapses_the_axis_it_names(tmp_path):
    p = write(tmp_path, "axes: {arch: [alexnet, resnet50], loss: [bce, focal]}\n")
    g = load_grid(p, overrides=["loss=asl"])
    assert sorted((t.arch, t.loss) for t in g.trials) == [("alexnet", "asl"), ("resnet50", "asl")]


GROUPED = """
    base: {epochs: 2}
    axes:
      arch: [alexnet, resnet50]
      init:
        scratch:  {pretrained: false, freeze: 0}
        imagenet: {pretrained: true, freeze: 2}
      loss: [bce, focal]
"""


def test_grouped_axis_sets_its_fields_together(tmp_path):
    g = load_grid(write(tmp_path, GROUPED))
    cells = [(t.arch, t.pretrained, t.freeze, t.loss) for t in g.trials]
    assert cells == [
        (arch, pretrained, freeze, loss)
        for arch in ("alexnet", "resnet50")
        for pretrained, freeze in ((False, 0), (True, 2))
        for loss in ("bce", "focal")
    ]
    assert g.axes == ("arch", "pretrained", "loss", "freeze")  # the fields a group varies, not its name
    assert [c["init"] for c in g.choices] == ["scratch", "scratch", "imagenet", "imagenet"] * 2


def test_grouped_and_plain_grids_share_keys(tmp_path):
    grouped = load_grid(write(tmp_path, GROUPED, "grouped.yaml"))
    plain = load_grid(
        write(
            tmp_path,
            """
        base: {epochs: 2}
        axes: {arch: [alexnet, resnet50], pretrained: [false, true], freeze: [0, 2], loss: [bce, focal]}
        exclude: [{pretrained: false, freeze: 2}, {pretrained: true, freeze: 0}]
    """,
            "plain.yaml",
        )
    )
    assert [t.key for t in grouped.trials] == [t.key for t in plain.trials]
    assert grouped.trials == plain.trials and grouped.axes == plain.axes
    # and a trial written out field by field has the same key
    assert Trial(arch="alexnet", pretrained=True, freeze=2, loss="focal", epochs=2).key in {
        t.key for t in grouped.trials
    }


def test_groups_in_include_exclude_and_set(tmp_path):
    p = write(
        tmp_path,
        GROUPED
        + """
    include: [{arch: densenet121, init: imagenet, loss: asl}]
    exclude: [{init: scratch, arch: alexnet}, {pretrained: true, arch: resnet50, loss: focal}]
""",
    )
    g = load_grid(p)
    cells = {(t.arch, t.pretrained, t.freeze, t.loss) for t in g.trials}
    assert cells == {
        ("alexnet", True, 2, "bce"),
        ("alexnet", True, 2, "focal"),
        ("resnet50", False, 0, "bce"),
        ("resnet50", False, 0, "focal"),
        ("resnet50", True, 2, "bce"),
        ("densenet121", True, 2, "asl"),
    }
    picked = load_grid(p, overrides=["init=scratch"])  # --set AXIS=GROUP keeps one group
    assert {(t.pretrained, t.freeze) for t in picked.trials} == {(False, 0), (True, 2)}  # the include keeps its own
    assert {t.arch for t in picked.trials if not t.pretrained} == {"resnet50"}
    # --set of a field a group sets wins over the group; cells it makes equal are kept once
    frozen = load_grid(p, overrides=["freeze=1"])
    assert {t.freeze for t in frozen.trials} == {1}


def test_exclude_matches_a_field_left_at_its_default(tmp_path):
    g = load_grid(write(tmp_path, "axes: {arch: [alexnet, resnet50]}\nexclude: [{arch: alexnet, freeze: 0}]\n"))
    assert [t.arch for t in g.trials] == ["resnet50"]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "axes: {init: {imagenet: {pretrained: true, freez: 2}}}",
            "axes.init.imagenet.freez: unknown key 'freez' (did you mean 'freeze'?)",
        ),
        ("axes: {init: {a: {freeze: two}}}", "axes.init.a.freeze: freeze='two' is not a valid int"),
        ("axes: {init: {a: {freeze: -1}}}", "axes.init.a.freeze: freeze=-1 is out of range"),
        ("axes: {init: {a: {lr: 1e-4x}}}", "axes.init.a.lr: lr='1e-4x' is not a valid float"),
        ("axes: {init: {a: [1, 2]}}", "axes.init.a: expected a mapping"),
        ("axes: {init: {}}", "axes.init is empty"),
        ("axes: {init: {1: {freeze: 1}}}", "axes.init: group name 1 must be text"),
        ("axes: {init: {a: {seed: 1}}}", "axes.init.a.seed: list seeds under 'seeds:'"),
        ("axes: {freeze: {a: {pretrained: true}}}", "axes.freeze: the axis of a field is a list of its values"),
        ("axes: {arhc: [alexnet]}", "axes.arhc: unknown key 'arhc' (did you mean 'arch'?)"),
        (
            "axes: {freeze: [0, 2], init: {a: {pretrained: true, freeze: 1}}}",
            "axes.init.a sets freeze, which axis 'freeze' also sets",
        ),
        (
            "axes: {init: {a: {freeze: 1}}, depth: {b: {freeze: 2}}}",
            "axes.depth.b sets freeze, which axis 'init' also sets",
        ),
        (
            "axes: {init: {scratch: {freeze: 0}}}\nexclude: [{init: scratc}]",
            "exclude[0].init: unknown group 'scratc' of axis init (did you mean 'scratch'?); valid: scratch",
        ),
        (
            "axes: {init: {imagenet: {pretrained: true, freeze: 2}}}\ninclude: [{init: imagenet, freeze: 4}]",
            "include[0]: freeze is set both by init=imagenet and directly",
        ),
        ("axes: {init: {a: {freeze: 1}}}\ninclude: [{intt: a}]", "unknown key 'intt' (did you mean 'init'?)"),
        ("include: {arch: alexnet}", "include: expected a list of cells"),
    ],
)
def test_bad_groups_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_grid(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_set_of_an_unknown_group_names_the_valid_ones(tmp_path):
    p = write(tmp_path, GROUPED)
    with pytest.raises(ConfigError, match=r"--set init: unknown group 'imagenett' of axis init \(did you mean"):
        load_grid(p, overrides=["init=imagenett"])
    with pytest.raises(ConfigError, match=r"--set intt: unknown key 'intt' \(did you mean 'init'\?\)"):
        load_grid(p, overrides=["intt=imagenet"])


def test_seeds_from_the_command_line_and_profiles(tmp_path):
    p = write(tmp_path, "axes: {loss: [bce, focal]}\nseeds: [5]\nprofiles: {three: {seeds: [0, 1, 2], epochs: 1}}\n")
    assert sorted({t.seed for t in load_grid(p).trials}) == [5]
    assert sorted({t.seed for t in load_grid(p, seeds=4).trials}) == [0, 1, 2, 3]
    assert len(load_grid(p, seeds="4").trials) == 8
    g = load_grid(p, profile="three")
    assert sorted({t.seed for t in g.trials}) == [0, 1, 2] and {t.epochs for t in g.trials} == {1}
    assert sorted({t.seed for t in load_grid(p, profile="three", seeds=2).trials}) == [0, 1]  # --seeds wins


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "two", "", "3x"])
def test_bad_seed_counts_are_one_clear_line(tmp_path, bad):
    p = write(tmp_path, "axes: {loss: [bce, focal]}\n")
    with pytest.raises(ConfigError) as err:
        load_grid(p, seeds=bad)
    assert str(err.value).startswith(f"--seeds {bad!r}: expected a whole number >= 1") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("profiles: {p: {seeds: 3}}", "profiles.p.seeds: expected a non-empty list of integers"),
        ("profiles: {p: {seeds: [a]}}", "profiles.p.seeds[0]: seed='a' is not a valid int"),
        ("profiles: {p: {seds: [1]}}", "did you mean 'seed'?"),
    ],
)
def test_bad_profile_seeds(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid(write(tmp_path, text))


def test_paper_grid_freezes_early_layers_of_pretrained_trials_only():
    g = load_grid("grids/paper.yaml")
    assert {(t.pretrained, t.freeze) for t in g.trials} == {(False, 0), (True, 2)}
    assert len(g.trials) == 12 and {t.arch for t in g.trials} == {"alexnet", "resnet152", "inception_v3"}


THOUSAND = """
    name: thousand
    base: {epochs: 1}
    axes:
      arch: [alexnet, resnet50, resnet152, densenet121, efficientnet_b0]
      init:
        scratch:  {pretrained: false, lr: 1.0e-3}
        imagenet: {pretrained: true, lr: 1.0e-4}
      loss: [bce, focal, weighted_bce, asl]
      freeze: [0, 1, 2, 3, 4]
    seeds: [0, 1, 2, 3, 4]
"""


def test_a_thousand_trial_grid_expands_to_exactly_its_keys(tmp_path):
    g = load_grid(write(tmp_path, THOUSAND))
    expected = {
        Trial(arch=arch, pretrained=pre, lr=lr, loss=loss, freeze=freeze, seed=seed, epochs=1).key
        for arch in ("alexnet", "resnet50", "resnet152", "densenet121", "efficientnet_b0")
        for pre, lr in ((False, 1e-3), (True, 1e-4))
        for loss in ("bce", "focal", "weighted_bce", "asl")
        for freeze in range(5)
        for seed in range(5)
    }
    assert len(expected) == len(g.trials) == 1000
    assert {t.key for t in g.trials} == expected


def test_a_group_named_by_a_list_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match=r"exclude\[0\]\.init: unknown group \['a'\] of axis init"):
        load_grid(write(tmp_path, "axes: {init: {a: {freeze: 1}, b: {freeze: 2}}}\nexclude: [{init: [a]}]\n"))


RULES = """
    name: g
    axes:
      arch: [alexnet, resnet50]
      init: {scratch: {pretrained: false}, imagenet: {pretrained: true, freeze: 2}}
    profiles:
      quick:
        epochs: 4
        when:
          - {match: {arch: resnet50}, set: {epochs: 1, batch_size: 8}}
          - {match: {init: imagenet, arch: resnet50}, set: {lr: 1.0e-5}}
"""


def test_profile_rules_override_only_the_cells_they_match(tmp_path):
    path = write(tmp_path, RULES)
    trials = {(t.arch, t.pretrained): t for t in load_grid(path, profile="quick").trials}
    assert {k: (t.epochs, t.batch_size, t.lr) for k, t in trials.items()} == {
        ("alexnet", False): (4, 64, 1e-4),
        ("alexnet", True): (4, 64, 1e-4),
        ("resnet50", False): (1, 8, 1e-4),
        ("resnet50", True): (1, 8, 1e-5),  # a group in the match; both rules apply, in order
    }
    assert all(t.epochs == 20 for t in load_grid(path).trials)  # without the profile, no rule applies
    forced = load_grid(path, profile="quick", overrides=["epochs=2"]).trials
    assert {t.epochs for t in forced} == {2}  # --set still wins over a rule


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{match: {arc: resnet50}, set: {epochs: 1}}", "did you mean 'arch'"),
        ("{match: {arch: resnet50}, set: {epoch: 1}}", "profiles.unused.when[0].set.epoch"),
        ("{match: {arch: resnet50}}", "both non-empty"),
        ("{match: {init: pretrained}, set: {epochs: 1}}", "unknown group 'pretrained' of axis init"),
        ("{match: {arch: resnet50}, set: {seed: 1}}", "list seeds under 'seeds:'"),
        ("{when: {arch: resnet50}, set: {epochs: 1}}", "when[0]"),
    ],
)
def test_bad_rules_are_one_clear_line_even_in_an_unused_profile(tmp_path, rule, message):
    text = RULES.replace("quick:", "unused:").replace(
        "- {match: {arch: resnet50}, set: {epochs: 1, batch_size: 8}}", f"- {rule}"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid(write(tmp_path, text))
