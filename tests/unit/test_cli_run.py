"""`harness run`: a dry run checks exactly what a run checks, `--seeds`, and `--device` (here and in every command that takes it)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from harness import cli

PAPER = "grids/paper.yaml"


def grid_file(tmp_path, axes: str) -> str:
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(f"axes: {axes}\n"))
    return str(p)


BAD = [
    ([PAPER, "--set", "arch=vit"], "unknown arch 'vit'"),
    ([PAPER, "--set", "loss=focall"], "unknown loss 'focall' (did you mean 'focal'?)"),
    ([PAPER, "--set", "optimizer=adamm"], "unknown optimizer 'adamm'"),
    ([PAPER, "--set", "freeze=6"], "freeze=6 is deeper than alexnet's 5 stages"),
    ([PAPER, "--set", "image_size=40"], "image_size=40 is below alexnet's minimum"),
    ([PAPER, "--set", "init=imagenett"], "--set init: unknown group 'imagenett' of axis init"),
    ([PAPER, "--set", "lr=fast"], "--set lr: lr='fast' is not a valid float"),
    ([PAPER, "--seeds", "0"], "--seeds '0': expected a whole number >= 1"),
    ([PAPER, "--profile", "smok"], "unknown profile 'smok'"),
    ([PAPER, "--gpus-per-trial", "lots"], "--gpus-per-trial 'lots'"),
    # grids written with grouped axes: the names, depths and sizes a group sets are checked too
    (["{tmp}", "{arch: [alexnet, resnet152], init: {s: {freeze: 0}, i: {pretrained: true, freeze: 7}}}"], "freeze=7"),
    (["{tmp}", "{init: {a: {arch: alexnet}, b: {arch: vgg16}}}"], "unknown arch 'vgg16'"),
    (["{tmp}", "{init: {a: {loss: bce}, b: {loss: focall}}}"], "unknown loss 'focall'"),
    (["{tmp}", "{init: {a: {arch: inception_v3, image_size: 64}}}"], "image_size=64 is below inception_v3's"),
    (["{tmp}", "{arch: [alexnet], init: {a: {arch: vgg16}}}"], "axes.init.a sets arch, which axis 'arch' also sets"),
    (["{tmp}", "{init: {a: {pretrained: true, freez: 2}}}"], "axes.init.a.freez: unknown key 'freez'"),
]


@pytest.fixture
def no_training(monkeypatch):
    """A real run that got past validation would read data next: stop it there."""
    from harness import prepare

    def reached(*args, **kwargs):
        raise AssertionError("validation passed: the run went on to the data")

    monkeypatch.setattr(prepare, "resolve_dataset", reached)


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_dry_run_refuses_what_a_run_refuses(tmp_path, capsys, no_training, argv, message):
    if argv[0] == "{tmp}":
        argv = [grid_file(tmp_path, argv[1])]
    assert cli.main(["run", *argv, "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert cli.main(["run", *argv, "--results", str(tmp_path / "r")]) == 2
    real = capsys.readouterr()
    assert dry.err == real.err and message in dry.err
    assert dry.err.startswith("harness: error: ") and dry.err.strip().count("\n") == 0
    assert dry.out == real.out == ""
    assert not (tmp_path / "r").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_paper_dry_run_freezes_early_layers_of_pretrained_trials(capsys):
    assert cli.main(["run", PAPER, "--dry-run"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("# paper: 12 trials (profile: none; varied: arch, pretrained, loss, freeze; data: ")
    assert len(lines) == 12
    for line in lines:
        pretrained = "/pretrained/" in line
        assert ("/freeze2/" in line) == pretrained and ("/freeze0/" in line) == (not pretrained)
        assert line.endswith("init=imagenet" if pretrained else "init=scratch")


def test_seeds_option_runs_every_cell_with_seeds_0_to_n(capsys):
    assert cli.main(["run", PAPER, "--seeds", "3", "--dry-run"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.startswith("# paper: 36 trials") and "seed" in header
    assert {line.split("/seed")[1].split()[0] for line in lines} == {"0", "1", "2"}


def test_dry_run_shows_varied_fields_the_label_leaves_out(tmp_path, capsys):
    p = tmp_path / "lr.yaml"
    p.write_text("axes: {lr: [1.0e-3, 1.0e-4]}\n")
    assert cli.main(["run", str(p), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[-1] for line in lines] == ["lr=0.001", "lr=0.0001"]


def test_missing_data_root_is_one_clear_line_before_anything_starts(tmp_path, capsys):
    argv = ["run", PAPER, "--data-root", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Data_Entry_2017.csv" in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


NO_GPU = "--device cuda: no CUDA device here (torch.cuda.is_available() is False); valid: auto, cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["run", PAPER, "--dry-run"],
        ["run", PAPER],
        ["search", "search", "--dry-run"],
        ["cam", "results/paper/KEY"],
        ["bench", "loader"],
        ["bench", "pack", "--arch", "resnet50"],
    ],
    ids=" ".join,
)
def test_a_device_this_machine_lacks_is_refused_in_one_line_before_anything_starts(tmp_path, capsys, argv):
    assert cli.main([*argv, "--results", str(tmp_path), "--device", "cuda"]) == 2
    out, err = capsys.readouterr()
    assert err == f"harness: error: {NO_GPU}\n" and out == ""
    assert not any(tmp_path.iterdir())


def test_a_device_that_is_no_device_is_refused(capsys):
    assert cli.main(["run", PAPER, "--dry-run", "--device", "tpu"]) == 2
    assert capsys.readouterr().err.startswith(
        "harness: error: --device tpu: not a device a trial can run on; valid: auto,"
    )


def test_cuda_passes_the_check_where_there_is_a_gpu_and_a_clusters_nodes_are_not_judged_from_here(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["run", PAPER, "--dry-run", "--device", "cuda", "--address", "ray://head:10001"]) == 0
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["run", PAPER, "--dry-run", "--device", "cuda"]) == 0
    assert "--device" not in capsys.readouterr().err


def test_a_results_folder_that_cannot_be_used_is_refused_before_any_data_is_prepared(tmp_path, capsys, monkeypatch):
    """A run another run holds, or a --results path under a file: one line, exit 2, in a dry run as in a run,
    before the data is resolved (which reads the dataset, or renders the embedded one)."""
    import fcntl

    from harness import prepare
    from harness.store import LOCK_FILE

    def reached(*args, **kwargs):
        raise AssertionError("the run went on to the data")

    monkeypatch.setattr(prepare, "resolve", reached)
    monkeypatch.setattr(prepare, "resolve_dataset", reached)
    grid = ["paper", "--profile", "smoke"]

    (tmp_path / "file").write_text("not a folder")
    for dry in (["--dry-run"], []):
        assert cli.main(["run", *grid, "--results", str(tmp_path / "file" / "results"), *dry]) == 2
        err = capsys.readouterr().err
        assert err.startswith("harness: error: results directory ") and "is not a directory" in err
        assert err.strip().count("\n") == 0

    held = tmp_path / "results" / "paper"
    held.mkdir(parents=True)
    with open(held / LOCK_FILE, "a+") as fh:  # another run's lock, as Store.lock takes it
        fh.write("pid 4242 on node-7")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for dry in (["--dry-run"], []):
            assert cli.main(["run", *grid, "--results", str(tmp_path / "results"), *dry]) == 2
            err = capsys.readouterr().err
            assert "is in use by another run (pid 4242 on node-7)" in err and err.strip().count("\n") == 0
    with pytest.raises(AssertionError, match="went on to the data"):  # the lock released: on to the data
        cli.main(["run", *grid, "--results", str(tmp_path / "results"), "--dry-run"])
