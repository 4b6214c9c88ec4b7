"""Grid expansion, validation messages and stable trial keys."""

import subprocess
import sys
import textwrap

import pytest

from harness.config import ConfigError, Trial, trial_from_dict
from harness.grid import load_grid, parse_set


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


def test_keys_are_stable_across_processes():
    t = Trial(arch="alexnet", lr=3e-4, seed=7)
    code = "from harness.config import Trial; print(Trial(arch='alexnet', lr=3e-4, seed=7).key)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == t.key
    assert Trial(arch="alexnet", lr=3e-4, seed=8).key != t.key


def test_repo_grids_expand():
    for path, n in [("grids/paper.yaml", 12), ("grids/ablation.yaml", 18)]:
        g = load_grid(path)
        assert len(g.trials) == n
    smoke = load_grid("grids/paper.yaml", profile="smoke")
    assert {t.epochs for t in smoke.trials} == {2}


def test_set_collapses_the_axis_it_names(tmp_path):
    p = write(tmp_path, "axes: {arch: [alexnet, resnet50], loss: [bce, focal]}\n")
    g = load_grid(p, overrides=["loss=asl"])
    assert sorted((t.arch, t.loss) for t in g.trials) == [("alexnet", "asl"), ("resnet50", "asl")]
