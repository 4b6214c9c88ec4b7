"""`harness reproduce`: a deterministic trial comes back bit for bit, another data tree is named as the difference,
a plain trial comes back identical or within its stated noise, and bad input is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import cli, reproduce, store, train
from harness.config import Runtime, Trial

TINY = Trial(dataset="synthetic", arch="alexnet", image_size=64, epochs=1, batch_size=16, lr=1e-3)


@pytest.fixture(scope="module")
def results(tmp_path_factory, small_synthetic_tree) -> dict[str, Path]:
    """Two stored trials on the small synthetic tree: a deterministic one (grid "det") and a plain one ("plain")."""
    base = tmp_path_factory.mktemp("reproduce")
    runtime = Runtime(data_root=str(small_synthetic_tree), cache_dir=str(base / "cache"), device="cpu", progress=False)
    out = {"cache": base / "cache", "tree": small_synthetic_tree}
    for grid, trial in (("det", TINY.replace(deterministic=True)), ("plain", TINY)):
        st = store.Store(base / "results" / grid)
        files = st.begin(trial, grid)
        train.run_trial(trial, runtime, out_dir=files.path)
        st.mark_done(trial)
        out[grid] = files.path
    return out


def run(capsys, *argv: str, tree: Path, cache: Path) -> tuple[int, str, str]:
    code = cli.main(
        ["reproduce", *map(str, argv), "--data-root", str(tree), "--cache-dir", str(cache), "--device", "cpu"]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_deterministic_trial_comes_back_identical_and_its_result_is_untouched(results, capsys):
    files = store.TrialFiles(results["det"])
    before = {name: (files.path / name).read_bytes() for name in ("predictions.npz", "metrics.json", "DONE")}
    code, out, _ = run(capsys, results["det"], tree=results["tree"], cache=results["cache"])
    assert code == 0, out
    assert "IDENTICAL" in out.splitlines()[0]
    cert = files.read_reproduced()
    assert cert["verdict"] == "identical" and cert["predictions_identical"]
    assert {r["field"] for r in cert["recipe"] if r["field"].startswith("data.")} >= {
        "data.files_sha256.Data_Entry_2017.csv",
        "data.splits.test.cache_sha256",
    }
    assert all(r["match"] for r in cert["recipe"]), [r for r in cert["recipe"] if not r["match"]]
    assert all(r["within"] is not False for r in cert["metrics"])
    assert before == {name: (files.path / name).read_bytes() for name in before}
    assert files.damaged() == {}  # the certificate is beside the result, not one of DONE's checked files


def test_another_data_tree_is_named_as_the_difference(results, capsys, tmp_path):
    from harness.data import synthetic

    other = synthetic.generate(tmp_path / "other", n=120, size=64, seed=7, progress=False)
    code, out, _ = run(capsys, results["det"], tree=other, cache=results["cache"])
    assert code == 1, out
    assert "DIFFERENT" in out.splitlines()[0]
    because = out.splitlines()[1]
    assert because.startswith("  because the data differ (data.") and "data.files_sha256.Data_Entry_2017.csv" in because
    cert = store.TrialFiles(results["det"]).read_reproduced()
    assert cert["verdict"] == "different"
    differ = {r["field"] for r in cert["recipe"] if not r["match"]}
    assert "data.splits.test.cache_sha256" in differ and "data.files_sha256.test_list.txt" in differ


def test_a_plain_trial_of_a_grid_comes_back_within_its_stated_noise(results, capsys):
    code, out, _ = run(capsys, results["plain"].parent, "--sample", "1", tree=results["tree"], cache=results["cache"])
    assert code == 0, out
    cert = store.TrialFiles(results["plain"]).read_reproduced()
    assert cert["verdict"] in ("identical", "within noise")
    assert f"tolerance: {reproduce.TOLERANCE}" in out
    macro = next(r for r in cert["metrics"] if r["metric"] == "auc_macro")
    ci = store.TrialFiles(results["plain"]).read_metrics()["auc_macro_ci"]
    assert macro["tolerance"] == pytest.approx((ci[1] - ci[0]) / 2)
    assert out.splitlines()[0].startswith(results["plain"].name)  # the grid's one done trial, sampled
    assert out.rstrip().splitlines()[-1] == f"  certificate: {results['plain'] / 'reproduced.json'}"


def rows(diff: float, tol: float = 0.05) -> list[dict]:
    return [reproduce._metric_row("auc_macro", 0.70, 0.70 + diff, [0.70 - tol, 0.70 + tol])]


def test_the_verdict_follows_the_tolerance_and_the_data():
    same = [{"field": "software.torch", "stored": "2.4", "now": "2.4", "match": True}]
    assert reproduce.verdict(same, rows(0.01), identical=True, same_test_set=True)[0] == "identical"
    assert reproduce.verdict(same, rows(0.04), identical=False, same_test_set=True)[0] == "within noise"
    verdict, reasons = reproduce.verdict(same, rows(0.06), identical=False, same_test_set=True)
    assert verdict == "different" and "auc_macro 0.7000 -> 0.7600 (outside +-0.0500)" in reasons[0]
    torch_moved = [{"field": "software.torch", "stored": "2.4", "now": "2.5", "match": False}]
    verdict, reasons = reproduce.verdict(torch_moved, rows(0.06), identical=False, same_test_set=True)
    assert reasons[-1] == "recipe fields that differ: software.torch"
    # Within noise on other data is not a reproduction: the test set differs.
    assert reproduce.verdict(same, rows(0.0), identical=False, same_test_set=False)[0] == "different"
    undefined = [reproduce._metric_row("auc Hernia", None, None, None)]
    assert reproduce.verdict(same, undefined, identical=False, same_test_set=True)[0] == "within noise"


def test_an_older_trial_without_a_recipe_says_not_recorded():
    rows_ = reproduce.compare_recipe(None, {"software": {"torch": "2.4"}, "trial": {"lr": 1}})
    assert rows_ == [{"field": "software.torch", "stored": "not recorded", "now": "2.4", "match": False}]


def test_bad_input_is_one_line_and_exit_2(results, capsys, tmp_path):
    st = store.Store(tmp_path / "grid")
    st.begin(TINY, "grid")  # started, never done
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        tmp_path / "nowhere": "no such directory",
        empty: "not a trial folder",
        st.trial_dir(TINY): "is not done",
    }
    for path, words in cases.items():
        code, _, err = run(capsys, path, tree=results["tree"], cache=results["cache"])
        assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    code, _, err = run(capsys, empty, "--sample", "2", tree=results["tree"], cache=results["cache"])
    assert code == 2 and "no done trials" in err


def test_a_grid_sample_is_seeded_and_takes_done_trials_only(tmp_path):
    st = store.Store(tmp_path / "grid")
    for seed in range(6):
        trial = TINY.replace(seed=seed)
        files = st.begin(trial, "grid")
        if seed < 5:  # the sixth never finished
            files.write_metrics({"auc_macro": 0.5})
            st.mark_done(trial)
    first = reproduce.grid_sample(st.root, 3, seed=1)
    assert len(first) == 3 and first == reproduce.grid_sample(st.root, 3, seed=1)
    assert {p.name for p in reproduce.grid_sample(st.root, 9)} == {TINY.replace(seed=s).key for s in range(5)}
    assert {tuple(reproduce.grid_sample(st.root, 2, seed=s)) for s in range(8)} != {tuple(first[:2])}


def test_predictions_compared_bit_for_bit():
    a = {n: np.arange(4, dtype=np.float32) for n in reproduce.PREDICTIONS}
    b = {**a, "logits": a["logits"] + np.float32(1e-7)}
    assert reproduce._same(a, dict(a), reproduce.PREDICTIONS)
    assert not reproduce._same(a, b, reproduce.PREDICTIONS)
    assert reproduce._same(a, b, reproduce.SAME_TEST_SET)


def test_the_reports_methods_show_the_recipe_and_mark_reproduced_trials(results, tmp_path):
    import shutil

    from harness import report

    grid = tmp_path / "det"
    shutil.copytree(results["det"], grid / results["det"].name)
    files = store.TrialFiles(grid / results["det"].name)
    recorded = files.read_provenance()
    files.write_reproduced({"verdict": "identical", "reasons": [], "tolerance": reproduce.TOLERANCE})
    report.write_report(grid, tmp_path / "out", n_boot=50, progress=False)
    note = (tmp_path / "out" / "report.md").read_text().split("## Methods")[1].split("\n## ")[0]
    for text in (
        f"**Software**: python {recorded['software']['python']}, torch {recorded['software']['torch']}",
        f"**Hardware and precision**: CPU {recorded['hardware']['cpu']}, {recorded['hardware']['threads']} threads; "
        "float32",
        "**Determinism**: on: deterministic algorithms, cuDNN deterministic, benchmark off, cuBLAS :4096:8",
        f"**Data fingerprint**: 120 images; SHA-256 BBox_List_2017.csv "
        f"{recorded['data']['files_sha256']['BBox_List_2017.csv'][:12]}",
        "**Reproduced**: 1 of 1 trials re-trained from their recipes: 1 identical",
        f"({files.key}): reproduced: identical",
    ):
        assert text in note, text
