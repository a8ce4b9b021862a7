"""The training stage's side of a sweep trial: report validation losses, stop when pruned.

The trial's runner (flows/trial.py) names the trial in `TTM_OPTUNA_STORAGE`,
`TTM_OPTUNA_STUDY` and `TTM_OPTUNA_TRIAL`; `pretrain` and `finetune` then report their
validation flow-matching loss to it at every evaluation, finetune's steps after pretrain's,
and raise `TrialPruned` when the study's pruner (from the spec the study carries) says so,
recording the step as the trial's `pruned_at_step` for the runner. Kept apart from
flows/studies.py so that changing the sweep's orchestration never makes training stale.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import optuna
import optuna.storages.journal

from tasks.params import PrunerParams

STORAGE_ENV = "TTM_OPTUNA_STORAGE"
STUDY_ENV = "TTM_OPTUNA_STUDY"
TRIAL_ENV = "TTM_OPTUNA_TRIAL"
SPEC_ATTR = "spec"
PRUNED_ATTR = "pruned_at_step"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")

TrialPruned = optuna.TrialPruned


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB URL (sqlite:///..., postgresql+psycopg://...) or a journal file path."""
    if url.endswith(JOURNAL_SUFFIXES) and "://" not in url:
        backend = optuna.storages.journal.JournalFileBackend(str(Path(url).resolve()))
        return optuna.storages.JournalStorage(backend)
    if "://" in url:
        return _rdb_storage(url, os.getpid())
    raise ValueError(
        f"storage {url!r}: expected an SQLAlchemy URL (sqlite:///abs/path.db, "
        f"postgresql+psycopg://user@host/db) or a journal file ending in {JOURNAL_SUFFIXES}"
    )


@functools.cache
def _rdb_storage(url: str, pid: int) -> optuna.storages.RDBStorage:
    """One RDBStorage (one SQLAlchemy engine and its connection pool) per URL and process, as
    SQLAlchemy intends: a new one per call leaves each old pool's connections open until
    garbage collection, and a process that polls its study (a sweep, a watcher) then runs a
    PostgreSQL server out of connections ("too many clients already"). `pid` keeps a forked
    child (a warm-start server's stage) from inheriting its parent's pool."""
    if url.startswith("sqlite:///"):
        # Trials write from several processes: wait for SQLite's lock rather than fail.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def make_pruner(pruner: PrunerParams) -> optuna.pruners.BasePruner:
    if pruner.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps
    )


def trial_by_number(study: optuna.Study, number: int) -> optuna.Trial:
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)


def report_sign(direction: optuna.study.StudyDirection) -> float:
    """The factor between a validation loss and the intermediate value reported for it (its
    own inverse: it also turns a reported value back into the loss)."""
    return -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0


class PruningCallback:
    """A trainer ValidationCallback: report the validation loss to the trial, stop the run
    when the study's pruner says so. `step_offset` puts finetune after pretrain's steps.

    Optuna's pruners read intermediate values in the study's direction, and a loss is better
    low: in a study that maximises its objective (CLAP score) the loss is reported negated.
    """

    def __init__(self, trial: optuna.Trial, step_offset: int) -> None:
        self.trial, self.step_offset = trial, step_offset
        self.sign = report_sign(trial.study.direction)

    def __call__(self, step: int, validation_loss: float) -> None:
        global_step = self.step_offset + step
        # Every process of a multi-process run reports the same (all-reduced) value and asks
        # the same storage, so all of them stop together; repeated reports are ignored.
        self.trial.report(self.sign * validation_loss, global_step)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, global_step)
            raise TrialPruned(
                f"pruned at step {global_step} (validation loss {validation_loss:.4f})"
            )


def pruning_callbacks(step_offset: int) -> list[PruningCallback]:
    """The callback of the trial named by TTM_OPTUNA_* (set by the sweep's trial runner);
    none outside a sweep."""
    storage = os.environ.get(STORAGE_ENV)
    if not storage:
        return []
    name = os.environ[STUDY_ENV]
    backend = open_storage(storage)
    probe = optuna.load_study(study_name=name, storage=backend)
    pruner = PrunerParams.model_validate(probe.user_attrs[SPEC_ATTR]["pruner"])
    study = optuna.load_study(study_name=name, storage=backend, pruner=make_pruner(pruner))
    trial = trial_by_number(study, int(os.environ[TRIAL_ENV]))
    return [PruningCallback(trial, step_offset)]


def trial_environment(storage: str, study: str, number: int) -> dict[str, str]:
    return {STORAGE_ENV: storage, STUDY_ENV: study, TRIAL_ENV: str(number)}


def pruned_step(storage: str, study_name: str, number: int) -> int | None:
    """The step the training stage (another process) recorded when the pruner stopped it,
    read afresh from the storage."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    step = trial.user_attrs.get(PRUNED_ATTR)
    return int(step) if step is not None else None
