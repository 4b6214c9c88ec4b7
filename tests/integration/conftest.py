"""The integration layer's shared pieces: one local Ray for the tests that run trials in this process, and one
finished tiny grid (run once through the command line) for the tests that only read a finished grid."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import TRACKED, cli_env, harness_cmd, run_harness, write_grid

from harness.config import Runtime


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """Ray as a run starts it (harness.runner.cluster.start_ray), shared by every test that runs trials in this
    process: a private Ray costs seconds to start, and the runner joins one that is up instead of starting its own."""
    import ray

    from harness.runner.cluster import start_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        start_ray(Runtime(cache_dir=str(tmp_path_factory.mktemp("ray")), progress=False))
        yield ray
        ray.shutdown()


# Two scratch trials that finish and one pretrained trial that fails: offline there is no ImageNet file.
TINY_GRID = """
base: {dataset: nih, arch: alexnet, image_size: 64, epochs: 2, batch_size: 32, lr: 1e-3, lr_step: 1}
axes: {pretrained: [false, true], loss: [bce, focal]}
exclude: [{pretrained: true, loss: focal}]
"""


@dataclass(frozen=True)
class FinishedGrid:
    """A grid run once through `python -m harness run`: its process, its folder and how to run it again."""

    proc: object  # subprocess.CompletedProcess of the first run
    grid: Path
    dir: Path  # results/tiny: read it, never change it (copy() gives a private one)
    tree: Path
    env: dict[str, str]

    def copy(self, to: Path) -> Path:
        """A private copy of the results folder (what a test damages or reruns into); returns its grid folder."""
        shutil.copytree(self.dir, to / "tiny", symlinks=True)
        return to / "tiny"

    def command(self, results: Path) -> list[str]:
        return harness_cmd("run", self.grid, "--data-root", self.tree, "--results", results)


@pytest.fixture(scope="session")
def finished_grid(tmp_path_factory: pytest.TempPathFactory, synthetic_tree: Path) -> FinishedGrid:
    home = tmp_path_factory.mktemp("finished")
    env = cli_env(home, WANDB_MODE="offline")
    grid = write_grid(home, "tiny", TINY_GRID)
    extra = ["--tracker", ",".join(TRACKED)] if TRACKED else []
    results = home / "results"
    proc = run_harness("run", grid, "--data-root", synthetic_tree, "--results", results, *extra, env=env, timeout=900)
    return FinishedGrid(proc=proc, grid=grid, dir=results / "tiny", tree=synthetic_tree, env=env)
