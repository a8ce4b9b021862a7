"""MLflow's UI as a researcher reaches it: from the landing page, by clicks, in a fresh
headless-Chromium profile, to a sweep's runs list (model-training mode, no Assistant panel,
the parent's key metrics as columns), its trials, its overview and its ablation table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from flows import ablation_report, ablation_tables, mlflow_runs, mlflow_views, studies
from flows.mlflow_app import BROWSER_DEFAULTS, page_with_defaults
from tasks.params import Params
from tasks.train import pruning
from tests.processes import processes

STUDY = "demo"
PARENT = f"sweep-{STUDY}"
OUTCOMES = {  # trial number -> objective (None: pruned at step 4)
    0: 0.1204,
    1: 0.1532,
    2: None,
}


def _session_commands(url: str) -> list[str]:
    """The command lines of every process in the session of the server answering at `url`
    (mlflow_ui starts it in a session of its own)."""
    port = url.rsplit(":", 1)[1]
    table = processes()
    (session,) = {
        p.session for p in table if "mlflow" in p.command and f"--port {port}" in p.command
    }
    return [p.command for p in table if p.session == session]


def make_sweep(repo: Path, params: Params) -> tuple[str, list[str]]:
    """A sweep's records as the flows leave them (fanout.start_study, trial.open_trial and
    close, ablation_report.publish): the parent run, three trial runs nested under it (two
    complete, one pruned) and the report with its tables. Returns the tracking URI and the
    trials' run names."""
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow_runs.client_for(uri)
    experiment = params.tracking.experiment
    tags = {"kind": "sweep", "study": STUDY}
    parent = mlflow_runs.start_run(client, experiment, PARENT, tags, {"n_trials": 3})
    spec = studies.study_spec(params, "sweep", parent, {"train.optim.steps": 8}, None)
    study = studies.create_study(f"sqlite:///{repo / 'optuna.db'}", STUDY, spec, "tpe", 0)
    mlflow_views.save_view(
        client, parent, [f"best_{spec.objective}", spec.objective, *spec.metrics], spec.objective
    )
    names = []
    for number, objective in OUTCOMES.items():
        claimed = studies.claim_trial(study, spec, {})
        name = f"{STUDY}-{claimed.label}"
        trial_tags = {"kind": "sweep-trial", "study": STUDY, "optuna.trial": str(number)}
        run = mlflow_runs.start_run(
            client, experiment, name, trial_tags, claimed.overrides, parent_run_id=parent
        )
        timings = {"trial_seconds": 60.0 + number, "overhead_seconds": 5.0}
        studies.record_attributes(study, number, {"mlflow_run_id": run, **timings})
        if objective is None:
            pruning.trial_by_number(study, number).report(-1.25, 4)
            studies.record_attributes(study, number, {pruning.PRUNED_ATTR: 4})
            studies.close_trial(study, number, TrialState.PRUNED, None, {}, None)
            mlflow_runs.finish_trial_run(client, run, "PRUNED", timings, {}, None)
        else:
            metrics = {spec.objective: objective, "fad_clap": 1.0 - objective}
            studies.close_trial(study, number, TrialState.COMPLETE, objective, metrics, None)
            mlflow_runs.finish_trial_run(client, run, "COMPLETE", {**metrics, **timings}, {}, None)
        names.append(name)
    ablation_report.publish(study, spec, repo, client)
    client.set_terminated(parent)
    return uri, names


def test_the_page_sets_browser_defaults_only_where_a_browser_has_none() -> None:
    page = page_with_defaults('<html><head><script src="main.js"></script></head></html>')
    assert page.index("localStorage") < page.index("main.js")  # before MLflow's own code
    assert "localStorage.getItem(k)===null" in page  # a user's own choice is kept
    assert json.dumps(json.dumps("machine_learning")) in page
    assert BROWSER_DEFAULTS["mlflow.workflowType_v1"] == "machine_learning"
    with pytest.raises(ValueError, match="no <head>"):
        page_with_defaults("<html></html>")


def test_the_view_keeps_every_study_s_columns_best_first(tmp_path) -> None:
    client = mlflow_runs.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = mlflow_runs.start_run(client, "exp", "sweep-a", {"kind": "sweep"}, {})
    mlflow_views.save_view(client, parent, ["trials_complete", "clap_score"], "clap_score")
    mlflow_views.save_view(client, parent, ["beta_0.2/clap_score_mean", "best_clap_score"], "x")
    experiment = client.get_run(parent).info.experiment_id
    assert mlflow_views.shown_metrics(client, experiment) == [
        "best_clap_score",
        "clap_score",  # the trials' figures next, then a table's means, then the counts
        "beta_0.2/clap_score_mean",
        "trials_complete",
    ]
    envelope = json.loads(client.get_experiment(experiment).tags[mlflow_views.VIEW_TAG])
    assert (
        envelope["name"] == mlflow_views.VIEW_NAME
        and envelope["updatedAt"] >= envelope["createdAt"]
    )
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == mlflow_views.SEARCH_FILTER
    assert state["columnOrder"] == state["selectedColumns"]


@pytest.mark.slow
def test_a_researcher_clicks_from_the_landing_page_to_the_sweep_and_its_table(
    tmp_path, monkeypatch, shipped_params, chromium
) -> None:
    from flows.mlflow_browser import fresh_browser, mlflow_ui, walk_to_table

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    params = Params.from_mapping(shipped_params)
    uri, trials = make_sweep(tmp_path, params)
    with mlflow_ui(uri) as ui, fresh_browser(chromium) as page:
        # MLflow's server without its GenAI job runner (flows/local_servers.MLFLOW_SERVER_ENV)
        commands = _session_commands(ui)
        assert any("uvicorn" in command for command in commands), commands
        assert not [command for command in commands if "mlflow.server.jobs" in command]
        walk = walk_to_table(page, ui, params.tracking.experiment, PARENT, shots=tmp_path / "shots")
        # The first click lands on the runs list in model-training mode, nothing over it
        assert "/runs" in walk.runs_url
        assert walk.workflow_type == json.dumps("machine_learning")
        assert not walk.assistant_panel and not walk.detect_issues
        # Views > Sweeps and tables: the sweep's figures as columns, its result first
        assert walk.columns[0] == "best_clap_score"
        assert {"clap_score", "fad_clap", "trials_complete", "trials_pruned"} <= set(walk.columns)
        assert walk.parent_metrics["best_clap_score"] == "0.1532"
        assert walk.parent_metrics["trials_complete"] == "2"
        assert walk.parent_metrics["trials_pruned"] == "1"
        # its `+` lists the trials under it; its overview names them as child runs
        assert walk.runs[0] == PARENT and sorted(walk.runs[1:]) == sorted(trials)
        assert sorted(walk.child_runs) == sorted(trials)
        # the compact table, as MLflow's table view of the logged table shows it
        study, spec = studies.load_study(f"sqlite:///{tmp_path / 'optuna.db'}", STUDY)
        compact = ablation_tables.compact_trials(ablation_tables.trials_table(study, spec), spec)
        assert walk.table_header == [str(name).replace(".", "/") for name in compact.columns]
        assert len(walk.table_rows) == len(OUTCOMES)
        shown = {row[0]: row for row in walk.table_rows}
        assert "COMPLETE" in shown["1"] and "0.1532" in shown["1"]
        assert "PRUNED" in shown["2"] and any("pruned at step 4" in cell for cell in shown["2"])
        assert [path.name for path in walk.screenshots] == [
            "mlflow_runs.png",
            "mlflow_parent_run.png",
            "mlflow_ablation_table.png",
        ]
        # A user's own choice stays: switched to GenAI, the page keeps it on the next visit,
        # and the GenAI overview opens without the Assistant panel or the Detect Issues pop-up
        page.get_by_text("GenAI", exact=True).first.click()
        page.wait_for_url("**workflowType=genai**")
        page.goto(ui)
        page.get_by_role("link", name=params.tracking.experiment, exact=True).first.click()
        page.wait_for_url("**/overview**")
        page.wait_for_timeout(2000)  # the pop-up shows once the overview has rendered
        stored = page.evaluate("localStorage.getItem('mlflow.workflowType_v1')")
        assert stored == json.dumps("genai")
        assert not page.get_by_text("Detect Issues in Your Traces").is_visible()
        assert not page.get_by_placeholder("Ask a question").is_visible()
