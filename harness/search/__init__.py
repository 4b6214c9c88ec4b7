"""Hyperparameter search: a search file -> a persistent Optuna study (TPE) run through the runner with ASHA.

The only package that imports optuna. A search file names a base trial, the space of Trial fields to vary,
the metric (validation only: trials run with test=False and never see the test split), the pruner, and
where the study lives. Each invocation adds `samples` NEW trials to the study: the study persists
(SQLite at results/<name>/study.db unless `storage:` names a database URL), so running the same command
again continues it, and a search killed half-way keeps every finished trial. The best configuration is
exported as a grid file that reruns it with three seeds and evaluates on the test split.

spec reads the file, space its parameters, study holds the Optuna study, summary writes the outputs, main
runs one invocation; optuna_internals is the one call into what Optuna keeps to itself.
"""

from harness.search.main import Outcome, main_search, run
from harness.search.space import PARAMS, CategoricalParam, FloatParam, IntParam, Param, parse_space
from harness.search.spec import Pruner, Search, check_search, load_search, parse_search

__all__ = [
    "PARAMS",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "Outcome",
    "Param",
    "Pruner",
    "Search",
    "check_search",
    "load_search",
    "main_search",
    "parse_search",
    "parse_space",
    "run",
]
