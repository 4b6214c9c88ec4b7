"""A grid of 1,000 trials: expansion (parse, validate, hash) and a whole dry run, registry checks included."""

from __future__ import annotations

import textwrap

import pytest

from harness import cli
from harness.grid import load_grid

pytestmark = pytest.mark.bench

# 5 archs x 2 inits (a grouped axis) x 4 losses x 5 freeze depths x 5 seeds.
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


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "thousand.yaml"
    path.write_text(textwrap.dedent(THOUSAND))
    return path


def test_bench_expand_1000_trials(benchmark, thousand):
    grid = benchmark.pedantic(load_grid, args=(thousand,), rounds=5, iterations=1)
    assert len({t.key for t in grid.trials}) == 1000


def test_bench_dry_run_1000_trials(benchmark, thousand, capsys):
    import harness.train  # noqa: F401  (imported before the clock starts: the benchmark times the run, not torch)

    code = benchmark.pedantic(cli.main, args=(["run", str(thousand), "--dry-run"],), rounds=5, iterations=1)
    assert code == 0 and capsys.readouterr().out.count("\n") == 5 * 1001
