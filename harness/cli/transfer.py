"""The commands of other datasets: `data synth --layout`, `data stats` of any layout, `evaluate`, and --data-root NAME=PATH."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.config import ConfigError

LAYOUT_NAMES = ("nih", "chexpert", "mimic", "padchest")  # data/readers.py's READERS; a test keeps them equal


def data_roots(values: list[str] | str | None) -> tuple[str | None, dict[str, str]]:
    """--data-root values -> (the NIH root or None, {dataset: root}): PATH is NIH's, NAME=PATH another's."""
    if values is None:
        return None, {}
    nih_root, roots = None, {}
    for value in [values] if isinstance(values, str) else values:
        name, sep, path = value.partition("=")
        if sep and name in LAYOUT_NAMES:
            if not path:
                raise ConfigError(
                    f"--data-root {value!r}: no path after '='; valid: NAME=PATH, e.g. chexpert=/data/chexpert"
                )
            if name == "nih":
                nih_root = path
            else:
                roots[name] = str(Path(path).expanduser().resolve())
        elif nih_root is not None:
            raise ConfigError(
                f"--data-root {value!r}: NIH's root is already {nih_root!r}; name the others' roots: "
                f"{', '.join(n + '=PATH' for n in LAYOUT_NAMES if n != 'nih')}"
            )
        else:
            nih_root = value
    return nih_root, roots


def data_synth(args: argparse.Namespace) -> int:
    layout = getattr(args, "layout", "nih")
    if layout == "nih":
        from harness.data import synthetic

        root = synthetic.generate(
            args.out, n=args.n, size=args.size, seed=args.seed, difficulty=args.difficulty, label_noise=args.label_noise
        )
    else:
        from harness.data.synthetic.layouts import generate_layout

        if args.label_noise:
            raise ConfigError(f"--label-noise is for the nih layout only; --layout {layout} writes its own labels")
        root = generate_layout(layout, args.out, n=args.n, size=args.size, seed=args.seed, difficulty=args.difficulty)
    print(f"synthetic {layout}-layout tree: {root}")
    return 0


def data_stats(args: argparse.Namespace) -> int:
    """Any layout's images, patients, splits and prevalence, with the layout it was recognised as."""
    from harness.data import nih, readers

    root = args.root
    if root is None:
        root = nih.locate(None)
        if root is None:
            raise ConfigError("no data root: give ROOT or set HARNESS_DATA_ROOT")
    data = readers.load(root)
    stats = readers.stats(data, val_fraction=args.val_fraction, seed=args.seed)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return 0
    print(
        f"{data.root}: layout {stats['layout']} ({stats['title']}), dataset {data.dataset}: {stats['images']} "
        f"images, {stats['patients']} patients; missing {stats['missing']}, skipped {stats['skipped']}"
        + (f", laterals left out {stats['lateral_left_out']}" if "lateral_left_out" in stats else "")
    )
    print(
        "splits: "
        + ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
        + f"; patient overlap between splits: {stats['patient_overlap']}"
    )
    head = "".join(f"{s:>9}" for s in stats["prevalence"])
    print(f"{'finding':<20}{head}" + ("  labelled uncertain" if "known" in stats else ""))
    for f in nih.FINDINGS:
        if f not in stats["labelled"]:
            print(f"{f:<20}{'not labelled by ' + stats['layout']:>27}")
            continue
        row = "".join(f"{stats['prevalence'][s][f] * 100:8.2f}%" for s in stats["prevalence"])
        extra = f"  {stats['known'][f]:8d} {stats['uncertain'][f]:9d}" if "known" in stats else ""
        print(f"{f:<20}{row}{extra}")
    return 0


def evaluate(args: argparse.Namespace, runtime) -> int:
    """Score finished trials on other datasets (`harness evaluate RESULTS_DIR --on NAME=PATH ...`)."""
    from harness import external

    on = {}
    for value in args.on or []:
        name, sep, path = value.partition("=")
        if not sep or name not in LAYOUT_NAMES or not path:
            raise ConfigError(f"--on {value!r}: expected NAME=PATH with NAME one of {', '.join(LAYOUT_NAMES)}")
        on[name] = path
    rows = external.evaluate_results(args.results_dir, on, runtime)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    for r in rows:
        home, ext = (f"{v:.3f}" if v is not None else "n/a" for v in (r["home"], r["external"]))
        print(
            f"{r['grid']}/{r['key']} {r['label']}: AUROC over {r['findings']} shared findings: home {home}, "
            f"{r['dataset']} {ext}" + (" (stored)" if r["reused"] else "")
        )
    print(f"{len(rows)} scores ({sum(not r['reused'] for r in rows)} computed now); `harness report` shows them")
    return 0


def evaluate_grid(grid_dir: Path, names: tuple[str, ...], runtime) -> None:
    """A grid's `evaluate_on` after its run: each dataset's root as `harness run` resolves it (NAME=PATH, env)."""
    from harness import external, prepare

    on = {name: str(prepare.dataset_root(name, runtime)) for name in names if name != "nih"}
    if "nih" in names:
        if runtime.data_root is None:
            raise ConfigError("evaluate_on names nih but no NIH root is given: --data-root PATH or HARNESS_DATA_ROOT")
        on["nih"] = runtime.data_root
    for r in external.evaluate_results(grid_dir, on, runtime):
        print(f"{r['key']} on {r['dataset']}: AUROC {r['external']} over {r['findings']} shared findings")


def data_words(trials, root, runtime) -> str:
    """What a dry run says its trials read: NIH's root (or the embedded set) and each other dataset's root."""
    from harness import prepare
    from harness.data import readers

    parts = []
    if any(readers.layout_for(t.dataset) == "nih" for t in trials):
        parts.append(f"data: {root}" if root is not None else "data: the embedded SYNTHETIC set")
    _, roots = prepare.other_datasets(trials, runtime)
    parts += [f"{layout} data: {path}" for layout, path in sorted(roots.items())]
    return "; ".join(parts)
