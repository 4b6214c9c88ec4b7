"""The embedded dataset rendered by worker processes: the same bytes as one process renders."""

from __future__ import annotations

from pathlib import Path

from harness.data import synthetic as sy
from harness.data.synthetic import writer


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_parallel_rendering_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "POOL_MIN_PIXELS", 0)  # use worker processes even for this little work
    one = sy.generate(tmp_path / "one", n=48, size=32, seed=5, workers=1, progress=False)
    two = sy.generate(tmp_path / "two", n=48, size=32, seed=5, workers=2, progress=False)
    assert _files(one) == _files(two)
