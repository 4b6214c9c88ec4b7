"""harness.report on a small fake results directory written in the store's layout."""

from __future__ import annotations

import ast
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from harness import cli, metrics, report, rescore, store
from harness.config import ConfigError, Trial
from harness.report import drawing, figures
from harness.report.figures import DEGENERATE_LABEL, PAPER_F1
from harness.report.paired import ALL_PAIRS_UP_TO
from harness.report.paper import (
    DDAGGER,
    FREEZE_STAGES,
    INCEPTION_AUX_MIN_SIZE,
    INCEPTION_AUX_WEIGHT,
    PAPER_BCE_NOTE,
)

FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
N_IMAGES, N_PATIENTS = 240, 80
EVAL_BOOT = 200  # the intervals in metrics.json
REPORT_BOOT = 500  # paired tests: enough resamples that p survives Holm over the grid's 9 comparisons
# How strongly each (arch, pretrained) separates positives from negatives, and which noise it draws.
# Scratch models are identical (no signal, same noise); pretrained AlexNet and InceptionV3 are identical
# too, and pretrained ResNet152 is clearly the best.
SIGNAL = {(False, a): (0.0, 1) for a in ("alexnet", "resnet152", "inception_v3")}
SIGNAL.update({(True, "alexnet"): (0.8, 2), (True, "inception_v3"): (0.8, 2), (True, "resnet152"): (1.5, 3)})
ARCHS = ("alexnet", "resnet152", "inception_v3")


def report_keeping_figures(grid, out, **kwargs) -> dict:
    """Write a report, keeping each matplotlib figure it saves (by file stem) for the test to inspect."""
    saved = {}
    save = figures._save

    def keep(ctx, fig, stem):
        saved[stem] = fig
        return save(ctx, fig, stem)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "_save", keep)
        report.write_report(grid, out, **kwargs)
    return saved


def _test_set():
    rng = np.random.default_rng(0)
    patient = np.repeat(np.arange(1000, 1000 + N_PATIENTS), N_IMAGES // N_PATIENTS)
    prevalence = np.linspace(0.15, 0.35, len(FINDINGS))
    labels = (rng.random((N_IMAGES, len(FINDINGS))) < prevalence).astype(np.uint8)
    return labels, patient, np.array([f"{i:08d}_000.png" for i in range(N_IMAGES)])


def _logits(labels: np.ndarray, strength: float, noise_seed: int, scale: float = 1.0) -> np.ndarray:
    noise = np.random.default_rng(noise_seed).normal(size=labels.shape)
    z = strength * (2.0 * labels - 1) + noise
    return z if scale == 1 else scale * z  # a large scale saturates the sigmoid, as a degenerate model does


def _probs(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(700) is inf and its sigmoid 0, as float32 saturates anyway
        return (1 / (1 + np.exp(-z))).astype(np.float32)


def write_trial(
    grid_dir,
    trial: Trial,
    *,
    dataset: str,
    strength: float,
    noise_seed: int,
    other_images: bool = False,
    logits: bool = False,
    scale: float = 1.0,
    old: bool = False,
) -> None:
    """One finished trial exactly as train.py leaves it: trial.json, predictions, metrics, history, DONE.

    logits: save them, as train.py now does; old: a metrics.json from before the degenerate record."""
    labels, patient, image_index = _test_set()
    if other_images:  # a test set drawn differently, as subset_test does per seed
        image_index = np.char.replace(image_index, "_000", "_001")
    predictions = trial_predictions(
        labels, patient, image_index, strength=strength, noise_seed=noise_seed, logits=logits, scale=scale
    )
    stats = trial_metrics(predictions, seed=trial.seed, focal=rescore.focal_terms(trial.to_dict()))
    if old:
        stats = {k: v for k, v in stats.items() if not k.startswith("degenerate")}
    store_trial(grid_dir, trial, predictions, stats, dataset=dataset)


def trial_predictions(
    labels, patient, image_index, *, strength: float, noise_seed: int, logits: bool = False, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """predictions.npz as train.py writes it: test probs (and logits) and labels, a validation slice, patients
    and names."""
    n_val = max(1, len(labels) // 4)
    z, val_z = _logits(labels, strength, noise_seed, scale), _logits(labels[:n_val], strength, noise_seed + 100, scale)
    out = {
        "probs": _probs(z),
        "labels": labels,
        "image_index": image_index,
        "patient_id": patient.astype(np.int64),
        "val_probs": _probs(val_z),
        "val_labels": labels[:n_val],
        "val_patient_id": patient[:n_val].astype(np.int64),
        "names": np.array(FINDINGS),
    }
    return {**out, "logits": z.astype(np.float32), "val_logits": val_z.astype(np.float32)} if logits else out


def trial_metrics(
    predictions: dict[str, np.ndarray], *, seed: int, n_boot: int = EVAL_BOOT, focal: dict | None = None
) -> dict:
    """metrics.json's statistics, computed from the predictions as train.py does."""
    p = predictions
    return metrics.evaluate(
        p["probs"],
        p["labels"],
        names=FINDINGS,
        patient_ids=p["patient_id"],
        val_probs=p["val_probs"],
        val_labels=p["val_labels"],
        logits=p.get("logits"),
        val_logits=p.get("val_logits"),
        n_boot=n_boot,
        seed=seed,
        **(focal or {}),
    )


def store_trial(grid_dir, trial: Trial, predictions: dict[str, np.ndarray], stats: dict, *, dataset: str) -> None:
    """Write a trial through the store's writers, the ones train.py uses, then mark it done."""
    st = store.Store(grid_dir)
    files = st.begin(trial, grid_dir.name)
    files.write_predictions(**predictions)
    m = {
        **stats,
        "key": trial.key,
        "label": trial.label,
        "dataset": dataset,
        "split": "official",
        "harness_version": "0.1.0",
        "git_commit": "0123abcd",
        "train_seconds": 12.0,
        "train_images_per_s": 100.0,
        "n_train": 640,
        "epochs_run": trial.epochs,
    }
    files.write_metrics(m)
    files.write_history(
        [
            {
                "epoch": e,
                "train_loss": 0.7 / e,
                "val_loss": 0.8 / e,
                "val_auc": 0.5 + 0.01 * e,
                "lr": 1e-4,
                "seconds": 1.0,
            }
            for e in range(1, trial.epochs + 1)
        ]
    )
    st.mark_done(trial)


def make_paper_grid(root, *, dataset: str, archs=ARCHS, losses=("bce",), name: str = "paper"):
    grid_dir = root / name
    for loss in losses:
        for pretrained in (False, True):
            for arch in archs:
                strength, noise = SIGNAL[(pretrained, arch)]
                trial = Trial(
                    dataset=dataset, arch=arch, pretrained=pretrained, loss=loss, subset_fraction=0.1, epochs=3
                )
                write_trial(grid_dir, trial, dataset=dataset, strength=strength, noise_seed=noise)
    store.Store(grid_dir).mark_failed(
        Trial(dataset=dataset, arch="resnet50", pretrained=True, epochs=3), "CUDA out of memory at batch 64"
    )
    return grid_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The paper's grid on synthetic data, and AlexNet alone on "nih", with their reports, written once."""
    out = {}
    for dataset, archs in (("synthetic", ARCHS), ("nih", ("alexnet",))):
        root = tmp_path_factory.mktemp(dataset)
        grid_dir = make_paper_grid(root, dataset=dataset, archs=archs)
        index = report.write_report(grid_dir, root / "report", n_boot=REPORT_BOOT).index
        out[dataset] = (grid_dir, index.parent, index)
    return out


def _subgrid(src, dst, *, pretrained: bool | None = None):
    """A copy of some of src's trials: a smaller grid, so each extra report stays fast."""
    for r in store.load_results(src):
        if pretrained is None or r.trial["pretrained"] == pretrained:
            shutil.copytree(r.path, dst / r.key)
    return dst


def _read(out_dir, name: str) -> str:
    return (out_dir / name).read_text()


def _results(grid_dir, *, pretrained: bool) -> dict[str, store.Result]:
    return {r.trial["arch"]: r for r in store.load_results(grid_dir) if r.trial["pretrained"] == pretrained}


# --- Tables 1-2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem,pretrained", [("table1_scratch", False), ("table2_pretrained", True)])
def test_paper_tables_hold_every_arch_with_the_metrics_and_intervals(built, stem, pretrained):
    grid_dir, out_dir, _ = built["synthetic"]
    md, tex = _read(out_dir, f"{stem}.md"), _read(out_dir, f"{stem}.tex")
    csv = pd.read_csv(out_dir / f"{stem}.csv")
    for header in ("Test BCE", "Test focal", "F1", "F1 (val. thr.)", "AUROC"):
        assert header in md and all(word in tex for word in header.split())  # LaTeX may give it two lines
    for col in (
        "bce",
        "focal",
        "f1",
        "f1_val",
        "auc",
        "auc_lo",
        "auc_hi",
        "f1_lo",
        "f1_hi",
        "p_adjusted_vs_ref",
        "p_best",
    ):
        assert col in csv.columns
    assert list(csv["arch"]) == list(ARCHS)  # the paper's row order
    for arch, r in _results(grid_dir, pretrained=pretrained).items():
        m = r.metrics
        row = csv[csv["arch"] == arch].iloc[0]
        assert row["auc"] == pytest.approx(m["auc_macro"])
        assert row["f1"] == pytest.approx(m["f1_macro"])
        assert row["f1_val"] == pytest.approx(m["thresholds"]["val_max_f1"]["f1_macro"])  # beside F1 at 0.5
        assert row["bce"] == pytest.approx(m["bce"])
        assert row["focal"] == pytest.approx(m["focal"])
        assert (row["auc_lo"], row["auc_hi"]) == pytest.approx(tuple(m["auc_macro_ci"]))
        lo, hi = m["auc_macro_ci"]
        auc_text = f"{m['auc_macro']:.3f} [{lo:.3f}, {hi:.3f}]"
        f1_text = "{:.3f} [{:.3f}, {:.3f}]".format(m["f1_macro"], *m["f1_macro_ci"])
        assert auc_text in md and f1_text in md
        for text in (md, tex):
            assert f"{m['bce']:.4f}" in text and f"{m['focal']:.4f}" in text
        # LaTeX puts the interval on a line of its own below the value
        assert f"{m['auc_macro']:.3f}" in tex and auc_text.split(" ", 1)[1] in tex and f1_text.split(" ", 1)[1] in tex
        assert report.arch_name(arch) in md
    assert "\\toprule" in tex and "\\bottomrule" in tex


def test_bold_and_dagger_only_where_significant(built):
    """Scratch models are identical (no bold, no dagger); pretrained ResNet152 is clearly best (bold, dagger)."""
    _, out_dir, _ = built["synthetic"]
    t1 = pd.read_csv(out_dir / "table1_scratch.csv")
    assert not t1["auc_best_confident"].any() and not t1["significant_vs_ref"].any()
    assert "**" not in _read(out_dir, "table1_scratch.md")
    assert "\\textbf" not in _read(out_dir, "table1_scratch.tex")
    assert report.DAGGER not in _read(out_dir, "table1_scratch.md").split("\n\n")[1]  # table body, not footnote

    t2 = pd.read_csv(out_dir / "table2_pretrained.csv").set_index("arch")
    assert t2["auc_best_confident"].to_dict() == {"alexnet": False, "resnet152": True, "inception_v3": False}
    assert t2["significant_vs_ref"].to_dict() == {"alexnet": False, "resnet152": True, "inception_v3": False}
    assert bool(t2.loc["alexnet", "reference"])
    md, tex = _read(out_dir, "table2_pretrained.md"), _read(out_dir, "table2_pretrained.tex")
    auc = t2.loc["resnet152", "auc"]
    assert f"**{auc:.3f} [" in md and re.search(rf"\\textbf\{{\S*{auc:.3f}", tex)
    assert md.count("**") == 2  # one bold cell
    body = [line for line in md.splitlines() if line.startswith("| ")]
    assert report.DAGGER in next(line for line in body if "ResNet152" in line)
    assert all(report.DAGGER not in line for line in body if "AlexNet" in line or "InceptionV3" in line)
    assert "paired bootstrap" in md and "Holm" in md  # the footnote names the test


def test_reference_row_can_be_chosen_and_out_dir_defaults_to_reports_grid(tmp_path, monkeypatch, built):
    grid_dir = _subgrid(built["synthetic"][0], tmp_path / "pretrained", pretrained=True)
    monkeypatch.chdir(tmp_path)
    index = report.write_report(grid_dir, reference="resnet152", n_boot=REPORT_BOOT).index
    assert index.resolve() == (tmp_path / "reports" / "pretrained" / "index.html").resolve()
    t2 = pd.read_csv(index.parent / "table2_pretrained.csv").set_index("arch")
    assert bool(t2.loc["resnet152", "reference"])
    assert t2["significant_vs_ref"].to_dict() == {"alexnet": True, "resnet152": False, "inception_v3": True}
    assert bool(t2.loc["resnet152", "auc_best_confident"])
    with pytest.raises(ConfigError, match="valid: alexnet, resnet152, inception_v3"):
        report.write_report(grid_dir, tmp_path, reference="densenet121")


def test_published_values_only_on_nih(built):
    _, syn, _ = built["synthetic"]
    _, nih, _ = built["nih"]
    for stem, published in (("table1_scratch", "0.469"), ("table2_pretrained", "0.6397")):
        assert published in _read(nih, f"{stem}.md") and published in _read(nih, f"{stem}.tex")
        assert "Paper AUROC" in _read(nih, f"{stem}.md")
        for ext in ("md", "tex", "csv"):
            assert published not in _read(syn, f"{stem}.{ext}")
        assert "Paper AUROC" not in _read(syn, f"{stem}.md")
        assert report.SYNTHETIC_WARNING in _read(syn, f"{stem}.md")
        assert report.SYNTHETIC_WARNING not in _read(nih, f"{stem}.md")
        # the paper's BCE beside ours, with the reason the two are not the same quantity
        assert PAPER_BCE_NOTE in _read(nih, f"{stem}.md") and "ln 2 = 0.693" in _read(nih, f"{stem}.tex")
        assert "a constant prediction c for every finding of every image scores the paper's BCE" in _read(
            nih, f"{stem}.md"
        )
        assert PAPER_BCE_NOTE not in _read(syn, f"{stem}.md")
    assert "0.80-0.82" in _read(nih, "table2_pretrained.md") and "0.80-0.82" not in _read(syn, "index.html")
    assert "SYNTHETIC phantoms, not NIH" in _read(syn, "table2_pretrained.md")
    assert "NIH ChestX-ray14" in _read(nih, "table2_pretrained.md")
    assert html.escape(report.SYNTHETIC_WARNING) in _read(syn, "index.html")
    assert "SYNTHETIC DATA" not in _read(nih, "index.html")
    csv = pd.read_csv(nih / "table2_pretrained.csv").set_index("arch")
    assert csv.loc["alexnet", "paper_auc"] == pytest.approx(0.6397)


# --- the other tables ---------------------------------------------------------------------------------


def test_per_finding_table_rows_are_findings_with_intervals(built):
    grid_dir, out_dir, _ = built["synthetic"]
    csv = pd.read_csv(out_dir / "per_finding_auroc.csv")
    assert list(csv["finding"]) == [*FINDINGS, "Mean (macro)"]
    md = _read(out_dir, "per_finding_auroc.md")
    r = _results(grid_dir, pretrained=True)["resnet152"]
    f = r.metrics["per_finding"]["Effusion"]
    assert "{:.3f} [{:.3f}, {:.3f}]".format(f["auc"], *f["auc_ci"]) in md
    assert len(csv.columns) == 1 + 4 * 6  # finding + (value, lo, hi, degenerate) per cell
    assert not csv[[c for c in csv.columns if c.endswith(" degenerate")]].any().any()


def test_comparison_table_has_the_varied_axes_and_paired_tests(built):
    _, out_dir, _ = built["synthetic"]
    comp = pd.read_csv(out_dir / "comparison.csv")
    assert {"arch", "pretrained", "auc", "auc_lo", "auc_hi"} <= set(comp.columns)
    assert "loss" not in comp.columns and "epochs" not in comp.columns  # not varied
    assert len(comp) == 6
    tests = pd.read_csv(out_dir / "paired_tests.csv")
    assert sorted(tests["axis"].value_counts().items()) == [("arch", 6), ("pretrained", 3)]
    assert (tests["p_adjusted"] >= tests["p"]).all()
    pre = tests[tests["axis"] == "pretrained"]
    assert (pre["diff"] > 0.1).all() and (pre["p_adjusted"] < 0.05).all()
    assert list(pre["a"]) == [f"pretrained {report.arch_name(a)}" for a in ARCHS]


def _concluded(out_dir) -> str:
    return _read(out_dir, "report.md").split("## What can be concluded")[1].split("\n## ")[0]


def test_conclusions_claim_only_what_the_tests_support(built):
    _, out_dir, _index = built["synthetic"]
    text = _concluded(out_dir)
    # Pretrained beats scratch for every arch: one finding along the axis, with its largest effect.
    assert "Initialisation: pretrained beats scratch in 3 of 3 settings" in text
    # Identical scratch models: no winner; the pretrained AlexNet and InceptionV3 are identical too.
    assert "Architecture: ResNet152 beats AlexNet (pretrained; 1 of 2 settings)" in text
    assert "ResNet152 beats InceptionV3 (pretrained; 1 of 2 settings)" in text
    assert "Architecture: no significant difference in the other 4 pairs" in text
    assert "AlexNet beats" not in text and "InceptionV3 beats" not in text
    # Placeholder weights: the summary says so before any sentence about pretraining.
    assert text.index("not ImageNet's; nothing here is a claim") < text.index("pretrained beats scratch")
    # The same sentences head the page, and the HTML gives them too.
    md = _read(out_dir, "report.md")
    assert md.index("## Summary") < md.index("## Methods") < md.index("## Table 1")
    assert md.split("## Summary")[1].split("\n## ")[0] == text
    assert "pretrained beats scratch" in _read(out_dir, "index.html")


_BEATS = re.compile(r" beats \S+(?: in (\d+) of \d+ settings)?")  # a finding: one test, or k of them
_NULL = re.compile(r"no significant difference (?:in (?:the other )?(\d+) pairs|between)")


def _counts(text: str) -> tuple[int, int]:
    """(significant, not significant) tests the summary's sentences account for."""
    wins = sum(int(m.group(1) or 1) for m in _BEATS.finditer(text))
    null = sum(int(m.group(1) or 1) for m in _NULL.finditer(text))
    return wins, null


def test_rows_that_did_not_learn_are_named_with_their_budget_and_the_least_that_taught_another(built):
    _, out_dir, _ = built["synthetic"]
    scratch, pretrained = _read(out_dir, "table1_scratch.md"), _read(out_dir, "table2_pretrained.md")
    note = next(line for line in scratch.splitlines() if line.startswith("Not above chance"))
    for name in ("AlexNet", "ResNet152", "InceptionV3"):  # the scratch rows: AUROC about 0.49 [0.46, 0.52]
        assert f"{name} 0.4" in note
    # 3 epochs of 640 images in batches of 64: 30 steps, for the rows that learned and for those that did not.
    assert "after 30 optimizer steps (3 epochs of 640 images at the arch's own size)" in note
    assert "rows here learned with AlexNet 30, ResNet152 30, InceptionV3 30 optimizer steps or more" in note
    assert "Not above chance" not in pretrained
    assert (
        "too little training to judge the model: 1 of 2 AlexNet settings, 1 of 2 ResNet152 settings, 1 of 2 "
        "InceptionV3 settings (the tables' notes"
    ) in _concluded(out_dir)


def test_every_pair_has_one_verdict_everywhere_it_appears(built):
    """Tables, paired tests and conclusions read one family's computation: one p, one adjusted p, one verdict."""
    _, out_dir, _ = built["synthetic"]
    tests = pd.read_csv(out_dir / "paired_tests.csv")
    assert list(tests.columns[:10]) == [
        "a",
        "b",
        "axis",
        "diff",
        "ci_low",
        "ci_high",
        "p",
        "p_adjusted",
        "family",
        "significant",
    ]
    assert (tests["family"] == len(tests)).all()  # one family: every test of the report, each pair once
    pairs = [frozenset((a, b)) for a, b in zip(tests["keys_a"], tests["keys_b"])]
    assert len(set(pairs)) == len(pairs)
    verdict = dict(zip(pairs, tests["significant"]))
    excludes_0 = (tests["ci_low"] > 0) | (tests["ci_high"] < 0)
    assert (tests["significant"] == ((tests["p_adjusted"] < 0.05) & excludes_0 & ~tests["degenerate"])).all()
    for stem in ("table1_scratch", "table2_pretrained"):
        t = pd.read_csv(out_dir / f"{stem}.csv")
        ref = t.loc[t["reference"], "keys"].item()
        assert t["p_best"].sum() == pytest.approx(1.0)
        for _, row in t[~t["reference"]].iterrows():
            assert bool(row["significant_vs_ref"]) == verdict[frozenset((row["keys"], ref))], row["model"]
            assert row["p_adjusted_vs_ref"] in set(tests["p_adjusted"])
    # The summary accounts for every test along an axis: each significant one in a finding, the rest counted.
    single = tests[~tests["axis"].str.contains("+", regex=False) & ~tests["degenerate"]]
    assert _counts(_concluded(out_dir)) == (int(single["significant"].sum()), int((~single["significant"]).sum()))


def test_failed_trials_are_listed_with_reasons(built):
    _, _out_dir, index = built["synthetic"]
    page = index.read_text()
    assert "Failed trials (1)" in page and "CUDA out of memory at batch 64" in page


# --- figures and the page -----------------------------------------------------------------------------


FIGURE = re.compile(r"<figure><img src='([^']+)' alt='([^']*)'><figcaption>(.*?)</figcaption></figure>")


def _figures_on(page: str) -> list[tuple[str, str, str]]:
    """(png, caption, the figcaption's whole text) of each figure on a page, in page order."""
    return [(png, html.unescape(alt), body) for png, alt, body in FIGURE.findall(page)]


def test_figures_are_pngs_and_all_on_the_page(built):
    _, out_dir, index = built["synthetic"]
    expected = {
        "fig1_scratch.png",
        "fig2_pretrained.png",
        "fig3_training_loss.png",
        "per_finding_auroc.png",
        "calibration.png",
    } | {f"roc_{a}.png" for a in ARCHS}
    pngs = {p.name for p in out_dir.glob("*.png")}
    assert expected <= pngs
    page = index.read_text()
    for name in pngs:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{name}'" in page
    assert "src='/" not in page and "src='http" not in page  # self-contained, relative paths


@pytest.mark.parametrize("dataset", ["synthetic", "nih"])
def test_every_figure_has_a_pdf_twin_a_link_and_a_numbered_caption(built, dataset):
    _, out_dir, index = built[dataset]
    page, md = index.read_text(), _read(out_dir, "report.md")
    shown = _figures_on(page)
    assert {png for png, _, _ in shown} == {p.name for p in out_dir.glob("*.png")}
    numbers = []
    for png, caption, body in shown:
        pdf = png[:-4] + ".pdf"
        assert (out_dir / pdf).read_bytes()[:5] == b"%PDF-", pdf
        assert body.endswith(f" <a href='{pdf}'>PDF</a>") and f"({png}) [PDF]({pdf})" in md
        found = re.match(r"Figure (S?\d+)\. \S", caption)
        assert found, caption
        numbers.append(found.group(1))
    assert sorted(n for n in numbers if not n.startswith("S")) == ["1", "2", "3"]  # the paper's, without CAM
    supplementary = [n for n in numbers if n.startswith("S")]
    assert supplementary == [f"S{i}" for i in range(1, len(supplementary) + 1)]  # consecutive, in page order
    assert len(supplementary) == 2 + (len(ARCHS) if dataset == "synthetic" else 1)  # heat map, ROC, calibration


def test_roc_and_calibration_captions_name_the_trial_shown_and_how_it_was_chosen(built):
    grid, _, index = built["synthetic"]
    captions = {png: caption for png, caption, _ in _figures_on(index.read_text())}
    best = _results(grid, pretrained=True)  # the fixture's pretrained rows are each arch's best
    for arch, r in best.items():
        name = f"pretrained {report.arch_name(arch)} (trial {r.key})"
        caption = captions[f"roc_{arch}.png"]
        assert name in caption, caption
        assert f"the highest mean AUROC ({r.metrics['auc_macro']:.3f}) of 2 {report.arch_name(arch)}" in caption
        assert name in captions["calibration.png"]
        scratch = _results(grid, pretrained=False)[arch]
        assert scratch.key not in caption and scratch.key not in captions["calibration.png"]


def test_the_bar_figures_second_panel_is_f1_at_validation_thresholds(degenerate):
    grid, _, saved = degenerate
    results = _results(grid, pretrained=True)
    auc, f1 = saved["fig2_pretrained"].axes
    assert auc.get_ylabel() == "mean AUROC" and f1.get_ylabel() == "macro F1 at validation thresholds"
    for ax, value in ((auc, lambda m: m["auc_macro"]), (f1, lambda m: m["thresholds"]["val_max_f1"]["f1_macro"])):
        heights = [p.get_height() for p in ax.patches]
        assert heights == pytest.approx([value(results[a].metrics) for a in ARCHS])
    # not the empty panel F1 at 0.5 gives short runs: the fixture's values are far from 0
    assert min(p.get_height() for p in f1.patches) > 0.2


def test_on_nih_the_papers_f1_is_labelled_as_at_0_5_beside_ours(tmp_path):
    grid = _subgrid(make_paper_grid(tmp_path, dataset="nih", archs=("alexnet",)), tmp_path / "one", pretrained=True)
    saved = report_keeping_figures(grid, tmp_path / "out", n_boot=100, progress=False)
    auc, f1 = saved["fig2_pretrained"].axes
    assert [t.get_text() for t in auc.get_legend().get_texts()] == ["this run", "paper"]
    assert [t.get_text() for t in f1.get_legend().get_texts()] == ["this run (validation thresholds)", PAPER_F1]
    assert [p.get_height() for p in f1.patches][1] == pytest.approx(0.1596)  # the paper's Table 2 AlexNet F1
    assert "its F1 is at the fixed 0.5 threshold" in _read(tmp_path / "out", "index.html")


@pytest.fixture(scope="module")
def losses(tmp_path_factory):
    """arch x pretrained x loss, with one arch trained for a single epoch; the figures kept for inspection."""
    root = tmp_path_factory.mktemp("losses")
    grid = root / "grid"
    labels, patient, image_index = _test_set()
    for arch, epochs in (("alexnet", 3), ("resnet152", 1)):
        for pretrained in (False, True):
            for loss in ("bce", "focal"):
                trial = Trial(dataset="nih", arch=arch, pretrained=pretrained, loss=loss, epochs=epochs)
                p = trial_predictions(labels, patient, image_index, strength=0.5 + pretrained, noise_seed=1)
                store_trial(grid, trial, p, trial_metrics(p, seed=0, n_boot=20), dataset="nih")
    saved = report_keeping_figures(grid, root / "out", n_boot=20, progress=False)
    return root / "out", saved


def _lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_the_summary_of_a_three_axis_grid_is_a_few_sentences_one_or_two_per_axis(losses):
    out, _ = losses
    md = (out / "report.md").read_text()
    summary = md.split("## Summary")[1].split("\n## ")[0]
    sentences = [line for line in summary.splitlines() if line.startswith("- ")]
    assert 3 <= len(sentences) <= 8, sentences
    axes = [line.split(":")[0][2:] for line in sentences if ":" in line.split(" ")[1]]
    assert set(axes) <= {"Architecture", "Initialisation", "Loss"}  # epochs follows arch: no axis of its own
    assert all(axes.count(a) <= 2 for a in axes)
    assert summary == md.split("## What can be concluded")[1].split("\n## ")[0]  # the page closes with it


def test_the_loss_figure_has_a_panel_per_loss_and_one_for_validation(losses):
    out, saved = losses
    fig = saved["fig3_training_loss"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["training loss: bce", "training loss: focal", "validation loss: BCE"]
    bce, focal, val = fig.axes
    assert len(_lines(bce)) == len(_lines(focal)) == 4 and len(_lines(val)) == 8
    assert "Figure 3. Training and validation loss" in fig.get_suptitle()
    caption = next(c for png, c, _ in _figures_on(_read(out, "index.html")) if png == "fig3_training_loss.png")
    assert caption.startswith("Figure 3. Loss per epoch of every trial (8)")
    assert "Colour: arch; line style: pretrained; marker: loss" in caption


def test_the_loss_figures_series_are_told_apart_and_single_epochs_show(losses):
    _, saved = losses
    fig = saved["fig3_training_loss"]
    val = fig.axes[-1]
    triples = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in _lines(val)]
    assert len(set(triples)) == len(triples) == 8
    assert len({c for c, _, _ in triples}) == 2  # colour: the two archs
    one_epoch = [line for ax in fig.axes for line in _lines(ax) if len(line.get_xdata()) == 1]
    assert len(one_epoch) == 4 + 4  # ResNet152's four trials, in their training panels and in validation
    assert all(line.get_marker() not in ("", "None", None) for ax in fig.axes for line in _lines(ax))
    assert len(fig.legends[0].get_texts()) == 8


def test_series_styles_fall_back_to_one_each_where_the_axes_do_not_fit():
    rows = [{"arch": "alexnet", "lr": 10.0**-k} for k in range(12)]  # 12 values: more than there are colours
    enc = drawing.encode(rows, ["lr"])
    assert enc.key == [] and "its own colour" in enc.words()
    assert len({(s.color, s.linestyle, s.marker) for s in enc.styles}) == 12
    rows = [{"a": i % 2, "b": i // 2 % 2, "c": i // 4 % 2, "d": i // 8} for i in range(16)]  # four axes
    assert drawing.encode(rows, ["a", "b", "c", "d"]).key == []
    assert drawing.encode(rows[:8], ["a", "b", "c", "d"]).key == ["colour: a", "line style: b", "marker: c"]
    assert len({(s.color, s.linestyle, s.marker) for s in drawing.styles(256)}) == 256


def test_index_is_headed_by_dataset_grid_commit_and_date(built):
    _, _, index = built["nih"]
    page = index.read_text()
    head = page.split("<section>")[0]
    for text in ("NIH ChestX-ray14", "paper", "0123abcd", "Report date"):
        assert text in head
    assert "<table>" in page and "Table 1." in page and "Table 2." in page


# --- recompute, seeds, errors -------------------------------------------------------------------------


def test_recompute_gives_the_same_numbers(tmp_path, built):
    src, out_dir, _ = built["nih"]
    grid_dir = tmp_path / "paper"
    shutil.copytree(src, grid_dir)
    before = {r.key: r.metrics for r in store.load_results(grid_dir)}
    victim = next(iter(before))
    spoiled = {**before[victim], "auc_macro": 0.123, "auc_macro_ci": [0.1, 0.2]}
    store.TrialFiles(grid_dir / victim).replace_metrics(spoiled)

    report.write_report(grid_dir, tmp_path / "out", recompute=True, n_boot=REPORT_BOOT)
    after = {r.key: r.metrics for r in store.load_results(grid_dir)}
    assert after == json.loads(json.dumps(before))  # the spoiled file is rebuilt exactly, the rest unchanged
    for stem in ("table1_scratch", "table2_pretrained", "per_finding_auroc", "comparison", "paired_tests"):
        assert _read(tmp_path / "out", f"{stem}.csv") == _read(out_dir, f"{stem}.csv")


def test_several_seeds_show_mean_std_and_combined_interval(tmp_path):
    grid_dir = tmp_path / "seeds"
    for seed in (0, 1):
        trial = Trial(dataset="synthetic", arch="alexnet", pretrained=True, epochs=2, seed=seed)
        write_trial(grid_dir, trial, dataset="synthetic", strength=0.8, noise_seed=10 + seed)
    index = report.write_report(grid_dir, tmp_path / "out", n_boot=100).index
    csv = pd.read_csv(tmp_path / "out" / "table2_pretrained.csv").set_index("arch")
    assert list(csv["seeds"]) == [2]
    aucs = [r.metrics["auc_macro"] for r in store.load_results(grid_dir)]
    assert aucs[0] != aucs[1]
    assert csv.loc["alexnet", "auc"] == pytest.approx(np.mean(aucs))
    assert csv.loc["alexnet", "auc_std"] == pytest.approx(np.std(aucs, ddof=1))
    lo, hi = csv.loc["alexnet", "auc_lo"], csv.loc["alexnet", "auc_hi"]
    assert lo < min(aucs) and max(aucs) < hi  # the combined interval holds both seeds' spread
    md = _read(tmp_path / "out", "table2_pretrained.md")
    assert f"{np.mean(aucs):.3f} {report.PM} {np.std(aucs, ddof=1):.3f} [{lo:.3f}, {hi:.3f}]" in md
    assert "no such results" in index.read_text()  # no scratch trials: Table 1 is absent, and says so


def test_seeds_on_different_test_images_are_neither_combined_nor_tested(tmp_path):
    grid_dir = tmp_path / "subsets"
    for arch in ("alexnet", "resnet152"):
        for seed in (0, 1):
            trial = Trial(dataset="synthetic", arch=arch, pretrained=True, epochs=1, seed=seed, subset_test=True)
            write_trial(grid_dir, trial, dataset="synthetic", strength=0.8, noise_seed=seed, other_images=seed == 1)
    report.write_report(grid_dir, tmp_path / "out", n_boot=50)
    csv = pd.read_csv(tmp_path / "out" / "table2_pretrained.csv")
    assert csv["auc_lo"].isna().all() and not csv["significant_vs_ref"].any()
    assert "different test images" in _read(tmp_path / "out", "table2_pretrained.md")
    assert len(pd.read_csv(tmp_path / "out" / "paired_tests.csv")) == 0


def test_missing_or_empty_results_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such results directory"):
        report.write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished or failed trials"):
        report.write_report(tmp_path / "empty")


REPORT_MODULES = (
    "paper",
    "cells",
    "tables",
    "context",
    "flags",
    "build",
    "paired",
    "conclusions",
    "testset",
    "drawing",
    "figures",
    "recorded",
    "crossdata",
    "methods",
    "page",
    "write",
)


def test_report_modules_import_one_way():
    """Each module of the report package imports only those before it in REPORT_MODULES, and is kept short."""
    folder = Path(report.__file__).parent
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted([*REPORT_MODULES, "__init__"])
    for i, name in enumerate(REPORT_MODULES):
        source = (folder / f"{name}.py").read_text()
        assert len(source.splitlines()) <= 400, name
        tree = ast.parse(source)
        assert ast.get_docstring(tree), name
        used = {
            n.module.rsplit(".", 1)[1]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("harness.report.")
        }
        assert used <= set(REPORT_MODULES[:i]), f"{name} imports {sorted(used - set(REPORT_MODULES[:i]))}"


def test_unverified_pretrained_weights_are_flagged(tmp_path):
    """Pretrained rows made with a file that is not torchvision's ImageNet checkpoint say so, loudly."""
    grid = tmp_path / "weights"
    for pretrained in (False, True):
        write_trial(
            grid,
            Trial(dataset="nih", arch="alexnet", pretrained=pretrained, epochs=3),
            dataset="nih",
            strength=2.0,
            noise_seed=1,
        )
    index = report.write_report(grid, tmp_path / "out", n_boot=REPORT_BOOT).index
    page = index.read_text()
    assert "UNVERIFIED WEIGHTS" in page
    table2 = (tmp_path / "out" / "table2_pretrained.md").read_text()
    assert "UNVERIFIED WEIGHTS" in table2
    for r in store.load_results(grid):  # now mark every weights file verified: the warning goes away
        if r.trial.get("pretrained"):
            m = dict(r.metrics, weights={"imagenet_verified": True})
            r.files.replace_metrics(m)
    assert (
        "UNVERIFIED WEIGHTS" not in report.write_report(grid, tmp_path / "out2", n_boot=REPORT_BOOT).index.read_text()
    )


def test_results_started_from_nih_trained_weights_carry_a_warning(tmp_path):
    """A file torchxrayvision trained on a random NIH split may hold the test images: the page and every table say so."""
    from harness.models import start

    grid = tmp_path / "nihw"
    nih_file = "/w/nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    trials = [Trial(dataset="nih", arch="alexnet", epochs=3)] + [
        Trial(dataset="nih", arch="alexnet", epochs=3, weights=w, weights_sha256=d * 64)
        for w, d in ((nih_file, "a"), ("/w/chex-densenet121.pt", "b"))
    ]
    for i, trial in enumerate(trials):
        write_trial(grid, trial, dataset="nih", strength=2.0, noise_seed=i)
    by_key = {t.key: t for t in trials}
    for r in store.load_results(grid):
        if r.trial.get("weights"):
            r.files.replace_metrics(dict(r.metrics, weights=start.provenance(by_key[r.key])))
    out = tmp_path / "out"
    page = report.write_report(grid, out, n_boot=REPORT_BOOT).index.read_text()
    warning = next(line for line in page.splitlines() if "STARTING WEIGHTS THAT MAY HAVE SEEN NIH TEST IMAGES" in line)
    assert (
        "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt (torchxrayvision densenet121-res224-nih" in warning
    )
    assert "chex-densenet121" not in warning  # CheXpert-only weights are not flagged
    assert "/w/chex-densenet121.pt (SHA-256 bbbbbbbbbbbb...)" in page  # the methods name every file
    assert "from a weights file: freeze 0: every layer trains in every arch" in page  # not counted as scratch
    comparison = (out / "comparison.md").read_text()
    assert "STARTING WEIGHTS THAT MAY HAVE SEEN NIH" in comparison and "| chex-densenet121.pt |" in comparison
    table1 = (out / "table1_scratch.md").read_text()
    rows = [line for line in table1.splitlines() if line.startswith("| AlexNet")]
    assert len(rows) == 1 and "MAY HAVE SEEN NIH" not in table1, "file-started trials are not from scratch"
    for r in store.load_results(grid):  # the same results started from files nobody flags: no warning
        if r.trial.get("weights"):
            r.files.replace_metrics(dict(r.metrics, weights=dict(r.metrics["weights"], nih_overlap=None)))
    page = report.write_report(grid, tmp_path / "out2", n_boot=REPORT_BOOT).index.read_text()
    assert "MAY HAVE SEEN NIH" not in page


def test_cam_scores_and_figures_are_in_the_report(tmp_path):
    """Trials scored with cam: true get an explainability table; `harness cam` figures are embedded."""
    grid = tmp_path / "cam"
    for arch in ("alexnet", "resnet50"):
        write_trial(
            grid,
            Trial(dataset="synthetic", arch=arch, epochs=3, cam=True),
            dataset="synthetic",
            strength=2.0,
            noise_seed=3,
        )
    results = store.load_results(grid)
    for i, r in enumerate(results):
        overall = {
            "n": 40,
            "pointing": 0.5 + 0.1 * i,
            "pointing_chance": 0.12,
            "energy": 0.3,
            "energy_chance": 0.1,
            "iou": 0.2,
            "iou_chance": 0.1,
        }
        r.files.replace_metrics(dict(r.metrics, cam={"method": "gradcam", "overall": overall}))
    (results[0].path / "cam").mkdir()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    fig.savefig(results[0].path / "cam" / "grid.png")
    plt.close(fig)
    index = report.write_report(grid, tmp_path / "out", n_boot=REPORT_BOOT).index
    table = (tmp_path / "out" / "cam_scores.md").read_text()
    assert "0.500 (0.120)" in table and "0.600 (0.120)" in table and "pointing game" in table
    copied = f"cam_{results[0].key}_grid.png"
    assert (tmp_path / "out" / copied).is_file() and copied in index.read_text()


def test_every_registered_arch_has_a_display_name():
    from harness import models  # torch, in this test only: the report itself never imports it

    names = {a: report.arch_name(a) for a in models.MODELS}
    assert all(shown != arch for arch, shown in names.items()), names
    assert len(set(names.values())) == len(names)
    assert names["inception_v3"] == "InceptionV3" and names["efficientnet_b0"] == "EfficientNetB0"


# --- damaged trials: named, left out, healed where the predictions allow --------------------------------


def _report_cli(capsys, grid_dir, out, *flags) -> tuple[int, list[str]]:
    code = cli.main(["report", str(grid_dir), "--out", str(out), *flags])
    return code, capsys.readouterr().err.splitlines()


def _keys(out_dir) -> set[str]:
    return set(pd.read_csv(out_dir / "comparison.csv")["key"])


def test_n_boot_sets_every_resample_of_the_report_and_too_few_is_one_line(tmp_path, capsys, built):
    grid_dir = built["nih"][0]
    code, err = _report_cli(capsys, grid_dir, tmp_path / "few", "--n-boot", "50")
    assert code == 2 and err == [
        "harness: error: --n-boot 50: too few resamples for a 95% interval's tails; valid: an integer >= 100 "
        "(default 1000)"
    ]
    assert not (tmp_path / "few").exists()
    code, _ = _report_cli(capsys, grid_dir, tmp_path / "out", "--n-boot", "120")
    assert code == 0 and "(120 resamples)" in _read(tmp_path / "out", "paired_tests.md")
    assert "of the report's 120" in _read(tmp_path / "out", "test_set.md")


def test_a_corrupt_metrics_file_is_named_left_out_and_healed_by_recompute(tmp_path, capsys, built):
    grid_dir = shutil.copytree(built["nih"][0], tmp_path / "paper")
    results = store.load_results(grid_dir)
    victim, kept = results[0], results[1]
    metrics_path = victim.files.path / store.TrialFiles.METRICS
    metrics_path.write_text('{"auc_macro": 0.9,')

    code, err = _report_cli(capsys, grid_dir, tmp_path / "out")
    assert code == cli.EXIT_FAILED
    named = [line for line in err if victim.key in line]
    assert named == [
        f"harness: broken trial left out of the report: {victim.key}: {metrics_path}: unreadable "
        "(JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 19 (char 18))"
    ]
    assert not any("Traceback" in line for line in err)
    assert _keys(tmp_path / "out") == {kept.key}  # the rest of the report is written
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Broken trials, left out (1)" in page and "1 broken (left out)" in page

    code, err = _report_cli(capsys, grid_dir, tmp_path / "healed", "--recompute")
    assert code == cli.EXIT_OK
    assert f"harness: healed {victim.key}: metrics recomputed from its predictions" in err
    assert _keys(tmp_path / "healed") == {kept.key, victim.key}
    healed = store.TrialFiles(victim.path)
    assert healed.problems() == [] and healed.read_metrics()["auc_macro"] == pytest.approx(victim.metrics["auc_macro"])
    assert "reading trials" in "".join(err) and "paired tests" in "".join(err)  # the progress bars


def test_truncated_predictions_are_named_and_left_out_even_with_recompute(tmp_path, capsys, built):
    grid_dir = shutil.copytree(built["nih"][0], tmp_path / "paper")
    victim, kept = store.load_results(grid_dir)
    path = victim.files.path / store.TrialFiles.PREDICTIONS
    path.write_bytes(path.read_bytes()[:100])
    for flags in ((), ("--recompute",)):
        code, err = _report_cli(capsys, grid_dir, tmp_path / "out", *flags)
        assert code == cli.EXIT_FAILED
        line = f"harness: broken trial left out of the report: {victim.key}: {path}: changed since the trial finished"
        assert [e for e in err if victim.key in e] == [line + " (checksum differs)"]
        assert _keys(tmp_path / "out") == {kept.key}


# --- scale --------------------------------------------------------------------------------------------


def test_a_long_axis_is_tested_between_neighbouring_values(tmp_path):
    """All pairs up to six values of an axis; beyond, each with the next: the tests grow linearly with the grid."""
    grid_dir = tmp_path / "sweep"
    lrs = [1e-5 * (i + 1) for i in range(ALL_PAIRS_UP_TO + 2)]
    for i, lr in enumerate(lrs):
        trial = Trial(dataset="synthetic", arch="alexnet", pretrained=True, epochs=1, lr=lr)
        write_trial(grid_dir, trial, dataset="synthetic", strength=0.5, noise_seed=i)
    report.write_report(grid_dir, tmp_path / "out", n_boot=20, progress=False)
    tests = pd.read_csv(tmp_path / "out" / "paired_tests.csv")
    steps = tests.iloc[: len(lrs) - 1]
    assert list(steps["a"]) == [f"AlexNet (lr={lr:g})" for lr in lrs[:-1]]
    assert list(steps["b"]) == [f"AlexNet (lr={lr:g})" for lr in lrs[1:]]
    # Table 2 states each row against its reference (the first): those join the one family, each pair once.
    against_ref = tests.iloc[len(lrs) - 1 :]
    assert list(against_ref["a"]) == [f"AlexNet (lr={lr:g})" for lr in lrs[2:]]
    assert set(against_ref["b"]) == {f"AlexNet (lr={lrs[0]:g})"}
    assert list(tests["axis"]) == ["lr"] * len(tests) and (tests["family"] == 2 * len(lrs) - 3).all()
    assert "tested against the next value only: lr" in _read(tmp_path / "out", "paired_tests.md")


# --- single-seed numbers are those of the report before seed-level statistics ---------------------------

BASELINE = (
    Path(__file__).parent / "report_baseline"
)  # CSV tables the report writes for `built` (p-values as of the bootstrap test)


@pytest.mark.parametrize("dataset", ["synthetic", "nih"])
def test_single_seed_csv_tables_are_byte_identical_to_before(built, dataset):
    """Every column the tables had before keeps every byte; what is new comes in new columns only."""
    _, out_dir, _ = built[dataset]
    stems = sorted(p.name for p in (BASELINE / dataset).glob("*.csv"))
    assert stems == sorted(
        f"{s}.csv" for s in ("comparison", "paired_tests", "per_finding_auroc", "table1_scratch", "table2_pretrained")
    )
    for name in stems:
        before = (BASELINE / dataset / name).read_bytes()
        old_columns = list(pd.read_csv(BASELINE / dataset / name, dtype=str, keep_default_na=False).columns)
        now = pd.read_csv(out_dir / name, dtype=str, keep_default_na=False)  # text as written, nothing parsed
        assert now[old_columns].to_csv(index=False).encode() == before, name


# --- degenerate output --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    """Table 2's archs with InceptionV3 saturated (logits near +-700, as the scratch InceptionV3 that motivated
    the check) and ranking the labels best of all; Table 1 with a saturated InceptionV3 stored before logits and
    the degenerate record were. The report's figures are kept for inspection."""
    root = tmp_path_factory.mktemp("degenerate")
    grid = root / "grid"
    for arch, strength, scale in (("alexnet", 0.8, 1), ("resnet152", 1.5, 1), ("inception_v3", 2.0, 350)):
        trial = Trial(dataset="synthetic", arch=arch, pretrained=True, epochs=3)
        write_trial(grid, trial, dataset="synthetic", strength=strength, noise_seed=2, logits=True, scale=scale)
    for arch, strength, scale in (("alexnet", 0.0, 1), ("inception_v3", 0.5, 350)):
        trial = Trial(dataset="synthetic", arch=arch, pretrained=False, epochs=3)
        write_trial(grid, trial, dataset="synthetic", strength=strength, noise_seed=1, scale=scale, old=True)
    saved = report_keeping_figures(grid, root / "out", n_boot=REPORT_BOOT, progress=False)
    return grid, root / "out", saved


def _body(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Model")]


def test_a_degenerate_trial_is_marked_explained_and_never_best(degenerate):
    grid, out, _ = degenerate
    t2 = pd.read_csv(out / "table2_pretrained.csv").set_index("arch")
    assert t2["degenerate"].to_dict() == {"alexnet": False, "resnet152": False, "inception_v3": True}
    assert t2.loc["inception_v3", "auc"] == t2["auc"].max()  # the highest AUROC of the table ...
    assert not t2.loc["inception_v3", "auc_best_confident"]  # ... is not the best: ResNet152 is
    assert t2.loc["resnet152", "auc_best_confident"]
    md, tex = _read(out, "table2_pretrained.md"), _read(out, "table2_pretrained.tex")
    row = next(line for line in _body(md) if "InceptionV3" in line)
    assert row.startswith(f"| InceptionV3{DDAGGER} |") and "**" not in row
    assert row.count(DDAGGER) == 6  # the name and each of its five values
    assert all(DDAGGER not in line for line in _body(md) if "InceptionV3" not in line)
    d = _results(grid, pretrained=True)["inception_v3"].metrics["degenerate"]
    assert d["degenerate"] and d["saturated_share"] > 0.9 and d["median_abs_logit"] > 500
    found = (
        f"InceptionV3: {d['saturated_share']:.0%} of test outputs saturated (median |logit| "
        f"{d['median_abs_logit']:.0f}), 14 of 14 findings degenerate; its AUROC ranks the logits"
    )
    assert found in md
    assert "bn_recalibrate: 16" in md and "lower learning rate" in md and "more training steps" in md
    assert "\\ddagger" in tex and "\\textbar{}logit\\textbar{}" in tex

    # Table 1: an old result without the record is judged from its predictions, its probabilities only
    t1 = pd.read_csv(out / "table1_scratch.csv").set_index("arch")
    assert t1["degenerate"].to_dict() == {"alexnet": False, "inception_v3": True}
    assert "no logits saved: its AUROC ranks float32 probabilities" in _read(out, "table1_scratch.md")

    comp = pd.read_csv(out / "comparison.csv").set_index("key")
    assert sorted(comp[comp["degenerate"]]["label"]) == [
        "inception_v3/pretrained/bce/freeze0/sub1/seed0",
        "inception_v3/scratch/bce/freeze0/sub1/seed0",
    ]


def test_degenerate_findings_are_marked_in_the_per_finding_table(degenerate):
    _, out, _ = degenerate
    csv = pd.read_csv(out / "per_finding_auroc.csv").set_index("finding")
    assert csv["pretrained InceptionV3 degenerate"].all() and not csv["pretrained AlexNet degenerate"].any()
    md = _read(out, "per_finding_auroc.md")
    assert f"| pretrained InceptionV3{DDAGGER} |" in md.splitlines()[2]  # the column's header
    effusion = next(line for line in md.splitlines() if line.startswith("| Effusion"))
    assert effusion.count(DDAGGER) == 2  # both InceptionV3 cells
    assert "on a value: that finding's output is degenerate" in md


def test_paired_tests_with_a_degenerate_cell_are_flagged_and_name_no_winner(degenerate):
    _, out, _ = degenerate
    tests = pd.read_csv(out / "paired_tests.csv")
    involved = tests["a"].str.contains("InceptionV3") | tests["b"].str.contains("InceptionV3")
    assert involved.any() and (tests["degenerate"] == involved).all()
    md = _read(out, "paired_tests.md")
    for line in _body(md):
        assert (DDAGGER in line) == ("InceptionV3" in line)
    assert "are never significant" in md
    assert not tests.loc[involved, "significant"].any()  # whatever the p: no verdict rests on a degenerate output
    for stem in ("table1_scratch", "table2_pretrained"):  # and no dagger on a double-dagger row
        for line in _body(_read(out, f"{stem}.md")):
            assert not (DDAGGER in line and report.DAGGER in line), line
    text = _concluded(out)
    assert "InceptionV3 beats" not in text and "beats InceptionV3" not in text
    n = int(involved.sum())
    assert (
        f"{n} tests involving pretrained InceptionV3{DDAGGER}, scratch InceptionV3{DDAGGER} (degenerate output)" in text
    )
    assert "ResNet152 beats AlexNet (pretrained" in text


def test_degenerate_bars_are_hatched_and_the_heat_map_marks_cells(degenerate):
    _, out, saved = degenerate
    for ax in saved["fig2_pretrained"].axes:  # AUC and F1
        assert DEGENERATE_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
        assert [p.get_hatch() for p in ax.patches] == [None, None, "//"]  # InceptionV3's bar only
        assert f"InceptionV3{DDAGGER}" in [t.get_text() for t in ax.get_xticklabels()]
    ax = saved["per_finding_auroc"].axes[0]
    marked = [t.get_text() for t in ax.texts if DDAGGER in t.get_text()]
    hatched = [p for p in ax.patches if p.get_hatch() == "xx"]
    assert len(marked) == len(hatched) == 2 * len(FINDINGS) and DDAGGER in ax.get_title()
    assert f"pretrained InceptionV3{DDAGGER}" in [t.get_text() for t in ax.get_xticklabels()]
    page = _read(out, "index.html").lower()
    assert f"hatched bars ({DDAGGER}): degenerate output" in page and f"hatched, {DDAGGER}: degenerate" in page
    # the ROC figure of each arch is its best cell that is not degenerate, where it has one
    assert "roc_inception_v3" in saved and "roc_alexnet" in saved


# --- seeds --------------------------------------------------------------------------------------------

SEED_STRENGTHS = {"alexnet": (0.4, 0.8, 1.2), "resnet152": (0.9, 1.3, 1.7)}  # seeds that learn differently


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Two pretrained archs, three seeds each, with logits."""
    root = tmp_path_factory.mktemp("seeded")
    grid = root / "grid"
    for arch, strengths in SEED_STRENGTHS.items():
        for seed, strength in enumerate(strengths):
            trial = Trial(dataset="synthetic", arch=arch, pretrained=True, epochs=2, seed=seed)
            write_trial(grid, trial, dataset="synthetic", strength=strength, noise_seed=20 + seed, logits=True)
    report.write_report(grid, root / "out", n_boot=200, progress=False)
    return grid, root / "out"


def _by_arch(grid) -> dict[str, list[store.Result]]:
    out: dict[str, list[store.Result]] = {}
    for r in sorted(store.load_results(grid), key=lambda r: r.trial["seed"]):
        out.setdefault(r.trial["arch"], []).append(r)
    return out


def test_a_seeded_cell_is_the_mean_of_its_seeds_with_a_seed_then_patient_interval(seeded):
    grid, out = seeded
    t2 = pd.read_csv(out / "table2_pretrained.csv").set_index("arch")
    for arch, results in _by_arch(grid).items():
        per_seed = []
        for r in results:
            p = r.predictions()
            per_seed.append(np.mean([roc_auc_score(p["labels"][:, f], p["logits"][:, f]) for f in range(14)]))
        assert t2.loc[arch, "seeds"] == 3
        assert t2.loc[arch, "auc"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert t2.loc[arch, "auc_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
        width = t2.loc[arch, "auc_hi"] - t2.loc[arch, "auc_lo"]
        single = [np.diff(r.metrics["auc_macro_ci"])[0] for r in results]  # each seed's patient interval
        assert width > max(single)
    md = _read(out, "table2_pretrained.md")
    assert "95% interval for the mean over 3 seeds" in md and "metrics.seed_interval" in md
    assert "tested at the seed level" in md


def test_paired_tests_across_seeded_cells_are_seed_level(seeded):
    grid, out = seeded
    tests = pd.read_csv(out / "paired_tests.csv")
    assert list(tests["axis"]) == ["arch"] and list(tests["unit"]) == ["seed, then patient"]
    t2 = pd.read_csv(out / "table2_pretrained.csv").set_index("arch")
    # Table 2 tests ResNet152 against its reference row, AlexNet; the axis test reads that same test back
    b, a = (_by_arch(grid)[arch] for arch in ("alexnet", "resnet152"))
    pa, pb = [r.predictions() for r in a], [r.predictions() for r in b]
    ref = metrics.paired_seed_bootstrap(
        probs_a_by_seed=[p["probs"] for p in pa],
        probs_b_by_seed=[p["probs"] for p in pb],
        logits_a_by_seed=[p["logits"] for p in pa],
        logits_b_by_seed=[p["logits"] for p in pb],
        labels=pa[0]["labels"],
        patient_ids=pa[0]["patient_id"],
        n_boot=200,
        seed=0,
        matched=True,  # both cells ran seeds 0, 1 and 2: seed s of one is paired with seed s of the other
    )
    assert (t2.loc["resnet152", "auc_diff_vs_ref"], t2.loc["resnet152", "p_vs_ref"]) == pytest.approx(
        (ref["diff"], ref["p"]), abs=1e-12
    )
    assert t2.loc["resnet152", "test_unit"] == "seed, then patient"
    assert (tests.loc[0, "diff"], tests.loc[0, "p"]) == pytest.approx((-ref["diff"], ref["p"]), abs=1e-12)
    assert (tests.loc[0, "ci_low"], tests.loc[0, "ci_high"]) == pytest.approx((-ref["ci"][1], -ref["ci"][0]), abs=1e-12)
    assert "seed level" in _read(out, "paired_tests.md")


# --- like with like -----------------------------------------------------------------------------------


def test_the_focal_column_uses_each_trials_own_parameters(tmp_path):
    grid = tmp_path / "focal"
    for arch, loss, gamma, alpha in (("alexnet", "focal", 1.0, 0.5), ("resnet152", "bce", 2.0, 0.25)):
        trial = Trial(dataset="synthetic", arch=arch, pretrained=True, loss=loss, focal_gamma=gamma, focal_alpha=alpha)
        write_trial(grid, trial, dataset="synthetic", strength=1.0, noise_seed=4)
    report.write_report(grid, tmp_path / "out", n_boot=20, progress=False)
    t2 = pd.read_csv(tmp_path / "out" / "table2_pretrained.csv").set_index("arch")
    results = _results(grid, pretrained=True)
    p = results["alexnet"].predictions()
    own = metrics.focal_loss(p["probs"], p["labels"], gamma=1.0, alpha=0.5)
    assert t2.loc["alexnet", "focal"] == pytest.approx(own, abs=1e-12)
    assert own == pytest.approx(results["alexnet"].metrics["focal"], abs=1e-12)  # metrics.json's is the trial's own
    assert own != pytest.approx(metrics.focal_loss(p["probs"], p["labels"], gamma=2.0, alpha=0.25))
    assert t2.loc["resnet152", "focal"] == results["resnet152"].metrics["focal"]
    md = _read(tmp_path / "out", "table2_pretrained.md")
    assert "gamma 1, alpha 0.5 for AlexNet; gamma 2, alpha 0.25 for ResNet152" in md
    # loss, focal_gamma and focal_alpha vary with arch here: one axis, named arch
    assert (
        "focal_alpha, focal_gamma, loss vary with arch (arch alexnet: focal_alpha 0.5, focal_gamma 1, loss focal; "
        in (_read(tmp_path / "out", "paired_tests.md"))
    )


# --- the paper's recipe: a grouped axis, the smoke profile's per-arch runs, the methods note --------------

RECIPE = {"alexnet": (5, 0.5), "resnet152": (1, 0.2), "inception_v3": (2, 0.3)}  # arch -> epochs, subset


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """grids/paper.yaml with its smoke profile: freeze goes with pretrained, epochs and subset with arch."""
    root = tmp_path_factory.mktemp("recipe")
    grid = root / "paper"
    for arch, (epochs, fraction) in RECIPE.items():
        for pretrained, freeze in ((False, 0), (True, 2)):
            trial = Trial(
                dataset="synthetic",
                arch=arch,
                pretrained=pretrained,
                freeze=freeze,
                epochs=epochs,
                subset_fraction=fraction,
                image_size=80,
                lr=3e-4,
                lr_step=10,
                batch_size=16,
            )
            strength, noise = SIGNAL[(pretrained, arch)]
            write_trial(grid, trial, dataset="synthetic", strength=strength, noise_seed=noise, logits=True)
    report.write_report(grid, root / "out", n_boot=REPORT_BOOT, progress=False)
    return grid, root / "out"


def test_fields_that_vary_together_are_one_axis(recipe):
    _, out = recipe
    tests = pd.read_csv(out / "paired_tests.csv")
    assert sorted(tests["axis"].value_counts().items()) == [("arch", 6), ("pretrained", 3)]  # no freeze, epochs
    for stem in ("table1_scratch", "table2_pretrained"):
        assert list(pd.read_csv(out / f"{stem}.csv")["model"]) == ["AlexNet", "ResNet152", "InceptionV3"]
    assert set(pd.read_csv(out / "per_finding_auroc.csv").columns[1:19:3]) == {
        f"{init} {report.arch_name(a)}" for init in ("pretrained", "scratch") for a in ARCHS
    }
    md = _read(out, "paired_tests.md")
    for text in (md, _read(out, "table2_pretrained.md")):
        assert "freeze varies with pretrained (pretrained false: freeze 0; pretrained true: freeze 2): one axis" in text
        assert "epochs, subset_fraction vary with arch (arch alexnet: epochs 5, subset_fraction 0.5; " in text
    assert {"freeze", "epochs", "subset_fraction"} <= set(pd.read_csv(out / "comparison.csv").columns)
    summary = _read(out, "report.md").split("## Summary")[1].split("\n## ")[0]
    axes = [line for line in summary.splitlines() if line.startswith(("- Architecture", "- Initialisation"))]
    assert axes and all(  # the summary credits no axis alone with what changed beside it
        line.startswith(("- Architecture (with epochs, subset_fraction): ", "- Initialisation (with freeze): "))
        for line in axes
    ), axes


def test_the_methods_note_lists_the_values_used(recipe):
    _, out = recipe
    page = _read(out, "report.md")
    assert page.index("## Methods") < page.index("## Table 1")
    note = page.split("## Methods")[1].split("\n## ")[0]
    for text in (
        "**Dataset**: SYNTHETIC phantoms, not NIH; test: the official test list (whole)",
        "**Learning rate and schedule**: lr 0.0003, multiplied by 0.1 (lr_gamma) every 10 epochs (lr_step)",
        "**Epochs**: AlexNet 5, ResNet152 1, InceptionV3 2",
        "**Batch**: 16 (training), 32 (evaluation)",
        "pretrained: AlexNet freeze 2: conv1, conv2 fixed; ResNet152 freeze 2: stem (conv1, bn1), layer1 fixed; "
        "InceptionV3 freeze 2: stem (Conv2d_1a-4a), Mixed_5b-d fixed. scratch: freeze 0: every layer trains",
        "subset_fraction AlexNet 0.5, ResNet152 0.2, InceptionV3 0.3 of the train_val patients: whole patients, "
        "stratified",
        "**Input size**: 80 px",
        "**Precise BatchNorm (bn_recalibrate) (the harness's choice)**: off (0: the paper's recipe)",
        "**Checkpoint (the harness's choice)**: the epoch with the best validation mean AUROC",
        "**Resize and crop (the harness's choice)**: each image resized once to 8/7 of the input size",
        "**Test-time augmentation (tta) (the harness's choice)**: none",
        "**Precision (the harness's choice)**: float32 (CPU)",
        "**InceptionV3 auxiliary head**: its loss added with weight 0.4 in training (torchvision's recipe), unused "
        "in evaluation; left out at 80 px (below the 299 px it needs)",
        "**Seeds**: 1 per cell (seed 0)",
        "**Pretrained weights**: UNVERIFIED",
        "**AUROC ranks**: the saved logits",
        "**Losses**: bce",
    ):
        assert text in note, text


def test_the_freeze_stage_table_follows_models():
    from harness import models  # torch, in this test only: the report itself never imports it

    assert (
        models.AUX_WEIGHT,
        models.spec("inception_v3").aux_min_size,
    ) == (INCEPTION_AUX_WEIGHT, INCEPTION_AUX_MIN_SIZE)
    for arch in models.MODELS:
        spec = models.spec(arch)
        assert len(FREEZE_STAGES[arch]) == len(spec.stages), arch
        assert all(text.startswith(label) for text, label in zip(FREEZE_STAGES[arch], spec.labels)), arch


# --- the test split -----------------------------------------------------------------------------------


def test_the_test_split_is_given_with_each_findings_positives_and_the_dropped_resamples(built):
    grid_dir, out_dir, _ = built["synthetic"]
    split = pd.read_csv(out_dir / "test_set.csv")
    p = store.load_results(grid_dir)[0].predictions()
    labels, pid = p["labels"], p["patient_id"]
    assert list(split["finding"]) == FINDINGS
    assert list(split["positive_images"]) == [int(v) for v in labels.sum(axis=0)]
    for f, row in split.iterrows():
        assert row["positive_patients"] == len(np.unique(pid[labels[:, f] == 1]))
    dropped = metrics.bootstrap(p["probs"], labels, pid, stats=("auc",), n_boot=REPORT_BOOT, seed=0)["auc"]["n_dropped"]
    md = _read(out_dir, "test_set.md")
    assert f"Test split: {len(labels):,} images from {len(np.unique(pid)):,} patients" in md
    assert f"Resamples left out of a macro interval: {dropped} of the report's {REPORT_BOOT}" in md
    few = split[(split["positive_patients"] > 0) & (split["positive_patients"] < 5)]
    assert ("fewer than 5 positive patients" in md) == (len(few) > 0)
    assert "The test split" in _read(out_dir, "report.md")


def test_a_field_each_arch_fixes_follows_arch_even_where_two_archs_share_a_value():
    """A smoke profile's `when` rules give ResNet152 and InceptionV3 one epoch each and AlexNet four: epochs is
    part of the arch axis (arch fixes it), not an axis of its own that would hide every AlexNet comparison."""
    from types import SimpleNamespace

    rows = [
        {"arch": arch, "epochs": epochs, "image_size": size, "loss": loss}
        for arch, epochs, size in (("alexnet", 4, 80), ("resnet152", 1, 64), ("inception_v3", 1, 75))
        for loss in ("bce", "focal")
    ]
    results = [SimpleNamespace(trial=r) for r in rows]
    varied = ["arch", "loss", "image_size", "epochs"]
    assert report.cells.lockstep(results, varied) == {"arch": ["image_size", "epochs"]}
    # A field that varies within an arch stays an axis: epochs 1 and 2 for ResNet152.
    results.append(SimpleNamespace(trial={"arch": "resnet152", "epochs": 2, "image_size": 64, "loss": "bce"}))
    assert report.cells.lockstep(results, varied) == {"arch": ["image_size"]}
