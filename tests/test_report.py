"""harness.report on a small fake results directory written in the store's layout."""

from __future__ import annotations

import ast
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import cli, metrics, report, store
from harness.config import ConfigError, Trial
from harness.report.paired import ALL_PAIRS_UP_TO

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


def _test_set():
    rng = np.random.default_rng(0)
    patient = np.repeat(np.arange(1000, 1000 + N_PATIENTS), N_IMAGES // N_PATIENTS)
    prevalence = np.linspace(0.15, 0.35, len(FINDINGS))
    labels = (rng.random((N_IMAGES, len(FINDINGS))) < prevalence).astype(np.uint8)
    return labels, patient, np.array([f"{i:08d}_000.png" for i in range(N_IMAGES)])


def _probs(labels: np.ndarray, strength: float, noise_seed: int) -> np.ndarray:
    noise = np.random.default_rng(noise_seed).normal(size=labels.shape)
    return (1 / (1 + np.exp(-(strength * (2.0 * labels - 1) + noise)))).astype(np.float32)


def write_trial(
    grid_dir, trial: Trial, *, dataset: str, strength: float, noise_seed: int, other_images: bool = False
) -> None:
    """One finished trial exactly as train.py leaves it: trial.json, predictions, metrics, history, DONE."""
    labels, patient, image_index = _test_set()
    if other_images:  # a test set drawn differently, as subset_test does per seed
        image_index = np.char.replace(image_index, "_000", "_001")
    predictions = trial_predictions(labels, patient, image_index, strength=strength, noise_seed=noise_seed)
    store_trial(grid_dir, trial, predictions, trial_metrics(predictions, seed=trial.seed), dataset=dataset)


def trial_predictions(labels, patient, image_index, *, strength: float, noise_seed: int) -> dict[str, np.ndarray]:
    """predictions.npz as train.py writes it: test probs and labels, a validation slice, patients and names."""
    n_val = max(1, len(labels) // 4)
    return {
        "probs": _probs(labels, strength, noise_seed),
        "labels": labels,
        "image_index": image_index,
        "patient_id": patient.astype(np.int64),
        "val_probs": _probs(labels[:n_val], strength, noise_seed + 100),
        "val_labels": labels[:n_val],
        "val_patient_id": patient[:n_val].astype(np.int64),
        "names": np.array(FINDINGS),
    }


def trial_metrics(predictions: dict[str, np.ndarray], *, seed: int, n_boot: int = EVAL_BOOT) -> dict:
    """metrics.json's statistics, computed from the predictions as train.py does."""
    p = predictions
    return metrics.evaluate(
        p["probs"],
        p["labels"],
        names=FINDINGS,
        patient_ids=p["patient_id"],
        val_probs=p["val_probs"],
        val_labels=p["val_labels"],
        n_boot=n_boot,
        seed=seed,
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


def make_paper_grid(root, *, dataset: str, archs=ARCHS, name: str = "paper"):
    grid_dir = root / name
    for pretrained in (False, True):
        for arch in archs:
            strength, noise = SIGNAL[(pretrained, arch)]
            trial = Trial(dataset=dataset, arch=arch, pretrained=pretrained, subset_fraction=0.1, epochs=3)
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
    for header in ("BCE loss", "Focal loss", "F1", "AUC"):
        assert header in md and header in tex
    for col in ("bce", "focal", "f1", "auc", "auc_lo", "auc_hi", "f1_lo", "f1_hi", "p_holm_vs_ref"):
        assert col in csv.columns
    assert list(csv["arch"]) == list(ARCHS)  # the paper's row order
    for arch, r in _results(grid_dir, pretrained=pretrained).items():
        m = r.metrics
        row = csv[csv["arch"] == arch].iloc[0]
        assert row["auc"] == pytest.approx(m["auc_macro"])
        assert row["f1"] == pytest.approx(m["f1_macro"])
        assert row["bce"] == pytest.approx(m["bce"])
        assert row["focal"] == pytest.approx(m["focal"])
        assert (row["auc_lo"], row["auc_hi"]) == pytest.approx(tuple(m["auc_macro_ci"]))
        lo, hi = m["auc_macro_ci"]
        auc_text = f"{m['auc_macro']:.3f} [{lo:.3f}, {hi:.3f}]"
        f1_text = "{:.3f} [{:.3f}, {:.3f}]".format(m["f1_macro"], *m["f1_macro_ci"])
        for text in (md, tex):
            assert auc_text in text and f1_text in text
            assert f"{m['bce']:.4f}" in text and f"{m['focal']:.4f}" in text
        assert report.arch_name(arch) in md
    assert "\\toprule" in tex and "\\bottomrule" in tex


def test_bold_and_dagger_only_where_significant(built):
    """Scratch models are identical (no bold, no dagger); pretrained ResNet152 is clearly best (bold, dagger)."""
    _, out_dir, _ = built["synthetic"]
    t1 = pd.read_csv(out_dir / "table1_scratch.csv")
    assert not t1["auc_best_significant"].any() and not t1["sig_vs_ref"].any()
    assert "**" not in _read(out_dir, "table1_scratch.md")
    assert "\\textbf" not in _read(out_dir, "table1_scratch.tex")
    assert report.DAGGER not in _read(out_dir, "table1_scratch.md").split("\n\n")[1]  # table body, not footnote

    t2 = pd.read_csv(out_dir / "table2_pretrained.csv").set_index("arch")
    assert t2["auc_best_significant"].to_dict() == {"alexnet": False, "resnet152": True, "inception_v3": False}
    assert t2["sig_vs_ref"].to_dict() == {"alexnet": False, "resnet152": True, "inception_v3": False}
    assert bool(t2.loc["alexnet", "reference"])
    md, tex = _read(out_dir, "table2_pretrained.md"), _read(out_dir, "table2_pretrained.tex")
    auc = t2.loc["resnet152", "auc"]
    assert f"**{auc:.3f} [" in md and f"\\textbf{{{auc:.3f} [" in tex
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
    assert t2["sig_vs_ref"].to_dict() == {"alexnet": True, "resnet152": False, "inception_v3": True}
    assert bool(t2.loc["resnet152", "auc_best_significant"])
    with pytest.raises(ConfigError, match="valid: alexnet, resnet152, inception_v3"):
        report.write_report(grid_dir, tmp_path, reference="densenet121")


def test_published_values_only_on_nih(built):
    _, syn, _ = built["synthetic"]
    _, nih, _ = built["nih"]
    for stem, published in (("table1_scratch", "0.469"), ("table2_pretrained", "0.6397")):
        assert published in _read(nih, f"{stem}.md") and published in _read(nih, f"{stem}.tex")
        assert "Paper AUC" in _read(nih, f"{stem}.md")
        for ext in ("md", "tex", "csv"):
            assert published not in _read(syn, f"{stem}.{ext}")
        assert "Paper AUC" not in _read(syn, f"{stem}.md")
        assert report.SYNTHETIC_WARNING in _read(syn, f"{stem}.md")
        assert report.SYNTHETIC_WARNING not in _read(nih, f"{stem}.md")
    assert "0.80-0.82" in _read(nih, "table2_pretrained.md") and "0.80-0.82" not in _read(syn, "index.html")
    assert "SYNTHETIC phantoms (not NIH)" in _read(syn, "table2_pretrained.md")
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
    assert len(csv.columns) == 1 + 3 * 6  # finding + (value, lo, hi) per cell


def test_comparison_table_has_the_varied_axes_and_paired_tests(built):
    _, out_dir, _ = built["synthetic"]
    comp = pd.read_csv(out_dir / "comparison.csv")
    assert {"arch", "pretrained", "auc", "auc_lo", "auc_hi"} <= set(comp.columns)
    assert "loss" not in comp.columns and "epochs" not in comp.columns  # not varied
    assert len(comp) == 6
    tests = pd.read_csv(out_dir / "paired_tests.csv")
    assert sorted(tests["axis"].value_counts().items()) == [("arch", 6), ("pretrained", 3)]
    assert (tests["p_holm"] >= tests["p"]).all()
    pre = tests[tests["axis"] == "pretrained"]
    assert (pre["diff"] > 0.1).all() and (pre["p_holm"] < 0.05).all()
    assert list(pre["a"]) == [f"pretrained {report.arch_name(a)}" for a in ARCHS]


def test_conclusions_claim_only_what_the_tests_support(built):
    _, out_dir, _index = built["synthetic"]
    text = _read(out_dir, "report.md").split("## What can be concluded")[1].split("\n## ")[0]
    for arch in ARCHS:
        name = report.arch_name(arch)
        assert f"pretrained {name} beats scratch {name} by" in text.replace("Pretrained", "pretrained")
    # Identical models: no winner, only "no significant difference".
    for a, b in (("AlexNet", "ResNet152"), ("AlexNet", "InceptionV3"), ("ResNet152", "InceptionV3")):
        assert f"scratch {a} beats" not in text and f"scratch {b} beats" not in text
        assert f"significant difference between scratch {a} and scratch {b}" in text
    assert "pretrained AlexNet beats pretrained InceptionV3" not in text
    assert "pretrained InceptionV3 beats pretrained AlexNet" not in text
    assert "pretrained ResNet152 beats pretrained AlexNet" in text.replace("Pretrained", "pretrained")
    assert "beats" in _read(out_dir, "index.html")


def test_failed_trials_are_listed_with_reasons(built):
    _, _out_dir, index = built["synthetic"]
    page = index.read_text()
    assert "Failed trials (1)" in page and "CUDA out of memory at batch 64" in page


# --- figures and the page -----------------------------------------------------------------------------


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
    assert csv["auc_lo"].isna().all() and not csv["sig_vs_ref"].any()
    assert "different test images" in _read(tmp_path / "out", "table2_pretrained.md")
    assert len(pd.read_csv(tmp_path / "out" / "paired_tests.csv")) == 0


def test_missing_or_empty_results_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such results directory"):
        report.write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished or failed trials"):
        report.write_report(tmp_path / "empty")


def test_a_report_never_imports_torch_or_ray(built, tmp_path):
    """Neither importing the report nor writing one through the command line loads torch or ray."""
    heavy = "sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules)"
    grid_dir = built["nih"][0]
    for code in (
        f"import sys, harness.report; print({heavy})",
        f"import sys; from harness import cli; cli.main(['report', {str(grid_dir)!r}, '--out', {str(tmp_path)!r}]); "
        f"print({heavy})",
    ):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]"


REPORT_MODULES = ("paper", "cells", "tables", "context", "build", "paired", "figures", "page", "write")


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
    assert list(tests["axis"]) == ["lr"] * (len(lrs) - 1)
    assert list(tests["a"]) == [f"AlexNet (lr={lr:g})" for lr in lrs[:-1]]
    assert list(tests["b"]) == [f"AlexNet (lr={lr:g})" for lr in lrs[1:]]
    assert "tested against the next value only: lr" in _read(tmp_path / "out", "paired_tests.md")
