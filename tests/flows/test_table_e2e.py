"""End to end, as a user drives them: the `ablation-table` and `pipeline` deployments on a
Prefect stack over the reproduced scratch DAG (the `stack` fixture, tests/flows/conftest.py).
One xdist group of its own (conftest.XDIST_GROUPS), beside tests/flows/test_sweep_e2e.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.prefect_stack import EXPERIMENT, PRETRAIN_STEPS, prefect_artifacts, study

pytestmark = pytest.mark.slow


ROW = "no_two_stage_captions"  # a data-centric row that reruns only finetune and evaluate


def test_table_deployment_runs_base_and_one_switch_over_two_seeds(stack):
    """Table I's protocol on a 2-row x 2-seed mini table, with a data-centric row (paper 000
    §II-B's caption stage off): every cell complete; mean ± std per configuration, Δ against
    base, Welch's test, in MLflow and in reports/. Shape, states and columns, not values."""
    result = stack.prefect(
        "deployment",
        "run",
        "ablation-table/local",
        "--param",
        "table_name=t1",
        "--param",
        f'configurations=["{ROW}"]',
        "--param",
        "seeds=[0, 1]",
        *PRETRAIN_STEPS,
        "--watch",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study(stack.root, "t1").trials
    cells = sorted((t.user_attrs["configuration"], t.user_attrs["seed"]) for t in trials)
    assert cells == [("base", 0), ("base", 1), (ROW, 0), (ROW, 1)]
    outcomes = {t.number: (t.state.name, t.user_attrs.get("fail_reason")) for t in trials}
    assert all(state == "COMPLETE" for state, _ in outcomes.values()), outcomes
    overrides = {t.user_attrs["configuration"]: t.user_attrs["overrides"] for t in trials}
    assert overrides[ROW]["finetune.two_stage_captions"] is False
    assert overrides["base"]["finetune.two_stage_captions"] is True
    client = mlflow.MlflowClient(f"sqlite:///{stack.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.kind = 'table' and tags.study = 't1'"
    )
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "ablations/table_one.json")).read_text()
    )
    metrics = yaml.safe_load((stack.root / "params.yaml").read_text())["ablation"]["metrics"]
    statistics = ("mean", "std", "delta", "p", "significant")
    assert {f"{m}_{s}" for m in metrics for s in statistics} <= set(table["columns"])
    # params.yaml's ablation.trial_overrides: every cell ran the trial evaluation
    fixed = json.loads(parent.data.params["fixed_overrides"])
    assert fixed["evaluate.profile"] == "trial"
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert list(rows) == ["base", ROW]
    assert all(row["seeds"] == 2 and row["failed"] == 0 for row in rows.values())
    for metric in metrics:  # statistics over two seeds exist; what they say is the lead's
        assert all(isinstance(row[f"{metric}_std"], float) for row in rows.values())
        assert rows["base"][f"{metric}_delta"] == ""  # base is the reference
        assert isinstance(rows[ROW][f"{metric}_p"], float)  # Welch's test over the two seeds
        assert isinstance(rows[ROW][f"{metric}_significant"], bool)
    report = (stack.root / "reports" / "ablations" / "t1.md").read_text()
    assert "Table I protocol" in report
    assert re.search(rf"^\| {ROW} +\| +2 \| +0 \|", report, re.MULTILINE), report
    # the row tests paper 000 §II-B's claim; the differences from base as a figure beside it
    assert re.search(rf"^\| Fine-tuning on concise .*\| {ROW} +\|", report, re.MULTILINE), report
    assert (stack.root / "reports" / "ablations" / "t1_deltas.png").stat().st_size > 0


def test_pipeline_deployment_reproduces_only_what_changed(stack):
    def run_pipeline() -> str:
        result = stack.prefect("deployment", "run", "pipeline/local", "--watch")
        assert result.returncode == 0, result.stdout + result.stderr
        (latest, *_) = prefect_artifacts(stack, "pipeline-stages")
        return latest["data"]

    table = run_pipeline()  # the reproduced DAG: a no-op
    assert table.count("up to date") == 8 and "| ran |" not in table
    path = stack.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["finetune"]["optim"]["steps"] += 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    table = run_pipeline()
    ran = {line.split("|")[1].strip() for line in table.splitlines() if "| ran |" in line}
    assert ran == {"finetune", "evaluate"}, table
    (link, *_) = prefect_artifacts(stack, "mlflow-finetune")
    assert "/#/experiments/" in link["data"] and "/runs/" in link["data"]
