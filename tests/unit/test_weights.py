"""`harness weights`: fetch from a loopback server (no test reaches the internet), placeholders, where."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import time

import pytest
import torch

from harness import cli, models
from harness.config import ConfigError, Trial, sha256
from harness.models import weightfiles


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the files put in its folder; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]  # quiet test output
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def placeholder_bytes(arch: str, tmp_path) -> bytes:
    """A random-init file in the arch's published layout, as bytes."""
    s = models.spec(arch)
    path = tmp_path / "made"
    s.write_weights(s.new(Trial(arch=arch), aux=bool(s.aux_min_size), num_classes=1000).state_dict(), path)
    return path.read_bytes()


def serve_as(monkeypatch, base: str, names: dict[str, str]) -> None:
    """weights_url(arch) -> base/name: the publisher's URL with its host replaced by the loopback server."""
    monkeypatch.setattr(weightfiles, "weights_url", lambda arch: f"{base}/{names[arch]}")


def test_fetch_downloads_into_the_cache_with_the_hash_check_and_a_trial_loads_it(
    torch_home, server, monkeypatch, tmp_path, capsys
):
    root, base = server
    data = placeholder_bytes("alexnet", tmp_path)
    name = f"alexnet-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # torchvision's naming: the hash's first digits
    (root / name).write_bytes(data)
    serve_as(monkeypatch, base, {"alexnet": name})

    assert cli.main(["weights", "fetch", "alexnet"]) == 0
    path = torch_home / name
    assert capsys.readouterr().out.strip() == f"alexnet: {path}"
    assert path.read_bytes() == data
    assert models.weights_provenance("alexnet")["imagenet_verified"] is True  # the name's digits match the file
    assert models.build(Trial(arch="alexnet", pretrained=True, image_size=64)).classifier[6].out_features == 14

    (root / name).unlink()  # a file already in the cache is kept, not downloaded again
    assert models.fetch_weights(["alexnet"]) == [path]


def test_fetch_refuses_a_file_whose_hash_does_not_match_its_name(torch_home, server, monkeypatch, tmp_path):
    root, base = server
    (root / "alexnet-00000000.pth").write_bytes(placeholder_bytes("alexnet", tmp_path))
    serve_as(monkeypatch, base, {"alexnet": "alexnet-00000000.pth"})
    with pytest.raises(models.WeightsMissing) as err:
        models.fetch_weights(["alexnet"], progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "invalid hash value" in msg and "place alexnet-00000000.pth in" in msg
    assert not any(torch_home.glob("*")), "a refused download must not be kept"


def test_fetch_refuses_a_server_error_page_saved_as_weights(torch_home, server, monkeypatch):
    root, base = server
    (root / "convnext_tiny.fb_in1k.safetensors").write_text("<html>rate limited</html>")
    serve_as(monkeypatch, base, {"convnext_tiny": "convnext_tiny.fb_in1k.safetensors"})
    if "convnext_tiny" not in models.MODELS:
        pytest.skip("timm is not installed")
    with pytest.raises(models.WeightsMissing, match="is not a valid state dict"):
        models.fetch_weights(["convnext_tiny"], progress=False)
    assert not models.weights_path("convnext_tiny").exists()


def test_fetch_offline_fails_in_one_line_within_seconds_naming_every_file_to_place(torch_home, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(weightfiles, "weights_url", lambda arch: f"http://127.0.0.1:{port}/{arch}-1234abcd.pth")
    t0 = time.monotonic()
    assert cli.main(["weights", "fetch", "alexnet", "resnet50"]) == 2
    assert time.monotonic() - t0 < models.FETCH_TIMEOUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("harness: error: cannot download alexnet weights")
    assert "place alexnet-1234abcd.pth in" in err and "place resnet50-1234abcd.pth in" in err


def test_fetch_checks_every_name_before_downloading(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ConfigError, match="unknown arch 'resnet153'"):
        models.fetch_weights(["alexnet", "resnet153"])


@pytest.mark.parametrize("arch", models.MODELS.names())
def test_placeholder_covers_every_arch_and_loads(arch, torch_home, capsys):
    assert cli.main(["weights", "placeholder", arch]) == 0
    assert "PLACEHOLDER" in capsys.readouterr().out and models.weights_path(arch).is_file()
    assert cli.main(["weights", "placeholder", arch]) == 0
    assert "left as it is" in capsys.readouterr().out
    s = models.spec(arch)
    size = s.native_size if arch == "inception_v3" else max(s.min_size, 64)
    models.build(Trial(arch=arch, pretrained=True, image_size=size))
    assert models.weights_provenance(arch)["imagenet_verified"] is False


def test_a_placeholder_is_the_same_file_every_time(torch_home):
    torch.manual_seed(123)  # whatever the caller's random state
    first = models.write_placeholder("alexnet")
    digest = sha256(first)
    first.unlink()
    torch.rand(5)
    assert sha256(models.write_placeholder("alexnet")) == digest


def test_where_names_the_file_and_its_source(torch_home, capsys):
    assert cli.main(["weights", "where", "resnet50"]) == 0
    assert capsys.readouterr().out == (
        f"resnet50: {torch_home / 'resnet50-0676ba61.pth'} (missing; from "
        "https://download.pytorch.org/models/resnet50-0676ba61.pth)\n"
    )
    if "vit_small_patch16_224" not in models.MODELS:
        assert cli.main(["weights", "where", "vit_small_patch16_224"]) == 2
        assert "needs timm: pip install 'harness[timm]'" in capsys.readouterr().err
        return
    assert cli.main(["weights", "where", "vit_small_patch16_224"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"vit_small_patch16_224: {torch_home / 'vit_small_patch16_224.augreg_in1k.safetensors'}")
    assert "https://huggingface.co/timm/vit_small_patch16_224.augreg_in1k/" in line


def paper_smoke_argv(tmp_path) -> list[str]:
    """A grid of two pretrained alexnet trials (bce, focal) and a scratch one: one weights file to fetch."""
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "base: {arch: alexnet, image_size: 64}\n"
        "axes: {loss: [bce, focal]}\n"
        "include: [{pretrained: true, loss: bce}, {pretrained: true, loss: focal}]\n"
    )
    return ["run", str(grid), "--fetch-weights", "--results", str(tmp_path / "r")]


class Reached(Exception):
    """The run got past the fetch and went on to the data."""


def test_run_fetch_weights_downloads_each_arch_once_before_any_trial(torch_home, server, monkeypatch, tmp_path, capsys):
    from harness import prepare

    root, base = server
    data = placeholder_bytes("alexnet", tmp_path)
    name = f"alexnet-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / name).write_bytes(data)
    serve_as(monkeypatch, base, {"alexnet": name})
    downloads = []
    real_download = torch.hub.download_url_to_file

    def counted(url, dst, **kwargs):
        downloads.append((url, kwargs.get("hash_prefix")))
        return real_download(url, dst, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", counted)

    def data_next(*args, **kwargs):
        assert (torch_home / name).read_bytes() == data  # in place before the data, Ray or any trial
        raise Reached

    monkeypatch.setattr(prepare, "resolve_dataset", data_next)
    with pytest.raises(Reached):
        cli.main(paper_smoke_argv(tmp_path))
    assert downloads == [(f"{base}/{name}", hashlib.sha256(data).hexdigest()[:8])]  # once, hash-checked
    assert f"weights: alexnet: {torch_home / name}" in capsys.readouterr().err


def test_run_fetch_weights_offline_fails_in_one_line_within_seconds(torch_home, monkeypatch, tmp_path, capsys):
    from harness import prepare

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(weightfiles, "weights_url", lambda arch: f"http://127.0.0.1:{port}/{arch}-1234abcd.pth")
    monkeypatch.setattr(prepare, "resolve_dataset", lambda *a, **k: pytest.fail("went on to the data"))
    t0 = time.monotonic()
    assert cli.main(paper_smoke_argv(tmp_path)) == 2
    assert time.monotonic() - t0 < models.FETCH_TIMEOUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("harness: error: cannot download alexnet weights")
    assert f"place alexnet-1234abcd.pth in {torch_home}" in err
    assert not (tmp_path / "r").exists()
