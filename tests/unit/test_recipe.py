"""The recipe beside every trial (provenance.json) and the deterministic mode: keys kept, state set both ways,
ops without a deterministic kernel named instead of failing, and the recipe checked by DONE."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch._prims_common import alert_not_deterministic

from harness import recipe, store
from harness.config import KEYED_WHEN_SET, ConfigError, Trial, trial_from_dict


def test_deterministic_is_keyed_only_when_set():
    assert "deterministic" in KEYED_WHEN_SET
    assert Trial(deterministic=False).key == Trial().key == "6094758837cb"
    assert Trial(deterministic=True).key != Trial().key
    assert trial_from_dict({"deterministic": "true"}).deterministic is True
    with pytest.raises(ConfigError, match="deterministic"):
        trial_from_dict({"deterministic": 1})


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    env = os.environ.get(recipe.CUBLAS_ENV)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]
    if env is None:
        os.environ.pop(recipe.CUBLAS_ENV, None)
    else:
        os.environ[recipe.CUBLAS_ENV] = env


def test_determinism_is_set_both_ways(restore_determinism):
    recipe.apply_determinism(True)
    state = recipe.determinism(Trial(deterministic=True), [])
    assert state["algorithms"] and state["warn_only"] and state["cudnn_deterministic"]
    assert not state["cudnn_benchmark"]
    assert state["cublas_workspace_config"] == recipe.CUBLAS_WORKSPACE
    recipe.apply_determinism(False)  # the next trial in the same worker is not left deterministic
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_an_op_without_a_deterministic_kernel_is_named_not_fatal(restore_determinism, caplog):
    """torch's own alert in warn_only mode (what CUDA's adaptive pooling backward raises on a GPU)."""
    recipe.apply_determinism(True)
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with recipe.Nondeterminism() as nondet:
            alert_not_deterministic("adaptive_avg_pool2d_backward_cuda")  # the alert's words, as the kernel's
            warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    assert nondet.ops == {"adaptive_avg_pool2d_backward_cuda"}
    assert [str(w.message) for w in outer] == ["an unrelated warning"]  # passed on; the alert went to the recipe
    assert "adaptive_avg_pool2d_backward_cuda has no deterministic kernel" in caplog.text


def test_unrelated_warnings_pass_through():
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with recipe.Nondeterminism() as nondet:
            warnings.warn("kept", UserWarning, stacklevel=1)
            warnings.warn("kept", UserWarning, stacklevel=1)
    assert nondet.ops == set()
    assert [str(w.message) for w in outer] == ["kept"]  # once


def test_array_digest_is_of_the_pixels(tmp_path):
    a = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    np.save(tmp_path / "a.npy", a)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert recipe.array_sha256(mapped) == recipe.array_sha256(a.copy())
    b = a.copy()
    b[1, 3, 3] += 1
    assert recipe.array_sha256(b) != recipe.array_sha256(a)


def test_provenance_is_one_of_dones_checked_files(tmp_path):
    files = store.TrialFiles(tmp_path / "k")
    files.begin({"key": "k"})
    files.write_metrics({"auc_macro": 0.5})
    files.write_provenance({"software": {"torch": "x"}})
    files.mark_done()
    assert store.TrialFiles.PROVENANCE in files.read_done()["sha256"]
    assert files.read_provenance() == {"software": {"torch": "x"}}
    files.write_reproduced({"verdict": "identical"})  # a certificate does not change the result
    assert files.damaged() == {}
    (files.path / store.TrialFiles.PROVENANCE).write_text("{}")
    assert store.TrialFiles.PROVENANCE in files.damaged()
    assert store.TrialFiles(tmp_path / "none").read_provenance() is None
