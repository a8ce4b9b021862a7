"""Screenshots of the MLflow UI for the README: `python -m flows.mlflow_screenshots STUDY`.

Starts `mlflow ui` on a free loopback port over the tracking store, finds the parent run of
the sweep or table `STUDY`, and saves with headless Chromium (tasks/evaluate/listening_page.py) the
experiment's runs list (the parent with its trial runs), the parent run's overview, and its
ablation table (the `log_table` artifact) into `--out`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from flows import mlflow_runs
from flows.dvc_runs import absolute_tracking_uri
from flows.local_servers import free_port, wait_until_answering
from tasks.common.tracking import tracking_uri
from tasks.evaluate.listening_page import find_chromium, take_screenshot
from tasks.params import load_params

HEIGHT, WIDTH = 1000, 1800  # wide enough for the ablation table's columns
TIMEOUT_S = 120


def pages(ui: str, run) -> dict[str, str]:
    experiment, run_id = run.info.experiment_id, run.info.run_id
    # The runs list shows the parent (its trial runs nested under it, collapsed: the parent's
    # overview links them as its child runs)
    study = quote(f"tags.study = '{run.data.tags['study']}'")
    view = "workflowType=machine_learning"  # MLflow 3 opens in its GenAI view otherwise
    return {
        "mlflow_runs": f"{ui}/#/experiments/{experiment}/runs?{view}&searchFilter={study}",
        "mlflow_parent_run": f"{ui}/#/experiments/{experiment}/runs/{run_id}?{view}",
        "mlflow_ablation_table": (
            f"{ui}/#/experiments/{experiment}/runs/{run_id}/artifacts/ablations/trials.json?{view}"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study name of a sweep or table flow run")
    parser.add_argument("--out", type=Path, default=Path("reports/screenshots"))
    args = parser.parse_args()
    tracking = load_params().tracking
    uri = absolute_tracking_uri(tracking_uri(tracking), Path.cwd())
    client = mlflow_runs.client_for(uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {tracking.experiment!r} in {uri}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.study = '{args.study}' and tags.kind != 'sweep-trial'",
        order_by=["attributes.start_time DESC"],
    )
    parents = [run for run in runs if run.data.tags.get("kind") in ("sweep", "table")]
    if not parents:
        raise SystemExit(f"no sweep or table parent run for study {args.study!r} in {uri}")
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ui = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{ui}/health", 120, server, "mlflow ui")
        for name, url in pages(ui, parents[0]).items():
            path = args.out / f"{name}.png"
            take_screenshot(chromium, url, path, HEIGHT, TIMEOUT_S, width=WIDTH)
            print(f"{url} -> {path}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
