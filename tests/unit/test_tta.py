"""Test-time augmentation (Trial.tta): a hashed field, validated with a hint, used by every evaluation."""

from __future__ import annotations

import pytest
import torch

from harness import cli, models, train
from harness.config import Trial, trial_from_dict


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return models.build(Trial(arch="resnet50", image_size=32)).eval()


def test_tta_is_hashed_and_keeps_every_stored_key():
    assert Trial(tta="none").key == Trial().key == "6094758837cb"  # the key before tta existed
    assert Trial(tta="flip").key != Trial().key
    assert trial_from_dict({"tta": "flip"}).tta == "flip"


@pytest.mark.parametrize("value", ["flipp", "hflip"])
def test_an_unknown_tta_is_one_line_with_the_choices_and_exit_2(value, capsys):
    with pytest.raises(Exception, match=rf"unknown tta '{value}'.*; valid: flip, none$"):
        models.check(Trial(tta=value))
    assert cli.main(["run", "paper", "--set", f"tta={value}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid: flip, none" in err
    if value == "flipp":
        assert "(did you mean 'flip'?)" in err


def test_flip_is_the_mean_of_the_logits_of_the_image_and_its_mirror(net):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = models.forward_tta(net, x, tta="none")
        flip = models.forward_tta(net, x, tta="flip")
        torch.testing.assert_close(plain, net(x))
        torch.testing.assert_close(flip, (net(x) + net(x.flip(-1))) / 2)
        assert not torch.allclose(flip, plain)
        mirror_symmetric = (x + x.flip(-1)) / 2  # an image equal to its mirror: flipping changes nothing
        torch.testing.assert_close(models.forward_tta(net, mirror_symmetric, tta="flip"), net(mirror_symmetric))


def test_predict_evaluates_with_the_trials_tta(net):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batches = [(x[:2], None), (x[2:], None)]  # what predict reads: (images, labels) per batch
    out = train.predict(net, batches, device=torch.device("cpu"), tta="flip")
    with torch.no_grad():
        want = (net(x) + net(x.flip(-1))) / 2
    torch.testing.assert_close(torch.from_numpy(out.logits), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(out.probs), torch.sigmoid(want), rtol=1e-5, atol=1e-6)
    plain = train.predict(net, batches, device=torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(plain.logits), net(x), rtol=1e-5, atol=1e-5)
