"""`mlflow ui --app-name score-aware-ttm`: MLflow's own server, whose UI opens a browser's
first visit in model-training mode, without the Assistant panel or the GenAI pop-ups.

Why a server plugin: from MLflow 3.10 (3.9.0 has no such switch; 3.17.2 and 3.18.0 the same)
the experiment page shows what the sidebar's GenAI / Model training switch says, and the
switch is per browser: the URL's `?workflowType=` (not kept), else localStorage
`mlflow.workflowType_v1`, else GenAI. The experiment tag `mlflow.experimentKind` is no longer
read for it (MLflow PR #20161 made the page take its kind from that switch), and no server
flag or environment variable sets it
(`/server-info` only advertises workspaces, trace archival, uploads and the AI gateway). On
a first visit to a localhost server the Assistant panel also opens itself
(`mlflow.assistant.fab.autoOpenedOnFirstLoad_v1`), and the GenAI overview shows a "Detect
Issues" guidance pop-up (`mlflow.detectIssues.guidanceShown_v1`).

So the UI's page carries a few lines that write those keys before MLflow's code reads them,
and only where the browser has none: a user's own choice (switching back to GenAI, opening
the Assistant from its button) stays theirs. MLflow loads this through its custom-app entry
point (`[project.entry-points."mlflow.app"]` in pyproject.toml); tests/flows/test_mlflow_ui.py
clicks through a fresh browser profile to check that the keys still do this in the MLflow
installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from flask import Flask, Response
from mlflow.environment_variables import _MLFLOW_SGI_NAME
from mlflow.server import app as mlflow_flask_app

APP_NAME = "score-aware-ttm"  # the entry point's name: `mlflow ui --app-name score-aware-ttm`

# localStorage key -> value, as MLflow's useLocalStorage stores them (`<key>_v<version>`,
# JSON). Unknown keys are harmless to another MLflow version: the test says what still works.
BROWSER_DEFAULTS: dict[str, Any] = {
    "mlflow.workflowType_v1": "machine_learning",  # the "Model training" side of the switch
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,  # no self-opening Assistant panel
    "mlflow.detectIssues.guidanceShown_v1": True,  # no "Detect Issues" pop-up
}


def defaults_script(defaults: dict[str, Any] = BROWSER_DEFAULTS) -> str:
    """A <script> that sets each key only where the browser has none; a browser without
    localStorage (blocked storage) just gets MLflow's own defaults."""
    entries = json.dumps({key: json.dumps(value) for key, value in defaults.items()})
    return (
        "<script>try{for(const[k,v]of Object.entries("
        + entries
        + "))if(localStorage.getItem(k)===null)localStorage.setItem(k,v)}catch(e){}</script>"
    )


def page_with_defaults(page: str) -> str:
    """MLflow's index.html with the script first in <head>, before the app's own bundle."""
    head = page.find("<head>")
    if head < 0:
        raise ValueError("MLflow's index.html has no <head>: cannot set the browser defaults")
    at = head + len("<head>")
    return page[:at] + defaults_script() + page[at:]


def _serve_page(app: Flask, original: Callable[[], Any]) -> Any:
    index = os.path.join(app.static_folder or "", "index.html")
    if not os.path.exists(index):  # a source checkout of MLflow: its own error page
        return original()
    with open(index, encoding="utf-8") as page:
        text = page_with_defaults(page.read())
    # no caching: the page is small, and a cached copy would outlive a change of defaults
    return Response(text, mimetype="text/html", headers={"Cache-Control": "no-cache"})


def create_app(app: Flask = mlflow_flask_app) -> Any:
    """The factory MLflow's `--app-name` calls in each server worker: MLflow's Flask app with
    its page route (`serve`: `/` and the static prefix) answering the page with defaults,
    wrapped as MLflow wraps it for its default server (FastAPI under uvicorn)."""
    original = app.view_functions["serve"]
    if getattr(original, "sets_browser_defaults", False) is False:

        def serve() -> Any:
            return _serve_page(app, original)

        serve.sets_browser_defaults = True  # type: ignore[attr-defined]
        app.view_functions["serve"] = serve
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
