"""The decode-once cache: every PNG mode, unreadable files, reuse, staleness, killed builds, locking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import pixels

from harness import store
from harness.data import cache, nih
from harness.data.nih import DataWarning

RAMP = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, 0..252 left to right


def save(path: Path, image: Image.Image) -> str:
    image.save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1"])
def test_eight_bit_modes_become_the_same_gray(tmp_path, mode):
    gray = Image.fromarray(RAMP)
    image = gray.convert(mode)
    if mode in ("RGBA", "LA"):
        image.putalpha(Image.fromarray(np.full_like(RAMP, 7)))  # alpha must be ignored, not blended
    out = cache.read_gray(save(tmp_path / "x.png", image), 64)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    expected = np.asarray(image.convert("L")) if mode in ("1", "P") else RAMP
    np.testing.assert_allclose(out, expected, atol=1)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = save(tmp_path / "x.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    out = cache.read_gray(path, 4)
    np.testing.assert_array_equal(out[0], [0, 64, 128, 255])


def test_twelve_bit_data_in_sixteen_bit_png_uses_its_depth(tmp_path):
    values = np.array([[0, 2048, 4095, 1024]], dtype=np.uint16).repeat(4, axis=0)
    out = cache.read_gray(save(tmp_path / "x.png", Image.fromarray(values)), 4)
    np.testing.assert_array_equal(out[0], [0, 128, 255, 64])


def test_thirty_two_bit_mode_i(tmp_path):
    # Older Pillow opens 16-bit PNGs as mode I; Pillow 13 cannot write it, so convert in memory.
    image = Image.fromarray(np.array([[0, 32768, 65535, 0]], dtype=np.uint16).repeat(4, axis=0)).convert("I")
    assert image.mode == "I"
    np.testing.assert_array_equal(np.asarray(cache._to_gray(image))[0].round(), [0, 128, 255, 0])


def test_resize_keeps_brightness(tmp_path):
    source = pixels("resize", 256)
    out = cache.read_gray(save(tmp_path / "x.png", Image.fromarray(source)), 64)
    assert out.shape == (64, 64)
    assert abs(out.astype(float).mean() - source.mean()) < 1.0
    # An area filter: each output pixel is close to the mean of its 4x4 source block.
    blocks = source.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.abs(out[4:-4, 4:-4] - blocks[4:-4, 4:-4]).mean() < 4


def test_truncated_png_raises(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(pixels("t", 64)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OSError, match="truncated"):
        cache.read_gray(str(path), 32)


def load_tree(root: Path) -> nih.NIHData:
    with pytest.warns(DataWarning):  # the tree has one listed image missing on disk
        return nih.load(root)


def all_rows(data: nih.NIHData) -> np.ndarray:
    return np.arange(len(data.table))


def test_build_then_reuse(nih_tree, tmp_path):
    data = load_tree(nih_tree)
    first = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert not first.reused and first.rate > 0 and first.skipped == ()
    assert isinstance(first.images, np.memmap) and first.images.dtype == np.uint8
    assert first.images.shape == (35, 24, 24)
    np.testing.assert_array_equal(first.rows, all_rows(data))
    for i in (0, 17, 34):
        np.testing.assert_array_equal(first.images[i], cache.read_gray(data.table["path"][i], 24))
    again = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert again.reused and again.path == first.path
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
    manifest = json.loads(first.path.with_suffix(".json").read_text())
    assert manifest["version"] == cache.CACHE_VERSION and manifest["count"] == 35 and manifest["size"] == 24
    # The pixels' digest is taken once, at the build, and read back with the cache (a trial's recipe records it).
    digest = cache.pixels_sha256(np.asarray(first.images))
    assert manifest["sha256"] == first.sha256 == again.sha256 == digest


def test_cache_is_keyed_by_rows_and_size(nih_tree, tmp_path):
    data = load_tree(nih_tree)
    a = cache.build(data, np.arange(10), size=24, cache_dir=tmp_path, workers=1, progress=False)
    b = cache.build(data, np.arange(5, 15), size=24, cache_dir=tmp_path, workers=1, progress=False)
    c = cache.build(data, np.arange(10), size=20, cache_dir=tmp_path, workers=1, progress=False)
    assert len({a.path, b.path, c.path}) == 3 and not (b.reused or c.reused)
    np.testing.assert_array_equal(b.images[0], a.images[5])


def test_parallel_build_matches_serial(nih_tree, tmp_path):
    data = load_tree(nih_tree)
    serial = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path / "a", workers=1, progress=False)
    parallel = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path / "b", workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(parallel.images), np.asarray(serial.images))


def test_truncated_image_is_skipped_and_counted(fresh_nih_tree, tmp_path):
    data = load_tree(fresh_nih_tree)
    bad = data.table["path"][3]
    Path(bad).write_bytes(Path(bad).read_bytes()[:100])
    with pytest.warns(DataWarning, match=r"1 of 35 images could not be decoded.*00000002_000.png"):
        built = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert built.skipped == ("00000002_000.png",)
    assert built.images.shape == (34, 24, 24) and 3 not in built.rows.tolist()
    np.testing.assert_array_equal(built.images[3], cache.read_gray(data.table["path"][4], 24))
    assert nih.stats(data)["skipped"] == 1
    reused = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert reused.reused and reused.skipped == built.skipped
    np.testing.assert_array_equal(reused.rows, built.rows)


def test_changed_source_file_rebuilds(fresh_nih_tree, tmp_path):
    data = load_tree(fresh_nih_tree)
    first = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    path = Path(data.table["path"][0])
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = cache.build(data, all_rows(data), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert not second.reused and second.path == first.path
    assert np.all(second.images[0] == 200)


def test_other_cache_version_rebuilds(nih_tree, tmp_path, monkeypatch):
    data = load_tree(nih_tree)
    cache.build(data, np.arange(4), size=24, cache_dir=tmp_path, workers=1, progress=False)
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert not cache.build(data, np.arange(4), size=24, cache_dir=tmp_path, workers=1, progress=False).reused


def test_killed_build_is_never_used(nih_tree, tmp_path):
    data = load_tree(nih_tree)
    good = cache.build(data, np.arange(6), size=24, cache_dir=tmp_path, workers=1, progress=False)
    expected = np.array(good.images)
    npy, manifest = good.path, good.path.with_suffix(".json")
    # A build killed after its array was in place but before the manifest: garbage, no manifest.
    manifest.unlink()
    np.save(npy, np.zeros((6, 24, 24), np.uint8))
    leftover = npy.with_name(f".{npy.name}.k1ll3d.tmp")  # store.atomic_path's temporary name
    leftover.write_bytes(b"partial")  # and a temp file from an even earlier kill
    rebuilt = cache.build(data, np.arange(6), size=24, cache_dir=tmp_path, workers=1, progress=False)
    assert not rebuilt.reused and not leftover.exists()
    np.testing.assert_array_equal(np.asarray(rebuilt.images), expected)
    # A truncated array with a matching manifest (disk full, say) is not trusted either.
    with open(npy, "r+b") as handle:
        handle.truncate(npy.stat().st_size // 2)
    assert not cache.build(data, np.arange(6), size=24, cache_dir=tmp_path, workers=1, progress=False).reused


def test_empty_selection(nih_tree, tmp_path):
    built = cache.build(load_tree(nih_tree), np.arange(0), size=24, cache_dir=tmp_path, progress=False)
    assert built.images.shape == (0, 24, 24) and len(built.rows) == 0


def test_build_waits_for_the_lock_holder(nih_tree, tmp_path):
    import threading
    import time

    data = load_tree(nih_tree)
    names = data.table["image_index"].tolist()[:4]
    stem = cache._stem(data.root, data.dataset, names, 24)
    done = []
    with store.exclusive(tmp_path / f"{stem}.lock"):  # another process building the same cache
        worker = threading.Thread(
            target=lambda: done.append(
                cache.build(data, np.arange(4), size=24, cache_dir=tmp_path, workers=1, progress=False)
            )
        )
        worker.start()
        time.sleep(0.5)  # a 4-image build takes milliseconds: had it not waited, its files would be here
        assert worker.is_alive() and not list(tmp_path.glob("*.npy*"))  # waiting, has written nothing
        released = time.time()
    worker.join(60)
    assert done and done[0].images.shape == (4, 24, 24) and not done[0].reused
    assert done[0].path.stat().st_mtime >= released - 0.01  # built after the holder let go, not before
