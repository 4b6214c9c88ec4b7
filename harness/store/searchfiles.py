"""SearchFiles: one study's outputs under results/<search>/search/<study>/, named here and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.store.writes import atomic_path, write_bytes, write_json


class SearchFiles:
    """What `harness search` writes for a study: the summary, the best trial and its grid, the importances, every
    trial as a table, and the plots (PNG, and HTML where plotly is installed)."""

    SUMMARY = "summary.json"
    BEST = "best.json"
    BEST_GRID = "best.yaml"
    IMPORTANCE = "importance.json"
    TRIALS = "trials.csv"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _file(self, name: str) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / name

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self._file(self.SUMMARY), summary)

    def write_best(self, best: dict[str, Any]) -> None:
        write_json(self._file(self.BEST), best)

    @property
    def best_grid(self) -> Path:
        """Where the best trial's grid goes (its own header names this path)."""
        return self.path / self.BEST_GRID

    def write_best_grid(self, text: str) -> Path:
        write_bytes(self._file(self.BEST_GRID), text.encode())
        return self.best_grid

    def write_importance(self, importance: dict[str, Any]) -> None:
        write_json(self._file(self.IMPORTANCE), importance)

    def write_trials(self, frame: Any) -> None:
        """The study's trials_dataframe() as CSV."""
        with atomic_path(self._file(self.TRIALS)) as tmp:
            frame.to_csv(tmp, index=False)

    def plot(self, stem: str, suffix: str) -> Path:
        """A plot's file, e.g. plot("history", "png") -> history.png; write it through atomic_path."""
        return self._file(f"{stem}.{suffix}")
