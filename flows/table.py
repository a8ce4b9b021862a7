"""The `ablation-table` flow: paper 000 Table I's protocol. The base configuration with every
switch off (params.yaml `ablation.base`), then each configuration of
`ablation.configurations` alone on top of it (CLAP REPA normal and aggressive, MuQ REPA,
Beta λ 0.2 / 1.0 / 2.0, paper 003's mask ratio and quality token), each over `seeds`
(`train.seed`). Every cell is an enqueued trial of one Optuna study, run by `ablation-trial`
like a sweep's; a rerun runs only the cells that are missing or failed. The table (mean ± std
over seeds, delta against base, Welch's t-test) goes to MLflow and reports/ablations.md.

    prefect deployment run ablation-table/local --param table_name=table1 --param seeds='[0, 1, 2]'
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import dvc_runs, fanout, studies
from flows.fanout import Minutes, Seeds, Steps, StudyName
from flows.settings import TRIAL_DEPLOYMENT, params, repository, storage


@flow(name="ablation-table", log_prints=True)
def ablation_table(
    table_name: StudyName = "table1",
    seeds: Seeds = None,
    configurations: list[str] | None = None,
    storage_url: str | None = None,
    pretrain_steps: Steps = None,
    finetune_steps: Steps = None,
    overrides: dict[str, Any] | None = None,
    trial_timeout_minutes: Minutes = None,
    trial_deployment: str | None = TRIAL_DEPLOYMENT,
    root: str | None = None,
) -> dict[str, Any]:
    """Run base + `configurations` (all of params.yaml's by default) × `seeds` ([0, 1, 2])."""
    repo = repository(root)
    url = storage(repo, storage_url)
    fanout.require_reproduced(repo)
    config = params(repo)
    chosen = configurations or list(config.ablation.configurations)
    seeds = seeds if seeds is not None else [0, 1, 2]
    fixed = fanout.budget_overrides(pretrain_steps, finetune_steps, None, overrides)
    cells = studies.table_cells(config.ablation, chosen, seeds)
    for _, _, cell in cells:
        dvc_runs.check_overrides(repo, {**fixed, **cell})  # every cell valid before any runs
    timeout = trial_timeout_minutes * 60 if trial_timeout_minutes else None
    logged = {
        "configurations": chosen,
        "seeds": seeds,
        "storage": url,
        "fixed_overrides": fixed,
        "base": config.ablation.base,
    }
    # Cells are enqueued, not sampled: the sampler only has to exist.
    study = fanout.start_study(
        repo, config, "table", table_name, url, fixed, timeout, ("random", 0), logged
    )
    queued = studies.enqueue_cells(study, cells)
    print(f"table {table_name}: {len(queued)} of {len(cells)} cells to run")
    try:
        fanout.run_trials(len(queued), trial_deployment, table_name, url, str(repo))
    finally:
        result = fanout.finish(repo, url, table_name, chosen)
    print(f"table {table_name}: {result['states']}, report {result['report']}")
    print(f"MLflow parent run {result['mlflow_parent_run_id']}" + fanout.best_line(result))
    return result
