"""`harness evaluate`: finished trials scored on other datasets over the shared findings, checked against
scikit-learn, stored through the store, reused while intact and redone when changed; a grid's evaluate_on."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from harness import external, train
from harness.cli import main
from harness.config import ConfigError, Runtime, Trial
from harness.data.synthetic.layouts import generate_layout
from harness.gridfile import load_grid
from harness.store import Store, TrialFiles

TRIAL = Trial(dataset="synthetic", arch="alexnet", image_size=64, epochs=1, batch_size=16, lr=1e-3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished NIH-synthetic trial in results/g/, and CheXpert and PadChest trees to score it on."""
    base = tmp_path_factory.mktemp("external")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trees = {
            name: generate_layout(name, base / name, n=n, size=40, seed=3, progress=False)
            for name, n in (("nih", 60), ("chexpert", 150), ("padchest", 40))
        }
    runtime = Runtime(
        data_root=str(trees["nih"]), cache_dir=str(base / "cache"), device="cpu", workers=1, progress=False
    )
    store = Store(base / "results" / "g")
    store.begin(TRIAL, "g")
    train.run_trial(TRIAL, runtime, out_dir=store.trial_dir(TRIAL))
    store.mark_done(TRIAL)
    return base, trees, runtime, store.files(TRIAL)


def test_each_trial_is_scored_on_the_findings_both_datasets_label(finished):
    base, trees, runtime, files = finished
    on = {"chexpert": str(trees["chexpert"]), "padchest": str(trees["padchest"])}
    rows = external.evaluate_results(base / "results", on, runtime)
    assert {(r["dataset"], r["findings"], r["reused"]) for r in rows} == {
        ("synthetic-chexpert", 7, False),  # CheXpert labels 7 of NIH's 14
        ("synthetic-padchest", 14, False),
    }
    assert files.external_datasets() == ["synthetic-chexpert", "synthetic-padchest"]
    for name in files.external_datasets():
        record, p = files.read_external(name), files.read_external_predictions(name)
        idx = [list(p["names"]).index(f) for f in record["findings"]]
        for j, finding in zip(idx, record["findings"]):
            known = np.isfinite(p["labels"][:, j])
            y, s = p["labels"][known, j], p["logits"][known, j]
            auc = record["external"]["auc_per_class"][finding]
            assert auc is None if len(set(y)) < 2 else auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        home = files.read_predictions()
        aucs = [
            roc_auc_score(home["labels"][:, j], home["logits"][:, j])
            for j in idx
            if 0 < home["labels"][:, j].sum() < len(home["labels"])
        ]
        assert record["home"]["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert record["split"] == (
            "all its frontal films (no official split)" if "padchest" in name else "its official test split"
        )
    assert any(r["external"] is not None for r in rows if r["dataset"] == "synthetic-chexpert")


def test_stored_scores_are_reused_while_intact_and_redone_when_damaged(finished):
    base, trees, runtime, files = finished
    on = {"padchest": str(trees["padchest"])}
    first = external.evaluate_results(base / "results" / "g", on, runtime)
    assert [r["reused"] for r in first] == [True] or [r["reused"] for r in first] == [False]
    assert [r["reused"] for r in external.evaluate_results(base / "results" / "g", on, runtime)] == [True]
    npz = files.path / TrialFiles.EXTERNAL / "synthetic-padchest.npz"
    npz.write_bytes(npz.read_bytes()[:-10])  # truncated: no longer what the json's checksum says
    again = external.evaluate_results(base / "results" / "g", on, runtime)
    assert [r["reused"] for r in again] == [False] and again[0]["external"] == first[0]["external"]


def test_the_command_prints_each_score_and_refuses_a_bad_dataset(finished, capsys):
    base, trees, _, _ = finished
    args = ["evaluate", str(base / "results"), "--on", f"padchest={trees['padchest']}", "--device", "cpu"]
    assert main([*args, "--cache-dir", str(base / "cache"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["dataset"] == "synthetic-padchest" and rows[0]["findings"] == 14
    assert main(["evaluate", str(base / "results"), "--on", "cheXpert=/x"]) == 2
    assert "expected NAME=PATH with NAME one of nih, chexpert, mimic, padchest" in capsys.readouterr().err


def test_a_grid_names_the_datasets_it_is_scored_on_but_its_keys_do_not_change(tmp_path):
    plain = "name: g\nbase: {arch: alexnet}\naxes: {loss: [bce, focal]}\n"
    (tmp_path / "a.yaml").write_text(plain)
    (tmp_path / "b.yaml").write_text(plain + "evaluate_on: [chexpert, padchest]\n")
    (tmp_path / "c.yaml").write_text(plain + "evaluate_on: [chexpurt]\n")
    a, b = load_grid(tmp_path / "a.yaml"), load_grid(tmp_path / "b.yaml")
    assert b.evaluate_on == ("chexpert", "padchest") and a.evaluate_on == ()
    assert [t.key for t in a.trials] == [t.key for t in b.trials]
    with pytest.raises(ConfigError, match="evaluate_on=.*valid: a list of nih, chexpert, mimic, padchest"):
        load_grid(tmp_path / "c.yaml")


def test_a_dry_run_says_which_datasets_the_trials_are_scored_on_after_the_run(tmp_path, capsys):
    from harness import cli

    (tmp_path / "b.yaml").write_text("name: g\nbase: {arch: alexnet}\nevaluate_on: [chexpert, padchest]\n")
    assert cli.main(["run", str(tmp_path / "b.yaml"), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert "; then scored on chexpert, padchest)" in capsys.readouterr().out.splitlines()[0]


def test_the_report_shows_the_transfer_table_and_figure_flagged_synthetic(finished, tmp_path):
    from harness.report.write import write_report

    base, trees, runtime, files = finished
    on = {"chexpert": str(trees["chexpert"]), "padchest": str(trees["padchest"])}  # reused if scored already
    external.evaluate_results(base / "results", on, runtime)
    written = write_report(base / "results" / "g", tmp_path / "report", n_boot=100, progress=False)
    page = (written.index.parent / "report.md").read_text()
    assert "## Transfer: own test split against other datasets" in page
    assert "SYNTHETIC DATA: synthetic, synthetic-chexpert, synthetic-padchest are rendered phantoms" in page
    assert (tmp_path / "report" / "transfer.png").is_file() and (tmp_path / "report" / "transfer.pdf").is_file()
    table = pd.read_csv(tmp_path / "report" / "transfer.csv")
    record = files.read_external("synthetic-padchest")
    row = table[table["scored_on"] == "synthetic-padchest"].iloc[0]
    assert row["external_auc"] == pytest.approx(record["external"]["auc_macro"])
    assert row["home_auc"] == pytest.approx(record["home"]["auc_macro"])
    # Tables 1-2 hold the trial's own test scores only.
    assert f"{files.read_metrics()['auc_macro']:.3f}" in page.split("## Transfer")[0]


def test_trials_one_field_apart_are_compared_on_the_same_films(finished, tmp_path):
    """A copy of the trial with another loss written in its trial.json: the same films and outputs, so the paired
    test finds no difference (p 1), in a family of its own."""
    import shutil

    from harness.report.write import write_report

    _, trees, runtime, files = finished
    grid = tmp_path / "results" / "g"
    shutil.copytree(files.path, grid / files.key)
    twin = grid / "twin"
    shutil.copytree(files.path, twin)
    record = json.loads((twin / "trial.json").read_text())
    (twin / "trial.json").write_text(json.dumps({**record, "loss": "focal"}))
    external.evaluate_results(grid, {"padchest": str(trees["padchest"])}, runtime)
    write_report(grid, tmp_path / "report", n_boot=100, progress=False)
    table = pd.read_csv(tmp_path / "report" / "transfer_paired.csv")
    assert "synthetic-padchest" in set(table["dataset"]) and set(table["field"]) == {"loss"}
    assert (table["diff"] == 0).all() and (table["p_adjusted"] == 1).all()
    assert "a family of its own" in (tmp_path / "report" / "report.md").read_text()
