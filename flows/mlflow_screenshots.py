"""Screenshots of the MLflow UI for the README: `python -m flows.mlflow_screenshots STUDY`.

Starts `mlflow ui` as `make mlflow-ui` does (flows/mlflow_app.py) on a free loopback port
over the tracking store, opens its landing page in headless Chromium with a fresh profile and
clicks, as a user would, to the sweep or table `STUDY` (flows/mlflow_browser.py): the runs
list's "Sweeps and tables" view with the parent's trials expanded, the parent run's overview,
and its compact ablation table (the `log_table` artifact). No URL is typed but the landing
page's: what the screenshots show is what a user gets by clicking.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows import mlflow_runs
from flows.dvc_runs import absolute_tracking_uri
from flows.mlflow_browser import fresh_browser, mlflow_ui, walk_to_table
from tasks.common.tracking import tracking_uri
from tasks.evaluate.listening_page import find_chromium
from tasks.params import load_params

# A sweep's compact table has 13 columns of 150 px beside MLflow's sidebar and the artifact
# tree: wider than the test's window, so that its last columns (state, experiment, note) are
# in the picture too.
WIDTH, HEIGHT = 2700, 1000


def parent_run_name(uri: str, experiment: str, study: str) -> str:
    """The newest sweep or table parent run of `study`."""
    client = mlflow_runs.client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {uri}")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.study = '{study}' and tags.kind != 'sweep-trial'",
        order_by=["attributes.start_time DESC"],
    )
    parents = [run for run in runs if run.data.tags.get("kind") in ("sweep", "table")]
    if not parents:
        raise SystemExit(f"no sweep or table parent run for study {study!r} in {uri}")
    return parents[0].info.run_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study name of a sweep or table flow run")
    parser.add_argument("--out", type=Path, default=Path("reports/screenshots"))
    args = parser.parse_args()
    tracking = load_params().tracking
    uri = absolute_tracking_uri(tracking_uri(tracking), Path.cwd())
    parent = parent_run_name(uri, tracking.experiment, args.study)
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
    with (
        mlflow_ui(uri) as ui,
        fresh_browser(chromium, {"width": WIDTH, "height": HEIGHT}) as page,
    ):
        walk = walk_to_table(page, ui, tracking.experiment, parent, shots=args.out)
    for path in walk.screenshots:
        print(path)
    print(f"{parent}: {len(walk.runs)} runs listed, columns {walk.columns}")


if __name__ == "__main__":
    main()
