"""The GPU check's summaries: a grid's phases and GPU use (grid_summary.json), and the step at HEAD against
an older commit on the same machine (regress.json).

    python scripts/gpu_summary.py grid WORK_DIR OUT.json [KEY=VALUE ...]   # KEY=VALUE: recorded as they are
    python scripts/gpu_summary.py regress HEAD.jsonl OLD.jsonl COMMIT OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BUSY = 90  # percent: a sample at or above it counts as a busy GPU
SAME = 0.9  # HEAD step / old step at or above this: the same speed, within run-to-run variation


def read_samples(path: Path) -> list[tuple[float, int, float, float]]:
    """(unix time, GPU index, utilisation %, memory MB) rows of gpu_sample.py's file; none if absent."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                t, index, util, mem = line.split(",")
                rows.append((float(t), int(index), float(util), float(mem)))
            except ValueError:
                continue  # a line cut short when the sampler was stopped
    return rows


def utilisation(samples: list[tuple[float, int, float, float]], start: float, end: float) -> dict[str, Any] | None:
    """Mean and busy share of the samples (every GPU's) taken between start and end; None without samples."""
    util = [u for t, _, u, _ in samples if start <= t <= end]
    if not util:
        return None
    return {
        "samples": len(util),
        "mean_percent": round(statistics.fmean(util), 1),
        f"share_at_or_above_{BUSY}": round(sum(u >= BUSY for u in util) / len(util), 3),
        "peak_memory_mb": max(m for t, _, _, m in samples if start <= t <= end),
    }


def grid_phases(rows: list[dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """The phases a user feels, from grid_phases.py's rows: data, ray_start, packing, trials, report.

    trials is what run_grid spends after Ray is up and packing is decided; a phase still running is
    timed up to now and marked running.
    """
    found = {r["phase"]: r for r in rows}
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, start: float, end: float | None) -> None:
        out[name] = {"start": start, "end": end if end is not None else now, "running": end is None}

    for name in ("data", "ray_start", "packing"):
        if name in found:
            add(name, found[name]["start"], found[name]["end"])
    runner = found.get("grid_runner")
    if runner is not None:
        ready = [out[n] for n in ("ray_start", "packing") if n in out]
        if not any(p["running"] for p in ready):
            add("trials", max([runner["start"], *(p["end"] for p in ready)]), runner["end"])
    if "report" in found:
        add("report", found["report"]["start"], found["report"]["end"])
    return out


def grid_summary(work: Path, extra: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """grid_summary.json from a gpu_check grid's work folder: start, end, rc, phases.json, gpu.csv."""
    now = time.time() if now is None else now
    start = float((work / "start").read_text())
    end = float((work / "end").read_text()) if (work / "end").exists() else None
    rc = int((work / "rc").read_text()) if (work / "rc").exists() else None
    rows = json.loads((work / "phases.json").read_text())["phases"] if (work / "phases.json").exists() else []
    not_timed = json.loads((work / "phases.json").read_text())["not_timed"] if rows else []
    samples = read_samples(work / "gpu.csv")
    phases = grid_phases(rows, now)
    stop = end if end is not None else now
    for p in phases.values():
        p["seconds"] = round(p["end"] - p["start"], 1)
        p["gpu"] = utilisation(samples, p["start"], p["end"])
        p["start_s"] = round(p.pop("start") - start, 1)  # seconds after the grid's start
        p.pop("end")
    accounted = sum(p["seconds"] for p in phases.values())
    return {
        **extra,
        "finished": end is not None,
        "rc": rc,
        "grid_seconds": round(stop - start, 1),  # start to report (or to now, while it runs)
        "phases": phases,
        "other_seconds": round(stop - start - accounted, 1),  # set-up between phases: imports, grid load
        "not_timed": not_timed,
        "gpu": utilisation(samples, start, stop)
        or {"samples": 0, "note": "no nvidia-smi samples (no NVIDIA GPU, or nvidia-smi missing)"},
    }


def _by_arch(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return {r["arch"]: r for r in rows}


def regress_summary(head: Path, old: Path, commit: str) -> list[dict[str, Any]]:
    """Per arch: HEAD's trial step, bare loop and epoch beside the old commit's step and epoch, same machine.

    The bare loop times the machine. A step slower at HEAD than at the old commit on the same machine is
    the code; the two alike while both sit below the figures recorded elsewhere is the machine.
    """
    ours, theirs = _by_arch(head), _by_arch(old)
    out = []
    for arch in [*ours, *(a for a in theirs if a not in ours)]:
        h, o = ours.get(arch, {}), theirs.get(arch, {})
        row: dict[str, Any] = {
            "arch": arch,
            "old_commit": commit,
            "head_step_images_per_s": h.get("step_images_per_s"),
            "head_bare_images_per_s": h.get("bare_images_per_s"),
            "head_step_vs_bare": h.get("step_vs_bare"),
            "head_trial_images_per_s": h.get("trial_images_per_s"),
            "old_step_images_per_s": o.get("step_images_per_s"),
            "old_trial_images_per_s": o.get("trial_images_per_s"),
        }
        if h and o:
            row["head_step_vs_old_step"] = h["step_images_per_s"] / o["step_images_per_s"]
            if h.get("bare_images_per_s"):
                row["old_step_vs_head_bare"] = o["step_images_per_s"] / h["bare_images_per_s"]
            row["reading"] = (
                f"the step is slower at HEAD than at {commit} on this machine: the code"
                if row["head_step_vs_old_step"] < SAME
                else f"HEAD steps as fast as {commit} here: a gap against figures recorded elsewhere is the machine"
            )
        out.append(row)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["grid"] and len(argv) >= 3:
        extra = dict(a.split("=", 1) for a in argv[3:])
        result: Any = grid_summary(Path(argv[1]), {k: _value(v) for k, v in extra.items()})
    elif argv[:1] == ["regress"] and len(argv) == 5:
        result = regress_summary(Path(argv[1]), Path(argv[2]), argv[3])
        argv = [*argv[:2], argv[4]]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    Path(argv[2]).write_text(text + "\n")
    print(text)
    return 0


def _value(text: str) -> Any:
    """A KEY=VALUE value as JSON reads it (2 -> 2, 1.5 -> 1.5), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
