"""The command line's grammar: every subcommand, its options, their help and their examples."""

from __future__ import annotations

import argparse

from harness.cli.helptext import Example, HelpFormatter, command, count, epilog

# `harness --help` ends with the usual flow, in the order a newcomer runs it: a test checks run comes before report.
FLOW: tuple[Example, ...] = (
    ("harness grids", "the built-in grids and search spaces"),
    ("harness run grids/paper.yaml --profile smoke --dry-run", "the trials and their keys; starts nothing"),
    ("harness run grids/paper.yaml --profile smoke", "the paper's grid in minutes on a CPU (synthetic data)"),
    ("harness report results/paper", "its tables, figures and statistics"),
    ("harness search search --profile smoke --samples 6", "a small hyperparameter search"),
)


def build_parser() -> argparse.ArgumentParser:
    """The whole grammar: the top-level parser, then each subcommand in the order --help lists them."""
    p = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark and ablation harness for chest X-ray "
        "classification on NIH ChestX-ray14 (or its embedded synthetic stand-in). "
        "`python -m harness` is the same program; `harness COMMAND --help` ends with examples.",
        epilog=epilog(FLOW),
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_run_parser, _report_parser, _search_parser, _evaluate_parser, _cam_parser, add_reproduce):
        add(sub)
    for add in (_data_parser, _weights_parser, _grids_parser, _bench_parser):
        add(sub)
    return p


# Option groups that several subcommands share, so that each is spelled (and documented) once.


def _data_options(sp: argparse.ArgumentParser) -> None:
    """Where the data, results and cache are, and the device and decode processes: every command that trains."""
    sp.add_argument(
        "--data-root",
        action="append",
        metavar="PATH|NAME=PATH",
        help="NIH Kaggle-layout root (default: $HARNESS_DATA_ROOT, else synthetic); NAME=PATH for another "
        "dataset's (chexpert, mimic, padchest; default: $HARNESS_CHEXPERT_ROOT, ...); repeatable",
    )
    sp.add_argument("--results", default="results", help="results directory; a grid's trials go to RESULTS/<name>")
    sp.add_argument("--cache-dir", help="decoded-image cache (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument("--workers", type=int, default=0, help="decode processes; 0: all cores")


def _tracker_option(sp: argparse.ArgumentParser) -> None:
    """--tracker: the experiment trackers every trial also logs to (run and search)."""
    sp.add_argument(
        "--tracker",
        action="append",
        metavar="NAME",
        help="also log every trial to mlflow or wandb (repeatable, or a comma list); "
        "TensorBoard files are always written to RESULTS/<name>/tensorboard/",
    )


def _ray_options(sp: argparse.ArgumentParser) -> None:
    """The Ray cluster to join and each trial's share of it (run and search)."""
    sp.add_argument("--address", help="join a running Ray cluster: auto or ray://HOST:PORT (or RAY_ADDRESS)")
    sp.add_argument("--gpus-per-trial", default="auto", help="GPU share per trial (0.25 packs four), or auto")
    sp.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPU cores each trial reserves (at least)")


def _split_options(sp: argparse.ArgumentParser) -> None:
    """The validation split drawn from train_val (data stats and data prepare)."""
    sp.add_argument("--val-fraction", type=float, default=0.1, help="train_val patients held out for validation")
    sp.add_argument("--seed", type=int, default=0, help="seed of the validation split")


def _run_parser(sub: argparse._SubParsersAction) -> None:
    """`harness run`: a grid of trials through Ray Tune."""
    r = command(
        sub,
        "run",
        help="run a grid of trials through Ray Tune",
        examples=(
            ("harness run grids/paper.yaml --profile smoke --dry-run", "the trials and their keys; starts nothing"),
            ("harness run grids/paper.yaml --profile smoke", "minutes on a CPU, embedded synthetic data"),
            ("harness run paper --data-root /data/nih --seeds 3", "the paper's Tables 1-2 on NIH, three seeds"),
        ),
    )
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
    # The groups go where they always went: --help lists options in the order they were added.
    _ray_options(r)
    r.add_argument("--retries", type=int, default=2, help="restarts of a trial whose worker died")
    r.add_argument("--compile", action="store_true", help="torch.compile each model (GPU: slower start, faster steps)")
    r.add_argument(
        "--fresh-workers",
        action="store_true",
        help="a new worker process per trial (default: a worker runs trial after trial)",
    )
    _tracker_option(r)
    _data_options(r)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    """`harness report`: tables, figures and statistics of a grid's results."""
    rp = command(
        sub,
        "report",
        help="tables, figures and statistics of a grid's results",
        examples=(
            ("harness report results/paper", "writes reports/paper/"),
            ("harness report results/paper --reference alexnet", "significance marks against AlexNet's rows"),
            ("harness report results/paper --recompute --n-boot 2000", "every metric again from the predictions"),
        ),
    )
    rp.add_argument("results_dir", help="results/<grid name>")
    rp.add_argument("--out", help="output directory (default: reports/<grid name>)")
    rp.add_argument("--recompute", action="store_true", help="recompute every metric from saved predictions")
    rp.add_argument("--reference", help="arch of the reference row for significance marks (default: the first row)")
    rp.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        help="bootstrap resamples for every interval, test and P(best) of the report (at least 100)",
    )


def _search_parser(sub: argparse._SubParsersAction) -> None:
    """`harness search`: a hyperparameter search over a search file's space."""
    se = command(
        sub,
        "search",
        help="hyperparameter search: Optuna TPE through Ray Tune, ASHA pruning",
        examples=(
            ("harness search search --profile smoke --dry-run", "the space and the pruner; starts nothing"),
            ("harness search grids/search.yaml --profile smoke --samples 6", "minutes on a CPU, synthetic data"),
            ("harness search grids/search.yaml --samples 40 --data-root /data/nih", "40 more trials on NIH"),
        ),
    )
    se.add_argument(
        "search", help="search YAML file (one with a space:), or a built-in one's name (harness grids lists them)"
    )
    se.add_argument("--profile", help="a named profile of the search file, e.g. smoke")
    se.add_argument("--samples", type=int, help="new trials to add to the study (default: the file's samples)")
    se.add_argument("--dry-run", action="store_true", help="check the file and print the space; start nothing")
    _ray_options(se)
    _tracker_option(se)
    _data_options(se)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """`harness evaluate`: finished trials scored on other datasets."""
    ev = command(
        sub,
        "evaluate",
        help="score finished trials on other datasets without retraining (transfer), over the findings both label",
        examples=(
            (
                "harness evaluate results/paper --on chexpert=/data/CheXpert-v1.0-small",
                "every trial on CheXpert's test",
            ),
            (
                "harness evaluate results --on chexpert=/data/chexpert --on padchest=/data/padchest",
                "every grid, two sets",
            ),
            ("harness evaluate results/paper --on mimic=/data/mimic-cxr-jpg --json", "one JSON list of the scores"),
        ),
    )
    ev.add_argument("results_dir", help="results/<grid>, or a results folder holding grids")
    ev.add_argument(
        "--on",
        action="append",
        metavar="NAME=PATH",
        help="a dataset to score on: chexpert, mimic, padchest or nih, and its root (repeatable)",
    )
    # Not _data_options: it trains nothing, so it has no --results, and its roots come with --on.
    ev.add_argument("--cache-dir", help="decoded-image cache (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--workers", type=int, default=0, help="decode threads; 0: all cores")
    ev.add_argument("--json", action="store_true", help="print one JSON list instead of lines")


def _cam_parser(sub: argparse._SubParsersAction) -> None:
    """`harness cam`: Grad-CAM overlays, activations and box scores of one finished trial."""
    c = command(
        sub,
        "cam",
        help="Grad-CAM overlays, activations and box scores of a finished trial",
        examples=(
            ("harness cam results/paper/KEY", "KEY: a trial's key, as `harness run ... --dry-run` prints it"),
            ("harness cam results/paper/KEY --finding Effusion --method gradcam++", "one finding, another method"),
            ("harness cam results/paper/KEY --max-images 32 --out cam/paper", "more images, written elsewhere"),
        ),
    )
    c.add_argument("trial_dir", help="results/<grid>/<key>")
    c.add_argument(
        "--finding", action="append", help="finding to explain (repeatable; default: Atelectasis and Effusion)"
    )
    c.add_argument("--images", nargs="+", help="image names (default: test images with a box)")
    c.add_argument("--out", help="output directory (default: TRIAL_DIR/cam)")
    c.add_argument("--method", default="gradcam", help="gradcam, gradcam++ or smoothgrad")
    c.add_argument("--layer", help="dotted module name (default: the arch's last conv block)")
    c.add_argument("--max-images", type=int, default=8, help="test images explained at most")
    _data_options(c)


# Each of these examples ends both `harness data --help` and its own subcommand's, so it is written once.
DATA_SYNTH = ("harness data synth --out /tmp/nih-synth --n 500 --size 128", "a small synthetic NIH-layout tree")
DATA_STATS = ("harness data stats /tmp/nih-synth", "its images, patients, splits and prevalences")
DATA_PREPARE = ("harness data prepare /data/nih --size 256", "decode NIH once for 224 px trials")


def _data_parser(sub: argparse._SubParsersAction) -> None:
    """`harness data`: its subcommands synth, stats and prepare."""
    d = command(
        sub, "data", help="synthetic data, dataset statistics, caches", examples=(DATA_SYNTH, DATA_STATS, DATA_PREPARE)
    )
    dsub = d.add_subparsers(dest="data_command", required=True)
    _data_synth_parser(dsub)
    st = command(
        dsub,
        "stats",
        help="the layout, images, patients, splits, overlap, prevalence",
        examples=(
            DATA_STATS,
            ("harness data stats /data/nih --json", "the same as one JSON object"),
            ("harness data stats /data/CheXpert-v1.0-small", "CheXpert: labelled and uncertain counts too"),
        ),
    )
    st.add_argument(
        "root", nargs="?", help="data root of any layout, recognised by its files (default: $HARNESS_DATA_ROOT)"
    )
    st.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _split_options(st)
    pr = command(
        dsub,
        "prepare",
        help="decode every image once into the cache",
        examples=(DATA_PREPARE, ("harness data prepare /data/nih --size 342 --workers 8", "for InceptionV3's 299 px")),
    )
    pr.add_argument("root", nargs="?", help="data root (default: $HARNESS_DATA_ROOT)")
    pr.add_argument("--size", type=int, required=True, help="cache side in pixels (trials crop 7/8 of it)")
    pr.add_argument("--cache-dir", help="decoded-image cache (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
    pr.add_argument("--workers", type=int, default=0, help="decode processes; 0: all cores")
    _split_options(pr)


def _data_synth_parser(dsub: argparse._SubParsersAction) -> None:
    """`harness data synth`: a synthetic tree in one of the datasets' layouts."""
    s = command(
        dsub,
        "synth",
        help="write a synthetic tree in the NIH layout (or CheXpert's, MIMIC-CXR-JPG's, PadChest's)",
        examples=(
            DATA_SYNTH,
            ("harness data synth --out /tmp/hard --difficulty 0.9 --label-noise 0.05", "a harder one"),
            ("harness data synth --layout chexpert --out /tmp/chexpert-synth --n 300 --size 64", "CheXpert's layout"),
        ),
    )
    s.add_argument(
        "--layout",
        default="nih",
        choices=("nih", "chexpert", "mimic", "padchest"),
        help="the dataset layout to write, with that dataset's shift in contrast, noise and prevalence",
    )
    s.add_argument("--out", required=True, help="folder to write the tree into")
    s.add_argument("--n", type=int, default=3000, help="images")
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0, help="seed of the labels, patients and images")
    s.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard (lesion contrast)")
    s.add_argument("--label-noise", type=float, default=0.0, help="rate of flipped labels in the CSV")


PAPER_ARCHS = "alexnet resnet152 inception_v3"
# Each action's examples; `harness weights --help` shows the first of where, fetch and placeholder.
WEIGHTS_EXAMPLES: dict[str, tuple[Example, ...]] = {
    "where": (
        (f"harness weights where {PAPER_ARCHS}", "the paper's archs: where their files go, and whether there"),
        ("harness weights where densenet121 efficientnet_b0", "the others the harness adds"),
    ),
    "fetch": (
        (f"harness weights fetch {PAPER_ARCHS}", "download them, hashes checked"),
        ("harness weights fetch resnet50 densenet121", "the ablation grid's arch, and DenseNet-121"),
    ),
    "placeholder": (
        ("harness weights placeholder alexnet", "offline: a random-init stand-in, NOT ImageNet"),
        (f"harness weights placeholder {PAPER_ARCHS}", "stand-ins for the paper grid's pretrained trials"),
    ),
    "from-xrv": (
        ("harness weights from-xrv densenet121-all.pt densenet121-all-3ch.pt", "then in a grid: weights: OUT"),
        ("harness weights from-xrv nih-densenet121.pt nih-densenet121-3ch.pt", "NIH-trained: keep nih in OUT"),
    ),
}


def _weights_parser(sub: argparse._SubParsersAction) -> None:
    """`harness weights`: where, fetch, placeholder (each takes archs) and from-xrv."""
    w = command(
        sub,
        "weights",
        help="where pretrained weights go; download them (fetch); placeholder files for offline smoke runs",
        examples=[WEIGHTS_EXAMPLES[action][0] for action in ("where", "fetch", "placeholder")],
    )
    wsub = w.add_subparsers(dest="action", required=True)
    for action, what in (
        ("where", "where each arch's ImageNet file goes, and whether it is there"),
        ("fetch", "download torchvision's ImageNet files, with its hash check"),
        ("placeholder", "random-init files under torchvision's names, for offline smoke runs (NOT ImageNet)"),
    ):
        command(wsub, action, help=what, examples=WEIGHTS_EXAMPLES[action]).add_argument(
            "archs", nargs="+", metavar="ARCH", help="arch names, e.g. resnet50"
        )
    x = command(
        wsub,
        "from-xrv",
        help="a torchxrayvision DenseNet state dict as a densenet121 starting file (weights: OUT): its 1-channel "
        "stem folded into the 3-channel ImageNet-normalised input",
        examples=WEIGHTS_EXAMPLES["from-xrv"],
    )
    x.add_argument("src", help="torch.save(xrv.models.DenseNet(weights=...).state_dict(), SRC)")
    x.add_argument("out", help="the file to write; keep an NIH-trained source's name in it (e.g. SRC-3ch.pt)")


def _grids_parser(sub: argparse._SubParsersAction) -> None:
    """`harness grids`: the built-in grids and search spaces, listed or one shown."""
    gr = command(
        sub,
        "grids",
        help="the built-in grids and search spaces: list them, or print one to copy and edit",
        examples=(
            ("harness grids", "grids (harness run) and search spaces (harness search), apart"),
            ("harness grids show paper > my.yaml", "a copy to edit, then: harness run my.yaml"),
        ),
    )
    gr.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="list them, or show one")
    gr.add_argument("name", nargs="?", help="with show: the grid or search space to print, e.g. paper")


BENCH_LOADER = ("harness bench loader", "cached loader against PNG decoding, on the data root or synthetic")
BENCH_STEP = ("harness bench step --arch resnet50 --batch 32", "a trial's step against a bare loop")
BENCH_PACK = ("harness bench pack --arch resnet50", "trials of this shape per GPU (needs a GPU)")


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    """`harness bench`: loader, step and pack, with the options all three share."""
    b = command(
        sub,
        "bench",
        help="throughput: cached loader vs naive PNG loader; trial step vs bare loop",
        examples=(BENCH_LOADER, BENCH_STEP, BENCH_PACK),
    )
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bl = command(
        bsub,
        "loader",
        help="cached-loader images/s, naive PNG DataLoader images/s, ratio",
        examples=(BENCH_LOADER, ("harness bench loader --crop 299 --images 4096 --json", "InceptionV3's crop")),
    )
    bs, bp = _bench_step_parser(bsub), _bench_pack_parser(bsub)
    for sp in (bl, bs, bp):  # shared options follow each one's own, as --help has always listed them
        sp.add_argument("--batch", type=count(1), default=64, help="training batch")
        sp.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
        _data_options(sp)
    bl.add_argument("--crop", type=count(1), default=224, help="crop side in pixels")
    bl.add_argument("--images", type=count(1), default=2048, help="images in the cached pass")


def _bench_step_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`harness bench step`: its own options (the shared ones are added by _bench_parser)."""
    bs = command(
        bsub,
        "step",
        help="a trial's step beside a bare PyTorch loop's (ratio), and the trial's end-to-end images/s",
        examples=(BENCH_STEP, ("harness bench step --arch alexnet --image-size 64 --steps 5 --windows 2", "quick")),
    )
    bs.add_argument("--arch", required=True, help="arch name, e.g. resnet50")
    bs.add_argument("--image-size", type=int, default=0, help="input side in pixels; 0: the arch's own")
    bs.add_argument("--steps", type=count(1), default=20, help="steps per timed window")
    bs.add_argument("--windows", type=count(1), default=5, help="timed windows each for the trial and the bare loop")
    bs.add_argument("--compile", action="store_true", help="torch.compile the model, as `run --compile` does")
    bs.add_argument("--eval-batch", type=count(0), default=0, help="evaluation batch; 0: what a trial uses")
    return bs


def _bench_pack_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`harness bench pack`: its own options (the shared ones are added by _bench_parser)."""
    bp = command(
        bsub,
        "pack",
        help="how many trials of a shape share one GPU, measured now: 1, 2, then 4 copies of its step side by side "
        "(runs learn it from their own epochs; this measures on demand and remembers the result)",
        examples=(BENCH_PACK, ("harness bench pack --arch alexnet --image-size 224 --freeze 2", "a fine-tuning shape")),
    )
    bp.add_argument("--arch", required=True, help="arch name, e.g. resnet50")
    bp.add_argument("--image-size", type=int, default=0, help="input side in pixels; 0: the arch's own")
    bp.add_argument("--freeze", type=count(0), default=0, help="leading stages kept fixed")
    bp.add_argument("--address", help="a running Ray cluster: auto or ray://HOST:PORT (or RAY_ADDRESS)")
    return bp


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    """`harness reproduce`: a stored trial re-trained from its recipe, and its certificate."""
    rp = command(
        sub,
        "reproduce",
        help="re-train a stored trial from its recorded recipe in a scratch folder and certify whether its result "
        "comes back: identical, within noise, or different (exit 1); the certificate is written beside the trial",
        examples=(
            ("harness reproduce results/paper/KEY", "KEY: a trial's key; prints and keeps its certificate"),
            ("harness reproduce results/paper/KEY --data-root /data/nih --device cuda", "a reviewer's machine"),
            ("harness reproduce results/paper --sample 3", "three done trials of a grid, a seeded sample"),
        ),
    )
    rp.add_argument("path", help="a trial folder RESULTS/<grid>/<key>, or a grid folder RESULTS/<grid> with --sample")
    rp.add_argument("--sample", type=count(1), metavar="K", help="certify K done trials of a grid folder")
    rp.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    rp.add_argument("--data-root", help="NIH Kaggle-layout root (default: $HARNESS_DATA_ROOT, else synthetic)")
    rp.add_argument("--cache-dir", help="decoded-image cache (default: $HARNESS_CACHE_DIR or ~/.cache/harness)")
    rp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    rp.add_argument("--workers", type=int, default=0, help="decode processes; 0: all cores")
