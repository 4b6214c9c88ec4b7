"""A trial's key says what produced its result: the weights file a pretrained trial loads is part of it, and a dry
run prints the keys the run will use (the dataset it will read resolved the same way)."""

from __future__ import annotations

import pytest
import torch

from harness import cli, models, prepare
from harness.config import Runtime, Trial, file_sha256
from harness.store import Store


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def resolved(trial: Trial, tmp_path) -> Trial:
    (out,), _ = prepare.resolve([trial], Runtime(cache_dir=str(tmp_path / "cache")))
    return out


def other_file(path):
    """Another state dict under the same name: what replacing a placeholder by the published file does."""
    state = torch.load(path, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)


def test_a_pretrained_trial_is_keyed_by_the_file_it_loads(torch_home, tmp_path):
    pretrained, scratch = Trial(arch="alexnet", pretrained=True), Trial(arch="alexnet")
    missing = resolved(pretrained, tmp_path)
    assert missing.pretrained_sha256 == ""  # no file: warned about, and the trial fails when it builds
    path = models.write_placeholder("alexnet")
    first = resolved(pretrained, tmp_path)
    assert first.pretrained_sha256 == file_sha256(path) and first.key != missing.key
    other_file(path)
    second = resolved(pretrained, tmp_path)
    assert second.pretrained_sha256 == file_sha256(path) != first.pretrained_sha256
    assert second.key != first.key  # a result made from the placeholder is never taken for one from this file
    assert resolved(scratch, tmp_path).key == scratch.replace(dataset="synthetic").key  # scratch keys do not move


def test_a_rerun_after_the_file_changed_trains_again(torch_home, tmp_path):
    """A store holding the placeholder's result does not count the same settings with another file as done."""
    path = models.write_placeholder("alexnet")
    first = resolved(Trial(arch="alexnet", pretrained=True, image_size=64), tmp_path)
    st = Store(tmp_path / "results" / "g")
    files = st.files(first.key)
    files.path.mkdir(parents=True)
    files.write_trial(first.to_dict())
    files.write_metrics({"auc_macro": 0.5})
    files.mark_done()
    assert st.is_done(first.key)
    other_file(path)
    second = resolved(first.replace(pretrained_sha256=""), tmp_path)
    assert not st.is_done(second.key)
    # A trial keyed by the old file refuses to build from the new one rather than train under the wrong key.
    with pytest.raises(models.WeightsMissing, match="the file changed after the run began"):
        models.build(first)
    models.build(second)


def test_the_dry_run_prints_the_keys_the_run_will_use(torch_home, tmp_path, capsys):
    models.write_placeholder("alexnet")
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {arch: alexnet, image_size: 64, epochs: 1}\naxes: {pretrained: [false, true]}\n")
    assert cli.main(["run", str(grid), "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    keys = [line.split()[0] for line in out.splitlines() if not line.startswith("#")]
    assert "the embedded SYNTHETIC set" in out.splitlines()[0]
    from harness.gridfile import load_grid

    trials, _ = prepare.resolve(list(load_grid(grid).trials), Runtime(cache_dir=str(tmp_path / "cache")))
    assert keys == [t.key for t in trials]  # what run_grid receives: the folders it writes
    assert all(t.dataset == "synthetic" for t in trials) and trials[1].pretrained_sha256
    assert not (tmp_path / "cache").exists()  # the dry run wrote nothing
