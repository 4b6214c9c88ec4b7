"""Starting weights from a file (Trial.weights): loaded into the backbone with a new head, keyed by content,
refused in one line when unreadable or unfit, recorded in metrics.json, and NIH-trained files flagged."""

from __future__ import annotations

import hashlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from support import alexnet_state, saved

from harness import cli, models, prepare
from harness.config import ConfigError, Trial, with_weights_file
from harness.models import start

# 21 training images of the tiny tree at batch 8: two steps an epoch.
ALEXNET = Trial(dataset="nih", arch="alexnet", image_size=64, epochs=2, batch_size=8, lr=1e-3)


WRAPS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 7, "optimizer": {"lr": 0.1}},
    "model": lambda s: {"model": s, "args": "--lr 0.1"},
    "module.": lambda s: {f"module.{k}": v for k, v in s.items()},
    "both": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
}


@pytest.mark.parametrize("wrap", WRAPS)
def test_the_file_fills_every_backbone_tensor_and_the_head_is_new(tmp_path, wrap):
    state = alexnet_state()
    trial = with_weights_file(ALEXNET.replace(weights=saved(tmp_path / "w.pt", WRAPS[wrap](state))), "t")
    got = models.build(trial).state_dict()
    for key, value in state.items():
        if key.startswith("classifier.6."):  # the head: 14 findings, newly initialised
            assert got[key].shape[0] == 14
        else:
            assert torch.equal(got[key], value), key


def test_the_key_names_the_content_not_the_place(tmp_path):
    a = saved(tmp_path / "a.pt", alexnet_state(0))
    moved = tmp_path / "elsewhere" / "b.pt"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    changed = saved(tmp_path / "c.pt", alexnet_state(1))
    keyed = {p: with_weights_file(ALEXNET.replace(weights=str(p)), "t") for p in (a, moved, changed)}
    assert keyed[a].weights_sha256 == hashlib.sha256(Path(a).read_bytes()).hexdigest()
    assert keyed[a].key == keyed[moved].key, "a moved file is the same trial"
    assert keyed[a].key != keyed[changed].key, "a changed file is a new trial"
    assert keyed[a].key not in {ALEXNET.key, ALEXNET.replace(pretrained=True).key}
    assert ALEXNET.key == ALEXNET.replace(weights="").key  # unset, the field leaves every stored key alone
    assert keyed[a].label == "alexnet/weights:a.pt/bce/freeze0/sub1/seed0"
    # a relative path in a grid is made absolute: Ray workers run in other directories
    assert keyed[a].weights == str((tmp_path / "a.pt").resolve())


def test_a_file_changed_after_expansion_is_refused_at_load(tmp_path):
    path = tmp_path / "w.pt"
    trial = with_weights_file(ALEXNET.replace(weights=saved(path, alexnet_state(0))), "t")
    saved(path, alexnet_state(1))
    with pytest.raises(ConfigError, match="the file changed since the grid was expanded"):
        models.build(trial)


def test_what_is_not_a_state_dict_is_refused_in_one_line(tmp_path):
    cases = {
        "module.pt": (torchvision.models.alexnet(), "a pickled model must be saved as its state_dict()"),
        "dict.pt": ({"epoch": 3, "lr": 0.1}, "not a state dict of tensors nor one wrapped under 'state_dict'"),
        "list.pt": ([torch.zeros(1)], "holds a list, not a state dict"),
    }
    for name, (obj, message) in cases.items():
        trial = with_weights_file(ALEXNET.replace(weights=saved(tmp_path / name, obj)), "t")
        with pytest.raises(ConfigError) as err:
            models.check(trial)
        assert message in str(err.value) and "\n" not in str(err.value), name


@pytest.fixture
def no_training(monkeypatch):
    """A real run that got past validation would read data next: stop it there."""

    def reached(*args, **kwargs):
        raise AssertionError("validation passed: the run went on to the data")

    monkeypatch.setattr(prepare, "resolve_dataset", reached)


def grid(tmp_path, base: str) -> str:
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(f"base: {{arch: alexnet, image_size: 64, {base}}}\naxes: {{loss: [bce, focal]}}\n"))
    return str(p)


def refusals(tmp_path) -> list[tuple[str, list[str]]]:
    resnet = saved(tmp_path / "resnet50.pt", torchvision.models.resnet50().state_dict())
    one_channel = alexnet_state()
    one_channel["features.0.weight"] = one_channel["features.0.weight"][:, :1]
    missing = {k: v for k, v in alexnet_state().items() if not k.startswith("classifier.1.")}
    return [
        (f"weights: {tmp_path / 'absent.pt'}", ["weights=", "absent.pt", "No such file or directory"]),
        (f"weights: {tmp_path}", ["cannot read", "valid: a readable state-dict file"]),
        (
            f"weights: {resnet}",
            [
                "does not fit torchvision's alexnet at 64 px",
                "missing keys (classifier.1.bias",
                "unexpected keys",
                "the head, classifier.6, is new for 14 findings",
            ],
        ),
        (
            f"weights: {saved(tmp_path / 'grey.pt', one_channel)}",
            ["1 shape mismatches (features.0.weight (64, 1, 11, 11) in the file, (64, 3, 11, 11) in the net)"],
        ),
        (
            f"weights: {saved(tmp_path / 'cut.pt', missing)}",
            ["2 missing keys (classifier.1.bias, classifier.1.weight)"],
        ),
        (
            f"pretrained: true, weights: {saved(tmp_path / 'ok.pt', alexnet_state())}",
            ["pretrained=true and weights=", "both choose the starting weights"],
        ),
        (f"weights_sha256: {'ab' * 32}", ["weights_sha256 is set but weights is not"]),
    ]


def test_a_bad_weights_file_is_one_line_and_exit_2_in_a_dry_run_and_a_run(tmp_path, capsys, no_training):
    for base, messages in refusals(tmp_path):
        path = grid(tmp_path, base)
        assert cli.main(["run", path, "--dry-run"]) == 2, base
        dry = capsys.readouterr()
        assert cli.main(["run", path, "--results", str(tmp_path / "r")]) == 2, base
        real = capsys.readouterr()
        assert dry.err == real.err and dry.err.startswith("harness: error: ") and dry.err.count("\n") == 1, dry.err
        for message in messages:
            assert message in dry.err, (message, dry.err)
        assert dry.out == real.out == ""
    assert not (tmp_path / "r").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_dry_run_lists_the_file_by_name_beside_imagenet_and_scratch(tmp_path, capsys):
    weights = saved(tmp_path / "ssl-cxr.pt", alexnet_state())
    p = tmp_path / "init.yaml"
    p.write_text(
        "base: {arch: alexnet, image_size: 64}\n"
        f"axes: {{init: {{scratch: {{}}, imagenet: {{pretrained: true}}, cxr: {{weights: {weights}}}}}}}\n"
    )
    assert cli.main(["run", str(p), "--dry-run"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert "varied: pretrained, weights; data: " in header
    assert [line.split()[1].split("/")[1] for line in lines] == ["scratch", "pretrained", "weights:ssl-cxr.pt"]
    assert [line.split()[-1] for line in lines] == ["init=scratch", "init=imagenet", "init=cxr"]
    assert len({line.split()[0] for line in lines}) == 3


def test_known_nih_trained_files_are_flagged_by_name():
    xrv = pytest.importorskip("torchxrayvision")
    from harness.models.start import nih_overlap

    urls = {v["weights_url"] for v in xrv.models.model_urls.values()}
    urls |= {v["weights_url"] for v in xrv.autoencoders.model_urls.values()}
    for url in sorted(urls):
        name = url.rsplit("/", 1)[1]
        datasets = name.split("-densenet121")[0].split("-resnet")[0]
        trained_on_nih = "nih" in datasets.replace("_", "-").split("-") or datasets.startswith("nihpc")
        assert (nih_overlap(name) is not None) == trained_on_nih, name
        if trained_on_nih:
            assert "torchxrayvision" in nih_overlap(name) and "random image-level split" in nih_overlap(name)
    assert nih_overlap("/data/nih/mimic_ch-densenet121.pt") is None  # a folder's name says nothing of the file
    assert nih_overlap("my_nih_simclr.pth") is not None and nih_overlap("vinih.pt") is None
    assert start.provenance(Trial(weights="/w/chex-densenet121-d121.pt"))["nih_overlap"] is None


def test_a_trial_read_back_from_its_trial_json_is_the_same_trial(tmp_path):
    """cam and search rebuild trials from every field as written, the empty weights too."""
    from harness.config import trial_from_dict

    for trial in (ALEXNET, with_weights_file(ALEXNET.replace(weights=saved(tmp_path / "w.pt", alexnet_state())), "t")):
        again = trial_from_dict(trial.to_dict())
        assert again == trial and again.key == trial.key
    with pytest.raises(ConfigError, match="weights_sha256='XYZ' is out of range; valid: 64 lowercase hex digits"):
        trial_from_dict({"weights_sha256": "XYZ"})


def _xrv_densenet(seed: int = 0):
    """A torchxrayvision DenseNet121 at random init, its stem's BatchNorm given statistics of its own."""
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(seed)
    net = xrv.models.DenseNet(weights=None).eval()
    norm0 = net.features.norm0
    norm0.running_mean.normal_(0, 50)
    norm0.running_var.uniform_(100, 1000)
    return net


def test_a_torchxrayvision_densenet_folded_to_3_channels_computes_the_same_stem(tmp_path, capsys):
    xnet = _xrv_densenet()
    src = saved(tmp_path / "ssl-xrv-densenet.pt", {**xnet.state_dict(), "op_threshs": torch.rand(18)})
    out = tmp_path / "ssl-xrv-densenet-3ch.pt"
    assert cli.main(["weights", "from-xrv", src, str(out)]) == 0
    assert f"weights: {out}" in capsys.readouterr().out

    # A densenet121 trial starts from it: every backbone tensor fits, the head is new.
    trial = with_weights_file(Trial(arch="densenet121", image_size=64, weights=str(out)), "t")
    start.check(trial)
    net = torchvision.models.densenet121(num_classes=1000).eval()
    missing, unexpected = net.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and unexpected == []

    # The same film as each net is fed it: [-1024, 1024] on one channel; ImageNet-normalised on three.
    g = torch.rand(2, 1, 64, 64)
    mean, std = torch.tensor(models.timm.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(models.timm.IMAGENET_STD)
    ours_in = (g.repeat(1, 3, 1, 1) - mean) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = xnet.features.norm0(xnet.features.conv0(2048 * g - 1024))
        ours = net.features.norm0(net.features.conv0(ours_in))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # the frame reads padding: another grey level
    torch.testing.assert_close(ours[inner], theirs[inner], rtol=1e-4, atol=1e-3 * float(theirs.abs().max()))
    assert not torch.allclose(ours, theirs, atol=1e-3 * float(theirs.abs().max()))  # only there do they differ


def test_what_from_xrv_cannot_fold_is_one_line_and_exit_2(tmp_path, capsys):
    xnet = _xrv_densenet()
    cases = {
        "a 3-channel stem": (
            saved(tmp_path / "tv.pt", torchvision.models.densenet121().state_dict()),
            "out.pt",
            "must be a 1-channel stem (shape (64, 3, 7, 7))",
        ),
        "a pickled model": (saved(tmp_path / "whole.pt", xnet), "out.pt", "torch.save(model.state_dict(), PATH)"),
        "an NIH name dropped": (
            saved(tmp_path / "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", xnet.state_dict()),
            "mine.pt",
            "names NIH-trained weights; keep that name",
        ),
    }
    for case, (src, out, message) in cases.items():
        assert cli.main(["weights", "from-xrv", src, str(tmp_path / out)]) == 2, case
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (case, err)
        assert not (tmp_path / out).exists(), case
