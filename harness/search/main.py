"""One `harness search` invocation: check the file, open the study, run new trials through the runner, export."""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from harness import store as store_mod
from harness.config import Runtime, Trial
from harness.search import study as study_mod
from harness.search.space import CategoricalParam, sample
from harness.search.spec import CACHE_FIELDS, DIRECTIONS, Search, check_search, load_search
from harness.search.summary import export

if TYPE_CHECKING:  # ray: imported only when a search runs
    from harness.runner.searcher import SearchPlan

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One invocation: what its new trials did, and the study as it stands after it."""

    search: Search
    new: dict[str, int]  # complete / pruned / failed among this invocation's trials
    failures: list[str]  # one line per failed trial
    summary: dict[str, Any]  # from export()
    stopped: str | None = None  # the signal that stopped the search, if one did

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return 130  # as a shell reports a command ended by Ctrl-C
        return 1 if self.new.get("failed") else 0

    def lines(self) -> list[str]:
        s, counts = self.summary, self.summary["trials"]
        interrupted = f", {self.new['interrupted']} interrupted" if self.new.get("interrupted") else ""
        held = f", {counts['interrupted']} interrupted" if counts.get("interrupted") else ""
        if counts.get("resumed"):
            held += f" ({counts['resumed']} of them resumed since)"
        out = [
            f"{self.search.study_name}: {sum(self.new.values())} new trials: {self.new['complete']} complete, "
            f"{self.new['pruned']} pruned, {self.new['failed']} failed{interrupted}; the study now holds "
            f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed{held}"
            + (f", {counts['running']} running elsewhere or only just stopped" if counts.get("running") else "")
        ]
        out += [f"  FAILED {line}" for line in self.failures]
        if s["best"]:
            params = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["best"]["params"].items()
            )
            out.append(f"best: trial #{s['best']['number']} {self.search.metric} {s['best']['value']:.4f} ({params})")
            out.append(f"rerun it with 3 seeds on the test split: python -m harness run {s['grid']}")
        if "skipped" in s["importance"]:
            out.append(f"importance: skipped ({s['importance']['skipped']})")
        else:
            out.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importance"].items()))
        out.append(f"outputs: {s['out']}")
        if self.stopped:
            from harness.runner.searcher import stopped_line

            out.append(stopped_line(self.stopped))
        return out


def _cache_trials(search: Search, base: Trial) -> list[Trial]:
    """The base and every combination of the categorical choices that shape the image cache."""
    shaping = [p for p in search.space.values() if p.field in CACHE_FIELDS and isinstance(p, CategoricalParam)]
    return [
        base.replace(**{p.field: v for p, v in zip(shaping, combo)})
        for combo in itertools.product(*(p.choices for p in shaping))
    ]


def run(search: Search, runtime: Runtime) -> Outcome:
    """Add search.samples new trials to the study, then write its outputs. Validation happens before Ray starts."""
    from harness import prepare
    from harness.runner import searcher as runner

    check_search(search)
    st = store_mod.Store.of(runtime.results_dir, search.name)
    st.check_writable()
    storage = study_mod.storage(search, st.root)  # a bad URL fails here, before any data is generated or cached
    trials, runtime = prepare.resolve_dataset([search.base], runtime)
    base = trials[0]
    with st.lock():
        study = _reopen_study(search, storage, base)
        prepare.prepare_all(_cache_trials(search, base), runtime)
        # Offset by the trials so far: a rerun with the seed alone would draw the first run's startup points again.
        sampler = optuna.samplers.TPESampler(
            seed=search.seed + len(study.trials),
            n_startup_trials=search.startup_trials,
            constant_liar=search.concurrency > 1,
        )
        study = optuna.load_study(study_name=search.study_name, storage=storage, sampler=sampler)
        draw = functools.partial(sample, space=search.space, base=base.to_dict())
        live = study_mod.LiveTrials(study, draw, storage=storage)
        plan = _search_plan(search, base, study, live)
        try:
            result = runner.run_search(plan, runtime)
        finally:
            live.close()  # trials a stop left unfinished are failed, saying so
        summary = export(search, study, runtime)
    return Outcome(
        search=search,
        new=result.counts(),
        failures=result.failure_lines(),
        summary=summary,
        stopped=result.stopped,
    )


def _reopen_study(search: Search, storage: optuna.storages.RDBStorage, base: Trial) -> optuna.Study:
    """Study step: the study opened (or created); trials of a search that died marked failed, interrupted ones
    queued to run first from their last finished epoch."""
    study = study_mod.open_study(search, storage, base)
    stale = study_mod.fail_stale(study)
    if stale:
        log.warning(
            "%s: %d trial(s) of a search that stopped without finishing them marked failed; "
            "the study's finished trials are kept",
            search.study_name,
            stale,
        )
    queued = study_mod.requeue_interrupted(study)
    if queued:
        log.warning(
            "%s: %d interrupted trial(s) (#%s) run first, each from its last finished epoch",
            search.study_name,
            len(queued),
            ", #".join(map(str, queued)),
        )
    return study


def _search_plan(search: Search, base: Trial, study: optuna.Study, live: study_mod.LiveTrials) -> SearchPlan:
    """Plan step: what the runner needs to run the search (runner.SearchPlan), the study's finished trials as
    the prior of the ASHA rungs."""
    from harness.runner import searcher as runner

    arch = search.space.get("arch")
    return runner.SearchPlan(
        name=search.name,
        study_name=search.study_name,
        base=base,
        fields=list(search.space),
        archs=arch.choices if isinstance(arch, CategoricalParam) else (base.arch,),
        study=live,
        metric=search.metric,
        mode=DIRECTIONS[search.direction],
        samples=search.samples,
        concurrency=search.concurrency,
        grace_period=search.pruner.grace_period if search.pruner else None,
        reduction_factor=search.pruner.reduction_factor if search.pruner else 3.0,
        prior=study_mod.prior(study),
    )


def main_search(
    path: Path | str, *, profile: str | None = None, samples: int | None = None, runtime: Runtime, dry_run: bool = False
) -> int:
    """`harness search SEARCH_YAML`: run the search, print its summary; the exit code is the CLI's."""
    search = load_search(path, profile=profile, samples=samples)
    if dry_run:
        check_search(search)
        print("\n".join(search.describe()))
        return 0
    outcome = run(search, runtime)
    print("\n".join(outcome.lines()))
    from harness.runner import tracking

    print("\n".join(tracking.dashboards(runtime.trackers, store_mod.Store.of(runtime.results_dir, search.name))))
    return outcome.exit_code
