"""What a study leaves behind: parameter importances, Optuna's plots, the best trial and a grid that reruns it."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml

from harness import store as store_mod
from harness.config import Runtime, Trial, trial_from_dict
from harness.search import study as study_mod
from harness.search.spec import Search


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances over completed trials, most important first, or why there are none."""
    complete = _finished(study)
    if len(complete) < 2:
        return {}, f"needs >= 2 completed trials, have {len(complete)}"
    varied = {p for t in complete for p in t.params if len({repr(u.params.get(p)) for u in complete}) > 1}
    if not varied:
        return {}, "no parameter varies across the completed trials"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ranked = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return {}, f"optuna could not rank them: {exc}"
    for w in caught:
        if "too small" in str(w.message):  # PED-ANOVA then calls every parameter equally important
            return {}, f"too few completed trials ({len(complete)}) to rank: {w.message}"
    return dict(sorted(ranked.items(), key=lambda kv: -kv[1])), None


PLOTS = {  # file stem -> optuna.visualization(.matplotlib) function name
    "history": "plot_optimization_history",
    "importance": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
    "curves": "plot_intermediate_values",  # per-epoch values: shows where ASHA stopped each trial
}


def _plots(study: optuna.Study, out: store_mod.SearchFiles) -> dict[str, str]:
    """Optuna's standard plots as PNG (matplotlib), and as HTML where plotly is installed; stem -> file or reason."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    html = importlib.util.find_spec("plotly") is not None
    written: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API notes, and empty legends of a young study's plots
        for stem, fn in PLOTS.items():
            try:
                written[stem] = _plot(study, out, stem, fn, html=html)
            except (ValueError, RuntimeError, KeyError, IndexError) as exc:  # too few trials for this plot
                plt.close("all")
                written[stem] = f"skipped: {exc}"
    return written


def _plot(study: optuna.Study, out: store_mod.SearchFiles, stem: str, fn: str, *, html: bool) -> str:
    """One of Optuna's plots (its function name fn) as stem.png, and stem.html when html; returns the PNG's name."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    ax = getattr(ovm, fn)(study)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    with store_mod.atomic_path(out.plot(stem, "png")) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    if html:
        import optuna.visualization as ov

        with store_mod.atomic_path(out.plot(stem, "html")) as tmp:
            getattr(ov, fn)(study).write_html(str(tmp))
    return f"{stem}.png"


def best_grid(search: Search, study: optuna.Study, trial: Trial, runtime: Runtime, path: Path) -> str:
    """A grid file that reruns the best trial with seeds 0-2 and evaluates each on the test split."""
    best = study.best_trial
    command = f"python -m harness run {path}"
    if runtime.results_dir != "results":
        command += f" --results {runtime.results_dir}"
    if trial.dataset == "nih" and runtime.data_root:
        command += f" --data-root {runtime.data_root}"
    name = f"{search.study_name}-best"
    header = [
        f"# {command}",
        f"# python -m harness report {store_mod.Store.of(runtime.results_dir, name).root}",
        "#",
        f"# The best trial (#{best.number}) of study {search.study_name} from {search.path}: "
        f"{search.metric} {best.value:.4f} on the validation split.",
        "# Reruns it with three seeds and evaluates each on the official test split.",
    ]
    base = {k: v for k, v in trial.to_dict().items() if k != "seed"}
    body = yaml.safe_dump({"name": name, "base": base, "seeds": [0, 1, 2]}, sort_keys=False)
    return "\n".join(header) + "\n" + body


def export(search: Search, study: optuna.Study, runtime: Runtime) -> dict[str, Any]:
    """Write the study's outputs under results/<name>/search/<study>/ and return what was written."""
    out = store_mod.Store.of(runtime.results_dir, search.name).search_files(search.study_name)
    counts = study_mod.counts(study)
    summary: dict[str, Any] = {
        "study": search.study_name,
        "metric": search.metric,
        "direction": search.direction,
        "trials": counts,
        "out": str(out.path),
    }
    ranked, why = importances(study)
    summary["importance"] = ranked or {"skipped": why}
    out.write_importance(summary["importance"])
    if _finished(study):
        best = study.best_trial
        trial = trial_from_dict({**study.user_attrs["base"], **best.params}, where=f"study {search.study_name}")
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "key": trial.key,
            "trial": trial.to_dict(),
        }
        out.write_best(summary["best"])
        summary["grid"] = str(out.write_best_grid(best_grid(search, study, trial, runtime, out.best_grid)))
    else:
        summary["best"] = None
    out.write_trials(study.trials_dataframe())
    summary["plots"] = _plots(study, out)
    out.write_summary(summary)
    return summary
