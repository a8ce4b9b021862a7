"""`make serve` (`python -m flows.serve`): everything `prefect deployment run` needs, locally.

1. a Prefect server on 127.0.0.1 (prefect.toml's api.url), started here unless one answers;
2. the process work pool `ttm-trials` and the deployment `ablation-trial/pool` on it: every
   trial of a sweep or table is a flow run there, run by whichever worker is free;
3. `--workers N` local workers of that pool (one trial each), or one per GPU with `--gpus
   0,1,...` (CUDA_VISIBLE_DEVICES=i each), each with $TTM_REPOSITORY, the clone its trials
   run in; workers on other machines join with `make lab-worker` (flows/lab.py);
4. the served deployments `pipeline/local`, `ablation-sweep/local`, `ablation-table/local`.

Ctrl-C stops the served flows, the workers and the server it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, cast

import httpx
from prefect import Flow, serve
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.deployments.runner import RunnerDeployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.runner.storage import LocalStorage
from prefect.settings import PREFECT_API_URL, get_current_settings
from prefect.workers.process import ProcessWorker

from flows.local_servers import answers, wait_until_answering
from flows.pipeline import pipeline
from flows.settings import REPOSITORY_ENV, WORK_POOL, repository
from flows.sweep import ablation_sweep
from flows.table import ablation_table
from flows.trial import ablation_trial
from tasks.common import warm_start
from tasks.params import read_yaml

PREFECT = [sys.executable, "-m", "prefect"]


def api_url() -> str:
    return PREFECT_API_URL.value() or "http://127.0.0.1:4200/api"


@contextlib.contextmanager
def local_server(url: str, log_path: Path, timeout_seconds: float = 180) -> Iterator[None]:
    """Use the server at `url`, or start one there (127.0.0.1 only) and stop it on exit."""
    health = f"{url.rstrip('/')}/health"
    if answers(health):
        yield
        return
    address = httpx.URL(url)
    if address.host not in ("127.0.0.1", "localhost"):
        raise RuntimeError(f"no Prefect server answers at {url}, and it is not a local address")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        command = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(address.port)]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(health, timeout_seconds, process, "prefect server (see its log)")
        print(f"Prefect server on {url.removesuffix('/api')} (log: {log_path})")
        yield
    finally:
        stop_all([process])


def ensure_work_pool(name: str) -> None:
    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )


MISSED_HEARTBEATS = 3  # a flow run that misses this many heartbeats in a row has no process


def ensure_zombie_automation() -> None:
    """Prefect's documented answer to a worker host that dies mid-trial ("detect zombie
    flows"): the flow-run process emits a heartbeat every `flows.heartbeat_frequency`
    seconds, and an automation marks a Running flow run Crashed once several are missing.
    The sweep then sees the run end and fails its trial with that reason, instead of
    waiting for it forever (nothing is left on the dead host to report it)."""
    frequency = get_current_settings().flows.heartbeat_frequency
    if frequency is None:
        return
    window = MISSED_HEARTBEATS * frequency
    name = f"ttm: crash flow runs without a heartbeat for {window} s"
    # Automation's methods are async_dispatch: called outside an event loop, as here, they
    # return the result itself. `read` raises ValueError when no automation has the name.
    with contextlib.suppress(ValueError):
        cast(Automation, Automation.read(name=name))
        return
    ended = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled")}
    automation = Automation(
        name=name,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Crashed", *ended},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                message=f"no heartbeat for {window} s: its worker's process or host stopped",
                force=False,
            )
        ],
    )
    cast(Automation, automation.create())


def deploy_trial(repo: Path) -> None:
    """`ablation-trial/pool`: the trial flow, run from this checkout by the pool's workers.
    (Not served here as well: a serving process would keep running it besides the pool.)"""
    # Prefect's async_dispatch types `from_source` as `Flow | Coroutine[..., Flow]`; called
    # outside an event loop, as here, it returns the flow.
    flow = cast(
        Flow[..., Any],
        ablation_trial.from_source(
            source=WorkerClone(str(repo)), entrypoint="flows/trial.py:ablation_trial"
        ),
    )
    flow.deploy(
        name="pool", work_pool_name=WORK_POOL, build=False, push=False, print_next_steps=False
    )


class WorkerClone(LocalStorage):
    """The trial flow's code where each worker has it: `repo` here, at deployment, and in a
    trial's flow run the worker's own clone (the pull step enters $TTM_REPOSITORY)."""

    def to_pull_step(self) -> dict[str, Any]:
        return {"flows.settings.enter_worker_clone": {}}


def start_workers(
    count: int,
    gpus: Sequence[str],
    log_dir: Path,
    repo: Path,
    warm: Path | None = None,
    host: str = "",
) -> list[subprocess.Popen]:
    """`count` CPU workers, or one per GPU id in `gpus`; each runs one trial at a time.

    The cores are split between them (OMP_NUM_THREADS, unless set): trials side by side
    with a thread per core each would oversubscribe the CPU, and OpenMP's spin-waiting then
    slows all of them several-fold. With `warm` (a private directory for the sockets), each
    worker gets a warm-start server of its own, with the worker's environment, and its
    trials' stage commands start in forks of it (tasks/common/warm_start.py). `host` prefixes
    the workers' names: a lab's hosts each have a gpu-0."""
    slots = [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus] or [{} for _ in range(count)]
    threads = str(max(1, (os.cpu_count() or 1) // max(1, len(slots))))
    slots = [
        {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads), **slot} for slot in slots
    ]
    processes = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for index, extra in enumerate(slots):
        gpu = extra.get("CUDA_VISIBLE_DEVICES")
        name = f"gpu-{gpu}" if gpu is not None else f"local-{index}"
        name = f"{host}-{name}" if host else name
        env = {**os.environ, REPOSITORY_ENV: str(repo), **extra}
        if warm is not None:
            socket_path = warm / f"{name}.sock"
            log_path = log_dir / f"warm-{name}.log"
            processes.append(start_warm_server(socket_path, env, log_path, repo))
            env[warm_start.ENV] = str(socket_path)
        command = [*PREFECT, "worker", "start", "--pool", WORK_POOL, "--limit", "1", "--name", name]
        with (log_dir / f"worker-{name}.log").open("a") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
    return processes


def stage_packages(repo: Path) -> list[str]:
    """The packages of the `python -m tasks.<stage>` commands dvc.yaml's stages run."""
    commands = (stage["cmd"] for stage in read_yaml(repo / "dvc.yaml")["stages"].values())
    found = (re.search(r"python -m (tasks\.\w+)", command) for command in commands)
    return list(dict.fromkeys(match.group(1) for match in found if match))


# What the stages import only on first use, after their `stage` module: ~4-5 s of imports
# per stage process on 2 cores, paid again by every stage of every trial unless the warm
# server holds them. Measured with `python -X importtime -m tasks.<stage>` against
# `python -X importtime -c "import tasks.<stage>.stage"` (the modules of more than 0.1 s).
LAZY_IMPORTS = (
    "mlflow.store.tracking.sqlalchemy_store",  # every stage's MLflow run (sqlite store)
    "torch._dynamo",  # the optimizer's and transformers' first calls
    "transformers.modeling_utils",  # the text encoder, CLAP's and the rewriter's loaders
    "transformers.models.bert.modeling_bert",  # all-MiniLM-L6-v2, the embedded text encoder
    "librosa.core.audio",  # resampling, loading: the mel codec, ingest, evaluation
    "librosa.feature.spectral",  # evaluate's music analysis
)


def start_warm_server(
    socket_path: Path, env: dict[str, str], log_path: Path, repo: Path
) -> subprocess.Popen:
    """A warm-start server for every stage's command, its stage code imported up front from
    `repo` (it serves only commands whose working directory holds the same code), with the
    libraries the stages import lazily (LAZY_IMPORTS)."""
    command = [sys.executable, "-m", "tasks.common.warm_start", "--socket", str(socket_path)]
    command += ["--parent", str(os.getpid())]  # a serve killed outright takes it down too
    for module in stage_packages(repo):
        command += ["--module", module, "--preload", f"{module}.stage"]
    for module in LAZY_IMPORTS:
        command += ["--preload", module]
    with log_path.open("a") as log:
        return subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_all(processes: Sequence[subprocess.Popen], timeout: float = 20.0) -> None:
    """Ctrl-C to every worker at once, then one shared deadline before killing the rest: one
    after the other, n workers could take n x timeout, longer than whoever stops this
    process waits before killing it, which would orphan the workers still running."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_deployments(storage: str | None, repo: Path) -> None:
    shared = {"root": str(repo)} | ({"storage_url": storage} if storage else {})
    # As in deploy_trial: outside an event loop `to_deployment` returns the deployment itself.
    serve(
        cast(
            RunnerDeployment, pipeline.to_deployment(name="local", parameters={"root": str(repo)})
        ),
        cast(RunnerDeployment, ablation_sweep.to_deployment(name="local", parameters=shared)),
        cast(RunnerDeployment, ablation_table.to_deployment(name="local", parameters=shared)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="local CPU workers (default 1)")
    parser.add_argument("--gpus", default="", help="one worker per GPU id, e.g. 0,1,2,3")
    parser.add_argument("--storage", default=None, help="default Optuna storage URL")
    parser.add_argument("--root", default=None, help="the repository (default: here)")
    parser.add_argument(
        "--cold-stages",
        action="store_true",
        help="start every stage command in a fresh interpreter (no warm-start servers)",
    )
    args = parser.parse_args(argv)
    repo = repository(args.root)
    logs = repo / ".prefect" / "logs"
    with local_server(api_url(), logs / "server.log"), contextlib.ExitStack() as stack:
        ensure_work_pool(WORK_POOL)
        ensure_zombie_automation()
        deploy_trial(repo)
        gpus = [gpu for gpu in args.gpus.split(",") if gpu]
        # the sockets' directory is private (0700): a warm server runs what it is sent
        warm = None if args.cold_stages else Path(stack.enter_context(TemporaryDirectory()))
        processes = start_workers(args.workers, gpus, logs, repo, warm)
        workers = len(gpus) or args.workers
        print(f"{workers} worker(s) on work pool {WORK_POOL}; serving deployments")
        # SIGTERM (a service manager, a test) stops like Ctrl-C: workers and server too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            serve_deployments(args.storage, repo)
        finally:
            stop_all(processes)


if __name__ == "__main__":
    main()
