"""The one part of Optuna the search uses that Optuna calls internal: recording a trial's heartbeat.

Optuna beats a trial's heartbeat only inside study.optimize(); a search through Ray asks and tells, so it
beats for its trials itself, through the storage's record_heartbeat (BaseHeartbeat: "not supposed to be
directly accessed by library users"). Everything else here is the storage's documented interface.
tests/test_search.py checks CONTRACT against the installed Optuna, naming whatever an upgrade moved.
"""

from __future__ import annotations

import optuna

# What this module calls, for the contract test: (class, attribute).
CONTRACT = (
    (optuna.storages.RDBStorage, "record_heartbeat"),
    (optuna.storages.RDBStorage, "get_heartbeat_interval"),
    (optuna.storages.BaseStorage, "get_study_id_from_name"),
    (optuna.storages.BaseStorage, "get_trial_id_from_study_id_trial_number"),
)


def contract_problems() -> list[str]:
    """Every attribute this module relies on that the installed Optuna lacks, one line each."""
    return [
        f"optuna {optuna.__version__}: {cls.__name__}.{name} is gone (harness/search/optuna_internals.py uses it)"
        for cls, name in CONTRACT
        if not callable(getattr(cls, name, None))
    ]


def record_heartbeat(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> None:
    """Tell the storage that trial `number` of the study is alive; nothing where it keeps no heartbeats."""
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.get_heartbeat_interval() is None:
        return
    study_id = storage.get_study_id_from_name(study_name)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, number))
