"""The command line's grammar: every subcommand, its options and their help."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= least (argparse turns the ValueError into one line and exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise ValueError(text)
        return value

    parse.__name__ = f"whole number >= {least}"  # argparse names the type in its message
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark and ablation harness for chest X-ray "
        "classification on NIH ChestX-ray14 (or its embedded synthetic stand-in).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def data_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-root", help="NIH Kaggle-layout root (else $HARNESS_DATA_ROOT, else synthetic)")
        sp.add_argument("--results", default="results", help="results directory (default: results/)")
        sp.add_argument("--cache-dir", help="decoded-image cache (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
        sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
        sp.add_argument("--workers", type=int, default=0, help="decode processes (0 = all cores)")

    def tracker_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--tracker",
            action="append",
            metavar="NAME",
            help="also log every trial to mlflow or wandb (repeatable, or a comma list); "
            "TensorBoard files are always written to RESULTS/<name>/tensorboard/",
        )

    r = sub.add_parser("run", help="run a grid of trials through Ray Tune")
    r.add_argument("grid", help="grid YAML file, or a built-in grid's name (harness grids lists them), e.g. paper")
    r.add_argument("--profile", help="a named profile of the grid, e.g. smoke")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field for every trial")
    r.add_argument("--seeds", metavar="N", help="run every cell with seeds 0..N-1 (in place of the grid's seeds)")
    r.add_argument(
        "--dry-run", action="store_true", help="check the grid as a run does, print the trials and keys; start nothing"
    )
    r.add_argument(
        "--fetch-weights",
        action="store_true",
        help="before any trial starts, download the ImageNet weights the grid's pretrained trials need "
        "(as `harness weights fetch`); offline it fails at once, naming the files to place",
    )
    r.add_argument("--gpus-per-trial", default="auto", help="GPU share per trial (0.25 packs four), or auto")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPU cores each trial reserves (at least)")
    r.add_argument("--address", help="join a running Ray cluster: auto or ray://HOST:PORT (or RAY_ADDRESS)")
    r.add_argument("--retries", type=int, default=2, help="restarts of a trial whose worker died (default 2)")
    r.add_argument("--compile", action="store_true", help="torch.compile each model (GPU: slower start, faster steps)")
    r.add_argument(
        "--fresh-workers",
        action="store_true",
        help="a new worker process per trial (default: a worker runs trial after trial)",
    )
    tracker_opt(r)
    data_opts(r)

    rp = sub.add_parser("report", help="tables, figures and statistics of a grid's results")
    rp.add_argument("results_dir", help="results/<grid name>")
    rp.add_argument("--out", help="output directory (default: reports/<grid name>)")
    rp.add_argument("--recompute", action="store_true", help="recompute every metric from saved predictions")
    rp.add_argument("--reference", help="arch of the reference row for significance marks")
    rp.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        help="bootstrap resamples for every interval, test and P(best) of the report (default 1000, at least 100)",
    )

    se = sub.add_parser("search", help="hyperparameter search: Optuna TPE through Ray Tune, ASHA pruning")
    se.add_argument("search", help="search YAML file, e.g. grids/search.yaml")
    se.add_argument("--profile", help="a named profile of the search file, e.g. smoke")
    se.add_argument("--samples", type=int, help="new trials to add to the study (default: the file's)")
    se.add_argument("--dry-run", action="store_true", help="check the file and print the space; start nothing")
    se.add_argument("--address", help="join a running Ray cluster: auto or ray://HOST:PORT")
    se.add_argument("--gpus-per-trial", default="auto")
    se.add_argument("--cpus-per-trial", type=float, default=1.0)
    tracker_opt(se)
    data_opts(se)

    c = sub.add_parser("cam", help="Grad-CAM overlays, activations and box scores of a finished trial")
    c.add_argument("trial_dir", help="results/<grid>/<key>")
    c.add_argument("--finding", action="append", help="finding to explain (repeatable; default Atelectasis, Effusion)")
    c.add_argument("--images", nargs="+", help="image names (default: test images with a box)")
    c.add_argument("--out", help="output directory (default: TRIAL_DIR/cam)")
    c.add_argument("--method", default="gradcam", help="gradcam, gradcam++ or smoothgrad")
    c.add_argument("--layer", help="dotted module name (default: the arch's last conv block)")
    c.add_argument("--max-images", type=int, default=8)
    data_opts(c)

    d = sub.add_parser("data", help="synthetic data, dataset statistics, caches")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write a synthetic NIH-layout tree")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=3000)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard (lesion contrast)")
    s.add_argument("--label-noise", type=float, default=0.0, help="rate of flipped labels in the CSV")
    st = dsub.add_parser("stats", help="images, patients, splits, overlap, prevalence")
    st.add_argument("root", nargs="?", help="data root (else $HARNESS_DATA_ROOT)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--val-fraction", type=float, default=0.1)
    st.add_argument("--seed", type=int, default=0)
    pr = dsub.add_parser("prepare", help="decode every image once into the cache")
    pr.add_argument("root", nargs="?")
    pr.add_argument("--size", type=int, required=True)
    pr.add_argument("--cache-dir")
    pr.add_argument("--workers", type=int, default=0)
    pr.add_argument("--val-fraction", type=float, default=0.1)
    pr.add_argument("--seed", type=int, default=0)
    w = sub.add_parser(
        "weights", help="where pretrained weights go; download them (fetch); placeholder files for offline smoke runs"
    )
    wsub = w.add_subparsers(dest="action", required=True)
    for action, what in (
        ("where", "where each arch's ImageNet file goes, and whether it is there"),
        ("fetch", "download torchvision's ImageNet files, with its hash check"),
        ("placeholder", "random-init files under torchvision's names, for offline smoke runs (NOT ImageNet)"),
    ):
        wsub.add_parser(action, help=what).add_argument("archs", nargs="+")
    x = wsub.add_parser(
        "from-xrv",
        help="a torchxrayvision DenseNet state dict as a densenet121 starting file (weights: OUT): its 1-channel "
        "stem folded into the 3-channel ImageNet-normalised input",
    )
    x.add_argument("src", help="torch.save(xrv.models.DenseNet(weights=...).state_dict(), SRC)")
    x.add_argument("out", help="the file to write; keep an NIH-trained source's name in it (e.g. SRC-3ch.pt)")

    gr = sub.add_parser("grids", help="the built-in grids: list them, or print one to copy and edit")
    gr.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    gr.add_argument("name", nargs="?", help="with show: the grid to print, e.g. paper")

    b = sub.add_parser("bench", help="throughput: cached loader vs naive PNG loader; trial step vs bare loop")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bl = bsub.add_parser("loader", help="cached-loader images/s, naive PNG DataLoader images/s, ratio")
    bs = bsub.add_parser(
        "step", help="a trial's step beside a bare PyTorch loop's (ratio), and the trial's end-to-end images/s"
    )
    bs.add_argument("--arch", required=True)
    bs.add_argument("--image-size", type=int, default=0, help="0 = the arch's own")
    bs.add_argument("--steps", type=_count(1), default=20, help="steps per timed window")
    bs.add_argument("--windows", type=_count(1), default=5, help="timed windows each for the trial and the bare loop")
    bs.add_argument("--compile", action="store_true", help="torch.compile the model, as `run --compile` does")
    bs.add_argument("--eval-batch", type=_count(0), default=0, help="evaluation batch (0 = what a trial uses)")
    bp = bsub.add_parser(
        "pack",
        help="how many trials of a shape share one GPU, measured now: 1, 2, then 4 copies of its step side by side "
        "(runs learn it from their own epochs; this measures on demand and remembers the result)",
    )
    bp.add_argument("--arch", required=True)
    bp.add_argument("--image-size", type=int, default=0, help="0 = the arch's own")
    bp.add_argument("--freeze", type=_count(0), default=0, help="leading stages kept fixed")
    bp.add_argument("--address", help="a running Ray cluster: auto or ray://HOST:PORT (or RAY_ADDRESS)")
    for sp, batch in ((bl, 64), (bs, 64), (bp, 64)):
        sp.add_argument("--batch", type=_count(1), default=batch)
        sp.add_argument("--json", action="store_true")
        data_opts(sp)
    bl.add_argument("--crop", type=_count(1), default=224)
    bl.add_argument("--images", type=_count(1), default=2048, help="images in the cached pass")
    return p
