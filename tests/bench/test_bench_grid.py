"""A grid of 1,000 trials: expansion (parse, validate, hash) and a whole dry run, registry checks included."""

from __future__ import annotations

import textwrap

import pytest
from unit.test_grid import THOUSAND  # 5 archs x 2 inits (a grouped axis) x 4 losses x 5 freeze depths x 5 seeds

from harness import cli
from harness.gridfile import load_grid

pytestmark = pytest.mark.bench


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
    lines = capsys.readouterr().out.count("\n")  # one header and 1,000 trials per round (one round when disabled)
    assert code == 0 and lines and lines % 1001 == 0
