"""The MLflow UI as a researcher reaches it: `mlflow ui` as `make mlflow-ui` starts it, a
headless Chromium with a fresh profile, and the clicks from MLflow's landing page to a sweep's
runs and its ablation table. tests/flows/test_mlflow_ui.py asserts what these clicks show;
`python -m flows.mlflow_screenshots` takes the README's screenshots on the way.

The clicks: the experiment's name on the landing page (its runs list, model-training mode:
flows/mlflow_app.py), Views > "Sweeps and tables" (the parents with their metric columns:
flows/mlflow_views.py), the parent's `+` (its trials), the parent's name (its overview, child
runs listed), Artifacts, then the table's folder and file (MLflow's table view of a
`log_table` artifact). Playwright drives the system Chromium (`executable_path`): no browser
download.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from playwright.sync_api import Locator, Page, sync_playwright

from flows.local_servers import MLFLOW_SERVER_ENV, free_port, wait_until_answering
from flows.mlflow_app import APP_NAME
from flows.mlflow_views import VIEW_NAME
from tasks.evaluate.listening_page import CHROMIUM_FLAGS

VIEWPORT = {"width": 1800, "height": 1000}  # wide enough for the metric columns
TIMEOUT_MS = 60_000  # a first page load on 2 busy cores takes ~10 s
SERVER_TIMEOUT_S = 120
RUN_NAME_CELL = "[role=gridcell][col-id='attributes.`Run Name`']"
METRIC_PREFIX = "metrics.`"


@dataclass
class Walk:
    """What each step of the click path showed."""

    runs_url: str = ""
    workflow_type: str | None = None  # localStorage after the first click
    assistant_panel: bool = False  # the Assistant's panel, open by itself
    detect_issues: bool = False  # GenAI's "Detect Issues" guidance
    columns: list[str] = field(default_factory=list)  # the runs list's metric columns
    parent_metrics: dict[str, str] = field(default_factory=dict)  # column -> parent's value
    runs: list[str] = field(default_factory=list)  # run names listed, after the `+`
    child_runs: list[str] = field(default_factory=list)  # named on the parent's overview
    table_header: list[str] = field(default_factory=list)
    table_rows: list[list[str]] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, workers: int = 1) -> Iterator[str]:
    """`mlflow ui --app-name score-aware-ttm` over `tracking_uri` on a free loopback port, as
    `make mlflow-ui` runs it; yields its URL, stops it (and its uvicorn workers) after."""
    if APP_NAME not in {point.name for point in entry_points(group="mlflow.app")}:
        raise RuntimeError(
            f"MLflow app {APP_NAME!r} is not registered: `make setup` (pip install -e .) "
            "installs the entry point pyproject.toml declares"
        )
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        *("--app-name", APP_NAME),
    ]
    with tempfile.TemporaryFile("w+") as log:
        # its own process group: `mlflow ui` starts uvicorn, which starts the workers
        server = subprocess.Popen(
            command,
            env={**os.environ, **MLFLOW_SERVER_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until_answering(f"{url}/health", SERVER_TIMEOUT_S, server, "mlflow ui")
            except (RuntimeError, TimeoutError) as error:
                log.seek(0)
                raise RuntimeError(f"{error}; its output ends:\n{log.read()[-3000:]}") from None
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@contextlib.contextmanager
def fresh_browser(chromium: str, viewport: dict[str, int] | None = None) -> Iterator[Page]:
    """A page of headless `chromium` in a new profile: Playwright launches it on a temporary
    user-data directory and opens a new context, so nothing (localStorage included) is
    carried over from an earlier run."""
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--headless"]  # Playwright's own
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
        try:
            size = viewport or VIEWPORT
            context = browser.new_context(
                viewport={"width": size["width"], "height": size["height"]}
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _shoot(page: Page, shots: Path | None, name: str, walk: Walk) -> None:
    if shots is None:
        return
    shots.mkdir(parents=True, exist_ok=True)
    height = page.viewport_size["height"] if page.viewport_size else VIEWPORT["height"]
    page.mouse.move(0, height - 1)  # no hover highlight on what was clicked
    page.wait_for_timeout(500)  # let tooltips and transitions settle
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    walk.screenshots.append(path)


def _visible(locator: Locator) -> bool:
    return any(item.is_visible() for item in locator.all())


def _runs_list(page: Page, parent_run: str, walk: Walk) -> None:
    """The view's columns and the parent's values, then its trials under its `+`."""
    header = page.locator(f"[role=columnheader][col-id^='{METRIC_PREFIX}']")
    header.first.wait_for()
    # in the order shown (ag-grid's DOM keeps its own order; aria-colindex is the shown one)
    shown = sorted(header.all(), key=lambda item: int(item.get_attribute("aria-colindex") or 0))
    ids = [item.get_attribute("col-id") or "" for item in shown]
    walk.columns = [name[len(METRIC_PREFIX) : -1] for name in ids]
    # ag-grid draws a row twice (the pinned Run Name part and the scrolled part), both with
    # the run's id as row-id
    parent_row = page.locator(
        "[role=row]", has=page.get_by_role("link", name=parent_run, exact=True)
    )
    run_id = parent_row.first.get_attribute("row-id")
    cells = page.locator(
        f"[role=row][row-id='{run_id}'] [role=gridcell][col-id^='{METRIC_PREFIX}']"
    )
    for cell in cells.all():
        name = (cell.get_attribute("col-id") or "")[len(METRIC_PREFIX) : -1]
        walk.parent_metrics[name] = cell.inner_text().strip()
    names = page.locator(f"{RUN_NAME_CELL} a")
    before = names.count()
    parent_row.first.locator(f"{RUN_NAME_CELL} button").first.click()  # the `+`
    page.wait_for_function(
        "([selector, before]) => document.querySelectorAll(selector).length > before",
        arg=[f"{RUN_NAME_CELL} a", before],
    )
    walk.runs = [text.strip() for text in names.all_inner_texts()]


def _table(page: Page, artifact: str, walk: Walk) -> None:
    """Artifacts, then each folder of `artifact`'s path and the file: MLflow's table view."""
    page.get_by_role("tab", name="Artifacts").click()
    for part in artifact.split("/"):
        page.get_by_text(part, exact=True).first.click()
    table = page.get_by_role("table").filter(has=page.get_by_role("columnheader")).first
    table.locator("[role=cell]").first.wait_for()
    walk.table_header = [
        text.strip() for text in table.get_by_role("columnheader").all_inner_texts()
    ]
    for row in table.get_by_role("row").all():
        cells = [text.strip() for text in row.get_by_role("cell").all_inner_texts()]
        if cells:
            walk.table_rows.append(cells)


def walk_to_table(
    page: Page,
    ui: str,
    experiment: str,
    parent_run: str,
    artifact: str = "ablations/compact.json",
    shots: Path | None = None,
) -> Walk:
    """From the landing page, by clicks, to `parent_run`'s runs, overview and `artifact`;
    with `shots`, the README's three screenshots on the way."""
    walk = Walk()
    page.goto(ui)
    page.get_by_role("link", name=experiment, exact=True).first.click()
    page.get_by_role("button", name="Views").wait_for()  # the runs list's own menu
    walk.runs_url = page.url
    walk.workflow_type = page.evaluate("localStorage.getItem('mlflow.workflowType_v1')")
    # the panel's question box (the closed Assistant's button keeps a hidden "MLflow Assistant")
    walk.assistant_panel = _visible(page.get_by_placeholder("Ask a question"))
    walk.detect_issues = _visible(page.get_by_text("Detect Issues", exact=False))
    page.get_by_role("button", name="Views").click()
    page.get_by_role("menuitem", name=VIEW_NAME).click()
    _runs_list(page, parent_run, walk)
    _shoot(page, shots, "mlflow_runs", walk)
    page.get_by_role("link", name=parent_run, exact=True).first.click()
    page.get_by_role("heading", name=parent_run).wait_for()
    page.get_by_text("Child runs", exact=True).wait_for()
    trials = [name for name in walk.runs if name != parent_run]
    if trials:  # the child runs' links come with a second request
        page.get_by_role("link", name=trials[0], exact=True).first.wait_for()
    walk.child_runs = [n for n in trials if _visible(page.get_by_role("link", name=n, exact=True))]
    _shoot(page, shots, "mlflow_parent_run", walk)
    _table(page, artifact, walk)
    _shoot(page, shots, "mlflow_ablation_table", walk)
    return walk
