"""Fixtures every layer shares: the tiny hand-written NIH tree, the embedded dataset's small trees, and the default
deselection of benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import write_nih_tree


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker has a core: torch's default of one thread per core in every worker would
    # have them take each other's cores, and the suite is CPU-bound.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def nih_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny NIH tree (35 images on disk of 36 listed, 10 patients); copy it before changing it."""
    return write_nih_tree(tmp_path_factory.mktemp("nih"))


@pytest.fixture
def fresh_nih_tree(tmp_path: Path) -> Path:
    """A private copy of the tiny tree that a test may modify."""
    return write_nih_tree(tmp_path / "nih")


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded dataset at 240 films of 64 px (read-only): enough for AlexNet grids of a few epochs."""
    from harness.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth") / "nih", n=240, size=64, seed=3, progress=False)


@pytest.fixture(scope="session")
def small_synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded dataset at 120 films of 64 px (read-only), for single trials and searches."""
    from harness.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth_small") / "nih", n=120, size=64, seed=1, progress=False)


# The longest files first: xdist hands out files in collection order, and one of these started last would
# leave the other worker idle while it runs.
LONGEST_FIRST = ("integration/test_faults.py", "integration/test_grid_run.py", "integration/test_search_runs.py")


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: within a file, and for every other file, the collected order stays
    # Benchmarks run only when asked for by marker (`make bench` passes -m bench).
    if "bench" in (config.getoption("markexpr", "") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("bench") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("bench")])
        items[:] = keep
