"""The `ablation-sweep` flow: an Optuna study over params.yaml's `ablation.search_space`
(Beta λ, REPA-CLAP and REPA-MuQ weights, mask ratio), TPE by default, the median pruner on
the trainer's validation loss. Each trial is a flow run of `ablation-trial` (a DVC
experiment, an MLflow child run); when the sweep ends, failed trials included, the table of
all trials goes to the MLflow parent run and to reports/ablations.md.

    prefect deployment run ablation-sweep/local --param study_name=beta-repa --param n_trials=12
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import dvc_runs, fanout, studies
from flows.fanout import Minutes, Seed, Steps, StudyName, TrialCount
from flows.settings import TRIAL_DEPLOYMENT, params, repository, storage


@flow(name="ablation-sweep", log_prints=True)
def ablation_sweep(
    study_name: StudyName = "sweep",
    n_trials: TrialCount = 8,
    storage_url: str | None = None,
    sampler_seed: Seed = 0,
    training_seed: Seed | None = None,
    pretrain_steps: Steps = None,
    finetune_steps: Steps = None,
    overrides: dict[str, Any] | None = None,
    trial_timeout_minutes: Minutes = None,
    trial_deployment: str | None = TRIAL_DEPLOYMENT,
    root: str | None = None,
) -> dict[str, Any]:
    """Sweep `n_trials` more trials of `study_name` (resumed if it exists in the storage).

    storage_url: Optuna storage (SQLite in the repository by default; a PostgreSQL URL for
    workers on several machines). pretrain_steps / finetune_steps: the budget per trial.
    training_seed: `train.seed` of every trial. overrides: more params for every trial, on
    top of params.yaml's `ablation.trial_overrides` (the trial evaluation profile).
    trial_deployment: where trials run (None: one after another in this process).
    """
    repo = repository(root)
    url = storage(repo, storage_url)
    if n_trials == 0 and not studies.study_exists(url, study_name):
        raise ValueError(
            f"n_trials=0 closes and reports an existing study, and {url} has no study "
            f"{study_name!r}: give n_trials >= 1 to start it"
        )
    fanout.require_reproduced(repo)
    config = params(repo)
    fixed = fanout.budget_overrides(
        pretrain_steps, finetune_steps, training_seed, overrides, config.ablation.trial_overrides
    )
    dvc_runs.check_overrides(repo, fixed)
    timeout = trial_timeout_minutes * 60 if trial_timeout_minutes else None
    space = {key: dimension.model_dump() for key, dimension in config.ablation.search_space.items()}
    logged = {
        "n_trials": n_trials,
        "sampler": config.ablation.sampler,
        "sampler_seed": sampler_seed,
        "storage": url,
        "fixed_overrides": fixed,
        "search_space": space,
    }
    fanout.start_study(
        repo,
        config,
        "sweep",
        study_name,
        url,
        fixed,
        timeout,
        (config.ablation.sampler, sampler_seed),
        logged,
    )
    try:
        fanout.run_trials(n_trials, trial_deployment, study_name, url, str(repo))
    finally:
        result = fanout.finish(repo, url, study_name, [])
    print(f"sweep {study_name}: {result['states']}, report {result['report']}")
    print(f"MLflow parent run {result['mlflow_parent_run_id']}" + fanout.best_line(result))
    return result
