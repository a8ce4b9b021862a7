"""The `ablation-table` flow: paper 000 Table I's protocol. The base configuration with every
switch off (params.yaml `ablation.base`), then each configuration of
`ablation.configurations` alone on top of it (CLAP REPA normal and aggressive, MuQ REPA,
Beta λ 0.2 / 1.0 / 2.0, paper 003's mask ratio and quality token), each over `seeds`
(`train.seed`), and optionally at each of `noise_levels` (params.yaml
`ablation.noise_levels`, corpus noise fractions: each level has its own base row), plus the
data-centric rows (each recipe off alone). Every cell is an enqueued trial of one Optuna
study, run by `ablation-trial` like a sweep's; a rerun runs only the cells that are missing
or failed. The table (mean ± std over seeds, delta against base at the same noise level,
Welch's t-test) goes to MLflow and reports/ablations.md.

    prefect deployment run ablation-table/local --param table_name=table1 --param seeds='[0, 1, 2]'
    prefect deployment run ablation-table/local --param table_name=noise \
        --param configurations='["no_clap_filter"]' --param noise_levels='["wrong_0", "wrong_30"]'

Cells that change upstream stages alike (a data-centric row's seeds, a noise level) share
those stages' outputs through DVC's run-cache; the first of each such group is queued before
its siblings (flows/studies.py upstream_first).
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
    noise_levels: list[str] | None = None,
    storage_url: str | None = None,
    pretrain_steps: Steps = None,
    finetune_steps: Steps = None,
    overrides: dict[str, Any] | None = None,
    trial_timeout_minutes: Minutes = None,
    trial_deployment: str | None = TRIAL_DEPLOYMENT,
    root: str | None = None,
) -> dict[str, Any]:
    """Run base + `configurations` (all of params.yaml's by default) × `seeds` ([0, 1, 2]),
    at each of `noise_levels` (none by default: the corpus as params.yaml has it)."""
    repo = repository(root)
    url = storage(repo, storage_url)
    fanout.require_reproduced(repo)
    config = params(repo)
    # [] is base alone (a sensitivity study: base over many seeds); None is every row
    chosen = list(config.ablation.configurations) if configurations is None else configurations
    seeds = seeds if seeds is not None else [0, 1, 2]
    # params.yaml's ablation.trial_overrides (the trial evaluation), under `overrides`
    fixed = fanout.budget_overrides(
        pretrain_steps, finetune_steps, None, overrides, config.ablation.trial_overrides
    )
    levels = noise_levels or []
    cells = studies.table_cells(config.ablation, chosen, seeds, levels)
    for cell in cells:  # every cell valid before any runs
        dvc_runs.check_overrides(repo, {**fixed, **cell.overrides})
    timeout = trial_timeout_minutes * 60 if trial_timeout_minutes else None
    logged = {
        "configurations": chosen,
        "seeds": seeds,
        "noise_levels": {name: config.ablation.noise_levels[name] for name in levels},
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
