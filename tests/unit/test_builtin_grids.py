"""Built-in grids: shipped inside the package, found by name from any folder; a file path always wins."""

from __future__ import annotations

import pytest

from harness import cli
from harness.config import ConfigError
from harness.gridfile import load_grid
from harness.gridinput import BUILTIN_DIR, builtin_grids, locate


def test_the_grids_ship_inside_the_package():
    assert {"paper", "ablation", "search"} <= set(builtin_grids())
    assert all(p.parent == BUILTIN_DIR and p.is_relative_to(BUILTIN_DIR.parent) for p in builtin_grids().values())


@pytest.mark.parametrize("name", ["paper", "paper.yaml", "grids/paper.yaml"])
def test_a_builtin_name_resolves_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate(name) == BUILTIN_DIR / "paper.yaml"
    grid = load_grid(name, profile="smoke")
    assert grid.name == "paper" and len(grid.trials) == 12


@pytest.mark.parametrize("name", ["paper", "paper.yaml", "grids/paper.yaml"])
def test_a_file_path_wins_over_a_builtin_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text("name: mine\naxes: {arch: [alexnet]}\n")
    grid = load_grid(name)
    assert grid.name == "mine" and [t.arch for t in grid.trials] == ["alexnet"]


def test_an_unknown_name_is_one_line_with_the_valid_names_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^papr: no such file or built-in grid; built-in: ablation, paper, precise_bn, search"
    ):
        locate("papr")
    assert cli.main(["run", "papr", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built-in: ablation, paper, precise_bn, search" in err
    with pytest.raises(ConfigError, match=r"^elsewhere/paper.yaml: no such file$"):  # a path is not a name
        locate("elsewhere/paper.yaml")


def test_grids_lists_each_with_its_first_comment_line(capsys):
    assert cli.main(["grids"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines if line.split()[0] in builtin_grids()}
    assert set(by_name) == set(builtin_grids())
    assert "python -m harness run grids/paper.yaml" in by_name["paper"]


def test_grids_show_prints_one_to_copy(capsys, tmp_path):
    assert cli.main(["grids", "show", "ablation"]) == 0
    text = capsys.readouterr().out
    assert text == (BUILTIN_DIR / "ablation.yaml").read_text()
    copy = tmp_path / "mine.yaml"
    copy.write_text(text)
    assert load_grid(copy).name == "ablation"


@pytest.mark.parametrize("argv", [["grids", "show", "papr"], ["grids", "show"]])
def test_grids_show_unknown_or_missing_name_exits_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built-in: ablation, paper, precise_bn, search" in err
