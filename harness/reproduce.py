"""`harness reproduce`: a stored trial re-trained from its recorded recipe in a scratch folder, compared recipe field
by field and metric by metric, and the certificate (identical, within noise, different) written beside it."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness import store, train
from harness.config import TRIAL_FIELDS, ConfigError, Runtime, Trial, trial_from_dict
from harness.data import nih

IDENTICAL, WITHIN_NOISE, DIFFERENT = "identical", "within noise", "different"
EXIT_CODES = {IDENTICAL: 0, WITHIN_NOISE: 0, DIFFERENT: 1}
TOLERANCE = "half the width of the stored 95% patient-bootstrap interval of each AUROC"
# The test predictions that must be bit-identical; image_index and labels also say the test set is the same.
PREDICTIONS = ("image_index", "labels", "logits", "probs")
SAME_TEST_SET = ("image_index", "labels")
# Metrics shown beside the AUROCs for a reader, without a tolerance of their own.
SHOWN = ("ap_macro", "f1_macro", "bce")


def stored_trial(trial_dir: Path | str) -> tuple[store.TrialFiles, Trial]:
    """The trial folder's files and its Trial, rebuilt from trial.json; a ConfigError (one line) when the folder is
    missing, is not a trial, is not done or is damaged."""
    path = Path(trial_dir)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory; expected a trial folder RESULTS/<grid>/<key>")
    files = store.TrialFiles(path)
    try:
        record = files.read_trial()
    except store.Unreadable:
        raise ConfigError(
            f"{path}: not a trial folder (no readable trial.json); expected RESULTS/<grid>/<key>, or a grid folder "
            "with --sample K"
        ) from None
    if not files.is_done():
        raise ConfigError(f"{path}: trial {files.key} is not done (no DONE): there is no stored result to reproduce")
    if damaged := files.problems(weights=False):
        raise ConfigError(f"{path}: the stored result is damaged ({damaged[0]}); rerun its grid to mend it first")
    values = {k: v for k, v in record.items() if k in TRIAL_FIELDS}
    return files, trial_from_dict(values, where=str(path / files.TRIAL))


def grid_sample(grid_dir: Path | str, k: int, *, seed: int = 0) -> list[Path]:
    """k done, intact trials of a grid folder, drawn by a seeded sample of their keys (all when fewer)."""
    path = Path(grid_dir)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory; expected a grid folder RESULTS/<grid>")
    done = sorted(r.path for r in store.scan(path).results)
    if not done:
        raise ConfigError(f"{path}: no done trials to sample from; expected a grid folder RESULTS/<grid>")
    return sorted(random.Random(seed).sample(done, min(k, len(done))))


def flatten(record: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for name, value in (record or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def compare_recipe(stored: dict[str, Any] | None, now: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recipe field recorded then and now (the settings are the same by construction and left out);
    a trial stored before recipes were recorded has every field 'not recorded'."""
    then = flatten({k: v for k, v in (stored or {}).items() if k != "trial"})
    current = flatten({k: v for k, v in now.items() if k != "trial"})
    rows = []
    for name in sorted(set(then) | set(current)):
        recorded = name in then
        rows.append(
            {
                "field": name,
                "stored": then.get(name) if recorded else "not recorded",
                "now": current.get(name, "not recorded"),
                "match": recorded and then.get(name) == current.get(name),
            }
        )
    return rows


def _half_width(ci: Any) -> float | None:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci:
        return None
    return (float(ci[1]) - float(ci[0])) / 2


def _metric_row(name: str, stored: Any, now: Any, ci: Any) -> dict[str, Any]:
    tol = _half_width(ci)
    if stored is None or now is None:
        diff, within = None, stored is None and now is None  # undefined both times (one class only) is the same
    else:
        diff = float(now) - float(stored)
        within = abs(diff) <= (tol or 0.0)
    return {"metric": name, "stored": stored, "now": now, "difference": diff, "tolerance": tol, "within": within}


def compare_metrics(stored: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Macro and per-finding AUROC with their tolerances; a few other metrics shown without one."""
    rows = [_metric_row("auc_macro", stored.get("auc_macro"), now.get("auc_macro"), stored.get("auc_macro_ci"))]
    per_then, per_now = stored.get("per_finding") or {}, now.get("per_finding") or {}
    for finding in stored.get("names") or []:
        a, b = per_then.get(finding) or {}, per_now.get(finding) or {}
        rows.append(_metric_row(f"auc {finding}", a.get("auc"), b.get("auc"), a.get("auc_ci")))
    for name in SHOWN:
        row = _metric_row(name, stored.get(name), now.get(name), None)
        rows.append({**row, "within": None})  # shown, not judged
    return rows


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names: tuple[str, ...]) -> bool:
    return all(n in a and n in b and a[n].dtype == b[n].dtype and np.array_equal(a[n], b[n]) for n in names)


def verdict(
    recipe_rows: list[dict[str, Any]], metric_rows: list[dict[str, Any]], *, identical: bool, same_test_set: bool
) -> tuple[str, list[str]]:
    """The verdict and, unless identical, what differs (the recipe fields that differ usually explain it)."""
    if identical:
        return IDENTICAL, []
    unlike = [r["field"] for r in recipe_rows if not r["match"] and r["stored"] != "not recorded"]
    data = [f for f in unlike if f.startswith("data.")]
    outside = [r for r in metric_rows if r["within"] is False]
    if same_test_set and not data and not outside:
        return WITHIN_NOISE, []
    reasons = []
    if data or not same_test_set:
        reasons.append("the data differ (" + (", ".join(data) or "the test images or labels") + ")")
    reasons += [
        f"{r['metric']} {_num(r['stored'])} -> {_num(r['now'])} (outside +-{_num(r['tolerance'])})" for r in outside
    ]
    if unlike:
        reasons.append("recipe fields that differ: " + ", ".join(unlike))
    return DIFFERENT, reasons


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def data_runtime(runtime: Runtime) -> Runtime:
    """The data root as every command resolves it: --data-root, else $HARNESS_DATA_ROOT, else the embedded set."""
    root = nih.locate(runtime.data_root)
    if root is None:
        from harness.data import synthetic

        root = synthetic.default_root(runtime.cache_dir)
    return dataclasses.replace(runtime, data_root=str(root))


def certify(trial_dir: Path | str, runtime: Runtime) -> dict[str, Any]:
    """Re-train a stored trial from its recipe in a scratch folder (the stored result is only read), compare, and
    write the certificate into the trial folder through the store. Returns the certificate."""
    files, trial = stored_trial(trial_dir)
    runtime = data_runtime(runtime)
    with tempfile.TemporaryDirectory(prefix="harness-reproduce-") as scratch:
        again = store.TrialFiles(Path(scratch) / trial.key)
        train.run_trial(trial, runtime, out_dir=again.path)
        now_recipe, now_metrics, now_preds = again.read_provenance(), again.read_metrics(), again.read_predictions()
    then_preds = files.read_predictions()
    recipe_rows = compare_recipe(files.read_provenance(), now_recipe or {})
    metric_rows = compare_metrics(files.read_metrics(), now_metrics)
    identical = _same(then_preds, now_preds, PREDICTIONS)
    result, reasons = verdict(
        recipe_rows, metric_rows, identical=identical, same_test_set=_same(then_preds, now_preds, SAME_TEST_SET)
    )
    certificate = {
        "key": trial.key,
        "label": trial.label,
        "verdict": result,
        "reasons": reasons,
        "predictions_identical": identical,
        "tolerance": TOLERANCE,
        "recipe": recipe_rows,
        "metrics": metric_rows,
        "data_root": runtime.data_root,
        "reproduced": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    files.write_reproduced(certificate)
    return certificate


def lines(certificate: dict[str, Any], trial_dir: Path | str) -> list[str]:
    """The certificate as printed: the verdict, each recipe field then and now, each metric then and now."""
    recipe_rows, metric_rows = certificate["recipe"], certificate["metrics"]
    differ = [r for r in recipe_rows if not r["match"]]
    out = [
        f"{certificate['key']}  {certificate['label']}: {certificate['verdict'].upper()}",
        *(f"  because {reason}" for reason in certificate["reasons"]),
        f"  recipe: {len(recipe_rows) - len(differ)} of {len(recipe_rows)} fields as recorded",
    ]
    width = max((len(r["field"]) for r in recipe_rows), default=5)
    for r in recipe_rows:
        mark = "same" if r["match"] else "DIFFERS"
        now = "" if r["match"] else f"  now {_short(r['now'])}"
        out.append(f"    {r['field']:<{width}}  {mark:<7}  {_short(r['stored'])}{now}")
    out.append(f"  metrics (tolerance: {certificate['tolerance']}):")
    out.append(f"    {'metric':<24}  {'stored':>8}  {'now':>8}  {'diff':>8}  {'tol':>7}")
    for r in metric_rows:
        judged = "" if r["within"] is None else "  ok" if r["within"] else "  OUTSIDE"
        diff = "n/a" if r["difference"] is None else f"{r['difference']:+.4f}"
        out.append(
            f"    {r['metric']:<24}  {_num(r['stored']):>8}  {_num(r['now']):>8}  {diff:>8}  "
            f"{_num(r['tolerance']):>7}{judged}"
        )
    out.append(f"  certificate: {Path(trial_dir) / store.TrialFiles.REPRODUCED}")
    return out


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] + "..." if len(text) > 40 and " " not in text else text
