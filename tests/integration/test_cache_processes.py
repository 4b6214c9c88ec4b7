"""The cache across processes: two processes asking for one cache build it once."""

from __future__ import annotations

import multiprocessing

import numpy as np

from harness.data import cache, nih


def _build_in_child(root: str, cache_dir: str, queue) -> None:
    import warnings

    warnings.simplefilter("ignore")
    data = nih.load(root)
    built = cache.build(data, np.arange(len(data.table)), size=24, cache_dir=cache_dir, workers=1, progress=False)
    queue.put(built.reused)


def test_two_processes_build_once(nih_tree, tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_build_in_child, args=(str(nih_tree), str(tmp_path), queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    assert sorted([queue.get(timeout=5), queue.get(timeout=5)]) == [False, True]  # one built, one reused
    assert len(list(tmp_path.glob("*.npy"))) == 1 and not list(tmp_path.glob(".*.tmp"))
